//! depot over HTTP: the real `depot serve` binary on a free loopback port with a fresh data
//! directory, its W1/W2/W3 tenant set up through the API (`/v1/batch` for the receives), and
//! closed-loop targets over HTTP/1.1 keep-alive connections (the lean client of
//! [`crate::wire`], one connection per task, one request in flight on it): single `POST /v1/reservations`, or
//! `POST /v1/batch` carrying one reservation per logical client of the task.

use crate::load::{self, AsyncTarget, Op, Reply, Wk};
use crate::report::Run;
use crate::wire;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The master key of the benchmark's servers (they live for one measurement, on loopback).
pub const MASTER_KEY: &str = "bench-master-key-0123456789abcdef";
/// Operations per `/v1/batch` request of the setup.
const SETUP_OPS: usize = 100;

/// How to start `depot serve`.
#[derive(Debug, Clone)]
pub struct ServerOpts {
    /// The release binary.
    pub bin: PathBuf,
    /// Each server's data directory is made under this one (a real file system).
    pub data_root: PathBuf,
    /// `--sync` (`always` for every figure in the comparison).
    pub sync: String,
    /// `--shards`; `None`: the server's default (one per core).
    pub shards: Option<usize>,
    /// `--pretouch-memory-mib` (0: not passed). The benchmarks pass
    /// [`PRETOUCH_MIB_DEFAULT`]: a run's state grows by gigabytes, and memory written for the
    /// first time costs the engine's writing thread a page fault per page.
    pub pretouch_mib: u64,
}

/// MiB the benchmarks have depot pretouch (`--pretouch-mib` of `http_load` and `compare`).
pub const PRETOUCH_MIB_DEFAULT: u64 = 4_096;

impl ServerOpts {
    /// `target/release/depot` next to the running benchmark binary, or `$DEPOT_BIN`.
    pub fn default_bin() -> PathBuf {
        if let Some(b) = std::env::var_os("DEPOT_BIN") {
            return PathBuf::from(b);
        }
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("depot")))
            .unwrap_or_else(|| PathBuf::from("target/release/depot"))
    }
}

/// A running `depot serve`, killed (and its data directory removed) on drop.
#[derive(Debug)]
pub struct DepotServer {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl DepotServer {
    /// Starts the server and waits until it prints its address.
    pub fn start(o: &ServerOpts, tag: &str) -> Result<DepotServer, String> {
        if !o.bin.is_file() {
            return Err(format!(
                "no depot binary at {} (build it: cargo build --release -p depot-api, or set DEPOT_BIN)",
                o.bin.display()
            ));
        }
        let dir = o
            .data_root
            .join(format!("depot-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let log = std::fs::File::create(dir.with_extension("log"))
            .map_err(|e| format!("create the server log: {e}"))?;
        let mut cmd = Command::new(&o.bin);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--master-key",
            MASTER_KEY,
        ])
        .arg("--data-dir")
        .arg(&dir)
        .args(["--sync", &o.sync])
        // The limiter would measure itself: set far above any rate reached here.
        .args(["--rate-limit", "100000000", "--rate-burst", "100000000"])
        .env(
            "RUST_LOG",
            // The server logs warnings unless the caller asks for more (`RUST_LOG=info` shows
            // each snapshot, with the time it took).
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
        if let Some(s) = o.shards {
            cmd.args(["--shards", &s.to_string()]);
        }
        if o.pretouch_mib > 0 {
            cmd.args(["--pretouch-memory-mib", &o.pretouch_mib.to_string()]);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("start {}: {e}", o.bin.display()))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            return Err("no stdout of the server".into());
        };
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads stdout for the address, then keeps draining it.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // `depot listening on http://...`, or the floor server's `floor listening on`.
                if let Some((_, addr)) = line.split_once(" listening on ") {
                    let _ = tx.send(addr.trim_start_matches("http://").to_string());
                }
            }
        });
        let server = |child| DepotServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir: dir.clone(),
        };
        let mut s = server(child);
        let addr = rx.recv_timeout(Duration::from_secs(60)).map_err(|_| {
            format!(
                "the server printed no address; see {}",
                dir.with_extension("log").display()
            )
        })?;
        s.addr = addr
            .parse()
            .map_err(|e| format!("bad address {addr:?}: {e}"))?;
        crate::procs::set_depot_pid(s.child.id());
        Ok(s)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for DepotServer {
    fn drop(&mut self) {
        crate::procs::set_depot_pid(0);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        // A log asked for with `RUST_LOG` is kept for its reader.
        if std::env::var_os("RUST_LOG").is_none() {
            let _ = std::fs::remove_file(self.dir.with_extension("log"));
        }
    }
}

/// One HTTP/1.1 keep-alive connection.
#[derive(Debug)]
pub struct HttpConn {
    conn: wire::Conn,
}

