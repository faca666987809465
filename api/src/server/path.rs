//! Path parameters with the API's error body. axum's own `Path` answers a segment that is not
//! UTF-8 once percent-decoded (`/v1/stock/%FF`) with a plain-text 400; every error of the API
//! is the JSON body of `API.md`, naming the field.

use super::error::ApiError;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

/// The one path parameter of a route (`{sku}`, `{id}`, ...), as text.
#[derive(Debug)]
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(PathParam(value)),
            Err(e) => Err(refused(&e)),
        }
    }
}

fn refused(e: &PathRejection) -> ApiError {
    match e {
        PathRejection::FailedToDeserializePathParams(failed) => match failed.kind() {
            ErrorKind::InvalidUtf8InPathParam { key } => {
                ApiError::invalid(key, "is not valid UTF-8 once percent-decoded")
            }
            _ => ApiError::invalid("path", failed.body_text()),
        },
        other => ApiError::invalid("path", other.body_text()),
    }
}
