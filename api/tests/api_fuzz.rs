//! Hostile input at every endpoint: malformed JSON, wrong types, huge numbers, unknown fields,
//! unicode and invalid ids, oversized bodies, wrong content types. Every answer is a 4xx with
//! the error body of API.md (never a 5xx, never a panic), and the engine's state digest does
//! not move.

mod api_support;

use api_support::{Fixture, Keys, MASTER};
use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// An endpoint with a valid body, and what in it can be broken.
struct Endpoint {
    method: &'static str,
    path: String,
    key: Key,
    body: Value,
    /// Fields whose absence is an error.
    required: &'static [&'static str],
    /// Integer fields.
    numbers: &'static [&'static str],
    /// Fields holding ids (1–128 printable ASCII bytes) or enum names.
    names: &'static [&'static str],
}

#[derive(Clone, Copy)]
enum Key {
    Master,
    Admin,
}

fn endpoints(held: &str) -> Vec<Endpoint> {
    let e = |method, path: &str, key, body, required, numbers, names| Endpoint {
        method,
        path: path.to_string(),
        key,
        body,
        required,
        numbers,
        names,
    };
    let res = |op: &str| format!("/v1/reservations/{held}/{op}");
    vec![
        e(
            "POST",
            "/v1/tenants",
            Key::Master,
            json!({"id": "newco"}),
            &["id"],
            &[],
            &["id"],
        ),
        e(
            "POST",
            "/v1/keys",
            Key::Master,
            json!({"tenant": "acme", "role": "reader"}),
            &["role"],
            &[],
            &["role", "tenant"],
        ),
        e(
            "PUT",
            "/v1/locations/wh-x",
            Key::Admin,
            json!({"kind": "warehouse", "name": "x"}),
            &["kind", "name"],
            &[],
            &["kind"],
        ),
        e(
            "PUT",
            "/v1/channels/b2b",
            Key::Admin,
            json!({"kind": "b2b", "priority": 1}),
            &["kind"],
            &["priority"],
            &["kind"],
        ),
        e(
            "PUT",
            "/v1/bundles/GIFT",
            Key::Admin,
            json!({"components": [{"sku": "MUG", "quantity": 2}]}),
            &["components"],
            &[],
            &[],
        ),
        e(
            "PUT",
            "/v1/allocation-rules",
            Key::Admin,
            json!({"rules": [{"kind": "cap", "units": 5}]}),
            &[],
            &[],
            &["oversell_policy"],
        ),
        e(
            "POST",
            "/v1/stock/adjustments",
            Key::Admin,
            json!({"sku": "MUG", "location": "wh-east", "kind": "receive", "quantity": 1, "reason": "r"}),
            &["sku", "location", "kind", "quantity", "reason"],
            &["quantity"],
            &["sku", "location", "kind"],
        ),
        e(
            "POST",
            "/v1/reservations",
            Key::Admin,
            json!({"channel": "shopify:acme", "lines": [{"sku": "MUG", "quantity": 1}], "ttl_seconds": 60}),
            &["channel", "lines"],
            &["ttl_seconds"],
            &["channel", "fill"],
        ),
        e(
            "POST",
            &res("commit"),
            Key::Admin,
            json!({"lines": [{"sku": "MUG", "quantity": 1}]}),
            &[],
            &[],
            &[],
        ),
        e(
            "POST",
            &res("release"),
            Key::Admin,
            json!({}),
            &[],
            &[],
            &[],
        ),
        e("POST", &res("cancel"), Key::Admin, json!({}), &[], &[], &[]),
        e(
            "POST",
            &res("extend"),
            Key::Admin,
            json!({"ttl_seconds": 60}),
            &["ttl_seconds"],
            &["ttl_seconds"],
            &[],
        ),
        e(
            "POST",
            &res("fulfil"),
            Key::Admin,
            json!({"lines": [{"sku": "MUG", "location": "wh-east", "quantity": 1}]}),
            &["lines"],
            &[],
            &[],
        ),
        e(
            "POST",
            &res("return"),
            Key::Admin,
            json!({"sku": "MUG", "location": "wh-east", "quantity": 1, "reason": "r"}),
            &["sku", "location", "quantity", "reason"],
            &["quantity"],
            &["sku", "location"],
        ),
        e(
            "POST",
            "/v1/batch",
            Key::Admin,
            json!({"operations": []}),
            &["operations"],
            &[],
            &[],
        ),
    ]
}

