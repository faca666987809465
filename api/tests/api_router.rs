//! The router without a socket: every endpoint's success, every error code of API.md, the
//! idempotency contract, and the OpenAPI document.

mod api_support;

use api_support::{Answer, Fixture, Keys, MASTER};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use depot_api::server::config::HttpLimits;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;

async fn setup() -> (Fixture, Keys) {
    let f = Fixture::new();
    let k = f.tenant("acme").await;
    (f, k)
}

#[tokio::test]
async fn every_endpoint_answers_its_success() {
    let (f, k) = setup().await;
    let a = &k.admin;
    // Configuration.
    let r = f
        .call(
            "PUT",
            "/v1/bundles/GIFT",
            Some(a),
            Some(json!({"components": [{"sku": "MUG", "quantity": 2}]})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["id"], "GIFT");
    let rules = json!({"oversell_policy": "newest_first", "rules": [
        {"id": "ebay-buffer", "kind": "buffer", "channels": ["ebay:acme"], "units": 10}]});
    let r = f
        .call("PUT", "/v1/allocation-rules", Some(a), Some(rules), &[])
        .await;
    assert_eq!(
        (r.status, r.body["version"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{}",
        r.body
    );
    let r = f.get("/v1/allocation-rules", &k.reader).await;
    assert_eq!(r.body["version"], 1, "{}", r.body);
    assert_eq!(r.body["rules"][0]["id"], "ebay-buffer");

    // Stock.
    let r = f.get("/v1/stock/MUG", &k.reader).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["locations"][0]["on_hand"], 100, "{}", r.body);
    let ebay = r.body["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "ebay:acme")
        .unwrap()
        .clone();
    assert_eq!(ebay["available_to_sell"], 90);
    let r = f
        .get("/v1/stock/MUG/explain?channel=ebay:acme", &k.reader)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["available_to_sell"], 90);
    let total: i64 = r.body["terms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["quantity"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 90, "the terms add up to the ATS: {}", r.body);
    let r = f.get("/v1/channels/ebay:acme/exposure", &k.reader).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["skus"][0],
        json!({"sku": "MUG", "available_to_sell": 90, "available": 100, "held_back": 10, "exposure": 0})
    );

    let adjust = |idem: &'static str, body: Value| {
        f.write("POST", "/v1/stock/adjustments", &k.wms, idem, body)
    };
    let r = adjust("a1", json!({"sku": "MUG", "location": "wh-east", "kind": "move", "from": "available", "to": "damaged", "quantity": 5, "reason": "broken"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["levels"][0]["damaged"], 5, "{}", r.body);
    let r = adjust("a2", json!({"sku": "MUG", "location": "wh-east", "kind": "set", "quantity": 95, "compare_quantity": 100, "reason": "count"})).await;
    assert_eq!(r.body["levels"][0]["on_hand"], 95, "{}", r.body);
    let r = adjust("a3", json!({"sku": "MUG", "location": "wh-east", "kind": "adjust", "quantity": 5, "reason": "found"})).await;
    assert_eq!(r.body["levels"][0]["on_hand"], 100, "{}", r.body);
    let r = f.write("POST", "/v1/stock/adjustments", a, "a4", json!({"sku": "MUG", "location": "wh-east", "kind": "transfer", "to_location": "wh-west", "quantity": 10, "reason": "rebalance"})).await;
    assert_eq!(r.body["levels"][1]["incoming"], 10, "{}", r.body);
    let r = f.write("POST", "/v1/stock/adjustments", a, "a5", json!({"sku": "MUG", "location": "wh-west", "kind": "receive", "quantity": 10, "unit_cost": "3.40", "reason": "arrived"})).await;
    assert_eq!(r.body["levels"][0]["on_hand"], 10, "{}", r.body);
    let r = f.write("POST", "/v1/stock/adjustments", a, "a6", json!({"sku": "TEA", "location": "wh-west", "kind": "expect", "quantity": 7, "expected_at": "2030-01-01T00:00:00Z", "reason": "PO 2"})).await;
    assert_eq!(
        r.body["levels"][0]["incoming_expected_at"], "2030-01-01T00:00:00.000Z",
        "{}",
        r.body
    );

    // Reservations: reserve, get, extend, commit, fulfil, return; another released, another cancelled.
    let id = f.reserve(&k, &k.channel, "o1", 3).await;
    let r = f.get(&format!("/v1/reservations/{id}"), &k.channel).await;
    assert_eq!(
        (r.status, r.body["state"].as_str()),
        (StatusCode::OK, Some("held")),
        "{}",
        r.body
    );
    assert!(r.body["expires_at"].as_str().unwrap().ends_with('Z'));
    let r = f
        .write(
            "POST",
            &format!("/v1/reservations/{id}/extend"),
            &k.channel,
            "e1",
            json!({"ttl_seconds": 3600}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["state"].as_str()),
        (StatusCode::OK, Some("held")),
        "{}",
        r.body
    );
    let r = f
        .write(
            "POST",
            &format!("/v1/reservations/{id}/commit"),
            &k.channel,
            "c1",
            json!({}),
        )
        .await;
    assert_eq!(r.body["state"], "committed", "{}", r.body);
    let r = f
        .write(
            "POST",
            &format!("/v1/reservations/{id}/fulfil"),
            &k.wms,
            "f1",
            json!({"lines": [{"sku": "MUG", "location": "wh-east", "quantity": 3}]}),
        )
        .await;
    assert_eq!(r.body["state"], "fulfilled", "{}", r.body);
    let r = f.write("POST", &format!("/v1/reservations/{id}/return"), &k.wms, "r1", json!({"sku": "MUG", "location": "wh-east", "quantity": 1, "damaged": true, "reason": "dented"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let id2 = f.reserve(&k, a, "o2", 1).await;
    let r = f
        .call(
            "POST",
            &format!("/v1/reservations/{id2}/release"),
            Some(a),
            None,
            &[("idempotency-key", "rel")],
        )
        .await;
    assert_eq!(r.body["state"], "released", "{}", r.body);
    let id3 = f.reserve(&k, a, "o3", 1).await;
    f.call(
        "POST",
        &format!("/v1/reservations/{id3}/commit"),
        Some(a),
        None,
        &[("idempotency-key", "c3")],
    )
    .await;
    let r = f
        .call(
            "POST",
            &format!("/v1/reservations/{id3}/cancel"),
            Some(a),
            None,
            &[("idempotency-key", "x3")],
        )
        .await;
    assert_eq!(r.body["state"], "cancelled", "{}", r.body);

    // Events.
    let r = f.get("/v1/events?after=0&limit=1000", &k.reader).await;
    assert_eq!(r.status, StatusCode::OK);
    let kinds: Vec<&str> = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in [
        "tenant_created",
        "stock_changed",
        "reservation_held",
        "reservation_committed",
        "fulfilled",
        "returned",
        "reservation_released",
        "reservation_cancelled",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let next = r.body["next"].as_u64().unwrap();
    let r = f.get(&format!("/v1/events?after={next}"), &k.reader).await;
    assert_eq!(r.body["events"], json!([]));

    // Operations endpoints.
    let r = f.call("GET", "/healthz", None, None, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = f.call("GET", "/readyz", None, None, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let held = f
        .call(
            "POST",
            "/v1/reservations",
            Some(a),
            Some(json!({"channel": "shopify:acme", "lines": [{"sku": "MUG", "quantity": 1}]})),
            &[("Idempotency-Key", "metrics-1")],
        )
        .await;
    assert_eq!(held.status, StatusCode::CREATED, "{}", held.body);
    let r = f.call("GET", "/metrics", None, None, &[]).await;
    let text = r.body.as_str().unwrap_or_default();
    assert!(
        text.contains("/v1/reservations/{id}"),
        "metrics per matched route: {text}"
    );
    let gauge = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1.0)
    };
    assert_eq!(gauge(r#"depot_holds{state="active"}"#), 1.0, "{text}");
}

#[tokio::test]
async fn batch_runs_operations_in_order_each_with_its_status() {
    let (f, k) = setup().await;
    let ops = json!({"operations": [
        {"method": "POST", "path": "/v1/reservations", "idempotency_key": "b1",
         "body": {"channel": "shopify:acme", "lines": [{"sku": "MUG", "quantity": 60}]}},
        {"method": "POST", "path": "/v1/reservations", "idempotency_key": "b2",
         "body": {"channel": "shopify:acme", "lines": [{"sku": "MUG", "quantity": 60}]}},
        {"method": "GET", "path": "/v1/stock/MUG"},
        {"method": "POST", "path": "/v1/reservations", "body": {"channel": "shopify:acme", "lines": []}},
        {"method": "POST", "path": "/v1/tenants", "body": {"id": "x"}},
        {"method": "GET", "path": "/v1/stock/MUG/explain?channel=shopify:acme"},
    ]});
    let r = f
        .call("POST", "/v1/batch", Some(&k.admin), Some(ops.clone()), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let res = r.body["results"].as_array().unwrap();
    let statuses: Vec<u64> = res.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [201, 409, 200, 400, 400, 200], "{}", r.body);
    assert_eq!(res[1]["body"]["error"]["code"], "insufficient_stock");
    assert_eq!(
        res[1]["body"]["error"]["details"]["shortages"][0]["available_to_sell"],
        40
    );
    assert_eq!(
        res[2]["body"]["locations"][0]["reserved"], 60,
        "the read sees the write before it"
    );
    assert_eq!(
        res[3]["body"]["error"]["details"]["field"],
        "Idempotency-Key"
    );
    assert_eq!(res[5]["body"]["available_to_sell"], 40);
    // The same batch again: the writes replay.
    let r = f
        .call("POST", "/v1/batch", Some(&k.admin), Some(ops), &[])
        .await;
    assert_eq!(r.body["results"][0]["replayed"], true, "{}", r.body);
    assert_eq!(r.body["results"][0]["status"], 201);
    // Limits and roles per operation.
    let many: Vec<Value> = (0..101)
        .map(|_| json!({"method": "GET", "path": "/v1/stock/MUG"}))
        .collect();
    let r = f
        .call(
            "POST",
            "/v1/batch",
            Some(&k.admin),
            Some(json!({"operations": many})),
            &[],
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let r = f
        .call("POST", "/v1/batch", Some(&k.reader), Some(json!({"operations": [{"method": "PUT", "path": "/v1/channels/b2b", "body": {"kind": "b2b"}}]})), &[])
        .await;
    assert_eq!(r.body["results"][0]["status"], 403, "{}", r.body);
}

#[tokio::test]
async fn idempotency_replays_and_refuses_reuse_with_another_body() {
    let (f, k) = setup().await;
    let body = json!({"channel": "shopify:acme", "lines": [{"sku": "MUG", "quantity": 2}]});
    let first = f
        .write(
            "POST",
            "/v1/reservations",
            &k.channel,
            "order-1",
            body.clone(),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(first.headers.get("idempotent-replay").is_none());
    let again = f
        .write("POST", "/v1/reservations", &k.channel, "order-1", body)
        .await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.headers["idempotent-replay"], "true");
    assert_eq!(again.body, first.body);
    let other = json!({"channel": "shopify:acme", "lines": [{"sku": "MUG", "quantity": 3}]});
    let reused = f
        .write("POST", "/v1/reservations", &k.channel, "order-1", other)
        .await;
    assert_eq!(
        (reused.status, reused.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
    );
    reused.assert_error_body();
    let stock = f.get("/v1/stock/MUG", &k.admin).await;
    assert_eq!(
        stock.body["locations"][0]["reserved"], 2,
        "one hold only: {}",
        stock.body
    );
    // Adjustments replay too, and change nothing the second time.
    let adj = json!({"sku": "MUG", "location": "wh-east", "kind": "adjust", "quantity": 1, "reason": "x"});
    f.write(
        "POST",
        "/v1/stock/adjustments",
        &k.admin,
        "adj-1",
        adj.clone(),
    )
    .await;
    let r = f
        .write("POST", "/v1/stock/adjustments", &k.admin, "adj-1", adj)
        .await;
    assert_eq!(r.headers["idempotent-replay"], "true");
    assert_eq!(r.body["levels"][0]["on_hand"], 101, "{}", r.body);
}

#[tokio::test]
async fn every_error_code_has_its_status_and_body() {
    let (f, k) = setup().await;
    let a = k.admin.as_str();
    let id = f.reserve(&k, a, "held", 1).await;
    f.call(
        "POST",
        &format!("/v1/reservations/{id}/release"),
        Some(a),
        None,
        &[("idempotency-key", "rl")],
    )
    .await;
    let reserve =
        |q: i64| json!({"channel": "shopify:acme", "lines": [{"sku": "MUG", "quantity": q}]});
    let cases: Vec<(&str, Answer, StatusCode, &str)> = vec![
        ("no body", f.call("POST", "/v1/reservations", Some(a), None, &[("idempotency-key", "k")]).await, StatusCode::BAD_REQUEST, "invalid_request"),
        ("wrong type", f.write("POST", "/v1/reservations", a, "k", json!({"channel": "shopify:acme", "lines": [{"sku": "MUG", "quantity": "2"}]})).await, StatusCode::BAD_REQUEST, "invalid_request"),
        ("no idempotency key", f.call("POST", "/v1/reservations", Some(a), Some(reserve(1)), &[]).await, StatusCode::BAD_REQUEST, "invalid_request"),
        ("engine validation", f.write("POST", "/v1/reservations", a, "k0", reserve(0)).await, StatusCode::BAD_REQUEST, "invalid_request"),
        ("no key", f.call("GET", "/v1/stock/MUG", None, None, &[]).await, StatusCode::UNAUTHORIZED, "unauthenticated"),
        ("unknown key", f.get("/v1/stock/MUG", "dpk_nope").await, StatusCode::UNAUTHORIZED, "unauthenticated"),
        ("master on stock", f.get("/v1/stock/MUG", MASTER).await, StatusCode::FORBIDDEN, "forbidden"),
        ("reader reserves", f.write("POST", "/v1/reservations", &k.reader, "k", reserve(1)).await, StatusCode::FORBIDDEN, "forbidden"),
        ("unknown reservation", f.get("/v1/reservations/res_999999", a).await, StatusCode::NOT_FOUND, "not_found"),
        ("malformed id", f.get("/v1/reservations/abc", a).await, StatusCode::NOT_FOUND, "not_found"),
        ("unknown channel", f.write("POST", "/v1/reservations", a, "k1", json!({"channel": "nope", "lines": [{"sku": "MUG", "quantity": 1}]})).await, StatusCode::NOT_FOUND, "not_found"),
        ("no route", f.get("/v1/nothing", a).await, StatusCode::NOT_FOUND, "not_found"),
        ("too much", f.write("POST", "/v1/reservations", a, "k2", reserve(1000)).await, StatusCode::CONFLICT, "insufficient_stock"),
        ("commit released", f.call("POST", &format!("/v1/reservations/{id}/commit"), Some(a), None, &[("idempotency-key", "cm")]).await, StatusCode::CONFLICT, "invalid_state"),
        ("compare", f.write("POST", "/v1/stock/adjustments", a, "k3", json!({"sku": "MUG", "location": "wh-east", "kind": "set", "quantity": 1, "compare_quantity": 7, "reason": "count"})).await, StatusCode::CONFLICT, "compare_failed"),
        ("reused", f.write("POST", "/v1/reservations", a, "held", reserve(2)).await, StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
        ("method", f.call("DELETE", "/v1/stock/MUG", Some(a), None, &[]).await, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    ];
    for (what, r, status, code) in &cases {
        assert_eq!((r.status, r.code()), (*status, *code), "{what}: {}", r.body);
        r.assert_error_body();
    }
    assert_eq!(
        cases[1].1.body["error"]["details"]["field"],
        "lines[0].quantity"
    );
    assert_eq!(
        cases[2].1.body["error"]["details"]["field"],
        "Idempotency-Key"
    );
    assert_eq!(
        cases[12].1.body["error"]["details"]["shortages"],
        json!([{"sku": "MUG", "requested": 1000, "available_to_sell": 100}])
    );
    assert_eq!(
        cases[14].1.body["error"]["details"],
        json!({"expected": 7, "actual": 100})
    );
}

/// A path parameter that is not UTF-8 once percent-decoded is 400 with the error body naming
/// the parameter, on every route that has one, and changes nothing.
#[tokio::test]
async fn path_parameters_that_are_not_utf8_are_400_naming_the_parameter() {
    let (f, k) = setup().await;
    let before = f.digest();
    let mut seen = 0;
    for (method, template) in depot_api::server::routes() {
        let Some((head, rest)) = template.split_once('{') else {
            continue;
        };
        let (param, tail) = rest.split_once('}').expect("a closed parameter");
        let path = format!("{head}%FF%FE{tail}");
        let key = if template.starts_with("/v1/keys/") {
            MASTER
        } else {
            k.admin.as_str()
        };
        let body = (method != "GET" && method != "DELETE").then(|| json!({}));
        let a = f
            .call(
                method,
                &path,
                Some(key),
                body,
                &[("idempotency-key", "bad-path")],
            )
            .await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{method} {path}: {}",
            a.body
        );
        a.assert_error_body();
        assert_eq!(
            a.body["error"]["details"]["field"], param,
            "{method} {path}"
        );
        seen += 1;
    }
    assert!(seen >= 9, "routes with a parameter: {seen}");
    assert_eq!(f.digest(), before);
}

#[tokio::test]
async fn bodies_that_are_not_json_are_400_and_big_ones_413() {
    let (f, k) = setup().await;
    let req = |ct: &str, body: Vec<u8>| {
        Request::post("/v1/reservations")
            .header("authorization", format!("Bearer {}", k.admin))
            .header("idempotency-key", "x")
            .header("content-type", ct)
            .body(Body::from(body))
            .unwrap()
    };
    let r = f.raw(req("text/plain", b"{}".to_vec())).await;
    assert_eq!(
        (r.status, r.body["error"]["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("content-type"))
    );
    let r = f
        .raw(req("application/json", b"{\"channel\": ".to_vec()))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_request"),
        "{}",
        r.body
    );
    let r = f
        .raw(req("application/json", b"{} trailing".to_vec()))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let big = vec![b' '; 2 * 1024 * 1024];
    let r = f.raw(req("application/json", big)).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        "{}",
        r.body
    );
    r.assert_error_body();
    let mut b =
        Request::get("/v1/stock/MUG").header("authorization", format!("Bearer {}", k.admin));
    for i in 0..100 {
        b = b.header(format!("x-h{i}"), "v");
    }
    let r = f.raw(b.body(Body::empty()).unwrap()).await;
    assert_eq!(
        (r.status, r.code()),
        (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large"
        )
    );
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let f = Fixture::with_limits(HttpLimits {
        rate_per_s: 1,
        rate_burst: 20,
        ..HttpLimits::default()
    });
    let k = f.tenant("acme").await;
    let mut limited = None;
    for _ in 0..30 {
        let r = f.get("/v1/stock/MUG", &k.reader).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("a burst of 20 is exhausted within 30 requests");
    assert_eq!(r.code(), "rate_limited");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    // Another key has its own bucket.
    assert_eq!(
        f.get("/v1/stock/MUG", &k.admin).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn not_ready_until_recovery_is_done() {
    let f = Fixture::not_ready();
    let r = f.call("GET", "/readyz", None, None, &[]).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    );
    let r = f
        .call(
            "POST",
            "/v1/tenants",
            Some(MASTER),
            Some(json!({"id": "acme"})),
            &[],
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    );
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(
        f.call("GET", "/healthz", None, None, &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_request_that_takes_too_long_is_503_timeout() {
    let f = Fixture::with_limits(HttpLimits {
        request_timeout: Duration::from_millis(50),
        ..HttpLimits::default()
    });
    // Hold the engine for longer than the timeout.
    let runner = f.state.runner().unwrap();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        runner.engine().inspect(|_, _| {
            held_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(500));
        })
    });
    held_rx.recv().unwrap();
    let r = f
        .call(
            "POST",
            "/v1/tenants",
            Some(MASTER),
            Some(json!({"id": "acme"})),
            &[],
        )
        .await;
    holder.join().unwrap();
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn a_full_engine_queue_answers_503_overloaded_and_does_nothing() {
    let f = Fixture::with_limits(HttpLimits {
        engine_queue_max: 1,
        ..HttpLimits::default()
    });
    let k = f.tenant("acme").await;
    let before = f.get("/v1/stock/MUG", &k.admin).await.body;
    // Hold the engine: the write thread takes one group and waits; one more fits the queue.
    let runner = f.state.runner().unwrap();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        runner.engine().inspect(|_, _| {
            held_tx.send(()).unwrap();
            // Until the test has its first answer (bounded, so a failure cannot hang).
            let _ = release_rx.recv_timeout(Duration::from_secs(10));
        })
    });
    held_rx.recv().unwrap();
    let reserve = |n: usize| {
        let key = format!("overload-{n}");
        let f = &f;
        let admin = k.admin.clone();
        async move {
            f.call(
                "POST",
                "/v1/reservations",
                Some(&admin),
                Some(json!({"channel": "shopify:acme", "lines": [{"sku": "MUG", "quantity": 1}]})),
                &[("Idempotency-Key", key.as_str())],
            )
            .await
        }
    };
    // The first is queued (by its first poll) and taken by the write thread as a batch of its
    // own, which then waits for the held engine; so the write thread takes nothing else
    // meanwhile (it adds every group queued when it wakes to its batch, which would make the
    // count below depend on timing). Waiting for the batch to be counted, not merely for the
    // queue to be empty: in between, the thread may still be adding groups to it.
    let queue = f.state.runner().unwrap();
    let taken = queue.taken().0;
    let mut first = Box::pin(reserve(0));
    assert!(futures_util::FutureExt::now_or_never(&mut first).is_none());
    while queue.taken().0 == taken {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(queue.queued().0, 0);
    // The other three are sent at once: one fits the queue, two are refused. Accepted ones wait
    // for the held engine, so every answer meanwhile is a refusal; the engine is let go once
    // each of the three has either been answered or is in the queue (a request may still be on
    // its way to the queue after another's refusal, so one answer is not enough to wait for).
    let mut pending: futures_util::stream::FuturesUnordered<_> =
        (1..4).map(|n| Box::pin(reserve(n))).collect();
    pending.push(first);
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while answers.len() + queue.queued().0 < 3 && tokio::time::Instant::now() < deadline {
        tokio::select! {
            a = pending.next() => answers.extend(a),
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
    }
    release_tx.send(()).unwrap();
    while let Some(a) = pending.next().await {
        answers.push(a);
    }
    holder.join().unwrap();
    let created = answers
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    let overloaded: Vec<&Answer> = answers
        .iter()
        .filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!((created, overloaded.len()), (2, 2), "{answers:?}");
    for r in overloaded {
        r.assert_error_body();
        assert_eq!(r.code(), "overloaded");
    }
    // Only the accepted reservations hold stock.
    let after = f.get("/v1/stock/MUG", &k.admin).await.body;
    let reserved = |b: &Value| b["locations"][0]["reserved"].as_i64().unwrap_or(-1);
    assert_eq!(
        reserved(&after) - reserved(&before),
        created as i64,
        "{after}"
    );
}

#[tokio::test]
async fn keys_are_shown_once_revoked_and_scoped_by_cidr() {
    let (f, k) = setup().await;
    // An admin creates keys of its own tenant only.
    let r = f
        .call(
            "POST",
            "/v1/keys",
            Some(&k.admin),
            Some(json!({"tenant": "other", "role": "reader"})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = f
        .call(
            "POST",
            "/v1/keys",
            Some(MASTER),
            Some(json!({"tenant": "ghost", "role": "reader"})),
            &[],
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
    // Scopes a role does not use are refused, naming the field; no key is made.
    for (body, field) in [
        (
            json!({"role": "admin", "channels": ["shopify:acme"]}),
            "channels",
        ),
        (
            json!({"role": "reader", "locations": ["wh-east"]}),
            "locations",
        ),
        (
            json!({"role": "channel", "locations": ["wh-east"]}),
            "locations",
        ),
        (
            json!({"role": "wms", "channels": ["shopify:acme"]}),
            "channels",
        ),
    ] {
        let r = f
            .call("POST", "/v1/keys", Some(&k.admin), Some(body.clone()), &[])
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{body}"
        );
        assert_eq!(r.body["error"]["details"]["field"], field, "{body}");
    }
    let r = f
        .call(
            "POST",
            "/v1/keys",
            Some(MASTER),
            Some(json!({"tenant": "acme", "role": "boss"})),
            &[],
        )
        .await;
    assert_eq!(r.body["error"]["details"]["field"], "role", "{}", r.body);
    let r = f
        .call(
            "POST",
            "/v1/keys",
            Some(&k.reader),
            Some(json!({"role": "reader"})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // A key limited to a network that requests here (no peer: `::`) do not come from.
    let r = f
        .call(
            "POST",
            "/v1/keys",
            Some(&k.admin),
            Some(json!({"role": "reader", "cidrs": ["10.0.0.0/8"]})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let (walled, walled_id) = (
        r.body["key"].as_str().unwrap().to_string(),
        r.body["id"].as_str().unwrap().to_string(),
    );
    assert_eq!(
        f.get("/v1/stock/MUG", &walled).await.status,
        StatusCode::FORBIDDEN
    );
    let mut req = Request::get("/v1/stock/MUG")
        .header("authorization", format!("Bearer {walled}"))
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [10, 1, 2, 3],
            4000,
        ))));
    assert_eq!(f.raw(req).await.status, StatusCode::OK);
    // Revocation: 204, then the key is unknown; other tenants' keys are 404 to an admin.
    let other = f.tenant("globex").await;
    let r = f
        .call(
            "DELETE",
            &format!("/v1/keys/{walled_id}"),
            Some(&other.admin),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = f
        .call(
            "DELETE",
            &format!("/v1/keys/{walled_id}"),
            Some(&k.admin),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let mut req = Request::get("/v1/stock/MUG")
        .header("authorization", format!("Bearer {walled}"))
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [10, 1, 2, 3],
            4000,
        ))));
    assert_eq!(f.raw(req).await.status, StatusCode::UNAUTHORIZED);
    // The master key creates tenants, and only it.
    let r = f
        .call(
            "POST",
            "/v1/tenants",
            Some(&k.admin),
            Some(json!({"id": "x"})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = f
        .call(
            "POST",
            "/v1/tenants",
            Some(MASTER),
            Some(json!({"id": "acme"})),
            &[],
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "invalid_state")
    );
}

/// Reads the first bytes of the event stream.
#[tokio::test]
async fn event_stream_starts_with_held_events_and_resumes_from_last_event_id() {
    use tower::ServiceExt;
    let (f, k) = setup().await;
    let read = |last_event_id: Option<&'static str>| {
        let mut b = Request::get("/v1/events/stream")
            .header("authorization", format!("Bearer {}", k.admin));
        if let Some(id) = last_event_id {
            b = b.header("last-event-id", id);
        }
        let req = b.body(Body::empty()).unwrap();
        let app = f.app.clone();
        async move {
            let res = app.oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(res.headers()["content-type"], "text/event-stream");
            let mut body = res.into_body().into_data_stream();
            use futures_util::StreamExt;
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            String::from_utf8_lossy(&chunk).to_string()
        }
    };
    let first = read(None).await;
    assert!(first.contains("event: tenant_created"), "{first}");
    let seq = first
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("an id")
        .to_string();
    let leaked: &'static str = Box::leak(seq.into_boxed_str());
    let resumed = read(Some(leaked)).await;
    assert!(!resumed.contains("tenant_created"), "{resumed}");
}

#[tokio::test]
async fn the_openapi_document_is_3_1_and_documents_every_route() {
    let f = Fixture::new();
    let r = f.call("GET", "/openapi.json", None, None, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = &r.body;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let routes = depot_api::server::routes();
    assert!(routes.len() >= 27);
    for (method, path) in routes {
        let op = &doc["paths"][path][method.to_ascii_lowercase()];
        assert!(
            op.is_object(),
            "{method} {path} is not in the OpenAPI document"
        );
        assert!(
            op["responses"].is_object(),
            "{method} {path} has no responses"
        );
    }
    for schema in [
        "ReserveBody",
        "ReservationDto",
        "ErrorBody",
        "StockDto",
        "BatchBody",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema} missing"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_a_given_one_is_kept() {
    let f = Fixture::new();
    let id = |a: &Answer| {
        a.headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let a = f.call("GET", "/healthz", None, None, &[]).await;
    let b = f.call("GET", "/v1/stock/X", None, None, &[]).await;
    let (a, b) = (id(&a).expect("an id"), id(&b).expect("an id, errors too"));
    assert_ne!(a, b);
    for x in [&a, &b] {
        assert_eq!(x.len(), 32, "{x}");
        assert!(x.bytes().all(|c| c.is_ascii_hexdigit()), "{x}");
    }
    // Same process, same prefix; a client's own id comes back unchanged.
    assert_eq!(a[..16], b[..16]);
    let c = f
        .call(
            "GET",
            "/healthz",
            None,
            None,
            &[("x-request-id", "trace-42")],
        )
        .await;
    assert_eq!(id(&c).as_deref(), Some("trace-42"));
    // One too long to repeat in every log line, or with a tab in it, is replaced.
    let long = "t".repeat(129);
    for given in [long.as_str(), "trace\t42"] {
        let d = f
            .call("GET", "/healthz", None, None, &[("x-request-id", given)])
            .await;
        let d = id(&d).expect("an id");
        assert_eq!(d.len(), 32, "{given:?} -> {d}");
        assert!(d.bytes().all(|c| c.is_ascii_hexdigit()), "{d}");
    }
}

/// `Idempotency-Key`: 1 to 255 printable ASCII characters (spaces allowed), else 400 naming
/// the header, and nothing changes.
#[tokio::test]
async fn idempotency_keys_are_printable_ascii_of_at_most_255() {
    let (f, k) = setup().await;
    let before = f.digest();
    let receive = json!({"sku": "MUG", "location": "wh-east", "kind": "receive", "quantity": 1, "reason": "po"});
    let long = "k".repeat(256);
    for bad in ["po\t1", long.as_str()] {
        let a = f
            .write(
                "POST",
                "/v1/stock/adjustments",
                &k.admin,
                bad,
                receive.clone(),
            )
            .await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{bad:?}: {}",
            a.body
        );
        assert_eq!(a.body["error"]["details"]["field"], "Idempotency-Key");
    }
    assert_eq!(f.digest(), before);
    for good in ["po 1", &"k".repeat(255)] {
        let a = f
            .write(
                "POST",
                "/v1/stock/adjustments",
                &k.admin,
                good,
                receive.clone(),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{good:?}: {}", a.body);
    }
}
