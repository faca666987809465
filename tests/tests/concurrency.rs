//! Many threads reserving one hot SKU, plus multi-SKU orders spanning shards, on the threaded
//! engine: exactly the stock is granted, never a unit more, and multi-line orders are all or
//! nothing.

use depot_engine::{
    ChannelKind, Command, Engine, EngineConfig, LineRequest, LocationKind, Outcome, Reply, Request,
    Sku, TenantId,
};
use std::sync::Arc;

fn req(command: Command) -> Request {
    Request {
        tenant: TenantId::new("acme").unwrap(),
        key_id: "test".into(),
        idempotency_key: None,
        command,
    }
}

fn sku(s: &str) -> Sku {
    Sku::new(s).unwrap()
}

fn ok(engine: &Engine, command: Command) {
    let (r, _) = engine.execute_one(req(command), 1_000);
    assert!(r.outcome.is_ok(), "setup failed: {:?}", r.outcome);
}

fn setup(shards: usize, hot_units: i64, cart_units: i64) -> Engine {
    let engine = Engine::start(EngineConfig {
        shards,
        ..EngineConfig::default()
    });
    ok(&engine, Command::CreateTenant);
    for (l, region) in [("wh-east", "us-east"), ("wh-west", "us-west")] {
        ok(
            &engine,
            Command::PutLocation {
                location: depot_engine::LocationId::new(l).unwrap(),
                kind: LocationKind::Warehouse,
                name: l.into(),
                region: Some(region.into()),
                wms: None,
            },
        );
    }
    ok(
        &engine,
        Command::PutChannel {
            channel: depot_engine::ChannelId::new("web").unwrap(),
            kind: ChannelKind::Shopify,
            priority: 1,
        },
    );
    let receive = |s: &str, l: &str, q: i64| Command::Receive {
        sku: sku(s),
        location: depot_engine::LocationId::new(l).unwrap(),
        quantity: q,
        unit_cost: None,
        reason: "initial".into(),
    };
    // The hot SKU's units are split over two locations: a reservation may take from both.
    ok(&engine, receive("hot", "wh-east", hot_units / 2));
    ok(
        &engine,
        receive("hot", "wh-west", hot_units - hot_units / 2),
    );
    for s in ["cart-a", "cart-b", "cart-c", "cart-d"] {
        ok(&engine, receive(s, "wh-east", cart_units));
    }
    engine
}

/// A tenant with one warehouse `wh` and one channel `web`.
fn one_warehouse(engine: &Engine) {
    ok(engine, Command::CreateTenant);
    ok(
        engine,
        Command::PutLocation {
            location: depot_engine::LocationId::new("wh").unwrap(),
            kind: LocationKind::Warehouse,
            name: "wh".into(),
            region: None,
            wms: None,
        },
    );
    ok(
        engine,
        Command::PutChannel {
            channel: depot_engine::ChannelId::new("web").unwrap(),
            kind: ChannelKind::B2b,
            priority: 0,
        },
    );
}

/// Receives `quantity` units of `s` at `wh`.
fn receive(s: &str, quantity: i64) -> Command {
    Command::Receive {
        sku: sku(s),
        location: depot_engine::LocationId::new("wh").unwrap(),
        quantity,
        unit_cost: None,
        reason: "r".into(),
    }
}

fn reserve(lines: &[(&str, i64)]) -> Request {
    req(Command::Reserve {
        channel: depot_engine::ChannelId::new("web").unwrap(),
        lines: lines
            .iter()
            .map(|(s, q)| LineRequest {
                sku: sku(s),
                quantity: *q,
            })
            .collect(),
        ttl_ms: None,
        order_ref: None,
        ship_to_region: None,
        fill: Default::default(),
    })
}

