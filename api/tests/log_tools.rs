//! `depot log verify` and `depot log inspect` as processes, on a log written by the engine.

use depot_engine::{
    ChannelId, ChannelKind, Command, Limits, LineRequest, LocationId, LocationKind, LogEntry,
    Request, Sku, TenantId,
};
use depot_wal::{flip_bit, open_engine, FsDir, WalOptions};
use std::path::Path;
use std::process::{Command as Process, Output};

fn req(command: Command) -> Request {
    Request {
        tenant: TenantId::new("acme").unwrap(),
        key_id: "test".into(),
        idempotency_key: None,
        command,
    }
}

fn receive(sku: &str, quantity: i64) -> Command {
    Command::Receive {
        sku: Sku::new(sku).unwrap(),
        location: LocationId::new("wh").unwrap(),
        quantity,
        unit_cost: None,
        reason: "inbound".into(),
    }
}

fn reserve(lines: &[(&str, i64)]) -> Command {
    Command::Reserve {
        channel: ChannelId::new("web").unwrap(),
        lines: lines
            .iter()
            .map(|(s, q)| LineRequest {
                sku: Sku::new(s).unwrap(),
                quantity: *q,
            })
            .collect(),
        ttl_ms: None,
        order_ref: None,
        ship_to_region: None,
        fill: Default::default(),
    }
}

/// Writes a log of 3 setup writes, 2 receipts and 40 reservations (every 4th names `blue`)
/// over several small segments. Returns the number of entries.
fn build_log(dir: &Path) -> u64 {
    let options = WalOptions {
        segment_len_max: 2_048,
        ..WalOptions::default()
    };
    let (engine, _journal, _tail) = open_engine(
        Box::new(FsDir::open(dir).unwrap()),
        options,
        Limits::default(),
        2,
    )
    .expect("open the engine on an empty directory");
    let mut commands = vec![
        Command::CreateTenant,
        Command::PutLocation {
            location: LocationId::new("wh").unwrap(),
            kind: LocationKind::Warehouse,
            name: "wh".into(),
            region: None,
            wms: None,
        },
        Command::PutChannel {
            channel: ChannelId::new("web").unwrap(),
            kind: ChannelKind::B2b,
            priority: 0,
        },
        receive("red", 1_000),
        receive("blue", 1_000),
    ];
    for i in 0..40 {
        commands.push(if i % 4 == 0 {
            reserve(&[("red", 1), ("blue", 2)])
        } else {
            reserve(&[("red", 1)])
        });
    }
    let n = commands.len() as u64;
    for c in commands {
        let (r, _) = engine.execute_one(req(c), 1_000);
        assert!(r.outcome.is_ok(), "{:?}", r.outcome);
    }
    n
}

fn depot(args: &[&str], dir: &Path) -> Output {
    Process::new(env!("CARGO_BIN_EXE_depot"))
        .args(args)
        .arg(dir)
        .output()
        .expect("run depot")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| depot_wal::format::parse_segment_name(n).is_some())
        .collect();
    names.sort();
    names
}

#[test]
fn verify_summarises_a_clean_log() {
    let tmp = tempfile::tempdir().unwrap();
    let n = build_log(tmp.path());
    let segs = segments(tmp.path());
    assert!(segs.len() > 1, "the log should span segments: {segs:?}");
    let out = depot(&["log", "verify"], tmp.path());
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!("segments:  {}", segs.len())),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("records:   {n}")), "{stdout}");
    assert!(stdout.contains("first seq: 1"), "{stdout}");
    assert!(stdout.contains(&format!("last seq:  {n}")), "{stdout}");
    assert!(stdout.contains("tail:      clean"), "{stdout}");
}

#[test]
fn inspect_filters_by_sku_and_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let n = build_log(tmp.path());

    let out = depot(&["log", "inspect"], tmp.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all: Vec<LogEntry> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON log entry per line"))
        .collect();
    assert_eq!(all.len() as u64, n);
    assert!(all.iter().zip(1..).all(|(e, seq)| e.seq == seq));

    // `blue`: its receipt and the 10 reservations naming it.
    let out = depot(&["log", "inspect", "--sku", "blue"], tmp.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let blue: Vec<LogEntry> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(blue.len(), 11, "{blue:?}");
    assert!(matches!(blue[0].request.command, Command::Receive { .. }));
    assert!(blue
        .iter()
        .all(|e| depot_api::cli::mentions_sku(e, "blue")
            && !depot_api::cli::mentions_sku(e, "green")));

    // `--from`: only the later ones.
    let out = depot(
        &["log", "inspect", "--sku", "blue", "--from", "20"],
        tmp.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let later: Vec<LogEntry> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!later.is_empty() && later.len() < blue.len());
    assert!(later.iter().all(|e| e.seq >= 20));
    assert_eq!(
        later,
        blue.iter()
            .filter(|e| e.seq >= 20)
            .cloned()
            .collect::<Vec<_>>()
    );

    // A SKU that never appears: nothing, and success.
    let out = depot(&["log", "inspect", "--sku", "green"], tmp.path());
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
}

#[test]
fn a_flipped_byte_is_reported_with_its_file_and_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    build_log(tmp.path());
    let segs = segments(tmp.path());
    // The middle of the first segment: not a torn tail, since records follow it.
    let victim = &segs[0];
    let len = std::fs::metadata(tmp.path().join(victim)).unwrap().len();
    let fs = FsDir::open(tmp.path()).unwrap();
    flip_bit(&fs, victim, len / 2, 3).unwrap();

    for args in [&["log", "verify"][..], &["log", "inspect"][..]] {
        let out = depot(args, tmp.path());
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(victim.as_str()), "{args:?}: {stderr}");
        assert!(stderr.contains("corrupt"), "{args:?}: {stderr}");
    }
}
