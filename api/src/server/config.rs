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
    /// A batch of writes touching several shards, of whose tasks at least this percentage
    /// belong to reservations spanning shards, runs whole on one shard thread instead of
    /// meeting at a rendezvous per reservation (above 100: never). Pays on few cores; on
    /// many, where one thread running a whole batch leaves cores idle, turn it off.
    #[arg(long, env = "DEPOT_COMBINE_PERCENT", default_value_t = depot_engine::Limits::default().combine_percent)]
    pub combine_percent: u32,
    /// Most writes of a batch the engine's writer runs itself, under the shards' locks, instead
    /// of handing them to the shard threads (0: never). Default: every batch on one or two
    /// cores, where the shard threads would only take turns with the writer for the same
    /// cores; 32 on more, where the shard threads run a large batch in parallel.
    #[arg(long, env = "DEPOT_INLINE_TASKS")]
    pub inline_tasks: Option<usize>,
    /// Threads serving HTTP connections (default: one per two cores, at least one: they share
    /// the cores with the shard threads and the log's threads).
    #[arg(long, env = "DEPOT_HTTP_THREADS")]
    pub http_threads: Option<usize>,
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
    /// Take a background snapshot after this many writes (0: not by count).
    #[arg(long, env = "DEPOT_SNAPSHOT_EVERY_WRITES", default_value_t = 1_000_000)]
    pub snapshot_every_writes: u64,
    /// ... once the log written since the last snapshot is at least this percentage of that
    /// snapshot's size (0: the count alone). Keeps a large state from being snapshotted over
    /// and over under load.
    #[arg(long, env = "DEPOT_SNAPSHOT_LOG_GROWTH", default_value_t = 100)]
    pub snapshot_log_growth: u32,
    /// Take a background snapshot this long after the last one, if anything was written
    /// (`30m`, `1h`, `off`).
    #[arg(long, env = "DEPOT_SNAPSHOT_EVERY", default_value = "1h")]
    pub snapshot_every: String,
    /// Keep log segments covered by a snapshot this long after they were closed, then delete
    /// them (or move them to --log-archive-dir): `7days`, `12h`, or `forever` (the default:
    /// the log is the audit trail).
    #[arg(long, env = "DEPOT_LOG_RETENTION", default_value = "forever")]
    pub log_retention: String,
    /// With --log-retention, move expired segments here instead of deleting them.
    #[arg(long, env = "DEPOT_LOG_ARCHIVE_DIR")]
    pub log_archive_dir: Option<PathBuf>,
    /// Most HTTP connections open at once; more wait in the listen backlog until one closes.
    #[arg(long, env = "DEPOT_MAX_CONNECTIONS", default_value_t = 4_096)]
    pub max_connections: usize,
    /// Time a client has to send a request's headers once its connection is ready for one
    /// (`30s`, `500ms`): a slower client, or a keep-alive connection idle this long, is
    /// disconnected.
    #[arg(long, env = "DEPOT_HEADER_TIMEOUT", default_value = "30s")]
    pub header_timeout: String,
    /// MiB of memory to write once at start and keep for the state to grow into (0: none).
    /// New memory costs a page fault and the kernel's clearing of each page, on the thread that
    /// first writes it: the engine's writing thread, as the state grows. Pretouched memory is
    /// kept by the allocator (depot restarts itself once with `MIMALLOC_PURGE_DELAY=-1` unless
    /// that variable is set), so the resident size starts at about this much.
    #[arg(long, env = "DEPOT_PRETOUCH_MEMORY_MIB", default_value_t = 0)]
    pub pretouch_memory_mib: u64,
}

/// Most MiB `--pretouch-memory-mib` accepts (1 TiB).
pub const PRETOUCH_MIB_MAX: u64 = 1 << 20;

/// Most connections `--max-connections` accepts.
pub const MAX_CONNECTIONS_MAX: usize = 1_000_000;

/// Largest `--snapshot-log-growth`, in percent (a log a hundred times the state's size).
pub const LOG_GROWTH_MAX: u32 = 10_000;

/// When the server snapshots and what it keeps of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSettings {
    pub every_writes: Option<u64>,
    /// Percent of the last snapshot's size; `None`: the count alone.
    pub log_growth_percent: Option<u32>,
    pub every: Option<Duration>,
    /// `None`: keep every segment.
    pub retention: Option<Duration>,
    pub archive_dir: Option<PathBuf>,
}

