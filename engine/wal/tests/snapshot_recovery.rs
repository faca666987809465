//! Snapshot files and recovery from them: a snapshot plus the log after it rebuilds the same
//! state as the whole log; a damaged snapshot falls back to an older one or to the log; a
//! crash while a snapshot is written leaves a recoverable directory.

use depot_engine::snapshot::Image;
use depot_engine::{
    ChannelId, Command, Engine, FillPolicy, Journal, Limits, LineRequest, LocationId, Machine,
    Request, ReservationId, Sku,
};
use depot_wal::{
    load_newest_snapshot, open_engine, read_log, recover, snapshot_name, write_snapshot,
    write_state_snapshot, Directory, MemDir, Storage, Tail, WalError, WalJournal, WalOptions,
};
use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

mod common;
use common::{req, setup};

/// A write: mostly reservations (some multi-shard, some expiring), some commits and receipts.
fn write(i: u64) -> Request {
    match i % 5 {
        3 => req(Command::Commit {
            id: ReservationId(i.saturating_sub(10).max(24)),
            lines: None,
        }),
        4 => req(Command::Receive {
            sku: Sku::new(&format!("sku-{}", i % 20)).unwrap(),
            location: LocationId::new("wh").unwrap(),
            quantity: 3,
            unit_cost: Some("3.10".parse().unwrap()),
            reason: "po".into(),
        }),
        _ => {
            let a = i % 20;
            let b = (i * 7 + 3) % 20;
            let mut lines = vec![LineRequest {
                sku: Sku::new(&format!("sku-{a}")).unwrap(),
                quantity: 1,
            }];
            if a != b {
                lines.push(LineRequest {
                    sku: Sku::new(&format!("sku-{b}")).unwrap(),
                    quantity: 2,
                });
            }
            req(Command::Reserve {
                channel: ChannelId::new("web").unwrap(),
                lines,
                ttl_ms: (i % 2 == 0).then_some(5_000),
                order_ref: Some(format!("order-{i}")),
                ship_to_region: None,
                fill: FillPolicy::AllOrNothing,
            })
        }
    }
}

/// Writes `count` requests from `first`, in batches, with time moving on.
fn writes(engine: &Engine, first: u64, count: u64) {
    for chunk in (first..first + count).collect::<Vec<_>>().chunks(7) {
        let batch = chunk.iter().map(|&i| write(i)).collect();
        for (r, _) in engine.execute(batch, 2_000 + chunk[0] * 100) {
            assert!(r.seq.is_some(), "{r:?}");
        }
    }
}

fn small_segments() -> WalOptions {
    WalOptions {
        segment_len_max: 4096,
        write_buffer_max: 1024,
        preallocate: 2048,
    }
}

fn start(dir: &MemDir) -> (Engine, Arc<WalJournal>) {
    let (engine, journal, _) = open_engine(
        Box::new(dir.clone()),
        small_segments(),
        Limits::default(),
        2,
    )
    .unwrap();
    (engine, journal)
}

/// Takes the engine's image, waits until the log holds everything in it, writes the snapshot.
fn snapshot(engine: &Engine, journal: &WalJournal, dir: &dyn Directory) -> Image {
    let image =
        engine.inspect(|front, shards| depot_engine::snapshot::take(front, shards.iter().copied()));
    journal.wait_durable(image.seq).unwrap();
    let name = write_snapshot(dir, &image).unwrap();
    assert_eq!(name, snapshot_name(image.seq));
    image
}

/// The digest of the whole log replayed into a fresh machine, ignoring snapshots.
fn full_log_digest(dir: &dyn Directory) -> [u8; 32] {
    let (entries, _) = read_log(dir, 1).unwrap();
    let mut m = Machine::new(Limits::default(), 1);
    for e in &entries {
        m.replay(e);
    }
    m.digest()
}