fn stock(engine: &Engine, s: &str) -> (i64, i64) {
    let (r, _) = engine.execute_one(req(Command::GetStock { sku: sku(s) }), 2_000);
    let Outcome::Ok(Reply::Stock(v)) = r.outcome else {
        panic!("stock read failed: {:?}", r.outcome)
    };
    let on_hand = v.locations.iter().map(|l| l.on_hand).sum();
    let reserved = v.locations.iter().map(|l| l.reserved).sum();
    assert!(
        v.locations.iter().all(|l| l.available >= 0),
        "{s} went negative: {v:?}"
    );
    (on_hand, reserved)
}

#[test]
fn hot_sku_grants_exactly_the_stock_and_carts_stay_atomic() {
    let shards = 4;
    let hot_units = 5_000;
    let cart_units = 300;
    let engine = Arc::new(setup(shards, hot_units, cart_units));
    let threads = 8;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let (mut hot, mut carts) = (0i64, 0i64);
                for round in 0..120 {
                    // Batches mixing single hot-SKU holds (1 or 2 units) and multi-SKU carts.
                    let mut batch: Vec<Request> = (0..40)
                        .map(|i| reserve(&[("hot", 1 + (i + t) as i64 % 2)]))
                        .collect();
                    batch.push(reserve(&[
                        ("cart-a", 1),
                        ("cart-b", 2),
                        ("cart-c", 1),
                        ("hot", 1),
                    ]));
                    batch.push(reserve(&[("cart-d", 3), ("cart-a", 1)]));
                    let answers = engine.execute(batch.clone(), 1_000 + round);
                    for (req, (resp, _)) in batch.iter().zip(answers) {
                        let Command::Reserve { lines, .. } = &req.command else {
                            unreachable!()
                        };
                        match resp.outcome {
                            Outcome::Ok(Reply::Reservation(v)) => {
                                for (line, granted) in lines.iter().zip(&v.lines) {
                                    assert_eq!(
                                        line.quantity, granted.quantity,
                                        "all-or-nothing granted a partial line"
                                    );
                                    let placed: i64 =
                                        granted.allocations.iter().map(|a| a.quantity).sum();
                                    assert_eq!(placed, granted.quantity);
                                    if line.sku.as_str() == "hot" {
                                        hot += line.quantity;
                                    } else {
                                        carts += line.quantity;
                                    }
                                }
                            }
                            Outcome::Refused(depot_engine::Refusal::InsufficientStock {
                                ..
                            }) => {}
                            other => panic!("unexpected outcome {other:?}"),
                        }
                    }
                }
                (hot, carts)
            })
        })
        .collect();
    let (mut hot, mut carts) = (0, 0);
    for h in handles {
        let (a, b) = h.join().expect("client thread");
        hot += a;
        carts += b;
    }
    // Demand (8 x 120 x ~61 units of hot) far exceeds the stock, so it must sell out exactly.
    assert_eq!(
        hot, hot_units,
        "granted hot units must equal the stock exactly"
    );
    let (on_hand, reserved) = stock(&engine, "hot");
    assert_eq!((on_hand, reserved), (hot_units, hot_units));
    let mut cart_reserved = 0;
    for s in ["cart-a", "cart-b", "cart-c", "cart-d"] {
        let (on_hand, reserved) = stock(&engine, s);
        assert_eq!(on_hand, cart_units);
        assert!(reserved <= cart_units);
        cart_reserved += reserved;
    }
    assert_eq!(
        cart_reserved, carts,
        "reserved units of cart SKUs equal what was granted"
    );
}

/// A 3-shard engine with a journal, tenant `acme`, location `wh`, channel `web`, and
/// `quantity` units of each of `skus` received at `wh`.
fn journaled_warehouse(skus: &[&str], quantity: i64) -> (Engine, depot_engine::MemoryJournal) {
    journaled_warehouse_with(skus, quantity, depot_engine::Limits::default())
}

