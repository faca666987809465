//! [`ApiError`]: every refusal of the API as a status and the error body of `API.md`,
//! `{"error": {"code", "message", "details"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use depot_engine::Refusal;
use serde_json::{json, Value};

/// An error answer: status, stable code, human message and machine-readable details.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
    /// Seconds for a `Retry-After` header.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: json!({}),
            retry_after_s: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// 400 `invalid_request`, naming the field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let message = if field.is_empty() {
            message
        } else {
            format!("{field}: {message}")
        };
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
            .with_details(json!({ "field": field }))
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        let what = what.into();
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
        .with_details(json!({ "what": what }))
    }

    pub fn payload_too_large(limit_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than {limit_bytes} bytes"),
        )
        .with_details(json!({ "limit_bytes": limit_bytes }))
    }

    pub fn rate_limited(retry_after_s: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests for this key; retry later",
        )
        .with_details(json!({ "retry_after_seconds": retry_after_s }));
        e.retry_after_s = Some(retry_after_s);
        e
    }

    pub fn not_ready() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the server is recovering its state; retry shortly",
        );
        e.retry_after_s = Some(1);
        e
    }

    /// The engine's queue is full: retry later (nothing happened).
    pub fn overloaded() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the server is overloaded; retry later (nothing was done)",
        );
        e.retry_after_s = Some(1);
        e
    }

    pub fn timeout() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took too long; a write may or may not have happened: repeat it with \
             the same Idempotency-Key to find out",
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this method is not allowed on this path",
        )
    }

    pub fn headers_too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            message,
        )
    }

    /// The engine's refusal as the API's status and code.
    pub fn from_refusal(r: &Refusal) -> Self {
        match r {
            Refusal::InvalidRequest { field, message } => Self::invalid(field, message.clone()),
            Refusal::NotFound { what } => Self::not_found(what.clone()),
            Refusal::InsufficientStock { shortages } => {
                Self::new(StatusCode::CONFLICT, "insufficient_stock", r.to_string()).with_details(
                    json!({
                        "shortages": shortages.iter().map(|s| json!({
                            "sku": s.sku.as_str(),
                            "requested": s.requested,
                            "available_to_sell": s.available_to_sell,
                        })).collect::<Vec<_>>()
                    }),
                )
            }
            Refusal::InvalidState { message } => {
                Self::new(StatusCode::CONFLICT, "invalid_state", message.clone())
            }
            Refusal::CompareFailed { expected, actual } => {
                Self::new(StatusCode::CONFLICT, "compare_failed", r.to_string())
                    .with_details(json!({ "expected": expected, "actual": actual }))
            }
            Refusal::IdempotencyKeyReused => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                r.to_string(),
            ),
            Refusal::LimitExceeded { what, limit } => {
                Self::new(StatusCode::CONFLICT, "limit_exceeded", r.to_string())
                    .with_details(json!({ "what": what, "limit": limit }))
            }
            Refusal::Overloaded => Self::overloaded(),
            Refusal::Unavailable { message } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("writes are unavailable: {message}"),
            ),
        }
    }

    /// The JSON body of this error as text, for a batch result.
    pub fn body_text(&self) -> Vec<u8> {
        json_text(&self.body())
    }

    /// The JSON body of this error.
    pub fn body(&self) -> Value {
        json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "details": self.details,
            }
        })
    }
}

impl From<&Refusal> for ApiError {
    fn from(r: &Refusal) -> Self {
        ApiError::from_refusal(r)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after_s {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        res
    }
}

/// `v` as JSON text.
pub fn json_text<T: serde::Serialize + ?Sized>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_else(|e| {
        tracing::error!(error = %e, "an answer did not serialize");
        b"null".to_vec()
    })
}
