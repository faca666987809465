//! The floor under the HTTP figures: the least a server can do for the same exchanges as
//! `depot serve`, on the same stack, measured by the same client (`http_load --floor`).
//!
//! The floor server is axum 0.8 on hyper's HTTP/1.1 with as many tokio workers as depot's
//! default (half the cores), `TCP_NODELAY` on every connection, and for every reservation:
//! parse its JSON body, check and take the stock in a map under one mutex, append a record to
//! a log file (into zeros written ahead, as depot's log does) and, with `--sync always`,
//! answer once a group `fdatasync` covering it has returned (one syncing thread; whatever
//! arrives during a sync goes into the next one), then write an answer of the shape and size
//! of depot's. `/v1/batch` does the same for each of its
//! operations and waits for one sync. Nothing else: no keys, no idempotency, no rules, no
//! events, no snapshots, no engine. What depot does beyond this floor is what its figures
//! pay for; what the floor cannot reach on a machine, depot cannot either.
//!
//! It is started by [`crate::http::DepotServer::start`] like depot, as `http_load serve
//! --listen ... --data-dir DIR --sync MODE ...`: the flags it does not use are ignored.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// A record for the log and who waits for it to be written.
type LogItem = (Vec<u8>, oneshot::Sender<()>);

/// The floor server's state: stock per SKU and the log's queue.
#[derive(Debug)]
struct Floor {
    stock: Mutex<HashMap<String, i64>>,
    next_id: AtomicU64,
    log: mpsc::Sender<LogItem>,
}

/// A SKU and a quantity: a reservation's line, or a stock adjustment.
#[derive(Debug, Deserialize)]
struct SkuQuantity<'a> {
    #[serde(borrow)]
    sku: std::borrow::Cow<'a, str>,
    quantity: i64,
}

#[derive(Debug, Deserialize)]
struct ReserveBody<'a> {
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    lines: Vec<SkuQuantity<'a>>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct BatchOp<'a> {
    #[serde(borrow)]
    method: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    path: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    body: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    operations: Vec<BatchOp<'a>>,
}

/// A held reservation's answer, as depot writes it.
#[derive(Debug, Serialize)]
struct Held<'a> {
    id: String,
    channel: &'a str,
    state: &'static str,
    created_at: String,
    expires_at: String,
    lines: Vec<HeldLine<'a>>,
}

#[derive(Debug, Serialize)]
struct HeldLine<'a> {
    sku: &'a str,
    quantity: i64,
    allocations: [Allocation; 1],
}

#[derive(Debug, Serialize)]
struct Allocation {
    location: &'static str,
    quantity: i64,
}

/// An answer: its status and its JSON body.
type Answer = (u16, Vec<u8>);

/// Runs the floor server until killed. `args` is the command line after the program name,
/// starting with `serve`.
pub fn main(args: &[String]) -> ! {
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let listen = flag("--listen").unwrap_or_else(|| "127.0.0.1:0".into());
    let dir = PathBuf::from(flag("--data-dir").unwrap_or_else(|| ".".into()));
    let sync = flag("--sync").unwrap_or_else(|| "always".into()) == "always";
    let file = match File::create(dir.join("floor.log")) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("floor: create the log in {}: {e}", dir.display());
            std::process::exit(1);
        }
    };
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("floor-sync".into())
        .spawn(move || group_commit(file, sync, &rx))
        .expect("spawn the floor's sync thread");
    let state = Arc::new(Floor {
        stock: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        log: tx,
    });
    let app = Router::new()
        .route("/readyz", get(|| async { "ready" }))
        .route(
            "/v1/tenants",
            post(|| async { created(json!({"id": "bench"})) }),
        )
        .route(
            "/v1/keys",
            post(|| async { created(json!({"key": "floor"})) }),
        )
        .route("/v1/locations/{id}", put(|| async { Json(json!({})) }))
        .route("/v1/channels/{id}", put(|| async { Json(json!({})) }))
        .route("/v1/reservations", post(reserve_one))
        .route("/v1/stock/{sku}", get(stock_one))
        .route("/v1/batch", post(batch))
        .with_state(state);
    let threads = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("start the floor's runtime");
    rt.block_on(async move {
        use axum::serve::ListenerExt;
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("floor: listen on {listen}: {e}");
                std::process::exit(1);
            }
        };
        let addr = listener.local_addr().expect("a bound address");
        println!("floor listening on http://{addr}");
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let _ = axum::serve(listener, app).await;
    });
    std::process::exit(0)
}

fn created(v: Value) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}

/// Zeros kept written ahead of the floor's records, and the chunk they are added in: what
/// depot's log does by default (`depot_wal::WalOptions::preallocate`), so that a sync writes
/// data into allocated blocks rather than growing the file.
const ZEROS_AHEAD: u64 = 8 * 1024 * 1024;
const ZEROS_CHUNK: usize = 2 * 1024 * 1024;

