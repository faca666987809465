//! What a run measured: per-channel outcomes (orders, stockouts, units sold, holds expired,
//! picks, returns), latency percentiles (HDR histograms) and throughput over time windows.
//! Fed one command at a time by generation and replay alike.

use depot_engine::{Command, Event, EventKind, Outcome, Refusal, ReservationId, Response, TimeMs};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;

/// One channel's figures.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ChannelStats {
    pub channel: String,
    /// Reservation requests (orders or carts) sent to depot.
    pub orders: u64,
    pub units_requested: i64,
    /// Reservations granted (held) and their units.
    pub orders_held: u64,
    pub units_held: i64,
    /// Reservations refused for insufficient stock.
    pub refused_no_stock: u64,
    /// Refused for any other reason.
    pub refused_other: u64,
    /// Of those, orders a lagging listing still showed in stock (a marketplace sale that must
    /// be cancelled there).
    pub lag_refusals: u64,
    /// Demand lost before it reached depot: the channel's listing showed the SKU sold out.
    pub listing_sold_out: u64,
    pub units_committed: i64,
    pub units_cancelled: i64,
    pub holds_expired: u64,
    pub units_expired: i64,
    pub holds_released: u64,
    pub units_shipped: i64,
    pub units_short_picked: i64,
    pub units_returned: i64,
    /// Commits of reservations that do not exist in this run (a what-if run refused the order).
    pub commits_lost: u64,
}

impl ChannelStats {
    /// Demand not served for lack of stock: shown sold out, or refused.
    pub fn stockouts(&self) -> u64 {
        self.refused_no_stock + self.listing_sold_out
    }
    /// Units sold and not cancelled.
    pub fn units_sold(&self) -> i64 {
        self.units_committed - self.units_cancelled
    }
    /// Units held over units requested.
    pub fn fill_rate(&self) -> f64 {
        ratio(self.units_held, self.units_requested)
    }
}

