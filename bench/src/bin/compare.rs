//! Side by side: W1, W2 and W3 (`shared/workloads/WORKLOADS.md`) against depot and its peers,
//! on this machine in one run, printed as one table and written as Markdown (`--out`).
//!
//! Rows (every one acknowledges a reservation only once it is on stable storage, except Redis
//! `everysec`):
//! - depot in process, write-ahead log with group commit and `fdatasync` before every answer
//!   (`--sync always`'s setting), on `--data-dir`: `Engine::execute` batches from two threads
//!   per shard (the best of `--inproc-batch` logical clients each, 1,024 and 2,048 by default; W3: 32),
//!   and `Engine::execute_one` from 64 threads (W3: also 16);
//! - depot over HTTP (`depot serve --sync always`): single requests at 64x1 (W3: also 16x1), and
//!   `/v1/batch` of 100 reservations on the best of `--batch-conns` connections (2, 4, 8, 16, 32
//!   and 64 by default, 64 as the single requests; W3: 2 connections of 32 each), each count's
//!   figures listed under the goals;
//! - Redis 7 with the Lua script (`bench/peers/reserve.lua`), `appendfsync always` and
//!   `everysec`, at 16 connections x 16 pipelined (W3: 256 clients) and 64x1 (W3: also 16x1);
//! - PostgreSQL, one transaction per reservation, `synchronous_commit` on, the best of
//!   `--pg-clients` (W3: 16 and 64 clients, each reported);
//! - the floor server of `depot_bench::floor` (W1 and W2): depot's HTTP rows again, against a
//!   server on the same HTTP stack with a group-committed log and no engine (this binary,
//!   started as `compare serve ...`). Its rows say how much of the HTTP figures this machine
//!   gives at all; the goals list depot HTTP ÷ floor under issue 5's.
//!
//! So W3, the sell-out whose check is zero oversell, runs for every system at C = 16 and
//! C = 64 (WORKLOADS.md), plus the deeper shapes above.
//!
//! Start the peers first with `bench/peers/start.sh` (and stop them with `stop.sh`). Each
//! figure is the median of `--runs` runs; the last column is depot in process (batches)
//! divided by the row, and the goals of issue 5 are listed under the table.
//!
//! Usage: `compare [--seconds 5] [--warmup 1] [--runs 1] [--workloads w1,w2,w3]
//! [--redis-always redis://127.0.0.1:6390/] [--redis-everysec redis://127.0.0.1:6391/]
//! [--pg 'host=127.0.0.1 port=5439 user=postgres dbname=postgres'] [--pg-clients 8,16,32]
//! [--inproc-batch 1024,2048] [--batch-conns 2,4,8,16,32,64] [--only depot,redis,pg,floor] [--out bench/results/compare.md] [--data-dir /var/tmp/depot-bench]
//! [--depot-bin PATH] [--pretouch-mib 4096] [--client-threads 1] [--shards 2] [--wait-idle 60]
//! [--max-steal 10]`
//!
//! `--pretouch-mib` is passed to depot's server as `--pretouch-memory-mib` (0: not passed).
//!
//! On a virtual machine the host may run other machines on these cores during a run ("steal"
//! in `/proc/stat`). A run with more than `--max-steal` percent of the machine stolen (10 by
//! default; 100: never) is run again, at most twice, with the same seed; the last try is kept
//! whatever its steal, and the report says how many runs were repeated.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use depot_bench::cli;
use depot_bench::http::{self, HttpShape, ServerOpts, Timing};
use depot_bench::load::Wk;
use depot_bench::report::{self, thousands, Cell, Goal, Run};
use depot_bench::{inproc, pg_peer, redis_peer};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// Runs repeated for host steal so far (see the module docs).
static REPEATED: AtomicU32 = AtomicU32::new(0);

/// What each count of a "best of" row gave ([`report::tried_line`]), in the order measured.
static TRIED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