/// Removes every log segment whose entries all come before `seq` (as log compaction would).
fn drop_log_before(dir: &MemDir, seq: u64) {
    let segments: Vec<(u64, String)> = dir
        .names()
        .into_iter()
        .filter_map(|n| Some((depot_wal::format::parse_segment_name(&n)?, n)))
        .collect();
    for pair in segments.windows(2) {
        if pair[1].0 <= seq {
            dir.remove(&pair[0].1).unwrap();
        }
    }
    dir.sync().unwrap();
}

#[test]
fn snapshot_plus_log_equals_the_whole_log_and_the_live_engine() {
    let mem = MemDir::new();
    let (engine, journal) = start(&mem);
    setup(&engine);
    writes(&engine, 0, 150);
    let image = snapshot(&engine, &journal, &mem);
    writes(&engine, 150, 150);
    let live = engine.digest();
    drop(engine);
    drop(journal);
    mem.crash();

    assert_eq!(full_log_digest(&mem), live);
    let (newest, name) = load_newest_snapshot(&mem).unwrap().unwrap();
    assert_eq!(newest, image);
    assert_eq!(name, snapshot_name(image.seq));
    for shards in [1, 3, 8] {
        let (m, tail) = recover(&mem, Limits::default(), shards).unwrap();
        assert_eq!(tail, Tail::Clean);
        assert_eq!(m.digest(), live, "{shards} shards");
    }

    // Without the log before the snapshot, only the snapshot can rebuild the state.
    drop_log_before(&mem, image.seq + 1);
    assert!(matches!(read_log(&mem, 1), Err(WalError::Gap { .. })));
    let (m, _) = recover(&mem, Limits::default(), 3).unwrap();
    assert_eq!(m.digest(), live);

    // And the engine goes on from there.
    let (engine, journal) = start(&mem);
    assert_eq!(engine.digest(), live);
    writes(&engine, 300, 20);
    let live = engine.digest();
    drop(engine);
    drop(journal);
    mem.crash();
    assert_eq!(
        recover(&mem, Limits::default(), 2).unwrap().0.digest(),
        live
    );
}

#[test]
fn a_snapshot_at_the_end_of_the_log_or_alone_recovers() {
    let mem = MemDir::new();
    let (engine, journal) = start(&mem);
    setup(&engine);
    writes(&engine, 0, 80);
    let image = snapshot(&engine, &journal, &mem);
    let live = engine.digest();
    drop(engine);
    drop(journal);
    mem.crash();
    // The log ends exactly at the snapshot's seq: nothing to replay.
    let (m, tail) = recover(&mem, Limits::default(), 3).unwrap();
    assert_eq!(tail, Tail::Clean);
    assert_eq!(m.digest(), live);

    // A directory holding only the snapshot (an empty log) recovers to it, and the log then
    // starts at the seq after it.
    let alone = MemDir::new();
    let name = snapshot_name(image.seq);
    alone.insert(&name, mem.bytes(&name).unwrap());
    let (m, _) = recover(&alone, Limits::default(), 2).unwrap();
    assert_eq!(m.digest(), live);
    let (engine, journal) = start(&alone);
    writes(&engine, 80, 30);
    let live = engine.digest();
    drop(engine);
    drop(journal);
    alone.crash();
    let (entries, _) = read_log(&alone, image.seq + 1).unwrap();
    assert_eq!(entries.first().map(|e| e.seq), Some(image.seq + 1));
    assert_eq!(
        recover(&alone, Limits::default(), 2).unwrap().0.digest(),
        live
    );
}

/// A directory with two snapshots and the whole log; returns the live digest and the images.
fn two_snapshots() -> (MemDir, [u8; 32], Image, Image) {
    let mem = MemDir::new();
    let (engine, journal) = start(&mem);
    setup(&engine);
    writes(&engine, 0, 100);
    let older = snapshot(&engine, &journal, &mem);
    writes(&engine, 100, 100);
    let newer = snapshot(&engine, &journal, &mem);
    writes(&engine, 200, 50);
    let live = engine.digest();
    drop(engine);
    drop(journal);
    mem.crash();
    assert!(older.seq < newer.seq);
    (mem, live, older, newer)
}

