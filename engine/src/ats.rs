//! Available-to-sell: the documented, deterministic function of stock levels and rules
//! (`docs/allocation.md`, "ATS of channel c for SKU s"), with its explanation term by term.

use crate::config::{ChanIdx, LocIdx, TenantConfig};
use crate::ids::Sku;
use crate::outcome::Term;
use crate::rules::{Amount, Applicable, CompiledKind};

/// One (SKU, location) stock level. Quantities in units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Level {
    pub loc: LocIdx,
    pub on_hand: i64,
    pub reserved: i64,
    pub committed: i64,
    pub damaged: i64,
    pub quality_control: i64,
    pub safety_stock: i64,
    pub incoming: i64,
    /// Expected arrival of `incoming`, ms since the epoch; 0 when none was given.
    pub incoming_at: u64,
}

impl Level {
    pub fn new(loc: LocIdx) -> Self {
        Level {
            loc,
            ..Level::default()
        }
    }
    pub fn available(&self) -> i64 {
        self.on_hand
            - self.reserved
            - self.committed
            - self.damaged
            - self.quality_control
            - self.safety_stock
    }
    /// Units that could be sold if nothing were held: on_hand less the unsellable buckets.
    pub fn sellable(&self) -> i64 {
        self.on_hand - self.damaged - self.quality_control - self.safety_stock
    }
}

/// True when channel rules `app` let the channel sell from location `loc`.
pub fn eligible(app: &Applicable<'_>, loc: LocIdx) -> bool {
    app.eligibility.iter().all(|r| match &r.kind {
        CompiledKind::Eligibility { allow, deny } => {
            allow.as_ref().is_none_or(|a| a.contains(&loc)) && !deny.contains(&loc)
        }
        _ => true,
    })
}

fn rule_label(r: &crate::rules::CompiledRule) -> String {
    match &r.id {
        Some(id) => id.clone(),
        None => format!("rules[{}]", r.index),
    }
}

/// ATS of channel `c` for a (non-bundle) SKU. `held[d]` is the units of this SKU held or
/// committed by channel `d`. With `terms`, the explanation is pushed term by term.
pub fn ats(
    cfg: &TenantConfig,
    sku: &Sku,
    levels: &[Level],
    held: &[i64],
    c: ChanIdx,
    mut terms: Option<&mut Vec<Term>>,
) -> i64 {
    let mut push = |term: &str, quantity: i64, rule: Option<String>, detail: Option<String>| {
        if let Some(t) = terms.as_deref_mut() {
            t.push(Term {
                term: term.to_string(),
                quantity,
                rule,
                detail,
            });
        }
    };
    if levels.is_empty() {
        push(
            "no_stock_levels",
            0,
            None,
            Some("the SKU has no stock at any location".into()),
        );
        return 0;
    }
    let app = cfg.rules.applicable(sku, c);
    let (mut on_hand, mut reserved, mut committed, mut damaged, mut qc, mut safety) =
        (0, 0, 0, 0, 0, 0);
    let mut excluded = Vec::new();
    for l in levels {
        if !eligible(&app, l.loc) {
            excluded.push(l.loc);
            continue;
        }
        on_hand += l.on_hand;
        reserved += l.reserved;
        committed += l.committed;
        damaged += l.damaged;
        qc += l.quality_control;
        safety += l.safety_stock;
    }
    push("on_hand", on_hand, None, None);
    push(
        "reserved",
        -reserved,
        None,
        Some("held by reservations".into()),
    );
    push(
        "committed",
        -committed,
        None,
        Some("committed orders awaiting pick".into()),
    );
    push("damaged", -damaged, None, None);
    push("quality_control", -qc, None, None);
    push("safety_stock", -safety, None, None);
    if !excluded.is_empty() {
        let names: Vec<&str> = excluded
            .iter()
            .map(|&i| cfg.locations[i as usize].id.as_str())
            .collect();
        push(
            "ineligible_locations",
            0,
            None,
            Some(format!("not counted: {}", names.join(", "))),
        );
    }
    if let Some(l) = levels.iter().find(|l| l.available() < 0) {
        let loc = cfg.locations[l.loc as usize].id.as_str();
        let total = on_hand - reserved - committed - damaged - qc - safety;
        push(
            "oversell_incident",
            -total,
            None,
            Some(format!(
                "available is {} at {loc}; nothing is sold until it is positive",
                l.available()
            )),
        );
        return 0;
    }
    let mut ats = on_hand - reserved - committed - damaged - qc - safety;
    let sellable: i64 = levels.iter().map(Level::sellable).sum();
    for (&d, rule) in cfg.rules.fences(sku).iter() {
        if d == c {
            continue;
        }
        let CompiledKind::RingFence { amount, .. } = &rule.kind else {
            continue;
        };
        let size = match amount {
            Amount::Units(u) => *u,
            Amount::Percent(p) => sellable.max(0) * i64::from(*p) / 100,
        };
        let held_d = held.get(d as usize).copied().unwrap_or(0);
        let remaining = (size - held_d).max(0);
        if remaining > 0 {
            let ch = cfg.channels[d as usize].id.as_str();
            push(
                "ring_fence",
                -remaining,
                Some(rule_label(rule)),
                Some(format!("kept for {ch}: {size} less {held_d} it holds")),
            );
        }
        ats -= remaining;
    }
    if let Some(rule) = app.buffer {
        if let CompiledKind::Buffer(amount) = &rule.kind {
            let b = match amount {
                Amount::Units(u) => *u,
                Amount::Percent(p) => (ats.max(0) * i64::from(*p) + 99) / 100,
            };
            push("buffer", -b, Some(rule_label(rule)), None);
            ats -= b;
        }
    }
    if ats < 0 {
        push("floor_at_zero", -ats, None, None);
        ats = 0;
    }
    if let Some(rule) = app.cap {
        if let CompiledKind::Cap(units) = rule.kind {
            if ats > units {
                push(
                    "cap",
                    units - ats,
                    Some(rule_label(rule)),
                    Some(format!("advertise at most {units}")),
                );
                ats = units;
            }
        }
    }
    if let Some(rule) = app.scarcity {
        if let CompiledKind::Scarcity {
            threshold,
            min_priority,
        } = rule.kind
        {
            let total: i64 = levels.iter().map(Level::available).sum();
            let prio = cfg.channels[c as usize].priority;
            if total <= threshold && prio < min_priority && ats > 0 {
                push(
                    "scarcity",
                    -ats,
                    Some(rule_label(rule)),
                    Some(format!(
                        "{total} available <= {threshold}; priority {prio} < {min_priority}"
                    )),
                );
                ats = 0;
            }
        }
    }
    ats
}
