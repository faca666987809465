//! The invariants checked after every step of a simulation, on the engine's own views
//! (`GetStock`), mirroring the checks of the reference-model test (`tests/tests/model.rs`):
//!
//! - `available = on_hand - reserved - committed - damaged - quality_control - safety_stock`;
//! - never oversold: available never goes below `min(previous, 0)` except by a physical count
//!   (`set`), i.e. `on_hand >= reserved + committed + ...` unless a count said otherwise;
//! - what channels hold (reserved + committed) never exceeds the sellable stock, unless a
//!   count made a level negative;
//! - every channel's ATS is >= 0, is 0 for every channel while a level is negative, never
//!   exceeds the available units of the locations its eligibility rules allow, respects a
//!   cap and a scarcity rule when exactly one of each applies, and a bundle's ATS is the
//!   minimum over its components.

use depot_engine::outcome::StockView;
use depot_engine::rules::Rule;
use depot_engine::{
    ChannelId, Command, Event, EventKind, LocationId, Machine, Outcome, Reply, Request,
    RuleDocument, RuleKind, Sku, TenantId, TimeMs,
};
use std::collections::{BTreeMap, BTreeSet};

/// What the checker knows of a tenant's configuration (from the commands it saw succeed).
#[derive(Debug, Clone, Default)]
struct TenantView {
    rules: RuleDocument,
    priorities: BTreeMap<ChannelId, i32>,
}

/// Checks the invariants on a [`Machine`] as commands go by. See the module docs.
#[derive(Debug, Default)]
pub struct Checker {
    tenants: BTreeMap<TenantId, TenantView>,
    /// Available per (tenant, SKU, location) at the last check.
    prev: BTreeMap<(TenantId, Sku, LocationId), i64>,
    /// Violations found (the first 100 kept with their text).
    pub violations: Vec<String>,
    pub violation_count: u64,
    pub checks: u64,
}

const KEPT: usize = 100;

impl Checker {
    pub fn new() -> Checker {
        Checker::default()
    }

    fn violation(&mut self, text: String) {
        self.violation_count += 1;
        if self.violations.len() < KEPT {
            self.violations.push(text);
        }
    }

    /// Notes configuration the checks need (rules, channel priorities) from a command that
    /// succeeded.
    pub fn observe(&mut self, request: &Request, outcome: &Outcome) {
        if !outcome.is_ok() {
            return;
        }
        let t = self.tenants.entry(request.tenant.clone()).or_default();
        match &request.command {
            Command::PutRules { document } => t.rules = document.clone(),
            Command::PutChannel {
                channel, priority, ..
            } => {
                t.priorities.insert(channel.clone(), *priority);
            }
            _ => {}
        }
    }

    /// Forgets the previous levels (after a recovery the state is another machine's).
    pub fn reset_levels(&mut self) {
        self.prev.clear();
    }

    /// Records the current levels of `skus` as the baseline of the next check, without checking
    /// (after a recovery: the recovered machine may carry a count's negative level).
    pub fn baseline(
        &mut self,
        machine: &mut Machine,
        tenant: &TenantId,
        skus: &BTreeSet<Sku>,
        now: TimeMs,
    ) {
        for sku in skus {
            if let Some(view) = stock(machine, tenant, sku, now) {
                for lv in &view.locations {
                    self.prev.insert(
                        (tenant.clone(), sku.clone(), lv.location.clone()),
                        lv.available,
                    );
                }
            }
        }
    }

    /// Checks every SKU in `skus` of `tenant` after `request` ran at `now`. Returns the number
    /// of new violations; each is described with `context`.
    pub fn check(
        &mut self,
        machine: &mut Machine,
        tenant: &TenantId,
        skus: &BTreeSet<Sku>,
        request: &Request,
        now: TimeMs,
        context: &str,
    ) -> u64 {
        let before = self.violation_count;
        let counted = match &request.command {
            Command::Set { sku, location, .. } if request.tenant == *tenant => {
                Some((sku.clone(), location.clone()))
            }
            _ => None,
        };
        for sku in skus {
            let Some(view) = stock(machine, tenant, sku, now) else {
                continue;
            };
            self.checks += 1;
            if view.components.is_empty() {
                self.check_levels(tenant, &view, counted.as_ref(), context);
            } else {
                self.check_bundle(machine, tenant, &view, now, context);
            }
        }
        self.violation_count - before
    }

