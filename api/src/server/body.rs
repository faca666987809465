//! Request bodies: read as bytes by [`RawBody`] (so the role is checked before the body is
//! judged), parsed later into typed DTOs with errors that name the failing field.

use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::Value;

/// A request body not yet parsed.
#[derive(Clone, Debug, Default)]
pub enum Body {
    /// No body (or an empty one).
    #[default]
    None,
    /// Bytes with a JSON content type.
    Json(Bytes),
    /// Bytes with another content type (or none): refused when a body is needed.
    NotJson(Bytes, String),
    /// An operation's body inside `POST /v1/batch`, as its JSON text (never `null`: a `null`
    /// body is [`Body::None`]).
    Raw(Box<RawValue>),
}

/// The body as bytes, at most [`BodyLimit`] of them (413 above it).
#[derive(Debug)]
pub struct RawBody(pub Body);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(usize::MAX, |l| l.0);
        let limited = http_body_util::Limited::new(req.into_body(), limit);
        let bytes = match http_body_util::BodyExt::collect(limited).await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ApiError::payload_too_large(limit));
            }
            Err(e) => {
                return Err(ApiError::invalid(
                    "body",
                    format!("could not read the body: {e}"),
                ))
            }
        };
        if bytes.is_empty() {
            return Ok(RawBody(Body::None));
        }
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence == "application/json" || essence.ends_with("+json") {
            Ok(RawBody(Body::Json(bytes)))
        } else {
            Ok(RawBody(Body::NotJson(bytes, content_type)))
        }
    }
}

/// The body size limit, put in the request's extensions by the edge layer
/// ([`EdgeLayer`](super::layers::EdgeLayer)).
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

impl Body {
    /// Parses the body as `T`; a missing body is an error.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        match self {
            Body::None => Err(ApiError::invalid("body", "a JSON body is required")),
            _ => self.parse_inner(),
        }
    }

    /// Parses the body as `T`; a missing body is `T::default()`.
    pub fn parse_or_default<T: DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        match self {
            Body::None => Ok(T::default()),
            _ => self.parse_inner(),
        }
    }

    /// Refuses any body (for operations that take none).
    pub fn empty(&self) -> Result<(), ApiError> {
        match self {
            Body::None => Ok(()),
            Body::Json(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(()),
            Body::Json(b) => Self::empty_object(b),
            Body::Raw(r) => Self::empty_object(r.get().as_bytes()),
            Body::NotJson(..) => Err(ApiError::invalid("body", "this operation takes no body")),
        }
    }

    fn empty_object(b: &[u8]) -> Result<(), ApiError> {
        match serde_json::from_slice::<Value>(b) {
            Ok(Value::Object(m)) if m.is_empty() => Ok(()),
            _ => Err(ApiError::invalid("body", "this operation takes no body")),
        }
    }

    fn parse_inner<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        // Every body is an object: serde would also read a struct from an array (`[null]`
        // as "all fields absent"), which no client means.
        let object = match self {
            Body::Json(b) => starts_an_object(b),
            Body::Raw(r) => starts_an_object(r.get().as_bytes()),
            _ => true,
        };
        if !object {
            return Err(ApiError::invalid("body", "must be a JSON object"));
        }
        match self {
            Body::None => Err(ApiError::invalid("body", "a JSON body is required")),
            Body::NotJson(_, ct) => Err(ApiError::invalid(
                "content-type",
                format!("must be application/json, not {ct:?}"),
            )),
            Body::Json(bytes) => from_slice(bytes),
            Body::Raw(r) => from_slice(r.get().as_bytes()),
        }
    }
}

fn starts_an_object(b: &[u8]) -> bool {
    b.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'{')
}

fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // The plain parse first: tracking the path of every value costs on every request, and the
    // path is only needed to name the field of an error. A body that fails is parsed again,
    // tracking the path, for the error (the same parser on the same bytes fails the same way).
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(field_error)?;
    de.end()
        .map_err(|e| ApiError::invalid("body", format!("trailing data: {e}")))?;
    Ok(value)
}

/// A deserialization error as 400 `invalid_request` naming the field (`lines[0].quantity`).
fn field_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let message = strip_position(&inner.to_string());
    let mut field = if path == "." { String::new() } else { path };
    // A missing field is reported at its parent: name the field itself.
    if let Some(rest) = message.strip_prefix("missing field `") {
        if let Some(name) = rest.split('`').next() {
            field = if field.is_empty() {
                name.to_string()
            } else {
                format!("{field}.{name}")
            };
        }
    }
    if inner.is_syntax() || inner.is_eof() {
        return ApiError::invalid(
            if field.is_empty() { "body" } else { &field },
            format!("not valid JSON: {message}"),
        );
    }
    ApiError::invalid(if field.is_empty() { "body" } else { &field }, message)
}

/// `... at line 1 column 7` → `...`: positions mean little to an API client.
fn strip_position(m: &str) -> String {
    match m.rfind(" at line ") {
        Some(i) => m[..i].to_string(),
        None => m.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Line {
        sku: String,
        quantity: i64,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Lines {
        lines: Vec<Line>,
    }

    fn field_of(json: &str) -> String {
        let e = Body::Json(Bytes::from(json.to_string()))
            .parse::<Lines>()
            .unwrap_err();
        e.details["field"].as_str().unwrap().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            field_of(r#"{"lines":[{"sku":"a","quantity":"x"}]}"#),
            "lines[0].quantity"
        );
        assert_eq!(field_of(r#"{"lines":[{"sku":"a"}]}"#), "lines[0].quantity");
        assert_eq!(field_of(r#"{"lines":[], "ttl_ms": 5}"#), "ttl_ms");
        assert_eq!(field_of(r#"{"lines":"#), "lines");
        assert_eq!(field_of(r#""x""#), "body");
    }
}