/// A way to break a valid request.
#[derive(Clone, Debug)]
enum Breakage {
    /// Drop the n-th required field.
    Remove(usize),
    /// Add a field no body has.
    Unknown(String, Value),
    /// Put a value of the wrong kind in the n-th integer field.
    BadNumber(usize, Value),
    /// Put an invalid id or enum name in the n-th name field.
    BadName(usize, String),
    /// Replace the body with bytes that are not one JSON value (cut short, garbage first).
    Garbage(Vec<u8>),
    /// The body as another JSON type than an object.
    NotObject(Value),
    /// More bytes than the body limit.
    Oversized,
    /// A content type that is not JSON.
    ContentType(String),
}

/// A JSON value of any shape, unicode strings and huge numbers included.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "\\PC{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A value that is never a valid integer of any width depot reads.
fn not_an_integer() -> impl Strategy<Value = Value> {
    prop_oneof![
        "\\PC{0,20}".prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool),
        (1.0e20f64..1.0e300).prop_map(|f| json!(f)),
        (-1.0e300f64..-1.0e20).prop_map(|f| json!(f)),
        Just(json!(0.5)),
        Just(json!([1])),
        Just(json!({"n": 1})),
        // Beyond u64: JSON numbers this long are parsed as floats.
        Just(serde_json::from_str::<Value>("123456789012345678901234567890").unwrap()),
    ]
}

/// A string that is never an id or enum name: empty, with a space or a non-ASCII character,
/// or longer than 128 bytes.
fn not_a_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z]{0,5} [a-z]{0,5}",
        "[a-z]{0,5}[\u{80}-\u{10FFFF}][a-z]{0,5}",
        "[a-z]{129,200}",
        "\\PC*[\u{0}-\u{1f}]\\PC*",
    ]
}

fn breakage() -> impl Strategy<Value = Breakage> {
    prop_oneof![
        (0usize..8).prop_map(Breakage::Remove),
        ("zz[a-z_\u{80}-\u{ff}]{0,10}", any_json()).prop_map(|(k, v)| Breakage::Unknown(k, v)),
        (0usize..8, not_an_integer()).prop_map(|(i, v)| Breakage::BadNumber(i, v)),
        (0usize..8, not_a_name()).prop_map(|(i, s)| Breakage::BadName(i, s)),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|mut b| {
            b.insert(0, b'\x01');
            Breakage::Garbage(b)
        }),
        any_json()
            .prop_filter("not an object", |v| !v.is_object())
            .prop_map(Breakage::NotObject),
        Just(Breakage::Oversized),
        "(text/plain|application/xml|multipart/form-data|application/x-www-form-urlencoded)"
            .prop_map(Breakage::ContentType),
    ]
}

/// The request's body bytes and content type after `b`, or `None` when `b` does not apply to
/// this endpoint (then the body is cut short instead, which is always invalid).
fn broken(ep: &Endpoint, b: &Breakage) -> (Vec<u8>, String) {
    let json_ct = "application/json".to_string();
    let mut body = ep.body.clone();
    let obj = body.as_object_mut().expect("templates are objects");
    let cut_short = || {
        let s = ep.body.to_string();
        (s.as_bytes()[..s.len() - 1].to_vec(), json_ct.clone())
    };
    match b {
        Breakage::Remove(i) => match ep.required.get(*i) {
            Some(f) => {
                obj.remove(*f);
            }
            None => return cut_short(),
        },
        Breakage::Unknown(k, v) => {
            obj.insert(k.clone(), v.clone());
        }
        Breakage::BadNumber(i, v) => match ep.numbers.get(*i) {
            Some(f) => {
                obj.insert(f.to_string(), v.clone());
            }
            None => return cut_short(),
        },
        Breakage::BadName(i, s) => match ep.names.get(*i) {
            Some(f) => {
                obj.insert(f.to_string(), Value::String(s.clone()));
            }
            None => return cut_short(),
        },
        Breakage::Garbage(bytes) => return (bytes.clone(), json_ct),
        Breakage::NotObject(v) => return (v.to_string().into_bytes(), json_ct),
        Breakage::Oversized => {
            let mut s = ep.body.to_string().into_bytes();
            s.pop();
            s.extend(b", \"pad\": \"");
            s.extend(std::iter::repeat_n(b'x', 1024 * 1024 + 10));
            s.extend(b"\"}");
            return (s, json_ct);
        }
        Breakage::ContentType(ct) => return (ep.body.to_string().into_bytes(), ct.clone()),
    }
    (body.to_string().into_bytes(), json_ct)
}

