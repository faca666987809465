//! Shared fixtures of the API tests: an in-memory engine behind the real router, driven
//! without a socket (`tower::ServiceExt::oneshot`), and tenants with a key of every role.

#![allow(dead_code)] // each test file uses a different part

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use depot_api::keys::KeyStore;
use depot_api::server::config::HttpLimits;
use depot_api::server::App;
use depot_api::server::{app, AppState};
use depot_engine::{Engine, EngineConfig, Limits};
use serde_json::{json, Value};
use tower::ServiceExt;

pub const MASTER: &str = "master-key-for-the-api-tests-0123456789";

/// A router on a fresh in-memory engine and key store.
pub struct Fixture {
    pub app: App,
    pub state: AppState,
    pub engine_digest: Box<dyn Fn() -> [u8; 32] + Send + Sync>,
    _dir: tempfile::TempDir,
}

/// What a call answered.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The error code of an error answer, `""` otherwise.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    /// Asserts the body is the error body of API.md.
    pub fn assert_error_body(&self) {
        let e = &self.body["error"];
        assert!(e["code"].is_string(), "no error code in {}", self.body);
        assert!(e["message"].is_string(), "no message in {}", self.body);
        assert!(e["details"].is_object(), "no details in {}", self.body);
    }
}

/// Keys of one tenant, by role.
#[derive(Clone, Debug)]
pub struct Keys {
    pub tenant: String,
    pub admin: String,
    /// Acts for `shopify:<tenant>` only.
    pub channel: String,
    /// Acts for `ebay:<tenant>` only.
    pub other_channel: String,
    /// Acts for `wh-east` only.
    pub wms: String,
    pub reader: String,
}

impl Fixture {
    pub fn new() -> Fixture {
        Self::with_limits(HttpLimits::default())
    }

    pub fn with_limits(limits: HttpLimits) -> Fixture {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (keys, generated) =
            KeyStore::open(dir.path(), Some(MASTER.to_string())).expect("the key store opens");
        assert!(generated.is_none());
        let state = AppState::new(keys, limits);
        let runner = state.start_engine(Engine::start(EngineConfig {
            shards: 2,
            limits: Limits::default(),
        }));
        let digest_runner = runner.clone();
        Fixture {
            app: app(state.clone()),
            state,
            engine_digest: Box::new(move || digest_runner.engine().digest()),
            _dir: dir,
        }
    }

    /// A state that never becomes ready (no engine).
    pub fn not_ready() -> Fixture {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (keys, _) = KeyStore::open(dir.path(), Some(MASTER.to_string())).expect("opens");
        let state = AppState::new(keys, HttpLimits::default());
        Fixture {
            app: app(state.clone()),
            state,
            engine_digest: Box::new(|| [0; 32]),
            _dir: dir,
        }
    }

    pub fn digest(&self) -> [u8; 32] {
        (self.engine_digest)()
    }

    /// Sends a request with raw bytes.
    pub async fn raw(&self, req: Request<Body>) -> Answer {
        let res = self
            .app
            .clone()
            .oneshot(req)
            .await
            .expect("the router never fails");
        Self::answer(res).await
    }

    /// Sends a request to the router alone, never to the direct route of
    /// `POST /v1/reservations` (see `depot_api::server::App`).
    pub async fn raw_via_router(&self, req: Request<Body>) -> Answer {
        let res = self
            .app
            .router()
            .clone()
            .oneshot(req)
            .await
            .expect("the router never fails");
        Self::answer(res).await
    }

    async fn answer(res: axum::response::Response) -> Answer {
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), 16 * 1024 * 1024)
            .await
            .expect("a body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    /// Sends `method path` with `key`, an optional JSON body and extra headers.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut b = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("a method"))
            .uri(path);
        if let Some(k) = key {
            b = b.header("authorization", format!("Bearer {k}"));
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = match body {
            Some(v) => b
                .header("content-type", "application/json")
                .body(Body::from(v.to_string())),
            None => b.body(Body::empty()),
        }
        .expect("a request");
        self.raw(req).await
    }

    pub async fn get(&self, path: &str, key: &str) -> Answer {
        self.call("GET", path, Some(key), None, &[]).await
    }

    /// A write with an idempotency key.
    pub async fn write(
        &self,
        method: &str,
        path: &str,
        key: &str,
        idem: &str,
        body: Value,
    ) -> Answer {
        self.call(
            method,
            path,
            Some(key),
            Some(body),
            &[("idempotency-key", idem)],
        )
        .await
    }

    /// Creates a key; returns its secret.
    pub async fn key(&self, creator: &str, body: Value) -> String {
        let a = self
            .call("POST", "/v1/keys", Some(creator), Some(body), &[])
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        a.body["key"].as_str().expect("a key").to_string()
    }

    /// A tenant with two warehouses, channels `shopify:<t>` and `ebay:<t>`, 100 `MUG` in
    /// `wh-east`, and a key of every role.
    pub async fn tenant(&self, t: &str) -> Keys {
        let a = self
            .call(
                "POST",
                "/v1/tenants",
                Some(MASTER),
                Some(json!({ "id": t })),
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        let admin = self
            .key(MASTER, json!({"tenant": t, "role": "admin"}))
            .await;
        for (loc, region) in [("wh-east", "us-east"), ("wh-west", "us-west")] {
            let a = self
                .call(
                    "PUT",
                    &format!("/v1/locations/{loc}"),
                    Some(&admin),
                    Some(json!({"kind": "warehouse", "name": loc, "region": region})),
                    &[],
                )
                .await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        }
        for ch in [format!("shopify:{t}"), format!("ebay:{t}")] {
            let kind = ch.split(':').next().unwrap();
            let a = self
                .call(
                    "PUT",
                    &format!("/v1/channels/{ch}"),
                    Some(&admin),
                    Some(json!({"kind": kind, "priority": 10})),
                    &[],
                )
                .await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        }
        let a = self
            .write(
                "POST",
                "/v1/stock/adjustments",
                &admin,
                &format!("{t}-receive"),
                json!({"sku": "MUG", "location": "wh-east", "kind": "receive", "quantity": 100, "reason": "PO 1"}),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let channel = self
            .key(
                &admin,
                json!({"role": "channel", "channels": [format!("shopify:{t}")]}),
            )
            .await;
        let other_channel = self
            .key(
                &admin,
                json!({"role": "channel", "channels": [format!("ebay:{t}")]}),
            )
            .await;
        let wms = self
            .key(&admin, json!({"role": "wms", "locations": ["wh-east"]}))
            .await;
        let reader = self.key(&admin, json!({"role": "reader"})).await;
        Keys {
            tenant: t.to_string(),
            admin,
            channel,
            other_channel,
            wms,
            reader,
        }
    }

    /// Reserves `quantity` MUG on `shopify:<t>`; returns the reservation id.
    pub async fn reserve(&self, k: &Keys, key: &str, idem: &str, quantity: i64) -> String {
        let a = self
            .write(
                "POST",
                "/v1/reservations",
                key,
                idem,
                json!({"channel": format!("shopify:{}", k.tenant), "lines": [{"sku": "MUG", "quantity": quantity}]}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        a.body["id"].as_str().expect("an id").to_string()
    }
}
