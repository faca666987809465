//! The PostgreSQL peer: one transaction per reservation, an `UPDATE stock SET available =
//! available - q WHERE sku = s AND available >= q` per line in SKU order (rollback when a line
//! updates no row), then an `INSERT` of the reservation (id from a sequence), on the
//! throwaway cluster `bench/peers/start.sh` started (synchronous_commit on: COMMIT returns
//! after the WAL flush, group-committed across backends). One connection per logical client.

use crate::load::{self, AsyncTarget, Op, Reply, Wk};
use crate::report::Run;
use std::sync::Arc;
use tokio_postgres::{Client, NoTls, Statement};

const SCHEMA: &str = "
DROP TABLE IF EXISTS reservation;
DROP TABLE IF EXISTS stock;
CREATE TABLE stock (sku text PRIMARY KEY, available bigint NOT NULL);
CREATE TABLE reservation (
    id bigserial PRIMARY KEY,
    lines text NOT NULL,
    expires_at timestamptz NOT NULL
);";

/// An error with the server's message (the plain `Display` says only "db error").
fn err(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("postgres: {} ({})", db.message(), db.code().code()),
        None => format!("postgres: {e}"),
    }
}

async fn connect(conninfo: &str) -> Result<Client, String> {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .map_err(|e| format!("postgres {conninfo}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The server's version and `synchronous_commit`, for the report.
pub async fn describe(conninfo: &str) -> Result<(String, String), String> {
    let c = connect(conninfo).await?;
    let row = c
        .query_one(
            "SELECT current_setting('server_version'), current_setting('synchronous_commit')",
            &[],
        )
        .await
        .map_err(err)?;
    Ok((row.get(0), row.get(1)))
}

/// Resets the data: fresh tables, `n` SKUs of `stock`, vacuumed, and a checkpoint so none
/// starts during the measurement.
pub async fn reset(conninfo: &str, n: usize, stock: i64) -> Result<(), String> {
    let c = connect(conninfo).await?;
    let e = err;
    c.batch_execute(SCHEMA).await.map_err(e)?;
    c.execute(
        "INSERT INTO stock SELECT 'sku-' || lpad(g::text, 5, '0'), $2 FROM generate_series(1, $1) g",
        &[&(n as i32), &stock],
    )
    .await
    .map_err(e)?;
    // One statement per call: a multi-statement string runs as one transaction, and VACUUM
    // refuses that.
    for q in [
        "VACUUM ANALYZE stock",
        "VACUUM ANALYZE reservation",
        "CHECKPOINT",
    ] {
        c.batch_execute(q).await.map_err(e)?;
    }
    Ok(())
}

/// Every SKU's available (index rank - 1), and the number of reservation rows.
pub async fn read_state(conninfo: &str) -> Result<(Vec<i64>, i64), String> {
    let c = connect(conninfo).await?;
    let rows = c
        .query("SELECT available FROM stock ORDER BY sku", &[])
        .await
        .map_err(err)?;
    let n: i64 = c
        .query_one("SELECT count(*) FROM reservation", &[])
        .await
        .map_err(err)?
        .get(0);
    Ok((rows.iter().map(|r| r.get::<_, i64>(0)).collect(), n))
}

/// One logical client's connection and prepared statements.
pub struct PgTarget {
    client: Client,
    update: Statement,
    insert: Statement,
    names: Arc<Vec<String>>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget").finish_non_exhaustive()
    }
}

impl PgTarget {
    pub async fn connect(conninfo: &str, names: Arc<Vec<String>>) -> Result<PgTarget, String> {
        let client = connect(conninfo).await?;
        let e = err;
        let update = client
            .prepare(
                "UPDATE stock SET available = available - $2 WHERE sku = $1 AND available >= $2",
            )
            .await
            .map_err(e)?;
        let insert = client
            .prepare(
                "INSERT INTO reservation (lines, expires_at) VALUES ($1, now() + interval '900 seconds')",
            )
            .await
            .map_err(e)?;
        Ok(PgTarget {
            client,
            update,
            insert,
            names,
        })
    }

    async fn reserve(&mut self, op: &Op) -> Result<Reply, tokio_postgres::Error> {
        let tx = self.client.transaction().await?;
        for &(r, q) in &op.lines {
            let sku = self.names.get(r - 1).map_or("", String::as_str);
            if tx.execute(&self.update, &[&sku, &q]).await? == 0 {
                tx.rollback().await?;
                return Ok(Reply::Insufficient);
            }
        }
        tx.execute(&self.insert, &[&crate::redis_peer::record(op)])
            .await?;
        tx.commit().await?;
        Ok(Reply::Ok)
    }
}

impl AsyncTarget for PgTarget {
    async fn submit(&mut self, ops: &[Op]) -> Result<Vec<Reply>, String> {
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            out.push(self.reserve(op).await.map_err(err)?);
        }
        Ok(out)
    }
}

/// One run of one PostgreSQL cell with `clients` connections, one transaction in flight each.
pub fn measure(
    rt: &tokio::runtime::Runtime,
    conninfo: &str,
    w: Wk,
    clients: usize,
    t: crate::http::Timing,
    run: u64,
) -> Result<Run, String> {
    rt.block_on(reset(conninfo, w.skus(), w.stock()))?;
    let names = crate::http::sku_names(w.skus());
    let targets = rt.block_on(async {
        let mut v = Vec::with_capacity(clients);
        for _ in 0..clients {
            v.push(PgTarget::connect(conninfo, names.clone()).await?);
        }
        Ok::<_, String>(v)
    })?;
    let m = load::run_async(rt, w, targets, 1, t.secs, t.warmup, t.wait_idle, run)?;
    let ok = m.stats.ok;
    let (available, rows) = rt.block_on(read_state(conninfo))?;
    let mut r = m.into_run(&available);
    if rows != ok as i64 {
        r.check.pass = false;
        r.check
            .note
            .push_str(&format!("; {rows} reservation rows for {ok} successes"));
    }
    Ok(r)
}
