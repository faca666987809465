//! The HTTP server of `depot serve`: configuration ([`config`]), the durable engine behind a
//! queue ([`durable`], [`runner`]), the router ([`app`]), authentication ([`auth`]), the
//! operations and their handlers ([`ops`], [`handlers`], [`admin`]), errors ([`error`]), the
//! OpenAPI document ([`openapi`]) and the process around it ([`serve`]).
//!
//! `app(state)` is the whole HTTP surface without a socket: tests drive it with
//! `tower::ServiceExt::oneshot`; `serve` binds it to a port.

pub mod admin;
pub mod auth;
pub mod batch;
pub mod body;
pub mod config;
pub mod dto;
pub mod durable;
pub mod error;
pub mod handlers;
pub mod layers;
pub mod listen;
pub mod openapi;
pub mod ops;
pub mod path;
pub mod runner;
pub mod serve;

use crate::events::EventLog;
use crate::keys::KeyStore;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;
use config::HttpLimits;
use error::ApiError;
use runner::{RunError, Runner};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

pub use serve::serve;

/// Everything the handlers share. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    /// Set once recovery is done; until then `/v1` answers 503 `not_ready`. Taken again while
    /// the state is reloaded from the log after a full disk (see `serve::watch_log`).
    runner: RwLock<Option<Arc<Runner>>>,
    /// The background snapshotter of a durable server (taken and stopped at shutdown).
    snapshotter: std::sync::Mutex<Option<depot_wal::Snapshotter>>,
    keys: Arc<KeyStore>,
    events: Arc<EventLog>,
    metrics: Arc<Metrics>,
    limiter: RateLimiter,
    limits: HttpLimits,
    /// Flips to true when the server stops: event streams end.
    stopping: watch::Sender<bool>,
}

impl AppState {
    /// A state without an engine yet (see [`AppState::set_ready`]).
    pub fn new(keys: KeyStore, limits: HttpLimits) -> AppState {
        AppState(Arc::new(Shared {
            runner: RwLock::new(None),
            snapshotter: std::sync::Mutex::new(None),
            keys: Arc::new(keys),
            events: Arc::new(EventLog::new(limits.events_kept)),
            metrics: Arc::new(Metrics::new()),
            limiter: RateLimiter::new(f64::from(limits.rate_per_s), limits.rate_burst),
            limits,
            stopping: watch::channel(false).0,
        }))
    }

    /// Recovery is done: serve `/v1` with this engine.
    pub fn set_ready(&self, runner: Arc<Runner>) {
        *self.0.runner.write().unwrap_or_else(|e| e.into_inner()) = Some(runner);
    }

    /// Stops serving `/v1` (503 `not_ready`, as while recovering) and returns the engine.
    pub fn take_runner(&self) -> Option<Arc<Runner>> {
        self.0
            .runner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Starts the engine's threads on `engine` and marks the state ready (tests, in memory).
    pub fn start_engine(&self, engine: depot_engine::Engine) -> Arc<Runner> {
        let runner = Arc::new(Runner::start(
            engine,
            None,
            self.0.events.clone(),
            self.0.limits.engine_queue_max,
        ));
        self.set_ready(runner.clone());
        runner
    }

    /// Keeps the background snapshotter (its figures feed `/metrics`).
    pub fn set_snapshotter(&self, s: depot_wal::Snapshotter) {
        *self.0.snapshotter.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
    }

    /// The snapshotter's figures so far, if one runs.
    pub fn snapshot_stats(&self) -> Option<depot_wal::SnapshotStats> {
        let s = self.0.snapshotter.lock().unwrap_or_else(|e| e.into_inner());
        s.as_ref().map(depot_wal::Snapshotter::stats)
    }

    /// Stops the snapshotter (after a snapshot in progress), if one runs.
    pub fn stop_snapshotter(&self) {
        let s = self
            .0
            .snapshotter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(s);
    }

    /// The engine, or 503 `not_ready` while recovering.
    pub fn runner(&self) -> Result<Arc<Runner>, ApiError> {
        let runner = self.0.runner.read().unwrap_or_else(|e| e.into_inner());
        runner.clone().ok_or_else(ApiError::not_ready)
    }

    pub fn is_ready(&self) -> bool {
        self.0
            .runner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.0.keys
    }

    pub fn events(&self) -> &Arc<EventLog> {
        &self.0.events
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.0.metrics
    }

    pub fn limiter(&self) -> &RateLimiter {
        &self.0.limiter
    }

    pub fn limits(&self) -> &HttpLimits {
        &self.0.limits
    }

    /// Ends event streams (on shutdown).
    pub fn begin_stopping(&self) {
        self.0.stopping.send_replace(true);
    }

    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.0.stopping.subscribe()
    }
}