fn damage(mem: &MemDir, name: &str, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = mem.bytes(name).unwrap();
    f(&mut bytes);
    mem.insert(name, bytes);
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_older_one() {
    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 5] = [
        ("bit flip in the body", |b| {
            let i = b.len() / 2;
            b[i] ^= 0x10;
        }),
        ("bit flip in the header", |b| b[14] ^= 1),
        ("truncated", |b| b.truncate(b.len() - 9)),
        ("cut to the header", |b| b.truncate(20)),
        ("empty", Vec::clear),
    ];
    for (what, f) in damages {
        let (mem, live, older, newer) = two_snapshots();
        damage(&mem, &snapshot_name(newer.seq), f);
        let (image, name) = load_newest_snapshot(&mem).unwrap().unwrap();
        assert_eq!(image, older, "{what}");
        assert_eq!(name, snapshot_name(older.seq));
        let (m, tail) = recover(&mem, Limits::default(), 3).unwrap();
        assert_eq!(tail, Tail::Clean);
        assert_eq!(m.digest(), live, "{what}");

        // With the log before the older snapshot gone, the older one still covers it.
        drop_log_before(&mem, older.seq + 1);
        assert_eq!(
            recover(&mem, Limits::default(), 2).unwrap().0.digest(),
            live,
            "{what}"
        );
    }
}

#[test]
fn damaged_snapshots_fall_back_to_the_whole_log() {
    let (mem, live, older, newer) = two_snapshots();
    for seq in [older.seq, newer.seq] {
        damage(&mem, &snapshot_name(seq), |b| {
            let i = b.len() - 1;
            b[i] ^= 0x80;
        });
    }
    assert!(load_newest_snapshot(&mem).unwrap().is_none());
    let (m, _) = recover(&mem, Limits::default(), 2).unwrap();
    assert_eq!(m.digest(), live);
}

#[test]
fn a_damaged_snapshot_the_log_cannot_replace_fails_recovery() {
    let (mem, _, older, newer) = two_snapshots();
    // The log was compacted up to the newest snapshot, which is then damaged: the older one
    // cannot be brought forward, and recovery must not silently lose the entries between.
    drop_log_before(&mem, newer.seq + 1);
    let newest = snapshot_name(newer.seq);
    damage(&mem, &newest, |b| b[40] ^= 4);
    match recover(&mem, Limits::default(), 2) {
        Err(WalError::Corrupt { file, reason, .. }) => {
            assert_eq!(file, newest);
            assert!(reason.contains("checksum"), "{reason}");
            assert!(
                reason.contains(&format!("from seq {}", older.seq + 1)),
                "{reason}"
            );
        }
        other => panic!("expected a corruption error, got {:?}", other.map(|_| ())),
    }
    // Without any snapshot left, the same.
    mem.remove(&snapshot_name(older.seq)).unwrap();
    assert!(matches!(
        recover(&mem, Limits::default(), 2),
        Err(WalError::Corrupt { .. })
    ));
}

#[test]
fn a_snapshot_ahead_of_the_log_is_skipped() {
    let (mem, _, older, newer) = two_snapshots();
    // A snapshot of state whose log entries never became durable (taken without waiting):
    // the log is the truth, so recovery uses the older snapshot and the log.
    let mut ahead = newer.clone();
    let (entries, _) = read_log(&mem, 1).unwrap();
    let last = entries.last().unwrap().seq;
    ahead.seq = last + 5;
    write_snapshot(&mem, &ahead).unwrap();
    let (m, _) = recover(&mem, Limits::default(), 2).unwrap();
    assert_eq!(m.digest(), full_log_digest(&mem));
    assert!(older.seq < last);
}

/// A directory that "loses power" after a number of operations: every later operation fails,
/// and the test then crashes the memory underneath.
#[derive(Debug, Clone)]
struct DiesAfter {
    inner: MemDir,
    left: Arc<AtomicI64>,
}

