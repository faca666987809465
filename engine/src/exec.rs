//! The execution protocol: `prepare` (read, per shard), `decide` (pure, over every shard's
//! preparation), `apply` (write, per shard) and `merge` (pure, over every shard's output).
//! `docs/allocation.md` is the specification this file implements.

use crate::ats::{self, Level};
use crate::command::{Bucket, FillPolicy};
use crate::config::{ChanIdx, LocIdx, TenantConfig};
use crate::ids::{ReservationId, Sku, TimeMs};
use crate::job::{
    loc_id, Decision, Finished, Granted, ItemPlan, ItemPrep, ItemReq, Job, JobKind, LineHeader,
    PartData, PartOut, PartPrep, Prep,
};
use crate::limits::LEVEL_MAX;
use crate::outcome::{
    AllocationView, Allocations, ChannelAts, EventKind, Explanation, ItemView, LevelView, LineView,
    Outcome, Refusal, Reply, ReservationState, ReservationView, Shortage, Shortages, StockView,
    Term,
};
use crate::rules::{CompiledRouting, OversellPolicy};
use crate::shard::{Alloc, Component, Lifecycle, Part, PartItem, PartSnapshot, ShardState, SkuRef};
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------------------------
// prepare

impl ShardState {
    /// Reads what the decision needs from this shard. Changes nothing.
    pub fn prepare(&self, job: &Job) -> Prep {
        match &job.kind {
            JobKind::Reserve { channel, items, .. } => self.prepare_reserve(job, *channel, items),
            JobKind::Extend { id, .. }
            | JobKind::Commit { id, .. }
            | JobKind::Release { id }
            | JobKind::Cancel { id } => Prep::Part(self.part_prep(job, *id)),
            JobKind::Fulfil { id, lines } => Prep::Part(self.part_prep(job, *id).map(|mut p| {
                let part = &self.parts[id];
                for (i, (line, loc)) in lines.iter().enumerate() {
                    if self.owns(job.tenant, line.sku.as_str()) {
                        p.checks
                            .push((i, alloc_sum(part, &line.sku, *loc, |a| a.open)));
                    }
                }
                p
            })),
            JobKind::Return { id, sku, loc, .. } => {
                Prep::Part(self.part_prep(job, *id).map(|mut p| {
                    if self.owns(job.tenant, sku.as_str()) {
                        let part = &self.parts[id];
                        p.checks.push((
                            0,
                            alloc_sum(part, sku, *loc, |a| a.shipped() - a.returned()),
                        ));
                        // The room under LEVEL_MAX where the units come back, as for a receipt.
                        let on_hand = self
                            .sku(job.tenant, sku.as_str())
                            .and_then(|s| s.level(*loc))
                            .map_or(0, |l| l.on_hand);
                        p.checks.push((1, Some(LEVEL_MAX - on_hand)));
                    }
                    p
                }))
            }
            _ => Prep::None,
        }
    }

    fn part_prep(&self, job: &Job, id: ReservationId) -> Option<PartPrep> {
        self.parts
            .get(&id)
            .filter(|p| p.tenant == job.tenant)
            .map(Part::prep)
    }

    fn prepare_reserve(&self, job: &Job, channel: ChanIdx, items: &[crate::job::ItemReq]) -> Prep {
        if self.parts.len() >= self.holds_max {
            return Prep::Refused(Refusal::LimitExceeded {
                what: "reservations held on one shard".into(),
                limit: self.holds_max as u64,
            });
        }
        let cfg = self.config(job.tenant);
        let mut out = smallvec::SmallVec::new();
        for (i, item) in items.iter().enumerate() {
            if !self.owns_item(job.tenant, item) {
                continue;
            }
            let mut prep = ItemPrep {
                item: i,
                ..ItemPrep::default()
            };
            let found = self.skus.slot(&SkuRef {
                tenant: job.tenant,
                sku: item.sku.as_str(),
            });
            if let Some((slot, st)) = found {
                prep.sku_slot = Some(slot);
                prep.ats = st.ats(channel);
                if cfg.rules.is_empty() {
                    prep.locations = crate::small(st.levels.iter().map(|l| (l.loc, l.available())));
                } else {
                    let app = cfg.rules.applicable(&item.sku, channel);
                    prep.locations = crate::small(
                        st.levels
                            .iter()
                            .filter(|l| ats::eligible(&app, l.loc))
                            .map(|l| (l.loc, l.available())),
                    );
                    prep.routing = app.routing.and_then(|r| match &r.kind {
                        crate::rules::CompiledKind::Routing(r) => Some(r.clone()),
                        _ => None,
                    });
                }
            }
            out.push(prep);
        }
        Prep::Items(out)
    }
}

/// Sum of `f` over the allocations of `sku` at `loc` in a part; `None` when there are none.
fn alloc_sum(part: &Part, sku: &Sku, loc: LocIdx, f: impl Fn(&Alloc) -> i64) -> Option<i64> {
    let mut found = false;
    let mut sum = 0;
    for item in part.items.iter().filter(|i| i.sku(&part.lines) == sku) {
        for a in item.allocs.iter().filter(|a| a.loc == loc) {
            found = true;
            sum += f(a);
        }
    }
    found.then_some(sum)
}

// ---------------------------------------------------------------------------------------------
// decide

/// Turns every participant's preparation into one decision. Pure: every participant computing
/// it gets the same answer.
pub fn decide(job: &Job, cfg: Option<&TenantConfig>, preps: &[Prep]) -> Decision {
    if let Some(r) = preps.iter().find_map(|p| match p {
        Prep::Refused(r) => Some(r.clone()),
        _ => None,
    }) {
        return Decision::Refuse(r);
    }
    match &job.kind {
        JobKind::Reserve { .. } => decide_reserve(job, cfg.expect("reserve has a tenant"), preps),
        JobKind::Extend { .. }
        | JobKind::Commit { .. }
        | JobKind::Release { .. }
        | JobKind::Cancel { .. }
        | JobKind::Fulfil { .. }
        | JobKind::Return { .. } => decide_lifecycle(job, preps),
        _ => Decision::Proceed,
    }
}

