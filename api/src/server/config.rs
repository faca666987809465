//! The configuration of `depot serve`: raw flags and environment variables ([`ServeArgs`])
//! parsed once, at the edge, into a validated [`ServeConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How the write-ahead log acknowledges writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// An answer waits for the `fdatasync` that covers its write (group commit). The default.
    Always,
    /// Answers do not wait for the disk while the log lags at most this long behind; the log is
    /// still synced continuously. A crash loses at most about this window of acknowledged writes.
    Interval(Duration),
    /// The log is written but never synced: the operating system writes it back when it likes.
    /// A process crash loses nothing; a power loss may lose any recent write.
    None,
}

impl std::str::FromStr for SyncMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(SyncMode::Always),
            "none" => Ok(SyncMode::None),
            _ => {
                let ms = s
                    .strip_prefix("interval=")
                    .ok_or_else(|| format!("{s:?}: expected always, interval=<ms> or none"))?;
                let ms: u64 = ms.parse().map_err(|_| {
                    format!("{s:?}: the interval is a whole number of milliseconds")
                })?;
                if !(1..=60_000).contains(&ms) {
                    return Err(format!("{s:?}: the interval is 1 to 60000 ms"));
                }
                Ok(SyncMode::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The flags of `depot serve`, as typed on the command line or set in the environment.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "DEPOT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Directory of the log, the snapshots and the keys.
    #[arg(long, env = "DEPOT_DATA_DIR", default_value = "./depot-data")]
    pub data_dir: PathBuf,
    /// The master key (it may create tenants and keys). Generated and printed on the first
    /// start when not given.
    #[arg(long, env = "DEPOT_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
    /// Shard threads of the engine (default: one per core).
    #[arg(long, env = "DEPOT_SHARDS")]
    pub shards: Option<usize>,
    /// When a write is acknowledged: `always` (after its fdatasync), `interval=<ms>` (the log may
    /// lag this long behind the answers) or `none` (never synced; fastest, least durable).
    #[arg(long, env = "DEPOT_SYNC", default_value = "always")]
    pub sync: String,
    /// Log lines as `pretty` text or `json`.
    #[arg(long, env = "DEPOT_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
    /// Also create the demo tenant (when missing) and print an admin key for it.
    #[arg(long)]
    pub demo: bool,
    /// Requests per second allowed per key (token bucket refill).
    #[arg(long, env = "DEPOT_RATE_LIMIT", default_value_t = 1_000)]
    pub rate_limit: u32,
    /// Requests a key may send at once above its rate.
    #[arg(long, env = "DEPOT_RATE_BURST", default_value_t = 2_000)]
    pub rate_burst: u32,
}

/// Limits of the HTTP layer. The engine's own limits (lines per reservation, TTL range, ...)
/// come on top.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request body, in bytes (413 above).
    pub body_bytes_max: usize,
    /// Largest total size of the request headers, in bytes (431 above).
    pub header_bytes_max: usize,
    /// Most request headers (431 above).
    pub headers_max: usize,
    /// Most operations in one `POST /v1/batch`.
    pub batch_operations_max: usize,
    /// Most lines in a commit or fulfil request.
    pub lines_max: usize,
    /// Longest time from a request to its answer's head (503 `timeout` after).
    pub request_timeout: Duration,
    /// Requests (or engine batches) waiting for the engine; a full queue answers 503.
    pub engine_queue_max: usize,
    /// Most events in one `GET /v1/events` page.
    pub events_page_max: usize,
    /// Events kept in memory for `/v1/events`.
    pub events_kept: usize,
    /// Token bucket of every key.
    pub rate_per_s: u32,
    pub rate_burst: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            body_bytes_max: 1024 * 1024,
            header_bytes_max: 16 * 1024,
            headers_max: 64,
            batch_operations_max: 100,
            lines_max: 1_000,
            request_timeout: Duration::from_secs(30),
            engine_queue_max: 16 * 1024,
            events_page_max: 1_000,
            events_kept: 100_000,
            rate_per_s: 1_000,
            rate_burst: 2_000,
        }
    }
}

/// A validated server configuration.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub master_key: Option<String>,
    pub shards: usize,
    pub sync: SyncMode,
    pub log_format: LogFormat,
    pub demo: bool,
    pub limits: HttpLimits,
}

/// Why the flags do not make a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--listen {0:?}: expected an address such as 127.0.0.1:8080")]
    Listen(String),
    #[error("--shards {0}: expected 1 to {max}", max = depot_engine::limits::SHARDS_MAX)]
    Shards(usize),
    #[error("--sync {0}")]
    Sync(String),
    #[error("--master-key: {0}")]
    MasterKey(&'static str),
    #[error("--rate-limit and --rate-burst must be at least 1")]
    Rate,
}

impl ServeArgs {
    /// Checks every flag and builds the configuration the server runs with.
    pub fn validate(self) -> Result<ServeConfig, ConfigError> {
        let listen = self
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| ConfigError::Listen(self.listen.clone()))?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = self
            .shards
            .unwrap_or(cores)
            .min(depot_engine::limits::SHARDS_MAX);
        if shards == 0 {
            return Err(ConfigError::Shards(0));
        }
        if let Some(s) = self
            .shards
            .filter(|&s| s > depot_engine::limits::SHARDS_MAX)
        {
            return Err(ConfigError::Shards(s));
        }
        let sync = self.sync.parse().map_err(ConfigError::Sync)?;
        if let Some(k) = &self.master_key {
            if k.len() < 16 {
                return Err(ConfigError::MasterKey("must be at least 16 characters"));
            }
            if !k.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::MasterKey(
                    "must be printable ASCII without spaces",
                ));
            }
        }
        if self.rate_limit == 0 || self.rate_burst == 0 {
            return Err(ConfigError::Rate);
        }
        Ok(ServeConfig {
            listen,
            data_dir: self.data_dir,
            master_key: self.master_key,
            shards,
            sync,
            log_format: self.log_format,
            demo: self.demo,
            limits: HttpLimits {
                rate_per_s: self.rate_limit,
                rate_burst: self.rate_burst,
                ..HttpLimits::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_modes_parse() {
        assert_eq!("always".parse(), Ok(SyncMode::Always));
        assert_eq!("none".parse(), Ok(SyncMode::None));
        assert_eq!(
            "interval=50".parse(),
            Ok(SyncMode::Interval(Duration::from_millis(50)))
        );
        for bad in ["", "interval=", "interval=0", "interval=x", "sometimes"] {
            assert!(bad.parse::<SyncMode>().is_err(), "{bad:?}");
        }
    }
}
