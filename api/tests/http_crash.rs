//! The real `depot serve` killed with SIGKILL while clients reserve over HTTP, then restarted
//! on the same data directory: every reservation answered 201 is there with its lines and its
//! idempotency key still replays it; a request that was in flight at the kill is either there
//! whole or not at all (its retry with the same key settles which), and the stock reserved is
//! exactly the sum of the reservations that exist. Rounds: `DEPOT_HTTP_CRASH_ROUNDS` (3).
//!
//! A SIGKILL leaves the kernel's page cache: this proves that the server answers only what
//! its log holds and that a restart under load recovers it whole. Losing unsynced pages (a
//! power loss) is the part of the storage fault tests and of `depot sim dst`.

mod server_support;

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use server_support::{Http, Server};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MASTER: &str = "http-crash-master-key-0123456789";
const SKUS: [&str; 4] = ["MUG", "TEA", "CUP", "POT"];
const STOCK: i64 = 1_000_000;
const CLIENTS: usize = 8;

/// A reservation request: its idempotency key, SKU and quantity.
#[derive(Clone, Debug)]
struct Sent {
    key: String,
    sku: &'static str,
    quantity: i64,
}

impl Sent {
    fn body(&self) -> Value {
        json!({"channel": "shopify:acme", "lines": [{"sku": self.sku, "quantity": self.quantity}]})
    }
}

#[derive(Default)]
struct Outcomes {
    /// Answered 201: the reservation id.
    acked: Vec<(Sent, String)>,
    /// Sent, and the connection failed before an answer (the server was killed).
    unknown: Vec<Sent>,
}

fn start(data: &Path) -> Server {
    Server::start_with(
        data,
        MASTER,
        &["--rate-limit", "1000000", "--rate-burst", "1000000"],
    )
}

/// Sends `sent` with its idempotency key: the status, whether it was a replay, the body.
async fn reserve(
    http: &Http,
    key: &str,
    sent: &Sent,
) -> reqwest::Result<(StatusCode, bool, Value)> {
    let (status, headers, body) = http
        .try_send(
            "POST",
            "/v1/reservations",
            key,
            Some(&sent.key),
            Some(sent.body()),
        )
        .await?;
    let replayed = headers
        .get("idempotent-replay")
        .is_some_and(|v| v == "true");
    Ok((status, replayed, body))
}

