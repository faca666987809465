//! W1 and W2 (`shared/workloads/WORKLOADS.md`) on the threaded engine, in process.
//!
//! Per run: a fresh engine (one shard per core), 10,000 SKUs with 1,000,000 units each, then
//! `clients` closed-loop client threads (default: two per shard) that each generate and submit
//! batches of `batch` requests through `Engine::execute` for `secs` seconds. With one client
//! per shard the shards waited for work: each client has one batch in flight, and while it
//! generates and sequences its next one the shards can run out of queued batches (W1 in memory,
//! alternating 5 s runs: 1.46M, 1.56M and 1.75M/s with two clients, 2.18M, 2.08M and 2.13M/s
//! with four; W2 moved within its noise). Operations of
//! batches completing in the first `warmup` seconds are not counted. After the run every SKU
//! is read with `GetStock` and checked: Σ available + Σ reserved = N × 1,000,000,
//! min(available) >= 0, and Σ reserved = the units of the successful reservations.
//!
//! Memory-only: no journal is attached. Throughput counts successful and insufficient
//! reservations, as WORKLOADS.md defines it.
//!
//! Usage: `throughput [--workload w1|w2|all] [--runs 3] [--secs 10] [--warmup 1] [--batch 1024]
//! [--clients N] [--shards N] [--wait-idle 120] [--wal DIR] [--batches N]`
//!
//! `--batches N` runs a fixed amount of work instead of a fixed time: each client submits
//! exactly N batches, all counted. A timed run completes a different number of operations each
//! time, and once the hot SKUs sell out a varying share of them are refusals (cheaper to
//! answer), so its instruction count per operation moves from run to run. With fixed work
//! that stays below the stock (4 clients x 100 batches of 1,024 W1 reservations demand about
//! 61,000 units of the hottest SKU, of 1,000,000), every run does the same operations:
//!
//! ```sh
//! valgrind --tool=callgrind --toggle-collect='*shard_main*' \
//!     target/release/throughput --workload w1 --runs 1 --batches 100 --wait-idle 0
//! ```
//!
//! gives the shard threads' instructions per reservation (the count / 409,600); without
//! `--toggle-collect`, the whole process's (setup included).

// mimalloc, as in depot's own binaries: answers are freed by other threads than allocate them.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use depot_bench::{rng, StockCheck, Tally, Workload, SKUS, STOCK_PER_SKU, W};
use depot_engine::{Engine, EngineConfig, Limits};
use std::sync::Barrier;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Opts {
    workloads: Vec<W>,
    runs: usize,
    secs: f64,
    warmup: f64,
    batch: usize,
    clients: usize,
    shards: usize,
    /// Longest wait for an idle machine before each run, in seconds (0: do not wait).
    wait_idle: f64,
    /// Where to keep the write-ahead log of each run; `None`: memory only.
    wal: Option<std::path::PathBuf>,
    /// Fixed work: each client submits exactly this many batches, all counted (no warm-up, no
    /// time limit), for comparable instruction counts under callgrind.
    batches: Option<u64>,
}

const USAGE: &str = "throughput [--workload w1|w2|all] [--runs 3] [--secs 10] [--warmup 1] [--batch 1024] [--clients N] [--shards N] [--wait-idle 120] [--wal DIR] [--batches N]";

fn opts() -> Opts {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut o = Opts {
        workloads: vec![W::W1, W::W2],
        runs: 3,
        secs: 10.0,
        warmup: 1.0,
        batch: 1024,
        clients: 0,
        shards: cores,
        wait_idle: 120.0,
        wal: None,
        batches: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--workload" => {
                o.workloads = match v.to_ascii_lowercase().as_str() {
                    "w1" => vec![W::W1],
                    "w2" => vec![W::W2],
                    _ => vec![W::W1, W::W2],
                }
            }
            "--runs" => {
                o.runs = v.parse().unwrap_or_else(|_| {
                    depot_bench::cli::usage_error(&format!("--runs: not a number: {v:?}"), USAGE)
                })
            }
            "--secs" => {
                o.secs = v.parse().unwrap_or_else(|_| {
                    depot_bench::cli::usage_error(&format!("--secs: not a number: {v:?}"), USAGE)
                })
            }
            "--warmup" => {
                o.warmup = v.parse().unwrap_or_else(|_| {
                    depot_bench::cli::usage_error(&format!("--warmup: not a number: {v:?}"), USAGE)
                })
            }
            "--batch" => {
                o.batch = v.parse().unwrap_or_else(|_| {
                    depot_bench::cli::usage_error(&format!("--batch: not a number: {v:?}"), USAGE)
                })
            }
            "--clients" => {
                o.clients = v.parse().unwrap_or_else(|_| {
                    depot_bench::cli::usage_error(&format!("--clients: not a number: {v:?}"), USAGE)
                })
            }
            "--shards" => {
                o.shards = v.parse().unwrap_or_else(|_| {
                    depot_bench::cli::usage_error(&format!("--shards: not a number: {v:?}"), USAGE)
                })
            }
            "--wait-idle" => {
                o.wait_idle = v.parse().unwrap_or_else(|_| {
                    depot_bench::cli::usage_error(
                        &format!("--wait-idle: not a number: {v:?}"),
                        USAGE,
                    )
                })
            }
            "--wal" => o.wal = Some(std::path::PathBuf::from(v)),
            "--batches" => {
                o.batches = Some(v.parse().unwrap_or_else(|_| {
                    depot_bench::cli::usage_error(&format!("--batches: not a number: {v:?}"), USAGE)
                }))
            }
            "-h" | "--help" => {
                eprintln!("{USAGE}");
                std::process::exit(0);
            }
            other => depot_bench::cli::usage_error(&format!("unknown argument {other}"), USAGE),
        }
        i += 2;
    }
    if o.clients == 0 {
        o.clients = 2 * o.shards;
    }
    o
}

