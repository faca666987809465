//! The pause a background snapshot imposes on writes, with 1,000,000 stock levels.
//!
//! Setup: 250,000 SKUs x 4 locations (W1's 10,000 hot SKUs among them) built on a `Machine`,
//! with `--holds` reservations held on it (one unit of a W1 SKU each, each with its own
//! idempotency key: the state of a busy day),
//! then started as a threaded engine (2 shards) logging to a fresh write-ahead log in `--dir`
//! (group commit), with the background snapshotter on the same directory.
//!
//! 1. Quiet engine: `--runs` snapshots on request. For each: the pause (writes stopped while
//!    copies the tables under `Engine::inspect`), the wait for a quiet point, then outside the
//!    pause the sort of the copy into the image's order and the write (serialize from the
//!    tables, write, fdatasync, rename), the file's size.
//! 2. Under load: `--clients` closed-loop clients send durable W1 reservations (one outstanding
//!    each; with `--keyed`, each with an idempotency key of its own, as API clients send them)
//!    while a snapshot is taken every `--every` seconds for `--secs` seconds; the pauses, and
//!    the clients' latency (HDR histogram) over the same window, show what a writer sees.
//!
//! Usage: `snapshot_pause [--dir /var/tmp/depot-snapshot] [--skus 250000] [--locations 4]
//! [--holds 0] [--runs 3] [--clients 16] [--secs 12] [--every 3] [--keyed]`

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use depot_bench::idle;

use depot_bench::{rng, sku_name, Workload, SKUS};
use depot_engine::{
    ChannelKind, Command, Engine, Limits, LocationId, LocationKind, Machine, Outcome, Refusal, Sku,
};
use depot_wal::{FsDir, Snapshotter, SnapshotterConfig, WalJournal, WalOptions, WalWriter};
use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Opts {
    dir: PathBuf,
    skus: usize,
    locations: usize,
    holds: usize,
    runs: usize,
    clients: usize,
    secs: f64,
    every: f64,
    keyed: bool,
}

const USAGE: &str = "snapshot_pause [--dir DIR] [--skus 250000] [--locations 4] [--holds 0] [--runs 3] [--clients 16] [--secs 12] [--every 3] [--keyed]";

fn opts() -> Opts {
    let mut o = Opts {
        dir: PathBuf::from("/var/tmp/depot-snapshot"),
        skus: 250_000,
        locations: 4,
        holds: 0,
        runs: 3,
        clients: 16,
        secs: 12.0,
        every: 3.0,
        keyed: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--keyed" {
            o.keyed = true;
            i += 1;
            continue;
        }
        let v = args.get(i + 1).cloned().unwrap_or_default();
        let num = |v: &str| -> f64 {
            v.replace('_', "").parse().unwrap_or_else(|_| {
                depot_bench::cli::usage_error(&format!("{}: not a number: {v:?}", args[i]), USAGE)
            })
        };
        match args[i].as_str() {
            "--dir" => o.dir = PathBuf::from(&v),
            "--skus" => o.skus = num(&v) as usize,
            "--locations" => o.locations = num(&v) as usize,
            "--holds" => o.holds = num(&v) as usize,
            "--runs" => o.runs = num(&v) as usize,
            "--clients" => o.clients = num(&v) as usize,
            "--secs" => o.secs = num(&v),
            "--every" => o.every = num(&v),
            other => depot_bench::cli::usage_error(&format!("unknown argument {other}"), USAGE),
        }
        i += 2;
    }
    o
}

const SHARDS: usize = 2;

fn wall_ms() -> u64 {
    depot_wal::wall_clock_ms()
}

