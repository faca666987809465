//! Acknowledgement latency of durable W1 reservations under load.
//!
//! Per run: a fresh write-ahead log in `--dir` (group commit, every answer waits for the
//! `fdatasync` covering its write: the server's `--sync always`), an engine with 2 shards,
//! 10,000 SKUs with 1,000,000 units each, then `clients` client threads in a closed loop, each
//! with one reservation outstanding (`Engine::execute` of one request), for `secs` seconds. Every
//! operation's latency (submit to durable answer) after the warm-up goes into an HDR histogram.
//! Before the load, the disk's own ceiling is measured in the same directory: 64-byte appends,
//! each followed by `fdatasync`, for two seconds.
//!
//! `--clients` takes a list (`8,16,32,64`): the runs are repeated for each count, so the
//! latency can be read against the load. With `--batch N` each client sends N reservations per
//! request (`Engine::execute`, as the HTTP server's writer does with what queued up): every
//! reservation's latency is then its request's, and the load is clients x N.
//!
//! Usage: `latency [--dir /var/tmp/depot-latency] [--clients 64] [--batch 1] [--secs 10]
//! [--warmup 1] [--runs 3] [--shards 2]`

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use depot_bench::idle;

use depot_bench::{rng, Workload, SKUS, STOCK_PER_SKU};
use depot_engine::{Limits, Outcome, Refusal};
use depot_wal::{FsDir, WalOptions};
use hdrhistogram::Histogram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Opts {
    dir: PathBuf,
    clients: Vec<usize>,
    secs: f64,
    warmup: f64,
    runs: usize,
    shards: usize,
    /// Reservations per request of a client (`Engine::execute`).
    batch: usize,
}

const USAGE: &str = "latency [--dir DIR] [--clients 8,16,32,64] [--batch 1] [--secs 10] \
[--warmup 1] [--runs 3] [--shards 2]";

fn opts() -> Opts {
    let mut o = Opts {
        dir: PathBuf::from("/var/tmp/depot-latency"),
        clients: vec![64],
        secs: 10.0,
        warmup: 1.0,
        runs: 3,
        shards: 2,
        batch: 1,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        let num = |v: &str| -> f64 {
            v.replace('_', "").parse().unwrap_or_else(|_| {
                depot_bench::cli::usage_error(&format!("{}: not a number: {v:?}", args[i]), USAGE)
            })
        };
        match args[i].as_str() {
            "--dir" => o.dir = PathBuf::from(&v),
            "--clients" => o.clients = v.split(',').map(|c| num(c) as usize).collect(),
            "--secs" => o.secs = num(&v),
            "--warmup" => o.warmup = num(&v),
            "--runs" => o.runs = num(&v) as usize,
            "--shards" => o.shards = num(&v) as usize,
            "--batch" => o.batch = (num(&v) as usize).max(1),
            other => depot_bench::cli::usage_error(&format!("unknown argument {other}"), USAGE),
        }
        i += 2;
    }
    o
}