impl DiesAfter {
    fn step(&self) -> io::Result<()> {
        if self.left.fetch_sub(1, Ordering::SeqCst) <= 0 {
            Err(io::Error::other("power lost"))
        } else {
            Ok(())
        }
    }
}

#[derive(Debug)]
struct DyingFile {
    inner: Box<dyn Storage>,
    dir: DiesAfter,
}

impl Storage for DyingFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.dir.step()?;
        self.inner.write_at(offset, data)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.dir.step()?;
        self.inner.set_len(len)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.dir.step()?;
        self.inner.sync_data()
    }
}

impl Directory for DiesAfter {
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn create(&self, name: &str) -> io::Result<Box<dyn Storage>> {
        self.step()?;
        let inner = self.inner.create(name)?;
        Ok(Box::new(DyingFile {
            inner,
            dir: self.clone(),
        }))
    }
    fn open(&self, name: &str) -> io::Result<Box<dyn Storage>> {
        let inner = self.inner.open(name)?;
        Ok(Box::new(DyingFile {
            inner,
            dir: self.clone(),
        }))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.step()?;
        self.inner.remove(name)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.step()?;
        self.inner.rename(from, to)
    }
    fn sync(&self) -> io::Result<()> {
        self.step()?;
        self.inner.sync()
    }
}

#[test]
fn a_crash_while_writing_a_snapshot_leaves_a_recoverable_directory() {
    let base = MemDir::new();
    let (engine, journal) = start(&base);
    setup(&engine);
    writes(&engine, 0, 120);
    let older = snapshot(&engine, &journal, &base);
    writes(&engine, 120, 60);
    let image =
        engine.inspect(|front, shards| depot_engine::snapshot::take(front, shards.iter().copied()));
    journal.wait_durable(image.seq).unwrap();
    let live = engine.digest();
    drop(engine);
    drop(journal);
    base.crash();
    let name = snapshot_name(image.seq);

    let mut completed = false;
    for ops in 0..20 {
        // A fresh copy of the durable directory for every crash point.
        let mem = MemDir::new();
        for n in base.names() {
            mem.insert(&n, base.bytes(&n).unwrap());
        }
        let dying = DiesAfter {
            inner: mem.clone(),
            left: Arc::new(AtomicI64::new(ops)),
        };
        let result = write_snapshot(&dying, &image);
        mem.crash();
        // Either no new snapshot, or a complete one: never a damaged file under its name.
        let (newest, newest_name) = load_newest_snapshot(&mem).unwrap().unwrap();
        if mem.names().contains(&name) {
            assert_eq!(newest, image, "{ops} operations");
            assert_eq!(newest_name, name);
        } else {
            assert_eq!(newest, older, "{ops} operations");
            assert!(result.is_err(), "{ops} operations: acknowledged but lost");
        }
        let (m, tail) = recover(&mem, Limits::default(), 3).unwrap();
        assert_eq!(tail, Tail::Clean);
        assert_eq!(m.digest(), live, "{ops} operations");
        // A later attempt succeeds over whatever the crash left behind.
        write_snapshot(&mem, &image).unwrap();
        assert_eq!(load_newest_snapshot(&mem).unwrap().unwrap().0, image);
        if result.is_ok() {
            completed = true;
            break;
        }
    }
    assert!(completed, "the snapshot was never written in full");
}

#[test]
fn a_snapshot_taken_under_load_recovers_after_more_writes() {
    let mem = MemDir::new();
    let (engine, journal) = start(&mem);
    setup(&engine);
    let engine = Arc::new(engine);
    let workers: Vec<_> = (0..3u64)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || writes(&engine, t * 10_000, 200))
        })
        .collect();
    let mut images = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(2));
        images.push(snapshot(&engine, &journal, &mem));
    }
    for w in workers {
        w.join().unwrap();
    }
    writes(&engine, 50_000, 40);
    let live = engine.digest();
    let engine = Arc::try_unwrap(engine).unwrap();
    drop(engine);
    drop(journal);
    mem.crash();

    let newest = images.iter().map(|i| i.seq).max().unwrap();
    let (image, _) = load_newest_snapshot(&mem).unwrap().unwrap();
    assert_eq!(image.seq, newest);
    assert_eq!(full_log_digest(&mem), live);
    drop_log_before(&mem, newest + 1);
    let (m, tail) = recover(&mem, Limits::default(), 4).unwrap();
    assert_eq!(tail, Tail::Clean);
    assert_eq!(m.digest(), live);
}