/// [`journaled_warehouse`] with `limits`.
fn journaled_warehouse_with(
    skus: &[&str],
    quantity: i64,
    limits: depot_engine::Limits,
) -> (Engine, depot_engine::MemoryJournal) {
    let journal = depot_engine::MemoryJournal::default();
    let engine = Engine::start_with(
        EngineConfig { shards: 3, limits },
        Some(std::sync::Arc::new(journal.clone())),
    );
    ok(&engine, Command::CreateTenant);
    ok(
        &engine,
        Command::PutLocation {
            location: depot_engine::LocationId::new("wh").unwrap(),
            kind: LocationKind::Warehouse,
            name: "wh".into(),
            region: None,
            wms: None,
        },
    );
    ok(
        &engine,
        Command::PutChannel {
            channel: depot_engine::ChannelId::new("web").unwrap(),
            kind: ChannelKind::Shopify,
            priority: 0,
        },
    );
    for s in skus {
        ok(&engine, receive(s, quantity));
    }
    (engine, journal)
}

#[test]
fn journal_replay_gives_the_threaded_engines_digest() {
    let (recorded, journal) = journaled_warehouse(&["a", "b", "c"], 20);
    let batch: Vec<Request> = (0..60)
        .map(|i| reserve(&[("a", 1 + i % 3), ("b", 1), ("c", i % 2 + 1)]))
        .collect();
    let answers = recorded.execute(batch, 5_000);
    assert!(
        answers.iter().any(|(r, _)| r.outcome.is_ok())
            && answers.iter().any(|(r, _)| !r.outcome.is_ok())
    );
    let entries = journal.entries.lock().unwrap().clone();
    assert_eq!(entries.len(), 6 + 60, "every sequenced write is journaled");
    for shards in [1, 3, 4] {
        let mut machine = depot_engine::Machine::new(depot_engine::Limits::default(), shards);
        for e in &entries {
            machine.replay(e);
        }
        let (a, b) = (machine.canonical(), recorded.canonical());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, y, "replay into {shards} shard(s)");
        }
        assert_eq!(a.len(), b.len());
        assert_eq!(
            machine.digest(),
            recorded.digest(),
            "replay into {shards} shard(s)"
        );
    }
}

#[test]
fn a_full_shard_queue_refuses_with_overloaded_and_changes_nothing() {
    let limits = depot_engine::Limits {
        queue_depth_max: 8,
        batch_len_max: 64,
        ..depot_engine::Limits::default()
    };
    let engine = Engine::start(EngineConfig { shards: 2, limits });
    one_warehouse(&engine);
    ok(&engine, receive("a", 1_000));
    // One batch of 40 holds: the queue takes 8 at a time, so the rest are refused up front.
    let answers = engine.execute((0..40).map(|_| reserve(&[("a", 1)])).collect(), 2_000);
    let granted = answers.iter().filter(|(r, _)| r.outcome.is_ok()).count();
    let overloaded: Vec<_> = answers
        .iter()
        .filter(|(r, _)| {
            matches!(
                r.outcome,
                Outcome::Refused(depot_engine::Refusal::Overloaded)
            )
        })
        .collect();
    assert_eq!(granted + overloaded.len(), 40);
    assert!(granted >= 1 && !overloaded.is_empty(), "granted {granted}");
    assert!(
        overloaded
            .iter()
            .all(|(r, events)| r.seq.is_none() && events.is_empty()),
        "a refused request is not sequenced"
    );
    let (_, reserved) = stock(&engine, "a");
    assert_eq!(reserved, granted as i64, "only granted holds reserve units");
    // A batch over the batch limit is refused as a whole.
    let answers = engine.execute((0..65).map(|_| reserve(&[("a", 1)])).collect(), 3_000);
    assert!(answers.iter().all(|(r, _)| matches!(
        &r.outcome,
        Outcome::Refused(depot_engine::Refusal::LimitExceeded { limit: 64, .. })
    )));
    assert_eq!(stock(&engine, "a").1, granted as i64);
}

/// A journal whose next sync fails once told to; the failure is sticky, as a real log's is.
#[derive(Default)]
struct FailingJournal {
    fail_next_sync: std::sync::atomic::AtomicBool,
    failed: std::sync::atomic::AtomicBool,
}