impl HttpConn {
    /// Connects (TCP_NODELAY); `key` is sent as the bearer of every request.
    pub async fn connect(addr: SocketAddr, key: &str) -> Result<HttpConn, String> {
        Ok(HttpConn {
            conn: wire::Conn::connect(addr, key).await?,
        })
    }

    /// Sends one request and reads the whole answer (borrowed until the next request).
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        idem: Option<&str>,
        body: &[u8],
    ) -> Result<wire::Answer<'_>, String> {
        self.conn.request(method, path, idem, body).await
    }

    async fn ok(
        &mut self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let a = self
            .send(method, path, None, body.to_string().as_bytes())
            .await?;
        if !(200..300).contains(&a.status) {
            return Err(format!(
                "{path}: {} {}",
                a.status,
                String::from_utf8_lossy(a.body)
            ));
        }
        serde_json::from_slice(a.body).map_err(|e| format!("{path}: bad JSON: {e}"))
    }
}

/// SKU names by rank (index rank - 1), as JSON-safe strings.
pub fn sku_names(n: usize) -> Arc<Vec<String>> {
    Arc::new((1..=n).map(crate::sku_name).collect())
}

/// The body of one reservation of `op`.
pub fn reservation_body(op: &Op, names: &[String], out: &mut String) {
    out.push_str(r#"{"channel":""#);
    out.push_str(crate::CHANNEL);
    out.push_str(r#"","lines":["#);
    for (i, &(r, q)) in op.lines.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"sku":""#);
        out.push_str(names.get(r - 1).map_or("?", String::as_str));
        out.push_str(r#"","quantity":"#);
        out.push_str(&q.to_string());
        out.push('}');
    }
    out.push_str(r#"],"ttl_seconds":900}"#);
}

/// The body of a `/v1/batch` of one reservation per op.
pub fn batch_body(ops: &[Op], names: &[String]) -> String {
    let mut s = String::with_capacity(ops.len() * 160 + 16);
    s.push_str(r#"{"operations":["#);
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(r#"{"method":"POST","path":"/v1/reservations","idempotency_key":"r"#);
        s.push_str(&op.id.to_string());
        s.push_str(r#"","body":"#);
        reservation_body(op, names, &mut s);
        s.push('}');
    }
    s.push_str("]}");
    s
}

/// The reply of one answer: 201 held, 409 `insufficient_stock`, anything else an error.
pub fn classify(status: u16, body: &[u8]) -> Reply {
    match status {
        200 | 201 => Reply::Ok,
        409 if memchr::memmem::find(body, b"insufficient_stock").is_some() => Reply::Insufficient,
        _ => Reply::Other,
    }
}

/// The replies of a `/v1/batch` answer, in order. Reads the `{"status":NNN` that opens each
/// result without parsing the bodies (the client must stay cheap next to the server); falls
/// back to a full JSON parse when the answer is not laid out that way.
pub fn batch_replies(body: &[u8], expected: usize) -> Result<Vec<Reply>, String> {
    const OPEN: &[u8] = br#"{"status":"#;
    // The client shares the machine with the server: a byte-by-byte search for each result's
    // start cost the client more than half of its instructions per reservation.
    let open = memchr::memmem::Finder::new(OPEN);
    let mut out = Vec::with_capacity(expected);
    let mut starts = Vec::with_capacity(expected);
    let mut i = 0;
    while let Some(p) = open.find(&body[i..]) {
        let at = i + p + OPEN.len();
        let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
        let status = std::str::from_utf8(&body[at..at + digits])
            .ok()
            .and_then(|d| d.parse::<u16>().ok());
        match status {
            Some(s) => starts.push((at, s)),
            None => break,
        }
        i = at;
    }
    if starts.len() == expected {
        for (k, &(at, s)) in starts.iter().enumerate() {
            let end = starts.get(k + 1).map_or(body.len(), |n| n.0);
            out.push(classify(s, &body[at..end]));
        }
        return Ok(out);
    }
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("batch answer: bad JSON: {e}"))?;
    let results = v["results"]
        .as_array()
        .ok_or_else(|| format!("batch answer without results: {v}"))?;
    for r in results {
        let s = r["status"].as_u64().unwrap_or(0) as u16;
        out.push(classify(s, r["body"].to_string().as_bytes()));
    }
    Ok(out)
}

/// Creates the tenant, its admin key, location and channel, and receives `stock` units into
/// each of `n` SKUs (through `/v1/batch`). Returns the admin key.
pub async fn setup(addr: SocketAddr, n: usize, stock: i64) -> Result<String, String> {
    let mut m = HttpConn::connect(addr, MASTER_KEY).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = match m.send("GET", "/readyz", None, b"").await {
            Ok(a) => Ok(a.status),
            Err(e) => Err(e),
        };
        match got {
            Ok(200) => break,
            _ if Instant::now() < deadline => {
                // A failed connection stays failed: connect again.
                if got.is_err() {
                    if let Ok(c) = HttpConn::connect(addr, MASTER_KEY).await {
                        m = c;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => return Err(format!("the server is not ready: {other:?}")),
        }
    }
    m.ok(
        "POST",
        "/v1/tenants",
        serde_json::json!({"id": crate::TENANT}),
    )
    .await?;
    let k = m
        .ok(
            "POST",
            "/v1/keys",
            serde_json::json!({"tenant": crate::TENANT, "role": "admin"}),
        )
        .await?;
    let key = k["key"]
        .as_str()
        .ok_or_else(|| format!("no key in {k}"))?
        .to_string();
    let mut a = HttpConn::connect(addr, &key).await?;
    a.ok(
        "PUT",
        &format!("/v1/locations/{}", crate::LOCATION),
        serde_json::json!({"kind": "warehouse", "name": "Bench warehouse"}),
    )
    .await?;
    a.ok(
        "PUT",
        &format!("/v1/channels/{}", crate::CHANNEL),
        serde_json::json!({"kind": "shopify", "priority": 0}),
    )
    .await?;
    let ranks: Vec<usize> = (1..=n).collect();
    for chunk in ranks.chunks(SETUP_OPS) {
        let ops: Vec<serde_json::Value> = chunk
            .iter()
            .map(|&r| {
                serde_json::json!({
                    "method": "POST",
                    "path": "/v1/stock/adjustments",
                    "idempotency_key": format!("receive-{r}"),
                    "body": {"sku": crate::sku_name(r), "location": crate::LOCATION,
                             "kind": "receive", "quantity": stock, "reason": "bench setup"},
                })
            })
            .collect();
        let v = a
            .ok("POST", "/v1/batch", serde_json::json!({"operations": ops}))
            .await?;
        let ok = v["results"].as_array().is_some_and(|rs| {
            rs.len() == chunk.len()
                && rs
                    .iter()
                    .all(|r| r["status"].as_u64().is_some_and(|s| s < 300))
        });
        if !ok {
            return Err(format!("setup receive refused: {v}"));
        }
    }
    Ok(key)
}

/// Every SKU's `available` (index rank - 1), read through `/v1/batch` of `GET /v1/stock`.
pub async fn read_available(addr: SocketAddr, key: &str, n: usize) -> Result<Vec<i64>, String> {
    let mut a = HttpConn::connect(addr, key).await?;
    let mut out = Vec::with_capacity(n);
    let ranks: Vec<usize> = (1..=n).collect();
    for chunk in ranks.chunks(SETUP_OPS) {
        let ops: Vec<serde_json::Value> = chunk
            .iter()
            .map(|&r| serde_json::json!({"method": "GET", "path": format!("/v1/stock/{}", crate::sku_name(r))}))
            .collect();
        let v = a
            .ok("POST", "/v1/batch", serde_json::json!({"operations": ops}))
            .await?;
        let results = v["results"]
            .as_array()
            .ok_or_else(|| format!("no results: {v}"))?;
        for r in results {
            let locs = r["body"]["locations"]
                .as_array()
                .ok_or_else(|| format!("no stock: {r}"))?;
            out.push(locs.iter().filter_map(|l| l["available"].as_i64()).sum());
        }
    }
    Ok(out)
}

/// Single `POST /v1/reservations`, one in flight per connection.
#[derive(Debug)]
pub struct SingleTarget {
    pub conn: HttpConn,
    pub names: Arc<Vec<String>>,
    buf: String,
    idem: String,
}

impl SingleTarget {
    pub fn new(conn: HttpConn, names: Arc<Vec<String>>) -> SingleTarget {
        SingleTarget {
            conn,
            names,
            buf: String::with_capacity(256),
            idem: String::with_capacity(24),
        }
    }
}

impl AsyncTarget for SingleTarget {
    async fn submit(&mut self, ops: &[Op]) -> Result<Vec<Reply>, String> {
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            self.buf.clear();
            reservation_body(op, &self.names, &mut self.buf);
            self.idem.clear();
            self.idem.push('r');
            self.idem.push_str(itoa::Buffer::new().format(op.id));
            let a = self
                .conn
                .send(
                    "POST",
                    "/v1/reservations",
                    Some(&self.idem),
                    self.buf.as_bytes(),
                )
                .await?;
            let r = classify(a.status, a.body);
            if r == Reply::Other {
                return Err(format!(
                    "POST /v1/reservations: {} {}",
                    a.status,
                    String::from_utf8_lossy(a.body)
                ));
            }
            out.push(r);
        }
        Ok(out)
    }
}

/// `POST /v1/batch` of one reservation per op.
#[derive(Debug)]
pub struct BatchTarget {
    pub conn: HttpConn,
    pub names: Arc<Vec<String>>,
}

impl AsyncTarget for BatchTarget {
    async fn submit(&mut self, ops: &[Op]) -> Result<Vec<Reply>, String> {
        let body = batch_body(ops, &self.names);
        let a = self
            .conn
            .send("POST", "/v1/batch", None, body.as_bytes())
            .await?;
        if a.status != 200 {
            return Err(format!(
                "POST /v1/batch: {} {}",
                a.status,
                String::from_utf8_lossy(a.body)
            ));
        }
        batch_replies(a.body, ops.len())
    }
}

/// The shape of an HTTP cell: `conns` connections, each carrying `per_conn` logical clients
/// (1: single requests; more: `/v1/batch` of that many reservations).
#[derive(Debug, Clone, Copy)]
pub struct HttpShape {
    pub conns: usize,
    pub per_conn: usize,
    pub batch: bool,
}

impl HttpShape {
    pub fn label(&self) -> String {
        if self.batch {
            format!("{} conns x /v1/batch of {}", self.conns, self.per_conn)
        } else {
            format!("{}x1", self.conns)
        }
    }
}

/// Timing of a cell.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub secs: f64,
    pub warmup: f64,
    /// Longest wait for a quiet machine before the run (0: none).
    pub wait_idle: f64,
}

/// One run of one HTTP cell: a fresh server, the setup, a quiet machine, the load, the check.
pub fn measure(
    rt: &tokio::runtime::Runtime,
    so: &ServerOpts,
    w: Wk,
    shape: HttpShape,
    t: Timing,
    run: u64,
) -> Result<Run, String> {
    let server = DepotServer::start(so, &format!("{}-{run}", w.name()))?;
    let addr = server.addr;
    let key = rt.block_on(setup(addr, w.skus(), w.stock()))?;
    let names = sku_names(w.skus());
    let conns: Vec<HttpConn> = rt.block_on(async {
        let mut v = Vec::with_capacity(shape.conns);
        for _ in 0..shape.conns {
            v.push(HttpConn::connect(addr, &key).await?);
        }
        Ok::<_, String>(v)
    })?;
    let m = if shape.batch {
        let targets = conns
            .into_iter()
            .map(|conn| BatchTarget {
                conn,
                names: names.clone(),
            })
            .collect();
        load::run_async(
            rt,
            w,
            targets,
            shape.per_conn,
            t.secs,
            t.warmup,
            t.wait_idle,
            run,
        )?
    } else {
        let targets = conns
            .into_iter()
            .map(|conn| SingleTarget::new(conn, names.clone()))
            .collect();
        load::run_async(rt, w, targets, 1, t.secs, t.warmup, t.wait_idle, run)?
    };
    let available = rt.block_on(read_available(addr, &key, w.skus()))?;
    drop(server);
    Ok(m.into_run(&available))
}

/// The data directory root when none is given: on the real disk, not a tmpfs.
pub fn default_data_root() -> PathBuf {
    Path::new("/var/tmp").join("depot-bench")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_the_api_json() {
        let names = sku_names(3);
        let op = Op {
            id: 7,
            lines: vec![(1, 2), (3, 1)],
        };
        let mut s = String::new();
        reservation_body(&op, &names, &mut s);
        let v: serde_json::Value = serde_json::from_str(&s).expect("valid JSON");
        assert_eq!(v["channel"], "web");
        assert_eq!(v["lines"][1]["sku"], "sku-00003");
        assert_eq!(v["lines"][0]["quantity"], 2);
        assert_eq!(v["ttl_seconds"], 900);
        let b = batch_body(&[op.clone(), op], &names);
        let v: serde_json::Value = serde_json::from_str(&b).expect("valid JSON");
        assert_eq!(v["operations"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["operations"][0]["idempotency_key"], "r7");
        assert_eq!(v["operations"][0]["path"], "/v1/reservations");
    }

    #[test]
    fn batch_answers_are_read_fast_or_parsed() {
        let body = br#"{"results":[{"status":201,"body":{"id":"res_1","state":"held"}},{"status":409,"body":{"error":{"code":"insufficient_stock","message":"x"}}},{"status":409,"body":{"error":{"code":"invalid_state"}}},{"status":503,"body":{}}]}"#;
        let r = batch_replies(body, 4).expect("read");
        assert_eq!(
            r,
            vec![Reply::Ok, Reply::Insufficient, Reply::Other, Reply::Other]
        );
        // Another layout: the full parse.
        let body =
            br#"{"results":[{"body":{"error":{"code":"insufficient_stock"}},"status":409}]}"#;
        assert_eq!(batch_replies(body, 1), Ok(vec![Reply::Insufficient]));
        assert!(batch_replies(b"not json", 1).is_err());
        assert_eq!(classify(201, b""), Reply::Ok);
        assert_eq!(classify(429, b"rate_limited"), Reply::Other);
    }
}