#[derive(Debug, Clone, Copy)]
struct RunResult {
    ops_per_s: f64,
    counted: Tally,
    all: Tally,
    check: StockCheck,
    /// Mean time of one `execute` call of the counted window, in microseconds.
    batch_us: f64,
    /// Share of the machine's CPU time used by other processes during the run.
    foreign: f64,
    /// Page faults of this process during the run (first touches of fresh memory, mostly).
    faults: u64,
    /// Share of this process's CPU time during the run spent in the kernel.
    kernel: f64,
}

fn run(o: &Opts, w: W, run_idx: u64, workload: &Workload) -> RunResult {
    if o.wait_idle > 0.0 {
        depot_bench::idle::wait_idle(o.wait_idle);
    }
    // With --wal, every write is in a fresh write-ahead log under DIR, acknowledged only once
    // it is durable (fdatasync with group commit); otherwise memory only.
    let (engine, journal) = match &o.wal {
        None => (
            Engine::start(EngineConfig {
                shards: o.shards,
                limits: Limits::default(),
            }),
            None,
        ),
        Some(root) => {
            let dir = root.join(format!("run-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create the log directory");
            let fs = depot_wal::FsDir::open(&dir).expect("open the log directory");
            let (engine, journal, _) = depot_wal::open_engine(
                Box::new(fs),
                depot_wal::WalOptions::default(),
                Limits::default(),
                o.shards,
            )
            .expect("open the log");
            (engine, Some((journal, dir)))
        }
    };
    let t0 = Instant::now();
    workload.setup_engine(&engine, STOCK_PER_SKU);
    eprintln!(
        "  setup: {} SKUs received in {:.2?}",
        workload.skus.len(),
        t0.elapsed()
    );

    let barrier = Barrier::new(o.clients + 1);
    let mut cpu0 = depot_bench::idle::Cpu::now();
    let mut started = Instant::now();
    let results: Vec<(Tally, Tally, Duration, u64, Vec<u64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..o.clients)
            .map(|c| {
                let (engine, barrier, workload) = (&engine, &barrier, workload);
                s.spawn(move || {
                    let mut rng = rng(run_idx, c as u64);
                    let (mut counted, mut all) = (Tally::default(), Tally::default());
                    let (mut busy, mut batches) = (Duration::ZERO, 0u64);
                    // Operations per second of the run, by completion time.
                    let mut per_sec = vec![0u64; o.secs.ceil() as usize + 1];
                    barrier.wait();
                    let start = Instant::now();
                    let (warm, end) = (
                        Duration::from_secs_f64(o.warmup),
                        Duration::from_secs_f64(o.secs),
                    );
                    loop {
                        let reqs = workload.batch(w, o.batch, &mut rng);
                        let units: Vec<i64> = reqs.iter().map(depot_bench::units).collect();
                        let sent = Instant::now();
                        let now_ms =
                            1_700_000_000_000 + sent.duration_since(start).as_millis() as u64;
                        let answers = engine.execute(reqs, now_ms);
                        let done = Instant::now();
                        let at = done.duration_since(start);
                        let mut t = Tally::default();
                        for (u, (resp, _)) in units.iter().zip(&answers) {
                            t.count(*u, &resp.outcome);
                        }
                        all.add(&t);
                        let sec = (at.as_secs() as usize).min(per_sec.len() - 1);
                        per_sec[sec] += t.ops();
                        if o.batches.is_some() || (at > warm && at <= end) {
                            counted.add(&t);
                            busy += done - sent;
                            batches += 1;
                        }
                        if o.batches.map_or(at >= end, |n| batches >= n) {
                            break;
                        }
                    }
                    (counted, all, busy, batches, per_sec)
                })
            })
            .collect();
        barrier.wait();
        cpu0 = depot_bench::idle::Cpu::now();
        started = Instant::now();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let cpu1 = depot_bench::idle::Cpu::now();
    let foreign = cpu1.foreign_since(&cpu0);
    let (mut counted, mut all) = (Tally::default(), Tally::default());
    let (mut busy, mut batches) = (Duration::ZERO, 0);
    let mut per_sec = vec![0u64; o.secs.ceil() as usize + 1];
    for (c, a, b, n, p) in &results {
        for (x, y) in per_sec.iter_mut().zip(p) {
            *x += y;
        }
        counted.add(c);
        all.add(a);
        busy += *b;
        batches += n;
    }
    let window = match o.batches {
        // Fixed work: the whole run, from the start to the last answer.
        Some(_) => started.elapsed().as_secs_f64(),
        None => o.secs - o.warmup,
    };
    let check = workload.check_engine(&engine);
    let t_drop = Instant::now();
    drop(engine);
    if let Some((journal, dir)) = journal {
        // A run writes hundreds of MB of log: none is kept.
        drop(journal);
        let _ = std::fs::remove_dir_all(&dir);
    }
    eprintln!("  ops per second of the run: {per_sec:?}");
    eprintln!("  engine dropped in {:.2?}", t_drop.elapsed());
    RunResult {
        ops_per_s: counted.ops() as f64 / window,
        counted,
        all,
        check,
        batch_us: busy.as_secs_f64() * 1e6 / batches.max(1) as f64,
        foreign,
        faults: cpu1.faults_since(&cpu0),
        kernel: cpu1.kernel_share_since(&cpu0),
    }
}

fn main() {
    let o = opts();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "depot throughput: {cores} cores ({model}), {} shards, {} client threads, batches of {}, {} s runs ({} s warm-up), {}",
        o.shards,
        o.clients,
        o.batch,
        o.secs,
        o.warmup,
        if o.wal.is_some() { "write-ahead log, fdatasync with group commit before every answer" } else { "memory-only" }
    );
    if let Some(root) = &o.wal {
        println!(
            "raw disk ceiling: {:.0} fdatasync/s for 64-byte appends in {}",
            fdatasync_ceiling(root),
            root.display()
        );
    }
    let workload = Workload::new(SKUS);
    let expected_total = SKUS as i64 * STOCK_PER_SKU;
    let mut failed = false;
    for &w in &o.workloads {
        let mut rates = Vec::new();
        for r in 0..o.runs {
            eprintln!("{} run {}/{}", w.name(), r + 1, o.runs);
            let res = run(&o, w, r as u64, &workload);
            let c = res.check;
            let sum_ok = c.available + c.reserved == expected_total;
            let min_ok = c.min_available >= 0;
            let units_ok = c.reserved == res.all.units;
            let clean = res.all.other == 0;
            failed |= !(sum_ok && min_ok && units_ok && clean);
            println!(
                "{} run {}: {:>10.0} ops/s  (counted ok {} insufficient {}; all ok {} insufficient {} other {}; {:.0} us per batch; other processes used {:.0}% of the CPUs; {} page faults, {:.0} per 1,000 operations, and {:.0}% of this process's CPU time in the kernel) \
                 check: Σavail+Σreserved = {} [{}], min available {} [{}], Σreserved = units granted [{}], no other refusals [{}]",
                w.name(),
                r + 1,
                res.ops_per_s,
                res.counted.ok,
                res.counted.insufficient,
                res.all.ok,
                res.all.insufficient,
                res.all.other,
                res.batch_us,
                res.foreign * 100.0,
                res.faults,
                res.faults as f64 * 1000.0 / res.all.ops().max(1) as f64,
                res.kernel * 100.0,
                c.available + c.reserved,
                pass(sum_ok),
                c.min_available,
                pass(min_ok),
                pass(units_ok),
                pass(clean),
            );
            rates.push(res.ops_per_s);
        }
        rates.sort_by(f64::total_cmp);
        let median = if rates.len() % 2 == 1 {
            rates[rates.len() / 2]
        } else {
            (rates[rates.len() / 2 - 1] + rates[rates.len() / 2]) / 2.0
        };
        println!(
            "{}: min {:.0}  median {:.0}  max {:.0} ops/s over {} runs",
            w.name(),
            rates[0],
            median,
            rates[rates.len() - 1],
            rates.len()
        );
    }
    if failed {
        eprintln!("a check FAILED");
        std::process::exit(1);
    }
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "pass"
    } else {
        "FAIL"
    }
}

/// The disk's own limit, measured in the same run: 64-byte appends, each followed by
/// `fdatasync`, for two seconds.
fn fdatasync_ceiling(root: &std::path::Path) -> f64 {
    use std::io::Write;
    std::fs::create_dir_all(root).expect("create the log directory");
    let path = root.join("fdatasync-probe");
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