impl depot_engine::Journal for FailingJournal {
    fn append(&self, _entries: Vec<depot_engine::LogEntry>) {}
    fn wait_durable(&self, _seq: depot_engine::Seq) -> Result<(), depot_engine::JournalError> {
        if self
            .fail_next_sync
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            self.failed.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        self.writable()
    }
    fn writable(&self) -> Result<(), depot_engine::JournalError> {
        if self.failed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(depot_engine::JournalError {
                message: "fdatasync failed: EIO".into(),
            });
        }
        Ok(())
    }
}

#[test]
fn after_a_failed_sync_writes_are_refused_and_reads_go_on() {
    let journal = Arc::new(FailingJournal::default());
    let engine = Engine::start_with(
        EngineConfig {
            shards: 2,
            ..EngineConfig::default()
        },
        Some(journal.clone()),
    );
    one_warehouse(&engine);
    ok(&engine, receive("a", 10));
    journal
        .fail_next_sync
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let unavailable = |r: &depot_engine::Response| {
        matches!(
            r.outcome,
            Outcome::Refused(depot_engine::Refusal::Unavailable { .. })
        )
    };
    // The write in flight when the sync fails is not acknowledged...
    let (r, events) = engine.execute_one(req(receive("a", 10)), 2_000);
    assert!(unavailable(&r) && events.is_empty(), "{r:?}");
    // ...later writes are refused before they run, so nothing more changes...
    let before = engine.digest();
    let (r, _) = engine.execute_one(reserve(&[("a", 1)]), 3_000);
    assert!(unavailable(&r) && r.seq.is_none(), "{r:?}");
    assert_eq!(engine.digest(), before);
    // ...and reads still work.
    assert_eq!(
        stock(&engine, "a").0,
        20,
        "the unacknowledged receive ran in memory only (a server reloads its state from the \
         log after a full disk, and stops after a failed sync)"
    );
}

/// A journal whose writes become durable only when the test says so, or never (`fail`).
#[derive(Default)]
struct GateJournal {
    /// (durable up to, failed)
    state: std::sync::Mutex<(depot_engine::Seq, bool)>,
    changed: std::sync::Condvar,
}

impl GateJournal {
    fn release(&self, upto: depot_engine::Seq) {
        self.state.lock().unwrap().0 = upto;
        self.changed.notify_all();
    }
    fn fail(&self) {
        self.state.lock().unwrap().1 = true;
        self.changed.notify_all();
    }
}

impl depot_engine::Journal for GateJournal {
    fn append(&self, _entries: Vec<depot_engine::LogEntry>) {}
    fn wait_durable(&self, seq: depot_engine::Seq) -> Result<(), depot_engine::JournalError> {
        let mut st = self.state.lock().unwrap();
        loop {
            if st.0 >= seq {
                return Ok(());
            }
            if st.1 {
                return Err(depot_engine::JournalError {
                    message: "disk full".into(),
                });
            }
            st = self.changed.wait(st).unwrap();
        }
    }
    fn writable(&self) -> Result<(), depot_engine::JournalError> {
        Ok(())
    }
}

fn keyed(key: &str, request: Request) -> Request {
    Request {
        idempotency_key: Some(key.into()),
        ..request
    }
}

