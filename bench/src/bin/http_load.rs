//! HTTP load generator: depot's API under W1/W2 over HTTP/1.1 keep-alive on loopback.
//!
//! For every measurement a fresh `depot serve` (the release binary, `--sync always`, a free
//! loopback port, a fresh data directory under `--data-dir`) gets the W1/W2 tenant (10,000
//! SKUs of 1,000,000 units, received through `/v1/batch`), then closed-loop clients drive it:
//!
//! - single `POST /v1/reservations` at each of `--conns` connections, one request in flight
//!   per connection: operations/s and p50/p99/p99.9 latency (HDR histogram);
//! - `POST /v1/batch` of `--batch-size` reservations on each of `--batch-conns` connections
//!   (a list, such as `2,4`; `0`: no batch run):
//!   reservations/s, and the latency of a whole batch request.
//!
//! After each run every SKU is read back and checked (available = stock - granted, nothing
//! failed). The client runs on `--client-threads` tokio workers on the same cores as the
//! server: it takes part of the machine, and the report says how much (server, client, others).
//!
//! With `--floor`, the same client drives the floor server of `depot_bench::floor` instead of
//! depot (this binary, started as `http_load serve ...`): the same HTTP stack, JSON bodies and
//! group-committed `fdatasync`, without depot's engine, keys or idempotency. Its figures are the
//! most this machine gives for these exchanges.
//!
//! With `--timeline`, each run also prints its throughput in every 100 ms from the start
//! (warm-up included), in thousands per second: where a run dipped (a background snapshot, a
//! table's growth) and for how long.
//!
//! Usage: `http_load [--workload w1|w2] [--conns 16,64] [--batch-conns 2,4,8,16,32,64] [--batch-size 100]
//! [--secs 10] [--warmup 1] [--runs 2] [--client-threads 1] [--shards N] [--sync always]
//! [--data-dir /var/tmp/depot-bench] [--depot-bin target/release/depot] [--pretouch-mib 4096]
//! [--wait-idle 120] [--floor] [--timeline]`
//!
//! `--pretouch-mib` is passed to depot as `--pretouch-memory-mib` (0: not passed).

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use depot_bench::cli;
use depot_bench::http::{self, HttpShape, ServerOpts, Timing};
use depot_bench::load::Wk;
use depot_bench::report::{median, thousands, Run};
use std::path::PathBuf;

const USAGE: &str = "http_load [--workload w1|w2] [--conns 16,64] [--batch-conns 2,4,8,16,32,64] \
[--batch-size 100] [--secs 10] [--warmup 1] [--runs 2] [--client-threads 1] [--shards N] \
[--sync always] [--data-dir /var/tmp/depot-bench] [--depot-bin PATH] [--pretouch-mib 4096] \
[--wait-idle 120] [--floor] [--timeline]";

/// Targets of issue 4.
const SINGLE_TARGET: f64 = 60_000.0;
const SINGLE_P99_US: u64 = 5_000;
const BATCH_TARGET: f64 = 600_000.0;

#[derive(Debug)]
struct Opts {
    w: Wk,
    conns: Vec<usize>,
    /// Connection counts of the batch shapes (0: none).
    batch_conns: Vec<usize>,
    batch_size: usize,
    timing: Timing,
    runs: usize,
    client_threads: usize,
    server: ServerOpts,
    /// Drive the floor server instead of depot.
    floor: bool,
    /// Print each run's throughput per 100 ms.
    timeline: bool,
}