/// Writes each group of records that queued up, syncs it (`always`), and wakes its waiters.
/// The records go into zeros written ahead of them, as depot's log does.
fn group_commit(file: File, sync: bool, rx: &mpsc::Receiver<LogItem>) {
    use std::os::unix::fs::FileExt;
    let mut buf = Vec::new();
    let mut waiters = Vec::new();
    let zeros = vec![0u8; ZEROS_CHUNK];
    let (mut end, mut zeroed) = (0u64, 0u64);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some((record, done)) = next {
            buf.extend_from_slice(&record);
            waiters.push(done);
            next = rx.try_recv().ok();
        }
        let written = file
            .write_all_at(&buf, end)
            .and_then(|()| {
                end += buf.len() as u64;
                zeroed = zeroed.max(end);
                if zeroed < end + ZEROS_AHEAD {
                    file.write_all_at(&zeros, zeroed)?;
                    zeroed += ZEROS_CHUNK as u64;
                }
                Ok(())
            })
            .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // Waiters are dropped unanswered: their requests fail, as depot's would.
            eprintln!("floor: the log failed: {e}");
            waiters.clear();
        }
        for done in waiters.drain(..) {
            let _ = done.send(());
        }
        buf.clear();
    }
}

/// Queues `record` for the log and waits until it is written (and synced, with `always`).
async fn logged(state: &Floor, record: Vec<u8>) -> bool {
    let (tx, rx) = oneshot::channel();
    state.log.send((record, tx)).is_ok() && rx.await.is_ok()
}

fn error(status: u16, code: &str, message: &str) -> Answer {
    let body = json!({"error": {"code": code, "message": message, "details": {}}});
    (status, body.to_string().into_bytes())
}

fn unavailable() -> Answer {
    error(503, "unavailable", "the log failed")
}

/// Takes the stock of every line or none; the answer as depot gives it, and the log record.
fn reserve(state: &Floor, body: &ReserveBody<'_>, record: &mut Vec<u8>) -> Answer {
    if body.lines.is_empty() || body.lines.iter().any(|l| l.quantity <= 0) {
        return error(400, "invalid_request", "bad lines");
    }
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    {
        let mut stock = state.stock.lock().unwrap_or_else(|p| p.into_inner());
        let short: Vec<Value> = body
            .lines
            .iter()
            .filter_map(|l| {
                let have = stock.get(l.sku.as_ref()).copied().unwrap_or(0);
                (have < l.quantity).then(
                    || json!({"available_to_sell": have, "requested": l.quantity, "sku": l.sku}),
                )
            })
            .collect();
        if !short.is_empty() {
            let body = json!({"error": {"code": "insufficient_stock",
                "details": {"shortages": short}, "message": "insufficient stock"}});
            return (409, body.to_string().into_bytes());
        }
        for l in &body.lines {
            // Every line has stock here: a SKU without any is short.
            if let Some(n) = stock.get_mut(l.sku.as_ref()) {
                *n -= l.quantity;
            }
        }
    }
    let _ = write!(record, "r{id}");
    for l in &body.lines {
        let _ = write!(record, " {} {}", l.sku, l.quantity);
    }
    record.push(b'\n');
    let now = now_ms();
    let ttl = body.ttl_seconds.unwrap_or(900);
    let held = Held {
        id: format!("res_{id}"),
        channel: &body.channel,
        state: "held",
        created_at: rfc3339(now),
        expires_at: rfc3339(now.saturating_add(ttl.saturating_mul(1000))),
        lines: body
            .lines
            .iter()
            .map(|l| HeldLine {
                sku: &l.sku,
                quantity: l.quantity,
                allocations: [Allocation {
                    location: crate::LOCATION,
                    quantity: l.quantity,
                }],
            })
            .collect(),
    };
    (201, serde_json::to_vec(&held).unwrap_or_default())
}

fn stock_of(state: &Floor, sku: &str) -> Value {
    let available = state
        .stock
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(sku)
        .copied()
        .unwrap_or(0);
    json!({"sku": sku, "locations": [{"location": crate::LOCATION, "available": available}]})
}

fn answer((status, body): Answer) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn reserve_one(State(state): State<Arc<Floor>>, body: axum::body::Bytes) -> Response {
    let body: ReserveBody<'_> = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return answer(error(400, "invalid_request", &e.to_string())),
    };
    let mut record = Vec::new();
    let out = reserve(&state, &body, &mut record);
    if !record.is_empty() && !logged(&state, record).await {
        return answer(unavailable());
    }
    answer(out)
}

async fn stock_one(State(state): State<Arc<Floor>>, Path(sku): Path<String>) -> Response {
    Json(stock_of(&state, &sku)).into_response()
}