fn decide_lifecycle(job: &Job, preps: &[Prep]) -> Decision {
    let parts: Vec<&PartPrep> = preps
        .iter()
        .filter_map(|p| {
            if let Prep::Part(Some(p)) = p {
                Some(p)
            } else {
                None
            }
        })
        .collect();
    let id = match &job.kind {
        JobKind::Extend { id, .. }
        | JobKind::Commit { id, .. }
        | JobKind::Release { id }
        | JobKind::Cancel { id }
        | JobKind::Fulfil { id, .. }
        | JobKind::Return { id, .. } => *id,
        _ => unreachable!("only lifecycle jobs"),
    };
    if parts.is_empty() || parts.len() != preps.len() {
        return Decision::Refuse(Refusal::not_found(format!("reservation {id}")));
    }
    let head = parts[0];
    let held = head.lifecycle == Lifecycle::Held;
    let overdue = held && head.expires_at <= job.now;
    let open: i64 = parts.iter().map(|p| p.open_units).sum();
    let shipped: i64 = parts.iter().map(|p| p.shipped_units).sum();
    let backordered: i64 = parts.iter().map(|p| p.backordered_units).sum();
    let state_name = if overdue {
        "expired"
    } else {
        head.lifecycle.name()
    };
    let wrong = |verb: &str| {
        Refusal::state(format!(
            "cannot {verb} reservation {id}: it is {state_name}"
        ))
    };
    let needs_hold = |verb: &str| {
        if overdue {
            Decision::ExpireThenRefuse(wrong(verb))
        } else if held {
            Decision::Proceed
        } else {
            Decision::Refuse(wrong(verb))
        }
    };
    match &job.kind {
        JobKind::Extend { .. } => needs_hold("extend"),
        JobKind::Release { .. } => needs_hold("release"),
        JobKind::Commit { lines, .. } => match needs_hold("commit") {
            Decision::Proceed => decide_commit(head, lines.as_deref()),
            other => other,
        },
        JobKind::Cancel { .. } => {
            if head.lifecycle != Lifecycle::Committed {
                return if overdue {
                    Decision::ExpireThenRefuse(wrong("cancel"))
                } else {
                    Decision::Refuse(wrong("cancel"))
                };
            }
            if open == 0 && backordered == 0 && shipped > 0 {
                return Decision::Refuse(Refusal::state(format!(
                    "cannot cancel reservation {id}: it is fulfilled"
                )));
            }
            Decision::Proceed
        }
        JobKind::Fulfil { lines, .. } => {
            if head.lifecycle != Lifecycle::Committed {
                return if overdue {
                    Decision::ExpireThenRefuse(wrong("fulfil"))
                } else {
                    Decision::Refuse(wrong("fulfil"))
                };
            }
            let checks: BTreeMap<usize, Option<i64>> = parts
                .iter()
                .flat_map(|p| p.checks.iter().copied())
                .collect();
            for (i, (line, _)) in lines.iter().enumerate() {
                let field = format!("lines[{i}]");
                let touched = line.quantity + line.missing;
                match checks.get(&i).copied().flatten() {
                    None => {
                        return Decision::Refuse(Refusal::invalid(
                            &field,
                            format!(
                                "reservation {id} has no allocation of {} at {}",
                                line.sku, line.location
                            ),
                        ))
                    }
                    Some(open) if touched > open => {
                        return Decision::Refuse(Refusal::invalid(
                            &field,
                            format!(
                                "{touched} units picked or missing, but only {open} are open at {}",
                                line.location
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
            Decision::Proceed
        }
        JobKind::Return { quantity, sku, .. } => {
            // An overdue hold is expired first, as by any command on it.
            if head.lifecycle != Lifecycle::Committed {
                let r = wrong("return units of");
                return if overdue {
                    Decision::ExpireThenRefuse(r)
                } else {
                    Decision::Refuse(r)
                };
            }
            match parts
                .iter()
                .find_map(|p| p.checks.first().map(|c| c.1))
                .flatten()
            {
                None => Decision::Refuse(Refusal::invalid(
                    "location",
                    format!("reservation {id} shipped no {sku} from there"),
                )),
                Some(returnable) if *quantity > returnable => Decision::Refuse(Refusal::invalid(
                    "quantity",
                    format!("only {returnable} shipped units of {sku} can still be returned"),
                )),
                Some(_) => {
                    let room = parts
                        .iter()
                        .find_map(|p| p.checks.get(1).map(|c| c.1))
                        .flatten()
                        .unwrap_or(LEVEL_MAX);
                    if *quantity > room {
                        Decision::Refuse(Refusal::state(format!(
                            "on_hand would be {}; a level holds at most {LEVEL_MAX} units",
                            (LEVEL_MAX - room).saturating_add(*quantity)
                        )))
                    } else {
                        Decision::Proceed
                    }
                }
            }
        }
        _ => unreachable!("only lifecycle jobs"),
    }
}

fn decide_commit(head: &PartPrep, lines: Option<&[(Sku, Option<i64>)]>) -> Decision {
    let Some(lines) = lines else {
        return Decision::Commit {
            keep: head.granted.clone(),
        };
    };
    if lines.is_empty() {
        return Decision::Refuse(Refusal::invalid(
            "lines",
            "list at least one line, or omit `lines` to commit all",
        ));
    }
    let mut keep: smallvec::SmallVec<[i64; 4]> = smallvec::smallvec![0; head.lines.len()];
    for (i, (sku, q)) in lines.iter().enumerate() {
        let field = format!("lines[{i}]");
        let Some(li) = head.lines.iter().position(|l| &l.sku == sku) else {
            return Decision::Refuse(Refusal::invalid(
                &field,
                format!("the reservation has no line for {sku}"),
            ));
        };
        if keep[li] != 0 {
            return Decision::Refuse(Refusal::invalid(&field, format!("{sku} is listed twice")));
        }
        let granted = head.granted.get(&head.lines, li);
        let q = q.unwrap_or(granted);
        if q < 1 || q > granted {
            return Decision::Refuse(Refusal::invalid(
                &field,
                format!("quantity must be between 1 and {granted}"),
            ));
        }
        keep[li] = q;
    }
    Decision::Commit {
        keep: Granted::new(&head.lines, &keep),
    }
}

fn decide_reserve(job: &Job, cfg: &TenantConfig, preps: &[Prep]) -> Decision {
    let JobKind::Reserve {
        lines,
        items,
        fill,
        ship_to_region,
        ..
    } = &job.kind
    else {
        unreachable!()
    };
    let region = ship_to_region.as_deref().map(String::as_str);
    if let ([line], [item]) = (&lines[..], &items[..]) {
        decide_one_item(cfg, preps, line, item, *fill, region)
    } else if independent(lines, items) {
        decide_independent(cfg, preps, lines, items, *fill, region)
    } else {
        decide_items(cfg, preps, lines, items, *fill, region)
    }
}

/// [`decide_reserve`] for any lines and items.
fn decide_items(
    cfg: &TenantConfig,
    preps: &[Prep],
    lines: &[LineHeader],
    items: &[ItemReq],
    fill: FillPolicy,
    ship_to_region: Option<&str>,
) -> Decision {
    let mut by_item: smallvec::SmallVec<[Option<&ItemPrep>; 4]> =
        smallvec::smallvec![None; items.len()];
    for p in preps {
        if let Prep::Items(v) = p {
            for ip in v {
                by_item[ip.item] = Some(ip);
            }
        }
    }
    let empty = ItemPrep::default();
    let prep = |i: usize| by_item[i].unwrap_or(&empty);
    // Per-SKU maps are keyed by the SKU's first item: integers compare cheaper than ids.
    let key = sku_keys(items);
    let ats_by_sku = SmallMap::from_iter((0..items.len()).map(|i| (key[i], prep(i).ats)));
    let line_ats = |li: usize| -> i64 {
        items
            .iter()
            .enumerate()
            .filter(|(_, it)| it.line as usize == li)
            .map(|(i, it)| *ats_by_sku.get(&key[i]) / it.per_unit)
            .min()
            .unwrap_or(0)
    };
    let shortages = |bad: &dyn Fn(usize) -> bool| -> Shortages {
        (0..lines.len())
            .filter(|&li| bad(li))
            .map(|li| Shortage {
                sku: lines[li].sku.clone(),
                requested: lines[li].requested(),
                available_to_sell: line_ats(li),
            })
            .collect()
    };
    // Units granted per line.
    let granted: smallvec::SmallVec<[i64; 4]> = match fill {
        FillPolicy::AllOrNothing | FillPolicy::Split { .. } => {
            let mut demand = ats_by_sku.clone();
            demand.entries.iter_mut().for_each(|e| e.1 = 0);
            for (i, it) in items.iter().enumerate() {
                // Saturating: 100 lines of 10^12 bundles of 10^6 units each overflow i64.
                let d = demand.get_mut(&key[i]);
                *d = d.saturating_add(it.per_unit * lines[it.line as usize].requested());
            }
            let short: smallvec::SmallVec<[u32; 4]> = demand
                .entries
                .iter()
                .filter(|(k, d)| *d > *ats_by_sku.get(k))
                .map(|(k, _)| *k)
                .collect();
            if !short.is_empty() {
                let bad = |li: usize| {
                    items
                        .iter()
                        .enumerate()
                        .any(|(i, it)| it.line as usize == li && short.contains(&key[i]))
                };
                return Decision::Refuse(Refusal::InsufficientStock {
                    shortages: shortages(&bad),
                });
            }
            lines.iter().map(|l| l.requested()).collect()
        }
        FillPolicy::Partial => {
            let mut left = ats_by_sku.clone();
            let mut granted = smallvec::SmallVec::with_capacity(lines.len());
            for (li, line) in lines.iter().enumerate() {
                let its = || {
                    items
                        .iter()
                        .enumerate()
                        .filter(move |(_, it)| it.line as usize == li)
                };
                let fit = its()
                    .map(|(i, it)| *left.get(&key[i]) / it.per_unit)
                    .min()
                    .unwrap_or(0)
                    .clamp(0, line.requested());
                for (i, it) in its() {
                    *left.get_mut(&key[i]) -= fit * it.per_unit;
                }
                granted.push(fit);
            }
            if granted.iter().all(|&g| g == 0) {
                return Decision::Refuse(Refusal::InsufficientStock {
                    shortages: shortages(&|_| true),
                });
            }
            granted
        }
    };
    // Allocate every item, in order, from a working copy of each SKU's available units.
    let mut work = SmallMap::from_iter((0..items.len()).flat_map(|i| {
        let k = key[i];
        prep(i).locations.iter().map(move |&(loc, a)| ((k, loc), a))
    }));
    let full_counts = if by_item
        .iter()
        .flatten()
        .any(|p| matches!(p.routing, Some(CompiledRouting::FewestSplits)))
    {
        fewest_split_counts(items, &granted, &by_item)
    } else {
        BTreeMap::new()
    };
    let mut plans = smallvec::SmallVec::with_capacity(items.len());
    let mut split_bad = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let want = granted[it.line as usize] * it.per_unit;
        let p = prep(i);
        let order = order_locations(
            cfg,
            p.routing.as_ref(),
            &p.locations,
            ship_to_region,
            &full_counts,
        );
        let (allocations, left) =
            allocate(order, want, &mut work, |w, loc| w.get_mut(&(key[i], loc)));
        if left > 0 {
            // ATS never exceeds the eligible pool, so this means the rules and the pool disagree.
            split_bad.push(it.line as usize);
        }
        if let FillPolicy::Split { max_locations } = fill {
            if allocations.len() > max_locations as usize {
                split_bad.push(it.line as usize);
            }
        }
        plans.push(ItemPlan {
            item: i,
            quantity: want,
            allocations,
            sku_slot: p.sku_slot,
        });
    }
    if !split_bad.is_empty() {
        return Decision::Refuse(Refusal::InsufficientStock {
            shortages: shortages(&|li| split_bad.contains(&li)),
        });
    }
    Decision::Reserve {
        granted: Granted::new(lines, &granted),
        plans,
    }
}

/// Takes `want` units from the locations in `order`, as many as each has: the allocations and
/// the units left untaken. `avail` gives a location's available units, which the taking
/// reduces.
fn allocate<M: ?Sized>(
    order: smallvec::SmallVec<[LocIdx; 4]>,
    want: i64,
    work: &mut M,
    avail: impl Fn(&mut M, LocIdx) -> &mut i64,
) -> (smallvec::SmallVec<[(LocIdx, i64); 2]>, i64) {
    let mut left = want;
    let mut allocations = smallvec::SmallVec::new();
    for loc in order {
        if left == 0 {
            break;
        }
        let avail = avail(work, loc);
        let take = left.min(*avail);
        if take <= 0 {
            continue;
        }
        *avail -= take;
        left -= take;
        allocations.push((loc, take));
    }
    (allocations, left)
}

/// [`decide_reserve`] for one line of one item (a plain line, or a bundle of one component):
/// nearly every reservation. [`decide_independent`] with nothing to loop over.
fn decide_one_item(
    cfg: &TenantConfig,
    preps: &[Prep],
    line: &LineHeader,
    item: &ItemReq,
    fill: FillPolicy,
    ship_to_region: Option<&str>,
) -> Decision {
    let empty = ItemPrep::default();
    // The last preparation of the item, as the general path keeps it.
    let prep = preps
        .iter()
        .rev()
        .find_map(|p| match p {
            Prep::Items(v) => v.iter().rfind(|ip| ip.item == 0),
            _ => None,
        })
        .unwrap_or(&empty);
    let refuse = || {
        Decision::Refuse(Refusal::InsufficientStock {
            shortages: smallvec::smallvec![Shortage {
                sku: line.sku.clone(),
                requested: line.requested(),
                available_to_sell: prep.ats / item.per_unit,
            }],
        })
    };
    let granted = match fill {
        FillPolicy::AllOrNothing | FillPolicy::Split { .. } => {
            if item.per_unit * line.requested() > prep.ats {
                return refuse();
            }
            line.requested()
        }
        FillPolicy::Partial => {
            let fit = (prep.ats / item.per_unit).clamp(0, line.requested());
            if fit == 0 {
                return refuse();
            }
            fit
        }
    };
    let want = granted * item.per_unit;
    let full_counts = if matches!(prep.routing, Some(CompiledRouting::FewestSplits)) {
        fewest_split_counts(std::slice::from_ref(item), &[granted], &[Some(prep)])
    } else {
        BTreeMap::new()
    };
    let (plan, fails) = plan_item(cfg, prep, 0, want, fill, ship_to_region, &full_counts);
    if fails {
        return refuse();
    }
    Decision::Reserve {
        granted: Granted::new(std::slice::from_ref(line), &[granted]),
        plans: smallvec::smallvec![plan],
    }
}

/// [`decide_reserve`] when every line has one item and no two items share a SKU (a cart of
/// distinct SKUs, plain lines or bundles of one component). Each item is decided from its own
/// preparation: the same decision as [`decide_items`], without the per-SKU maps that items
/// sharing a SKU need.
fn decide_independent(
    cfg: &TenantConfig,
    preps: &[Prep],
    lines: &[LineHeader],
    items: &[ItemReq],
    fill: FillPolicy,
    ship_to_region: Option<&str>,
) -> Decision {
    let empty = ItemPrep::default();
    let n = items.len();
    // The last preparation of each item, as the general path keeps it.
    let mut by_item: [Option<&ItemPrep>; INDEPENDENT_MAX] = [None; INDEPENDENT_MAX];
    let by_item = &mut by_item[..n];
    for p in preps {
        if let Prep::Items(v) = p {
            for ip in v {
                by_item[ip.item] = Some(ip);
            }
        }
    }
    let prep = |i: usize| by_item[i].unwrap_or(&empty);
    // Line `i` is item `i`.
    let shortages = |bad: &dyn Fn(usize) -> bool| -> Shortages {
        (0..lines.len())
            .filter(|&i| bad(i))
            .map(|i| Shortage {
                sku: lines[i].sku.clone(),
                requested: lines[i].requested(),
                available_to_sell: prep(i).ats / items[i].per_unit,
            })
            .collect()
    };
    let refuse = |shortages| Decision::Refuse(Refusal::InsufficientStock { shortages });
    let mut granted = [0i64; INDEPENDENT_MAX];
    let granted = &mut granted[..n];
    match fill {
        FillPolicy::AllOrNothing | FillPolicy::Split { .. } => {
            let short = |i: usize| items[i].per_unit * lines[i].requested() > prep(i).ats;
            if (0..n).any(short) {
                return refuse(shortages(&short));
            }
            for (g, l) in granted.iter_mut().zip(lines) {
                *g = l.requested();
            }
        }
        FillPolicy::Partial => {
            for (i, g) in granted.iter_mut().enumerate() {
                *g = (prep(i).ats / items[i].per_unit).clamp(0, lines[i].requested());
            }
            if granted.iter().all(|&g| g == 0) {
                return refuse(shortages(&|_| true));
            }
        }
    }
    let full_counts = if by_item
        .iter()
        .flatten()
        .any(|p| matches!(p.routing, Some(CompiledRouting::FewestSplits)))
    {
        fewest_split_counts(items, granted, by_item)
    } else {
        BTreeMap::new()
    };
    // Three plans fit inline: a cart of up to three lines allocates none.
    let mut plans = smallvec::SmallVec::new();
    // Bit `i`: item `i` could not be allocated as decided.
    let mut bad = 0u8;
    for (i, it) in items.iter().enumerate() {
        let want = granted[i] * it.per_unit;
        let (plan, fails) = plan_item(cfg, prep(i), i, want, fill, ship_to_region, &full_counts);
        if fails {
            bad |= 1 << i;
        }
        plans.push(plan);
    }
    if bad != 0 {
        return refuse(shortages(&|i| bad & (1 << i) != 0));
    }
    Decision::Reserve {
        granted: Granted::new(lines, granted),
        plans,
    }
}

/// The most lines [`decide_independent`] decides (a cart); larger reservations take the general
/// path.
const INDEPENDENT_MAX: usize = 8;

/// Allocates `want` units of item `i` from the locations of its own preparation `p` (no other
/// item of the reservation takes from its SKU): its plan, and whether it fails as decided
/// (units left untaken, which means the rules and the pool disagree, since ATS never exceeds
/// the eligible pool; or more locations than a split allows).
// Inlined: a call returning the plan by memory cost a single-item reservation 1 % more work.
#[inline(always)]
fn plan_item(
    cfg: &TenantConfig,
    p: &ItemPrep,
    i: usize,
    want: i64,
    fill: FillPolicy,
    ship_to_region: Option<&str>,
    full_counts: &BTreeMap<LocIdx, u32>,
) -> (ItemPlan, bool) {
    let order = order_locations(
        cfg,
        p.routing.as_ref(),
        &p.locations,
        ship_to_region,
        full_counts,
    );
    // Copied as a slice: `clone` goes through the general `extend`.
    let mut work = smallvec::SmallVec::<[(LocIdx, i64); 4]>::from_slice(&p.locations);
    let (allocations, left) = allocate(order, want, &mut work[..], |w, loc| {
        let at = w.iter().position(|&(l, _)| l == loc);
        &mut w[at.expect("ordered locations are eligible ones")].1
    });
    let too_many = matches!(fill, FillPolicy::Split { max_locations }
        if allocations.len() > max_locations as usize);
    let plan = ItemPlan {
        item: i,
        quantity: want,
        allocations,
        sku_slot: p.sku_slot,
    };
    (plan, left > 0 || too_many)
}

/// Whether [`decide_independent`] may decide these items: one item per line, in line order,
/// and no SKU twice (checked pairwise, so only for the few lines of a cart).
fn independent(lines: &[LineHeader], items: &[ItemReq]) -> bool {
    items.len() == lines.len()
        && items.len() <= INDEPENDENT_MAX
        && items.iter().enumerate().all(|(i, it)| {
            it.line as usize == i && items[..i].iter().all(|other| other.sku != it.sku)
        })
}

/// For each item, the index of the first item with the same SKU: equal keys mean equal SKUs.
fn sku_keys(items: &[crate::job::ItemReq]) -> smallvec::SmallVec<[u32; 4]> {
    let mut keys: smallvec::SmallVec<[u32; 4]> = (0..items.len() as u32).collect();
    if items.len() > 1 {
        // A stable sort: items of one SKU stay in item order, the first one leading.
        let mut order = keys.clone();
        order.sort_by(|&a, &b| items[a as usize].sku.cmp(&items[b as usize].sku));
        for w in order.windows(2) {
            let (prev, cur) = (w[0] as usize, w[1] as usize);
            if items[prev].sku == items[cur].sku {
                keys[cur] = keys[prev];
            }
        }
    }
    keys
}

/// A map for the few keys of one reservation: a sorted vector, first value kept per key.
#[derive(Clone)]
struct SmallMap<K: Ord, V> {
    entries: smallvec::SmallVec<[(K, V); 4]>,
}

impl<K: Ord, V> SmallMap<K, V> {
    fn from_iter(it: impl Iterator<Item = (K, V)>) -> Self {
        let mut entries: smallvec::SmallVec<[(K, V); 4]> = it.collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|a, b| a.0 == b.0);
        SmallMap { entries }
    }
    fn index(&self, k: &K) -> usize {
        self.entries
            .binary_search_by(|e| e.0.cmp(k))
            .expect("every key was inserted")
    }
    fn get(&self, k: &K) -> &V {
        &self.entries[self.index(k)].1
    }
    fn get_mut(&mut self, k: &K) -> &mut V {
        let i = self.index(k);
        &mut self.entries[i].1
    }
}

/// For `fewest_splits`: per location, how many items it can serve in full.
fn fewest_split_counts(
    items: &[crate::job::ItemReq],
    granted: &[i64],
    by_item: &[Option<&ItemPrep>],
) -> BTreeMap<LocIdx, u32> {
    let mut counts = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        let want = granted[it.line as usize] * it.per_unit;
        if want == 0 {
            continue;
        }
        if let Some(p) = by_item[i] {
            for &(loc, avail) in &p.locations {
                if avail >= want {
                    *counts.entry(loc).or_insert(0) += 1;
                }
            }
        }
    }
    counts
}

/// The order in which an item's units are taken from locations (`docs/allocation.md`).
pub fn order_locations(
    cfg: &TenantConfig,
    routing: Option<&CompiledRouting>,
    locations: &[(LocIdx, i64)],
    ship_to: Option<&str>,
    full_counts: &BTreeMap<LocIdx, u32>,
) -> smallvec::SmallVec<[LocIdx; 4]> {
    let Some(routing) = routing else {
        // Creation order: nothing to sort.
        return crate::small(locations.iter().filter(|&&(_, a)| a > 0).map(|&(l, _)| l));
    };
    let mut locs: smallvec::SmallVec<[(LocIdx, i64); 4]> =
        crate::small(locations.iter().copied().filter(|&(_, a)| a > 0));
    match routing {
        CompiledRouting::Priority(list) => {
            locs.sort_by_key(|&(l, _)| {
                (list.iter().position(|&x| x == l).unwrap_or(usize::MAX), l)
            });
        }
        CompiledRouting::MostStock => locs.sort_by_key(|&(l, a)| (std::cmp::Reverse(a), l)),
        CompiledRouting::FewestSplits => locs.sort_by_key(|&(l, a)| {
            (
                std::cmp::Reverse(full_counts.get(&l).copied().unwrap_or(0)),
                std::cmp::Reverse(a),
                l,
            )
        }),
        CompiledRouting::Nearest(regions) => {
            if let Some(r) = ship_to {
                let list = regions.get(r);
                locs.sort_by_key(|&(l, _)| {
                    let region = cfg.locations[l as usize].region.as_deref();
                    let rank = match region {
                        Some(x) if x == r => 0,
                        Some(x) => list
                            .and_then(|v| v.iter().position(|y| y == x))
                            .map_or(usize::MAX, |p| p + 1),
                        None => usize::MAX,
                    };
                    (rank, l)
                });
            }
        }
    }
    locs.into_iter().map(|(l, _)| l).collect()
}

// ---------------------------------------------------------------------------------------------
// apply

/// Collects events with a sort key unique within the command.
#[derive(Default)]
struct Events {
    out: Vec<(u64, EventKind)>,
    /// Nobody reads them: pushed events are dropped.
    off: bool,
}

impl Events {
    fn push(&mut self, key: u64, e: EventKind) {
        if self.off {
            return;
        }
        let k = (key << 20) | self.out.len() as u64;
        self.out.push((k, e));
    }
}

fn refused(r: Refusal) -> PartOut {
    PartOut {
        events: Vec::new(),
        data: PartData::Refused(r),
    }
}

impl ShardState {
    /// Applies the decision to this shard's state.
    pub fn apply(&mut self, job: &Job, d: &Decision) -> PartOut {
        match d {
            Decision::Refuse(_) => return PartOut::default(),
            Decision::ExpireThenRefuse(_) => {
                let mut ev = Events::default();
                if let Some(id) = job_reservation(job) {
                    self.expire(id, job.now, &mut ev);
                }
                return PartOut::default();
            }
            _ => {}
        }
        let mut ev = Events {
            out: Vec::new(),
            off: job.quiet,
        };
        let data = match &job.kind {
            JobKind::Config { config, .. } => {
                self.set_config(config.clone());
                PartData::None
            }
            JobKind::Receive { .. }
            | JobKind::Expect { .. }
            | JobKind::Adjust { .. }
            | JobKind::Set { .. }
            | JobKind::Move { .. }
            | JobKind::Transfer { .. } => match self.apply_stock(job, &mut ev) {
                Ok(()) => PartData::None,
                Err(r) => return refused(r),
            },
            JobKind::Reserve { .. } => self.apply_reserve(job, d),
            JobKind::Extend { id, expires_at } => {
                let part = self.parts.get_mut(id).expect("decided on an existing part");
                part.expires_at = *expires_at;
                self.expiry.insert(*expires_at, *id);
                PartData::None
            }
            JobKind::Commit { id, .. } => {
                let Decision::Commit { keep } = d else {
                    unreachable!("commit decides Commit")
                };
                self.apply_commit(*id, keep);
                self.cover_commit(job, *id, &mut ev);
                PartData::Reservation(Box::new(PartSnapshot {
                    part: self.parts[id].clone(),
                }))
            }
            JobKind::Release { id } => {
                self.end(*id, Lifecycle::Released, job.now);
                PartData::None
            }
            JobKind::Cancel { id } => {
                self.end(*id, Lifecycle::Cancelled, job.now);
                PartData::None
            }
            JobKind::Fulfil { .. } => {
                self.apply_fulfil(job, &mut ev);
                PartData::None
            }
            JobKind::Return {
                id,
                sku,
                loc,
                quantity,
                damaged,
            } => {
                if self.owns(job.tenant, sku.as_str()) {
                    self.apply_return(job, *id, sku, *loc, *quantity, *damaged, &mut ev);
                }
                PartData::None
            }
            JobKind::Tick => self.apply_tick(job.now, &mut ev),
            JobKind::GetStock { sku } => self.read_stock(job, sku),
            JobKind::GetReservation { id } => {
                match self.parts.get(id).filter(|p| p.tenant == job.tenant) {
                    Some(p) => PartData::Reservation(Box::new(PartSnapshot { part: p.clone() })),
                    None => PartData::None,
                }
            }
            JobKind::Explain { sku, channel } => self.read_explain(job, sku, *channel),
        };
        PartOut {
            events: ev.out,
            data,
        }
    }

    /// Refuses a stock operation that would take on_hand or incoming of a level above
    /// [`LEVEL_MAX`]. (`set` and `move` stay within what is on hand; `set` is at most
    /// `QUANTITY_MAX`; a return is checked the same way when it is decided.)
    fn check_level_room(&self, job: &Job) -> Result<(), Refusal> {
        let (sku, loc, add, incoming) = match &job.kind {
            JobKind::Receive {
                sku, loc, quantity, ..
            } => (sku, *loc, *quantity, false),
            JobKind::Adjust {
                sku, loc, delta, ..
            } => (sku, *loc, *delta, false),
            JobKind::Expect {
                sku, loc, quantity, ..
            }
            | JobKind::Transfer {
                sku,
                to: loc,
                quantity,
                ..
            } => (sku, *loc, *quantity, true),
            _ => return Ok(()),
        };
        let now = self
            .sku(job.tenant, sku.as_str())
            .and_then(|s| s.level(loc))
            .map_or(0, |l| if incoming { l.incoming } else { l.on_hand });
        let after = now.saturating_add(add);
        if after > LEVEL_MAX {
            let what = if incoming { "incoming" } else { "on_hand" };
            return Err(Refusal::state(format!(
                "{what} would be {after}; a level holds at most {LEVEL_MAX} units"
            )));
        }
        Ok(())
    }

    fn apply_stock(&mut self, job: &Job, ev: &mut Events) -> Result<(), Refusal> {
        let t = job.tenant;
        self.check_level_room(job)?;
        let (op, sku, loc, reason, unit_cost) = match &job.kind {
            JobKind::Receive {
                sku,
                loc,
                quantity,
                unit_cost,
                reason,
            } => {
                let q = *quantity;
                let st = self.sku_mut(t, sku.as_str());
                let before = st.level(*loc).map_or(0, |l| l.on_hand);
                if let Some(uc) = unit_cost {
                    let avg = match st.cost.as_deref() {
                        Some(c) if before > 0 => average_cost(*c, before, *uc, q),
                        _ => *uc,
                    };
                    st.cost = Some(Box::new(avg));
                }
                self.with_level(t, sku, *loc, |l| {
                    l.on_hand += q;
                    l.incoming -= q.min(l.incoming);
                    if l.incoming == 0 {
                        l.incoming_at = 0;
                    }
                });
                ("receive", sku, *loc, reason, *unit_cost)
            }
            JobKind::Expect {
                sku,
                loc,
                quantity,
                expected_at,
                reason,
            } => {
                self.with_level(t, sku, *loc, |l| {
                    l.incoming += quantity;
                    if let Some(at) = expected_at {
                        l.incoming_at = *at;
                    }
                });
                ("expect", sku, *loc, reason, None)
            }
            JobKind::Adjust {
                sku,
                loc,
                delta,
                reason,
            } => {
                let l = self
                    .sku(t, sku.as_str())
                    .and_then(|s| s.level(*loc))
                    .copied()
                    .unwrap_or(Level::new(*loc));
                if l.on_hand + delta < 0 {
                    return Err(Refusal::state(format!(
                        "on_hand is {}; adjusting by {delta} would make it negative",
                        l.on_hand
                    )));
                }
                if *delta < 0 && l.available() + delta < 0 {
                    return Err(Refusal::state(format!(
                        "available is {}; adjusting by {delta} would make it negative (a count uses `set`)",
                        l.available()
                    )));
                }
                self.with_level(t, sku, *loc, |l| l.on_hand += delta);
                ("adjust", sku, *loc, reason, None)
            }
            JobKind::Set {
                sku,
                loc,
                quantity,
                compare,
                reason,
            } => {
                let current = self
                    .sku(t, sku.as_str())
                    .and_then(|s| s.level(*loc))
                    .map_or(0, |l| l.on_hand);
                if let Some(c) = compare {
                    if *c != current {
                        return Err(Refusal::CompareFailed {
                            expected: *c,
                            actual: current,
                        });
                    }
                }
                self.with_level(t, sku, *loc, |l| l.on_hand = *quantity);
                self.push_stock_event(job, "set", sku, *loc, reason, None, ev);
                self.oversell_incident(job, sku, *loc, ev);
                return Ok(());
            }
            JobKind::Move {
                sku,
                loc,
                from,
                to,
                quantity,
                reason,
            } => {
                let l = self
                    .sku(t, sku.as_str())
                    .and_then(|s| s.level(*loc))
                    .copied()
                    .unwrap_or(Level::new(*loc));
                let have = ShardState::bucket(&l, *from);
                if have < *quantity {
                    return Err(Refusal::state(format!(
                        "only {have} units are {} here; cannot move {quantity}",
                        bucket_name(*from)
                    )));
                }
                self.with_level(t, sku, *loc, |l| {
                    if let Some(b) = ShardState::bucket_mut(l, *from) {
                        *b -= quantity;
                    }
                    if let Some(b) = ShardState::bucket_mut(l, *to) {
                        *b += quantity;
                    }
                });
                ("move", sku, *loc, reason, None)
            }
            JobKind::Transfer {
                sku,
                loc,
                to,
                quantity,
                expected_at,
                reason,
            } => {
                let avail = self
                    .sku(t, sku.as_str())
                    .and_then(|s| s.level(*loc))
                    .map_or(0, |l| l.available());
                if avail < *quantity {
                    return Err(Refusal::state(format!(
                        "only {avail} units are available to transfer"
                    )));
                }
                self.with_level(t, sku, *loc, |l| l.on_hand -= quantity);
                self.with_level(t, sku, *to, |l| {
                    l.incoming += quantity;
                    if let Some(at) = expected_at {
                        l.incoming_at = *at;
                    }
                });
                self.push_stock_event(job, "transfer_out", sku, *loc, reason, None, ev);
                self.push_stock_event(job, "transfer_in", sku, *to, reason, None, ev);
                return Ok(());
            }
            _ => unreachable!("stock jobs only"),
        };
        self.push_stock_event(job, op, sku, loc, reason, unit_cost, ev);
        Ok(())
    }

    fn push_stock_event(
        &self,
        job: &Job,
        op: &str,
        sku: &Sku,
        loc: LocIdx,
        reason: &str,
        unit_cost: Option<rust_decimal::Decimal>,
        ev: &mut Events,
    ) {
        let cfg = self.config(job.tenant);
        let level = self
            .sku(job.tenant, sku.as_str())
            .and_then(|s| s.level(loc))
            .copied()
            .unwrap_or(Level::new(loc));
        ev.push(
            0,
            EventKind::StockChanged {
                op: op.to_string(),
                sku: sku.clone(),
                level: Box::new(level_view(cfg, &level)),
                reason: reason.to_string(),
                unit_cost,
            },
        );
    }

    /// After a count (`set`): when available is negative, an oversell incident.
    fn oversell_incident(&mut self, job: &Job, sku: &Sku, loc: LocIdx, ev: &mut Events) {
        let avail = self
            .sku(job.tenant, sku.as_str())
            .and_then(|s| s.level(loc))
            .map_or(0, |l| l.available());
        if avail < 0 {
            self.incident(job, sku, loc, 0, ev);
        }
    }

    /// After a commit: a hold committed at a level that a count left short (holds are not
    /// backordered by the count) may commit units that are not on hand; then an oversell
    /// incident, so no order waits to be shipped from units that are not there. The events of
    /// each short level are ordered by the reservation's item that found it, so a commit whose
    /// items are on several shards reports them in the same order as on one.
    fn cover_commit(&mut self, job: &Job, id: ReservationId, ev: &mut Events) {
        let Some(part) = self.parts.get(&id) else {
            return;
        };
        // Every commit checks its levels; only a short one (rare) is collected.
        let mut short: Vec<(Sku, LocIdx, u64)> = Vec::new();
        for i in &part.items {
            let sku = i.sku(&part.lines);
            for a in i.allocs.iter().filter(|a| a.open > 0) {
                let level = self
                    .sku(job.tenant, sku.as_str())
                    .and_then(|s| s.level(a.loc));
                if level.is_some_and(|l| uncovered(l) > 0)
                    && !short.iter().any(|(s, l, _)| s == sku && *l == a.loc)
                {
                    short.push((sku.clone(), a.loc, u64::from(i.item)));
                }
            }
        }
        for (sku, loc, item) in short {
            self.incident(job, &sku, loc, item, ev);
        }
    }

    /// An oversell incident at (sku, loc): the event (with how far available is below zero),
    /// then the committed units that on hand does not cover ([`uncovered`]) are backordered,
    /// victims chosen by the tenant's oversell policy. Holds are left as they are: they keep
    /// the level's available below zero (every channel's ATS at zero) until they are
    /// committed, released or expire. The events carry the sort `key`, the incident's first.
    fn incident(&mut self, job: &Job, sku: &Sku, loc: LocIdx, key: u64, ev: &mut Events) {
        let t = job.tenant;
        let cfg = self.config(t).clone();
        let level = self
            .sku(t, sku.as_str())
            .and_then(|s| s.level(loc))
            .copied();
        let Some(level) = level else {
            return;
        };
        ev.push(
            key,
            EventKind::OversellIncident {
                sku: sku.clone(),
                location: loc_id(&cfg, loc),
                deficit: (-level.available()).max(0),
            },
        );
        let mut deficit = uncovered(&level);
        if deficit <= 0 {
            return;
        }
        // Rare: a scan of this shard's parts, sorted so the choice never depends on hashing.
        let mut victims: Vec<(i32, ReservationId)> = self
            .parts
            .iter()
            .filter(|(_, p)| p.tenant == t && p.lifecycle == Lifecycle::Committed)
            .filter(|(_, p)| {
                p.items.iter().any(|i| {
                    i.sku(&p.lines) == sku && i.allocs.iter().any(|a| a.loc == loc && a.open > 0)
                })
            })
            .map(|(id, p)| (cfg.channels[p.channel as usize].priority, id))
            .collect();
        match cfg.rules.oversell_policy {
            OversellPolicy::NewestFirst => victims.sort_by_key(|&(_, id)| std::cmp::Reverse(id)),
            OversellPolicy::LowestPriorityFirst => {
                victims.sort_by_key(|&(p, id)| (p, std::cmp::Reverse(id)))
            }
        }
        for (_, id) in victims {
            if deficit == 0 {
                break;
            }
            let part = self.parts.get_mut(&id).expect("victims are live parts");
            let channel = part.channel;
            let mut took = 0;
            let lines = &part.lines;
            for item in part.items.iter_mut().filter(|i| i.sku(lines) == sku) {
                let mut backordered = item.backordered();
                for a in item.allocs.iter_mut().filter(|a| a.loc == loc) {
                    let b = a.open.min(deficit - took);
                    a.open -= b;
                    backordered += b;
                    took += b;
                }
                item.set_backordered(backordered);
            }
            deficit -= took;
            self.with_level(t, sku, loc, |l| l.committed -= took);
            self.adjust_held(t, sku, channel, -took);
            self.refresh(t, sku);
            ev.push(
                key,
                EventKind::Backordered {
                    id,
                    sku: sku.clone(),
                    location: loc_id(&cfg, loc),
                    quantity: took,
                    cause: "oversell_incident".into(),
                },
            );
        }
    }

    fn apply_reserve(&mut self, job: &Job, d: &Decision) -> PartData {
        let Decision::Reserve { granted, plans } = d else {
            unreachable!("reserve decides Reserve")
        };
        let JobKind::Reserve {
            channel,
            lines,
            items,
            expires_at,
            order_ref,
            ..
        } = &job.kind
        else {
            unreachable!()
        };
        let t = job.tenant;
        let mut part_items = crate::one::OneOrMany::new();
        for plan in plans.iter() {
            let it = &items[plan.item];
            if !self.owns_item(t, it) {
                continue;
            }
            let (cfg, st) = self.sku_entry_at(t, it.sku.as_str(), plan.sku_slot);
            for &(loc, q) in &plan.allocations {
                st.level_mut(loc).reserved += q;
            }
            st.add_held(*channel, plan.quantity);
            st.refresh(cfg, &it.sku);
            part_items.push(PartItem::new(
                plan.item as u16,
                it.line,
                it.slot,
                lines[usize::from(it.line)].is_bundle().then(|| Component {
                    sku: it.sku.clone(),
                    per_unit: it.per_unit,
                }),
                plan.quantity,
                plan.allocations
                    .iter()
                    .map(|&(loc, open)| Alloc::new(loc, open, 0, 0))
                    .collect(),
            ));
        }
        let id = ReservationId(job.seq);
        let part = Part::new(
            t,
            *channel,
            Lifecycle::Held,
            job.now,
            *expires_at,
            order_ref.as_deref().cloned(),
            lines.clone(),
            granted.clone(),
            part_items,
        );
        self.expiry.insert(*expires_at, id);
        // The reservation's own sequence number: no shard holds it yet.
        self.parts.insert_new(id, part);
        // The response is built from the decision (`held_view`), not from the parts.
        PartData::None
    }

    fn apply_commit(&mut self, id: ReservationId, keep: &Granted) {
        let mut part = self.parts.remove(&id).expect("decided on an existing part");
        let t = part.tenant;
        for item in part.items.iter_mut() {
            let keep_units = keep.get(&part.lines, item.line as usize) * item.per_unit();
            let (sku, allocs, quantity) = item.sku_and_units_mut(&part.lines);
            let mut release = *quantity - keep_units;
            for a in allocs.iter_mut().rev() {
                let r = a.open.min(release);
                release -= r;
                a.open -= r;
                let kept = a.open;
                self.with_level(t, sku, a.loc, |l| {
                    l.reserved -= r + kept;
                    l.committed += kept;
                });
                self.adjust_held(t, sku, part.channel, -r);
            }
            allocs.retain(|a| a.open > 0);
            *quantity = keep_units;
            self.refresh(t, sku);
        }
        part.set_granted(keep.clone());
        part.lifecycle = Lifecycle::Committed;
        self.parts.insert(id, part);
    }

    /// Ends a held or committed part: its open units stop counting against stock.
    fn end(&mut self, id: ReservationId, to: Lifecycle, now: TimeMs) {
        let part = self.parts.get_mut(&id).expect("ending an existing part");
        let from = part.lifecycle;
        part.lifecycle = to;
        part.set_ended_at(now);
        let (t, c) = (part.tenant, part.channel);
        let mut changes = Vec::new();
        for item in part.items.iter_mut() {
            for a in &item.allocs {
                changes.push((item.sku(&part.lines).clone(), a.loc, a.open));
            }
            if to == Lifecycle::Cancelled {
                item.set_backordered(0);
            }
        }
        for (sku, loc, open) in changes {
            self.with_level(t, &sku, loc, |l| match from {
                Lifecycle::Held => l.reserved -= open,
                _ => l.committed -= open,
            });
            self.adjust_held(t, &sku, c, -open);
            self.refresh(t, &sku);
        }
        self.purge
            .insert(now.saturating_add(self.ended_retention_ms), id);
    }

    fn expire(&mut self, id: ReservationId, now: TimeMs, _ev: &mut Events) -> bool {
        match self.parts.get(&id) {
            Some(p) if p.lifecycle == Lifecycle::Held && p.expires_at <= now => {
                self.end(id, Lifecycle::Expired, now);
                true
            }
            _ => false,
        }
    }

    fn apply_tick(&mut self, now: TimeMs, ev: &mut Events) -> PartData {
        let mut expired = Vec::new();
        let mut again = Vec::new();
        for id in self.expiry.take_due(now) {
            let Some(p) = self.parts.get(&id) else {
                continue;
            };
            if p.lifecycle != Lifecycle::Held {
                continue;
            }
            if p.expires_at <= now {
                let tenant = p.tenant;
                if self.expire(id, now, ev) {
                    expired.push((id, tenant));
                }
            } else if p.expires_at / 1000 == now / 1000 {
                // Due later in this second: keep the entry. Later seconds have their own entry.
                again.push((p.expires_at, id));
            }
        }
        for (at, id) in again {
            self.expiry.insert(at, id);
        }
        let mut dropped = Vec::new();
        let mut keep = Vec::new();
        for id in self.purge.take_due(now) {
            let Some(p) = self.parts.get(&id) else {
                continue;
            };
            let at = p.ended_at().saturating_add(self.ended_retention_ms);
            if at <= now {
                self.parts.remove(&id);
                dropped.push(id);
            } else {
                keep.push((at, id));
            }
        }
        for (at, id) in keep {
            self.purge.insert(at, id);
        }
        PartData::Ticked { expired, dropped }
    }

    fn apply_fulfil(&mut self, job: &Job, ev: &mut Events) {
        let JobKind::Fulfil { id, lines } = &job.kind else {
            unreachable!()
        };
        let t = job.tenant;
        let cfg = self.config(t).clone();
        for (i, (line, loc)) in lines.iter().enumerate() {
            if !self.owns(t, line.sku.as_str()) {
                continue;
            }
            let key = i as u64 + 1;
            let sku = &line.sku;
            let mut part = self.parts.remove(id).expect("decided on an existing part");
            let c = part.channel;
            // Picked units leave on_hand and committed.
            let picked = take_open(&mut part, sku, *loc, line.quantity, true);
            self.with_level(t, sku, *loc, |l| {
                l.on_hand -= picked;
                l.committed -= picked;
            });
            self.adjust_held(t, sku, c, -picked);
            if picked > 0 {
                ev.push(
                    key,
                    EventKind::Fulfilled {
                        id: *id,
                        sku: sku.clone(),
                        location: loc_id(&cfg, *loc),
                        quantity: picked,
                    },
                );
            }
            if line.missing > 0 {
                self.short_pick(&cfg, &mut part, *id, sku, *loc, line.missing, key, ev);
            }
            self.refresh(t, sku);
            self.parts.insert(*id, part);
        }
    }

    /// Units found missing: on_hand and committed drop, then the units are re-allocated
    /// elsewhere or backordered.
    fn short_pick(
        &mut self,
        cfg: &TenantConfig,
        part: &mut Part,
        id: ReservationId,
        sku: &Sku,
        loc: LocIdx,
        missing: i64,
        key: u64,
        ev: &mut Events,
    ) {
        let t = part.tenant;
        let c = part.channel;
        // What each item of the SKU lost at `loc`, in item order: each re-allocates its own.
        let mut lost: Vec<(usize, i64)> = Vec::new();
        let mut left = missing;
        for (ii, item) in part
            .items
            .iter_mut()
            .enumerate()
            .filter(|(_, i)| i.sku(&part.lines) == sku)
        {
            let mut took = 0;
            for a in item.allocs.iter_mut().filter(|a| a.loc == loc) {
                let take = left.min(a.open);
                a.open -= take;
                left -= take;
                took += take;
            }
            if took > 0 {
                lost.push((ii, took));
            }
        }
        self.with_level(t, sku, loc, |l| {
            l.on_hand -= missing;
            l.committed -= missing;
        });
        ev.push(
            key,
            EventKind::Discrepancy {
                id,
                sku: sku.clone(),
                location: loc_id(cfg, loc),
                missing,
            },
        );
        let app = cfg.rules.applicable(sku, c);
        let routing = app.routing.and_then(|r| match &r.kind {
            crate::rules::CompiledKind::Routing(r) => Some(r.clone()),
            _ => None,
        });
        let candidates: Vec<(LocIdx, i64)> = self
            .sku(t, sku.as_str())
            .map(|s| {
                s.levels
                    .iter()
                    .filter(|l| l.loc != loc && ats::eligible(&app, l.loc))
                    .map(|l| (l.loc, l.available()))
                    .collect()
            })
            .unwrap_or_default();
        let order = order_locations(cfg, routing.as_ref(), &candidates, None, &BTreeMap::new());
        for (ii, mut need) in lost {
            let item = &mut part.items[ii];
            for &to in &order {
                if need == 0 {
                    break;
                }
                let avail = self
                    .sku(t, sku.as_str())
                    .and_then(|s| s.level(to))
                    .map_or(0, |l| l.available());
                let take = need.min(avail);
                if take <= 0 {
                    continue;
                }
                need -= take;
                self.with_level(t, sku, to, |l| l.committed += take);
                match item.allocs.iter_mut().find(|a| a.loc == to) {
                    Some(a) => a.open += take,
                    None => item.allocs.push(Alloc::new(to, take, 0, 0)),
                }
                ev.push(
                    key,
                    EventKind::Reallocated {
                        id,
                        sku: sku.clone(),
                        from: loc_id(cfg, loc),
                        to: loc_id(cfg, to),
                        quantity: take,
                    },
                );
            }
            if need > 0 {
                item.set_backordered(item.backordered() + need);
                self.adjust_held(t, sku, c, -need);
                ev.push(
                    key,
                    EventKind::Backordered {
                        id,
                        sku: sku.clone(),
                        location: loc_id(cfg, loc),
                        quantity: need,
                        cause: "short_pick".into(),
                    },
                );
            }
        }
    }

    fn apply_return(
        &mut self,
        job: &Job,
        id: ReservationId,
        sku: &Sku,
        loc: LocIdx,
        quantity: i64,
        damaged: bool,
        ev: &mut Events,
    ) {
        let t = job.tenant;
        let part = self
            .parts
            .get_mut(&id)
            .expect("decided on an existing part");
        let mut left = quantity;
        let lines = &part.lines;
        for item in part.items.iter_mut().filter(|i| i.sku(lines) == sku) {
            for a in item.allocs.iter_mut().filter(|a| a.loc == loc) {
                let r = left.min(a.shipped() - a.returned());
                a.take_back(r);
                left -= r;
            }
        }
        self.with_level(t, sku, loc, |l| {
            l.on_hand += quantity;
            if damaged {
                l.damaged += quantity;
            }
        });
        let cfg = self.config(t);
        ev.push(
            0,
            EventKind::Returned {
                id,
                sku: sku.clone(),
                location: loc_id(cfg, loc),
                quantity,
                damaged,
            },
        );
    }

    fn read_stock(&self, job: &Job, sku: &Sku) -> PartData {
        let cfg = self.config(job.tenant);
        if let Some(components) = cfg.bundles.get(sku) {
            return PartData::ComponentAts(self.component_ats(job.tenant, components));
        }
        let st = self.sku(job.tenant, sku.as_str());
        let locations = st
            .map(|s| s.levels.iter().map(|l| level_view(cfg, l)).collect())
            .unwrap_or_default();
        let channels = cfg
            .channels
            .iter()
            .enumerate()
            .map(|(c, ch)| ChannelAts {
                channel: ch.id.clone(),
                available_to_sell: st.map_or(0, |s| s.ats(c as ChanIdx)),
            })
            .collect();
        PartData::Stock(Box::new(StockView {
            sku: sku.clone(),
            locations,
            channels,
            average_unit_cost: st.and_then(|s| s.cost.as_deref().copied()),
            components: Vec::new(),
        }))
    }

    fn component_ats(
        &self,
        tenant: u32,
        components: &[crate::config::Component],
    ) -> Vec<(Sku, Vec<i64>)> {
        let n = self.config(tenant).channels.len();
        components
            .iter()
            .filter(|c| self.owns(tenant, c.sku.as_str()))
            .map(|c| {
                let st = self.sku(tenant, c.sku.as_str());
                (
                    c.sku.clone(),
                    (0..n)
                        .map(|ch| st.map_or(0, |s| s.ats(ch as ChanIdx)))
                        .collect(),
                )
            })
            .collect()
    }

    fn read_explain(&self, job: &Job, sku: &Sku, channel: ChanIdx) -> PartData {
        let cfg = self.config(job.tenant);
        if let Some(components) = cfg.bundles.get(sku) {
            return PartData::ComponentAts(self.component_ats(job.tenant, components));
        }
        let mut terms = Vec::new();
        let (levels, held): (&[Level], &[i64]) = match self.sku(job.tenant, sku.as_str()) {
            Some(s) => (&s.levels, s.held()),
            None => (&[], &[]),
        };
        let v = ats::ats(cfg, sku, levels, held, channel, Some(&mut terms));
        PartData::Explain(Box::new(Explanation {
            sku: sku.clone(),
            channel: cfg.channels[channel as usize].id.clone(),
            available_to_sell: v,
            terms,
        }))
    }
}

/// Takes up to `q` open units of `sku` at `loc` from a part's allocations, in item order;
/// as shipped units when `ship`. Returns the units taken.
fn take_open(part: &mut Part, sku: &Sku, loc: LocIdx, q: i64, ship: bool) -> i64 {
    let mut left = q;
    let lines = &part.lines;
    for item in part.items.iter_mut().filter(|i| i.sku(lines) == sku) {
        for a in item.allocs.iter_mut().filter(|a| a.loc == loc) {
            let take = left.min(a.open);
            a.open -= take;
            if ship {
                a.ship(take);
            }
            left -= take;
        }
    }
    q - left
}

fn average_cost(
    cost: rust_decimal::Decimal,
    on_hand: i64,
    unit_cost: rust_decimal::Decimal,
    q: i64,
) -> rust_decimal::Decimal {
    let (a, b) = (
        rust_decimal::Decimal::from(on_hand),
        rust_decimal::Decimal::from(q),
    );
    cost.checked_mul(a)
        .and_then(|x| unit_cost.checked_mul(b).and_then(|y| x.checked_add(y)))
        .and_then(|s| s.checked_div(a + b))
        .map_or(unit_cost, |v| v.round_dp(6))
}

fn job_reservation(job: &Job) -> Option<ReservationId> {
    match &job.kind {
        JobKind::Extend { id, .. }
        | JobKind::Commit { id, .. }
        | JobKind::Release { id }
        | JobKind::Cancel { id }
        | JobKind::Fulfil { id, .. }
        | JobKind::Return { id, .. } => Some(*id),
        _ => None,
    }
}

pub fn level_view(cfg: &TenantConfig, l: &Level) -> LevelView {
    LevelView {
        location: loc_id(cfg, l.loc),
        on_hand: l.on_hand,
        reserved: l.reserved,
        committed: l.committed,
        damaged: l.damaged,
        quality_control: l.quality_control,
        safety_stock: l.safety_stock,
        incoming: l.incoming,
        incoming_expected_at: (l.incoming_at != 0).then_some(l.incoming_at),
        available: l.available(),
    }
}

// ---------------------------------------------------------------------------------------------
// merge

/// Combines every participant's output into the command's answer. Pure and independent of the
/// number of shards: outputs are combined in an order that only their content decides.
pub fn merge(
    job: &Job,
    cfg: Option<&TenantConfig>,
    d: &Decision,
    outs: impl IntoIterator<Item = PartOut>,
) -> Finished {
    let mut events: Vec<(u64, EventKind)> = Vec::new();
    let mut data = Vec::new();
    let mut refusal = None;
    for o in outs {
        if events.is_empty() {
            events = o.events;
        } else {
            events.extend(o.events);
        }
        match o.data {
            PartData::Refused(r) => refusal = Some(r),
            PartData::None => {}
            other => data.push(other),
        }
    }
    events.sort_by_key(|(k, _)| *k);
    let mut finished = Finished::new(Outcome::Ok(Reply::Done));
    match d {
        Decision::Refuse(r) => {
            finished.outcome = Outcome::Refused(r.clone());
            if matches!(job.kind, JobKind::Reserve { .. }) {
                finished.dropped.push(ReservationId(job.seq));
            }
            return finished;
        }
        Decision::ExpireThenRefuse(r) => {
            finished.outcome = Outcome::Refused(r.clone());
            if let Some(id) = job_reservation(job) {
                finished.push_event(job, None, EventKind::ReservationExpired { id });
            }
            return finished;
        }
        _ => {}
    }
    if let Some(r) = refusal {
        finished.outcome = Outcome::Refused(r);
        return finished;
    }
    if job.quiet {
        // A replayed hold whose answer nobody reads (only reservations are quiet): the shards
        // have applied it, and a reservation's answer and events change nothing else.
        return finished;
    }
    let mut parts: Vec<Part> = Vec::new();
    for d in std::mem::take(&mut data) {
        match d {
            PartData::Reservation(s) => parts.push(s.part),
            other => data.push(other),
        }
    }
    let mut parts = Some(parts);
    let mut parts = move || parts.take().unwrap_or_default();
    // The command's own event, before those of the parts.
    let mut head: Option<EventKind> = None;
    let mut tenant_events = Vec::new();
    finished.outcome = match &job.kind {
        JobKind::Config { event, config } => {
            head = Some(EventKind::clone(event));
            match **event {
                EventKind::RulesPut { .. } => Outcome::Ok(Reply::Rules {
                    version: config.rule_document.version,
                }),
                _ => Outcome::Ok(Reply::Done),
            }
        }
        JobKind::Reserve { .. } => {
            let Decision::Reserve { granted, plans } = d else {
                unreachable!("reserve decides Reserve")
            };
            let view = held_view(cfg.expect("tenant config"), job, granted, plans);
            head = Some(held_event(&view));
            Outcome::Ok(Reply::Reservation(view))
        }
        JobKind::Commit { id, .. } => {
            let cfg = cfg.expect("tenant config");
            let view = reservation_view(cfg, *id, &parts(), job.now);
            head = Some(EventKind::ReservationCommitted {
                id: *id,
                lines: view.lines.clone(),
            });
            Outcome::Ok(Reply::Reservation(view))
        }
        JobKind::Extend { id, expires_at } => {
            head = Some(EventKind::ReservationExtended {
                id: *id,
                expires_at: *expires_at,
            });
            Outcome::Ok(Reply::Done)
        }
        JobKind::Release { id } => {
            head = Some(EventKind::ReservationReleased { id: *id });
            Outcome::Ok(Reply::Done)
        }
        JobKind::Cancel { id } => {
            head = Some(EventKind::ReservationCancelled { id: *id });
            Outcome::Ok(Reply::Done)
        }
        JobKind::Tick => {
            let (mut expired, mut dropped) = (Vec::new(), Vec::new());
            for d in &data {
                if let PartData::Ticked {
                    expired: e,
                    dropped: dr,
                } = d
                {
                    expired.extend_from_slice(e);
                    dropped.extend_from_slice(dr);
                }
            }
            expired.sort();
            expired.dedup();
            dropped.sort();
            dropped.dedup();
            tenant_events.extend(
                expired
                    .iter()
                    .map(|&(id, t)| (t, EventKind::ReservationExpired { id })),
            );
            let reply = Reply::Ticked {
                expired: expired.len() as u64,
                dropped: dropped.len() as u64,
            };
            finished.dropped = dropped;
            Outcome::Ok(reply)
        }
        JobKind::GetStock { sku } => merge_stock(cfg.expect("tenant config"), sku, data),
        JobKind::Explain { sku, channel } => {
            merge_explain(cfg.expect("tenant config"), sku, *channel, data)
        }
        JobKind::GetReservation { id } => {
            let parts = parts();
            if parts.is_empty() {
                Outcome::Refused(Refusal::not_found(format!("reservation {id}")))
            } else {
                Outcome::Ok(Reply::Reservation(reservation_view(
                    cfg.expect("tenant config"),
                    *id,
                    &parts,
                    job.now,
                )))
            }
        }
        _ => Outcome::Ok(Reply::Done),
    };
    // Numbered in place, in the list the caller receives: one allocation, no copy.
    finished
        .events
        .reserve_exact(usize::from(head.is_some()) + events.len() + tenant_events.len());
    if let Some(e) = head {
        finished.push_event(job, None, e);
    }
    for (_, e) in events {
        finished.push_event(job, None, e);
    }
    for (t, e) in tenant_events {
        finished.push_event(job, Some(t), e);
    }
    finished
}

fn merge_stock(cfg: &TenantConfig, sku: &Sku, data: Vec<PartData>) -> Outcome {
    let mut comps: BTreeMap<Sku, Vec<i64>> = BTreeMap::new();
    for d in data {
        match d {
            PartData::Stock(v) => return Outcome::Ok(Reply::Stock(*v)),
            PartData::ComponentAts(v) => comps.extend(v),
            _ => {}
        }
    }
    let components = cfg.bundles.get(sku).cloned().unwrap_or_default();
    let channels = cfg
        .channels
        .iter()
        .enumerate()
        .map(|(c, ch)| ChannelAts {
            channel: ch.id.clone(),
            available_to_sell: bundle_ats(&components, &comps, c),
        })
        .collect();
    Outcome::Ok(Reply::Stock(StockView {
        sku: sku.clone(),
        locations: Vec::new(),
        channels,
        average_unit_cost: None,
        components,
    }))
}

fn bundle_ats(
    components: &[crate::config::Component],
    comps: &BTreeMap<Sku, Vec<i64>>,
    c: usize,
) -> i64 {
    components
        .iter()
        .map(|k| comps.get(&k.sku).map_or(0, |v| v[c]) / k.quantity)
        .min()
        .unwrap_or(0)
}

fn merge_explain(cfg: &TenantConfig, sku: &Sku, channel: ChanIdx, data: Vec<PartData>) -> Outcome {
    let mut comps: BTreeMap<Sku, Vec<i64>> = BTreeMap::new();
    for d in data {
        match d {
            PartData::Explain(e) => return Outcome::Ok(Reply::Explain(*e)),
            PartData::ComponentAts(v) => comps.extend(v),
            _ => {}
        }
    }
    let components = cfg.bundles.get(sku).cloned().unwrap_or_default();
    let c = channel as usize;
    let terms = components
        .iter()
        .map(|k| {
            let a = comps.get(&k.sku).map_or(0, |v| v[c]);
            Term {
                term: "bundle_component".into(),
                quantity: a / k.quantity,
                rule: None,
                detail: Some(format!(
                    "{}: ATS {a} / {} per bundle; the bundle's ATS is the least of these",
                    k.sku, k.quantity
                )),
            }
        })
        .collect();
    Outcome::Ok(Reply::Explain(Explanation {
        sku: sku.clone(),
        channel: cfg.channels[c].id.clone(),
        available_to_sell: bundle_ats(&components, &comps, c),
        terms,
    }))
}

/// The answer [`merge`] and [`crate::front::respond`] give a reservation that holds, when its
/// shards' outputs carry no events and no data (a single-shard hold always): its view and its
/// one event, built where they end up. Nearly every reservation is answered so, and the
/// general path moved the answer through three intermediate values on the way.
pub fn held_answer(
    job: &Job,
    cfg: &TenantConfig,
    granted: &Granted,
    plans: &[ItemPlan],
) -> (crate::outcome::Response, Vec<crate::outcome::Event>) {
    debug_assert!(!job.quiet, "a quiet hold has no answer to build");
    let view = held_view(cfg, job, granted, plans);
    let events = vec![crate::outcome::Event {
        seq: job.seq,
        index: 0,
        at: job.now,
        tenant: job.tenant_id.clone(),
        key_id: job.key_id.clone(),
        kind: held_event(&view),
    }];
    let response = crate::outcome::Response {
        seq: Some(job.seq),
        replayed: false,
        outcome: Outcome::Ok(Reply::Reservation(view)),
    };
    (response, events)
}

/// The event of a reservation just held, `view`: it shares the view's lines, no copy.
fn held_event(view: &ReservationView) -> EventKind {
    EventKind::ReservationHeld {
        id: view.id,
        channel: view.channel.clone(),
        lines: view.lines.clone(),
    }
}

/// A line's view before its allocations or components: its SKU, the units granted and, when
/// fewer, the units requested.
fn line_head(l: &LineHeader, granted: i64) -> LineView {
    LineView {
        sku: l.sku.clone(),
        quantity: granted,
        requested: if granted != l.requested() {
            l.requested()
        } else {
            0
        },
        allocations: Allocations::new(),
        components: Vec::new(),
        backordered: 0,
    }
}

/// The view of a reservation just held, from its decision: the same as
/// [`reservation_view`] would build from its parts, without copying them.
fn held_view(
    cfg: &TenantConfig,
    job: &Job,
    granted: &Granted,
    plans: &[ItemPlan],
) -> ReservationView {
    let JobKind::Reserve {
        channel,
        lines,
        items,
        expires_at,
        order_ref,
        ..
    } = &job.kind
    else {
        unreachable!()
    };
    let allocs = |p: &ItemPlan| -> Allocations {
        crate::small(p.allocations.iter().map(|&(loc, q)| AllocationView {
            location: loc_id(cfg, loc),
            quantity: q,
            shipped: 0,
            returned: 0,
        }))
    };
    let line_view = |(li, l): (usize, &LineHeader)| {
        let granted = granted.get(lines, li);
        let mut v = line_head(l, granted);
        let mut its = plans.iter().filter(|p| items[p.item].line as usize == li);
        if l.is_bundle() {
            v.components = its
                .map(|p| ItemView {
                    sku: items[p.item].sku.clone(),
                    quantity: p.quantity,
                    allocations: allocs(p),
                    backordered: 0,
                })
                .collect();
        } else if let Some(p) = its.next() {
            v.allocations = allocs(p);
        }
        v
    };
    let lines = match &lines[..] {
        [one] => crate::outcome::Lines::one(line_view((0, one))),
        _ => lines.iter().enumerate().map(line_view).collect(),
    };
    ReservationView {
        id: ReservationId(job.seq),
        channel: cfg.channels[*channel as usize].id.clone(),
        state: ReservationState::Held,
        created_at: job.now,
        expires_at: *expires_at,
        order_ref: order_ref.as_deref().cloned(),
        lines,
    }
}

/// Builds the view of a reservation from its parts (in any order; at least one).
pub fn reservation_view<P: std::borrow::Borrow<Part>>(
    cfg: &TenantConfig,
    id: ReservationId,
    parts: &[P],
    now: TimeMs,
) -> ReservationView {
    let head: &Part = parts[0].borrow();
    let mut items: smallvec::SmallVec<[&PartItem; 4]> =
        parts.iter().flat_map(|p| p.borrow().items.iter()).collect();
    items.sort_by_key(|i| i.item);
    let allocs = |it: &PartItem| -> Allocations {
        it.allocs
            .iter()
            .map(|a| AllocationView {
                location: loc_id(cfg, a.loc),
                quantity: a.open,
                shipped: a.shipped(),
                returned: a.returned(),
            })
            .collect()
    };
    let lines = head
        .lines
        .iter()
        .enumerate()
        .map(|(li, l)| {
            let its: smallvec::SmallVec<[&&PartItem; 4]> =
                items.iter().filter(|i| i.line as usize == li).collect();
            let granted = head.granted().get(&head.lines, li);
            let mut v = line_head(l, granted);
            if l.is_bundle() {
                v.components = its
                    .iter()
                    .map(|it| ItemView {
                        sku: it.sku(&head.lines).clone(),
                        quantity: it.quantity,
                        allocations: allocs(it),
                        backordered: it.backordered(),
                    })
                    .collect();
            } else if let Some(it) = its.first() {
                v.allocations = allocs(it);
                v.backordered = it.backordered();
            }
            v
        })
        .collect();
    ReservationView {
        id,
        channel: cfg.channels[head.channel as usize].id.clone(),
        state: view_state(head, &items, now),
        created_at: head.created_at,
        expires_at: head.expires_at,
        order_ref: head.order_ref().map(str::to_owned),
        lines,
    }
}

/// The state a reservation's view shows: its lifecycle, with a hold past its expiry shown
/// expired and a commitment's shipments shown (`items`: the items of all its parts).
fn view_state(head: &Part, items: &[&PartItem], now: TimeMs) -> ReservationState {
    let (open, shipped, back): (i64, i64, i64) = items.iter().fold((0, 0, 0), |(o, s, b), it| {
        (
            o + it.allocs.iter().map(|a| a.open).sum::<i64>(),
            s + it.allocs.iter().map(|a| a.shipped()).sum::<i64>(),
            b + it.backordered(),
        )
    });
    match head.lifecycle {
        Lifecycle::Held if head.expires_at <= now => ReservationState::Expired,
        Lifecycle::Held => ReservationState::Held,
        Lifecycle::Committed if shipped > 0 && open == 0 && back == 0 => {
            ReservationState::Fulfilled
        }
        Lifecycle::Committed if shipped > 0 => ReservationState::PartiallyFulfilled,
        Lifecycle::Committed => ReservationState::Committed,
        Lifecycle::Released => ReservationState::Released,
        Lifecycle::Expired => ReservationState::Expired,
        Lifecycle::Cancelled => ReservationState::Cancelled,
    }
}

/// A reservation's view as [`view_shows`] reads it: borrowed from a [`ReservationView`]
/// ([`Shown::of`]) or read from a packed stored answer without building one
/// ([`crate::packed::packed_view`]). A cart of up to four lines at one location each takes no
/// heap. Not comparable with `==`: its lists make it invariant in its lifetime, so two views
/// borrowing different things are compared as printed.
#[derive(Debug)]
pub struct Shown<'a> {
    pub id: u64,
    pub channel: &'a str,
    pub state: ReservationState,
    pub created_at: TimeMs,
    pub expires_at: TimeMs,
    pub order_ref: Option<&'a str>,
    pub lines: smallvec::SmallVec<[ShownLine<'a>; 4]>,
}

#[derive(Debug)]
pub struct ShownLine<'a> {
    pub sku: &'a str,
    pub quantity: i64,
    pub requested: i64,
    pub allocations: ShownAllocations<'a>,
    pub components: Vec<ShownItem<'a>>,
    pub backordered: i64,
}

#[derive(Debug)]
pub struct ShownItem<'a> {
    pub sku: &'a str,
    pub quantity: i64,
    pub allocations: ShownAllocations<'a>,
    pub backordered: i64,
}

#[derive(Debug)]
pub struct ShownAllocation<'a> {
    pub location: &'a str,
    pub quantity: i64,
    pub shipped: i64,
    pub returned: i64,
}

