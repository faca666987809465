//! The real `depot serve` binary on a free port and a temporary data directory: the README's
//! curl walk-through as HTTP requests, a restart that finds everything still there (replays of
//! idempotency keys included), and SIGTERM exiting 0.

mod server_support;

use reqwest::{Client, StatusCode};
use serde_json::json;
use server_support::{Http, Server};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MASTER: &str = "e2e-master-key-0123456789abcdef";

#[tokio::test]
async fn the_walk_through_survives_a_restart_and_sigterm_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, MASTER);
    let http = Http {
        client: Client::new(),
        base: server.base.clone(),
    };
    http.wait_ready().await;

    // The README's walk-through.
    http.ok(
        "POST",
        "/v1/tenants",
        MASTER,
        None,
        Some(json!({"id": "acme"})),
    )
    .await;
    let key = http
        .ok(
            "POST",
            "/v1/keys",
            MASTER,
            None,
            Some(json!({"tenant": "acme", "role": "admin"})),
        )
        .await;
    let admin = key["key"].as_str().unwrap().to_string();
    http.ok(
        "PUT",
        "/v1/locations/wh-east",
        &admin,
        None,
        Some(json!({"kind": "warehouse", "name": "East", "region": "us-east"})),
    )
    .await;
    http.ok(
        "PUT",
        "/v1/channels/shopify:acme",
        &admin,
        None,
        Some(json!({"kind": "shopify", "priority": 10})),
    )
    .await;
    http.ok("POST", "/v1/stock/adjustments", &admin, Some("po-1001"),
        Some(json!({"sku": "MUG-RED", "location": "wh-east", "kind": "receive", "quantity": 25, "reason": "PO 1001"}))).await;
    let order = json!({"channel": "shopify:acme", "lines": [{"sku": "MUG-RED", "quantity": 2}], "ttl_seconds": 900, "order_ref": "#1042"});
    let (status, _, held) = http
        .send(
            "POST",
            "/v1/reservations",
            &admin,
            Some("order-1042"),
            Some(order.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    let id = held["id"].as_str().unwrap().to_string();
    let got = http
        .ok("GET", &format!("/v1/reservations/{id}"), &admin, None, None)
        .await;
    assert_eq!(got["state"], "held");
    let committed = http
        .ok(
            "POST",
            &format!("/v1/reservations/{id}/commit"),
            &admin,
            Some("commit-1042"),
            None,
        )
        .await;
    assert_eq!(committed["state"], "committed");
    let stock = http
        .ok("GET", "/v1/stock/MUG-RED", &admin, None, None)
        .await;
    assert_eq!(stock["locations"][0]["committed"], 2, "{stock}");
    assert_eq!(stock["channels"][0]["available_to_sell"], 23, "{stock}");
    let events = http
        .ok("GET", "/v1/events?after=0", &admin, None, None)
        .await;
    assert!(events["events"].as_array().unwrap().len() >= 5, "{events}");

    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0");

    // Restart: everything is still there, and the idempotency keys still replay.
    let server = Server::start(&data, MASTER);
    let http = Http {
        client: Client::new(),
        base: server.base.clone(),
    };
    http.wait_ready().await;
    let got = http
        .ok("GET", &format!("/v1/reservations/{id}"), &admin, None, None)
        .await;
    assert_eq!(got["state"], "committed", "{got}");
    let again = http
        .ok("GET", "/v1/stock/MUG-RED", &admin, None, None)
        .await;
    assert_eq!(again, stock);
    // The events are rebuilt from the log: the same cursor reads the same events.
    let events_again = http
        .ok("GET", "/v1/events?after=0", &admin, None, None)
        .await;
    assert_eq!(
        events_again["events"], events["events"],
        "events after a restart"
    );
    let (status, headers, replay) = http
        .send(
            "POST",
            "/v1/reservations",
            &admin,
            Some("order-1042"),
            Some(order),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["idempotent-replay"], "true");
    assert_eq!(replay, held, "the first answer, after a restart");
    let other = json!({"channel": "shopify:acme", "lines": [{"sku": "MUG-RED", "quantity": 5}]});
    let (status, _, body) = http
        .send(
            "POST",
            "/v1/reservations",
            &admin,
            Some("order-1042"),
            Some(other),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("idempotency_key_reused")
        )
    );
    // The master key is not asked for again, and a second tenant works after the restart.
    http.ok(
        "POST",
        "/v1/tenants",
        MASTER,
        None,
        Some(json!({"id": "globex"})),
    )
    .await;
    assert_eq!(server.terminate().code(), Some(0));
}