/// A repeat of an idempotency key answers with the first request's outcome, so it must not be
/// acknowledged before that request is durable, nor at all if its sync fails: the client
/// would hold a success the log does not have.
#[test]
fn a_repeat_is_acknowledged_only_once_its_first_request_is_durable() {
    for fails in [false, true] {
        let journal = Arc::new(GateJournal::default());
        let engine = Arc::new(Engine::start_with(
            EngineConfig {
                shards: 2,
                ..EngineConfig::default()
            },
            Some(journal.clone()),
        ));
        // The setup is durable at once; from here on, nothing is until the test says so.
        journal.release(u64::MAX / 2);
        one_warehouse(&engine);
        ok(&engine, receive("a", 10));
        journal.release(0);
        let first = engine.execute_unacked(vec![keyed("order-1", reserve(&[("a", 2)]))], 2_000);
        // The repeat comes in its own batch, which writes nothing else.
        let (tx, rx) = std::sync::mpsc::channel();
        let repeat = std::thread::spawn({
            let engine = engine.clone();
            move || {
                let answer = engine.execute_one(keyed("order-1", reserve(&[("a", 2)])), 2_100);
                tx.send(answer).unwrap();
            }
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "the repeat was answered before its first request was durable"
        );
        if fails {
            journal.fail();
        } else {
            journal.release(u64::MAX / 2);
        }
        let (r, _) = rx.recv().unwrap();
        repeat.join().unwrap();
        let first = engine.acknowledge(first).pop().unwrap().0;
        if fails {
            for r in [&r, &first] {
                assert!(
                    matches!(
                        r.outcome,
                        Outcome::Refused(depot_engine::Refusal::Unavailable { .. })
                    ),
                    "{r:?}"
                );
            }
        } else {
            assert!(first.outcome.is_ok() && !first.replayed, "{first:?}");
            assert!(r.replayed, "{r:?}");
            assert_eq!(r.outcome, first.outcome);
        }
    }
}

/// Threads sending single requests (small batches, run by the submitting thread when the
/// shards are idle) race threads sending batches of 100 (run by the shard threads), on hot
/// SKUs with little stock. Whatever ran where, the state must be the one the journal's order
/// gives on the sequential machine, and never a unit more than the stock is held.
#[test]
fn small_inline_batches_racing_queued_ones_keep_sequence_order() {
    with_watchdog(|| small_inline_batches_race(NEVER));
}

/// The same race with every batch of 100 that touches several shards run combined on one
/// shard thread, the other shards lending it their state: combined batches, small batches
/// run inline and single-shard batches interleave in every order, and none may run out of
/// sequence on any shard.
#[test]
fn small_inline_batches_racing_combined_ones_keep_sequence_order() {
    with_watchdog(|| small_inline_batches_race(0));
}

/// `Limits::combine_percent` that never combines a batch.
const NEVER: u32 = 101;

fn small_inline_batches_race(combine_percent: u32) {
    let skus: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
    let names: Vec<&str> = skus.iter().map(String::as_str).collect();
    let limits = depot_engine::Limits {
        combine_percent,
        ..depot_engine::Limits::default()
    };
    let (engine, journal) = journaled_warehouse_with(&names, 400, limits);
    let engine = std::sync::Arc::new(engine);
    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let (engine, skus) = (engine.clone(), skus.clone());
            std::thread::spawn(move || {
                let cart = |i: u64| {
                    let a = ((i * 7 + t) % 8) as usize;
                    let b = ((i * 3 + t + 1) % 8) as usize;
                    if i % 3 == 0 || a == b {
                        reserve(&[(skus[a].as_str(), 1)])
                    } else {
                        reserve(&[(skus[a].as_str(), 1), (skus[b].as_str(), 1)])
                    }
                };
                let mut granted = 0u64;
                if t < 3 {
                    for i in 0..600 {
                        let (r, _) = engine.execute_one(cart(i), 3_000);
                        granted += u64::from(r.outcome.is_ok());
                    }
                } else {
                    for b in 0..10 {
                        let batch = (0..100).map(|i| cart(b * 100 + i)).collect();
                        let answers = engine.execute(batch, 3_000);
                        granted += answers.iter().filter(|(r, _)| r.outcome.is_ok()).count() as u64;
                    }
                }
                granted
            })
        })
        .collect();
    let granted: u64 = threads
        .into_iter()
        .map(|t| t.join().expect("a client"))
        .sum();
    assert!(granted > 0, "some carts were held");
    let mut held = 0;
    for s in &skus {
        let (on_hand, reserved) = stock(&engine, s);
        assert_eq!(on_hand, 400);
        assert!(reserved <= 400, "{s}: {reserved} held of 400");
        held += reserved;
    }
    assert_eq!(held, 400 * 8, "the hot SKUs sell out");
    let entries = journal.entries.lock().unwrap().clone();
    for shards in [1, 3] {
        let mut machine = depot_engine::Machine::new(depot_engine::Limits::default(), shards);
        for e in &entries {
            machine.replay(e);
        }
        assert_eq!(
            machine.digest(),
            engine.digest(),
            "the journal replayed on {shards} shard(s)"
        );
    }
}