    fn check_levels(
        &mut self,
        tenant: &TenantId,
        view: &StockView,
        counted: Option<&(Sku, LocationId)>,
        context: &str,
    ) {
        let s = &view.sku;
        let (mut held, mut sellable, mut any_negative) = (0i64, 0i64, false);
        let mut found = Vec::new();
        for lv in &view.locations {
            let formula = lv.on_hand
                - lv.reserved
                - lv.committed
                - lv.damaged
                - lv.quality_control
                - lv.safety_stock;
            if lv.available != formula {
                found.push(format!(
                    "{s} at {}: available {} but on_hand - reserved - committed - damaged - \
                     quality_control - safety_stock = {formula}",
                    lv.location, lv.available
                ));
            }
            let key = (tenant.clone(), s.clone(), lv.location.clone());
            let prev = self.prev.get(&key).copied().unwrap_or(0);
            let by_count = counted == Some(&(s.clone(), lv.location.clone()));
            if !by_count && lv.available < prev.min(0) {
                found.push(format!(
                    "oversold: {s} at {}: available went from {prev} to {} (on_hand {}, reserved \
                     {}, committed {}) without a count",
                    lv.location, lv.available, lv.on_hand, lv.reserved, lv.committed
                ));
            }
            // on_hand itself may go below zero after a count: a WMS may still ship units
            // committed before the count emptied the location (available does not drop).
            if lv.reserved < 0 || lv.committed < 0 {
                found.push(format!(
                    "{s} at {}: a negative quantity: {lv:?}",
                    lv.location
                ));
            }
            self.prev.insert(key, lv.available);
            any_negative |= lv.available < 0;
            held += lv.reserved + lv.committed;
            sellable += lv.on_hand - lv.damaged - lv.quality_control - lv.safety_stock;
        }
        if !any_negative && held > sellable {
            found.push(format!(
                "oversold: {s}: channels hold {held} units of {sellable} sellable"
            ));
        }
        let tv = self.tenants.get(tenant).cloned().unwrap_or_default();
        let total_available: i64 = view.locations.iter().map(|lv| lv.available).sum();
        for ats in &view.channels {
            let a = ats.available_to_sell;
            let c = &ats.channel;
            if a < 0 {
                found.push(format!("{s} on {c}: negative ATS {a}"));
            }
            if any_negative && a != 0 {
                found.push(format!(
                    "{s} on {c}: ATS {a} while a level is negative (incident)"
                ));
            }
            let pool: i64 = view
                .locations
                .iter()
                .filter(|lv| eligible(&tv.rules.rules, s, c, &lv.location))
                .map(|lv| lv.available)
                .sum();
            if a > pool.max(0) {
                found.push(format!(
                    "oversold: {s} on {c}: ATS {a} above the {pool} units available at its \
                     eligible locations"
                ));
            }
            let matching = |f: fn(&RuleKind) -> bool| -> Vec<&Rule> {
                tv.rules
                    .rules
                    .iter()
                    .filter(|r| f(&r.kind) && rule_matches(r, s, c))
                    .collect()
            };
            if let [rule] = matching(|k| matches!(k, RuleKind::Cap { .. }))[..] {
                if let RuleKind::Cap { units } = rule.kind {
                    if a > units {
                        found.push(format!("{s} on {c}: ATS {a} above its cap of {units}"));
                    }
                }
            }
            if let [rule] = matching(|k| matches!(k, RuleKind::Scarcity { .. }))[..] {
                if let RuleKind::Scarcity {
                    threshold,
                    min_priority,
                } = rule.kind
                {
                    let priority = tv.priorities.get(c).copied().unwrap_or(0);
                    if total_available <= threshold && priority < min_priority && a != 0 {
                        found.push(format!(
                            "{s} on {c}: ATS {a} under scarcity (available {total_available} <= \
                             {threshold}, priority {priority} < {min_priority})"
                        ));
                    }
                }
            }
        }
        for f in found {
            self.violation(format!("{context}: {f}"));
        }
    }