/// The disk's own limit: 64-byte appends, each followed by `fdatasync`, for two seconds.
fn fdatasync_ceiling(dir: &Path) -> f64 {
    use std::io::Write;
    let path = dir.join("fdatasync-probe");
    let mut f = std::fs::File::create(&path).expect("create the probe file");
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < Duration::from_secs(2) {
        f.write_all(&[0x5a; 64]).expect("write the probe");
        f.sync_data().expect("fdatasync the probe");
        n += 1;
    }
    let _ = std::fs::remove_file(&path);
    n as f64 / t0.elapsed().as_secs_f64()
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

fn wall_ms() -> u64 {
    depot_wal::wall_clock_ms()
}

#[derive(Debug)]
struct RunResult {
    ceiling: f64,
    ops_per_s: f64,
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    syncs_per_s: f64,
}

fn run(o: &Opts, clients: usize, idx: u64, w: &Workload) -> RunResult {
    idle::wait_idle(120.0);
    let dir = o.dir.join(format!("run-{}-{idx}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let fs = FsDir::open(&dir).expect("create the log directory");
    let ceiling = fdatasync_ceiling(&dir);
    let (engine, journal, _) = depot_wal::open_engine(
        Box::new(fs.clone()),
        WalOptions::default(),
        Limits::default(),
        o.shards,
    )
    .expect("open the log");
    let engine = Arc::new(engine);
    w.setup_engine(&engine, STOCK_PER_SKU);

    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(clients + 1));
    let warmup = Duration::from_secs_f64(o.warmup);
    let batch = o.batch;
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (engine, stop, barrier, w) =
                (engine.clone(), stop.clone(), barrier.clone(), w.clone());
            std::thread::spawn(move || {
                let mut rng = rng(idx, c as u64);
                let mut h = histogram();
                let mut ops = 0u64;
                barrier.wait();
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let reqs: Vec<_> = (0..batch).map(|_| w.w1(&mut rng)).collect();
                    let t = Instant::now();
                    let answers = engine.execute(reqs, wall_ms());
                    // Every reservation of a batch is answered when the batch is durable.
                    let us = t.elapsed().as_micros() as u64;
                    for (resp, _) in &answers {
                        match &resp.outcome {
                            Outcome::Ok(_)
                            | Outcome::Refused(Refusal::InsufficientStock { .. }) => {}
                            other => panic!("unexpected outcome {other:?}"),
                        }
                    }
                    if start.elapsed() >= warmup {
                        h.saturating_record_n(us.max(1), answers.len() as u64);
                        ops += answers.len() as u64;
                    }
                }
                (h, ops)
            })
        })
        .collect();
    barrier.wait();
    std::thread::sleep(warmup);
    let syncs_before = journal.stats().syncs;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(o.secs));
    let measured = t.elapsed().as_secs_f64();
    let syncs = journal.stats().syncs - syncs_before;
    stop.store(true, Ordering::Relaxed);
    let mut all = histogram();
    let mut ops = 0;
    for h in handles {
        let (hist, n) = h.join().expect("client thread");
        all.add(&hist).expect("same bounds");
        ops += n;
    }
    drop(engine);
    drop(journal);
    let _ = std::fs::remove_dir_all(&dir);
    RunResult {
        ceiling,
        ops_per_s: ops as f64 / measured,
        p50: all.value_at_quantile(0.50),
        p99: all.value_at_quantile(0.99),
        p999: all.value_at_quantile(0.999),
        max: all.max(),
        syncs_per_s: syncs as f64 / measured,
    }
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    v[v.len() / 2]
}

fn main() {
    let o = opts();
    let w = Workload::new(SKUS);
    println!(
        "durable W1, clients x {} outstanding (one request each), {} shards, group commit, \
         fdatasync before every answer; {} x {} s after {} s warm-up; log in {}",
        o.batch,
        o.shards,
        o.runs,
        o.secs,
        o.warmup,
        o.dir.display()
    );
    for &clients in &o.clients {
        let mut results = Vec::new();
        for idx in 0..o.runs as u64 {
            let r = run(&o, clients, idx, &w);
            println!(
                "{clients} clients, run {}: {:.0} ops/s, latency p50 {} us, p99 {} us, p99.9 {} us, \
                 max {} us; {:.0} fdatasync/s by the log ({:.1} writes per sync); disk ceiling \
                 {:.0} fdatasync/s",
                idx + 1,
                r.ops_per_s,
                r.p50,
                r.p99,
                r.p999,
                r.max,
                r.syncs_per_s,
                r.ops_per_s / r.syncs_per_s.max(1.0),
                r.ceiling
            );
            results.push(r);
        }
        let p99 = median(results.iter().map(|r| r.p99).collect());
        println!(
            "{clients} clients, median: {:.0} ops/s, p50 {} us, p99 {} us (target <= 2,000 us: \
             {}), p99.9 {} us; disk ceiling {:.0} fdatasync/s",
            median(results.iter().map(|r| r.ops_per_s).collect()),
            median(results.iter().map(|r| r.p50).collect()),
            p99,
            if p99 <= 2_000 { "met" } else { "MISSED" },
            median(results.iter().map(|r| r.p999).collect()),
            median(results.iter().map(|r| r.ceiling).collect()),
        );
    }
}
