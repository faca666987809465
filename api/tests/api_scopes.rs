//! Every endpoint x every kind of caller x two tenants: roles, channel and location scopes, and
//! tenant isolation (another tenant's ids are 404, and no answer ever carries its data).

mod api_support;

use api_support::{Fixture, MASTER};
use axum::http::StatusCode;
use serde_json::{json, Value};

/// What a resource the row acts on must be, made fresh by acme's admin before each call.
#[derive(Clone, Copy, Debug)]
enum Target {
    Nothing,
    Held,
    Committed,
    Fulfilled,
    AcmeKey,
}

/// One endpoint: method, path (`{id}` is the target), body, the target, and the expected
/// answer per caller, in the order of `CALLERS`: `O` success, `F` 403, `N` 404.
struct Row {
    method: &'static str,
    path: &'static str,
    body: Option<Value>,
    target: Target,
    expect: &'static str,
}

const CALLERS: [&str; 8] = [
    "master",
    "acme admin",
    "acme channel (shopify:acme)",
    "acme channel (ebay:acme)",
    "acme wms (wh-east)",
    "acme reader",
    "globex admin",
    "globex channel (shopify:globex)",
];

fn rows() -> Vec<Row> {
    use Target::*;
    let row = |method, path, body: Option<Value>, target, expect| Row {
        method,
        path,
        body,
        target,
        expect,
    };
    vec![
        row(
            "PUT",
            "/v1/locations/wh-new",
            Some(json!({"kind": "store", "name": "n"})),
            Nothing,
            "FOFFFFOF",
        ),
        row(
            "PUT",
            "/v1/channels/b2b",
            Some(json!({"kind": "b2b"})),
            Nothing,
            "FOFFFFOF",
        ),
        row(
            "PUT",
            "/v1/bundles/GIFT",
            Some(json!({"components": [{"sku": "MUG", "quantity": 2}]})),
            Nothing,
            "FOFFFFOF",
        ),
        row(
            "PUT",
            "/v1/allocation-rules",
            Some(json!({"rules": []})),
            Nothing,
            "FOFFFFOF",
        ),
        row("GET", "/v1/allocation-rules", None, Nothing, "FOOOOOOO"),
        row(
            "POST",
            "/v1/stock/adjustments",
            Some(
                json!({"sku": "MUG", "location": "wh-east", "kind": "receive", "quantity": 1, "reason": "r"}),
            ),
            Nothing,
            "FOFFOFOF",
        ),
        row(
            "POST",
            "/v1/stock/adjustments",
            Some(
                json!({"sku": "MUG", "location": "wh-west", "kind": "receive", "quantity": 1, "reason": "r"}),
            ),
            Nothing,
            "FOFFFFOF",
        ),
        row("GET", "/v1/stock/MUG", None, Nothing, "FOOOOOOO"),
        row(
            "GET",
            "/v1/stock/MUG/explain?channel=shopify:acme",
            None,
            Nothing,
            "FOOFOONF",
        ),
        row(
            "GET",
            "/v1/channels/shopify:acme/exposure",
            None,
            Nothing,
            "FOOFFONF",
        ),
        row(
            "POST",
            "/v1/reservations",
            Some(json!({"channel": "shopify:acme", "lines": [{"sku": "MUG", "quantity": 1}]})),
            Nothing,
            "FOOFFFNF",
        ),
        row("GET", "/v1/reservations/{id}", None, Held, "FOONOONN"),
        row(
            "POST",
            "/v1/reservations/{id}/commit",
            None,
            Held,
            "FOONFFNN",
        ),
        row(
            "POST",
            "/v1/reservations/{id}/release",
            None,
            Held,
            "FOONFFNN",
        ),
        row(
            "POST",
            "/v1/reservations/{id}/extend",
            Some(json!({"ttl_seconds": 60})),
            Held,
            "FOONFFNN",
        ),
        row(
            "POST",
            "/v1/reservations/{id}/cancel",
            None,
            Committed,
            "FOONFFNN",
        ),
        row(
            "POST",
            "/v1/reservations/{id}/fulfil",
            Some(json!({"lines": [{"sku": "MUG", "location": "wh-east", "quantity": 1}]})),
            Committed,
            "FOFFOFNF",
        ),
        row(
            "POST",
            "/v1/reservations/{id}/return",
            Some(json!({"sku": "MUG", "location": "wh-east", "quantity": 1, "reason": "r"})),
            Fulfilled,
            "FOFFOFNF",
        ),
        row("GET", "/v1/events", None, Nothing, "FOFFFOOF"),
        row(
            "POST",
            "/v1/keys",
            Some(json!({"tenant": "acme", "role": "reader"})),
            Nothing,
            "OOFFFFFF",
        ),
        row("DELETE", "/v1/keys/{id}", None, AcmeKey, "OOFFFFNF"),
    ]
}

