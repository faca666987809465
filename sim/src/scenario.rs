//! Scenario files: the workload of `depot sim generate`, in TOML. Every field is documented in
//! `sim/scenarios/README.md`; [`Scenario::load`] refuses unknown fields and out-of-range values
//! with an error naming the field.

use depot_engine::{ChannelId, ChannelKind, LocationId, LocationKind, RuleDocument, Sku, TenantId};
use serde::Deserialize;
use std::path::Path;

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("scenario file {path}: field `{field}`: {message}")]
    Invalid {
        path: String,
        field: String,
        message: String,
    },
}

/// A whole scenario. See `sim/scenarios/README.md`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Drives every random choice: the same seed gives the same log, byte for byte.
    pub seed: u64,
    /// Simulated length of the run.
    pub duration_minutes: u64,
    /// Simulated time of the start, in ms since the Unix epoch.
    #[serde(default = "default_start")]
    pub start_unix_ms: u64,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    pub catalog: Catalog,
    pub locations: Vec<LocationSpec>,
    pub channels: Vec<ChannelSpec>,
    pub demand: Demand,
    #[serde(default)]
    pub wms: Wms,
    #[serde(default)]
    pub returns: Returns,
    #[serde(default)]
    pub replenishment: Option<Replenishment>,
    #[serde(default)]
    pub spikes: Vec<Spike>,
    /// The allocation-rule document (the body of `PUT /v1/allocation-rules`).
    #[serde(default)]
    pub allocation: RuleDocument,
    #[serde(default)]
    pub engine: EngineSpec,
}