const USAGE: &str = "compare [--seconds 5] [--warmup 1] [--runs 1] [--workloads w1,w2,w3] \
[--redis-always URL] [--redis-everysec URL] [--pg CONNINFO] [--pg-clients 8,16,32] \
[--inproc-batch 1024,2048] [--batch-conns 2,4,8,16,32,64] [--only depot,redis,pg,floor] [--out bench/results/compare.md] \
[--data-dir /var/tmp/depot-bench] [--depot-bin PATH] [--pretouch-mib 4096] [--client-threads 1] [--shards 2] \
[--wait-idle 60] [--max-steal 10]";

/// The reference row of the ratio column.
const REFERENCE: &str = "depot-inproc-batch";

#[derive(Debug)]
struct Opts {
    workloads: Vec<Wk>,
    timing: Timing,
    runs: usize,
    redis_always: String,
    redis_everysec: String,
    pg: String,
    pg_clients: Vec<usize>,
    inproc_batch: Vec<usize>,
    /// Connections of depot's HTTP batch rows (W1, W2): the best is reported.
    batch_conns: Vec<usize>,
    only: Vec<String>,
    out: PathBuf,
    client_threads: usize,
    shards: usize,
    server: ServerOpts,
    /// Percent of the machine the host may steal during a run before it is run again.
    max_steal: f64,
}

