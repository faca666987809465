//! Closed-loop drivers shared by the HTTP load generator and the peer comparison.
//!
//! A *task* (a tokio task or a thread) owns one connection-like target and `k` logical clients.
//! Each round it takes the next operation of every logical client that is still running,
//! submits them together (`k = 1`: one request; `k > 1`: a batch, or ops in one engine call)
//! and waits for all answers: every logical client has at most one operation outstanding, as
//! WORKLOADS.md's closed loop says. The latency of each operation is the round's (issue to
//! answer, client side); W1/W2 count operations completing after the warm-up and before the
//! end, W3 counts every attempt until the last client has seen every SKU sold out.

use crate::sellout::{SellOut, W3_SKUS, W3_STOCK};
use crate::{BenchRng, Zipf, SKUS, STOCK_PER_SKU, W2_LINES, ZIPF_S};
use hdrhistogram::Histogram;
use std::future::Future;
use std::time::{Duration, Instant};

/// Which workload of WORKLOADS.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wk {
    W1,
    W2,
    W3,
}

impl Wk {
    pub fn name(self) -> &'static str {
        match self {
            Wk::W1 => "W1",
            Wk::W2 => "W2",
            Wk::W3 => "W3",
        }
    }

    /// Parses `w1`, `w2`, `w3` (any case).
    pub fn parse(s: &str) -> Result<Wk, String> {
        match s.to_ascii_lowercase().as_str() {
            "w1" => Ok(Wk::W1),
            "w2" => Ok(Wk::W2),
            "w3" => Ok(Wk::W3),
            other => Err(format!("unknown workload {other:?} (w1, w2 or w3)")),
        }
    }

    /// SKUs of the workload's data.
    pub fn skus(self) -> usize {
        match self {
            Wk::W1 | Wk::W2 => SKUS,
            Wk::W3 => W3_SKUS,
        }
    }

    /// Initial `available` of every SKU.
    pub fn stock(self) -> i64 {
        match self {
            Wk::W1 | Wk::W2 => STOCK_PER_SKU,
            Wk::W3 => W3_STOCK,
        }
    }
}

/// One reserve operation: a unique id and its lines as (rank, qty), in ascending rank order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub id: u64,
    pub lines: Vec<(usize, i64)>,
}

/// The answer to one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Insufficient,
    /// Anything else (an error status, a refused limit): counted, and fails the check.
    Other,
}

/// One logical client: its RNG, its id sequence, and for W3 its set A.
#[derive(Debug, Clone)]
pub struct LogicalClient {
    rng: BenchRng,
    id_base: u64,
    seq: u64,
    sellout: Option<SellOut>,
}

impl LogicalClient {
    /// Logical client number `index` (unique in the run) of run `run`.
    pub fn new(w: Wk, run: u64, index: u64) -> LogicalClient {
        LogicalClient {
            rng: crate::rng(run, index),
            id_base: (index + 1) << 32,
            seq: 0,
            sellout: (w == Wk::W3).then(|| SellOut::new(W3_SKUS)),
        }
    }

    pub fn is_done(&self) -> bool {
        self.sellout.as_ref().is_some_and(SellOut::is_done)
    }

    /// The next operation; `None` once a W3 client has stopped.
    pub fn next_op(&mut self, w: Wk, zipf: &Zipf) -> Option<Op> {
        let lines = match w {
            Wk::W1 => vec![(zipf.sample(&mut self.rng), 1)],
            Wk::W2 => {
                use rand::Rng;
                let ranks = zipf.sample_distinct::<W2_LINES, _>(&mut self.rng);
                let mut lines: Vec<(usize, i64)> = ranks.iter().map(|&r| (r, 0)).collect();
                for l in &mut lines {
                    l.1 = self.rng.gen_range(1..=3);
                }
                lines.sort_unstable_by_key(|l| l.0);
                lines
            }
            Wk::W3 => {
                let s = self.sellout.as_ref()?;
                vec![(s.sample(&mut self.rng)?, 1)]
            }
        };
        self.seq += 1;
        Some(Op {
            id: self.id_base | self.seq,
            lines,
        })
    }

