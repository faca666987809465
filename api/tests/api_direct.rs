//! `POST /v1/reservations` is served without the router (`depot_api::server::App`): the same
//! request must get the same answer from the direct route as from the router's route, for
//! every kind of refusal and for a hold, and be counted and logged the same way.

mod api_support;

use api_support::{Answer, Fixture, Keys, MASTER};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use depot_api::server::config::HttpLimits;
use serde_json::{json, Value};

/// A `POST` of `body` (raw bytes) to `path` with `headers`.
fn request(path: &str, headers: &[(&str, String)], body: &str) -> Request<Body> {
    let mut b = Request::builder().method("POST").uri(path);
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.body(Body::from(body.to_string())).expect("a request")
}

/// `v` without what differs between two holds made one after the other: ids and times.
fn stable(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "id" | "created_at" | "expires_at"))
                .map(|(k, v)| (k.clone(), stable(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(stable).collect()),
        v => v.clone(),
    }
}

/// The answer's headers that must agree (the request id is made per request; a hold's
/// `Location` names its own id, and its length depends on the id's digits: only whether
/// there is one is compared).
fn headers(a: &Answer) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = a
        .headers
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "x-request-id" | "location"))
        .map(|(k, v)| match k.as_str() {
            "content-length" => (k.to_string(), "present".to_string()),
            _ => (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()),
        })
        .collect();
    h.sort();
    h
}

/// Sends the request made by `make` (given a suffix for its idempotency key) to the direct
/// route and then to the router, and asserts the answers agree.
async fn same(fx: &Fixture, what: &str, make: impl Fn(&str) -> Request<Body>) -> Answer {
    let direct = fx.raw(make("d")).await;
    let routed = fx.raw_via_router(make("r")).await;
    assert_eq!(
        direct.status, routed.status,
        "{what}: {direct:?} / {routed:?}"
    );
    assert_eq!(
        stable(&direct.body),
        stable(&routed.body),
        "{what}: the bodies differ"
    );
    assert_eq!(
        headers(&direct),
        headers(&routed),
        "{what}: the headers differ"
    );
    assert!(
        direct.headers.contains_key("x-request-id"),
        "{what}: no request id"
    );
    direct
}

/// A request that is refused, and how.
struct Case<'a> {
    what: &'a str,
    status: StatusCode,
    key: Option<&'a str>,
    /// `None`: JSON; `Some("")`: no content type.
    content_type: Option<&'a str>,
    /// `None`: a fresh key per request; `Some("")`: none.
    idem: Option<&'a str>,
    extra_headers: usize,
    body: &'a str,
}

impl<'a> Case<'a> {
    fn new(what: &'a str, status: StatusCode, key: Option<&'a str>, body: &'a str) -> Self {
        Case {
            what,
            status,
            key,
            content_type: None,
            idem: None,
            extra_headers: 0,
            body,
        }
    }

    /// The request, with `suffix` in its idempotency key.
    fn request(&self, suffix: &str) -> Request<Body> {
        let mut h = Vec::new();
        if let Some(k) = self.key {
            h.push(auth(k));
        }
        match self.content_type {
            None => h.push(json_type()),
            Some("") => {}
            Some(t) => h.push(("content-type", t.to_string())),
        }
        match self.idem {
            None => h.push(idem(&format!("{}-{suffix}", self.what))),
            Some("") => {}
            Some(k) => h.push(idem(k)),
        }
        let extra: Vec<String> = (0..self.extra_headers)
            .map(|i| format!("x-extra-{i}"))
            .collect();
        let mut b = Request::builder().method("POST").uri("/v1/reservations");
        for (k, v) in &h {
            b = b.header(*k, v.as_str());
        }
        for name in &extra {
            b = b.header(name.as_str(), "1");
        }
        b.body(Body::from(self.body.to_string()))
            .expect("a request")
    }
}

fn cart(channel: &str, sku: &str, quantity: i64) -> String {
    json!({"channel": channel, "lines": [{"sku": sku, "quantity": quantity}]}).to_string()
}

fn auth(key: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {key}"))
}

fn json_type() -> (&'static str, String) {
    ("content-type", "application/json".to_string())
}

fn idem(key: &str) -> (&'static str, String) {
    ("idempotency-key", key.to_string())
}