/// Shards run later reservations while an earlier one spanning shards waits for its decision;
/// every answer, event and the final state must still be those of the single-threaded machine
/// fed the same requests in the same order, for any shard count.
#[test]
fn reservations_overtaking_pending_carts_answer_as_the_machine_does() {
    overtaking_case(0x9e37_79b9_7f4a_7c15, 80, on_shard_threads());
}

/// The same batches, each touching several shards run combined on one shard thread
/// (`combine_percent` 0), or only those mostly of carts spanning shards (the default 50).
#[test]
fn combined_batches_answer_as_the_machine_does() {
    for combine_percent in [0, 50] {
        let limits = depot_engine::Limits {
            combine_percent,
            ..depot_engine::Limits::default()
        };
        overtaking_case(0x9e37_79b9_7f4a_7c15, 80, limits.clone());
        overtaking_case(0x2545_f491_4f6c_dd1d, 98, limits);
    }
}

/// Limits under which every batch runs on the shard threads, each its own tasks: the path
/// where reservations overtake pending ones.
fn on_shard_threads() -> depot_engine::Limits {
    depot_engine::Limits {
        combine_percent: NEVER,
        ..depot_engine::Limits::default()
    }
}

/// Nearly every job a reservation: long runs of carts overtaking pending ones, with few other
/// jobs to make the shards finish what they set aside.
#[test]
fn long_runs_of_overtaking_carts_answer_as_the_machine_does() {
    overtaking_case(0x2545_f491_4f6c_dd1d, 98, on_shard_threads());
}

/// A shard at its hold limit while carts are pending: every limit check reads as in sequence
/// order (a cart that would not fit is refused exactly when the machine refuses it).
#[test]
fn carts_pending_at_the_hold_limit_answer_as_the_machine_does() {
    let limits = depot_engine::Limits {
        holds_per_shard_max: 40,
        ..on_shard_threads()
    };
    let limited = overtaking_case(0x853c_49e6_748f_ea9b, 95, limits.clone());
    assert!(limited > 0, "the hold limit was never reached");
    // And with every batch combined.
    let combined = depot_engine::Limits {
        combine_percent: 0,
        ..limits
    };
    assert!(overtaking_case(0x853c_49e6_748f_ea9b, 95, combined) > 0);
}

/// 12 batches of 200 requests, `reserve_pct` % of them reservations of 1 to 3 lines over 40
/// skewed SKUs, run on 2, 3 and 4 shards and on a sequential machine with as many shards.
/// Shards that wait for each other in a cycle would hang: a watchdog fails the test instead.
/// Returns how many answers were refused by a limit.
fn overtaking_case(seed: u64, reserve_pct: u64, limits: depot_engine::Limits) -> usize {
    with_watchdog(move || overtaking_run(seed, reserve_pct, limits))
}

/// Runs `case` on its own thread and fails the test if it has not finished within 120 s
/// (threads waiting for each other in a cycle would otherwise hang the test run).
fn with_watchdog<T: Send + 'static>(case: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, finished) = std::sync::mpsc::channel();
    let case = std::thread::spawn(move || {
        let out = case();
        let _ = done.send(());
        out
    });
    match finished.recv_timeout(std::time::Duration::from_secs(120)) {
        Ok(()) => case.join().expect("the case ran"),
        // A panic in the case drops the sender: report the panic itself.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match case.join() {
            Ok(out) => out,
            Err(p) => std::panic::resume_unwind(p),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("the engine did not answer within 120 s: threads wait for each other")
        }
    }
}

