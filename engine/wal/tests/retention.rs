//! Log retention on the storage seam: only segments wholly covered by the newest valid snapshot
//! the log reaches, older than `keep_for` and before the last segment go (deleted or archived,
//! oldest first); recovery afterwards rebuilds the same state; faults while archiving lose
//! nothing.

use depot_engine::Journal;
use depot_engine::{ChannelId, Command, Engine, FillPolicy, Limits, LineRequest, Machine, Sku};
use depot_wal::format::parse_segment_name;
use depot_wal::{
    apply_retention, capture_image, flip_bit, open_engine, read_log, recover, snapshot_name,
    write_snapshot, Directory, FaultDir, LogEntry, MemDir, RetentionAction, RetentionPolicy,
    WalError, WalJournal, WalOptions,
};
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::{req, setup};

fn start(dir: impl Directory + 'static) -> (Engine, Arc<WalJournal>) {
    let options = WalOptions {
        segment_len_max: 1024,
        write_buffer_max: 256,
        preallocate: 512,
    };
    let (engine, journal, _) = open_engine(Box::new(dir), options, Limits::default(), 2).unwrap();
    (engine, journal)
}

/// `count` reservations from `first`, time moving on 100 ms per write.
fn writes(engine: &Engine, first: u64, count: u64) {
    for i in first..first + count {
        let r = req(Command::Reserve {
            channel: ChannelId::new("web").unwrap(),
            lines: vec![LineRequest {
                sku: Sku::new(&format!("sku-{}", i % 20)).unwrap(),
                quantity: 1,
            }],
            ttl_ms: None,
            order_ref: Some(format!("order-{i}")),
            ship_to_region: None,
            fill: FillPolicy::AllOrNothing,
        });
        let (resp, _) = engine.execute_one(r, 10_000 + i * 100);
        assert!(resp.outcome.is_ok(), "{resp:?}");
    }
}

fn snapshot(engine: &Engine, journal: &WalJournal, dir: &dyn Directory) -> u64 {
    let image = capture_image(engine).image;
    journal.wait_durable(image.seq).unwrap();
    write_snapshot(dir, &image).unwrap();
    image.seq
}

/// The segments of `dir`: (first seq, name), sorted.
fn segments(dir: &MemDir) -> Vec<(u64, String)> {
    let mut s: Vec<_> = dir
        .names()
        .into_iter()
        .filter_map(|n| Some((parse_segment_name(&n)?, n)))
        .collect();
    s.sort();
    s
}

fn digest(dir: &dyn Directory) -> [u8; 32] {
    recover(dir, Limits::default(), 2).unwrap().0.digest()
}

fn delete_after(keep_for: Duration) -> RetentionPolicy {
    RetentionPolicy {
        keep_for,
        action: RetentionAction::Delete,
        keep_snapshots: 2,
    }
}

const LATER: u64 = u64::MAX / 2;

/// A log of setup + 300 reservations over many small segments, a snapshot after the first 150.
fn scenario() -> (MemDir, u64, [u8; 32], Vec<LogEntry>) {
    let mem = MemDir::new();
    let (engine, journal) = start(mem.clone());
    setup(&engine);
    writes(&engine, 0, 150);
    let floor = snapshot(&engine, &journal, &mem);
    writes(&engine, 150, 150);
    let live = engine.digest();
    drop(engine);
    drop(journal);
    let (entries, _) = read_log(&mem, 1).unwrap();
    (mem, floor, live, entries)
}

#[test]
fn only_covered_old_segments_before_the_last_go() {
    let (mem, floor, live, all) = scenario();
    let before = segments(&mem);
    assert!(before.len() > 10, "{} segments", before.len());

    let report = apply_retention(&mem, &delete_after(Duration::ZERO), LATER).unwrap();
    assert_eq!(report.floor, Some(floor));
    assert!(!report.deleted.is_empty());
    assert!(report.archived.is_empty());
    let after = segments(&mem);
    // A prefix went: each deleted segment's successor starts at or before floor + 1, and the
    // first segment left still does (it holds floor + 1 or starts right after the floor).
    assert_eq!(after, before[report.deleted.len()..].to_vec());
    for (i, name) in report.deleted.iter().enumerate() {
        assert_eq!(&before[i].1, name);
        assert!(
            before[i + 1].0 <= floor + 1,
            "{name} held records after the floor"
        );
    }
    assert!(after[0].0 <= floor + 1);
    assert!(
        after.len() < 2 || after[1].0 > floor + 1,
        "a covered segment was left"
    );
    assert_eq!(
        after.last(),
        before.last(),
        "the last segment is never removed"
    );
    mem.crash(); // retention synced the directory: the removals are durable
    assert_eq!(segments(&mem), after);

    // The state is the same, and every entry after the floor is still in the log.
    assert_eq!(digest(&mem), live);
    let (rest, _) = read_log(&mem, floor + 1).unwrap();
    assert_eq!(rest[..], all[floor as usize..]);
    assert!(matches!(read_log(&mem, 1), Err(WalError::Gap { .. })));

    // Applying it again changes nothing.
    let again = apply_retention(&mem, &delete_after(Duration::ZERO), LATER).unwrap();
    assert!(again.deleted.is_empty());
}