fn opts() -> Result<Opts, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut o = Opts {
        workloads: vec![Wk::W1, Wk::W2, Wk::W3],
        timing: Timing {
            secs: 5.0,
            warmup: 1.0,
            wait_idle: 60.0,
        },
        runs: 1,
        redis_always: "redis://127.0.0.1:6390/".into(),
        redis_everysec: "redis://127.0.0.1:6391/".into(),
        pg: "host=127.0.0.1 port=5439 user=postgres dbname=postgres".into(),
        pg_clients: vec![8, 16, 32],
        inproc_batch: vec![1_024, 2_048],
        batch_conns: vec![2, 4, 8, 16, 32, 64],
        only: vec!["depot".into(), "redis".into(), "pg".into(), "floor".into()],
        out: PathBuf::from("bench/results/compare.md"),
        client_threads: 1,
        shards: 2,
        server: ServerOpts {
            bin: ServerOpts::default_bin(),
            data_root: http::default_data_root(),
            sync: "always".into(),
            shards: None,
            pretouch_mib: http::PRETOUCH_MIB_DEFAULT,
        },
        max_steal: 10.0,
    };
    for (f, v) in cli::pairs(&args)? {
        match f.as_str() {
            "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--seconds" | "--secs" => o.timing.secs = cli::seconds(&f, &v)?,
            "--warmup" => o.timing.warmup = cli::seconds(&f, &v)?,
            "--wait-idle" => o.timing.wait_idle = cli::seconds(&f, &v)?,
            "--runs" => o.runs = cli::count(&f, &v)?,
            "--workloads" => o.workloads = v.split(',').map(Wk::parse).collect::<Result<_, _>>()?,
            "--redis-always" => o.redis_always = v,
            "--redis-everysec" => o.redis_everysec = v,
            "--pg" => o.pg = v,
            "--pg-clients" => {
                o.pg_clients = cli::list(&f, &v)?;
                if o.pg_clients.contains(&0) {
                    return Err("--pg-clients: counts must be at least 1".into());
                }
            }
            "--inproc-batch" => {
                o.inproc_batch = cli::list(&f, &v)?;
                if o.inproc_batch.contains(&0) {
                    return Err("--inproc-batch: sizes must be at least 1".into());
                }
            }
            "--batch-conns" => {
                o.batch_conns = cli::list(&f, &v)?;
                if o.batch_conns.contains(&0) {
                    return Err("--batch-conns: counts must be at least 1".into());
                }
            }
            "--only" => {
                o.only = v.split(',').map(|s| s.trim().to_string()).collect();
                if let Some(bad) = o
                    .only
                    .iter()
                    .find(|s| !["depot", "redis", "pg", "floor"].contains(&s.as_str()))
                {
                    return Err(format!(
                        "--only: unknown system {bad:?} (depot, redis, pg, floor)"
                    ));
                }
            }
            "--out" => o.out = PathBuf::from(v),
            "--data-dir" => o.server.data_root = PathBuf::from(v),
            "--depot-bin" => o.server.bin = PathBuf::from(v),
            "--pretouch-mib" => o.server.pretouch_mib = cli::value(&f, &v)?,
            "--client-threads" => o.client_threads = cli::count(&f, &v)?,
            "--shards" => o.shards = cli::count(&f, &v)?,
            "--max-steal" => {
                o.max_steal = cli::value(&f, &v)?;
                if !(0.0..=100.0).contains(&o.max_steal) {
                    return Err(format!(
                        "--max-steal {v}: expected a percentage from 0 to 100"
                    ));
                }
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if o.timing.warmup >= o.timing.secs {
        return Err("--warmup must be shorter than --seconds".into());
    }
    o.server.shards = Some(o.shards);
    Ok(o)
}

/// Runs one cell `runs` times, printing each run; errors are printed and the run skipped.
fn cell(
    o: &Opts,
    key: &str,
    w: Wk,
    system: &str,
    durability: &str,
    shape: &str,
    mut f: impl FnMut(u64) -> Result<Run, String>,
) -> Cell {
    let mut runs = Vec::new();
    for r in 0..o.runs as u64 {
        for repeated in 0.. {
            match f(r) {
                Ok(run) => {
                    let x = &run.fig;
                    eprintln!(
                        "  {} {key} [{shape}] run {}: {} ops/s, p50 {} us, p99 {} us, ok {} insufficient {} failed {}, check {} {}, others {:.0}% server {:.0}% steal {:.0}%",
                        w.name(),
                        r + 1,
                        thousands(x.ops_per_s),
                        x.p50_us,
                        x.p99_us,
                        x.ok,
                        x.insufficient,
                        x.other,
                        if run.check.pass { "pass" } else { "FAIL" },
                        run.check.note,
                        run.cpu.others * 100.0,
                        run.cpu.server * 100.0,
                        run.cpu.steal * 100.0
                    );
                    if report::repeat_for_steal(run.cpu.steal, o.max_steal, repeated) {
                        REPEATED.fetch_add(1, Ordering::Relaxed);
                        eprintln!("    host steal above {}%: run {} again", o.max_steal, r + 1);
                        continue;
                    }
                    runs.push(run);
                }
                Err(e) => eprintln!("  {} {key} [{shape}] run {}: error: {e}", w.name(), r + 1),
            }
            break;
        }
    }
    Cell {
        key: key.into(),
        w,
        system: system.into(),
        durability: durability.into(),
        shape: shape.into(),
        runs,
    }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or("?".into(), |kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0));
    format!("{cores} vCPU ({model}), {mem} RAM; clients and servers share these cores")
}

fn main() {
    if std::env::args().nth(1).is_some_and(|a| a == "serve") {
        let args: Vec<String> = std::env::args().skip(1).collect();
        depot_bench::floor::main(&args);
    }
    let o = opts().unwrap_or_else(|e| depot_bench::cli::usage_error(&format!("error: {e}"), USAGE));
    let rt = depot_bench::load::client_runtime(o.client_threads);
    let want = |s: &str| o.only.iter().any(|x| x == s);
    let t = o.timing;
    let mut notes = vec![format!("Machine: {}.", machine())];
    notes.push(format!(
        "Each figure: median of {} run(s) of {} s ({} s warm-up not counted; W3 runs to sell-out); \
         throughput counts successful and insufficient reservations.",
        o.runs, t.secs, t.warmup
    ));
    notes.push(format!(
        "depot: write-ahead log with group commit, fdatasync before every answer, in {} ({} shards); \
         the HTTP server with --pretouch-memory-mib {}.",
        o.server.data_root.display(),
        o.shards,
        o.server.pretouch_mib
    ));
    let redis_ok = |url: &str| -> Option<String> {
        match rt.block_on(redis_peer::describe(url)) {
            Ok((v, fsync)) => Some(format!(
                "Redis {v} at {url}: appendonly yes, appendfsync {fsync}."
            )),
            Err(e) => {
                eprintln!("redis at {url} not reachable ({e}): its rows are skipped (start bench/peers/start.sh)");
                None
            }
        }
    };
    let (mut r_always, mut r_everysec, mut pg) = (false, false, false);
    if want("redis") {
        if let Some(n) = redis_ok(&o.redis_always) {
            notes.push(n);
            r_always = true;
        }
        if let Some(n) = redis_ok(&o.redis_everysec) {
            notes.push(n);
            r_everysec = true;
        }
    }
    if want("pg") {
        match rt.block_on(pg_peer::describe(&o.pg)) {
            Ok((v, sc)) => {
                notes.push(format!(
                    "PostgreSQL {v}: synchronous_commit {sc}, one transaction per reservation."
                ));
                pg = true;
            }
            Err(e) => eprintln!(
                "postgres not reachable ({e}): its rows are skipped (start bench/peers/start.sh)"
            ),
        }
    }
    for n in &notes {
        println!("{n}");
    }

    let mut cells: Vec<Cell> = Vec::new();
    for &w in &o.workloads {
        eprintln!("{}:", w.name());
        let w3 = w == Wk::W3;
        // Single requests at 64 clients; W3 is specified at C = 16 as well as C = 64.
        let singles: &[usize] = if w3 { &[64, 16] } else { &[64] };
        if want("depot") {
            // W3 in batches of 32 (it sells out fast); W1 and W2 at the best batch size.
            let sizes: Vec<usize> = if w3 { vec![32] } else { o.inproc_batch.clone() };
            // Two client threads per shard, as `throughput`: with one, each thread's next
            // batch is not always queued when the shards finish the last.
            let threads = 2 * o.shards;
            let measured = each(&sizes, |per| {
                cell(
                    &o,
                    "depot-inproc-batch",
                    w,
                    "depot in-process",
                    "WAL, fsync per group",
                    &format!("{threads} threads x batch of {per}"),
                    |r| inproc::measure(&o.server.data_root, o.shards, w, threads, per, t, r),
                )
            });
            cells.extend(best_of(measured, &sizes));
            for &n in singles {
                cells.push(cell(
                    &o,
                    &format!("depot-inproc-{n}x1"),
                    w,
                    "depot in-process",
                    "WAL, fsync per group",
                    &format!("{n} threads x 1"),
                    |r| inproc::measure(&o.server.data_root, o.shards, w, n, 1, t, r),
                ));
            }
            // W3 on 2 connections of 32 (it sells out fast); W1 and W2 at the best count of
            // connections, as PostgreSQL at its best count of clients.
            let (conns, per_conn) = if w3 {
                (vec![2], 32)
            } else {
                (o.batch_conns.clone(), 100)
            };
            let rows = HttpRows {
                key: "depot-http",
                system: "depot HTTP",
                durability: "--sync always",
                singles,
                conns: &conns,
                per_conn,
            };
            cells.extend(rows.measure(&o, &rt, &o.server, w));
        }
        if want("floor") && !w3 {
            // depot's HTTP rows against the floor server: this binary, as `compare serve`.
            let floor = ServerOpts {
                bin: std::env::current_exe().unwrap_or_default(),
                ..o.server.clone()
            };
            let rows = HttpRows {
                key: "floor-http",
                system: "floor server (no engine)",
                durability: "fsync per group",
                singles,
                conns: &o.batch_conns,
                per_conn: 100,
            };
            cells.extend(rows.measure(&o, &rt, &floor, w));
        }
        for (on, url, fsync) in [
            (r_always, &o.redis_always, "always"),
            (r_everysec, &o.redis_everysec, "everysec"),
        ] {
            if !on {
                continue;
            }
            let deep = if w3 { "16x16 (C = 256)" } else { "16x16" };
            cells.push(cell(
                &o,
                &format!("redis-{fsync}-16x16"),
                w,
                "Redis + Lua",
                &format!("appendfsync {fsync}"),
                deep,
                |r| redis_peer::measure(&rt, url, w, 16, 16, t, r),
            ));
            for &n in singles {
                cells.push(cell(
                    &o,
                    &format!("redis-{fsync}-{n}x1"),
                    w,
                    "Redis + Lua",
                    &format!("appendfsync {fsync}"),
                    &format!("{n}x1"),
                    |r| redis_peer::measure(&rt, url, w, n, 1, t, r),
                ));
            }
        }
        if pg {
            // W3 at C = 16 and C = 64, each reported; W1 and W2 at the best client count.
            let counts: Vec<usize> = if w3 {
                singles.to_vec()
            } else {
                o.pg_clients.clone()
            };
            let measured = each(&counts, |c| {
                cell(
                    &o,
                    "pg-on",
                    w,
                    "PostgreSQL",
                    "synchronous_commit on",
                    &format!("{c}x1"),
                    |r| pg_peer::measure(&rt, &o.pg, w, c, t, r),
                )
            });
            if w3 {
                cells.extend(measured);
            } else {
                cells.extend(best_of(measured, &counts));
            }
        }
    }

    let goals: Vec<Goal> = [Wk::W1, Wk::W2]
        .into_iter()
        .flat_map(|w| {
            [
                Goal {
                    what: "depot in-process ÷ Redis Lua (always, 16x16)",
                    w,
                    num: REFERENCE,
                    den: "redis-always-16x16",
                    target: 10.0,
                },
                Goal {
                    what: "depot in-process ÷ PostgreSQL",
                    w,
                    num: REFERENCE,
                    den: "pg-on",
                    target: 100.0,
                },
                Goal {
                    what: "depot HTTP /v1/batch ÷ Redis Lua (always, 16x16)",
                    w,
                    num: "depot-http-batch",
                    den: "redis-always-16x16",
                    target: 5.0,
                },
                Goal {
                    what: "depot HTTP 64x1 ÷ Redis Lua (always, 64x1)",
                    w,
                    num: "depot-http-64x1",
                    den: "redis-always-64x1",
                    target: 1.2,
                },
                Goal {
                    what: "floor server (no engine) /v1/batch ÷ Redis Lua (always, 16x16), the same goal",
                    w,
                    num: "floor-http-batch",
                    den: "redis-always-16x16",
                    target: 5.0,
                },
                Goal {
                    what: "floor server (no engine) 64x1 ÷ Redis Lua (always, 64x1), the same goal",
                    w,
                    num: "floor-http-64x1",
                    den: "redis-always-64x1",
                    target: 1.2,
                },
            ]
        })
        .collect();
    let table = report::markdown(&cells, REFERENCE);
    let goal_lines = report::goals(&cells, &goals);
    let mut md = String::from("# depot and its peers: W1, W2, W3\n\n");
    for n in &notes {
        md.push_str(&format!("- {n}\n"));
    }
    md.push_str("- Latency: client side, per operation (for batch rows: the whole batch request); \"others' CPU\": share of the machine used by processes other than the client and the server under test during the run; \"host steal\": share of it the hypervisor gave to other machines while this one had work (a run with steal was slowed from outside; 0% on bare metal).\n");
    md.push_str(&format!(
        "- Runs with more than {}% host steal were run again with the same seed, at most {} times each (the last try kept): {} repeated in all.\n",
        o.max_steal,
        report::STEAL_REPEATS,
        REPEATED.load(Ordering::Relaxed)
    ));
    md.push_str("- Oversell: units granted beyond a SKU's stock (from the replies); check: the store's final stock equals stock - granted for every SKU, no failed request, and for W3 exactly 100,000 units sold.\n\n");
    md.push_str(&table);
    md.push_str("\n## Goals\n\n");
    md.push_str(&goal_lines);
    let tried = TRIED.lock().map(|t| t.concat()).unwrap_or_default();
    if !tried.is_empty() {
        md.push_str("\n## Every count tried\n\nThe rows above marked \"best of\" keep the count that gave the most operations per second; each count gave:\n\n");
        md.push_str(&tried);
    }
    println!("\n{table}\n{goal_lines}");
    if let Some(dir) = o.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&o.out, &md) {
        Ok(()) => println!("written to {}", o.out.display()),
        Err(e) => eprintln!("error: write {}: {e}", o.out.display()),
    }
    if cells.iter().any(|c| !c.pass()) {
        eprintln!("a check FAILED or a cell has no run");
        std::process::exit(1);
    }
}

