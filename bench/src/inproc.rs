//! depot in process, durable: a threaded engine writing a fresh write-ahead log on the real
//! file system (`depot_wal::open_engine`: group commit, every answer waits for the
//! `fdatasync` covering its write, as `depot serve --sync always`), driven by client threads
//! that call the engine directly: `Engine::execute_one` per operation, or `Engine::execute`
//! with one operation per logical client of the thread.

use crate::load::{self, Op, Reply, SyncTarget, Wk};
use crate::report::Run;
use crate::Workload;
use depot_engine::{Command, Engine, FillPolicy, Limits, LineRequest, Outcome, Refusal, Request};
use std::path::Path;
use std::sync::Arc;

/// The engine answering one client thread's rounds.
#[derive(Debug)]
pub struct EngineTarget {
    engine: Arc<Engine>,
    workload: Arc<Workload>,
}

/// The engine request of `op`.
pub fn request(w: &Workload, op: &Op) -> Request {
    w.request(Command::Reserve {
        channel: w.channel.clone(),
        lines: op
            .lines
            .iter()
            .map(|&(r, q)| LineRequest {
                sku: w.skus[r - 1].clone(),
                quantity: q,
            })
            .collect(),
        ttl_ms: Some(900_000),
        order_ref: None,
        ship_to_region: None,
        fill: FillPolicy::AllOrNothing,
    })
}

fn reply(o: &Outcome) -> Reply {
    match o {
        Outcome::Ok(_) => Reply::Ok,
        Outcome::Refused(Refusal::InsufficientStock { .. }) => Reply::Insufficient,
        Outcome::Refused(_) => Reply::Other,
    }
}

impl SyncTarget for EngineTarget {
    fn submit(&mut self, ops: &[Op]) -> Result<Vec<Reply>, String> {
        let now = depot_wal::wall_clock_ms();
        if let [op] = ops {
            let (resp, _) = self.engine.execute_one(request(&self.workload, op), now);
            return Ok(vec![reply(&resp.outcome)]);
        }
        let reqs = ops.iter().map(|op| request(&self.workload, op)).collect();
        Ok(self
            .engine
            .execute(reqs, now)
            .iter()
            .map(|(resp, _)| reply(&resp.outcome))
            .collect())
    }
}

/// Every SKU's available (index rank - 1), read with `GetStock`.
pub fn read_available(engine: &Engine, w: &Workload) -> Result<Vec<i64>, String> {
    let reqs = (1..=w.skus.len()).map(|r| w.get_stock(r)).collect();
    engine
        .execute(reqs, u64::MAX / 2)
        .into_iter()
        .map(|(resp, _)| match resp.outcome {
            Outcome::Ok(depot_engine::Reply::Stock(v)) => {
                Ok(v.locations.iter().map(|l| l.available).sum())
            }
            other => Err(format!("get_stock: {other:?}")),
        })
        .collect()
}

/// One run of one in-process cell: `threads` client threads, each with `per_thread` logical
/// clients (1: `execute_one`; more: one `execute` per round).
pub fn measure(
    root: &Path,
    shards: usize,
    w: Wk,
    threads: usize,
    per_thread: usize,
    t: crate::http::Timing,
    run: u64,
) -> Result<Run, String> {
    let dir = root.join(format!("inproc-{}-{}-{run}", std::process::id(), w.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let result = (|| {
        let fs = depot_wal::FsDir::open(&dir).map_err(|e| e.to_string())?;
        let (engine, journal, _) = depot_wal::open_engine(
            Box::new(fs),
            depot_wal::WalOptions::default(),
            Limits::default(),
            shards,
        )
        .map_err(|e| format!("open the log: {e}"))?;
        let engine = Arc::new(engine);
        let workload = Arc::new(Workload::new(w.skus()));
        workload.setup_engine(&engine, w.stock());
        let targets = (0..threads)
            .map(|_| EngineTarget {
                engine: engine.clone(),
                workload: workload.clone(),
            })
            .collect();
        let m = load::run_threads(w, targets, per_thread, t.secs, t.warmup, t.wait_idle, run)?;
        let available = read_available(&engine, &workload)?;
        drop(engine);
        drop(journal);
        Ok(m.into_run(&available))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
