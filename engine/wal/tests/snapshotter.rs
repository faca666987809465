//! The background snapshotter on the storage seam: snapshots on request and on a write count,
//! while writes go on; the result recovers to the live state; retention follows each snapshot;
//! a failed log makes the snapshot fail without harm.

use depot_engine::{ChannelId, Command, Engine, FillPolicy, Limits, LineRequest, Sku};
use depot_wal::format::parse_segment_name;
use depot_wal::{
    load_newest_snapshot, open_engine, parse_snapshot_name, recover, Directory, FaultDir, MemDir,
    RetentionAction, RetentionPolicy, SnapshotStats, Snapshotter, SnapshotterConfig, WalJournal,
    WalOptions,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{req, setup};

fn start(dir: impl Directory + 'static) -> (Arc<Engine>, Arc<WalJournal>) {
    let options = WalOptions {
        segment_len_max: 4096,
        write_buffer_max: 1024,
        preallocate: 2048,
    };
    let (engine, journal, _) = open_engine(Box::new(dir), options, Limits::default(), 2).unwrap();
    (Arc::new(engine), journal)
}

fn reserve(i: u64) -> depot_engine::Request {
    req(Command::Reserve {
        channel: ChannelId::new("web").unwrap(),
        lines: vec![LineRequest {
            sku: Sku::new(&format!("sku-{}", i % 20)).unwrap(),
            quantity: 1,
        }],
        ttl_ms: None,
        order_ref: None,
        ship_to_region: None,
        fill: FillPolicy::AllOrNothing,
    })
}

fn writes(engine: &Engine, first: u64, count: u64) {
    for i in first..first + count {
        let (resp, _) = engine.execute_one(reserve(i), 10_000 + i * 100);
        assert!(resp.outcome.is_ok(), "{resp:?}");
    }
}

/// The background snapshotter of `engine` on `dir`.
fn snapshots(
    engine: &Arc<Engine>,
    journal: &Arc<WalJournal>,
    dir: &(impl Directory + Clone + 'static),
    config: SnapshotterConfig,
) -> Snapshotter {
    Snapshotter::start(
        engine.clone(),
        journal.clone(),
        Box::new(dir.clone()),
        config,
    )
}

/// Only on request.
fn manual() -> SnapshotterConfig {
    SnapshotterConfig {
        every_writes: None,
        min_log_growth_percent: None,
        every: None,
        check_every: Duration::from_millis(5),
        ..SnapshotterConfig::default()
    }
}

/// Waits (up to a minute: a hung thread fails, a slow machine does not) for `cond`.
fn eventually(snapshotter: &Snapshotter, cond: impl Fn(&SnapshotStats) -> bool) -> SnapshotStats {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = snapshotter.stats();
        if cond(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "condition not reached: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_snapshot_on_request_recovers_to_the_live_state() {
    let mem = MemDir::new();
    let (engine, journal) = start(mem.clone());
    let snapshotter = snapshots(&engine, &journal, &mem, manual());
    setup(&engine);
    writes(&engine, 0, 120);
    let taken = snapshotter.snapshot_now().unwrap();
    assert_eq!(taken.seq, journal.stats().durable_seq);
    assert_eq!(parse_snapshot_name(&taken.file), Some(taken.seq));
    assert!(taken.bytes > 0);
    assert_eq!(taken.retention, None);
    let stats = snapshotter.stats();
    assert_eq!((stats.taken, stats.failed), (1, 0));
    assert_eq!(stats.last.as_ref(), Some(&taken));
    assert_eq!(stats.max_pause, taken.pause);

    writes(&engine, 120, 60);
    let live = engine.digest();
    drop(snapshotter);
    drop(engine);
    drop(journal);
    mem.crash();
    let (image, name) = load_newest_snapshot(&mem).unwrap().unwrap();
    assert_eq!((image.seq, name), (taken.seq, taken.file));
    assert_eq!(
        recover(&mem, Limits::default(), 3).unwrap().0.digest(),
        live
    );
}

/// Keyed writes made while a snapshot's copy shares the idempotency tables are kept apart;
/// once the copy is gone, `Engine::tidy` (the API's writer, when idle) moves them into the
/// tables a step at a time, and nothing the state shows changes: the digest, the answers a
/// repeat gets, what recovery finds.
#[test]
fn tidying_after_a_snapshot_changes_nothing_the_state_shows() {
    let mem = MemDir::new();
    let (engine, journal) = start(mem.clone());
    setup(&engine);
    let keyed = |i: u64| {
        let mut r = reserve(i);
        r.idempotency_key = Some(format!("order-{i}"));
        r
    };
    let mut answers = Vec::new();
    for i in 0..200 {
        answers.push(engine.execute_one(keyed(i), 10_000 + i * 100).0);
    }
    assert!(!engine.tidy(32), "nothing kept apart: nothing to tidy");
    let copy = depot_wal::capture_state(&engine);
    for i in 200..1_200 {
        answers.push(engine.execute_one(keyed(i), 10_000 + i * 100).0);
    }
    assert!(answers.iter().all(|a| a.outcome.is_ok() && !a.replayed));
    assert!(!engine.tidy(32), "the copy still shares every table");
    let before = engine.digest();
    drop(copy);
    let mut steps = 0;
    while engine.tidy(32) {
        steps += 1;
        assert!(steps <= 1_000 / 32 + 1, "a thousand changes, 32 a step");
        assert_eq!(engine.digest(), before);
    }
    assert!(
        steps >= 1_000 / 32 - 1,
        "{steps} steps moved a thousand changes"
    );
    assert!(!engine.tidy(32));
    assert_eq!(engine.digest(), before);
    for i in (0..1_200).step_by(7) {
        let (again, _) = engine.execute_one(keyed(i), 200_000);
        assert!(again.replayed, "{again:?}");
        assert_eq!(again.outcome, answers[i as usize].outcome, "order-{i}");
    }
    assert_eq!(engine.digest(), before);
    drop(engine);
    drop(journal);
    mem.crash();
    assert_eq!(
        recover(&mem, Limits::default(), 2).unwrap().0.digest(),
        before
    );
}

#[test]
fn a_write_count_triggers_snapshots_while_writes_go_on() {
    let mem = MemDir::new();
    let (engine, journal) = start(mem.clone());
    setup(&engine);
    let config = SnapshotterConfig {
        every_writes: Some(50),
        ..manual()
    };
    let snapshotter = snapshots(&engine, &journal, &mem, config);
    // Four writers, each with one write outstanding, while snapshots are taken.
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || writes(&engine, t * 1_000, 100))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let last = journal.stats().durable_seq;
    // The count trigger fires until the snapshot is within 50 writes of the log.
    let stats = eventually(&snapshotter, |s| {
        s.last.as_ref().is_some_and(|l| l.seq + 50 > last)
    });
    assert_eq!(stats.failed, 0);
    // From a snapshot at the end of the log: 10 new writes take none, the 50th takes one.
    let base = snapshotter.snapshot_now().unwrap();
    assert_eq!(base.seq, journal.stats().durable_seq);
    writes(&engine, 10_000, 10);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        snapshotter.stats().taken,
        stats.taken + 1,
        "fired before 50 writes"
    );
    writes(&engine, 10_010, 40);
    let seq = journal.stats().durable_seq;
    let stats = eventually(&snapshotter, |s| {
        s.last.as_ref().is_some_and(|l| l.seq == seq)
    });
    let snapshots: Vec<u64> = mem
        .names()
        .iter()
        .filter_map(|n| parse_snapshot_name(n))
        .collect();
    // One file per snapshot seq (a snapshot of an unchanged state replaces its file).
    assert!(!snapshots.is_empty() && snapshots.len() as u64 <= stats.taken);
    assert_eq!(snapshots.iter().max(), Some(&seq), "{snapshots:?}");
    let live = engine.digest();
    drop(snapshotter);
    drop(engine);
    drop(journal);
    mem.crash();
    assert_eq!(
        recover(&mem, Limits::default(), 2).unwrap().0.digest(),
        live
    );
}

#[test]
fn the_count_waits_until_the_log_has_grown_by_the_snapshots_size() {
    let mem = MemDir::new();
    let (engine, journal) = start(mem.clone());
    setup(&engine);
    let config = SnapshotterConfig {
        every_writes: Some(10),
        min_log_growth_percent: Some(100),
        ..manual()
    };
    let snapshotter = snapshots(&engine, &journal, &mem, config);
    // 300 holds: a snapshot much larger than 10 writes of log.
    writes(&engine, 0, 300);
    let base = snapshotter.snapshot_now().unwrap();
    let from = journal.stats().bytes;
    let taken = snapshotter.stats().taken;
    let mut written = 0;
    loop {
        let grown = journal.stats().bytes - from;
        if grown >= base.bytes {
            break;
        }
        // The log only grows: below the snapshot's size now, it was below it all along.
        assert_eq!(
            snapshotter.stats().taken,
            taken,
            "a snapshot after {written} writes, {grown} of {} bytes",
            base.bytes
        );
        writes(&engine, 1_000 + written, 5);
        written += 5;
        // Time for the trigger (checked every 5 ms) to fire if it would.
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        written > 50,
        "the log outgrew the snapshot in {written} writes"
    );
    let seq = journal.stats().durable_seq;
    let stats = eventually(&snapshotter, |s| {
        s.last.as_ref().is_some_and(|l| l.seq == seq)
    });
    assert_eq!(stats.taken, taken + 1);
}

#[test]
fn nothing_new_means_no_snapshot_by_time() {
    let mem = MemDir::new();
    let (engine, journal) = start(mem.clone());
    setup(&engine);
    let config = SnapshotterConfig {
        every: Some(Duration::ZERO),
        ..manual()
    };
    let snapshotter = snapshots(&engine, &journal, &mem, config);
    // The time trigger fires at once for the setup writes, then only after new writes.
    let first = eventually(&snapshotter, |s| s.taken == 1);
    assert_eq!(first.last.unwrap().seq, journal.stats().durable_seq);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        snapshotter.stats().taken,
        1,
        "a snapshot without new writes"
    );
    writes(&engine, 0, 3);
    let seq = journal.stats().durable_seq;
    eventually(&snapshotter, |s| {
        s.last.as_ref().is_some_and(|l| l.seq == seq)
    });
}