/// The HTTP rows of a server: single requests at each of `singles` connections, and
/// `/v1/batch` of `per_conn` at the best of `conns` connections.
struct HttpRows<'a> {
    /// Cell keys: `{key}-{n}x1` and `{key}-batch`.
    key: &'a str,
    system: &'a str,
    durability: &'a str,
    singles: &'a [usize],
    conns: &'a [usize],
    per_conn: usize,
}

impl HttpRows<'_> {
    fn measure(
        &self,
        o: &Opts,
        rt: &tokio::runtime::Runtime,
        server: &ServerOpts,
        w: Wk,
    ) -> Vec<Cell> {
        let t = o.timing;
        let mut cells = Vec::new();
        for &n in self.singles {
            let single = HttpShape {
                conns: n,
                per_conn: 1,
                batch: false,
            };
            cells.push(cell(
                o,
                &format!("{}-{n}x1", self.key),
                w,
                self.system,
                self.durability,
                &single.label(),
                |r| http::measure(rt, server, w, single, t, r),
            ));
        }
        let measured = each(self.conns, |n| {
            let batch = HttpShape {
                conns: n,
                per_conn: self.per_conn,
                batch: true,
            };
            cell(
                o,
                &format!("{}-batch", self.key),
                w,
                self.system,
                self.durability,
                &batch.label(),
                |r| http::measure(rt, server, w, batch, t, r),
            )
        });
        cells.extend(best_of(measured, self.conns));
        cells
    }
}

/// The cells of `measure` for each of `tried` (batch sizes, client or connection counts), each
/// announced on stderr as it is done.
fn each(tried: &[usize], mut measure: impl FnMut(usize) -> Cell) -> Vec<Cell> {
    tried
        .iter()
        .map(|&n| {
            let cl = measure(n);
            eprintln!(
                "  {} {}, {}: {} ops/s",
                cl.w.name(),
                cl.system,
                cl.shape,
                thousands(cl.ops())
            );
            cl
        })
        .collect()
}

/// The cell with the most operations per second of those measured for each of `tried` (batch
/// sizes, client counts); its shape names what was tried when that was more than one.
fn best_of(measured: Vec<Cell>, tried: &[usize]) -> Option<Cell> {
    if tried.len() > 1 {
        if let Ok(mut t) = TRIED.lock() {
            t.extend(measured.iter().map(report::tried_line));
        }
    }
    let mut best = measured
        .into_iter()
        .reduce(|b, c| if c.ops() > b.ops() { c } else { b })?;
    if tried.len() > 1 {
        let list: Vec<String> = tried.iter().map(|c| c.to_string()).collect();
        best.shape = format!("{} (best of {})", best.shape, list.join("/"));
    }
    Some(best)
}