#[tokio::test]
async fn a_generated_master_key_is_printed_once_and_the_demo_loads() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_depot"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--demo",
            "--shards",
            "1",
            "--sync",
            "interval=5",
        ])
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || lines.next().unwrap().unwrap();
    let master_line = next();
    assert!(master_line.starts_with("master key"), "{master_line}");
    let base = next()
        .strip_prefix("depot listening on ")
        .unwrap()
        .to_string();
    let demo_line = next();
    let demo_key = demo_line
        .split_whitespace()
        .find(|w| w.starts_with("dpk_"))
        .unwrap_or_else(|| panic!("an admin key in {demo_line:?}"))
        .to_string();
    let http = Http {
        client: Client::new(),
        base,
    };
    let stock = http
        .ok("GET", "/v1/stock/DEMO-MUG", &demo_key, None, None)
        .await;
    assert!(!stock["channels"].as_array().unwrap().is_empty(), "{stock}");
    let stored = std::fs::read_to_string(data.join("master.key")).unwrap();
    assert!(master_line.contains(stored.trim()));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn bad_snapshot_flags_stop_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // Refused while parsing the flags.
    let out = Command::new(env!("CARGO_BIN_EXE_depot"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-retention",
            "soon",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("a"))
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--log-retention"), "{err}");
    // An archive directory that cannot be created: the server stops instead of running
    // without the retention it was asked for.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_depot"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-retention", "1h"])
        .arg("--log-archive-dir")
        .arg(blocker.join("archive"))
        .arg("--data-dir")
        .arg(dir.path().join("b"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not stop");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("--log-archive-dir"), "{err}");
}

/// Writes a log of a tenant, a location, a channel, 100 SKUs received and `reservations`
/// single-line reservations straight through the log writer (no engine: quick to write, as
/// slow to recover as any log of that length).
fn write_log(wal: &std::path::Path, reservations: u64) {
    use depot_engine::{
        ChannelId, ChannelKind, Command as C, LineRequest, LocationId, LocationKind, LogEntry,
        Request, Sku, TenantId,
    };
    let dir = depot_wal::FsDir::open(wal).unwrap();
    let mut w = depot_wal::WalWriter::open(Box::new(dir), depot_wal::WalOptions::default())
        .expect("a new log");
    let location = LocationId::new("wh").unwrap();
    let channel = ChannelId::new("web").unwrap();
    let sku = |i: u64| Sku::new(&format!("sku-{}", i % 100)).unwrap();
    let mut commands = vec![
        C::CreateTenant,
        C::PutLocation {
            location: location.clone(),
            kind: LocationKind::Warehouse,
            name: "wh".into(),
            region: None,
            wms: None,
        },
        C::PutChannel {
            channel: channel.clone(),
            kind: ChannelKind::B2b,
            priority: 0,
        },
    ];
    commands.extend((0..100).map(|i| C::Receive {
        sku: sku(i),
        location: location.clone(),
        quantity: 1_000_000,
        unit_cost: None,
        reason: "inbound".into(),
    }));
    let reserve = |i: u64| C::Reserve {
        channel: channel.clone(),
        lines: vec![LineRequest {
            sku: sku(i),
            quantity: 1,
        }],
        ttl_ms: None,
        order_ref: None,
        ship_to_region: None,
        fill: Default::default(),
    };
    for (seq, command) in (1..).zip(commands.into_iter().chain((0..reservations).map(reserve))) {
        let request = Request {
            tenant: TenantId::new("acme").unwrap(),
            key_id: "test".into(),
            idempotency_key: None,
            command,
        };
        w.append(&LogEntry {
            seq,
            now: 1_700_000_000_000,
            request,
        })
        .unwrap();
    }
    w.sync().unwrap();
}

/// SIGTERM while the log is still being recovered: the server stops at once (recovery only
/// reads, nothing was served) and exits 0; the next start recovers the whole log.
#[test]
fn sigterm_during_recovery_stops_at_once_and_the_next_start_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_log(&data.join("wal"), 300_000);
    let log = data.with_extension("log");

    // The address is printed before recovery starts: SIGTERM comes in the middle of it.
    let server = Server::start(&data, MASTER);
    let started = Instant::now();
    assert_eq!(server.terminate().code(), Some(0));
    let took = started.elapsed();
    let lines = std::fs::read_to_string(&log).unwrap();
    assert!(
        lines.contains("stopped during recovery"),
        "stopped after {took:?}: {lines}"
    );
    assert!(!lines.contains("recovered; ready"), "{lines}");

    let server = Server::start(&data, MASTER);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("recovered; ready")
    {
        assert!(Instant::now() < deadline, "not recovered in time");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.terminate().code(), Some(0));
}