#[test]
fn retention_follows_each_snapshot() {
    let mem = MemDir::new();
    let (engine, journal) = start(mem.clone());
    let archive = MemDir::new();
    let config = SnapshotterConfig {
        retention: Some(RetentionPolicy {
            keep_for: Duration::ZERO,
            action: RetentionAction::Archive(Arc::new(archive.clone())),
            keep_snapshots: 1,
        }),
        ..manual()
    };
    let snapshotter = snapshots(&engine, &journal, &mem, config);
    setup(&engine);
    writes(&engine, 0, 150);
    let first = snapshotter.snapshot_now().unwrap();
    let report = first.retention.clone().unwrap();
    assert_eq!(report.floor, Some(first.seq));
    assert!(!report.archived.is_empty());
    writes(&engine, 150, 150);
    let second = snapshotter.snapshot_now().unwrap();
    let report = second.retention.clone().unwrap();
    assert_eq!(report.floor, Some(second.seq));
    assert_eq!(report.snapshots_deleted, vec![first.file.clone()]);
    let stats = snapshotter.stats();
    assert_eq!(stats.snapshots_deleted, 1);
    assert_eq!(
        stats.segments_removed,
        (first.retention.unwrap().archived.len() + report.archived.len()) as u64
    );
    assert_eq!(stats.retention_failures, 0);
    // The first segment left still reaches the newest snapshot.
    let first_left = mem
        .names()
        .iter()
        .filter_map(|n| parse_segment_name(n))
        .min()
        .unwrap();
    assert!(first_left <= second.seq + 1);
    let live = engine.digest();
    drop(snapshotter);
    drop(engine);
    drop(journal);
    mem.crash();
    assert_eq!(
        recover(&mem, Limits::default(), 2).unwrap().0.digest(),
        live
    );
}