struct World {
    rt: tokio::runtime::Runtime,
    f: Fixture,
    keys: Keys,
    held: String,
}

fn world() -> World {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (f, keys, held) = rt.block_on(async {
        let f = Fixture::new();
        let keys = f.tenant("acme").await;
        let held = f.reserve(&keys, &keys.admin, "held", 1).await;
        (f, keys, held)
    });
    World { rt, f, keys, held }
}

proptest! {
    // 128 cases, or PROPTEST_CASES for a soak.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128),
        ..ProptestConfig::default()
    })]

    #[test]
    fn hostile_bodies_get_a_4xx_error_body_and_change_nothing(
        which in 0usize..15,
        b in breakage(),
    ) {
        thread_local! { static WORLD: World = world(); }
        WORLD.with(|w| {
            let eps = endpoints(&w.held);
            let ep = &eps[which % eps.len()];
            let (bytes, ct) = broken(ep, &b);
            let key = match ep.key { Key::Master => MASTER, Key::Admin => &w.keys.admin };
            let before = w.f.digest();
            let req = Request::builder()
                .method(ep.method)
                .uri(&ep.path)
                .header("authorization", format!("Bearer {key}"))
                .header("idempotency-key", "fuzz")
                .header("content-type", ct)
                .body(Body::from(bytes))
                .unwrap();
            let r = w.rt.block_on(w.f.raw(req));
            prop_assert!(r.status.is_client_error(), "{} {} with {:?}: {} {}", ep.method, ep.path, b, r.status, r.body);
            r.assert_error_body();
            prop_assert_eq!(before, w.f.digest(), "{} {} with {:?} changed the state", ep.method, ep.path, b);
            Ok(())
        })?;
    }

    #[test]
    fn hostile_path_segments_never_fail_the_server(
        segment in "\\PC{0,150}",
        which in 0usize..6,
    ) {
        thread_local! { static WORLD: World = world(); }
        WORLD.with(|w| {
            let enc: String = segment.bytes().map(|b| format!("%{b:02X}")).collect();
            let (method, path) = [
                ("GET", format!("/v1/stock/{enc}")),
                ("GET", format!("/v1/stock/{enc}/explain?channel={enc}")),
                ("GET", format!("/v1/reservations/{enc}")),
                ("GET", format!("/v1/channels/{enc}/exposure?after={enc}")),
                ("GET", format!("/v1/events?after={enc}&limit={enc}")),
                ("POST", format!("/v1/reservations/{enc}/release")),
            ][which].clone();
            let before = w.f.digest();
            let req = Request::builder()
                .method(method)
                .uri(&path)
                .header("authorization", format!("Bearer {}", w.keys.admin))
                .header("idempotency-key", "fuzz-path")
                .body(Body::empty())
                .unwrap();
            let r = w.rt.block_on(w.f.raw(req));
            prop_assert!(!r.status.is_server_error(), "{method} {path}: {} {}", r.status, r.body);
            if !r.status.is_success() {
                r.assert_error_body();
            }
            // A release of a reservation that does not exist may be sequenced (and refused):
            // only reads are held to an unchanged state.
            if method == "GET" {
                prop_assert_eq!(before, w.f.digest());
            }
            Ok(())
        })?;
    }
}