/// `off` / `forever` or a duration such as `90s`, `30m`, `7days`.
fn parse_span(flag: &'static str, s: &str, none: &str) -> Result<Option<Duration>, ConfigError> {
    if s == none {
        return Ok(None);
    }
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(Some(d)),
        _ => Err(ConfigError::Span(flag, s.to_string(), none.to_string())),
    }
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

/// Most HTTP worker threads `--http-threads` accepts.
pub const HTTP_THREADS_MAX: usize = 256;

/// A validated server configuration.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub master_key: Option<String>,
    pub shards: usize,
    /// See `--combine-percent` ([`depot_engine::Limits::combine_percent`]).
    pub combine_percent: u32,
    /// See `--inline-tasks` ([`depot_engine::Limits::inline_tasks_max`]).
    pub inline_tasks: usize,
    pub http_threads: usize,
    pub sync: SyncMode,
    pub log_format: LogFormat,
    pub demo: bool,
    pub limits: HttpLimits,
    pub snapshots: SnapshotSettings,
    pub connections: super::listen::ConnectionLimits,
    /// See `--pretouch-memory-mib` ([`crate::pretouch`]).
    pub pretouch_mib: u64,
}

/// Why the flags do not make a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--listen {0:?}: expected an address such as 127.0.0.1:8080")]
    Listen(String),
    #[error("--shards {0}: expected 1 to {max}", max = depot_engine::limits::SHARDS_MAX)]
    Shards(usize),
    #[error("--http-threads {0}: expected 1 to {HTTP_THREADS_MAX}")]
    HttpThreads(usize),
    #[error("--sync {0}")]
    Sync(String),
    #[error("--master-key: {0}")]
    MasterKey(&'static str),
    #[error("--rate-limit and --rate-burst must be at least 1")]
    Rate,
    #[error("{0} {1:?}: expected a duration such as 30m, 12h or 7days, or {2}")]
    Span(&'static str, String, String),
    #[error("--snapshot-log-growth {0}: expected a percentage from 0 to {LOG_GROWTH_MAX}")]
    LogGrowth(u32),
    #[error("--log-archive-dir needs --log-retention (nothing is archived while the log is kept forever)")]
    ArchiveWithoutRetention,
    #[error("--max-connections {0}: expected 1 to {MAX_CONNECTIONS_MAX}")]
    MaxConnections(usize),
    #[error("--header-timeout {0:?}: expected a duration from 100ms to 1h, such as 30s")]
    HeaderTimeout(String),
    #[error("--pretouch-memory-mib {0}: expected 0 to {PRETOUCH_MIB_MAX}")]
    Pretouch(u64),
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
        let inline_tasks = self.inline_tasks.unwrap_or(if cores <= 2 {
            usize::MAX
        } else {
            depot_engine::Limits::default().inline_tasks_max
        });
        let http_threads = self.http_threads.unwrap_or((cores / 2).max(1));
        if !(1..=HTTP_THREADS_MAX).contains(&http_threads) {
            return Err(ConfigError::HttpThreads(http_threads));
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
        let retention = parse_span("--log-retention", &self.log_retention, "forever")?;
        if retention.is_none() && self.log_archive_dir.is_some() {
            return Err(ConfigError::ArchiveWithoutRetention);
        }
        if self.snapshot_log_growth > LOG_GROWTH_MAX {
            return Err(ConfigError::LogGrowth(self.snapshot_log_growth));
        }
        if self.pretouch_memory_mib > PRETOUCH_MIB_MAX {
            return Err(ConfigError::Pretouch(self.pretouch_memory_mib));
        }
        if !(1..=MAX_CONNECTIONS_MAX).contains(&self.max_connections) {
            return Err(ConfigError::MaxConnections(self.max_connections));
        }
        let header_timeout = humantime::parse_duration(&self.header_timeout)
            .ok()
            .filter(|d| (Duration::from_millis(100)..=Duration::from_secs(3600)).contains(d))
            .ok_or_else(|| ConfigError::HeaderTimeout(self.header_timeout.clone()))?;
        let snapshots = SnapshotSettings {
            every_writes: (self.snapshot_every_writes > 0).then_some(self.snapshot_every_writes),
            log_growth_percent: (self.snapshot_log_growth > 0).then_some(self.snapshot_log_growth),
            every: parse_span("--snapshot-every", &self.snapshot_every, "off")?,
            retention,
            archive_dir: self.log_archive_dir,
        };
        Ok(ServeConfig {
            listen,
            data_dir: self.data_dir,
            master_key: self.master_key,
            shards,
            combine_percent: self.combine_percent,
            inline_tasks,
            http_threads,
            sync,
            log_format: self.log_format,
            demo: self.demo,
            limits: HttpLimits {
                rate_per_s: self.rate_limit,
                rate_burst: self.rate_burst,
                ..HttpLimits::default()
            },
            snapshots,
            connections: super::listen::ConnectionLimits {
                max_connections: self.max_connections,
                header_timeout,
            },
            pretouch_mib: self.pretouch_memory_mib,
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

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn config(args: &[&str]) -> Result<ServeConfig, ConfigError> {
        use clap::Parser;
        let mut argv = vec!["depot"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .expect("flags parse")
            .serve
            .validate()
    }

    #[test]
    fn http_threads_default_to_half_the_cores_and_are_bounded() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(config(&[]).unwrap().http_threads, (cores / 2).max(1));
        assert_eq!(config(&["--http-threads", "3"]).unwrap().http_threads, 3);
        for bad in ["0", "257"] {
            let e = config(&["--http-threads", bad]).expect_err("refused");
            assert_eq!(
                e.to_string(),
                format!("--http-threads {bad}: expected 1 to 256")
            );
        }
    }

    #[test]
    fn inline_tasks_default_to_every_batch_on_two_cores_and_may_be_set() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let default = config(&[]).unwrap().inline_tasks;
        if cores <= 2 {
            assert_eq!(default, usize::MAX);
        } else {
            assert_eq!(default, depot_engine::Limits::default().inline_tasks_max);
        }
        assert_eq!(config(&["--inline-tasks", "0"]).unwrap().inline_tasks, 0);
        assert_eq!(config(&["--inline-tasks", "64"]).unwrap().inline_tasks, 64);
        use clap::Parser;
        for bad in ["-1", "all", ""] {
            assert!(
                Cli::try_parse_from(["depot", "--inline-tasks", bad]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn combine_percent_defaults_to_the_engines_and_may_turn_combining_off() {
        let default = depot_engine::Limits::default().combine_percent;
        assert_eq!(config(&[]).unwrap().combine_percent, default);
        assert_eq!(
            config(&["--combine-percent", "101"])
                .unwrap()
                .combine_percent,
            101
        );
        assert_eq!(
            config(&["--combine-percent", "0"]).unwrap().combine_percent,
            0
        );
        use clap::Parser;
        for bad in ["-1", "half", ""] {
            assert!(
                Cli::try_parse_from(["depot", "--combine-percent", bad]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn snapshot_and_retention_flags() {
        let c = config(&[]).unwrap();
        assert_eq!(
            c.snapshots,
            SnapshotSettings {
                every_writes: Some(1_000_000),
                log_growth_percent: Some(100),
                every: Some(Duration::from_secs(3600)),
                retention: None,
                archive_dir: None,
            }
        );
        let c = config(&[
            "--snapshot-every-writes",
            "0",
            "--snapshot-log-growth",
            "0",
            "--snapshot-every",
            "off",
            "--log-retention",
            "7days",
            "--log-archive-dir",
            "/srv/archive",
        ])
        .unwrap();
        assert_eq!(c.snapshots.every_writes, None);
        assert_eq!(c.snapshots.log_growth_percent, None);
        assert_eq!(c.snapshots.every, None);
        assert_eq!(c.snapshots.retention, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(c.snapshots.archive_dir, Some(PathBuf::from("/srv/archive")));
        let c = config(&["--snapshot-log-growth", "250"]).unwrap();
        assert_eq!(c.snapshots.log_growth_percent, Some(250));
        for bad in [
            &["--log-retention", "soon"][..],
            &["--log-retention", "0s"],
            &["--snapshot-every", "forever"],
            &["--snapshot-log-growth", "10001"],
            &["--log-archive-dir", "/srv/archive"],
        ] {
            let e = config(bad).expect_err("refused");
            assert!(e.to_string().starts_with("--"), "{bad:?}: {e}");
        }
    }
}
