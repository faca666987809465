//! Shared fixture and helpers for the engine's unit tests.
//!
//! Every test drives a [`Machine`] through [`Fx`]; commands are built with the small
//! constructors below, so an API change means editing this file, not every test. `Fx::run`
//! checks the invariants every response must keep (event numbering, refusals change nothing).
#![allow(dead_code)]

use depot_engine::outcome::{LevelView, ReservationView, StockView};
use depot_engine::rules::RuleDocument;
use depot_engine::{
    Bucket, ChannelId, ChannelKind, Command, CommitLine, Component, Event, EventKind, FillPolicy,
    FulfilLine, Limits, LineRequest, LocationId, LocationKind, Machine, Outcome, Refusal, Reply,
    Request, ReservationId, Response, Sku, TenantId,
};

pub const TENANT: &str = "acme";
/// Start of the fixture's clock; far from zero so "now - x" never underflows.
pub const T0: u64 = 1_700_000_000_000;
pub const HOUR: u64 = 3_600_000;

pub fn sku(s: &str) -> Sku {
    Sku::new(s).unwrap()
}
pub fn loc(s: &str) -> LocationId {
    LocationId::new(s).unwrap()
}
pub fn ch(s: &str) -> ChannelId {
    ChannelId::new(s).unwrap()
}

// ---------------------------------------------------------------------------------------------
// command constructors