/// Returns how many answers were refused by a limit.
fn overtaking_run(seed: u64, reserve_pct: u64, limits: depot_engine::Limits) -> usize {
    let mut limited = 0;
    let skus: Vec<String> = (0..40).map(|i| format!("s{i:02}")).collect();
    let mut setup = vec![
        req(Command::CreateTenant),
        req(Command::PutLocation {
            location: depot_engine::LocationId::new("wh").unwrap(),
            kind: LocationKind::Warehouse,
            name: "wh".into(),
            region: None,
            wms: None,
        }),
        req(Command::PutChannel {
            channel: depot_engine::ChannelId::new("web").unwrap(),
            kind: ChannelKind::Shopify,
            priority: 0,
        }),
    ];
    for (i, s) in skus.iter().enumerate().filter(|(i, _)| i % 7 != 0) {
        setup.push(req(Command::Receive {
            sku: sku(s),
            location: depot_engine::LocationId::new("wh").unwrap(),
            // Little stock, some SKUs none: many carts are refused.
            quantity: (i as i64 % 7) * 3,
            unit_cost: None,
            reason: "initial".into(),
        }));
    }
    // A seeded xorshift: reproducible without a dependency.
    let mut x: u64 = seed;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut batches: Vec<Vec<Request>> = Vec::new();
    for b in 0..12u64 {
        let mut batch = Vec::new();
        for _ in 0..200 {
            let roll = next(100);
            let request = if roll < reserve_pct {
                // Skewed picks: low indices are hot, so carts often share SKUs.
                let lines = 1 + next(3) as usize;
                let mut picked: Vec<usize> = Vec::new();
                while picked.len() < lines {
                    let i = (next(40) * next(40) / 40) as usize;
                    if !picked.contains(&i) {
                        picked.push(i);
                    }
                }
                let lines: Vec<(&str, i64)> = picked
                    .iter()
                    .map(|&i| (skus[i].as_str(), 1 + next(2) as i64))
                    .collect();
                reserve(&lines)
            } else if roll < reserve_pct + (100 - reserve_pct) * 2 / 5 {
                // Lifecycle commands on earlier ids (some exist, some do not).
                let id = depot_engine::ReservationId(44 + next(200 * (b + 1)));
                if roll % 2 == 0 {
                    req(Command::Release { id })
                } else {
                    req(Command::Commit { id, lines: None })
                }
            } else if roll < reserve_pct + (100 - reserve_pct) * 7 / 10 {
                req(Command::GetStock {
                    sku: sku(&skus[next(40) as usize]),
                })
            } else {
                req(Command::Receive {
                    sku: sku(&skus[next(40) as usize]),
                    location: depot_engine::LocationId::new("wh").unwrap(),
                    quantity: 1 + next(3) as i64,
                    unit_cost: None,
                    reason: "restock".into(),
                })
            };
            batch.push(request);
        }
        batches.push(batch);
    }
    for shards in [2, 3, 4] {
        let engine = Engine::start(EngineConfig {
            shards,
            limits: limits.clone(),
        });
        let mut machine = depot_engine::Machine::new(limits.clone(), shards);
        for r in &setup {
            let (a, _) = engine.execute_one(r.clone(), 1_000);
            let (m, _, _) = machine.execute(r, 1_000);
            assert!(a.outcome.is_ok(), "setup failed: {:?}", a.outcome);
            assert_eq!(a, m);
        }
        for (b, batch) in batches.iter().enumerate() {
            let now = 2_000 + b as u64 * 1_000;
            let answers = engine.execute(batch.clone(), now);
            for (r, got) in batch.iter().zip(&answers) {
                let (resp, events, _) = machine.execute(r, now);
                assert_eq!(got.0, resp, "{shards} shards, batch {b}: {r:?}");
                assert_eq!(got.1, events, "{shards} shards, batch {b}: {r:?}");
                if matches!(
                    resp.outcome,
                    Outcome::Refused(depot_engine::Refusal::LimitExceeded { .. })
                ) {
                    limited += 1;
                }
            }
        }
        assert_eq!(engine.digest(), machine.digest(), "{shards} shards");
        // The routes (not in the digest): those of refused and ended reservations are gone.
        assert_eq!(
            engine.inspect(|front, _| front.routes.len()),
            machine.front.routes.len(),
            "{shards} shards: routes"
        );
    }
    limited
}

