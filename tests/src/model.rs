//! A naive, single-threaded reference model of `docs/allocation.md`.
//!
//! It shares nothing with the engine but the public request and response types: stock levels
//! are a `BTreeMap<(SKU, location), Level>`, reservations a `BTreeMap<id, Reservation>`, and
//! every ATS is recomputed from scratch, rule by rule, each time it is needed. It is slow and
//! simple on purpose: the model test runs random command sequences through the sharded engine
//! and through this model and compares every answer.
//!
//! The model assumes one tenant and valid rule documents (rule validation is not modelled).

use depot_engine::outcome::{
    AllocationView, Allocations, ItemView, LineView, ReservationState, ReservationView,
};
use depot_engine::outcome::{ChannelAts, LevelView, Shortage, StockView};
use depot_engine::rules::{OversellPolicy, Routing, Rule, RuleDocument, RuleKind};
use depot_engine::ReservationId;
use depot_engine::{
    Bucket, ChannelId, Command, CommitLine, Component, FillPolicy, FulfilLine, Limits, LineRequest,
    LocationId, Outcome, Refusal, Reply, Request, Response, Sku, TenantId,
};
use std::collections::{BTreeMap, BTreeSet};

/// Largest quantity of any input (docs/allocation.md).
pub const QUANTITY_MAX: i64 = 1_000_000_000_000;

/// A refusal, compared by kind (messages are free text), with the data the contract fixes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    InvalidRequest,
    NotFound,
    InsufficientStock(Vec<Shortage>),
    InvalidState,
    CompareFailed { expected: i64, actual: i64 },
    IdempotencyKeyReused,
    LimitExceeded,
    Overloaded,
}

/// What an answer says, in the form the model and the engine are compared in.
#[derive(Clone, Debug, PartialEq)]
pub enum Obs {
    Done,
    Rules(u64),
    /// A stock view without the average unit cost (the model does not keep costs).
    Stock(StockView),
    Reservation(ReservationView),
    /// An explanation: only the ATS number is compared, not the wording of its terms.
    Explain(i64),
    Ticked {
        expired: u64,
        dropped: u64,
    },
    Refused(Refused),
}

/// One answer: sequence number, replay flag and outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub seq: Option<u64>,
    pub replayed: bool,
    pub obs: Obs,
}

impl Answer {
    pub fn is_ok(&self) -> bool {
        !matches!(self.obs, Obs::Refused(_))
    }
}

/// The comparable form of an engine response.
pub fn observe(r: &Response) -> Answer {
    let obs = match &r.outcome {
        Outcome::Ok(reply) => match reply {
            Reply::Done => Obs::Done,
            Reply::Rules { version } => Obs::Rules(*version),
            Reply::Stock(v) => Obs::Stock(StockView {
                average_unit_cost: None,
                ..v.clone()
            }),
            Reply::Reservation(v) => Obs::Reservation(v.clone()),
            Reply::Explain(e) => Obs::Explain(e.available_to_sell),
            Reply::Ticked { expired, dropped } => Obs::Ticked {
                expired: *expired,
                dropped: *dropped,
            },
        },
        Outcome::Refused(f) => Obs::Refused(match f {
            Refusal::InvalidRequest { .. } => Refused::InvalidRequest,
            Refusal::NotFound { .. } => Refused::NotFound,
            Refusal::InsufficientStock { shortages } => {
                Refused::InsufficientStock(shortages.to_vec())
            }
            Refusal::InvalidState { .. } => Refused::InvalidState,
            Refusal::CompareFailed { expected, actual } => Refused::CompareFailed {
                expected: *expected,
                actual: *actual,
            },
            Refusal::IdempotencyKeyReused => Refused::IdempotencyKeyReused,
            Refusal::LimitExceeded { .. } => Refused::LimitExceeded,
            Refusal::Overloaded | Refusal::Unavailable { .. } => Refused::Overloaded,
        }),
    };
    Answer {
        seq: r.seq,
        replayed: r.replayed,
        obs,
    }
}

/// One (SKU, location) stock level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Level {
    pub on_hand: i64,
    pub reserved: i64,
    pub committed: i64,
    pub damaged: i64,
    pub quality_control: i64,
    pub safety_stock: i64,
    pub incoming: i64,
    /// 0 when no date is known.
    pub incoming_at: u64,
}

impl Level {
    pub fn available(&self) -> i64 {
        self.on_hand
            - self.reserved
            - self.committed
            - self.damaged
            - self.quality_control
            - self.safety_stock
    }
    pub fn sellable(&self) -> i64 {
        self.on_hand - self.damaged - self.quality_control - self.safety_stock
    }
}

/// Where a reservation is in its life (the view derives fulfilled / partially fulfilled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    Held,
    Committed,
    Released,
    Expired,
    Cancelled,
}

