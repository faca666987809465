//! The Redis peer: one Lua script per reservation (`bench/peers/reserve.lua`: check every line,
//! decrement all or none, then `SET rs:<id> ... EX 900`), stock in `st:%012d` keys, on a server
//! `bench/peers/start.sh` started (appendfsync `always` or `everysec`). Connections are the
//! client's multiplexed connections: `depth` logical clients share one connection, their
//! requests pipelined on it.

use crate::load::{self, AsyncTarget, Op, Reply, Wk};
use crate::report::Run;
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, Script};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The reservation script.
pub const SCRIPT: &str = include_str!("../peers/reserve.lua");

/// The stock key of rank `r` (1-based): redis-benchmark's `__rand_int__` format of r - 1.
pub fn stock_key(r: usize) -> String {
    format!("st:{:012}", r.saturating_sub(1))
}

/// The reservation record: its lines as `rank:qty` pairs.
pub fn record(op: &Op) -> String {
    let v: Vec<String> = op.lines.iter().map(|(r, q)| format!("{r}:{q}")).collect();
    v.join(",")
}

async fn connect(url: &str) -> Result<MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| format!("redis {url}: {e}"))?;
    // No response timeout (the default): an fsync-bound answer may take long, and is still
    // an answer.
    let config =
        redis::AsyncConnectionConfig::new().set_connection_timeout(Duration::from_secs(10));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| format!("redis {url}: {e}"))
}

/// The server's version and `appendfsync`, for the report.
pub async fn describe(url: &str) -> Result<(String, String), String> {
    let mut c = connect(url).await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut c)
        .await
        .map_err(|e| e.to_string())?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    let fsync: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendfsync")
        .query_async(&mut c)
        .await
        .map_err(|e| e.to_string())?;
    Ok((version, fsync.get(1).cloned().unwrap_or_default()))
}

/// Resets the data: `FLUSHALL`, `n` stock keys of `stock`, an AOF rewrite (so the file starts
/// small and no rewrite runs during the measurement), the script loaded.
pub async fn reset(url: &str, n: usize, stock: i64) -> Result<(), String> {
    let mut c = connect(url).await?;
    let e = |e: redis::RedisError| e.to_string();
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut c)
        .await
        .map_err(e)?;
    let ranks: Vec<usize> = (1..=n).collect();
    for chunk in ranks.chunks(1_000) {
        let pairs: Vec<(String, i64)> = chunk.iter().map(|&r| (stock_key(r), stock)).collect();
        c.mset::<_, _, ()>(&pairs).await.map_err(e)?;
    }
    redis::cmd("BGREWRITEAOF")
        .query_async::<()>(&mut c)
        .await
        .map_err(e)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut c)
            .await
            .map_err(e)?;
        let busy = info.lines().any(|l| {
            l.trim() == "aof_rewrite_in_progress:1" || l.trim() == "aof_rewrite_scheduled:1"
        });
        if !busy {
            break;
        }
        if Instant::now() > deadline {
            return Err("the AOF rewrite did not finish".into());
        }
    }
    Script::new(SCRIPT)
        .prepare_invoke()
        .load_async(&mut c)
        .await
        .map_err(e)?;
    Ok(())
}

/// Every SKU's stock (index rank - 1).
pub async fn read_available(url: &str, n: usize) -> Result<Vec<i64>, String> {
    let mut c = connect(url).await?;
    let ranks: Vec<usize> = (1..=n).collect();
    let mut out = Vec::with_capacity(n);
    for chunk in ranks.chunks(1_000) {
        let keys: Vec<String> = chunk.iter().map(|&r| stock_key(r)).collect();
        let v: Vec<Option<i64>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        out.extend(v.into_iter().map(|x| x.unwrap_or(i64::MIN)));
    }
    Ok(out)
}

/// One logical client's handle on a (shared) connection.
#[derive(Clone)]
pub struct RedisTarget {
    conn: MultiplexedConnection,
    script: Arc<Script>,
    keys: Arc<Vec<String>>,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget").finish_non_exhaustive()
    }
}

impl AsyncTarget for RedisTarget {
    async fn submit(&mut self, ops: &[Op]) -> Result<Vec<Reply>, String> {
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            let mut inv = self.script.prepare_invoke();
            for &(r, _) in &op.lines {
                inv.key(self.keys.get(r - 1).map_or("", String::as_str));
            }
            inv.key(format!("rs:{}", op.id));
            for &(_, q) in &op.lines {
                inv.arg(q);
            }
            inv.arg(record(op));
            let got: i64 = inv
                .invoke_async(&mut self.conn)
                .await
                .map_err(|e| format!("redis: {e}"))?;
            out.push(if got == 1 {
                Reply::Ok
            } else {
                Reply::Insufficient
            });
        }
        Ok(out)
    }
}

/// One run of one Redis cell: `conns` connections x `depth` logical clients pipelined on each.
pub fn measure(
    rt: &tokio::runtime::Runtime,
    url: &str,
    w: Wk,
    conns: usize,
    depth: usize,
    t: crate::http::Timing,
    run: u64,
) -> Result<Run, String> {
    rt.block_on(reset(url, w.skus(), w.stock()))?;
    let keys = Arc::new((1..=w.skus()).map(stock_key).collect::<Vec<_>>());
    let script = Arc::new(Script::new(SCRIPT));
    let targets = rt.block_on(async {
        let mut v = Vec::with_capacity(conns * depth);
        for _ in 0..conns {
            let conn = connect(url).await?;
            for _ in 0..depth {
                v.push(RedisTarget {
                    conn: conn.clone(),
                    script: script.clone(),
                    keys: keys.clone(),
                });
            }
        }
        Ok::<_, String>(v)
    })?;
    let m = load::run_async(rt, w, targets, 1, t.secs, t.warmup, t.wait_idle, run)?;
    let available = rt.block_on(read_available(url, w.skus()))?;
    Ok(m.into_run(&available))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_records() {
        assert_eq!(stock_key(1), "st:000000000000");
        assert_eq!(stock_key(10_000), "st:000000009999");
        let op = Op {
            id: 5,
            lines: vec![(2, 1), (9, 3)],
        };
        assert_eq!(record(&op), "2:1,9:3");
        assert!(SCRIPT.contains("DECRBY") && SCRIPT.contains("'EX', 900"));
    }
}