pub type ShownAllocations<'a> = smallvec::SmallVec<[ShownAllocation<'a>; 1]>;

impl<'a> Shown<'a> {
    pub fn of(v: &'a ReservationView) -> Shown<'a> {
        let allocations = |a: &'a [AllocationView]| -> ShownAllocations<'a> {
            a.iter()
                .map(|a| ShownAllocation {
                    location: a.location.as_str(),
                    quantity: a.quantity,
                    shipped: a.shipped,
                    returned: a.returned,
                })
                .collect()
        };
        Shown {
            id: v.id.0,
            channel: v.channel.as_str(),
            state: v.state,
            created_at: v.created_at,
            expires_at: v.expires_at,
            order_ref: v.order_ref.as_deref(),
            lines: v
                .lines
                .iter()
                .map(|l| ShownLine {
                    sku: l.sku.as_str(),
                    quantity: l.quantity,
                    requested: l.requested,
                    allocations: allocations(&l.allocations),
                    components: l
                        .components
                        .iter()
                        .map(|c| ShownItem {
                            sku: c.sku.as_str(),
                            quantity: c.quantity,
                            allocations: allocations(&c.allocations),
                            backordered: c.backordered,
                        })
                        .collect(),
                    backordered: l.backordered,
                })
                .collect(),
        }
    }
}

/// True when `v` is exactly what [`reservation_view`] builds of `id` from `parts` at `now`,
/// found without building it: a snapshot asks this of every reservation's stored answer, and
/// building a view allocates. An empty `parts`, or parts naming a channel or location `cfg`
/// does not have, are never shown.
pub fn view_shows<P: std::borrow::Borrow<Part>>(
    v: &Shown<'_>,
    cfg: &TenantConfig,
    id: ReservationId,
    parts: &[P],
    now: TimeMs,
) -> bool {
    let Some(head) = parts.first().map(|p| p.borrow()) else {
        return false;
    };
    if v.id != id.0
        || v.created_at != head.created_at
        || v.expires_at != head.expires_at
        || v.order_ref != head.order_ref()
        || v.lines.len() != head.lines.len()
        || cfg
            .channels
            .get(head.channel as usize)
            .map(|c| c.id.as_str())
            != Some(v.channel)
    {
        return false;
    }
    let mut items: smallvec::SmallVec<[&PartItem; 4]> =
        parts.iter().flat_map(|p| p.borrow().items.iter()).collect();
    items.sort_by_key(|i| i.item);
    if v.state != view_state(head, &items, now) {
        return false;
    }
    let allocations_are = |shown: &[ShownAllocation<'_>], it: &PartItem| {
        shown.len() == it.allocs.len()
            && shown.iter().zip(&it.allocs).all(|(s, a)| {
                s.quantity == a.open
                    && s.shipped == a.shipped()
                    && s.returned == a.returned()
                    && cfg.locations.get(a.loc as usize).map(|l| l.id.as_str()) == Some(s.location)
            })
    };
    head.lines
        .iter()
        .zip(v.lines.iter())
        .enumerate()
        .all(|(li, (l, shown))| {
            let granted = head.granted().get(&head.lines, li);
            let requested = if granted != l.requested() {
                l.requested()
            } else {
                0
            };
            if shown.sku != l.sku.as_str()
                || shown.quantity != granted
                || shown.requested != requested
            {
                return false;
            }
            let mut its = items.iter().filter(|i| i.line as usize == li);
            if l.is_bundle() {
                shown.allocations.is_empty()
                    && shown.backordered == 0
                    && shown.components.len() == its.clone().count()
                    && shown.components.iter().zip(its).all(|(c, it)| {
                        c.sku == it.sku(&head.lines).as_str()
                            && c.quantity == it.quantity
                            && c.backordered == it.backordered()
                            && allocations_are(&c.allocations, it)
                    })
            } else {
                shown.components.is_empty()
                    && match its.next() {
                        Some(it) => {
                            shown.backordered == it.backordered()
                                && allocations_are(&shown.allocations, it)
                        }
                        None => shown.backordered == 0 && shown.allocations.is_empty(),
                    }
            }
        })
}

/// Committed units (with damaged and quality-control units) that on hand does not cover: what
/// an oversell incident backorders. Holds and safety stock are not counted: a paid order is not
/// given up for a cart's hold or for a buffer.
fn uncovered(l: &Level) -> i64 {
    l.committed + l.damaged + l.quality_control - l.on_hand
}

fn bucket_name(b: Bucket) -> &'static str {
    match b {
        Bucket::Available => "available",
        Bucket::Damaged => "damaged",
        Bucket::QualityControl => "quality_control",
        Bucket::SafetyStock => "safety_stock",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Location, LocationKind};
    use crate::ids::{LocationId, TenantId};
    use proptest::prelude::*;