impl Life {
    pub fn live(self) -> bool {
        matches!(self, Life::Held | Life::Committed)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alloc {
    pub loc: usize,
    pub open: i64,
    pub shipped: i64,
    pub returned: i64,
}

/// A physical SKU of a reservation: a plain line's SKU or one bundle component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub line: usize,
    pub sku: Sku,
    pub per_unit: i64,
    pub quantity: i64,
    pub allocs: Vec<Alloc>,
    pub backordered: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub sku: Sku,
    pub requested: i64,
    pub granted: i64,
    pub bundle: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub channel: usize,
    pub life: Life,
    pub created_at: u64,
    pub expires_at: u64,
    pub ended_at: u64,
    pub order_ref: Option<String>,
    pub lines: Vec<Line>,
    pub items: Vec<Item>,
}

impl Reservation {
    fn open(&self) -> i64 {
        self.items
            .iter()
            .flat_map(|i| &i.allocs)
            .map(|a| a.open)
            .sum()
    }
    fn shipped(&self) -> i64 {
        self.items
            .iter()
            .flat_map(|i| &i.allocs)
            .map(|a| a.shipped)
            .sum()
    }
    fn backordered(&self) -> i64 {
        self.items.iter().map(|i| i.backordered).sum()
    }
}

#[derive(Clone, Debug)]
struct KeyEntry {
    command: Command,
    at: u64,
    answer: Answer,
}

/// The reference model. Fields are public so tests can pick parameters from the state and
/// check invariants.
#[derive(Clone, Debug)]
pub struct Model {
    pub limits: Limits,
    pub seq: u64,
    pub now: u64,
    pub tenant: Option<TenantId>,
    /// Locations in creation order, with their region.
    pub locations: Vec<(LocationId, Option<String>)>,
    /// Channels in creation order, with their priority.
    pub channels: Vec<(ChannelId, i32)>,
    pub bundles: BTreeMap<Sku, Vec<Component>>,
    pub rules: RuleDocument,
    pub levels: BTreeMap<(Sku, usize), Level>,
    pub reservations: BTreeMap<u64, Reservation>,
    keys: BTreeMap<String, KeyEntry>,
}

fn front(r: Refused) -> Answer {
    Answer {
        seq: None,
        replayed: false,
        obs: Obs::Refused(r),
    }
}

fn qty_ok(q: i64, min: i64) -> bool {
    (min..=QUANTITY_MAX).contains(&q)
}

/// A request refused before sequencing, or the decision to run it.
type Checked<T> = Result<T, Refused>;

// ---------------------------------------------------------------------------------------------
// rules, read naively

/// True when `rule` targets `sku`.
pub fn rule_matches_sku(rule: &Rule, sku: &Sku) -> bool {
    if let Some(list) = &rule.skus {
        return list.contains(sku);
    }
    if let Some(p) = &rule.sku_prefix {
        return sku.as_str().starts_with(p.as_str());
    }
    true
}

/// True when `rule` applies to channel `ch`.
pub fn rule_matches_channel(rule: &Rule, ch: &ChannelId) -> bool {
    if let Some(list) = &rule.channels {
        return list.contains(ch);
    }
    if let Some(list) = &rule.except_channels {
        return !list.contains(ch);
    }
    true
}

/// Specificity: a SKU list, then a prefix (longer first), then all SKUs; then naming channels.
fn specificity(rule: &Rule) -> (u8, usize, bool) {
    let target = if rule.skus.is_some() {
        (2, 0)
    } else if let Some(p) = &rule.sku_prefix {
        (1, p.len())
    } else {
        (0, 0)
    };
    (
        target.0,
        target.1,
        rule.channels.is_some() || rule.except_channels.is_some(),
    )
}

/// The most specific of `rules`; the earlier one on a tie.
fn most_specific<'a>(rules: impl Iterator<Item = &'a Rule>) -> Option<&'a Rule> {
    let mut best: Option<&Rule> = None;
    for r in rules {
        if best.is_none_or(|b| specificity(r) > specificity(b)) {
            best = Some(r);
        }
    }
    best
}

impl Model {
    pub fn new(limits: Limits) -> Self {
        Model {
            limits,
            seq: 0,
            now: 0,
            tenant: None,
            locations: Vec::new(),
            channels: Vec::new(),
            bundles: BTreeMap::new(),
            rules: RuleDocument::default(),
            levels: BTreeMap::new(),
            reservations: BTreeMap::new(),
            keys: BTreeMap::new(),
        }
    }

    pub fn loc_idx(&self, l: &LocationId) -> Option<usize> {
        self.locations.iter().position(|(id, _)| id == l)
    }

    pub fn chan_idx(&self, c: &ChannelId) -> Option<usize> {
        self.channels.iter().position(|(id, _)| id == c)
    }

    /// The levels of a SKU, by location index.
    pub fn levels_of(&self, sku: &Sku) -> Vec<(usize, Level)> {
        self.levels
            .iter()
            .filter(|((s, _), _)| s == sku)
            .map(|((_, l), v)| (*l, *v))
            .collect()
    }

    fn level(&self, sku: &Sku, loc: usize) -> Level {
        self.levels
            .get(&(sku.clone(), loc))
            .copied()
            .unwrap_or_default()
    }

    fn level_mut(&mut self, sku: &Sku, loc: usize) -> &mut Level {
        self.levels.entry((sku.clone(), loc)).or_default()
    }