    /// Takes the answer to `op` into account (W3: "insufficient" removes the SKU from A).
    pub fn observe(&mut self, op: &Op, reply: Reply) {
        if let (Some(s), Reply::Insufficient) = (self.sellout.as_mut(), reply) {
            for &(r, _) in &op.lines {
                s.sold_out(r);
            }
        }
    }
}

/// The sampler of a workload's SKU ranks (W3 samples from each client's set instead).
pub fn zipf_for(w: Wk) -> Zipf {
    Zipf::new(w.skus(), ZIPF_S)
}

/// What one task saw.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Latency of every counted operation, in microseconds.
    pub hist: Histogram<u64>,
    /// Operations counted (inside the window for W1/W2, all for W3): ok + insufficient.
    pub counted: u64,
    pub ok: u64,
    pub insufficient: u64,
    pub other: u64,
    /// Units granted per SKU (index rank - 1), over every successful operation of the run.
    pub granted: Vec<i64>,
    /// Operations answered (ok + insufficient) in each [`TICK`] since the window's start,
    /// warm-up included: where a run's throughput dipped, and for how long.
    pub timeline: Vec<u64>,
    /// When the task stopped.
    pub end: Option<Instant>,
    /// The first error a target reported.
    pub error: Option<String>,
}

/// The width of a slice of [`Stats::timeline`].
pub const TICK: Duration = Duration::from_millis(100);

/// An HDR histogram from 1 µs to 60 s with 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

impl Stats {
    pub fn new(skus: usize) -> Stats {
        Stats {
            hist: histogram(),
            counted: 0,
            ok: 0,
            insufficient: 0,
            other: 0,
            granted: vec![0; skus],
            timeline: Vec::new(),
            end: None,
            error: None,
        }
    }

    /// Merges another task's stats.
    pub fn add(&mut self, o: &Stats) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.hist.add(&o.hist);
        self.counted += o.counted;
        self.ok += o.ok;
        self.insufficient += o.insufficient;
        self.other += o.other;
        for (a, b) in self.granted.iter_mut().zip(&o.granted) {
            *a += b;
        }
        if self.timeline.len() < o.timeline.len() {
            self.timeline.resize(o.timeline.len(), 0);
        }
        for (a, b) in self.timeline.iter_mut().zip(&o.timeline) {
            *a += b;
        }
        self.end = match (self.end, o.end) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if self.error.is_none() {
            self.error.clone_from(&o.error);
        }
    }
}

/// The timing of a run.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub w: Wk,
    pub start: Instant,
    pub warmup: Duration,
    pub end: Duration,
}

impl Window {
    /// Whether an operation completing `at` after the start is counted.
    fn counts(&self, at: Duration) -> bool {
        self.w == Wk::W3 || (at > self.warmup && at <= self.end)
    }

    /// Whether a task stops once a round completed `at` after the start.
    fn over(&self, at: Duration) -> bool {
        self.w != Wk::W3 && at >= self.end
    }
}

/// The next round's operations: one per running logical client, with its client's index.
fn round(clients: &mut [LogicalClient], w: Wk, zipf: &Zipf) -> (Vec<usize>, Vec<Op>) {
    let mut who = Vec::with_capacity(clients.len());
    let mut ops = Vec::with_capacity(clients.len());
    for (i, c) in clients.iter_mut().enumerate() {
        if let Some(op) = c.next_op(w, zipf) {
            who.push(i);
            ops.push(op);
        }
    }
    (who, ops)
}

/// Accounts one completed round.
fn account(
    stats: &mut Stats,
    clients: &mut [LogicalClient],
    who: &[usize],
    ops: &[Op],
    replies: &[Reply],
    (latency, at): (Duration, Duration),
    counted: bool,
) {
    let us = (latency.as_micros() as u64).max(1);
    let tick = (at.as_nanos() / TICK.as_nanos()) as usize;
    if stats.timeline.len() <= tick {
        stats.timeline.resize(tick + 1, 0);
    }
    for ((&i, op), &reply) in who.iter().zip(ops).zip(replies) {
        clients[i].observe(op, reply);
        match reply {
            Reply::Ok => {
                stats.ok += 1;
                for &(r, q) in &op.lines {
                    if let Some(g) = stats.granted.get_mut(r - 1) {
                        *g += q;
                    }
                }
            }
            Reply::Insufficient => stats.insufficient += 1,
            Reply::Other => stats.other += 1,
        }
        if reply != Reply::Other {
            stats.timeline[tick] += 1;
        }
        if counted && reply != Reply::Other {
            stats.counted += 1;
            stats.hist.saturating_record(us);
        }
    }
}