/// Recovery builds the events of at least the last `events_of_last` entries, exactly as an
/// entry-by-entry replay does, and of a contiguous run of entries up to the end; entries before
/// that run come without events. With 0 it builds none for reservations (nobody reads them). The
/// state is the same either way.
#[test]
fn recovery_reports_the_events_of_the_last_entries() {
    let mem = MemDir::new();
    let (engine, journal) = start(&mem);
    setup(&engine);
    writes(&engine, 0, 12_000);
    let live = engine.digest();
    drop(engine);
    drop(journal);
    mem.crash();

    let (entries, _) = read_log(&mem, 1).unwrap();
    let mut m = Machine::new(Limits::default(), 1);
    let want: Vec<(u64, Vec<depot_engine::Event>)> =
        entries.iter().map(|e| (e.seq, m.replay(e).1)).collect();
    let end = want.last().unwrap().0;
    for events_of_last in [0, 1, 5_000, u64::MAX] {
        let mut got = Vec::new();
        let (machine, _) = depot_wal::recover_with_events(
            &mem,
            Limits::default(),
            2,
            events_of_last,
            &mut |e, events| got.push((e.seq, events)),
        )
        .unwrap();
        assert_eq!(
            machine.digest(),
            live,
            "events of the last {events_of_last}"
        );
        assert_eq!(got.len(), want.len());
        // The entries reported in full: a run up to the end, covering the last ones asked for.
        let first_full = (0..got.len())
            .rev()
            .take_while(|&i| got[i] == want[i])
            .last()
            .map_or(end + 1, |i| want[i].0);
        assert!(
            first_full <= end.saturating_sub(events_of_last).saturating_add(1)
                || events_of_last == 0,
            "events of the last {events_of_last}: full only from seq {first_full}"
        );
        for (i, (seq, events)) in got.iter().enumerate() {
            if *seq < first_full {
                // Before the run, an entry has no events or all of them.
                assert!(
                    events.is_empty() || *events == want[i].1,
                    "seq {seq}: {events:?}"
                );
            }
        }
        if events_of_last == 0 {
            let reservations_with_events = entries
                .iter()
                .zip(&got)
                .filter(|(e, (_, ev))| {
                    matches!(e.request.command, Command::Reserve { .. }) && !ev.is_empty()
                })
                .count();
            assert_eq!(reservations_with_events, 0);
        }
        if events_of_last == u64::MAX {
            assert_eq!(got, want);
        }
    }
}

#[test]
fn a_snapshot_written_from_the_tables_is_the_file_of_the_owned_image() {
    let dir = MemDir::new();
    let (engine, journal) = start(&dir);
    setup(&engine);
    // Multi-shard carts, committed and expiring holds, costs: over a mebibyte of image, so
    // the file is written in several chunks.
    writes(&engine, 0, 6_000);
    let image = snapshot(&engine, &journal, &dir);
    let owned = dir.bytes(&snapshot_name(image.seq)).unwrap();
    assert!(owned.len() > 1 << 20, "{} bytes", owned.len());
    let other = MemDir::new();
    let name = engine.inspect(|front, shards| {
        let state = depot_engine::snapshot::StateImage::new(front, shards.iter().copied());
        write_state_snapshot(&other, &state).unwrap()
    });
    assert_eq!(name, snapshot_name(image.seq));
    assert!(
        other.bytes(&name).unwrap() == owned,
        "the same file, byte for byte"
    );
    assert_eq!(other.names(), vec![name], "no temporary file left");
}