/// Acme's data that no globex answer may contain.
const ACME_SECRET: &str = "ACME-SECRET";

#[tokio::test]
async fn roles_scopes_and_tenants_are_enforced_on_every_endpoint() {
    let f = Fixture::new();
    let acme = f.tenant("acme").await;
    let globex = f.tenant("globex").await;
    // Acme-only data: a location named with the secret, stock there, orders that carry it.
    let r = f
        .call(
            "PUT",
            "/v1/locations/acme-vault",
            Some(&acme.admin),
            Some(json!({"kind": "store", "name": ACME_SECRET})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    f.write("POST", "/v1/stock/adjustments", &acme.admin, "vault", json!({"sku": "MUG", "location": "wh-east", "kind": "receive", "quantity": 1000, "reason": ACME_SECRET}))
        .await;
    let callers: [&str; 8] = [
        MASTER,
        &acme.admin,
        &acme.channel,
        &acme.other_channel,
        &acme.wms,
        &acme.reader,
        &globex.admin,
        &globex.channel,
    ];
    let mut n = 0;
    let mut failures = Vec::new();
    for row in rows() {
        for (i, caller) in callers.iter().enumerate() {
            n += 1;
            let id = make_target(&f, &acme.admin, row.target, n).await;
            let path = row.path.replace("{id}", &id);
            let idem = format!("scope-{n}");
            let r = f
                .call(
                    row.method,
                    &path,
                    Some(caller),
                    row.body.clone(),
                    &[("idempotency-key", &idem)],
                )
                .await;
            let want = row.expect.as_bytes()[i];
            let ok = match want {
                b'O' => r.status.is_success(),
                b'F' => r.status == StatusCode::FORBIDDEN,
                b'N' => r.status == StatusCode::NOT_FOUND,
                _ => unreachable!(),
            };
            if !ok {
                failures.push(format!(
                    "{} {} as {}: expected {}, got {} {}",
                    row.method, path, CALLERS[i], want as char, r.status, r.body
                ));
            }
            if !r.status.is_success() {
                r.assert_error_body();
            }
            if i >= 6 {
                assert!(
                    !r.body.to_string().contains(ACME_SECRET),
                    "{} {} as {} leaked acme's data: {}",
                    row.method,
                    path,
                    CALLERS[i],
                    r.body
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Globex reads its own stock, not acme's.
    let r = f.get("/v1/stock/MUG", &globex.reader).await;
    assert!(!r.body.to_string().contains("acme-vault"), "{}", r.body);
    let on_hand: i64 = r.body["locations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["on_hand"].as_i64().unwrap())
        .sum();
    assert!(on_hand < 1000, "{}", r.body);
    // Globex's event feed has none of acme's events.
    let r = f.get("/v1/events?limit=1000", &globex.reader).await;
    assert!(!r.body.to_string().contains(ACME_SECRET));
}

/// Creates what `target` needs, as acme's admin; returns its id.
async fn make_target(f: &Fixture, admin: &str, target: Target, n: usize) -> String {
    let reserve = || async {
        let r = f
            .write("POST", "/v1/reservations", admin, &format!("t-{n}"), json!({"channel": "shopify:acme", "order_ref": ACME_SECRET, "lines": [{"sku": "MUG", "quantity": 1}]}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["id"].as_str().unwrap().to_string()
    };
    let commit = |id: String| async move {
        let r = f
            .call(
                "POST",
                &format!("/v1/reservations/{id}/commit"),
                Some(admin),
                None,
                &[("idempotency-key", &format!("tc-{n}"))],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        id
    };
    match target {
        Target::Nothing => String::new(),
        Target::Held => reserve().await,
        Target::Committed => commit(reserve().await).await,
        Target::Fulfilled => {
            let id = commit(reserve().await).await;
            let r = f
                .write(
                    "POST",
                    &format!("/v1/reservations/{id}/fulfil"),
                    admin,
                    &format!("tf-{n}"),
                    json!({"lines": [{"sku": "MUG", "location": "wh-east", "quantity": 1}]}),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            id
        }
        Target::AcmeKey => {
            let r = f
                .call(
                    "POST",
                    "/v1/keys",
                    Some(admin),
                    Some(json!({"role": "reader"})),
                    &[],
                )
                .await;
            r.body["id"].as_str().unwrap().to_string()
        }
    }
}