/// A connection-like target that answers rounds of operations, asynchronously.
pub trait AsyncTarget: Send {
    /// Submits `ops` (one per logical client) and returns one reply per op, in order.
    fn submit(&mut self, ops: &[Op]) -> impl Future<Output = Result<Vec<Reply>, String>> + Send;
}

/// The same, blocking (the in-process engine).
pub trait SyncTarget: Send {
    fn submit(&mut self, ops: &[Op]) -> Result<Vec<Reply>, String>;
}

fn finish_error(stats: &mut Stats, ops: usize, e: String) {
    stats.other += ops as u64;
    stats.error.get_or_insert(e);
}

/// The clients' async runtime with `threads` workers; exits 1 when it cannot start.
pub fn client_runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("error: tokio runtime: {e}");
            std::process::exit(1)
        })
}

/// Accounts one round's replies (submitted at `sent`); false when the driver must stop: a
/// failed round, or the end of the window.
fn settle(
    stats: &mut Stats,
    clients: &mut [LogicalClient],
    win: &Window,
    (who, ops): (&[usize], &[Op]),
    replies: Result<Vec<Reply>, String>,
    sent: Instant,
) -> bool {
    let done = Instant::now();
    let at = done.duration_since(win.start);
    match replies {
        Ok(r) if r.len() == ops.len() => {
            let when = (done - sent, at);
            account(stats, clients, who, ops, &r, when, win.counts(at));
            !win.over(at)
        }
        Ok(r) => {
            let e = format!("{} replies to {} operations", r.len(), ops.len());
            finish_error(stats, ops.len(), e);
            false
        }
        Err(e) => {
            finish_error(stats, ops.len(), e);
            false
        }
    }
}

/// Runs one async task (returning its target) until the window ends (W1/W2) or all its clients stopped (W3).
pub async fn drive_async<T: AsyncTarget>(
    mut target: T,
    mut clients: Vec<LogicalClient>,
    win: Window,
    zipf: &Zipf,
) -> (Stats, T) {
    let mut stats = Stats::new(win.w.skus());
    loop {
        let (who, ops) = round(&mut clients, win.w, zipf);
        if ops.is_empty() {
            break;
        }
        let t = Instant::now();
        let replies = target.submit(&ops).await;
        if !settle(&mut stats, &mut clients, &win, (&who, &ops), replies, t) {
            break;
        }
    }
    stats.end = Some(Instant::now());
    // The target (its connection) is handed back, so it outlives the CPU measurement.
    (stats, target)
}

/// The blocking twin of [`drive_async`], for a thread.
pub fn drive_sync<T: SyncTarget>(
    mut target: T,
    mut clients: Vec<LogicalClient>,
    win: Window,
    zipf: &Zipf,
) -> (Stats, T) {
    let mut stats = Stats::new(win.w.skus());
    loop {
        let (who, ops) = round(&mut clients, win.w, zipf);
        if ops.is_empty() {
            break;
        }
        let t = Instant::now();
        let replies = target.submit(&ops);
        if !settle(&mut stats, &mut clients, &win, (&who, &ops), replies, t) {
            break;
        }
    }
    stats.end = Some(Instant::now());
    // The target (its connection) is handed back, so it outlives the CPU measurement.
    (stats, target)
}

/// The logical clients of task `task` out of a run with `per_task` clients per task.
pub fn clients_of(w: Wk, run: u64, task: usize, per_task: usize) -> Vec<LogicalClient> {
    (0..per_task)
        .map(|i| LogicalClient::new(w, run, (task * per_task + i) as u64))
        .collect()
}

/// The measured figures of one run of one cell.
#[derive(Debug, Clone, Default)]
pub struct RunFigures {
    pub ops_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub ok: u64,
    pub insufficient: u64,
    pub other: u64,
    /// Seconds the throughput is over (the window, or W3's sell-out time).
    pub seconds: f64,
    /// Operations answered in each [`TICK`] from the start ([`Stats::timeline`]).
    pub timeline: Vec<u64>,
    pub error: Option<String>,
}