fn default_start() -> u64 {
    // 2026-11-27T00:00:00Z, a Black Friday.
    1_795_737_600_000
}
fn default_tenant() -> String {
    "sim".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub skus: usize,
    #[serde(default = "default_skew")]
    pub zipf_skew: f64,
    #[serde(default = "default_prefix")]
    pub sku_prefix: String,
}
fn default_skew() -> f64 {
    1.1
}
fn default_prefix() -> String {
    "SKU-".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationSpec {
    pub id: String,
    #[serde(default = "default_location_kind")]
    pub kind: LocationKind,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// Units received into every SKU here at the start.
    pub stock_per_sku: i64,
}
fn default_location_kind() -> LocationKind {
    LocationKind::Warehouse
}

/// How a channel's reservations may be filled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fill {
    #[default]
    AllOrNothing,
    Partial,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    pub id: String,
    pub kind: ChannelKind,
    #[serde(default)]
    pub priority: i32,
    /// Relative share of the orders (shares are normalised over all channels).
    pub share: f64,
    /// How stale the channel's listing is: it learns the ATS only every this many seconds.
    #[serde(default)]
    pub sync_lag_seconds: u64,
    #[serde(default)]
    pub fill: Fill,
    #[serde(default)]
    pub ship_to_region: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demand {
    pub orders_per_minute: f64,
    #[serde(default = "one")]
    pub lines_min: usize,
    #[serde(default = "one")]
    pub lines_max: usize,
    #[serde(default = "one_i")]
    pub quantity_max: i64,
    #[serde(default = "default_ttl")]
    pub hold_ttl_seconds: u64,
    /// Share of carts never checked out: their holds expire.
    #[serde(default)]
    pub abandon_rate: f64,
    /// Share of carts released explicitly (emptied) instead of checked out.
    #[serde(default)]
    pub release_rate: f64,
    #[serde(default = "default_checkout_min")]
    pub checkout_seconds_min: u64,
    #[serde(default = "default_checkout_max")]
    pub checkout_seconds_max: u64,
    /// Share of committed orders cancelled before they are picked.
    #[serde(default)]
    pub cancel_rate: f64,
}
fn one() -> usize {
    1
}
fn one_i() -> i64 {
    1
}
fn default_ttl() -> u64 {
    900
}
fn default_checkout_min() -> u64 {
    30
}
fn default_checkout_max() -> u64 {
    600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wms {
    #[serde(default = "default_pick_min")]
    pub pick_delay_minutes_min: u64,
    #[serde(default = "default_pick_max")]
    pub pick_delay_minutes_max: u64,
    /// Share of picks that find one unit missing.
    #[serde(default)]
    pub short_pick_rate: f64,
}
fn default_pick_min() -> u64 {
    30
}
fn default_pick_max() -> u64 {
    240
}
impl Default for Wms {
    fn default() -> Self {
        Wms {
            pick_delay_minutes_min: default_pick_min(),
            pick_delay_minutes_max: default_pick_max(),
            short_pick_rate: 0.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Returns {
    /// Share of shipped orders of which one line comes back.
    #[serde(default)]
    pub rate: f64,
    #[serde(default = "default_return_min")]
    pub delay_minutes_min: u64,
    #[serde(default = "default_return_max")]
    pub delay_minutes_max: u64,
    /// Share of returns that come back damaged.
    #[serde(default)]
    pub damaged_rate: f64,
}
fn default_return_min() -> u64 {
    60
}
fn default_return_max() -> u64 {
    24 * 60
}
impl Default for Returns {
    fn default() -> Self {
        Returns {
            rate: 0.0,
            delay_minutes_min: default_return_min(),
            delay_minutes_max: default_return_max(),
            damaged_rate: 0.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replenishment {
    pub every_minutes: u64,
    /// A SKU at a location with fewer available units than this is replenished...
    pub below: i64,
    /// ...with this many units.
    pub units: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spike {
    #[serde(default)]
    pub name: Option<String>,
    pub start_minute: u64,
    pub duration_minutes: u64,
    /// The order rate is multiplied by this inside the window.
    pub multiplier: f64,
    /// Inside the window, orders go only to the this many most popular SKUs.
    #[serde(default)]
    pub top_skus: Option<usize>,
    /// Only these channels' orders are multiplied (all when absent).
    #[serde(default)]
    pub channels: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSpec {
    /// Shards of the engine (the state digest does not depend on it).
    #[serde(default = "default_shards")]
    pub shards: usize,
    /// The log is synced (group commit) once per this many simulated seconds, and at the end.
    #[serde(default = "default_sync")]
    pub sync_every_seconds: u64,
}
fn default_shards() -> usize {
    2
}
fn default_sync() -> u64 {
    60
}
impl Default for EngineSpec {
    fn default() -> Self {
        EngineSpec {
            shards: default_shards(),
            sync_every_seconds: default_sync(),
        }
    }
}

/// Largest catalogue a scenario may ask for (the setup receives every SKU at every location).
pub const SKUS_MAX: usize = 1_000_000;

impl Scenario {
    /// Reads, parses and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Scenario::parse(&text, &path.display().to_string())
    }

    /// Parses and validates scenario text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let invalid = |field: String, message: String| ScenarioError::Invalid {
            path: origin.to_string(),
            field,
            message,
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| invalid("(document)".into(), e.to_string().trim().to_string()))?;
        let scenario: Scenario = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            invalid(field, e.into_inner().to_string().trim().to_string())
        })?;
        scenario
            .validate()
            .map_err(|(field, message)| invalid(field, message))?;
        Ok(scenario)
    }

    /// Checks ranges and cross-field rules; the error is (field, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        fn err<T>(
            field: impl Into<String>,
            message: impl Into<String>,
        ) -> Result<T, (String, String)> {
            Err((field.into(), message.into()))
        }
        fn rate(field: &str, v: f64) -> Result<(), (String, String)> {
            if !(0.0..=1.0).contains(&v) {
                return err(field, format!("must be between 0 and 1, got {v}"));
            }
            Ok(())
        }
        if self.name.trim().is_empty() {
            return err("name", "must not be empty");
        }
        if self.duration_minutes == 0 || self.duration_minutes > 31 * 24 * 60 {
            return err("duration_minutes", "must be 1 to 44640 (31 days)");
        }
        if let Err(e) = TenantId::new(&self.tenant) {
            return err("tenant", format!("not a valid id: {e}"));
        }
        let c = &self.catalog;
        if c.skus == 0 || c.skus > SKUS_MAX {
            return err("catalog.skus", format!("must be 1 to {SKUS_MAX}"));
        }
        if !(0.0..=5.0).contains(&c.zipf_skew) {
            return err("catalog.zipf_skew", "must be between 0 (uniform) and 5");
        }
        if let Err(e) = Sku::new(&format!("{}{}", c.sku_prefix, c.skus)) {
            return err("catalog.sku_prefix", format!("makes invalid SKUs: {e}"));
        }
        if self.locations.is_empty() {
            return err("locations", "at least one location is needed");
        }
        for (i, l) in self.locations.iter().enumerate() {
            if let Err(e) = LocationId::new(&l.id) {
                return err(format!("locations[{i}].id"), format!("not a valid id: {e}"));
            }
            if self.locations[..i].iter().any(|o| o.id == l.id) {
                return err(
                    format!("locations[{i}].id"),
                    format!("{:?} appears twice", l.id),
                );
            }
            if !(0..=1_000_000_000).contains(&l.stock_per_sku) {
                return err(
                    format!("locations[{i}].stock_per_sku"),
                    "must be 0 to 1000000000",
                );
            }
        }
        if self.channels.is_empty() {
            return err("channels", "at least one channel is needed");
        }
        for (i, ch) in self.channels.iter().enumerate() {
            if let Err(e) = ChannelId::new(&ch.id) {
                return err(format!("channels[{i}].id"), format!("not a valid id: {e}"));
            }
            if self.channels[..i].iter().any(|o| o.id == ch.id) {
                return err(
                    format!("channels[{i}].id"),
                    format!("{:?} appears twice", ch.id),
                );
            }
            if !(ch.share.is_finite() && ch.share >= 0.0) {
                return err(format!("channels[{i}].share"), "must be a number >= 0");
            }
            if ch.sync_lag_seconds > 24 * 3600 {
                return err(
                    format!("channels[{i}].sync_lag_seconds"),
                    "must be at most 86400",
                );
            }
        }
        if self.channels.iter().map(|c| c.share).sum::<f64>() <= 0.0 {
            return err(
                "channels",
                "the shares add up to 0: no channel gets any order",
            );
        }
        let d = &self.demand;
        if !(d.orders_per_minute.is_finite() && (0.0..=1_000_000.0).contains(&d.orders_per_minute))
        {
            return err("demand.orders_per_minute", "must be 0 to 1000000");
        }
        if d.lines_min == 0 || d.lines_min > d.lines_max || d.lines_max > 100 {
            return err(
                "demand.lines_min",
                "need 1 <= lines_min <= lines_max <= 100",
            );
        }
        if d.lines_max > c.skus {
            return err(
                "demand.lines_max",
                "cannot exceed catalog.skus (lines are distinct SKUs)",
            );
        }
        if !(1..=1_000_000).contains(&d.quantity_max) {
            return err("demand.quantity_max", "must be 1 to 1000000");
        }
        if !(1..=30 * 24 * 3600).contains(&d.hold_ttl_seconds) {
            return err("demand.hold_ttl_seconds", "must be 1 to 2592000 (30 days)");
        }
        rate("demand.abandon_rate", d.abandon_rate)?;
        rate("demand.release_rate", d.release_rate)?;
        rate("demand.cancel_rate", d.cancel_rate)?;
        if d.abandon_rate + d.release_rate > 1.0 {
            return err(
                "demand.release_rate",
                "abandon_rate + release_rate must be at most 1",
            );
        }
        if d.checkout_seconds_min > d.checkout_seconds_max {
            return err(
                "demand.checkout_seconds_min",
                "must be <= checkout_seconds_max",
            );
        }
        if d.checkout_seconds_max >= d.hold_ttl_seconds {
            return err(
                "demand.checkout_seconds_max",
                "must be below hold_ttl_seconds (a checkout after the hold expired fails)",
            );
        }
        let w = &self.wms;
        if w.pick_delay_minutes_min > w.pick_delay_minutes_max {
            return err(
                "wms.pick_delay_minutes_min",
                "must be <= pick_delay_minutes_max",
            );
        }
        rate("wms.short_pick_rate", w.short_pick_rate)?;
        let r = &self.returns;
        rate("returns.rate", r.rate)?;
        rate("returns.damaged_rate", r.damaged_rate)?;
        if r.delay_minutes_min > r.delay_minutes_max {
            return err("returns.delay_minutes_min", "must be <= delay_minutes_max");
        }
        if let Some(p) = &self.replenishment {
            if p.every_minutes == 0 {
                return err("replenishment.every_minutes", "must be at least 1");
            }
            if !(1..=1_000_000_000).contains(&p.units) {
                return err("replenishment.units", "must be 1 to 1000000000");
            }
        }
        for (i, s) in self.spikes.iter().enumerate() {
            if !(s.multiplier.is_finite() && (0.0..=1_000.0).contains(&s.multiplier)) {
                return err(format!("spikes[{i}].multiplier"), "must be 0 to 1000");
            }
            if s.duration_minutes == 0 || s.start_minute >= self.duration_minutes {
                return err(
                    format!("spikes[{i}].start_minute"),
                    "the window must start inside the run and last at least a minute",
                );
            }
            if s.top_skus == Some(0) {
                return err(format!("spikes[{i}].top_skus"), "must be at least 1");
            }
            for (j, ch) in s.channels.iter().flatten().enumerate() {
                if !self.channels.iter().any(|c| &c.id == ch) {
                    return err(
                        format!("spikes[{i}].channels[{j}]"),
                        format!("unknown channel {ch:?}"),
                    );
                }
            }
        }
        if !(1..=depot_engine::limits::SHARDS_MAX).contains(&self.engine.shards) {
            return err("engine.shards", "must be 1 to 64");
        }
        if self.engine.sync_every_seconds == 0 {
            return err("engine.sync_every_seconds", "must be at least 1");
        }
        // Rough bound on the work: orders at the peak rate over the whole run.
        let peak = self
            .spikes
            .iter()
            .map(|s| s.multiplier)
            .fold(1.0f64, f64::max);
        if d.orders_per_minute * peak * self.duration_minutes as f64 > 50_000_000.0 {
            return err(
                "demand.orders_per_minute",
                "the run would generate more than 50 million orders",
            );
        }
        Ok(())
    }

    /// The SKU of rank `r` (1-based): `SKU-00001`, zero-padded to the catalogue's width.
    pub fn sku(&self, r: usize) -> Sku {
        let width = self.catalog.skus.to_string().len().max(5);
        Sku::new(&format!("{}{:0width$}", self.catalog.sku_prefix, r)).expect("validated prefix")
    }

    /// The order-rate multiplier of `channel` at simulated minute offset `minute`.
    pub fn multiplier(&self, channel: &str, minute: f64) -> (f64, Option<usize>) {
        let mut m = 1.0;
        let mut top = None;
        for s in &self.spikes {
            let inside = minute >= s.start_minute as f64
                && minute < (s.start_minute + s.duration_minutes) as f64;
            let applies = s
                .channels
                .as_ref()
                .is_none_or(|c| c.iter().any(|x| x == channel));
            if inside && applies {
                m *= s.multiplier;
                if let Some(t) = s.top_skus {
                    top = Some(top.map_or(t, |x: usize| x.min(t)));
                }
            }
        }
        (m, top)
    }
}
