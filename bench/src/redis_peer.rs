//! The Redis peer: one Lua script per reservation (`bench/peers/reserve.lua`: check every line,
//! decrement all or none, then `SET rs:<id> ... EX 900`), stock in `st:%012d` keys, on a server
//! `bench/peers/start.sh` started (appendfsync `always` or `everysec`). Each connection carries
//! `depth` logical clients: a round of their reservations is pipelined on it (`EVALSHA` each,
//! in one write, as `redis-benchmark -P depth` does) by the lean client of [`crate::resp`];
//! setup and checks use the `redis` crate.

use crate::load::{self, AsyncTarget, Op, Reply, Wk};
use crate::report::Run;
use crate::resp;
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, Script};
use std::net::{SocketAddr, ToSocketAddrs};
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

/// The TCP address of a `redis://host:port/` URL (the measured path's connections).
pub fn socket_addr(url: &str) -> Result<SocketAddr, String> {
    let client = redis::Client::open(url).map_err(|e| format!("redis {url}: {e}"))?;
    match client.get_connection_info().addr {
        redis::ConnectionAddr::Tcp(ref host, port) => (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("redis {url}: {e}"))?
            .next()
            .ok_or_else(|| format!("redis {url}: no address")),
        _ => Err(format!(
            "redis {url}: the benchmark measures over plain TCP only"
        )),
    }
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

/// One connection and the logical clients pipelined on it.
#[derive(Debug)]
pub struct RedisTarget {
    conn: resp::Conn,
    sha: Arc<str>,
    keys: Arc<Vec<String>>,
    scratch: String,
    replies: Vec<i64>,
}

impl AsyncTarget for RedisTarget {
    async fn submit(&mut self, ops: &[Op]) -> Result<Vec<Reply>, String> {
        for op in ops {
            let n = op.lines.len();
            // EVALSHA sha numkeys key... rs:<id> qty... record
            self.conn.command(3 + 2 * (n + 1));
            self.conn.arg(b"EVALSHA");
            self.conn.arg(self.sha.as_bytes());
            self.conn.int(n as i64 + 1);
            for &(r, _) in &op.lines {
                let key = self.keys.get(r - 1).map_or("", String::as_str);
                self.conn.arg(key.as_bytes());
            }
            self.scratch.clear();
            self.scratch.push_str("rs:");
            self.scratch.push_str(itoa::Buffer::new().format(op.id));
            self.conn.arg(self.scratch.as_bytes());
            for &(_, q) in &op.lines {
                self.conn.int(q);
            }
            self.conn.arg(record(op).as_bytes());
        }
        self.replies.clear();
        self.conn.integers(&mut self.replies).await?;
        Ok(self
            .replies
            .iter()
            .map(|&got| {
                if got == 1 {
                    Reply::Ok
                } else {
                    Reply::Insufficient
                }
            })
            .collect())
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
    let sha: Arc<str> = Script::new(SCRIPT).get_hash().into();
    let addr = socket_addr(url)?;
    let targets = rt.block_on(async {
        let mut v = Vec::with_capacity(conns);
        for _ in 0..conns {
            v.push(RedisTarget {
                conn: resp::Conn::connect(addr).await?,
                sha: sha.clone(),
                keys: keys.clone(),
                scratch: String::with_capacity(24),
                replies: Vec::with_capacity(depth),
            });
        }
        Ok::<_, String>(v)
    })?;
    let m = load::run_async(rt, w, targets, depth, t.secs, t.warmup, t.wait_idle, run)?;
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
        assert_eq!(
            socket_addr("redis://127.0.0.1:6390/"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 6390)))
        );
        assert!(socket_addr("redis+unix:///tmp/redis.sock").is_err());
        assert!(socket_addr("not a url").is_err());
    }
}
