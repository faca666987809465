//! The middleware around the router: one layer, [`EdgeLayer`], that does in one future what a
//! stack of tower layers did in seven (each with its own boxed service, cloned per request):
//!
//! - a panic guard: a bug answers 500 with the error body, never a dropped connection;
//! - the request id: a client's `x-request-id` is kept, otherwise one is made
//!   ([`ProcessRequestIds`]); either way it comes back on the answer;
//! - a tracing span per request (`request`, with method, path and request id);
//! - header limits (431 `headers_too_large`);
//! - the body limit, for [`RawBody`](super::body::RawBody) (413);
//! - the request timeout (503 `timeout`);
//! - per-route metrics, under the route template (`/v1/reservations/{id}`; `unmatched` for a
//!   path no route has).
//!
//! The layer goes on the router with `Router::layer`, so it runs after routing and sees the
//! route's template (`MatchedPath`). A route served without the router (see
//! [`super::App`]) gets the same work through [`EdgeLayer::serve`], under its own name.

use super::body::BodyLimit;
use super::config::HttpLimits;
use super::error::ApiError;
use super::AppState;
use axum::body::HttpBody as _;
use axum::extract::{MatchedPath, Request};
use axum::http::header::CONTENT_LENGTH;
use axum::http::HeaderValue;
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;

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

/// The one layer of the module docs; its limits are the state's [`HttpLimits`].
#[derive(Clone, Debug)]
pub struct EdgeLayer {
    state: AppState,
    ids: ProcessRequestIds,
}

impl EdgeLayer {
    pub fn new(state: AppState) -> EdgeLayer {
        EdgeLayer {
            state,
            ids: ProcessRequestIds::new(),
        }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            state: self.state.clone(),
            ids: self.ids.clone(),
        }
    }
}

/// The service of [`EdgeLayer`].
#[derive(Clone, Debug)]
pub struct Edge<S> {
    inner: S,
    state: AppState,
    ids: ProcessRequestIds,
}

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Error = Infallible> + Clone + Send + 'static,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The inner service is driven with `oneshot`, which waits for its readiness.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let route = RouteName::Matched(req.extensions().get::<MatchedPath>().cloned());
        let inner = self.inner.clone();
        edge(&self.state, &self.ids, route, req, move |req| {
            inner.oneshot(req).map(|res| match res {
                Ok(res) => res.into_response(),
                Err(never) => match never {},
            })
        })
    }
}

/// The future of [`edge`].
pub type EdgeFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// A request's route as the metrics name it.
#[derive(Clone, Debug)]
pub enum RouteName {
    /// The route the router matched (its template); `None`: no route, `unmatched`.
    Matched(Option<MatchedPath>),
    /// A route served without the router (see [`super::App`]).
    Fixed(&'static str),
}

impl RouteName {
    fn as_str(&self) -> &str {
        match self {
            RouteName::Matched(m) => m.as_ref().map_or("unmatched", MatchedPath::as_str),
            RouteName::Fixed(s) => s,
        }
    }
}

impl EdgeLayer {
    /// Serves `req` with `inner` behind what the layer does for a routed request (see the
    /// module docs), for a route served without the router; the answer gets the
    /// `Content-Length` that the router adds to a routed answer.
    pub fn serve<F, Fut>(&self, route: &'static str, req: Request, inner: F) -> EdgeFuture
    where
        F: FnOnce(Request) -> Fut + Send + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        edge(&self.state, &self.ids, RouteName::Fixed(route), req, inner)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }
}

/// The work of the layer around `inner` (see the module docs); for a route served without the
/// router, also the router's `Content-Length` (see [`EdgeLayer::serve`]).
fn edge<F, Fut>(
    state: &AppState,
    ids: &ProcessRequestIds,
    route: RouteName,
    mut req: Request,
    inner: F,
) -> EdgeFuture
where
    F: FnOnce(Request) -> Fut + Send + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let start = Instant::now();
    let state = state.clone();
    let id = match req
        .headers()
        .get(REQUEST_ID)
        .filter(|v| usable_request_id(v))
    {
        Some(id) => id.clone(),
        None => {
            let id = ids.next_id();
            req.headers_mut().insert(REQUEST_ID, id.clone());
            id
        }
    };
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        method = %method,
        uri = %req.uri().path(),
        request_id = %String::from_utf8_lossy(id.as_bytes()),
    );
    let limits = state.limits();
    let refused = check_headers(limits, &req);
    req.extensions_mut()
        .insert(BodyLimit(limits.body_bytes_max));
    let timeout = limits.request_timeout;
    Box::pin(
        async move {
            let mut res = match refused {
                Some(e) => e.into_response(),
                None => {
                    let run = tokio::time::timeout(timeout, inner(req));
                    match AssertUnwindSafe(run).catch_unwind().await {
                        Ok(Ok(res)) => res,
                        Ok(Err(_)) => ApiError::timeout().into_response(),
                        Err(_) => panicked(),
                    }
                }
            };
            let status = res.status();
            let seconds = start.elapsed().as_secs_f64();
            if status.is_server_error() {
                tracing::warn!(
                    status = status.as_u16(),
                    seconds,
                    "answered with a server error"
                );
            } else {
                tracing::debug!(status = status.as_u16(), seconds, "answered");
            }
            res.headers_mut().insert(REQUEST_ID, id);
            let routed = matches!(route, RouteName::Matched(_));
            if !routed && !res.headers().contains_key(CONTENT_LENGTH) {
                if let Some(n) = res.body().size_hint().exact() {
                    res.headers_mut().insert(CONTENT_LENGTH, n.into());
                }
            }
            state.metrics().observe_request(
                route.as_str(),
                method.as_str(),
                status.as_u16(),
                seconds,
            );
            Ok(res)
        }
        .instrument(span),
    )
}

