//! `depot snapshot DIR` as a process and as a library call: it recovers the state offline,
//! writes a snapshot file that a restart then starts from, and leaves the log as it was.

use depot_engine::{
    ChannelId, ChannelKind, Command, Limits, LineRequest, LocationId, LocationKind, Request, Sku,
    TenantId,
};
use depot_wal::{flip_bit, load_newest_snapshot, open_engine, recover, FsDir, WalOptions};
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

/// Appends `count` writes (the setup first if the log is new) to the log in `dir`, over small
/// segments; returns the live state's digest.
fn write_log(dir: &Path, first: u64, count: u64) -> [u8; 32] {
    let options = WalOptions {
        segment_len_max: 2_048,
        ..WalOptions::default()
    };
    let (engine, _journal, _) = open_engine(
        Box::new(FsDir::open(dir).unwrap()),
        options,
        Limits::default(),
        2,
    )
    .unwrap();
    let mut commands = Vec::new();
    if first == 0 {
        commands.push(Command::CreateTenant);
        commands.push(Command::PutLocation {
            location: LocationId::new("wh").unwrap(),
            kind: LocationKind::Warehouse,
            name: "wh".into(),
            region: None,
            wms: None,
        });
        commands.push(Command::PutChannel {
            channel: ChannelId::new("web").unwrap(),
            kind: ChannelKind::B2b,
            priority: 0,
        });
        commands.push(Command::Receive {
            sku: Sku::new("red").unwrap(),
            location: LocationId::new("wh").unwrap(),
            quantity: 1_000,
            unit_cost: None,
            reason: "inbound".into(),
        });
    }
    for _ in first..first + count {
        commands.push(Command::Reserve {
            channel: ChannelId::new("web").unwrap(),
            lines: vec![LineRequest {
                sku: Sku::new("red").unwrap(),
                quantity: 1,
            }],
            ttl_ms: None,
            order_ref: None,
            ship_to_region: None,
            fill: Default::default(),
        });
    }
    for c in commands {
        let (r, _) = engine.execute_one(req(c), 1_000);
        assert!(r.outcome.is_ok(), "{:?}", r.outcome);
    }
    engine.digest()
}

fn depot_snapshot(dir: &Path) -> Output {
    Process::new(env!("CARGO_BIN_EXE_depot"))
        .arg("snapshot")
        .arg(dir)
        .output()
        .expect("run depot")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn log_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn snapshot_writes_what_a_restart_starts_from() {
    let tmp = tempfile::tempdir().unwrap();
    let live = write_log(tmp.path(), 0, 40);
    let log_before = log_files(tmp.path());

    let out = depot_snapshot(tmp.path());
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    // 4 setup writes + 40 reservations.
    assert!(
        stdout.contains("snapshot:  snapshot-00000000000000000044.rkyv"),
        "{stdout}"
    );
    assert!(stdout.contains("seq:       44"), "{stdout}");
    assert!(stdout.contains("replayed:  44 log entries"), "{stdout}");
    // No progress bar when stderr is not a terminal.
    assert!(
        !text(&out.stderr).contains("entries"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(log_files(tmp.path()), log_before, "the log was changed");

    let fs = FsDir::open(tmp.path()).unwrap();
    let (image, name) = load_newest_snapshot(&fs).unwrap().unwrap();
    assert_eq!(
        (image.seq, name.as_str()),
        (44, "snapshot-00000000000000000044.rkyv")
    );
    assert_eq!(recover(&fs, Limits::default(), 3).unwrap().0.digest(), live);

    // More writes, then a second snapshot replays only what came after the first.
    let live = write_log(tmp.path(), 40, 10);
    let mut seen = Vec::new();
    let written = depot_api::cli::snapshot(tmp.path(), |e| seen.push(e.seq)).unwrap();
    assert_eq!(written.seq, 54);
    assert_eq!(written.replayed, 10);
    assert_eq!(seen, (45..=54).collect::<Vec<_>>());
    assert_eq!(written.file, "snapshot-00000000000000000054.rkyv");
    assert!(written.bytes > 0);
    assert_eq!(recover(&fs, Limits::default(), 1).unwrap().0.digest(), live);
}

#[test]
fn snapshot_of_a_corrupt_log_fails_with_the_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(tmp.path(), 0, 40);
    let (victim, bytes) = log_files(tmp.path()).remove(0);
    let fs = FsDir::open(tmp.path()).unwrap();
    flip_bit(&fs, &victim, bytes.len() as u64 / 2, 5).unwrap();
    let out = depot_snapshot(tmp.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&victim) && stderr.contains("byte"),
        "{stderr}"
    );
    assert!(
        load_newest_snapshot(&fs).unwrap().is_none(),
        "a snapshot was written"
    );

    let out = depot_snapshot(&tmp.path().join("missing"));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot open log directory"));
}

#[test]
fn the_progress_estimate_is_close_to_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(depot_api::cli::estimate_entries(tmp.path(), 1), None);
    write_log(tmp.path(), 0, 200);
    let n = 204;
    let estimate = depot_api::cli::estimate_entries(tmp.path(), 1).unwrap();
    assert!(
        (n / 2..=n * 2).contains(&estimate),
        "estimate {estimate} for {n}"
    );
    let later = depot_api::cli::estimate_entries(tmp.path(), 150).unwrap();
    assert!(later < estimate && later <= n - 100, "{later}");
    assert_eq!(depot_api::cli::replay_start(tmp.path()), 1);
    depot_api::cli::snapshot(tmp.path(), |_| {}).unwrap();
    assert_eq!(depot_api::cli::replay_start(tmp.path()), n + 1);

    // A hidden bar counts what it is given.
    let mut p = depot_api::cli::Progress::hidden();
    for _ in 0..10_000 {
        p.entry();
    }
    assert_eq!(p.position(), 10_000);
    p.finish();
}