#[test]
fn a_failed_log_fails_the_snapshot_and_nothing_is_written() {
    let mem = MemDir::new();
    let faulty = FaultDir::new(mem.clone());
    let (engine, journal) = start(faulty.clone());
    let snapshotter = snapshots(&engine, &journal, &faulty, manual());
    setup(&engine);
    faulty.set_fail_sync(true);
    let (resp, _) = engine.execute_one(reserve(0), 50_000);
    assert!(!resp.outcome.is_ok(), "{resp:?}");
    let err = snapshotter.snapshot_now().unwrap_err();
    assert!(err.contains("durable"), "{err}");
    let stats = snapshotter.stats();
    assert_eq!((stats.taken, stats.failed), (0, 1));
    assert_eq!(stats.last_error.as_deref(), Some(err.as_str()));
    assert!(mem.names().iter().all(|n| parse_snapshot_name(n).is_none()));
}

#[test]
fn an_engine_recovered_from_a_snapshot_alone_snapshots_without_new_writes() {
    let mem = MemDir::new();
    let (engine, journal) = start(mem.clone());
    setup(&engine);
    writes(&engine, 0, 30);
    let image = depot_wal::capture_image(&engine).image;
    depot_engine::Journal::wait_durable(&*journal, image.seq).unwrap();
    let name = depot_wal::write_snapshot(&mem, &image).unwrap();
    drop(engine);
    drop(journal);

    // Only the snapshot: the log is empty, yet everything recovered is durable.
    let alone = MemDir::new();
    alone.insert(&name, mem.bytes(&name).unwrap());
    let (engine, journal) = start(alone.clone());
    assert_eq!(journal.stats().durable_seq, image.seq);
    let snapshotter = snapshots(&engine, &journal, &alone, manual());
    let taken = snapshotter.snapshot_now().unwrap();
    assert_eq!((taken.seq, taken.file), (image.seq, name));
}

