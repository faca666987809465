//! `depot sim` through the real binary: generate a short scenario, replay its log in-process
//! (same digest), a what-if, a few DST seeds, a bad scenario file, and a replay over HTTP into
//! a running `depot serve`.

mod server_support;

use serde_json::{json, Value};
use server_support::Server;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const MASTER: &str = "sim-cli-master-key-0123456789";

fn depot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_depot"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the depot binary runs")
}

fn scenario(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sim/scenarios")
        .join(name)
        .display()
        .to_string()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn generate(out: &Path) {
    let o = depot(&[
        "sim",
        "generate",
        "--scenario",
        &scenario("marketplace-sync-lag.toml"),
        "--minutes",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("oversells: 0"),
        "{}",
        text(&o.stdout)
    );
    for f in ["report.html", "report.md", "run.json", "wal"] {
        assert!(out.join(f).exists(), "{f}");
    }
}

#[test]
fn generate_replay_what_if_and_dst_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let gen = tmp.path().join("gen");
    generate(&gen);
    let log = gen.join("wal");
    let log = log.to_str().unwrap();

    let out = tmp.path().join("replay");
    let o = depot(&[
        "sim",
        "replay",
        "--log",
        log,
        "--speed",
        "max",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("equals the generated run's"), "{md}");

    let out = tmp.path().join("whatif");
    let rules = scenario("whatif-ebay-buffer.json");
    let o = depot(&[
        "sim",
        "replay",
        "--log",
        log,
        "--rules",
        &rules,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("Side by side") && md.contains("whatif-ebay-buffer.json"),
        "{md}"
    );

    let out = tmp.path().join("dst");
    let o = depot(&[
        "sim",
        "dst",
        "--seed",
        "40",
        "--seeds",
        "3",
        "--steps",
        "80",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("3 seeds passed"),
        "{}",
        text(&o.stdout)
    );
    assert!(std::fs::read_to_string(out.join("report.md"))
        .unwrap()
        .contains("every seed passed"));
}

/// The faults `sim dst` injects make the log warn and stop; those lines are expected, so the
/// default filter leaves them out, and `RUST_LOG=warn` brings them back.
#[test]
fn dst_keeps_the_logs_own_warnings_about_injected_faults_quiet_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |rust_log: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_depot"));
        cmd.args([
            "sim", "dst", "--seed", "1", "--seeds", "2", "--steps", "300",
        ])
        .args(["--faults", "torn,fsync,full", "--out"])
        .arg(tmp.path().join("dst"));
        match rust_log {
            Some(filter) => cmd.env("RUST_LOG", filter),
            None => cmd.env_remove("RUST_LOG"),
        };
        let o = cmd.output().expect("the depot binary runs");
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert!(text(&o.stdout).contains("2 seeds passed"));
        text(&o.stderr)
    };
    let loud = run(Some("warn"));
    assert!(
        loud.contains("write-ahead log"),
        "these seeds inject faults the log reports: {loud}"
    );
    let quiet = run(None);
    assert!(!quiet.contains("write-ahead log"), "{quiet}");
}

#[test]
fn bad_input_is_refused_with_the_field_named() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    let good = std::fs::read_to_string(scenario("hot-sku-sellout.toml")).unwrap();
    std::fs::write(
        &bad,
        good.replace("short_pick_rate = 0.03", "short_pick_rate = 3"),
    )
    .unwrap();
    let o = depot(&[
        "sim",
        "generate",
        "--scenario",
        bad.to_str().unwrap(),
        "--out",
        tmp.path().join("o").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("wms.short_pick_rate"),
        "{}",
        text(&o.stderr)
    );

    let o = depot(&["sim", "dst", "--faults", "meteor"]);
    assert_eq!(o.status.code(), Some(2), "a usage error");
    assert!(text(&o.stderr).contains("meteor"));

    let o = depot(&[
        "sim",
        "replay",
        "--log",
        tmp.path().to_str().unwrap(),
        "--out",
        tmp.path().join("r").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("no log entries"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn a_generated_log_replays_into_a_running_server() {
    let tmp = tempfile::tempdir().unwrap();
    let gen = tmp.path().join("gen");
    generate(&gen);
    let server = Server::start(&tmp.path().join("data"), MASTER);
    let http = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = || {
        http.get(format!("{}/readyz", server.base))
            .send()
            .is_ok_and(|r| r.status().as_u16() == 200)
    };
    while !ready() {
        assert!(Instant::now() < deadline, "the server never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let post = |path: &str, body: Value| -> Value {
        let r = http
            .post(format!("{}{path}", server.base))
            .bearer_auth(MASTER)
            .json(&body)
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().unwrap()
    };
    post("/v1/tenants", json!({"id": "acme"}));
    let key = post("/v1/keys", json!({"tenant": "acme", "role": "admin"}))["key"]
        .as_str()
        .unwrap()
        .to_string();

    let out = tmp.path().join("http");
    let o = Command::new(env!("CARGO_BIN_EXE_depot"))
        .args(["sim", "replay", "--log"])
        .arg(gen.join("wal"))
        .args(["--target", &server.base, "--speed", "max", "--out"])
        .arg(&out)
        .env("DEPOT_KEY", &key)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let run = &report["runs"][0];
    assert_eq!(run["oversells"], 0, "{run}");
    let generated: Value =
        serde_json::from_str(&std::fs::read_to_string(gen.join("report.json")).unwrap()).unwrap();
    // The server saw the same orders, and (same stock, same order) granted the same ones.
    for (a, b) in run["channels"]
        .as_array()
        .unwrap()
        .iter()
        .zip(generated["runs"][0]["channels"].as_array().unwrap())
    {
        assert_eq!(a["orders"], b["orders"], "{a} vs {b}");
        assert!(a["orders_held"].as_u64().unwrap() > 0);
    }
    // The tenant of the key now has the log's configuration and stock.
    let stock: Value = http
        .get(format!("{}/v1/stock/SKU-00001", server.base))
        .bearer_auth(&key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(stock["channels"].as_array().unwrap().len(), 3, "{stock}");
    assert!(
        stock["locations"][0]["on_hand"].as_i64().unwrap() > 0,
        "{stock}"
    );
}
