//! The engine on the log with group commit: every acknowledged write survives a crash, many
//! writes share one sync, and a failed sync stops writes without stopping reads.

use depot_engine::{
    ChannelId, Command, Engine, FillPolicy, Limits, LineRequest, Outcome, Refusal, Reply, Request,
    Sku,
};
use depot_wal::{open_engine, recover, FaultDir, FsDir, MemDir, Tail, WalOptions};
use std::sync::Arc;

mod common;
use common::{req, setup};

fn reserve(i: u64) -> Request {
    req(Command::Reserve {
        channel: ChannelId::new("web").unwrap(),
        lines: vec![
            LineRequest {
                sku: Sku::new(&format!("sku-{}", i % 20)).unwrap(),
                quantity: 1,
            },
            LineRequest {
                sku: Sku::new(&format!("sku-{}", (i * 7 + 3) % 20)).unwrap(),
                quantity: 2,
            },
        ]
        .into_iter()
        .fold(Vec::new(), |mut v: Vec<LineRequest>, l| {
            if !v.iter().any(|x| x.sku == l.sku) {
                v.push(l);
            }
            v
        }),
        ttl_ms: None,
        order_ref: None,
        ship_to_region: None,
        fill: FillPolicy::AllOrNothing,
    })
}

/// Several client threads of single requests and batches.
fn load(engine: &Arc<Engine>) -> u64 {
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let mut acked = 0;
                for round in 0..25 {
                    let batch: Vec<Request> =
                        (0..8).map(|i| reserve(t * 1_000 + round * 8 + i)).collect();
                    for (r, _) in engine.execute(batch, 2_000 + round) {
                        assert!(r.seq.is_some(), "{r:?}");
                        acked += 1;
                    }
                }
                acked
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

#[test]
fn acknowledged_writes_survive_a_crash_and_share_syncs() {
    let mem = MemDir::new();
    let (engine, journal, tail) = open_engine(
        Box::new(mem.clone()),
        WalOptions::default(),
        Limits::default(),
        2,
    )
    .unwrap();
    assert_eq!(tail, Tail::Clean);
    // The sync observer (metrics) sees every batch: as many as syncs, covering every entry.
    let seen = Arc::new(std::sync::Mutex::new((0u64, 0u64)));
    let s = seen.clone();
    journal.set_sync_observer(Box::new(move |_took, entries| {
        let mut g = s.lock().unwrap();
        g.0 += 1;
        g.1 += entries as u64;
    }));
    let engine = Arc::new(engine);
    setup(&engine);
    let acked = load(&engine);
    assert_eq!(acked, 4 * 25 * 8);
    let digest = engine.digest();
    let stats = journal.stats();
    assert_eq!(*seen.lock().unwrap(), (stats.syncs, stats.entries));
    assert!(
        stats.syncs < stats.entries,
        "group commit: {} syncs for {} entries",
        stats.syncs,
        stats.entries
    );
    drop(engine);
    drop(journal);
    // The power goes: only what was synced is left, and that is every acknowledged write.
    mem.crash();
    let (machine, tail) = recover(&mem, Limits::default(), 3).unwrap();
    assert_eq!(tail, Tail::Clean);
    assert_eq!(machine.digest(), digest);
}

#[test]
fn a_restarted_engine_on_the_file_system_goes_on_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let digest = {
        let dir = FsDir::open(tmp.path()).unwrap();
        let (engine, _journal, _) =
            open_engine(Box::new(dir), WalOptions::default(), Limits::default(), 2).unwrap();
        let engine = Arc::new(engine);
        setup(&engine);
        load(&engine);
        engine.digest()
    };
    let dir = FsDir::open(tmp.path()).unwrap();
    let (engine, _journal, tail) =
        open_engine(Box::new(dir), WalOptions::default(), Limits::default(), 2).unwrap();
    assert_eq!(tail, Tail::Clean);
    assert_eq!(engine.digest(), digest);
    // And writes continue with the next sequence number.
    let (r, _) = engine.execute_one(reserve(1), 5_000);
    assert!(r.outcome.is_ok(), "{r:?}");
}

#[test]
fn a_failed_sync_refuses_writes_from_then_on_and_reads_go_on() {
    let faults = FaultDir::new(MemDir::new());
    let (engine, journal, _) = open_engine(
        Box::new(faults.clone()),
        WalOptions::default(),
        Limits::default(),
        2,
    )
    .unwrap();
    setup(&engine);
    faults.set_fail_sync(true);
    let (r, _) = engine.execute_one(reserve(1), 3_000);
    assert!(
        matches!(r.outcome, Outcome::Refused(Refusal::Unavailable { .. })),
        "{r:?}"
    );
    faults.set_fail_sync(false);
    // Never retried: the log stays stopped even once the disk would work again.
    let (r, _) = engine.execute_one(reserve(2), 3_000);
    assert!(
        matches!(r.outcome, Outcome::Refused(Refusal::Unavailable { .. })),
        "{r:?}"
    );
    assert!(r.seq.is_none());
    assert!(depot_engine::Journal::writable(&*journal).is_err());
    let (r, _) = engine.execute_one(
        req(Command::GetStock {
            sku: Sku::new("sku-5").unwrap(),
        }),
        3_000,
    );
    assert!(matches!(r.outcome, Outcome::Ok(Reply::Stock(_))), "{r:?}");
}