#[test]
fn young_segments_are_kept_until_keep_for_has_passed() {
    let (mem, floor, live, all) = scenario();
    let before = segments(&mem);
    let time_of = |seq: u64| all[seq as usize - 1].now;
    // Writes are 100 ms apart; the floor is about 15 s before the last write, so keeping 22 s
    // at the time of the last write lets the older half of the covered segments go.
    let keep_for = Duration::from_secs(22);
    let keep_ms = 22_000;
    let now = all.last().unwrap().now;
    let report = apply_retention(&mem, &delete_after(keep_for), now).unwrap();
    for name in &report.deleted {
        let i = before.iter().position(|(_, n)| n == name).unwrap();
        assert!(
            time_of(before[i + 1].0) + keep_ms <= now,
            "{name} was young"
        );
    }
    let left = segments(&mem);
    let covered_left = left.windows(2).filter(|w| w[1].0 <= floor + 1).count();
    assert_eq!(report.kept_young, covered_left);
    for w in left.windows(2).filter(|w| w[1].0 <= floor + 1) {
        assert!(time_of(w[1].0) + keep_ms > now, "{} was old enough", w[0].1);
    }
    assert!(report.kept_young > 0);
    assert!(!report.deleted.is_empty());

    // Much later, they go too.
    let report = apply_retention(&mem, &delete_after(keep_for), now + 3_600_000).unwrap();
    assert_eq!(report.deleted.len(), covered_left);
    assert_eq!(report.kept_young, 0);
    assert_eq!(digest(&mem), live);
}

#[test]
fn without_a_valid_snapshot_the_log_reaches_nothing_goes() {
    // No snapshot at all.
    let mem = MemDir::new();
    let (engine, journal) = start(mem.clone());
    setup(&engine);
    writes(&engine, 0, 100);
    let report = apply_retention(&mem, &delete_after(Duration::ZERO), LATER).unwrap();
    assert_eq!(report.floor, None);
    let before = segments(&mem);

    // A valid snapshot that is ahead of the log (taken without waiting for it) is no floor.
    let mut image = capture_image(&engine).image;
    image.seq += 1_000;
    write_snapshot(&mem, &image).unwrap();
    let report = apply_retention(&mem, &delete_after(Duration::ZERO), LATER).unwrap();
    assert_eq!(report.floor, None);
    assert_eq!(segments(&mem), before);
    assert!(mem.names().contains(&snapshot_name(image.seq)));

    // A damaged one is no floor either.
    let seq = snapshot(&engine, &journal, &mem);
    flip_bit(&mem, &snapshot_name(seq), 40, 3).unwrap();
    let report = apply_retention(&mem, &delete_after(Duration::ZERO), LATER).unwrap();
    assert_eq!(report.floor, None);
    assert!(report.deleted.is_empty() && report.snapshots_deleted.is_empty());
    assert_eq!(segments(&mem), before);
}

#[test]
fn a_damaged_newest_snapshot_makes_the_older_one_the_floor() {
    let mem = MemDir::new();
    let (engine, journal) = start(mem.clone());
    setup(&engine);
    writes(&engine, 0, 100);
    let s1 = snapshot(&engine, &journal, &mem);
    writes(&engine, 100, 100);
    let s2 = snapshot(&engine, &journal, &mem);
    writes(&engine, 200, 50);
    let live = engine.digest();
    drop(engine);
    drop(journal);
    flip_bit(&mem, &snapshot_name(s2), 100, 0).unwrap();

    let report = apply_retention(&mem, &delete_after(Duration::ZERO), LATER).unwrap();
    assert_eq!(report.floor, Some(s1));
    assert!(!report.deleted.is_empty());
    assert!(
        segments(&mem)[0].0 <= s1 + 1,
        "records after the older snapshot were removed"
    );
    // Neither snapshot is removed: s1 is the floor, s2 is newer than it.
    assert!(report.snapshots_deleted.is_empty());
    assert_eq!(digest(&mem), live);
}

#[test]
fn old_snapshots_are_pruned_but_never_the_floor() {
    let mem = MemDir::new();
    let (engine, journal) = start(mem.clone());
    setup(&engine);
    let mut seqs = Vec::new();
    for round in 0..4 {
        writes(&engine, round * 40, 40);
        seqs.push(snapshot(&engine, &journal, &mem));
    }
    let live = engine.digest();
    drop(engine);
    drop(journal);
    let policy = RetentionPolicy {
        keep_snapshots: 0, // treated as 1: the floor always stays
        ..delete_after(Duration::ZERO)
    };
    let report = apply_retention(&mem, &policy, LATER).unwrap();
    assert_eq!(report.floor, Some(seqs[3]));
    let want: Vec<String> = seqs[..3].iter().rev().map(|&s| snapshot_name(s)).collect();
    assert_eq!(report.snapshots_deleted, want);
    assert!(mem.names().contains(&snapshot_name(seqs[3])));
    mem.crash();
    assert_eq!(digest(&mem), live);
}