    fn check_bundle(
        &mut self,
        machine: &mut Machine,
        tenant: &TenantId,
        view: &StockView,
        now: TimeMs,
        context: &str,
    ) {
        let components: Vec<(i64, StockView)> = view
            .components
            .iter()
            .filter_map(|k| stock(machine, tenant, &k.sku, now).map(|v| (k.quantity, v)))
            .collect();
        for ats in &view.channels {
            let least = components
                .iter()
                .map(|(q, v)| {
                    v.channels
                        .iter()
                        .find(|x| x.channel == ats.channel)
                        .map_or(0, |x| x.available_to_sell)
                        / q.max(&1)
                })
                .min()
                .unwrap_or(0);
            if ats.available_to_sell != least {
                self.violation(format!(
                    "{context}: bundle {} on {}: ATS {} but its components allow {least}",
                    view.sku, ats.channel, ats.available_to_sell
                ));
            }
        }
    }
}

/// A SKU's stock view, read from the machine (a read: not logged, changes nothing).
pub fn stock(
    machine: &mut Machine,
    tenant: &TenantId,
    sku: &Sku,
    now: TimeMs,
) -> Option<StockView> {
    let req = Request {
        tenant: tenant.clone(),
        key_id: "sim-check".into(),
        idempotency_key: None,
        command: Command::GetStock { sku: sku.clone() },
    };
    match machine.execute(&req, now).0.outcome {
        Outcome::Ok(Reply::Stock(v)) => Some(v),
        _ => None,
    }
}

/// Whether `rule` targets `sku` and `channel`.
pub fn rule_matches(rule: &Rule, sku: &Sku, channel: &ChannelId) -> bool {
    let sku_ok = match (&rule.skus, &rule.sku_prefix) {
        (Some(list), _) => list.contains(sku),
        (None, Some(p)) => sku.as_str().starts_with(p.as_str()),
        (None, None) => true,
    };
    let channel_ok = match (&rule.channels, &rule.except_channels) {
        (Some(list), _) => list.contains(channel),
        (None, Some(except)) => !except.contains(channel),
        (None, None) => true,
    };
    sku_ok && channel_ok
}

/// Whether every matching eligibility rule lets `channel` sell `sku` from `location`.
pub fn eligible(rules: &[Rule], sku: &Sku, channel: &ChannelId, location: &LocationId) -> bool {
    rules
        .iter()
        .filter(|r| rule_matches(r, sku, channel))
        .all(|r| match &r.kind {
            RuleKind::Eligibility {
                locations,
                deny_locations,
            } => {
                locations.as_ref().is_none_or(|l| l.contains(location))
                    && !deny_locations
                        .as_ref()
                        .is_some_and(|d| d.contains(location))
            }
            _ => true,
        })
}

/// The SKUs a command and its events touched (whose levels or ATS may have changed).
pub fn touched_skus(command: &Command, events: &[Event]) -> BTreeSet<Sku> {
    let mut out = BTreeSet::new();
    match command {
        Command::Receive { sku, .. }
        | Command::Expect { sku, .. }
        | Command::Adjust { sku, .. }
        | Command::Set { sku, .. }
        | Command::Move { sku, .. }
        | Command::Transfer { sku, .. }
        | Command::Return { sku, .. } => {
            out.insert(sku.clone());
        }
        Command::Reserve { lines, .. } => out.extend(lines.iter().map(|l| l.sku.clone())),
        _ => {}
    }
    for e in events {
        match &e.kind {
            EventKind::StockChanged { sku, .. }
            | EventKind::Fulfilled { sku, .. }
            | EventKind::Discrepancy { sku, .. }
            | EventKind::Reallocated { sku, .. }
            | EventKind::Backordered { sku, .. }
            | EventKind::Returned { sku, .. }
            | EventKind::OversellIncident { sku, .. } => {
                out.insert(sku.clone());
            }
            EventKind::ReservationHeld { lines, .. }
            | EventKind::ReservationCommitted { lines, .. } => {
                for l in lines {
                    out.insert(l.sku.clone());
                    out.extend(l.components.iter().map(|c| c.sku.clone()));
                }
            }
            _ => {}
        }
    }
    out
}