fn opts() -> Result<Opts, String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // The flags without a value.
    let floor = args.iter().any(|a| a == "--floor");
    let timeline = args.iter().any(|a| a == "--timeline");
    args.retain(|a| a != "--floor" && a != "--timeline");
    let mut o = Opts {
        w: Wk::W1,
        conns: vec![16, 64],
        batch_conns: vec![2, 4, 8, 16, 32, 64],
        batch_size: 100,
        timing: Timing {
            secs: 10.0,
            warmup: 1.0,
            wait_idle: 120.0,
        },
        runs: 2,
        client_threads: 1,
        server: ServerOpts {
            bin: ServerOpts::default_bin(),
            data_root: http::default_data_root(),
            sync: "always".into(),
            shards: None,
            pretouch_mib: http::PRETOUCH_MIB_DEFAULT,
        },
        floor: false,
        timeline,
    };
    for (f, v) in cli::pairs(&args)? {
        match f.as_str() {
            "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--workload" => {
                o.w = Wk::parse(&v)?;
                if o.w == Wk::W3 {
                    return Err("--workload: w1 or w2 (W3 is in `compare`)".into());
                }
            }
            "--conns" => {
                o.conns = cli::list(&f, &v)?;
                if o.conns.contains(&0) {
                    return Err("--conns: counts must be at least 1".into());
                }
            }
            "--batch-conns" => o.batch_conns = cli::list(&f, &v)?,
            "--batch-size" => o.batch_size = cli::count(&f, &v)?,
            "--secs" => o.timing.secs = cli::seconds(&f, &v)?,
            "--warmup" => o.timing.warmup = cli::seconds(&f, &v)?,
            "--wait-idle" => o.timing.wait_idle = cli::seconds(&f, &v)?,
            "--runs" => o.runs = cli::count(&f, &v)?,
            "--client-threads" => o.client_threads = cli::count(&f, &v)?,
            "--shards" => o.server.shards = Some(cli::count(&f, &v)?),
            "--sync" => o.server.sync = v,
            "--data-dir" => o.server.data_root = PathBuf::from(v),
            "--depot-bin" => o.server.bin = PathBuf::from(v),
            "--pretouch-mib" => o.server.pretouch_mib = cli::value(&f, &v)?,

            other => return Err(format!("unknown flag {other}")),
        }
    }
    if floor {
        o.floor = true;
        o.server.bin = std::env::current_exe().map_err(|e| e.to_string())?;
    }
    if o.timing.warmup >= o.timing.secs {
        return Err("--warmup must be shorter than --secs".into());
    }
    if o.batch_size > 100 {
        return Err("--batch-size: the API takes at most 100 operations per batch".into());
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "serve") {
        depot_bench::floor::main(&args);
    }
    let o = opts().unwrap_or_else(|e| depot_bench::cli::usage_error(&format!("error: {e}"), USAGE));
    let rt = depot_bench::load::client_runtime(o.client_threads);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{} over HTTP/1.1 (keep-alive, loopback): {}, --sync {}, {} s runs ({} s warm-up), \
         {} runs per figure; {cores} cores shared by server and client ({} client threads)",
        if o.floor {
            "the floor server (no engine)"
        } else {
            "depot"
        },
        o.w.name(),
        o.server.sync,
        o.timing.secs,
        o.timing.warmup,
        o.runs,
        o.client_threads
    );
    let mut shapes: Vec<HttpShape> = o
        .conns
        .iter()
        .map(|&conns| HttpShape {
            conns,
            per_conn: 1,
            batch: false,
        })
        .collect();
    for &conns in o.batch_conns.iter().filter(|&&c| c > 0) {
        shapes.push(HttpShape {
            conns,
            per_conn: o.batch_size,
            batch: true,
        });
    }
    let mut failed = false;
    for shape in shapes {
        let mut runs: Vec<Run> = Vec::new();
        for r in 0..o.runs {
            match http::measure(&rt, &o.server, o.w, shape, o.timing, r as u64) {
                Ok(run) => {
                    let f = &run.fig;
                    println!(
                        "{} run {}: {} {}/s, p50 {} us, p99 {} us, p99.9 {} us, max {} us; \
                         ok {} insufficient {} failed {}; check {}{}; CPU: server {:.0}%, \
                         client {:.0}%, others {:.0}%, host steal {:.0}%",
                        shape.label(),
                        r + 1,
                        thousands(f.ops_per_s),
                        if shape.batch { "reservations" } else { "ops" },
                        f.p50_us,
                        f.p99_us,
                        f.p999_us,
                        f.max_us,
                        f.ok,
                        f.insufficient,
                        f.other,
                        if run.check.pass { "pass" } else { "FAIL: " },
                        run.check.note,
                        run.cpu.server * 100.0,
                        run.cpu.client * 100.0,
                        run.cpu.others * 100.0,
                        run.cpu.steal * 100.0,
                    );
                    if o.timeline {
                        println!("  per 100 ms (k/s): {}", timeline(&f.timeline));
                    }
                    failed |= !run.check.pass;
                    runs.push(run);
                }
                Err(e) => {
                    eprintln!("{} run {}: error: {e}", shape.label(), r + 1);
                    failed = true;
                }
            }
        }
        if runs.is_empty() {
            continue;
        }
        let m = |f: &dyn Fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        let ops = m(&|r| r.fig.ops_per_s);
        let p99 = m(&|r| r.fig.p99_us as f64);
        let verdict = if shape.batch {
            format!(
                "target >= {} reservations/s: {}",
                thousands(BATCH_TARGET),
                if ops >= BATCH_TARGET {
                    "met"
                } else {
                    "NOT met"
                }
            )
        } else {
            let ok = ops >= SINGLE_TARGET && p99 <= SINGLE_P99_US as f64;
            format!(
                "target >= {}/s with p99 <= {} us: {}",
                thousands(SINGLE_TARGET),
                thousands(SINGLE_P99_US as f64),
                if ok { "met" } else { "NOT met" }
            )
        };
        println!(
            "{} median of {}: {} {}/s, p50 {} us, p99 {} us, p99.9 {} us; server CPU {:.0}%, \
             others {:.0}%, host steal {:.0}% ({verdict})",
            shape.label(),
            runs.len(),
            thousands(ops),
            if shape.batch { "reservations" } else { "ops" },
            thousands(m(&|r| r.fig.p50_us as f64)),
            thousands(p99),
            thousands(m(&|r| r.fig.p999_us as f64)),
            m(&|r| r.cpu.server) * 100.0,
            m(&|r| r.cpu.others) * 100.0,
            m(&|r| r.cpu.steal) * 100.0,
        );
    }
    if failed {
        eprintln!("a run failed or a check FAILED");
        std::process::exit(1);
    }
}

/// A run's timeline as thousands of operations per second in each slice.
fn timeline(slices: &[u64]) -> String {
    let per_s = 1.0 / depot_bench::load::TICK.as_secs_f64();
    slices
        .iter()
        .map(|&n| format!("{:.0}", n as f64 * per_s / 1000.0))
        .collect::<Vec<_>>()
        .join(" ")
}