    const REGIONS: [Option<&str>; 3] = [None, Some("eu"), Some("us")];

    fn routing() -> impl Strategy<Value = Option<CompiledRouting>> {
        prop_oneof![
            Just(None),
            Just(Some(CompiledRouting::MostStock)),
            Just(Some(CompiledRouting::FewestSplits)),
            Just(Some(CompiledRouting::Priority(vec![2, 0]))),
            Just(Some(CompiledRouting::Nearest(BTreeMap::from([
                ("eu".to_string(), vec!["us".to_string()]),
                ("us".to_string(), vec![]),
            ])))),
        ]
    }

    fn fill() -> impl Strategy<Value = FillPolicy> {
        prop_oneof![
            Just(FillPolicy::AllOrNothing),
            Just(FillPolicy::Partial),
            (1u16..3).prop_map(|max_locations| FillPolicy::Split { max_locations }),
        ]
    }

    /// An item's preparation: its ATS and some of the three locations, in creation order.
    fn item_prep() -> impl Strategy<Value = ItemPrep> {
        (
            -5i64..60,
            proptest::collection::vec(proptest::option::of(-3i64..30), 3),
            routing(),
        )
            .prop_map(|(ats, avail, routing)| ItemPrep {
                item: 0,
                ats,
                locations: avail
                    .iter()
                    .enumerate()
                    .filter_map(|(l, a)| a.map(|a| (l as LocIdx, a)))
                    .collect(),
                routing,
                sku_slot: None,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        /// The paths for lines of one item each and distinct SKUs, and for one item, decide
        /// exactly as the general one; a hold's answer built by [`held_answer`] is the one
        /// [`merge`] and `respond` build.
        #[test]
        fn independent_items_decide_as_the_general_path(
            lines in proptest::collection::vec((1i64..40, 1i64..4, any::<bool>()), 1..5),
            fill in fill(),
            ship_to in 0usize..3,
            regions in proptest::collection::vec(0usize..3, 3),
            preps in proptest::collection::vec(
                proptest::collection::vec(proptest::option::of(item_prep()), 4),
                1..3,
            ),
        ) {
            let cfg = TenantConfig {
                locations: regions
                    .iter()
                    .enumerate()
                    .map(|(i, &r)| Location {
                        id: LocationId::new(&format!("l{i}")).unwrap(),
                        kind: LocationKind::Warehouse,
                        name: String::new(),
                        region: REGIONS[r].map(str::to_string),
                        wms: None,
                    })
                    .collect(),
                channels: vec![crate::config::Channel {
                    id: crate::ids::ChannelId::new("web").unwrap(),
                    kind: crate::config::ChannelKind::Shopify,
                    priority: 0,
                }],
                ..TenantConfig::default()
            };
            let sku = |i: usize| Sku::new(&format!("mug-{i}")).unwrap();
            let headers: Vec<LineHeader> = lines
                .iter()
                .enumerate()
                .map(|(i, &(requested, _, is_bundle))| LineHeader::new(sku(i), requested, is_bundle))
                .collect();
            let job = Job {
                seq: 7,
                now: 1_000,
                tenant: 0,
                tenant_id: TenantId::new("t").unwrap(),
                key_id: Default::default(),
                kind: JobKind::Reserve {
                    channel: 0,
                    lines: headers.into(),
                    items: lines
                        .iter()
                        .enumerate()
                        .map(|(i, &(_, per_unit, _))| ItemReq {
                            line: i as u16,
                            slot: 0,
                            shard: 0,
                            sku: sku(i),
                            per_unit,
                        })
                        .collect(),
                    expires_at: 2_000,
                    order_ref: None,
                    ship_to_region: REGIONS[ship_to].map(|r| Box::new(r.to_string())),
                    fill,
                },
                shards: 1,
                quiet: false,
            };
            // Each shard's preparation: some of the items, in item order.
            let preps: Vec<Prep> = preps
                .into_iter()
                .map(|p| {
                    let items: smallvec::SmallVec<_> = p
                        .into_iter()
                        .take(lines.len())
                        .enumerate()
                        .filter_map(|(i, ip)| ip.map(|ip| ItemPrep { item: i, ..ip }))
                        .collect();
                    if items.is_empty() { Prep::None } else { Prep::Items(items) }
                })
                .collect();
            let JobKind::Reserve { lines, items, .. } = &job.kind else { unreachable!() };
            prop_assert!(independent(lines, items));
            let one = decide_independent(&cfg, &preps, lines, items, fill, REGIONS[ship_to]);
            let general = decide_items(&cfg, &preps, lines, items, fill, REGIONS[ship_to]);
            prop_assert_eq!(format!("{one:?}"), format!("{general:?}"));
            if let ([line], [item]) = (&lines[..], &items[..]) {
                let single = decide_one_item(&cfg, &preps, line, item, fill, REGIONS[ship_to]);
                prop_assert_eq!(format!("{single:?}"), format!("{general:?}"));
            }
            // A hold's answer built in one step is the one `merge` and `respond` build.
            if let Decision::Reserve { granted, plans } = &general {
                let merged = merge(&job, Some(&cfg), &general, std::iter::empty());
                let want = crate::front::respond(&job, merged, |_| unreachable!());
                prop_assert_eq!(held_answer(&job, &cfg, granted, plans), want);
            }
        }
    }
}