async fn batch(State(state): State<Arc<Floor>>, body: axum::body::Bytes) -> Response {
    let mut record = Vec::new();
    let results: Vec<Answer> = {
        let body: BatchBody<'_> = match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return answer(error(400, "invalid_request", &e.to_string())),
        };
        body.operations
            .iter()
            .map(|op| batch_op(&state, op, &mut record))
            .collect()
    };
    let failed = !record.is_empty() && !logged(&state, record).await;
    let mut out = Vec::with_capacity(results.iter().map(|r| r.1.len() + 24).sum::<usize>() + 16);
    out.extend_from_slice(br#"{"results":["#);
    for (i, (status, body)) in results.into_iter().enumerate() {
        let (status, body) = if failed {
            unavailable()
        } else {
            (status, body)
        };
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(out, r#"{{"status":{status},"body":"#);
        out.extend_from_slice(&body);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    answer((200, out))
}

fn batch_op(state: &Floor, op: &BatchOp<'_>, record: &mut Vec<u8>) -> Answer {
    let body = op.body.map_or("null", RawValue::get);
    match (op.method.as_ref(), op.path.as_ref()) {
        ("POST", "/v1/reservations") => match serde_json::from_str::<ReserveBody<'_>>(body) {
            Ok(b) => reserve(state, &b, record),
            Err(e) => error(400, "invalid_request", &e.to_string()),
        },
        ("POST", "/v1/stock/adjustments") => match serde_json::from_str::<SkuQuantity<'_>>(body) {
            Ok(a) => {
                let mut stock = state.stock.lock().unwrap_or_else(|p| p.into_inner());
                *stock.entry(a.sku.to_string()).or_insert(0) += a.quantity;
                let _ = writeln!(record, "a {} {}", a.sku, a.quantity);
                (201, json!({"sku": a.sku}).to_string().into_bytes())
            }
            Err(e) => error(400, "invalid_request", &e.to_string()),
        },
        ("GET", path) => match path.strip_prefix("/v1/stock/") {
            Some(sku) => (200, stock_of(state, sku).to_string().into_bytes()),
            None => error(400, "invalid_request", "not an operation of the floor"),
        },
        _ => error(400, "invalid_request", "not an operation of the floor"),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `ms` since the Unix epoch as RFC 3339 with milliseconds (`2026-12-01T14:59:52.833Z`), as
/// depot writes its timestamps (humantime; past the year 9999, its last millisecond).
fn rfc3339(ms: u64) -> String {
    const LAST_MS_OF_9999: u64 = 253_402_300_799_999;
    let t = UNIX_EPOCH + std::time::Duration::from_millis(ms.min(LAST_MS_OF_9999));
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_with_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_137_192_833), "2026-12-01T14:59:52.833Z");
        assert_eq!(rfc3339(951_782_400_001), "2000-02-29T00:00:00.001Z");
    }

    fn floor() -> (Floor, mpsc::Receiver<LogItem>) {
        let (tx, rx) = mpsc::channel();
        let f = Floor {
            stock: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            log: tx,
        };
        (f, rx)
    }

    fn reservation(lines: &[(&'static str, i64)]) -> ReserveBody<'static> {
        ReserveBody {
            channel: "web".into(),
            lines: lines
                .iter()
                .map(|&(sku, quantity)| SkuQuantity {
                    sku: sku.into(),
                    quantity,
                })
                .collect(),
            ttl_seconds: None,
        }
    }

    #[test]
    fn a_reservation_takes_every_line_or_none_and_answers_as_depot() {
        let (f, _rx) = floor();
        f.stock.lock().unwrap().insert("a".into(), 2);
        f.stock.lock().unwrap().insert("b".into(), 1);
        let mut record = Vec::new();
        let (status, body) = reserve(&f, &reservation(&[("a", 2), ("b", 2)]), &mut record);
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 409);
        assert_eq!(body["error"]["code"], "insufficient_stock");
        assert!(record.is_empty(), "a refusal logs nothing");
        assert_eq!(f.stock.lock().unwrap()["a"], 2, "nothing taken");
        let (status, body) = reserve(&f, &reservation(&[("a", 2), ("b", 1)]), &mut record);
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 201);
        assert_eq!(body["state"], "held");
        assert_eq!(body["lines"][1]["allocations"][0]["quantity"], 1);
        assert_eq!(String::from_utf8(record).unwrap(), "r2 a 2 b 1\n");
        assert_eq!(stock_of(&f, "a")["locations"][0]["available"], 0);
        assert_eq!(stock_of(&f, "b")["locations"][0]["available"], 0);
    }

    #[test]
    fn the_group_commit_wakes_every_waiter_after_writing_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("floor.log");
        let file = File::create(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        let mut waits = Vec::new();
        for i in 0..3 {
            let (done, wait) = oneshot::channel();
            tx.send((format!("r{i}\n").into_bytes(), done)).unwrap();
            waits.push(wait);
        }
        drop(tx);
        group_commit(file, true, &rx);
        for mut w in waits {
            assert!(w.try_recv().is_ok(), "every waiter is woken");
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..9], b"r0\nr1\nr2\n");
        assert!(bytes.len() > 9, "zeros follow the records");
        assert!(bytes[9..].iter().all(|&b| b == 0));
    }
}