/// The figures of a run from the merged stats of its tasks.
pub fn figures(win: &Window, stats: &Stats) -> RunFigures {
    let seconds = match win.w {
        Wk::W3 => stats
            .end
            .map_or(0.0, |e| e.duration_since(win.start).as_secs_f64()),
        _ => (win.end - win.warmup).as_secs_f64(),
    };
    let h = &stats.hist;
    let q = |x: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(x)
        }
    };
    RunFigures {
        ops_per_s: if seconds > 0.0 {
            stats.counted as f64 / seconds
        } else {
            0.0
        },
        p50_us: q(0.50),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: if h.is_empty() { 0 } else { h.max() },
        ok: stats.ok,
        insufficient: stats.insufficient,
        other: stats.other,
        seconds,
        timeline: stats.timeline.clone(),
        error: stats.error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target that grants from a shared stock table, as a store would.
    struct Mem(std::sync::Arc<std::sync::Mutex<Vec<i64>>>);

    impl SyncTarget for Mem {
        fn submit(&mut self, ops: &[Op]) -> Result<Vec<Reply>, String> {
            let mut st = self.0.lock().map_err(|_| "poisoned".to_string())?;
            Ok(ops
                .iter()
                .map(|op| {
                    if op.lines.iter().all(|&(r, q)| st[r - 1] >= q) {
                        for &(r, q) in &op.lines {
                            st[r - 1] -= q;
                        }
                        Reply::Ok
                    } else {
                        Reply::Insufficient
                    }
                })
                .collect())
        }
    }

    #[test]
    fn w3_sells_out_exactly_and_every_client_stops() {
        let stock = std::sync::Arc::new(std::sync::Mutex::new(vec![W3_STOCK; W3_SKUS]));
        let win = Window {
            w: Wk::W3,
            start: Instant::now(),
            warmup: Duration::ZERO,
            end: Duration::ZERO,
        };
        let zipf = zipf_for(Wk::W3);
        let mut all = Stats::new(W3_SKUS);
        for task in 0..4 {
            let (s, _) = drive_sync(
                Mem(stock.clone()),
                clients_of(Wk::W3, 0, task, 4),
                win,
                &zipf,
            );
            all.add(&s);
        }
        assert_eq!(all.ok, (W3_SKUS as u64) * W3_STOCK as u64);
        assert!(all.granted.iter().all(|&g| g == W3_STOCK));
        // Each of the 16 clients sees each SKU sold out exactly once.
        assert_eq!(all.insufficient, 16 * W3_SKUS as u64);
        assert_eq!(all.counted, all.ok + all.insufficient);
        // Every answered operation is in the timeline, in the slice of its completion.
        assert_eq!(all.timeline.iter().sum::<u64>(), all.ok + all.insufficient);
        let elapsed = all.end.expect("ended").duration_since(win.start);
        assert!(all.timeline.len() as u128 <= elapsed.as_nanos() / TICK.as_nanos() + 1);
        let f = figures(&win, &all);
        assert!(f.ops_per_s > 0.0 && f.p50_us >= 1);
        assert_eq!(f.timeline, all.timeline);
    }

    #[test]
    fn ops_have_the_workload_shape_and_unique_ids() {
        let zipf = zipf_for(Wk::W2);
        let mut a = LogicalClient::new(Wk::W2, 1, 0);
        let mut b = LogicalClient::new(Wk::W2, 1, 1);
        let mut ids = std::collections::HashSet::new();
        for _ in 0..1_000 {
            for c in [&mut a, &mut b] {
                let op = c.next_op(Wk::W2, &zipf).expect("W2 never stops");
                assert_eq!(op.lines.len(), 3);
                assert!(op.lines.windows(2).all(|p| p[0].0 < p[1].0));
                assert!(op.lines.iter().all(|&(_, q)| (1..=3).contains(&q)));
                assert!(ids.insert(op.id), "duplicate id");
            }
        }
        let mut c = LogicalClient::new(Wk::W1, 0, 0);
        let op = c
            .next_op(Wk::W1, &zipf_for(Wk::W1))
            .expect("W1 never stops");
        assert_eq!(op.lines.len(), 1);
        assert_eq!(op.lines[0].1, 1);
    }

    #[test]
    fn parse_and_window() {
        assert_eq!(Wk::parse("W2"), Ok(Wk::W2));
        assert!(Wk::parse("w4").is_err());
        let win = Window {
            w: Wk::W1,
            start: Instant::now(),
            warmup: Duration::from_secs(1),
            end: Duration::from_secs(5),
        };
        assert!(!win.counts(Duration::from_millis(500)));
        assert!(win.counts(Duration::from_secs(2)));
        assert!(!win.counts(Duration::from_secs(6)));
        assert!(win.over(Duration::from_secs(5)));
    }
}

