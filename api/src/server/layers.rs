//! The middleware around the router, outermost first: a panic guard (a bug answers 500 with
//! the error body, never a dropped connection), request ids, tracing spans, header limits
//! (431), the request timeout (503 `timeout`), and per-route metrics.

use super::body::BodyLimit;
use super::config::HttpLimits;
use super::error::ApiError;
use super::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::http::{HeaderName, Response, StatusCode};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::{Extension, Router};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// 404 for paths no route matches.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        .with_details(serde_json::json!({ "what": "endpoint" }))
}

/// 405 for a known path with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// Wraps the router in every layer. See the module docs.
pub fn wrap(router: Router, state: AppState, limits: &HttpLimits) -> Router {
    let timeout = limits.request_timeout;
    let header_limits = (limits.headers_max, limits.header_bytes_max);
    router
        .route_layer(middleware::from_fn_with_state(state, observe))
        .layer(middleware::from_fn(move |req, next| {
            with_timeout(timeout, req, next)
        }))
        .layer(Extension(BodyLimit(limits.body_bytes_max)))
        .layer(middleware::from_fn(move |req, next| {
            check_headers(header_limits, req, next)
        }))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                tracing::info_span!("request", method = %req.method(), uri = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, ProcessRequestIds::new()))
        .layer(CatchPanicLayer::custom(panicked))
}

/// Request ids for requests that come without an `x-request-id`: 32 hex digits, a random
/// prefix drawn once per process and a counter. Unique within a run and across runs, without a
/// call to the system's random source per request (as a random UUID would make).
#[derive(Clone, Debug)]
pub struct ProcessRequestIds {
    prefix: u64,
    next: Arc<AtomicU64>,
}

impl ProcessRequestIds {
    pub fn new() -> Self {
        ProcessRequestIds {
            prefix: rand::random(),
            next: Arc::new(AtomicU64::new(1)),
        }
    }
}

impl Default for ProcessRequestIds {
    fn default() -> Self {
        Self::new()
    }
}

impl MakeRequestId for ProcessRequestIds {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{:016x}{n:016x}", self.prefix))
            .ok()
            .map(RequestId::new)
    }
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response<axum::body::Body> {
    tracing::error!("a handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "an internal error occurred",
    )
    .into_response()
}

/// Counts the request under its route template (`/v1/reservations/{id}`).
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> impl IntoResponse {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().as_str().to_string();
    let res = next.run(req).await;
    state.metrics().observe_request(
        &route,
        &method,
        res.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    res
}

/// 503 `timeout` when the answer's head is not ready in time. (A stream's body is not
/// bounded: the event stream answers its head at once.)
async fn with_timeout(timeout: Duration, req: Request, next: Next) -> axum::response::Response {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ApiError::timeout().into_response(),
    }
}

/// 431 when the request has too many headers or too many header bytes.
async fn check_headers(
    (count_max, bytes_max): (usize, usize),
    req: Request,
    next: Next,
) -> axum::response::Response {
    let headers = req.headers();
    if headers.len() > count_max {
        return ApiError::headers_too_large(format!(
            "{} headers, at most {count_max} are allowed",
            headers.len()
        ))
        .into_response();
    }
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if bytes > bytes_max {
        return ApiError::headers_too_large(format!(
            "{bytes} bytes of headers, at most {bytes_max} are allowed"
        ))
        .into_response();
    }
    next.run(req).await
}