/// Longest client-supplied `x-request-id` kept (it is repeated in every log line of the
/// request); a longer one, or one with a byte that is not visible ASCII, is replaced by one
/// made by depot.
const REQUEST_ID_MAX: usize = 128;

fn usable_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=REQUEST_ID_MAX).contains(&b.len()) && b.iter().all(u8::is_ascii_graphic)
}

/// 431 when the request has too many headers or too many header bytes.
fn check_headers(limits: &HttpLimits, req: &Request) -> Option<ApiError> {
    let headers = req.headers();
    if headers.len() > limits.headers_max {
        return Some(ApiError::headers_too_large(format!(
            "{} headers, at most {} are allowed",
            headers.len(),
            limits.headers_max
        )));
    }
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    (bytes > limits.header_bytes_max).then(|| {
        ApiError::headers_too_large(format!(
            "{bytes} bytes of headers, at most {} are allowed",
            limits.header_bytes_max
        ))
    })
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

    /// The next id: the prefix and the counter as 32 hex digits.
    pub fn next_id(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut out = [0u8; 32];
        for (i, word) in [self.prefix, n].into_iter().enumerate() {
            for j in 0..16 {
                out[i * 16 + j] = HEX[((word >> (60 - 4 * j)) & 0xf) as usize];
            }
        }
        HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

impl Default for ProcessRequestIds {
    fn default() -> Self {
        Self::new()
    }
}

fn panicked() -> Response {
    tracing::error!("a handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "an internal error occurred",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyStore;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use std::time::Duration;

    fn edge_around(limits: HttpLimits, router: Router<AppState>) -> (Router, AppState) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (keys, _) = KeyStore::open(dir.path(), Some("m".repeat(32))).expect("keys open");
        let state = AppState::new(keys, limits);
        (
            router
                .with_state(state.clone())
                .layer(EdgeLayer::new(state.clone())),
            state,
        )
    }

    async fn call(app: &Router, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = Request::builder().uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Body::empty()).expect("a request");
        app.clone().oneshot(req).await.expect("infallible")
    }

    async fn error_code(res: Response) -> String {
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .expect("a body");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        v["error"]["code"].as_str().unwrap_or("").to_string()
    }

    #[test]
    fn request_ids_are_32_hex_digits_with_the_process_prefix() {
        let ids = ProcessRequestIds::new();
        let (a, b) = (ids.next_id(), ids.next_id());
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_eq!(a[..16], b[..16]);
        assert_eq!(&a[16..], "0000000000000001");
        assert_eq!(&b[16..], "0000000000000002");
        assert_eq!(a[..16], format!("{:016x}", ids.prefix));
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_with_the_error_body_and_its_request_id() {
        async fn boom() -> &'static str {
            panic!("a bug in a handler")
        }
        let (app, state) = edge_around(
            HttpLimits::default(),
            Router::new().route("/boom", get(boom)),
        );
        let res = call(&app, "/boom", &[("x-request-id", "r-1")]).await;
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(res.headers()[REQUEST_ID], "r-1");
        assert_eq!(error_code(res).await, "internal");
        // Counted under its route, and the server goes on answering.
        let text = state.metrics().render();
        assert!(
            text.contains(
                r#"depot_http_requests_total{method="GET",route="/boom",status="500"} 1"#
            ),
            "{text}"
        );
        let res = call(&app, "/nowhere", &[]).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert_eq!(res.headers()[REQUEST_ID].len(), 32);
    }

    #[tokio::test]
    async fn slow_handlers_time_out_and_big_headers_are_refused_before_the_handler() {
        use std::sync::atomic::AtomicBool;
        static RAN: AtomicBool = AtomicBool::new(false);
        async fn slow() -> &'static str {
            RAN.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }
        let limits = HttpLimits {
            request_timeout: Duration::from_millis(20),
            headers_max: 3,
            ..HttpLimits::default()
        };
        let (app, state) = edge_around(limits, Router::new().route("/slow", get(slow)));
        let many = [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")];
        let res = call(&app, "/slow", &many).await;
        assert_eq!(res.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(error_code(res).await, "headers_too_large");
        assert!(
            !RAN.load(Ordering::SeqCst),
            "refused before the handler ran"
        );
        let res = call(&app, "/slow", &[]).await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_code(res).await, "timeout");
        let text = state.metrics().render();
        for status in ["431", "503"] {
            let line = format!(
                r#"depot_http_requests_total{{method="GET",route="/slow",status="{status}"}} 1"#
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
        // A path no route has is counted too.
        let _ = call(&app, "/nowhere", &[]).await;
        assert!(state
            .metrics()
            .render()
            .contains(r#"route="unmatched",status="404"} 1"#));
    }
}
