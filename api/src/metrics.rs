//! Prometheus metrics of the server, rendered by `GET /metrics` in the text exposition format
//! 0.0.4 ([`CONTENT_TYPE`]).
//!
//! Built on the `prometheus` crate: its `TextEncoder` writes exactly the 0.0.4 text format
//! the endpoint promises (the `prometheus-client` crate writes OpenMetrics, whose counters,
//! `# EOF` line and content type differ), and its metric types are lock-free atomics.
//!
//! Label values are bounded: a route must be a matched path template (`/v1/reservations/{id}`,
//! never a raw path), at most [`ROUTES_MAX`] distinct routes are kept (later ones count as
//! `other`), methods outside the standard ones count as `OTHER`.

use depot_wal::GroupCommitStats;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::HashSet;
use std::sync::Mutex;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Most distinct `route` label values; later routes are counted as `other`.
pub const ROUTES_MAX: usize = 128;

/// Request latency buckets, in seconds: 100 µs to 10 s.
/// Entries per group-commit batch.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Every metric of the server. Thread-safe; cheap to update from any handler.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    routes: Mutex<HashSet<String>>,
    queue_depth: IntGaugeVec,
    wal_syncs: IntCounter,
    wal_entries: IntCounter,
    wal_bytes: IntCounter,
    wal_durable_seq: IntGauge,
    wal_entries_per_sync: Gauge,
    wal_last: Mutex<Option<GroupCommitStats>>,
    wal_sync_seconds: Histogram,
    wal_batch_entries: Histogram,
    holds: IntGaugeVec,
    ats_pushes_pending: IntGauge,
    http_connections: IntGauge,
    wal_writable: IntGauge,
    snapshot_pause_seconds: Gauge,
    snapshot_seq: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("depot_http_requests_total", "HTTP requests answered."),
            &["route", "method", "status"],
        )
        .expect("a valid metric");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "depot_http_request_duration_seconds",
                "Time from request to answer.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "method"],
        )
        .expect("a valid metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "depot_engine_queue_depth",
                "Requests waiting in each engine queue.",
            ),
            &["queue"],
        )
        .expect("a valid metric");
        let holds = IntGaugeVec::new(
            Opts::new("depot_holds", "Reservations by state."),
            &["state"],
        )
        .expect("a valid metric");
        let m = Metrics {
            requests,
            request_seconds,
            routes: Mutex::new(HashSet::new()),
            queue_depth,
            wal_syncs: int_counter("depot_wal_syncs_total", "fdatasync calls of the log."),
            wal_entries: int_counter(
                "depot_wal_synced_entries_total",
                "Log entries made durable.",
            ),
            wal_bytes: int_counter(
                "depot_wal_synced_bytes_total",
                "Log bytes (records with their headers) made durable.",
            ),
            wal_durable_seq: int_gauge(
                "depot_wal_durable_seq",
                "Highest sequence number known durable.",
            ),
            wal_entries_per_sync: gauge(
                "depot_wal_entries_per_sync",
                "Average log entries per fdatasync since the previous observation (group \
                 commit batch size).",
            ),
            wal_last: Mutex::new(None),
            wal_sync_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "depot_wal_sync_duration_seconds",
                    "Time to write one group-commit batch and fdatasync it.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("a valid metric"),
            wal_batch_entries: Histogram::with_opts(
                HistogramOpts::new(
                    "depot_wal_batch_entries",
                    "Log entries per group-commit batch (per fdatasync).",
                )
                .buckets(BATCH_BUCKETS.to_vec()),
            )
            .expect("a valid metric"),
            holds,
            wal_writable: int_gauge(
                "depot_wal_writable",
                "1 while the log takes writes; 0 once it failed (a full disk: writes are refused \
                 until a restart).",
            ),
            http_connections: int_gauge(
                "depot_http_connections",
                "HTTP connections open (at most --max-connections).",
            ),
            ats_pushes_pending: int_gauge(
                "depot_ats_pushes_pending",
                "ATS changes waiting to be pushed to channels.",
            ),
            snapshot_pause_seconds: gauge(
                "depot_snapshot_last_pause_seconds",
                "How long the last snapshot paused writes.",
            ),
            snapshot_seq: int_gauge(
                "depot_snapshot_last_seq",
                "Sequence number of the last snapshot.",
            ),
            registry,
        };
        m.register_all();
        m
    }

    fn register_all(&self) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.requests.clone()),
            Box::new(self.request_seconds.clone()),
            Box::new(self.queue_depth.clone()),
            Box::new(self.wal_syncs.clone()),
            Box::new(self.wal_entries.clone()),
            Box::new(self.wal_bytes.clone()),
            Box::new(self.wal_durable_seq.clone()),
            Box::new(self.wal_entries_per_sync.clone()),
            Box::new(self.wal_sync_seconds.clone()),
            Box::new(self.wal_batch_entries.clone()),
            Box::new(self.holds.clone()),
            Box::new(self.ats_pushes_pending.clone()),
            Box::new(self.http_connections.clone()),
            Box::new(self.wal_writable.clone()),
            Box::new(self.snapshot_pause_seconds.clone()),
            Box::new(self.snapshot_seq.clone()),
        ];
        for c in collectors {
            // Names are constants of this file and distinct: a clash is a bug here.
            self.registry.register(c).expect("distinct metric names");
        }
    }

    /// Counts one answered request. `route` is the matched path template
    /// (`/v1/reservations/{id}`), or something fixed like `unmatched` for a 404 on no route.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let route = self.bounded_route(route);
        let method = bounded_method(method);
        // The three digits of a valid status without formatting them (every request passes).
        let code = axum::http::StatusCode::from_u16(status).ok();
        let status: std::borrow::Cow<'_, str> = match &code {
            Some(s) => s.as_str().into(),
            None => status.to_string().into(),
        };
        self.requests
            .with_label_values(&[route, method, &status])
            .inc();
        if seconds.is_finite() && seconds >= 0.0 {
            self.request_seconds
                .with_label_values(&[route, method])
                .observe(seconds);
        }
    }

    fn bounded_route<'a>(&self, route: &'a str) -> &'a str {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if routes.contains(route) {
            return route;
        }
        if routes.len() >= ROUTES_MAX || route.len() > 256 {
            return "other";
        }
        routes.insert(route.to_string());
        route
    }

    /// The depth of each engine queue (label `queue` = its index); replaces the previous set.
    pub fn set_queue_depths(&self, depths: &[usize]) {
        self.queue_depth.reset();
        for (i, d) in depths.iter().enumerate() {
            self.queue_depth
                .with_label_values(&[i.to_string().as_str()])
                .set(clamp_i64(*d as u64));
        }
    }

    /// Records the group commit's cumulative figures: counters advance by the difference
    /// from the previous observation, and the batch size is the average over that interval.
    pub fn observe_group_commit(&self, stats: &GroupCommitStats) {
        let mut last = self.wal_last.lock().unwrap_or_else(|p| p.into_inner());
        let (syncs, entries, bytes) = match *last {
            // Figures going backwards mean a new journal: count it from zero.
            Some(l)
                if l.syncs <= stats.syncs
                    && l.entries <= stats.entries
                    && l.bytes <= stats.bytes =>
            {
                (
                    stats.syncs - l.syncs,
                    stats.entries - l.entries,
                    stats.bytes - l.bytes,
                )
            }
            _ => (stats.syncs, stats.entries, stats.bytes),
        };
        self.wal_syncs.inc_by(syncs);
        self.wal_entries.inc_by(entries);
        self.wal_bytes.inc_by(bytes);
        if syncs > 0 {
            self.wal_entries_per_sync.set(entries as f64 / syncs as f64);
        }
        self.wal_durable_seq.set(clamp_i64(stats.durable_seq));
        *last = Some(*stats);
    }

    /// One group-commit batch made durable: its write-and-fdatasync time and its entries.
    pub fn observe_sync(&self, took: std::time::Duration, entries: usize) {
        self.wal_sync_seconds.observe(took.as_secs_f64());
        self.wal_batch_entries.observe(entries as f64);
    }

    /// Reservations by state: held and unexpired, held past their expiry but not yet ticked,
    /// and committed.
    pub fn set_holds(&self, active: u64, expired: u64, committed: u64) {
        for (state, n) in [
            ("active", active),
            ("expired", expired),
            ("committed", committed),
        ] {
            self.holds.with_label_values(&[state]).set(clamp_i64(n));
        }
    }

    pub fn set_wal_writable(&self, writable: bool) {
        self.wal_writable.set(i64::from(writable));
    }

    /// One more (`1`) or one fewer (`-1`) HTTP connection open.
    pub fn add_http_connections(&self, n: i64) {
        self.http_connections.add(n);
    }

    pub fn set_ats_pushes_pending(&self, n: u64) {
        self.ats_pushes_pending.set(clamp_i64(n));
    }

    pub fn set_snapshot(&self, last_pause_seconds: f64, last_seq: u64) {
        if last_pause_seconds.is_finite() {
            self.snapshot_pause_seconds.set(last_pause_seconds);
        }
        self.snapshot_seq.set(clamp_i64(last_seq));
    }

    /// Every metric in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# depot: encoding the metrics failed: {e}\n"))
    }
}

fn int_counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("a valid metric")
}

fn int_gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("a valid metric")
}

fn gauge(name: &str, help: &str) -> Gauge {
    Gauge::new(name, help).expect("a valid metric")
}

fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn bounded_method(method: &str) -> &'static str {
    const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    METHODS
        .iter()
        .find(|m| m.eq_ignore_ascii_case(method))
        .copied()
        .unwrap_or("OTHER")
}