/// What a cell's load phase measured: the merged stats, the window, and the CPU shares of
/// others and of the servers under test.
#[derive(Debug)]
pub struct Measured {
    pub stats: Stats,
    pub win: Window,
    pub cpu: crate::procs::Shares,
}

/// Waits for a quiet machine (at most `wait_idle` s), then runs one task per target on `rt`,
/// each with `per_task` logical clients, for `secs` (W1/W2; after `warmup`) or to sell-out.
pub fn run_async<T: AsyncTarget + 'static>(
    rt: &tokio::runtime::Runtime,
    w: Wk,
    targets: Vec<T>,
    per_task: usize,
    secs: f64,
    warmup: f64,
    wait_idle: f64,
    run: u64,
) -> Result<Measured, String> {
    if wait_idle > 0.0 {
        crate::idle::wait_idle(wait_idle);
    }
    let zipf = std::sync::Arc::new(zipf_for(w));
    let win = Window {
        w,
        start: Instant::now(),
        warmup: Duration::from_secs_f64(warmup),
        end: Duration::from_secs_f64(secs),
    };
    let cpu0 = crate::procs::Snapshot::now();
    let stats = rt.block_on(async {
        let handles: Vec<_> = targets
            .into_iter()
            .enumerate()
            .map(|(i, target)| {
                let clients = clients_of(w, run, i, per_task);
                let zipf = zipf.clone();
                tokio::spawn(async move { drive_async(target, clients, win, &zipf).await })
            })
            .collect();
        let mut all = Stats::new(w.skus());
        let mut kept = Vec::new();
        for h in handles {
            let (s, t) = h.await.map_err(|e| format!("client task: {e}"))?;
            all.add(&s);
            kept.push(t);
        }
        Ok::<_, String>((all, kept))
    })?;
    let cpu = crate::procs::Snapshot::now().since(&cpu0);
    let (stats, kept) = stats;
    drop(kept);
    Ok(Measured { stats, win, cpu })
}

/// The blocking twin of [`run_async`]: one thread per target.
pub fn run_threads<T: SyncTarget + 'static>(
    w: Wk,
    targets: Vec<T>,
    per_task: usize,
    secs: f64,
    warmup: f64,
    wait_idle: f64,
    run: u64,
) -> Result<Measured, String> {
    if wait_idle > 0.0 {
        crate::idle::wait_idle(wait_idle);
    }
    let zipf = zipf_for(w);
    let win = Window {
        w,
        start: Instant::now(),
        warmup: Duration::from_secs_f64(warmup),
        end: Duration::from_secs_f64(secs),
    };
    let cpu0 = crate::procs::Snapshot::now();
    let stats = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .into_iter()
            .enumerate()
            .map(|(i, target)| {
                let clients = clients_of(w, run, i, per_task);
                let zipf = &zipf;
                s.spawn(move || drive_sync(target, clients, win, zipf))
            })
            .collect();
        let mut all = Stats::new(w.skus());
        for h in handles {
            let (st, _) = h.join().map_err(|_| "client thread panicked".to_string())?;
            all.add(&st);
        }
        Ok::<_, String>(all)
    })?;
    // In process, the server is this process: others = busy - own.
    let cpu = crate::procs::Snapshot::now().since(&cpu0);
    Ok(Measured { stats, win, cpu })
}

impl Measured {
    /// The run's figures and its check against the store's final `available` per SKU.
    pub fn into_run(self, available: &[i64]) -> crate::report::Run {
        let fig = figures(&self.win, &self.stats);
        let check = crate::report::verify(
            self.win.w,
            available,
            &self.stats.granted,
            self.stats.ok,
            self.stats.other,
        );
        crate::report::Run {
            fig,
            check,
            cpu: self.cpu,
        }
    }
}