#[tokio::test]
async fn the_direct_route_answers_as_the_router_does() {
    let fx = Fixture::with_limits(HttpLimits {
        body_bytes_max: 4096,
        headers_max: 16,
        ..HttpLimits::default()
    });
    let k: Keys = fx.tenant("acme").await;
    let shop = "shopify:acme";
    let good = cart(shop, "MUG", 2);

    // Refusals. Those before the engine (the key, the headers, the body) change nothing; an
    // unknown channel and a shortage are the engine's answers, remembered under their keys.
    let big: Vec<Value> = (0..400)
        .map(|i| json!({"sku": format!("SKU-{i}"), "quantity": 1}))
        .collect();
    let big = json!({"channel": shop, "lines": big}).to_string();
    let long_key = "k".repeat(1000);
    let nowhere = cart("amazon:nowhere", "MUG", 1);
    let too_many = cart(shop, "MUG", 1000);
    let cases = [
        Case::new("no key", StatusCode::UNAUTHORIZED, None, &good),
        Case::new(
            "an unknown key",
            StatusCode::UNAUTHORIZED,
            Some("no-such-key"),
            &good,
        ),
        Case::new("the master key", StatusCode::FORBIDDEN, Some(MASTER), &good),
        Case::new(
            "a reader key",
            StatusCode::FORBIDDEN,
            Some(&k.reader),
            &good,
        ),
        Case::new(
            "another channel's key",
            StatusCode::FORBIDDEN,
            Some(&k.other_channel),
            &good,
        ),
        Case {
            idem: Some(""),
            ..Case::new(
                "no idempotency key",
                StatusCode::BAD_REQUEST,
                Some(&k.channel),
                &good,
            )
        },
        Case {
            idem: Some(&long_key),
            ..Case::new(
                "an idempotency key too long",
                StatusCode::BAD_REQUEST,
                Some(&k.channel),
                &good,
            )
        },
        Case {
            content_type: Some("text/plain"),
            ..Case::new(
                "a body that is not JSON",
                StatusCode::BAD_REQUEST,
                Some(&k.channel),
                &good,
            )
        },
        Case::new(
            "broken JSON",
            StatusCode::BAD_REQUEST,
            Some(&k.channel),
            r#"{"channel": "shopify:acme", "lines": [{"sku": "MUG", "#,
        ),
        Case::new(
            "a quantity of the wrong type",
            StatusCode::BAD_REQUEST,
            Some(&k.channel),
            r#"{"channel": "shopify:acme", "lines": [{"sku": "MUG", "quantity": "2"}]}"#,
        ),
        Case {
            content_type: Some(""),
            ..Case::new("no body", StatusCode::BAD_REQUEST, Some(&k.channel), "")
        },
        Case::new(
            "a body over the limit",
            StatusCode::PAYLOAD_TOO_LARGE,
            Some(&k.channel),
            &big,
        ),
        Case {
            extra_headers: 20,
            ..Case::new(
                "too many headers",
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                Some(&k.channel),
                &good,
            )
        },
        Case::new(
            "an unknown channel",
            StatusCode::NOT_FOUND,
            Some(&k.admin),
            &nowhere,
        ),
        Case::new(
            "more than there is",
            StatusCode::CONFLICT,
            Some(&k.channel),
            &too_many,
        ),
    ];
    for case in &cases {
        let (what, status) = (case.what, case.status);
        let before = fx.digest();
        let a = same(&fx, what, |s| case.request(s)).await;
        assert_eq!(a.status, status, "{what}: {}", a.body);
        a.assert_error_body();
        if !matches!(status, StatusCode::NOT_FOUND | StatusCode::CONFLICT) {
            assert_eq!(fx.digest(), before, "{what}: the refusal changed the state");
        }
    }

    // A hold, and its replay, with a query string and a client's request id.
    let held = same(&fx, "a hold", |s| {
        request(
            "/v1/reservations?from=test",
            &[
                auth(&k.channel),
                json_type(),
                idem(&format!("hold-{s}")),
                ("x-request-id", format!("client-{s}")),
            ],
            &good,
        )
    })
    .await;
    assert_eq!(held.status, StatusCode::CREATED, "{}", held.body);
    assert_eq!(held.body["lines"][0]["quantity"], 2);
    assert_eq!(held.headers["x-request-id"], "client-d");
    let replay = same(&fx, "a replay", |s| {
        request(
            "/v1/reservations",
            &[auth(&k.channel), json_type(), idem(&format!("hold-{s}"))],
            &good,
        )
    })
    .await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.headers["idempotent-replay"], "true");
    assert_eq!(replay.body["id"], held.body["id"]);
    let stock = fx.get("/v1/stock/MUG", &k.admin).await;
    assert_eq!(stock.status, StatusCode::OK, "{}", stock.body);
    assert_eq!(
        stock.body["locations"][0]["reserved"], 4,
        "two holds of 2 (one each way) out of 100: {}",
        stock.body
    );

    // Another method on the path still goes to the router (405), and the metrics count the
    // direct route's requests under the route's own name.
    let get = fx
        .call("GET", "/v1/reservations", Some(&k.admin), None, &[])
        .await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED, "{}", get.body);
    let metrics = fx.call("GET", "/metrics", None, None, &[]).await;
    let text = metrics.body.as_str().expect("metrics text");
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("depot_http_requests_total")
                && l.contains(r#"route="/v1/reservations""#)
                && l.contains(r#"method="POST""#)
                && l.contains(r#"status="201""#)
        })
        .unwrap_or_else(|| panic!("no count of POST /v1/reservations 201 in\n{text}"));
    let count: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert_eq!(count, 4.0, "two holds and two replays: {line}");
}