/// Reserves until the server stops answering, recording every outcome.
async fn reserve_until_killed(
    http: Http,
    key: String,
    round: usize,
    c: usize,
    out: Arc<Mutex<Outcomes>>,
) {
    for n in 0.. {
        let sent = Sent {
            key: format!("r{round}-c{c}-{n}"),
            sku: SKUS[(n + c) % SKUS.len()],
            quantity: 1 + (n % 3) as i64,
        };
        let answer = reserve(&http, &key, &sent).await;
        match answer {
            Ok((StatusCode::CREATED, false, body)) => {
                let id = body["id"].as_str().expect("an id").to_string();
                out.lock().unwrap().acked.push((sent, id));
            }
            Ok((status, _, body)) => panic!("{}: {status} {body}", sent.key),
            Err(_) => {
                out.lock().unwrap().unknown.push(sent);
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reservations_answered_over_http_survive_sigkill() {
    let rounds: usize = std::env::var("DEPOT_HTTP_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let client = Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    let mut server = start(&data);
    let http = Http {
        client: client.clone(),
        base: server.base.clone(),
    };
    http.wait_ready().await;
    let admin = http.tenant_with_admin(MASTER, "acme").await;
    let put = |path: &'static str, body: Value| http.ok("PUT", path, &admin, None, Some(body));
    put(
        "/v1/locations/wh-east",
        json!({"kind": "warehouse", "name": "East"}),
    )
    .await;
    put(
        "/v1/channels/shopify:acme",
        json!({"kind": "shopify", "priority": 1}),
    )
    .await;
    for sku in SKUS {
        http.ok("POST", "/v1/stock/adjustments", &admin, Some(&format!("po-{sku}")),
            Some(json!({"sku": sku, "location": "wh-east", "kind": "receive", "quantity": STOCK, "reason": "setup"})))
            .await;
    }

    // Every reservation known to exist (acknowledged, or settled by a retry), by id.
    let mut present: BTreeMap<String, Sent> = BTreeMap::new();
    let mut acked_total = 0;
    for round in 0..rounds {
        let out = Arc::new(Mutex::new(Outcomes::default()));
        let http = Http {
            client: client.clone(),
            base: server.base.clone(),
        };
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| {
                tokio::spawn(reserve_until_killed(
                    http.clone(),
                    admin.clone(),
                    round,
                    c,
                    out.clone(),
                ))
            })
            .collect();
        // Killed at a different moment each round, under load.
        tokio::time::sleep(Duration::from_millis(300 + 350 * (round as u64 % 4))).await;
        drop(server); // SIGKILL, then wait for the process
        for t in tasks {
            t.await.unwrap();
        }
        let out = std::mem::take(&mut *out.lock().unwrap());
        assert!(
            !out.acked.is_empty(),
            "round {round}: nothing was answered before the kill"
        );
        acked_total += out.acked.len();
        eprintln!(
            "round {round}: {} answered before the kill, {} in flight",
            out.acked.len(),
            out.unknown.len()
        );

        server = start(&data);
        let http = Http {
            client: client.clone(),
            base: server.base.clone(),
        };
        http.wait_ready().await;
        // Every acknowledged reservation is there, held, with its line; its key replays it.
        for (sent, id) in &out.acked {
            let (status, _, got) = http
                .send("GET", &format!("/v1/reservations/{id}"), &admin, None, None)
                .await;
            assert_eq!(
                status,
                StatusCode::OK,
                "round {round}: {} ({id}) lost: {got}",
                sent.key
            );
            assert_eq!(got["state"], "held", "{got}");
            assert_eq!(got["lines"][0]["sku"], sent.sku, "{got}");
            assert_eq!(got["lines"][0]["quantity"], sent.quantity, "{got}");
            present.insert(id.clone(), sent.clone());
        }
        for (sent, id) in out.acked.iter().rev().take(20) {
            let (status, replayed, again) = reserve(&http, &admin, sent).await.unwrap();
            assert_eq!((status, replayed), (StatusCode::CREATED, true), "{again}");
            assert_eq!(again["id"].as_str(), Some(id.as_str()));
        }
        // A request in flight at the kill: its retry either replays it (it was logged whole)
        // or makes it now (nothing of it was); either way it exists once afterwards.
        for sent in &out.unknown {
            let (status, _, again) = reserve(&http, &admin, sent).await.unwrap();
            assert_eq!(status, StatusCode::CREATED, "{again}");
            let id = again["id"].as_str().unwrap().to_string();
            assert_eq!(again["lines"][0]["quantity"], sent.quantity, "{again}");
            present.insert(id, sent.clone());
        }
        // The stock reserved is exactly what the reservations that exist hold.
        for sku in SKUS {
            let (status, _, stock) = http
                .send("GET", &format!("/v1/stock/{sku}"), &admin, None, None)
                .await;
            assert_eq!(status, StatusCode::OK);
            let level = &stock["locations"][0];
            let held: i64 = present
                .values()
                .filter(|s| s.sku == sku)
                .map(|s| s.quantity)
                .sum();
            assert_eq!(level["on_hand"], STOCK, "{stock}");
            assert_eq!(level["reserved"], held, "round {round}, {sku}: {stock}");
            assert_eq!(level["available"], STOCK - held, "{stock}");
        }
    }
    assert!(acked_total >= rounds, "{acked_total}");
    assert_eq!(server.terminate().code(), Some(0));
}