#[test]
fn every_waiter_is_answered_whatever_seq_it_waits_for() {
    use depot_engine::Journal;
    use depot_wal::{WalJournal, WalWriter};
    let mem = MemDir::new();
    let faulty = FaultDir::new(mem.clone());
    let writer = WalWriter::open(Box::new(faulty.clone()), WalOptions::default()).unwrap();
    let journal = Arc::new(WalJournal::start(writer));
    // Waiters for seqs not yet appended, appended in several rounds, and already durable.
    let waiters: Vec<_> = (1..=40u64)
        .map(|seq| {
            let journal = journal.clone();
            std::thread::spawn(move || journal.wait_durable(seq * 5))
        })
        .collect();
    for round in common::entries(1, 200).chunks(17) {
        journal.append(round.to_vec());
        std::thread::yield_now();
    }
    for w in waiters {
        assert!(w.join().unwrap().is_ok());
    }
    assert_eq!(journal.stats().durable_seq, 200);
    assert!(journal.wait_durable(150).is_ok());

    // A failed sync answers every waiter, including one for a seq that will never be written.
    faulty.set_fail_sync(true);
    let waiters: Vec<_> = [205u64, 210, 1_000]
        .into_iter()
        .map(|seq| {
            let journal = journal.clone();
            std::thread::spawn(move || journal.wait_durable(seq))
        })
        .collect();
    for e in common::entries(201, 10) {
        journal.append(vec![e]);
    }
    for w in waiters {
        assert!(w.join().unwrap().is_err());
    }
    assert!(journal.writable().is_err());
    // What was durable before stays answered.
    assert!(journal.wait_durable(200).is_ok());
}

#[test]
fn completions_run_in_seq_order_once_durable_and_fail_with_the_log() {
    use depot_engine::Journal;
    use depot_wal::{WalJournal, WalWriter};
    use std::sync::mpsc;
    let mem = MemDir::new();
    let faulty = FaultDir::new(mem.clone());
    let writer = WalWriter::open(Box::new(faulty.clone()), WalOptions::default()).unwrap();
    let journal = Arc::new(WalJournal::start(writer));
    let (tx, rx) = mpsc::channel();
    // Registers a completion for `seq` that reports it with whether it succeeded and how far
    // the log was durable when it ran.
    let when = |seq: u64| {
        let (tx, j) = (tx.clone(), journal.clone());
        move || {
            let durable = Arc::downgrade(&j);
            j.when_durable(
                seq,
                Box::new(move |r| {
                    let at = durable.upgrade().map_or(0, |j| j.stats().durable_seq);
                    tx.send((seq, r.is_ok(), at)).unwrap()
                }),
            );
        }
    };
    // Registered before their entries are appended, for seqs in several rounds, and for one
    // already durable: each runs once, in seq order, and only once its seq is durable.
    for seq in [3u64, 17, 17, 40, 99, 200] {
        when(seq)();
    }
    for round in common::entries(1, 200).chunks(17) {
        journal.append(round.to_vec());
    }
    let got: Vec<_> = (0..6).map(|_| rx.recv().unwrap()).collect();
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        vec![3, 17, 17, 40, 99, 200]
    );
    assert!(got.iter().all(|g| g.1 && g.2 >= g.0), "{got:?}");
    assert_eq!(journal.stats().durable_seq, 200);
    when(150)();
    assert_eq!(
        rx.recv().unwrap().0,
        150,
        "already durable: run all the same"
    );

    // A failed sync fails every completion waiting, including one for a seq never written,
    // and any made later.
    faulty.set_fail_sync(true);
    when(205)();
    when(1_000)();
    journal.append(common::entries(201, 10));
    let failed: Vec<_> = (0..2).map(|_| rx.recv().unwrap()).collect();
    assert_eq!(
        failed.iter().map(|f| (f.0, f.1)).collect::<Vec<_>>(),
        vec![(205, false), (1_000, false)]
    );
    when(2_000)();
    assert!(!rx.recv().unwrap().1);
    assert!(rx.try_recv().is_err(), "each completion runs once");
}

#[test]
fn a_stopping_log_fails_completions_for_seqs_never_appended() {
    use depot_engine::Journal;
    use depot_wal::{WalJournal, WalWriter};
    let writer = WalWriter::open(Box::new(MemDir::new()), WalOptions::default()).unwrap();
    let journal = WalJournal::start(writer);
    let (tx, rx) = std::sync::mpsc::channel();
    let tx2 = tx.clone();
    journal.when_durable(3, Box::new(move |r| tx.send((3, r.is_ok())).unwrap()));
    journal.when_durable(9, Box::new(move |r| tx2.send((9, r.is_ok())).unwrap()));
    journal.append(common::entries(1, 5));
    assert_eq!(rx.recv().unwrap(), (3, true));
    drop(journal);
    assert_eq!(rx.recv().unwrap(), (9, false));
}

#[test]
fn a_panicking_completion_neither_stops_the_log_nor_the_others() {
    use depot_engine::Journal;
    use depot_wal::{WalJournal, WalWriter};
    let writer = WalWriter::open(Box::new(MemDir::new()), WalOptions::default()).unwrap();
    let journal = WalJournal::start(writer);
    let (tx, rx) = std::sync::mpsc::channel();
    journal.when_durable(2, Box::new(|_| panic!("a caller's bug")));
    let t = tx.clone();
    journal.when_durable(2, Box::new(move |r| t.send((2, r.is_ok())).unwrap()));
    journal.append(common::entries(1, 3));
    assert_eq!(rx.recv().unwrap(), (2, true));
    // The log goes on syncing.
    journal.when_durable(5, Box::new(move |r| tx.send((5, r.is_ok())).unwrap()));
    journal.append(common::entries(4, 2));
    assert_eq!(rx.recv().unwrap(), (5, true));
    assert!(journal.wait_durable(5).is_ok());
}
