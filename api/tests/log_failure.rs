//! What the real server does when its log fails, with the medium made to fail on purpose
//! (`DEPOT_INJECT_FAULT`, depot-wal's `FaultDir` over the real directory): a failed fdatasync
//! stops it with exit code 1 (restart and recover from what the disk holds); a full disk
//! refuses writes with 503 `unavailable` and keeps serving reads. Either way, every write
//! answered 2xx is there after a restart.

mod server_support;

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use server_support::{Http, Server};
use std::path::Path;
use std::time::{Duration, Instant};

const MASTER: &str = "log-failure-master-key-0123456789";

/// The setup and the load of these tests.
trait Load {
    async fn setup(&self) -> String;
    async fn reserve_until_refused(&self, admin: &str) -> (Vec<String>, String);
}

impl Load for Http {
    /// A tenant, an admin key, a location, a channel and 1,000 units of `MUG`.
    async fn setup(&self) -> String {
        let admin = self.tenant_with_admin(MASTER, "acme").await;
        self.ok(
            "PUT",
            "/v1/locations/wh",
            &admin,
            None,
            Some(json!({"kind": "warehouse", "name": "wh"})),
        )
        .await;
        self.ok(
            "PUT",
            "/v1/channels/web",
            &admin,
            None,
            Some(json!({"kind": "b2b", "priority": 0})),
        )
        .await;
        let (status, _, body) = self.send(
                "POST",
                "/v1/stock/adjustments",
                &admin,
                Some("po-1"),
                Some(json!({"sku": "MUG", "location": "wh", "kind": "receive", "quantity": 1000, "reason": "po"})),
            )
            .await;
        assert!(status.is_success(), "{body}");
        admin
    }

    /// Reserves one `MUG` at a time until the log refuses: the ids answered 201, and the key
    /// of the write answered 503 `unavailable`.
    async fn reserve_until_refused(&self, admin: &str) -> (Vec<String>, String) {
        let mut acked = Vec::new();
        for i in 0..10_000 {
            let key = format!("order-{i}");
            let (status, _, body) = self
                .send("POST", "/v1/reservations", admin, Some(&key), Some(order()))
                .await;
            match status {
                StatusCode::CREATED => acked.push(body["id"].as_str().unwrap().to_string()),
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(body["error"]["code"], "unavailable", "{body}");
                    return (acked, key);
                }
                other => panic!("{key}: {other} {body}"),
            }
        }
        panic!("the log never failed");
    }
}

fn order() -> Value {
    json!({"channel": "web", "lines": [{"sku": "MUG", "quantity": 1}]})
}

fn start(data: &Path, fault: Option<&str>) -> (Server, Http) {
    let env: Vec<(&str, &str)> = fault
        .map(|f| ("DEPOT_INJECT_FAULT", f))
        .into_iter()
        .collect();
    let server = Server::start_env(data, MASTER, &[], &env);
    let http = Http {
        client: Client::new(),
        base: server.base.clone(),
    };
    (server, http)
}

/// After a restart on the healthy disk: every acknowledged reservation is held, the one
/// refused at the failure is settled by its retry (it may have reached the disk before the
/// failure: `unavailable` does not say it did not), and the stock agrees.
async fn check_after_restart(data: &Path, admin: &str, acked: &[String], refused: &str) {
    let (server, http) = start(data, None);
    http.wait_ready().await;
    for id in acked {
        let (status, _, got) = http
            .send("GET", &format!("/v1/reservations/{id}"), admin, None, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{id} lost: {got}");
        assert_eq!(got["state"], "held", "{got}");
    }
    let (status, _, retried) = http
        .send(
            "POST",
            "/v1/reservations",
            admin,
            Some(refused),
            Some(order()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{retried}");
    let (_, _, stock) = http.send("GET", "/v1/stock/MUG", admin, None, None).await;
    assert_eq!(
        stock["locations"][0]["reserved"],
        acked.len() as i64 + 1,
        "{stock}"
    );
    assert_eq!(server.terminate().code(), Some(0));
}

#[tokio::test]
async fn a_failed_fdatasync_stops_the_server_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut server, http) = start(&data, Some("fsync-after=30"));
    http.wait_ready().await;
    let admin = http.setup().await;
    let (acked, refused) = http.reserve_until_refused(&admin).await;
    assert!(!acked.is_empty());

    // It stops by itself, with an error that says to restart.
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("the server stops after a failed fdatasync");
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(
        log.contains("fsync") && log.contains("restart depot to recover"),
        "{log}"
    );
    drop(server);
    check_after_restart(&data, &admin, &acked, &refused).await;
}

#[tokio::test]
async fn a_full_disk_refuses_writes_and_keeps_serving_reads() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut server, http) = start(&data, Some("disk-full-after=3000"));
    http.wait_ready().await;
    let admin = http.setup().await;
    let (acked, refused) = http.reserve_until_refused(&admin).await;
    assert!(!acked.is_empty());

    // The server says the log is not writable, and reloads the state from the log...
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = http
            .client
            .get(format!("{}/metrics", http.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.lines().any(|l| l == "depot_wal_writable 0") {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    http.wait_ready().await;
    // ...then writes stay refused, with the same key too; reads go on, from what the disk
    // holds: the refused reservation ran in memory before its write failed, and is not there.
    for key in ["after-full", refused.as_str()] {
        let (status, _, body) = http
            .send("POST", "/v1/reservations", &admin, Some(key), Some(order()))
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
            "{key}: {body}"
        );
    }
    let (status, _, stock) = http.send("GET", "/v1/stock/MUG", &admin, None, None).await;
    assert_eq!(status, StatusCode::OK, "{stock}");
    assert_eq!(
        stock["locations"][0]["reserved"],
        acked.len() as i64,
        "only acknowledged reservations: {stock}"
    );
    for id in [&acked[0], acked.last().unwrap()] {
        let (status, _, got) = http
            .send("GET", &format!("/v1/reservations/{id}"), &admin, None, None)
            .await;
        assert_eq!(
            (status, got["state"].as_str()),
            (StatusCode::OK, Some("held"))
        );
    }
    assert!(server.wait_exit(Duration::from_millis(500)).is_none());
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(log.contains("the disk is full"), "{log}");
    assert!(log.contains("reloaded the state from the log"), "{log}");
    assert_eq!(server.terminate().code(), Some(0));
    check_after_restart(&data, &admin, &acked, &refused).await;
}
