//! A fixed number of W1 `/v1/batch` requests against a running `depot serve`, for counting the
//! server's instructions per reservation over HTTP (the whole path: hyper, axum, keys, JSON,
//! idempotency, the engine, the log, the answer). Two steps, so that the tenant's setup stays
//! out of the count:
//!
//! ```sh
//! cargo build --release -p depot-api                  # target/release/depot
//! cargo build --release -p depot-bench --example http_batch
//! RUST_LOG=warn valgrind --tool=callgrind target/release/depot serve \
//!     --listen 127.0.0.1:18080 --master-key bench-master-key-0123456789abcdef \
//!     --data-dir /tmp/depot-cg --sync always --rate-limit 100000000 --rate-burst 100000000 &
//! KEY=$(target/release/examples/http_batch 127.0.0.1:18080 setup)
//! callgrind_control -z                                  # the setup is not counted
//! target/release/examples/http_batch 127.0.0.1:18080 run "$KEY" 200   # batches of 100
//! callgrind_control -d
//! ```
//!
//! Instructions per reservation = the dumped count / (batches x 100). `run KEY N single`
//! sends N x 100 single `POST /v1/reservations` instead (the same reservations, one request
//! each). Without valgrind, `run` prints reservations per second of one connection. Several
//! `run`s at once need their own reservations (the same ones would be idempotent replays):
//! `part=P` gives the `P`th hundred logical clients (default 0). `w2` sends W2's three-line
//! carts instead of W1's reservations (the same tenant: W2's data is W1's).

use depot_bench::http::{batch_body, batch_replies, setup, sku_names, HttpConn, SingleTarget};
use depot_bench::load::{zipf_for, AsyncTarget, LogicalClient, Op, Reply, Wk};
use std::net::SocketAddr;
use std::time::Instant;

/// Reservations per batch, as `http_load`'s batches.
const PER_BATCH: usize = 100;

fn usage() -> ! {
    eprintln!("http_batch ADDR setup | http_batch ADDR run KEY BATCHES [single] [w2] [part=P]");
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(addr) = args.first().and_then(|a| a.parse::<SocketAddr>().ok()) else {
        usage()
    };
    match args.get(1).map(String::as_str) {
        Some("setup") => match setup(addr, Wk::W1.skus(), Wk::W1.stock()).await {
            Ok(key) => println!("{key}"),
            Err(e) => {
                eprintln!("setup: {e}");
                std::process::exit(1)
            }
        },
        Some("run") => {
            let (Some(key), Some(batches)) = (
                args.get(2),
                args.get(3).and_then(|b| b.parse::<usize>().ok()),
            ) else {
                usage()
            };
            let rest = &args[4.min(args.len())..];
            let single = rest.iter().any(|m| m == "single");
            let w = if rest.iter().any(|m| m == "w2") {
                Wk::W2
            } else {
                Wk::W1
            };
            let part = match rest.iter().find_map(|m| m.strip_prefix("part=")) {
                None => 0,
                Some(p) => p.parse::<u64>().unwrap_or_else(|_| usage()),
            };
            if let Err(e) = run(addr, key, w, batches, single, part).await {
                eprintln!("run: {e}");
                std::process::exit(1)
            }
        }
        _ => usage(),
    }
}

async fn run(
    addr: SocketAddr,
    key: &str,
    w: Wk,
    batches: usize,
    single: bool,
    part: u64,
) -> Result<(), String> {
    let names = sku_names(w.skus());
    let zipf = zipf_for(w);
    let first = part * PER_BATCH as u64;
    let mut clients: Vec<LogicalClient> = (first..first + PER_BATCH as u64)
        .map(|i| LogicalClient::new(w, 7, i))
        .collect();
    let ops: Vec<Vec<Op>> = (0..batches)
        .map(|_| {
            clients
                .iter_mut()
                .filter_map(|c| c.next_op(w, &zipf))
                .collect()
        })
        .collect();
    let conn = HttpConn::connect(addr, key).await?;
    if single {
        let mut target = SingleTarget::new(conn, names);
        let start = Instant::now();
        let mut ok = 0usize;
        for op in ops.iter().flatten() {
            ok += target
                .submit(std::slice::from_ref(op))
                .await?
                .iter()
                .filter(|r| **r == Reply::Ok)
                .count();
        }
        return report(ok, batches, start);
    }
    let mut conn = conn;
    // The bodies first: the client's work stays out of the server's time.
    let bodies: Vec<String> = ops.iter().map(|o| batch_body(o, &names)).collect();
    let start = Instant::now();
    let mut ok = 0usize;
    for body in bodies {
        let a = conn
            .send("POST", "/v1/batch", None, body.as_bytes())
            .await?;
        if a.status != 200 {
            return Err(format!("POST /v1/batch: {}", a.status));
        }
        ok += batch_replies(a.body, PER_BATCH)?
            .iter()
            .filter(|r| **r == Reply::Ok)
            .count();
    }
    report(ok, batches, start)
}

fn report(ok: usize, batches: usize, start: Instant) -> Result<(), String> {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{ok} of {} reservations granted, {:.0} reservations/s on one connection",
        batches * PER_BATCH,
        (batches * PER_BATCH) as f64 / secs
    );
    Ok(())
}