    /// The matching rules of one kind for (sku, channel index).
    fn matching<'a>(
        &'a self,
        sku: &Sku,
        c: usize,
        pick: fn(&RuleKind) -> bool,
    ) -> impl Iterator<Item = &'a Rule> + 'a {
        let ch = self.channels[c].0.clone();
        let sku = sku.clone();
        self.rules.rules.iter().filter(move |r| {
            pick(&r.kind) && rule_matches_sku(r, &sku) && rule_matches_channel(r, &ch)
        })
    }

    /// True when channel `c` may sell `sku` from location `loc` (every eligibility rule agrees).
    pub fn eligible(&self, sku: &Sku, c: usize, loc: usize) -> bool {
        let id = &self.locations[loc].0;
        self.matching(sku, c, |k| matches!(k, RuleKind::Eligibility { .. }))
            .all(|r| match &r.kind {
                RuleKind::Eligibility {
                    locations,
                    deny_locations,
                } => {
                    locations.as_ref().is_none_or(|l| l.contains(id))
                        && !deny_locations.as_ref().is_some_and(|d| d.contains(id))
                }
                _ => true,
            })
    }

    pub fn buffer_rule(&self, sku: &Sku, c: usize) -> Option<&Rule> {
        most_specific(self.matching(sku, c, |k| matches!(k, RuleKind::Buffer { .. })))
    }
    pub fn cap_rule(&self, sku: &Sku, c: usize) -> Option<&Rule> {
        most_specific(self.matching(sku, c, |k| matches!(k, RuleKind::Cap { .. })))
    }
    pub fn scarcity_rule(&self, sku: &Sku, c: usize) -> Option<&Rule> {
        most_specific(self.matching(sku, c, |k| matches!(k, RuleKind::Scarcity { .. })))
    }
    pub fn routing_rule(&self, sku: &Sku, c: usize) -> Option<&Routing> {
        match most_specific(self.matching(sku, c, |k| matches!(k, RuleKind::Routing(_))))?.kind {
            RuleKind::Routing(ref r) => Some(r),
            _ => None,
        }
    }

    /// The ring-fence rule of channel `d` for `sku`, if any.
    fn fence_of(&self, sku: &Sku, d: usize) -> Option<&Rule> {
        let ch = &self.channels[d].0;
        most_specific(self.rules.rules.iter().filter(|r| {
            matches!(&r.kind, RuleKind::RingFence { channel, .. } if channel == ch)
                && rule_matches_sku(r, sku)
        }))
    }

    /// Units of `sku` reserved or committed by live reservations of channel `d`.
    pub fn held(&self, sku: &Sku, d: usize) -> i64 {
        self.reservations
            .values()
            .filter(|r| r.channel == d && r.life.live())
            .flat_map(|r| &r.items)
            .filter(|i| &i.sku == sku)
            .flat_map(|i| &i.allocs)
            .map(|a| a.open)
            .sum()
    }

    /// The ATS of channel `c` for a plain SKU, from scratch, step by step as documented.
    pub fn ats(&self, sku: &Sku, c: usize) -> i64 {
        let levels = self.levels_of(sku);
        if levels.is_empty() || levels.iter().any(|(_, l)| l.available() < 0) {
            return 0;
        }
        let pool: i64 = levels
            .iter()
            .filter(|(loc, _)| self.eligible(sku, c, *loc))
            .map(|(_, l)| l.available())
            .sum();
        let sellable: i64 = levels.iter().map(|(_, l)| l.sellable()).sum();
        let mut ats = pool;
        for d in 0..self.channels.len() {
            if d == c {
                continue;
            }
            if let Some(RuleKind::RingFence { units, percent, .. }) =
                self.fence_of(sku, d).map(|r| &r.kind)
            {
                let size = match (units, percent) {
                    (Some(u), _) => *u,
                    (None, Some(p)) => sellable * i64::from(*p) / 100,
                    (None, None) => 0,
                };
                ats -= (size - self.held(sku, d)).max(0);
            }
        }
        if let Some(RuleKind::Buffer { units, percent }) = self.buffer_rule(sku, c).map(|r| &r.kind)
        {
            match (units, percent) {
                (Some(u), _) => ats -= u,
                (None, Some(p)) => {
                    let x = ats.max(0) * i64::from(*p);
                    ats -= x / 100 + i64::from(x % 100 != 0);
                }
                (None, None) => {}
            }
        }
        ats = ats.max(0);
        if let Some(RuleKind::Cap { units }) = self.cap_rule(sku, c).map(|r| &r.kind) {
            ats = ats.min(*units);
        }
        if let Some(RuleKind::Scarcity {
            threshold,
            min_priority,
        }) = self.scarcity_rule(sku, c).map(|r| &r.kind)
        {
            let total: i64 = levels.iter().map(|(_, l)| l.available()).sum();
            if total <= *threshold && self.channels[c].1 < *min_priority {
                ats = 0;
            }
        }
        ats
    }

    /// The ATS of a bundle or plain SKU.
    pub fn ats_any(&self, sku: &Sku, c: usize) -> i64 {
        match self.bundles.get(sku) {
            Some(comps) => comps
                .iter()
                .map(|k| self.ats(&k.sku, c) / k.quantity)
                .min()
                .unwrap_or(0),
            None => self.ats(sku, c),
        }
    }

    /// The order in which an item's units are taken from `cands` (location, available).
    fn order(
        &self,
        routing: Option<&Routing>,
        cands: &[(usize, i64)],
        ship_to: Option<&str>,
        full: &BTreeMap<usize, u32>,
    ) -> Vec<usize> {
        let mut locs: Vec<(usize, i64)> = cands.iter().copied().filter(|&(_, a)| a > 0).collect();
        locs.sort_by_key(|&(l, _)| l);
        match routing {
            None => {}
            Some(Routing::Priority { locations }) => {
                let pos = |l: usize| {
                    locations
                        .iter()
                        .position(|x| *x == self.locations[l].0)
                        .unwrap_or(usize::MAX)
                };
                locs.sort_by_key(|&(l, _)| (pos(l), l));
            }
            Some(Routing::MostStock) => locs.sort_by_key(|&(l, a)| (-a, l)),
            Some(Routing::FewestSplits) => {
                locs.sort_by_key(|&(l, a)| (-i64::from(full.get(&l).copied().unwrap_or(0)), -a, l));
            }
            Some(Routing::Nearest { regions }) => {
                if let Some(r) = ship_to {
                    let listed = regions.get(r);
                    let rank = |l: usize| match &self.locations[l].1 {
                        Some(x) if x == r => 0,
                        Some(x) => listed
                            .and_then(|v| v.iter().position(|y| y == x))
                            .map_or(usize::MAX, |p| p + 1),
                        None => usize::MAX,
                    };
                    locs.sort_by_key(|&(l, _)| (rank(l), l));
                }
            }
        }
        locs.into_iter().map(|(l, _)| l).collect()
    }

    // -----------------------------------------------------------------------------------------
    // views

    pub fn level_view(&self, loc: usize, l: &Level) -> LevelView {
        LevelView {
            location: self.locations[loc].0.clone(),
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

    pub fn stock_view(&self, sku: &Sku) -> StockView {
        let channels = (0..self.channels.len())
            .map(|c| ChannelAts {
                channel: self.channels[c].0.clone(),
                available_to_sell: self.ats_any(sku, c),
            })
            .collect();
        match self.bundles.get(sku) {
            Some(comps) => StockView {
                sku: sku.clone(),
                locations: Vec::new(),
                channels,
                average_unit_cost: None,
                components: comps.clone(),
            },
            None => StockView {
                sku: sku.clone(),
                locations: self
                    .levels_of(sku)
                    .iter()
                    .map(|(loc, l)| self.level_view(*loc, l))
                    .collect(),
                channels,
                average_unit_cost: None,
                components: Vec::new(),
            },
        }
    }

    pub fn reservation_view(&self, id: u64) -> Option<ReservationView> {
        let r = self.reservations.get(&id)?;
        let allocs = |it: &Item| -> Allocations {
            it.allocs
                .iter()
                .map(|a| AllocationView {
                    location: self.locations[a.loc].0.clone(),
                    quantity: a.open,
                    shipped: a.shipped,
                    returned: a.returned,
                })
                .collect()
        };
        let lines = r
            .lines
            .iter()
            .enumerate()
            .map(|(li, l)| {
                let items: Vec<&Item> = r.items.iter().filter(|i| i.line == li).collect();
                let mut v = LineView {
                    sku: l.sku.clone(),
                    quantity: l.granted,
                    requested: if l.granted != l.requested {
                        l.requested
                    } else {
                        0
                    },
                    allocations: Allocations::new(),
                    components: Vec::new(),
                    backordered: 0,
                };
                if l.bundle {
                    v.components = items
                        .iter()
                        .map(|i| ItemView {
                            sku: i.sku.clone(),
                            quantity: i.quantity,
                            allocations: allocs(i),
                            backordered: i.backordered,
                        })
                        .collect();
                } else if let Some(i) = items.first() {
                    v.allocations = allocs(i);
                    v.backordered = i.backordered;
                }
                v
            })
            .collect();
        let state = match r.life {
            Life::Held if r.expires_at <= self.now => ReservationState::Expired,
            Life::Held => ReservationState::Held,
            Life::Committed if r.shipped() > 0 && r.open() == 0 && r.backordered() == 0 => {
                ReservationState::Fulfilled
            }
            Life::Committed if r.shipped() > 0 => ReservationState::PartiallyFulfilled,
            Life::Committed => ReservationState::Committed,
            Life::Released => ReservationState::Released,
            Life::Expired => ReservationState::Expired,
            Life::Cancelled => ReservationState::Cancelled,
        };
        Some(ReservationView {
            id: ReservationId(id),
            channel: self.channels[r.channel].0.clone(),
            state,
            created_at: r.created_at,
            expires_at: r.expires_at,
            order_ref: r.order_ref.clone(),
            lines,
        })
    }

    // -----------------------------------------------------------------------------------------
    // execution

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn sequenced(&mut self, obs: Obs) -> Answer {
        Answer {
            seq: Some(self.seq),
            replayed: false,
            obs,
        }
    }

    /// Executes one request at time `now` (never earlier than the latest time seen).
    ///
    /// Only a sequenced write moves the clock: a read sees the later time, a refusal before
    /// sequencing leaves nothing behind (the log could not replay it).
    pub fn execute(&mut self, req: &Request, now: u64) -> Answer {
        let clock = self.now;
        self.now = self.now.max(now);
        let answer = self.execute_now(req);
        if answer.seq.is_none() || answer.replayed {
            self.now = clock;
        }
        answer
    }

    fn execute_now(&mut self, req: &Request) -> Answer {
        let retention = self.limits.idempotency_retention_ms;
        let now = self.now;
        // A key past the retention window is forgotten.
        self.keys
            .retain(|_, e| e.at.saturating_add(retention) > now);
        if let Command::Tick = req.command {
            self.next_seq();
            let obs = self.tick();
            return self.sequenced(obs);
        }
        match (&req.command, &self.tenant) {
            (Command::CreateTenant, Some(_)) => return front(Refused::InvalidState),
            (Command::CreateTenant, None) => {
                self.tenant = Some(req.tenant.clone());
                self.next_seq();
                return self.sequenced(Obs::Done);
            }
            (_, Some(t)) if *t == req.tenant => {}
            _ => return front(Refused::NotFound),
        }
        let keyed = req
            .idempotency_key
            .clone()
            .filter(|_| !is_read(&req.command));
        if let Some(key) = &keyed {
            if key.is_empty() || key.len() > self.limits.idempotency_key_len_max {
                return front(Refused::InvalidRequest);
            }
            if let Some(e) = self.keys.get(key) {
                if e.command != req.command {
                    return front(Refused::IdempotencyKeyReused);
                }
                return Answer {
                    replayed: true,
                    ..e.answer.clone()
                };
            }
        }
        let answer = match self.command(&req.command) {
            Ok(a) => a,
            Err(r) => return front(r),
        };
        if let (Some(key), Some(_)) = (keyed, answer.seq) {
            self.keys.insert(
                key,
                KeyEntry {
                    command: req.command.clone(),
                    at: now,
                    answer: answer.clone(),
                },
            );
        }
        answer
    }

    fn stock_sku(&self, sku: &Sku) -> Checked<()> {
        if self.bundles.contains_key(sku) {
            return Err(Refused::InvalidRequest);
        }
        Ok(())
    }

    fn loc(&self, l: &LocationId) -> Checked<usize> {
        self.loc_idx(l).ok_or(Refused::NotFound)
    }

    fn check_qty(q: i64, min: i64) -> Checked<()> {
        if qty_ok(q, min) {
            Ok(())
        } else {
            Err(Refused::InvalidRequest)
        }
    }

    fn ttl(&self, ttl: Option<u64>) -> Checked<u64> {
        let t = ttl.unwrap_or(self.limits.ttl_ms_default);
        if t < self.limits.ttl_ms_min || t > self.limits.ttl_ms_max {
            return Err(Refused::InvalidRequest);
        }
        Ok(t)
    }

    /// Validates (front refusals are `Err`), then sequences and runs a command of the tenant.
    fn command(&mut self, cmd: &Command) -> Checked<Answer> {
        let now = self.now;
        match cmd {
            Command::CreateTenant | Command::Tick => unreachable!("handled by execute"),
            Command::PutLocation {
                location, region, ..
            } => {
                match self.loc_idx(location) {
                    Some(i) => self.locations[i].1 = region.clone(),
                    None => self.locations.push((location.clone(), region.clone())),
                }
                self.next_seq();
                Ok(self.sequenced(Obs::Done))
            }
            Command::PutChannel {
                channel, priority, ..
            } => {
                match self.chan_idx(channel) {
                    Some(i) => self.channels[i].1 = *priority,
                    None => self.channels.push((channel.clone(), *priority)),
                }
                self.next_seq();
                Ok(self.sequenced(Obs::Done))
            }
            Command::PutBundle { sku, components } => {
                let is_component = self
                    .bundles
                    .values()
                    .any(|cs| cs.iter().any(|c| &c.sku == sku));
                let bad = components.is_empty()
                    || components.len() > self.limits.components_per_bundle_max
                    || is_component
                    || components.iter().enumerate().any(|(i, c)| {
                        !(1..=1_000_000).contains(&c.quantity)
                            || &c.sku == sku
                            || self.bundles.contains_key(&c.sku)
                            || components[..i].iter().any(|o| o.sku == c.sku)
                    });
                if bad {
                    return Err(Refused::InvalidRequest);
                }
                self.bundles.insert(sku.clone(), components.clone());
                self.next_seq();
                Ok(self.sequenced(Obs::Done))
            }
            Command::PutRules { document } => {
                let version = self.rules.version + 1;
                self.rules = RuleDocument {
                    version,
                    ..document.clone()
                };
                self.next_seq();
                Ok(self.sequenced(Obs::Rules(version)))
            }
            Command::Receive {
                sku,
                location,
                quantity,
                ..
            } => {
                self.stock_sku(sku)?;
                Self::check_qty(*quantity, 1)?;
                let loc = self.loc(location)?;
                self.next_seq();
                let l = self.level_mut(sku, loc);
                l.on_hand += quantity;
                l.incoming -= (*quantity).min(l.incoming);
                if l.incoming == 0 {
                    l.incoming_at = 0;
                }
                Ok(self.sequenced(Obs::Done))
            }
            Command::Expect {
                sku,
                location,
                quantity,
                expected_at,
                ..
            } => {
                self.stock_sku(sku)?;
                Self::check_qty(*quantity, 1)?;
                let loc = self.loc(location)?;
                self.next_seq();
                let l = self.level_mut(sku, loc);
                l.incoming += quantity;
                if let Some(at) = expected_at {
                    l.incoming_at = *at;
                }
                Ok(self.sequenced(Obs::Done))
            }
            Command::Adjust {
                sku,
                location,
                delta,
                ..
            } => {
                self.stock_sku(sku)?;
                if *delta == 0 || delta.abs() > QUANTITY_MAX {
                    return Err(Refused::InvalidRequest);
                }
                let loc = self.loc(location)?;
                self.next_seq();
                let l = self.level(sku, loc);
                if l.on_hand + delta < 0 || (*delta < 0 && l.available() + delta < 0) {
                    return Ok(self.sequenced(Obs::Refused(Refused::InvalidState)));
                }
                self.level_mut(sku, loc).on_hand += delta;
                Ok(self.sequenced(Obs::Done))
            }
            Command::Set {
                sku,
                location,
                quantity,
                compare_quantity,
                ..
            } => {
                self.stock_sku(sku)?;
                Self::check_qty(*quantity, 0)?;
                if let Some(c) = compare_quantity {
                    Self::check_qty(*c, 0)?;
                }
                let loc = self.loc(location)?;
                self.next_seq();
                let actual = self.level(sku, loc).on_hand;
                if let Some(c) = compare_quantity {
                    if *c != actual {
                        return Ok(self.sequenced(Obs::Refused(Refused::CompareFailed {
                            expected: *c,
                            actual,
                        })));
                    }
                }
                self.level_mut(sku, loc).on_hand = *quantity;
                self.oversell(sku, loc);
                Ok(self.sequenced(Obs::Done))
            }
            Command::Move {
                sku,
                location,
                from,
                to,
                quantity,
                ..
            } => {
                self.stock_sku(sku)?;
                Self::check_qty(*quantity, 1)?;
                if from == to {
                    return Err(Refused::InvalidRequest);
                }
                let loc = self.loc(location)?;
                self.next_seq();
                let l = self.level(sku, loc);
                let have = match from {
                    Bucket::Available => l.available(),
                    Bucket::Damaged => l.damaged,
                    Bucket::QualityControl => l.quality_control,
                    Bucket::SafetyStock => l.safety_stock,
                };
                if have < *quantity {
                    return Ok(self.sequenced(Obs::Refused(Refused::InvalidState)));
                }
                let l = self.level_mut(sku, loc);
                for (b, sign) in [(from, -1), (to, 1)] {
                    match b {
                        Bucket::Available => {}
                        Bucket::Damaged => l.damaged += sign * quantity,
                        Bucket::QualityControl => l.quality_control += sign * quantity,
                        Bucket::SafetyStock => l.safety_stock += sign * quantity,
                    }
                }
                Ok(self.sequenced(Obs::Done))
            }
            Command::Transfer {
                sku,
                location,
                to_location,
                quantity,
                expected_at,
                ..
            } => {
                self.stock_sku(sku)?;
                Self::check_qty(*quantity, 1)?;
                let loc = self.loc(location)?;
                let to = self.loc(to_location)?;
                if loc == to {
                    return Err(Refused::InvalidRequest);
                }
                self.next_seq();
                if self.level(sku, loc).available() < *quantity {
                    return Ok(self.sequenced(Obs::Refused(Refused::InvalidState)));
                }
                self.level_mut(sku, loc).on_hand -= quantity;
                let l = self.level_mut(sku, to);
                l.incoming += quantity;
                if let Some(at) = expected_at {
                    l.incoming_at = *at;
                }
                Ok(self.sequenced(Obs::Done))
            }
            Command::Reserve {
                channel,
                lines,
                ttl_ms,
                order_ref,
                ship_to_region,
                fill,
            } => {
                let c = self.chan_idx(channel).ok_or(Refused::NotFound)?;
                let ttl = self.ttl(*ttl_ms)?;
                if let FillPolicy::Split { max_locations: 0 } = fill {
                    return Err(Refused::InvalidRequest);
                }
                if lines.is_empty() || lines.len() > self.limits.lines_per_reservation_max {
                    return Err(Refused::InvalidRequest);
                }
                for (i, l) in lines.iter().enumerate() {
                    Self::check_qty(l.quantity, 1)?;
                    if lines[..i].iter().any(|o| o.sku == l.sku) {
                        return Err(Refused::InvalidRequest);
                    }
                }
                let id = self.next_seq();
                let obs = self.reserve(
                    id,
                    c,
                    lines,
                    now + ttl,
                    order_ref.clone(),
                    ship_to_region.as_deref(),
                    *fill,
                );
                Ok(self.sequenced(obs))
            }
            Command::Extend { id, ttl_ms } => {
                let ttl = self.ttl(Some(*ttl_ms))?;
                self.next_seq();
                let obs = match self.hold(id.0) {
                    Err(r) => Obs::Refused(r),
                    Ok(()) => {
                        self.reservations
                            .get_mut(&id.0)
                            .expect("checked")
                            .expires_at = now + ttl;
                        Obs::Done
                    }
                };
                Ok(self.sequenced(obs))
            }
            Command::Commit { id, lines } => {
                if let Some(lines) = lines {
                    if lines.len() > self.limits.lines_per_reservation_max {
                        return Err(Refused::InvalidRequest);
                    }
                    for l in lines {
                        if let Some(q) = l.quantity {
                            Self::check_qty(q, 1)?;
                        }
                    }
                }
                self.next_seq();
                let obs = match self
                    .hold(id.0)
                    .and_then(|()| self.commit_keep(id.0, lines.as_deref()))
                {
                    Err(r) => Obs::Refused(r),
                    Ok(keep) => {
                        self.commit(id.0, &keep);
                        self.cover_commit(id.0);
                        Obs::Reservation(self.reservation_view(id.0).expect("exists"))
                    }
                };
                Ok(self.sequenced(obs))
            }
            Command::Release { id } => {
                self.next_seq();
                let obs = match self.hold(id.0) {
                    Err(r) => Obs::Refused(r),
                    Ok(()) => {
                        self.end(id.0, Life::Released);
                        Obs::Done
                    }
                };
                Ok(self.sequenced(obs))
            }
            Command::Cancel { id } => {
                self.next_seq();
                let obs = match self.committed(id.0) {
                    Err(r) => Obs::Refused(r),
                    Ok(()) => {
                        let r = &self.reservations[&id.0];
                        if r.open() == 0 && r.backordered() == 0 && r.shipped() > 0 {
                            Obs::Refused(Refused::InvalidState)
                        } else {
                            self.end(id.0, Life::Cancelled);
                            Obs::Done
                        }
                    }
                };
                Ok(self.sequenced(obs))
            }
            Command::Fulfil { id, lines } => {
                if lines.is_empty() || lines.len() > self.limits.lines_per_reservation_max {
                    return Err(Refused::InvalidRequest);
                }
                let mut resolved: Vec<(FulfilLine, usize)> = Vec::new();
                for l in lines {
                    Self::check_qty(l.quantity, 0)?;
                    Self::check_qty(l.missing, 0)?;
                    if l.quantity + l.missing == 0 {
                        return Err(Refused::InvalidRequest);
                    }
                    let loc = self.loc(&l.location)?;
                    if resolved.iter().any(|(o, ol)| o.sku == l.sku && *ol == loc) {
                        return Err(Refused::InvalidRequest);
                    }
                    resolved.push((l.clone(), loc));
                }
                self.next_seq();
                let obs = match self
                    .committed(id.0)
                    .and_then(|()| self.check_fulfil(id.0, &resolved))
                {
                    Err(r) => Obs::Refused(r),
                    Ok(()) => {
                        self.fulfil(id.0, &resolved);
                        Obs::Done
                    }
                };
                Ok(self.sequenced(obs))
            }
            Command::Return {
                id,
                sku,
                location,
                quantity,
                damaged,
                ..
            } => {
                Self::check_qty(*quantity, 1)?;
                let loc = self.loc(location)?;
                self.next_seq();
                let obs = match self.returnable(id.0, sku, loc) {
                    Err(r) => Obs::Refused(r),
                    Ok(n) if *quantity > n => Obs::Refused(Refused::InvalidRequest),
                    Ok(_) => {
                        self.give_back(id.0, sku, loc, *quantity, *damaged);
                        Obs::Done
                    }
                };
                Ok(self.sequenced(obs))
            }
            Command::GetStock { sku } => Ok(Answer {
                seq: None,
                replayed: false,
                obs: Obs::Stock(self.stock_view(sku)),
            }),
            Command::GetReservation { id } => {
                let obs = match self.reservation_view(id.0) {
                    Some(v) => Obs::Reservation(v),
                    None => Obs::Refused(Refused::NotFound),
                };
                Ok(Answer {
                    seq: None,
                    replayed: false,
                    obs,
                })
            }
            Command::Explain { sku, channel } => {
                let c = self.chan_idx(channel).ok_or(Refused::NotFound)?;
                Ok(Answer {
                    seq: None,
                    replayed: false,
                    obs: Obs::Explain(self.ats_any(sku, c)),
                })
            }
        }
    }

    /// A held reservation whose hold has run out: expire it now.
    fn expire_if_overdue(&mut self, id: u64) {
        let now = self.now;
        if let Some(r) = self.reservations.get(&id) {
            if r.life == Life::Held && r.expires_at <= now {
                self.end(id, Life::Expired);
            }
        }
    }

    /// For extend, commit and release: the reservation must exist and be held (an overdue
    /// hold is expired first).
    fn hold(&mut self, id: u64) -> Checked<()> {
        if !self.reservations.contains_key(&id) {
            return Err(Refused::NotFound);
        }
        self.expire_if_overdue(id);
        if self.reservations[&id].life != Life::Held {
            return Err(Refused::InvalidState);
        }
        Ok(())
    }

    /// For cancel and fulfil: the reservation must exist and be committed.
    fn committed(&mut self, id: u64) -> Checked<()> {
        if !self.reservations.contains_key(&id) {
            return Err(Refused::NotFound);
        }
        self.expire_if_overdue(id);
        if self.reservations[&id].life != Life::Committed {
            return Err(Refused::InvalidState);
        }
        Ok(())
    }

    /// Units per line to commit.
    fn commit_keep(&self, id: u64, lines: Option<&[CommitLine]>) -> Checked<Vec<i64>> {
        let r = &self.reservations[&id];
        let Some(lines) = lines else {
            return Ok(r.lines.iter().map(|l| l.granted).collect());
        };
        if lines.is_empty() {
            return Err(Refused::InvalidRequest);
        }
        let mut keep = vec![0; r.lines.len()];
        for cl in lines {
            let li = r
                .lines
                .iter()
                .position(|l| l.sku == cl.sku)
                .ok_or(Refused::InvalidRequest)?;
            if keep[li] != 0 {
                return Err(Refused::InvalidRequest);
            }
            let q = cl.quantity.unwrap_or(r.lines[li].granted);
            if q < 1 || q > r.lines[li].granted {
                return Err(Refused::InvalidRequest);
            }
            keep[li] = q;
        }
        Ok(keep)
    }

    fn commit(&mut self, id: u64, keep: &[i64]) {
        let mut r = self.reservations.remove(&id).expect("exists");
        for item in &mut r.items {
            let kept_units = keep[item.line] * item.per_unit;
            let mut release = item.quantity - kept_units;
            for a in item.allocs.iter_mut().rev() {
                let give = a.open.min(release);
                release -= give;
                a.open -= give;
                let l = self.level_mut(&item.sku, a.loc);
                l.reserved -= give + a.open;
                l.committed += a.open;
            }
            item.allocs.retain(|a| a.open > 0);
            item.quantity = kept_units;
        }
        for (l, k) in r.lines.iter_mut().zip(keep) {
            l.granted = *k;
        }
        r.life = Life::Committed;
        self.reservations.insert(id, r);
    }

    /// Ends a live reservation: its open units stop counting against stock.
    fn end(&mut self, id: u64, to: Life) {
        let mut r = self.reservations.remove(&id).expect("exists");
        let from = r.life;
        for item in &mut r.items {
            for a in &item.allocs {
                let l = self.level_mut(&item.sku, a.loc);
                match from {
                    Life::Held => l.reserved -= a.open,
                    _ => l.committed -= a.open,
                }
            }
            if to == Life::Cancelled {
                item.backordered = 0;
            }
        }
        r.life = to;
        r.ended_at = self.now;
        self.reservations.insert(id, r);
    }

    fn tick(&mut self) -> Obs {
        let now = self.now;
        let due: Vec<u64> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.life == Life::Held && r.expires_at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            self.end(*id, Life::Expired);
        }
        let retention = self.limits.ended_retention_ms;
        let before = self.reservations.len();
        self.reservations
            .retain(|_, r| r.life.live() || r.ended_at.saturating_add(retention) > now);
        Obs::Ticked {
            expired: due.len() as u64,
            dropped: (before - self.reservations.len()) as u64,
        }
    }

    /// A count left available negative at (sku, loc): backorder the committed units on hand
    /// does not cover.
    fn oversell(&mut self, sku: &Sku, loc: usize) {
        let l = self.level(sku, loc);
        if l.available() < 0 {
            // Only what on hand does not cover: holds and safety stock do not count.
            let uncovered = l.committed + l.damaged + l.quality_control - l.on_hand;
            if uncovered > 0 {
                self.backorder(sku, loc, uncovered);
            }
        }
    }

    /// After a commit: what on hand does not cover at a level the reservation committed at
    /// (committed, damaged, quality control) is backordered as in an oversell incident.
    fn cover_commit(&mut self, id: u64) {
        let mut spots: Vec<(Sku, usize)> = Vec::new();
        for i in &self.reservations[&id].items {
            for a in i.allocs.iter().filter(|a| a.open > 0) {
                if !spots.contains(&(i.sku.clone(), a.loc)) {
                    spots.push((i.sku.clone(), a.loc));
                }
            }
        }
        for (sku, loc) in spots {
            let l = self.level(&sku, loc);
            let uncovered = l.committed + l.damaged + l.quality_control - l.on_hand;
            if uncovered > 0 {
                self.backorder(&sku, loc, uncovered);
            }
        }
    }

    /// Backorders `deficit` committed units at (sku, loc), victims by the oversell policy.
    fn backorder(&mut self, sku: &Sku, loc: usize, mut deficit: i64) {
        let mut victims: Vec<(i32, u64)> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.life == Life::Committed)
            .filter(|(_, r)| {
                r.items
                    .iter()
                    .any(|i| &i.sku == sku && i.allocs.iter().any(|a| a.loc == loc && a.open > 0))
            })
            .map(|(id, r)| (self.channels[r.channel].1, *id))
            .collect();
        victims.sort_by_key(|&(p, id)| match self.rules.oversell_policy {
            OversellPolicy::NewestFirst => (0, std::cmp::Reverse(id)),
            OversellPolicy::LowestPriorityFirst => (p, std::cmp::Reverse(id)),
        });
        for (_, id) in victims {
            if deficit == 0 {
                break;
            }
            let r = self.reservations.get_mut(&id).expect("victim exists");
            let mut took = 0;
            for item in r.items.iter_mut().filter(|i| &i.sku == sku) {
                for a in item.allocs.iter_mut().filter(|a| a.loc == loc) {
                    let b = a.open.min(deficit - took);
                    a.open -= b;
                    item.backordered += b;
                    took += b;
                }
            }
            deficit -= took;
            self.level_mut(sku, loc).committed -= took;
        }
    }

    fn reserve(
        &mut self,
        id: u64,
        c: usize,
        lines: &[LineRequest],
        expires_at: u64,
        order_ref: Option<String>,
        ship_to: Option<&str>,
        fill: FillPolicy,
    ) -> Obs {
        // Items: (line, sku, per unit).
        let mut items: Vec<(usize, Sku, i64)> = Vec::new();
        for (li, l) in lines.iter().enumerate() {
            match self.bundles.get(&l.sku) {
                Some(comps) => items.extend(comps.iter().map(|k| (li, k.sku.clone(), k.quantity))),
                None => items.push((li, l.sku.clone(), 1)),
            }
        }
        let ats: BTreeMap<Sku, i64> = items
            .iter()
            .map(|(_, s, _)| (s.clone(), self.ats(s, c)))
            .collect();
        let line_ats = |li: usize| {
            items
                .iter()
                .filter(|(l, _, _)| *l == li)
                .map(|(_, s, k)| ats[s] / k)
                .min()
                .unwrap_or(0)
        };
        let shortage = |li: usize| Shortage {
            sku: lines[li].sku.clone(),
            requested: lines[li].quantity,
            available_to_sell: line_ats(li),
        };
        let granted: Vec<i64> = match fill {
            FillPolicy::AllOrNothing | FillPolicy::Split { .. } => {
                let mut demand: BTreeMap<&Sku, i64> = BTreeMap::new();
                for (li, s, k) in &items {
                    *demand.entry(s).or_default() += k * lines[*li].quantity;
                }
                let short: BTreeSet<&Sku> = demand
                    .iter()
                    .filter(|(s, d)| **d > ats[**s])
                    .map(|(s, _)| *s)
                    .collect();
                if !short.is_empty() {
                    let list = (0..lines.len())
                        .filter(|li| items.iter().any(|(l, s, _)| l == li && short.contains(s)))
                        .map(shortage)
                        .collect();
                    return Obs::Refused(Refused::InsufficientStock(list));
                }
                lines.iter().map(|l| l.quantity).collect()
            }
            FillPolicy::Partial => {
                let mut left = ats.clone();
                let mut granted = Vec::new();
                for (li, l) in lines.iter().enumerate() {
                    let mine: Vec<&(usize, Sku, i64)> =
                        items.iter().filter(|(x, _, _)| *x == li).collect();
                    let mut k = l.quantity;
                    for (_, s, per) in &mine {
                        k = k.min(left[s] / per);
                    }
                    let k = k.max(0);
                    for (_, s, per) in &mine {
                        *left.get_mut(s).expect("item SKU") -= k * per;
                    }
                    granted.push(k);
                }
                if granted.iter().all(|&g| g == 0) {
                    return Obs::Refused(Refused::InsufficientStock(
                        (0..lines.len()).map(shortage).collect(),
                    ));
                }
                granted
            }
        };
        // Candidate locations per item: eligible levels with their available units.
        let cands: Vec<Vec<(usize, i64)>> = items
            .iter()
            .map(|(_, s, _)| {
                self.levels_of(s)
                    .into_iter()
                    .filter(|(l, _)| self.eligible(s, c, *l))
                    .map(|(l, v)| (l, v.available()))
                    .collect()
            })
            .collect();
        let wants: Vec<i64> = items.iter().map(|(li, _, k)| granted[*li] * k).collect();
        let mut full: BTreeMap<usize, u32> = BTreeMap::new();
        for (i, want) in wants.iter().enumerate() {
            if *want > 0 {
                for &(l, a) in &cands[i] {
                    if a >= *want {
                        *full.entry(l).or_default() += 1;
                    }
                }
            }
        }
        let mut taken: BTreeMap<(Sku, usize), i64> = BTreeMap::new();
        let mut bad: BTreeSet<usize> = BTreeSet::new();
        let mut plans: Vec<Vec<(usize, i64)>> = Vec::new();
        for (i, (li, s, _)) in items.iter().enumerate() {
            let order = self.order(self.routing_rule(s, c), &cands[i], ship_to, &full);
            let mut left = wants[i];
            let mut plan = Vec::new();
            for loc in order {
                if left == 0 {
                    break;
                }
                let already = taken.get(&(s.clone(), loc)).copied().unwrap_or(0);
                let can = self.level(s, loc).available() - already;
                let take = left.min(can);
                if take <= 0 {
                    continue;
                }
                *taken.entry((s.clone(), loc)).or_default() += take;
                left -= take;
                plan.push((loc, take));
            }
            if left > 0 {
                bad.insert(*li);
            }
            if let FillPolicy::Split { max_locations } = fill {
                if plan.len() > usize::from(max_locations) {
                    bad.insert(*li);
                }
            }
            plans.push(plan);
        }
        if !bad.is_empty() {
            return Obs::Refused(Refused::InsufficientStock(
                bad.into_iter().map(shortage).collect(),
            ));
        }
        let mut res_items = Vec::new();
        for (i, (li, s, per)) in items.iter().enumerate() {
            for &(loc, q) in &plans[i] {
                self.level_mut(s, loc).reserved += q;
            }
            res_items.push(Item {
                line: *li,
                sku: s.clone(),
                per_unit: *per,
                quantity: wants[i],
                allocs: plans[i]
                    .iter()
                    .map(|&(loc, open)| Alloc {
                        loc,
                        open,
                        shipped: 0,
                        returned: 0,
                    })
                    .collect(),
                backordered: 0,
            });
        }
        let res = Reservation {
            channel: c,
            life: Life::Held,
            created_at: self.now,
            expires_at,
            ended_at: 0,
            order_ref,
            lines: lines
                .iter()
                .enumerate()
                .map(|(li, l)| Line {
                    sku: l.sku.clone(),
                    requested: l.quantity,
                    granted: granted[li],
                    bundle: self.bundles.contains_key(&l.sku),
                })
                .collect(),
            items: res_items,
        };
        self.reservations.insert(id, res);
        Obs::Reservation(self.reservation_view(id).expect("just inserted"))
    }

    fn open_at(&self, id: u64, sku: &Sku, loc: usize, f: impl Fn(&Alloc) -> i64) -> Option<i64> {
        let r = &self.reservations[&id];
        let allocs: Vec<&Alloc> = r
            .items
            .iter()
            .filter(|i| &i.sku == sku)
            .flat_map(|i| &i.allocs)
            .filter(|a| a.loc == loc)
            .collect();
        (!allocs.is_empty()).then(|| allocs.iter().map(|a| f(a)).sum())
    }

    fn check_fulfil(&self, id: u64, lines: &[(FulfilLine, usize)]) -> Checked<()> {
        for (l, loc) in lines {
            match self.open_at(id, &l.sku, *loc, |a| a.open) {
                Some(open) if l.quantity + l.missing <= open => {}
                _ => return Err(Refused::InvalidRequest),
            }
        }
        Ok(())
    }

    fn fulfil(&mut self, id: u64, lines: &[(FulfilLine, usize)]) {
        let mut r = self.reservations.remove(&id).expect("exists");
        for (fl, loc) in lines {
            let (sku, loc) = (&fl.sku, *loc);
            // Picked units ship, from the items of this SKU in order.
            let mut left = fl.quantity;
            for item in r.items.iter_mut().filter(|i| &i.sku == sku) {
                for a in item.allocs.iter_mut().filter(|a| a.loc == loc) {
                    let t = left.min(a.open);
                    a.open -= t;
                    a.shipped += t;
                    left -= t;
                }
            }
            let l = self.level_mut(sku, loc);
            l.on_hand -= fl.quantity;
            l.committed -= fl.quantity;
            if fl.missing == 0 {
                continue;
            }
            // Missing units: a discrepancy, then each item re-allocates what it lost.
            let l = self.level_mut(sku, loc);
            l.on_hand -= fl.missing;
            l.committed -= fl.missing;
            // One order for the line, over the other eligible locations as they are now.
            let routing = self.routing_rule(sku, r.channel).cloned();
            let cands: Vec<(usize, i64)> = self
                .levels_of(sku)
                .into_iter()
                .filter(|(l, _)| *l != loc && self.eligible(sku, r.channel, *l))
                .map(|(l, v)| (l, v.available()))
                .collect();
            let order = self.order(routing.as_ref(), &cands, None, &BTreeMap::new());
            let mut left = fl.missing;
            for item in r.items.iter_mut().filter(|i| &i.sku == sku) {
                let mut lost = 0;
                for a in item.allocs.iter_mut().filter(|a| a.loc == loc) {
                    let t = left.min(a.open);
                    a.open -= t;
                    lost += t;
                    left -= t;
                }
                for &to in &order {
                    if lost == 0 {
                        break;
                    }
                    let take = lost.min(self.level(sku, to).available());
                    if take <= 0 {
                        continue;
                    }
                    lost -= take;
                    self.level_mut(sku, to).committed += take;
                    match item.allocs.iter_mut().find(|a| a.loc == to) {
                        Some(a) => a.open += take,
                        None => item.allocs.push(Alloc {
                            loc: to,
                            open: take,
                            shipped: 0,
                            returned: 0,
                        }),
                    }
                }
                item.backordered += lost;
            }
        }
        self.reservations.insert(id, r);
    }

    /// Units of `sku` shipped from `loc` and not yet returned.
    fn returnable(&mut self, id: u64, sku: &Sku, loc: usize) -> Checked<i64> {
        if !self.reservations.contains_key(&id) {
            return Err(Refused::NotFound);
        }
        self.expire_if_overdue(id);
        if self.reservations[&id].life != Life::Committed {
            return Err(Refused::InvalidState);
        }
        self.open_at(id, sku, loc, |a| a.shipped - a.returned)
            .ok_or(Refused::InvalidRequest)
    }

    fn give_back(&mut self, id: u64, sku: &Sku, loc: usize, q: i64, damaged: bool) {
        let r = self.reservations.get_mut(&id).expect("exists");
        let mut left = q;
        for item in r.items.iter_mut().filter(|i| &i.sku == sku) {
            for a in item.allocs.iter_mut().filter(|a| a.loc == loc) {
                let t = left.min(a.shipped - a.returned);
                a.returned += t;
                left -= t;
            }
        }
        let l = self.level_mut(sku, loc);
        l.on_hand += q;
        if damaged {
            l.damaged += q;
        }
    }
}

fn is_read(c: &Command) -> bool {
    matches!(
        c,
        Command::GetStock { .. } | Command::GetReservation { .. } | Command::Explain { .. }
    )
}