pub fn put_location(id: &str, region: Option<&str>) -> Command {
    Command::PutLocation {
        location: loc(id),
        kind: LocationKind::Warehouse,
        name: format!("{id} warehouse"),
        region: region.map(str::to_string),
        wms: None,
    }
}
pub fn put_channel(id: &str, priority: i32) -> Command {
    Command::PutChannel {
        channel: ch(id),
        kind: ChannelKind::Other,
        priority,
    }
}
pub fn put_bundle(id: &str, components: &[(&str, i64)]) -> Command {
    Command::PutBundle {
        sku: sku(id),
        components: components
            .iter()
            .map(|&(s, q)| Component {
                sku: sku(s),
                quantity: q,
            })
            .collect(),
    }
}
/// A rule document from JSON (the merchant's wire form).
pub fn rules(json: &str) -> Command {
    let document: RuleDocument =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("bad rule JSON {json}: {e}"));
    Command::PutRules { document }
}
pub fn receive(s: &str, l: &str, q: i64) -> Command {
    Command::Receive {
        sku: sku(s),
        location: loc(l),
        quantity: q,
        unit_cost: None,
        reason: "po".into(),
    }
}
pub fn expect(s: &str, l: &str, q: i64, at: Option<u64>) -> Command {
    Command::Expect {
        sku: sku(s),
        location: loc(l),
        quantity: q,
        expected_at: at,
        reason: "asn".into(),
    }
}
pub fn adjust(s: &str, l: &str, delta: i64) -> Command {
    Command::Adjust {
        sku: sku(s),
        location: loc(l),
        delta,
        reason: "adj".into(),
    }
}
pub fn set(s: &str, l: &str, q: i64, compare: Option<i64>) -> Command {
    Command::Set {
        sku: sku(s),
        location: loc(l),
        quantity: q,
        compare_quantity: compare,
        reason: "count".into(),
    }
}
pub fn mv(s: &str, l: &str, from: Bucket, to: Bucket, q: i64) -> Command {
    Command::Move {
        sku: sku(s),
        location: loc(l),
        from,
        to,
        quantity: q,
        reason: "qc".into(),
    }
}
pub fn transfer(s: &str, l: &str, to: &str, q: i64) -> Command {
    Command::Transfer {
        sku: sku(s),
        location: loc(l),
        to_location: loc(to),
        quantity: q,
        expected_at: None,
        reason: "xfer".into(),
    }
}
pub fn lines(ls: &[(&str, i64)]) -> Vec<LineRequest> {
    ls.iter()
        .map(|&(s, q)| LineRequest {
            sku: sku(s),
            quantity: q,
        })
        .collect()
}
pub fn reserve(channel: &str, ls: &[(&str, i64)]) -> Command {
    reserve_with(channel, ls, FillPolicy::AllOrNothing, None)
}
pub fn reserve_with(
    channel: &str,
    ls: &[(&str, i64)],
    fill: FillPolicy,
    ship_to: Option<&str>,
) -> Command {
    Command::Reserve {
        channel: ch(channel),
        lines: lines(ls),
        ttl_ms: None,
        order_ref: None,
        ship_to_region: ship_to.map(str::to_string),
        fill,
    }
}
pub fn reserve_ttl(channel: &str, ls: &[(&str, i64)], ttl_ms: u64) -> Command {
    Command::Reserve {
        channel: ch(channel),
        lines: lines(ls),
        ttl_ms: Some(ttl_ms),
        order_ref: None,
        ship_to_region: None,
        fill: FillPolicy::AllOrNothing,
    }
}
pub fn commit(id: ReservationId) -> Command {
    Command::Commit { id, lines: None }
}
pub fn commit_lines(id: ReservationId, ls: &[(&str, Option<i64>)]) -> Command {
    Command::Commit {
        id,
        lines: Some(
            ls.iter()
                .map(|&(s, q)| CommitLine {
                    sku: sku(s),
                    quantity: q,
                })
                .collect(),
        ),
    }
}
pub fn fulfil(id: ReservationId, ls: &[(&str, &str, i64, i64)]) -> Command {
    Command::Fulfil {
        id,
        lines: ls
            .iter()
            .map(|&(s, l, q, m)| FulfilLine {
                sku: sku(s),
                location: loc(l),
                quantity: q,
                missing: m,
            })
            .collect(),
    }
}
pub fn ret(id: ReservationId, s: &str, l: &str, q: i64, damaged: bool) -> Command {
    Command::Return {
        id,
        sku: sku(s),
        location: loc(l),
        quantity: q,
        damaged,
        reason: "rma".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// refusal matching

/// A refusal as `code` or `code:field` (for `invalid_request`), the form the tables use.
pub fn describe(r: &Refusal) -> String {
    match r {
        Refusal::InvalidRequest { field, .. } => format!("invalid_request:{field}"),
        Refusal::NotFound { .. } => "not_found".into(),
        Refusal::InsufficientStock { .. } => "insufficient_stock".into(),
        Refusal::InvalidState { .. } => "invalid_state".into(),
        Refusal::CompareFailed { .. } => "compare_failed".into(),
        Refusal::IdempotencyKeyReused => "idempotency_key_reused".into(),
        Refusal::LimitExceeded { .. } => "limit_exceeded".into(),
        Refusal::Overloaded => "overloaded".into(),
        Refusal::Unavailable { .. } => "unavailable".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// the fixture

/// A machine with one fixture tenant and a clock.
///
/// Tenant `acme`: locations `east` (us-east), `west` (us-west), `eu` (eu), in that order;
/// channels `web` (priority 10), `amazon` (5), `b2b` (1); bundle `KIT` = 1 x `A` + 2 x `B`.
#[derive(Debug)]
pub struct Fx {
    pub m: Machine,
    pub now: u64,
    pub tenant: String,
    /// Events of the last command.
    pub events: Vec<Event>,
}

impl Fx {
    pub fn empty(limits: Limits) -> Fx {
        Fx {
            m: Machine::new(limits, 2),
            now: T0,
            tenant: TENANT.into(),
            events: Vec::new(),
        }
    }

    pub fn new() -> Fx {
        Fx::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Fx {
        let mut fx = Fx::empty(limits);
        fx.setup_tenant(TENANT);
        fx
    }

    /// Creates `tenant` with the fixture's configuration.
    pub fn setup_tenant(&mut self, tenant: &str) {
        let saved = std::mem::replace(&mut self.tenant, tenant.into());
        self.ok(Command::CreateTenant);
        self.ok(put_location("east", Some("us-east")));
        self.ok(put_location("west", Some("us-west")));
        self.ok(put_location("eu", Some("eu")));
        self.ok(put_channel("web", 10));
        self.ok(put_channel("amazon", 5));
        self.ok(put_channel("b2b", 1));
        self.ok(put_bundle("KIT", &[("A", 1), ("B", 2)]));
        self.tenant = saved;
    }

    pub fn request(&self, command: Command) -> Request {
        Request {
            tenant: TenantId::new(&self.tenant).unwrap(),
            key_id: "key_test".into(),
            idempotency_key: None,
            command,
        }
    }

    /// Runs a request and checks what every response must satisfy.
    pub fn send(&mut self, req: &Request) -> Response {
        let before = self.state();
        let (resp, events, log) = self.m.execute(req, self.now);
        let is_read = req.command.is_read();
        // Numbering: every event carries the command's seq, indexes 0, 1, 2...
        for (i, e) in events.iter().enumerate() {
            assert_eq!(
                Some(e.seq),
                resp.seq,
                "event {i} of {} has another seq: {e:?}",
                req.command.name()
            );
            assert_eq!(
                e.index, i as u32,
                "event indexes must count from 0: {events:?}"
            );
            assert_eq!(e.at, self.m.front.now, "events carry the command's time");
        }
        if is_read {
            assert!(
                events.is_empty() && log.is_none() && resp.seq.is_none(),
                "reads are not logged: {resp:?}"
            );
        }
        match &resp.outcome {
            Outcome::Ok(reply) if !is_read && !resp.replayed => {
                assert!(log.is_some(), "a successful write is logged");
                // Every change is recorded; a tick that found nothing to do has no events.
                if !matches!(reply, Reply::Ticked { expired: 0, .. }) {
                    assert!(
                        !events.is_empty(),
                        "{} changed state but emitted no event",
                        req.command.name()
                    );
                }
            }
            Outcome::Refused(r) => {
                // A refusal changes nothing but may expire an overdue hold it touched.
                assert!(
                    events
                        .iter()
                        .all(|e| matches!(e.kind, EventKind::ReservationExpired { .. })),
                    "a refusal emitted events: {events:?}"
                );
                // (A refusal under an idempotency key is remembered: that is its only change.)
                if events.is_empty() && req.idempotency_key.is_none() {
                    assert_eq!(before, self.state(), "refusal {r:?} changed the state");
                }
            }
            _ => {}
        }
        self.events = events;
        resp
    }

    pub fn exec(&mut self, command: Command) -> Response {
        let req = self.request(command);
        self.send(&req)
    }

    /// Runs a command that must succeed; returns its reply.
    #[track_caller]
    pub fn ok(&mut self, command: Command) -> Reply {
        let name = command.name();
        match self.exec(command).outcome {
            Outcome::Ok(r) => r,
            Outcome::Refused(r) => panic!("{name} refused: {r:?}"),
        }
    }

    /// Runs a command that must be refused; returns the refusal.
    #[track_caller]
    pub fn refused(&mut self, command: Command) -> Refusal {
        let name = command.name();
        match self.exec(command).outcome {
            Outcome::Refused(r) => r,
            Outcome::Ok(r) => panic!("{name} should have been refused, got {r:?}"),
        }
    }

    /// Runs each `(name, command, expected)` row; `expected` is `ok` or a [`describe`] string.
    #[track_caller]
    pub fn check(&mut self, rows: Vec<(&str, Command, &str)>) {
        for (name, cmd, want) in rows {
            let got = match self.exec(cmd).outcome {
                Outcome::Ok(_) => "ok".to_string(),
                Outcome::Refused(r) => describe(&r),
            };
            assert_eq!(got, want, "case {name:?}");
        }
    }

    /// The state digest with the sequence number masked: refusals that reach the shards
    /// consume a sequence number but must change nothing else.
    pub fn state(&mut self) -> [u8; 32] {
        let seq = self.m.front.seq;
        self.m.front.seq = 0;
        let d = self.m.digest();
        self.m.front.seq = seq;
        d
    }

    pub fn advance(&mut self, ms: u64) {
        self.now += ms;
    }

    pub fn tick(&mut self) -> (u64, u64) {
        match self.ok(Command::Tick) {
            Reply::Ticked { expired, dropped } => (expired, dropped),
            r => panic!("tick replied {r:?}"),
        }
    }

    pub fn stock(&mut self, s: &str) -> StockView {
        match self.ok(Command::GetStock { sku: sku(s) }) {
            Reply::Stock(v) => v,
            r => panic!("get_stock replied {r:?}"),
        }
    }

    /// The level of (sku, location); all zeros when it does not exist.
    pub fn level(&mut self, s: &str, l: &str) -> LevelView {
        self.stock(s)
            .locations
            .into_iter()
            .find(|v| v.location.as_str() == l)
            .unwrap_or(LevelView {
                location: loc(l),
                on_hand: 0,
                reserved: 0,
                committed: 0,
                damaged: 0,
                quality_control: 0,
                safety_stock: 0,
                incoming: 0,
                incoming_expected_at: None,
                available: 0,
            })
    }

    pub fn ats(&mut self, s: &str, channel: &str) -> i64 {
        self.stock(s)
            .channels
            .iter()
            .find(|c| c.channel.as_str() == channel)
            .unwrap_or_else(|| panic!("no channel {channel}"))
            .available_to_sell
    }

    /// ATS of `s` on web, amazon, b2b.
    pub fn ats3(&mut self, s: &str) -> [i64; 3] {
        [
            self.ats(s, "web"),
            self.ats(s, "amazon"),
            self.ats(s, "b2b"),
        ]
    }

    pub fn res(&mut self, command: Command) -> ReservationView {
        match self.ok(command) {
            Reply::Reservation(v) => v,
            r => panic!("expected a reservation, got {r:?}"),
        }
    }

    pub fn get(&mut self, id: ReservationId) -> ReservationView {
        self.res(Command::GetReservation { id })
    }

    /// Allocations of a plain line as (location, open units).
    pub fn allocs(v: &ReservationView, line_sku: &str) -> Vec<(String, i64)> {
        let line = v
            .lines
            .iter()
            .find(|l| l.sku.as_str() == line_sku)
            .expect("line exists");
        line.allocations
            .iter()
            .map(|a| (a.location.to_string(), a.quantity))
            .collect()
    }

    /// The kinds of the last command's events, as their serde tag.
    pub fn event_kinds(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|e| {
                serde_json::to_value(&e.kind).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }
}

impl Default for Fx {
    fn default() -> Self {
        Fx::new()
    }
}
