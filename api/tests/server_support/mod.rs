//! The real `depot serve` binary as a child process on a free port, for the tests that talk
//! to it over a socket (shared by `e2e.rs` and `sim_cli.rs`).

use reqwest::{Client, StatusCode};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server.
pub struct Server {
    child: Child,
    pub base: String,
}

impl Server {
    /// Starts `depot serve` on `data_dir` with `master` as master key; its log lines go to
    /// `<data_dir>.log`. Returns once it prints its address.
    #[allow(dead_code)] // not every test binary needs the default flags
    pub fn start(data_dir: &Path, master: &str) -> Server {
        Server::start_with(data_dir, master, &[])
    }

    /// [`Server::start`] with more flags of `depot serve`.
    #[allow(dead_code)] // not every test binary passes flags
    pub fn start_with(data_dir: &Path, master: &str, flags: &[&str]) -> Server {
        Server::start_env(data_dir, master, flags, &[])
    }

    /// [`Server::start_with`] and environment variables.
    pub fn start_env(
        data_dir: &Path,
        master: &str,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_depot"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--master-key",
                master,
                "--shards",
                "2",
            ])
            .args(flags)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("the depot binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads stdout for the address, then keeps draining it.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("depot listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server prints its address");
        Server { child, base }
    }

    /// SIGTERM, and the exit status.
    #[allow(dead_code)] // not every test binary stops its server with SIGTERM
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("sh")
            .args(["-c", &format!("kill -TERM {pid}")])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Server {
    /// The server's process id.
    #[allow(dead_code)] // not every test binary looks at the process
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the server to exit on its own; its exit status.
    #[allow(dead_code)] // not every test binary waits for an exit it did not ask for
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client of one server, for the tests that drive it with requests.
#[allow(dead_code)] // not every test binary sends requests
#[derive(Clone)]
pub struct Http {
    pub client: Client,
    pub base: String,
}

#[allow(dead_code)]
impl Http {
    /// `method path` with a key, an optional `Idempotency-Key` and an optional JSON body.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        key: &str,
        idem: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        self.try_send(method, path, key, idem, body)
            .await
            .expect("the server answers")
    }

    /// [`Http::send`], with the error when the server does not answer (it was killed).
    pub async fn try_send(
        &self,
        method: &str,
        path: &str,
        key: &str,
        idem: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Result<(StatusCode, reqwest::header::HeaderMap, Value)> {
        let mut req = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(k) = idem {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await?;
        let (status, headers) = (res.status(), res.headers().clone());
        let text = res.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, headers, body))
    }

    /// [`Http::send`], asserting a 2xx answer; its body.
    pub async fn ok(
        &self,
        method: &str,
        path: &str,
        key: &str,
        idem: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let (status, _, body) = self.send(method, path, key, idem, body).await;
        assert!(status.is_success(), "{method} {path}: {status} {body}");
        body
    }

    /// Creates `tenant` with the master key and an admin key for it; the key.
    pub async fn tenant_with_admin(&self, master: &str, tenant: &str) -> String {
        self.ok(
            "POST",
            "/v1/tenants",
            master,
            None,
            Some(serde_json::json!({ "id": tenant })),
        )
        .await;
        let key = self
            .ok(
                "POST",
                "/v1/keys",
                master,
                None,
                Some(serde_json::json!({"tenant": tenant, "role": "admin"})),
            )
            .await;
        key["key"].as_str().expect("a key").to_string()
    }

    /// Waits until `/readyz` answers 200 (recovery done).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self
                .client
                .get(format!("{}/readyz", self.base))
                .send()
                .await;
            if r.is_ok_and(|r| r.status() == StatusCode::OK) {
                return;
            }
            assert!(Instant::now() < deadline, "not ready in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