/// `skus` x `locations` levels with W1's names; W1's location (`wh-1`) is location 0; `holds`
/// keyed reservations of one unit each over W1's SKUs.
fn build_state(w: &Workload, skus: usize, locations: usize, holds: usize) -> Machine {
    let mut m = Machine::new(Limits::default(), SHARDS);
    let now = wall_ms();
    let mut run = |command: Command| {
        let (resp, _, _) = m.execute(&w.request(command), now);
        assert!(resp.outcome.is_ok(), "setup refused: {:?}", resp.outcome);
    };
    run(Command::CreateTenant);
    let locs: Vec<LocationId> = std::iter::once(w.location.clone())
        .chain((2..=locations).map(|l| LocationId::new(&format!("wh-{l}")).expect("valid id")))
        .collect();
    for l in &locs {
        run(Command::PutLocation {
            location: l.clone(),
            kind: LocationKind::Warehouse,
            name: l.to_string(),
            region: None,
            wms: None,
        });
    }
    run(Command::PutChannel {
        channel: w.channel.clone(),
        kind: ChannelKind::Shopify,
        priority: 0,
    });
    for r in 1..=skus {
        let sku = Sku::new(&sku_name(r)).expect("valid id");
        for l in &locs {
            run(Command::Receive {
                sku: sku.clone(),
                location: l.clone(),
                quantity: 1_000_000,
                unit_cost: None,
                reason: "bench setup".into(),
            });
        }
    }
    for h in 0..holds {
        let mut request = w.request(Command::Reserve {
            channel: w.channel.clone(),
            lines: vec![depot_engine::LineRequest {
                sku: Sku::new(&sku_name(h % SKUS + 1)).expect("valid id"),
                quantity: 1,
            }],
            ttl_ms: Some(86_400_000),
            order_ref: None,
            ship_to_region: None,
            fill: depot_engine::FillPolicy::AllOrNothing,
        });
        request.idempotency_key = Some(format!("setup-hold-{h:09}"));
        let (resp, _, _) = m.execute(&request, now);
        assert!(resp.outcome.is_ok(), "setup refused: {:?}", resp.outcome);
    }
    m
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let o = opts();
    let w = Workload::new(SKUS);
    let _ = std::fs::remove_dir_all(&o.dir);
    let fs = FsDir::open(&o.dir).expect("create the data directory");
    let t = Instant::now();
    let machine = build_state(&w, o.skus, o.locations, o.holds);
    let levels = o.skus * o.locations;
    eprintln!(
        "setup: {levels} stock levels, {} keyed holds in {:.1?}",
        o.holds,
        t.elapsed()
    );
    // The log starts after the machine's state (its first entry may carry any seq).
    let writer = WalWriter::open(Box::new(fs.clone()), WalOptions::default()).expect("open log");
    let journal = Arc::new(WalJournal::start_at(writer, machine.front.seq));
    let engine = Arc::new(Engine::from_machine(
        machine,
        Limits::default(),
        Some(journal.clone()),
    ));
    let snapshotter = Snapshotter::start(
        engine.clone(),
        journal.clone(),
        Box::new(fs.clone()),
        SnapshotterConfig {
            every_writes: None,
            every: None,
            ..SnapshotterConfig::default()
        },
    );

    println!(
        "{levels} stock levels, {} keyed holds, {SHARDS} shards; quiet engine:",
        o.holds
    );
    let mut pauses = Vec::new();
    for run in 1..=o.runs {
        idle::wait_idle(120.0);
        let asked = Instant::now();
        let s = snapshotter.snapshot_now().expect("snapshot");
        let total = asked.elapsed();
        println!(
            "run {run}: pause {:.1} ms (wait for a quiet point {:.2} ms), then outside the pause \
             {:.0} ms to sort the copy and {:.0} ms to serialize and write {} MB; {:.0} ms \
             from the request to the snapshot on disk",
            ms(s.pause),
            ms(s.wait),
            ms(s.build),
            ms(s.write),
            s.bytes / 1_000_000,
            ms(total)
        );
        pauses.push(s.pause);
    }
    pauses.sort();
    println!(
        "median pause (quiet): {:.1} ms",
        ms(pauses[pauses.len() / 2])
    );

    // Under load: clients with one durable reservation outstanding each.
    idle::wait_idle(120.0);
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..o.clients)
        .map(|c| {
            let (engine, stop, w) = (engine.clone(), stop.clone(), w.clone());
            let keyed = o.keyed;
            std::thread::spawn(move || {
                let mut rng = rng(99, c as u64);
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut request = w.w1(&mut rng);
                    if keyed {
                        n += 1;
                        request.idempotency_key = Some(format!("load-{c}-{n}"));
                    }
                    let t = Instant::now();
                    let (resp, _) = engine.execute_one(request, wall_ms());
                    h.saturating_record((t.elapsed().as_micros() as u64).max(1));
                    match resp.outcome {
                        Outcome::Ok(_) | Outcome::Refused(Refusal::InsufficientStock { .. }) => {}
                        other => panic!("unexpected outcome {other:?}"),
                    }
                }
                h
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let start = Instant::now();
    let mut loaded = Vec::new();
    while start.elapsed().as_secs_f64() < o.secs {
        std::thread::sleep(Duration::from_secs_f64(o.every));
        let s = snapshotter.snapshot_now().expect("snapshot");
        println!(
            "under load: pause {:.1} ms (wait for a quiet point {:.2} ms), write {:.0} ms, seq {}",
            ms(s.pause),
            ms(s.wait),
            ms(s.write),
            s.seq
        );
        loaded.push(s.pause);
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    for h in handles {
        all.add(h.join().expect("client")).expect("same bounds");
    }
    loaded.sort();
    let stats = snapshotter.stats();
    println!(
        "under load, {} clients{}: median pause {:.1} ms, max pause {:.1} ms; client latency over \
         the window: p50 {} us, p99 {} us, p99.9 {} us, max {} us ({} ops)",
        o.clients,
        if o.keyed { ", keyed" } else { "" },
        ms(loaded[loaded.len() / 2]),
        ms(stats.max_pause),
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.99),
        all.value_at_quantile(0.999),
        all.max(),
        all.len()
    );
    drop(snapshotter);
    drop(engine);
    drop(journal);
    let _ = std::fs::remove_dir_all(&o.dir);
}