/// A refused group as the API's error.
pub fn run_error(e: RunError) -> ApiError {
    match e {
        RunError::Full => ApiError::overloaded(),
        RunError::Closed => ApiError::not_ready(),
    }
}

type Route = (&'static str, &'static str, MethodRouter<AppState>);

/// Every route: method, path, handler. [`app`] serves exactly these; [`routes`] lists them
/// (the OpenAPI test checks each is documented).
fn table() -> Vec<Route> {
    vec![
        ("POST", "/v1/tenants", post(admin::create_tenant)),
        ("POST", "/v1/keys", post(admin::create_key)),
        ("DELETE", "/v1/keys/{id}", delete(admin::revoke_key)),
        (
            "PUT",
            "/v1/locations/{location}",
            put(handlers::put_location),
        ),
        ("PUT", "/v1/channels/{channel}", put(handlers::put_channel)),
        (
            "GET",
            "/v1/channels/{channel}/exposure",
            get(admin::exposure),
        ),
        ("PUT", "/v1/bundles/{sku}", put(handlers::put_bundle)),
        ("PUT", "/v1/allocation-rules", put(handlers::put_rules)),
        ("GET", "/v1/allocation-rules", get(admin::get_rules)),
        ("POST", "/v1/stock/adjustments", post(handlers::adjust)),
        ("GET", "/v1/stock/{sku}", get(handlers::get_stock)),
        ("GET", "/v1/stock/{sku}/explain", get(handlers::explain)),
        ("POST", "/v1/reservations", post(handlers::reserve)),
        (
            "GET",
            "/v1/reservations/{id}",
            get(handlers::get_reservation),
        ),
        (
            "POST",
            "/v1/reservations/{id}/commit",
            post(handlers::commit),
        ),
        (
            "POST",
            "/v1/reservations/{id}/release",
            post(handlers::release),
        ),
        (
            "POST",
            "/v1/reservations/{id}/cancel",
            post(handlers::cancel),
        ),
        (
            "POST",
            "/v1/reservations/{id}/extend",
            post(handlers::extend),
        ),
        (
            "POST",
            "/v1/reservations/{id}/fulfil",
            post(handlers::fulfil),
        ),
        (
            "POST",
            "/v1/reservations/{id}/return",
            post(handlers::return_units),
        ),
        ("POST", "/v1/batch", post(handlers::batch)),
        ("GET", "/v1/events", get(admin::events)),
        ("GET", "/v1/events/stream", get(admin::event_stream)),
        ("GET", "/healthz", get(admin::healthz)),
        ("GET", "/readyz", get(admin::readyz)),
        ("GET", "/metrics", get(admin::metrics)),
        ("GET", "/openapi.json", get(openapi::serve_document)),
    ]
}

/// Every (method, path template) the router serves.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    table().into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// The whole HTTP API. See `API.md`.
pub fn app(state: AppState) -> App {
    let router = table()
        .into_iter()
        .fold(Router::new(), |r, (_, path, handler)| {
            r.route(path, handler)
        })
        .fallback(layers::not_found)
        .method_not_allowed_fallback(layers::method_not_allowed)
        .with_state(state.clone());
    let edge = layers::EdgeLayer::new(state);
    App {
        router: router.layer(edge.clone()),
        edge,
    }
}

/// The route [`App`] serves without the router.
const RESERVE_PATH: &str = "/v1/reservations";

/// The HTTP API as one service: the router behind the edge layer ([`layers`]), except for
/// `POST /v1/reservations`, the request a sales channel sends for every cart, which goes
/// straight to its handler behind the same edge layer (the same request id, span, limits,
/// timeout, panic guard and metrics, under the same route name). The router's per-request
/// work (matching, the route's template, boxed and cloned services and futures, the
/// extractors) was about a tenth of the server's instructions for that request. Every other
/// request, including any other method on that path, goes to the router, which keeps the
/// route too, for its 405 and for the table of routes.
#[derive(Clone, Debug)]
pub struct App {
    router: Router,
    edge: layers::EdgeLayer,
}

impl App {
    /// The router alone, behind the edge layer: every route, `POST /v1/reservations`
    /// included. Tests compare its answers with the direct route's.
    pub fn router(&self) -> &Router {
        &self.router
    }
}

impl tower::Service<axum::extract::Request> for App {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::Either<
        layers::EdgeFuture,
        axum::routing::future::RouteFuture<std::convert::Infallible>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // The router is always ready (its own `poll_ready` says so), and so is the handler.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::extract::Request) -> Self::Future {
        use futures_util::future::Either;
        if req.method() == axum::http::Method::POST && req.uri().path() == RESERVE_PATH {
            let state = self.edge.state().clone();
            return Either::Left(self.edge.serve(RESERVE_PATH, req, move |req| {
                handlers::reserve_direct(state, req)
            }));
        }
        Either::Right(tower::Service::call(&mut self.router, req))
    }
}