#[test]
fn archived_segments_form_a_log_of_their_own() {
    let (mem, floor, live, all) = scenario();
    let before: Vec<(String, Vec<u8>)> = segments(&mem)
        .into_iter()
        .map(|(_, n)| {
            let b = mem.bytes(&n).unwrap();
            (n, b)
        })
        .collect();
    let archive = MemDir::new();
    let policy = RetentionPolicy {
        keep_for: Duration::ZERO,
        action: RetentionAction::Archive(Arc::new(archive.clone())),
        keep_snapshots: 2,
    };
    let report = apply_retention(&mem, &policy, LATER).unwrap();
    assert!(report.deleted.is_empty());
    assert!(!report.archived.is_empty());
    archive.crash(); // the archive was synced before anything left the log
    assert_eq!(archive.names(), report.archived);
    for (name, bytes) in &before[..report.archived.len()] {
        assert_eq!(archive.bytes(name).as_ref(), Some(bytes), "{name}");
        assert!(mem.bytes(name).is_none());
    }
    // The archive is the head of the log, the directory its rest: together, the whole log.
    let (head, _) = read_log(&archive, 1).unwrap();
    let next = head.last().unwrap().seq + 1;
    assert!(next <= floor + 1);
    let (rest, _) = read_log(&mem, next).unwrap();
    let joined: Vec<LogEntry> = head.into_iter().chain(rest).collect();
    assert_eq!(joined, all);
    assert_eq!(digest(&mem), live);
}

#[test]
fn a_crash_while_archiving_loses_nothing_and_the_next_run_finishes() {
    let (mem, _, live, all) = scenario();
    let archive_mem = MemDir::new();
    let archive = FaultDir::new(archive_mem.clone());
    archive.crash_after(1_500); // in the middle of the second segment's copy
    let policy = RetentionPolicy {
        keep_for: Duration::ZERO,
        action: RetentionAction::Archive(Arc::new(archive.clone())),
        keep_snapshots: 2,
    };
    let before = segments(&mem);
    let err = apply_retention(&mem, &policy, LATER).unwrap_err();
    assert!(archive.crashed(), "{err}");
    // The segment whose copy was cut is still in the log; at most the one before it left.
    let left = segments(&mem);
    assert!(left.len() + 1 >= before.len());
    assert_eq!(left.last(), before.last());
    mem.crash();
    archive_mem.crash();
    assert_eq!(digest(&mem), live);

    // After the restart, a new run archives everything covered; nothing is lost on the way.
    let policy = RetentionPolicy {
        action: RetentionAction::Archive(Arc::new(archive_mem.clone())),
        ..policy
    };
    apply_retention(&mem, &policy, LATER).unwrap();
    assert!(archive_mem.names().iter().all(|n| !n.ends_with(".tmp")));
    let (head, _) = read_log(&archive_mem, 1).unwrap();
    let (rest, _) = read_log(&mem, head.last().unwrap().seq + 1).unwrap();
    assert_eq!(head.into_iter().chain(rest).collect::<Vec<_>>(), all);
    assert_eq!(digest(&mem), live);
}

#[test]
fn a_failed_sync_keeps_the_segment_in_the_log() {
    let (mem, _, live, _) = scenario();
    let before = segments(&mem);
    // The archive's fsync fails: nothing may leave the log.
    let archive = FaultDir::new(MemDir::new());
    archive.set_fail_sync(true);
    let policy = RetentionPolicy {
        keep_for: Duration::ZERO,
        action: RetentionAction::Archive(Arc::new(archive)),
        keep_snapshots: 2,
    };
    assert!(matches!(
        apply_retention(&mem, &policy, LATER),
        Err(WalError::SyncFailed { .. })
    ));
    assert_eq!(segments(&mem), before);

    // The log directory's own fsync fails after the removals: a crash may bring them back,
    // and either way recovery rebuilds the same state.
    let (mem2, _, live2, _) = scenario();
    let faulty = FaultDir::new(mem2.clone());
    faulty.set_fail_sync(true);
    assert!(matches!(
        apply_retention(&faulty, &delete_after(Duration::ZERO), LATER),
        Err(WalError::SyncFailed { .. })
    ));
    mem2.crash();
    assert_eq!(digest(&mem2), live2);
    assert_eq!(digest(&mem), live);
}

#[test]
fn replaying_the_archive_and_the_log_rebuilds_the_state_without_snapshots() {
    // The audit use: archived segments + the log replayed from seq 1 give the live state.
    let (mem, _, live, _) = scenario();
    let archive = MemDir::new();
    let policy = RetentionPolicy {
        keep_for: Duration::ZERO,
        action: RetentionAction::Archive(Arc::new(archive.clone())),
        keep_snapshots: 2,
    };
    apply_retention(&mem, &policy, LATER).unwrap();
    let (head, _) = read_log(&archive, 1).unwrap();
    let (rest, _) = read_log(&mem, head.last().unwrap().seq + 1).unwrap();
    let mut m = Machine::new(Limits::default(), 1);
    for e in head.iter().chain(&rest) {
        m.replay(e);
    }
    assert_eq!(m.digest(), live);
}