/// Repeats of idempotency keys race their first execution. A shard thread that finishes a
/// keyed request does not wait for the front lock to store its response: it leaves it for
/// whoever holds the lock next (a thread sequencing another batch, usually). Four threads
/// send batches of keyed carts, a key standing for one cart, so that most keys are sent
/// several times, by several threads and within one batch, while the first execution may
/// still run. Every sending of a key must get the first execution's answer, replayed for all
/// but one; none may wait forever (a watchdog); the refused carts' routes are gone once the
/// engine is inspected; and the journal replayed on the sequential machine gives the state.
#[test]
fn idempotent_repeats_racing_their_first_execution_get_its_answer() {
    // Carts run combined on one shard thread, or each shard its own part.
    for combine_percent in [0, 101] {
        with_watchdog(move || idempotent_race(combine_percent));
    }
}

fn idempotent_race(combine_percent: u32) {
    /// The SKUs, `i0` to `i8`.
    const SKUS: [&str; 9] = ["i0", "i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8"];
    let limits = depot_engine::Limits {
        combine_percent,
        ..depot_engine::Limits::default()
    };
    // Little stock: about half the carts are refused.
    let (engine, journal) = journaled_warehouse_with(&SKUS, 60, limits);
    let engine = Arc::new(engine);
    const KEYS: u64 = 500;
    // The cart a key stands for: the same body whoever sends it.
    let keyed = |n: u64| {
        let a = (n % 9) as usize;
        let b = ((n / 9 + 1 + n % 9) % 9) as usize;
        let lines: Vec<(&str, i64)> = if a == b {
            vec![(SKUS[a], 1)]
        } else {
            vec![(SKUS[a], 1), (SKUS[b], 1 + (n % 2) as i64)]
        };
        let mut r = reserve(&lines);
        r.idempotency_key = Some(format!("cart-{n}"));
        r
    };
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
                let mut answers = Vec::new();
                for _ in 0..25 {
                    let keys: Vec<u64> = (0..40)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x % KEYS
                        })
                        .collect();
                    let got = engine.execute(keys.iter().map(|&n| keyed(n)).collect(), 3_000);
                    answers.extend(keys.into_iter().zip(got.into_iter().map(|(r, _)| r)));
                }
                answers
            })
        })
        .collect();
    let mut by_key: std::collections::BTreeMap<u64, Vec<depot_engine::Response>> =
        Default::default();
    for t in threads {
        for (n, r) in t.join().expect("a client") {
            by_key.entry(n).or_default().push(r);
        }
    }
    let mut refused = Vec::new();
    let mut repeats = 0;
    for (n, answers) in &by_key {
        let first: Vec<_> = answers.iter().filter(|r| !r.replayed).collect();
        assert_eq!(first.len(), 1, "cart-{n}: one first execution: {answers:?}");
        let first = first[0];
        for r in answers {
            assert_eq!(
                depot_engine::Response {
                    replayed: false,
                    ..r.clone()
                },
                *first,
                "cart-{n}: every sending gets the first answer"
            );
        }
        repeats += answers.len() - 1;
        if let (Outcome::Refused(_), Some(seq)) = (&first.outcome, first.seq) {
            refused.push(seq);
        }
    }
    assert!(repeats > 500, "keys are repeated ({repeats})");
    assert!(!refused.is_empty(), "some carts are refused");
    // A refused cart of two lines on two shards was routed to both; once its hand-off is
    // applied the front answers for it with its one fallback shard.
    engine.inspect(|front, _| {
        for seq in &refused {
            let route = front.route_of(depot_engine::ReservationId(*seq));
            assert_eq!(
                route.count_ones(),
                1,
                "the route of refused cart {seq} is gone"
            );
        }
    });
    let entries = journal.entries.lock().unwrap().clone();
    let mut machine = depot_engine::Machine::new(depot_engine::Limits::default(), 2);
    for e in &entries {
        machine.replay(e);
    }
    assert_eq!(machine.digest(), engine.digest(), "the journal replayed");
}