pub fn ratio(a: i64, b: i64) -> f64 {
    if b <= 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Figures of one time window of the run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Window {
    /// Offset of the window's start from the run's start, simulated seconds.
    pub start_s: f64,
    pub commands: u64,
    pub orders: u64,
    /// Demand shown sold out or refused for lack of stock.
    pub stockouts: u64,
    pub holds_expired: u64,
    /// Latency percentiles of the commands in the window, microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let us = |ns: u64| ns as f64 / 1_000.0;
    Percentiles {
        count: h.len(),
        p50_us: us(h.value_at_quantile(0.5)),
        p90_us: us(h.value_at_quantile(0.9)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
    }
}

/// Collects [`ChannelStats`], windows and latencies. See the module docs.
#[derive(Debug)]
pub struct Collector {
    start: TimeMs,
    window_ms: u64,
    channels: BTreeMap<String, ChannelStats>,
    /// Reservation id -> (channel, units held now).
    reservations: BTreeMap<ReservationId, (String, i64, i64)>,
    all: Histogram<u64>,
    windows: Vec<(Window, Histogram<u64>)>,
    pub commands: u64,
    pub units_supplied: i64,
    pub holds_expired: u64,
    pub last_now: TimeMs,
}

impl Collector {
    /// Windows of `window_ms` simulated milliseconds from `start`.
    pub fn new(start: TimeMs, window_ms: u64, channels: &[String]) -> Collector {
        Collector {
            start,
            window_ms: window_ms.max(1),
            channels: channels
                .iter()
                .map(|c| {
                    let s = ChannelStats {
                        channel: c.clone(),
                        ..Default::default()
                    };
                    (c.clone(), s)
                })
                .collect(),
            reservations: BTreeMap::new(),
            all: histogram(),
            windows: Vec::new(),
            commands: 0,
            units_supplied: 0,
            holds_expired: 0,
            last_now: start,
        }
    }

    fn window(&mut self, now: TimeMs) -> &mut (Window, Histogram<u64>) {
        let i = (now.saturating_sub(self.start) / self.window_ms) as usize;
        while self.windows.len() <= i {
            let start_s = (self.windows.len() as u64 * self.window_ms) as f64 / 1000.0;
            self.windows.push((
                Window {
                    start_s,
                    ..Default::default()
                },
                histogram(),
            ));
        }
        &mut self.windows[i]
    }

    fn channel(&mut self, name: &str) -> &mut ChannelStats {
        self.channels
            .entry(name.to_string())
            .or_insert_with(|| ChannelStats {
                channel: name.to_string(),
                ..Default::default()
            })
    }

    /// Counts a demand a lagging listing turned away before it reached depot.
    pub fn listing_sold_out(&mut self, channel: &str, now: TimeMs) {
        self.window(now).0.stockouts += 1;
        self.channel(channel).listing_sold_out += 1;
    }

    /// Records one command: its answer, its events, and how long it took (`latency_ns`, wall
    /// time; `None` when not measured).
    pub fn record(
        &mut self,
        command: &Command,
        response: &Response,
        events: &[Event],
        now: TimeMs,
        latency_ns: Option<u64>,
        lagging: bool,
    ) {
        self.commands += 1;
        self.last_now = self.last_now.max(now);
        if let Some(ns) = latency_ns {
            let ns = ns.clamp(1, 3_600_000_000_000);
            let _ = self.all.record(ns);
            let _ = self.window(now).1.record(ns);
        }
        self.window(now).0.commands += 1;
        match command {
            Command::Reserve { channel, lines, .. } => {
                let units: i64 = lines.iter().map(|l| l.quantity).sum();
                self.window(now).0.orders += 1;
                let stockout = matches!(
                    response.outcome,
                    Outcome::Refused(Refusal::InsufficientStock { .. })
                );
                if stockout {
                    self.window(now).0.stockouts += 1;
                }
                let held = response.outcome.reservation().map(|r| {
                    let units: i64 = r.lines.iter().map(|l| l.quantity).sum();
                    (r.id, units)
                });
                let c = self.channel(channel.as_str());
                c.orders += 1;
                c.units_requested += units;
                match (&held, stockout) {
                    (Some((_, u)), _) => {
                        c.orders_held += 1;
                        c.units_held += u;
                    }
                    (None, true) => {
                        c.refused_no_stock += 1;
                        if lagging {
                            c.lag_refusals += 1;
                        }
                    }
                    (None, false) => c.refused_other += 1,
                }
                if let Some((id, u)) = held {
                    self.reservations.insert(id, (channel.to_string(), u, 0));
                }
            }
            Command::Receive { quantity, .. } if response.outcome.is_ok() => {
                self.units_supplied += quantity;
            }
            Command::Commit { id, .. } => {
                if matches!(response.outcome, Outcome::Refused(Refusal::NotFound { .. })) {
                    if let Some((ch, _, _)) = self.reservations.get(id).cloned() {
                        self.channel(&ch).commits_lost += 1;
                    }
                }
            }
            _ => {}
        }
        for e in events {
            self.event(e, now);
        }
    }

    /// Records a command whose answer is only known as "ok" and the units granted (HTTP).
    pub fn record_http(
        &mut self,
        command: &Command,
        ok: bool,
        stockout: bool,
        units: i64,
        now: TimeMs,
        latency_ns: u64,
    ) {
        self.commands += 1;
        self.last_now = self.last_now.max(now);
        let ns = latency_ns.clamp(1, 3_600_000_000_000);
        let _ = self.all.record(ns);
        let _ = self.window(now).1.record(ns);
        self.window(now).0.commands += 1;
        match command {
            Command::Reserve { channel, lines, .. } => {
                self.window(now).0.orders += 1;
                if stockout {
                    self.window(now).0.stockouts += 1;
                }
                let c = self.channel(channel.as_str());
                c.orders += 1;
                c.units_requested += lines.iter().map(|l| l.quantity).sum::<i64>();
                if ok {
                    c.orders_held += 1;
                    c.units_held += units;
                } else if stockout {
                    c.refused_no_stock += 1;
                } else {
                    c.refused_other += 1;
                }
            }
            Command::Receive { quantity, .. } if ok => self.units_supplied += quantity,
            _ => {}
        }
    }

    /// Credits committed units to a channel (HTTP replay, where there are no events).
    pub fn committed_http(&mut self, channel: &str, units: i64) {
        self.channel(channel).units_committed += units;
    }

    fn event(&mut self, e: &Event, now: TimeMs) {
        let chan = |s: &Self, id: &ReservationId| s.reservations.get(id).map(|r| r.0.clone());
        match &e.kind {
            EventKind::ReservationCommitted { id, lines } => {
                let units: i64 = lines.iter().map(|l| l.quantity).sum();
                if let Some(ch) = chan(self, id) {
                    self.channel(&ch).units_committed += units;
                    if let Some(r) = self.reservations.get_mut(id) {
                        r.2 = units;
                    }
                }
            }
            EventKind::ReservationCancelled { id } => {
                if let Some((ch, _, committed)) = self.reservations.get(id).cloned() {
                    self.channel(&ch).units_cancelled += committed;
                }
            }
            EventKind::ReservationExpired { id } => {
                self.holds_expired += 1;
                self.window(now).0.holds_expired += 1;
                if let Some((ch, held, _)) = self.reservations.get(id).cloned() {
                    let c = self.channel(&ch);
                    c.holds_expired += 1;
                    c.units_expired += held;
                }
            }
            EventKind::ReservationReleased { id } => {
                if let Some(ch) = chan(self, id) {
                    self.channel(&ch).holds_released += 1;
                }
            }
            EventKind::Fulfilled { id, quantity, .. } => {
                if let Some(ch) = chan(self, id) {
                    self.channel(&ch).units_shipped += quantity;
                }
            }
            EventKind::Discrepancy { id, missing, .. } => {
                if let Some(ch) = chan(self, id) {
                    self.channel(&ch).units_short_picked += missing;
                }
            }
            EventKind::Returned { id, quantity, .. } => {
                if let Some(ch) = chan(self, id) {
                    self.channel(&ch).units_returned += quantity;
                }
            }
            _ => {}
        }
    }

    pub fn channels(&self) -> Vec<ChannelStats> {
        self.channels.values().cloned().collect()
    }

    pub fn latency(&self) -> Percentiles {
        percentiles(&self.all)
    }

    pub fn windows(&self) -> Vec<Window> {
        self.windows
            .iter()
            .map(|(w, h)| {
                let p = percentiles(h);
                Window {
                    p50_us: p.p50_us,
                    p99_us: p.p99_us,
                    p999_us: p.p999_us,
                    ..w.clone()
                }
            })
            .collect()
    }

    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    pub fn start(&self) -> TimeMs {
        self.start
    }
}

/// A window length giving about 60 windows over `duration_ms`, at least one simulated second.
pub fn window_for(duration_ms: u64) -> u64 {
    let w = duration_ms / 60;
    // Round to a whole number of seconds (minutes above ten minutes) for readable axes.
    if w >= 600_000 {
        w / 60_000 * 60_000
    } else {
        (w / 1_000).max(1) * 1_000
    }
}