#[test]
fn the_log_on_disk_after_the_last_snapshot_counts_after_a_restart() {
    let mem = MemDir::new();
    let (engine, journal) = start(mem.clone());
    setup(&engine);
    writes(&engine, 0, 300);
    let base = snapshots(&engine, &journal, &mem, manual())
        .snapshot_now()
        .unwrap();
    // The log after the snapshot, written with no snapshotter running: as large as the
    // snapshot, over several segments.
    let from = journal.stats().bytes;
    let mut written = 0;
    while journal.stats().bytes - from < base.bytes {
        writes(&engine, 1_000 + written, 5);
        written += 5;
    }
    let after = journal.stats().bytes - from;
    assert_eq!(depot_wal::log_bytes_after(&mem, base.seq).unwrap(), after);
    assert_eq!(depot_wal::log_bytes_after(&mem, u64::MAX - 1).unwrap(), 0);
    drop(engine);
    drop(journal);

    // After a restart the log on disk counts: one more write is enough for the count and the
    // growth (100 %).
    let (engine, journal) = start(mem.clone());
    let config = SnapshotterConfig {
        every_writes: Some(written / 2),
        min_log_growth_percent: Some(100),
        ..manual()
    };
    let snapshotter = snapshots(&engine, &journal, &mem, config);
    writes(&engine, 5_000, 1);
    let seq = journal.stats().durable_seq;
    let stats = eventually(&snapshotter, |s| {
        s.last.as_ref().is_some_and(|l| l.seq == seq)
    });
    assert_eq!(stats.taken, 1);
}
