//! A sequenced command as the shards execute it, and the messages of the execution protocol.
//!
//! Every command runs in three steps: each participating shard *prepares* (reads its state),
//! one pure *decide* turns all preparations into a decision, and each shard *applies* it. A
//! command on one shard does this alone; a command spanning shards meets at a rendezvous.
//! Because every shard sees commands in sequence order, the outcome depends only on the
//! sequence, never on timing.

use crate::command::{Bucket, FillPolicy, FulfilLine};
use crate::config::{ChanIdx, LocIdx, TenantConfig};
use crate::ids::{LocationId, ReservationId, Seq, Sku, TenantId, TimeMs};
use crate::outcome::{Event, EventKind, Outcome, Refusal};
use rust_decimal::Decimal;
use smallvec::SmallVec;
use std::sync::Arc;

/// A line of a reservation as recorded: the requested SKU (maybe a bundle) and its units.
///
/// The units requested and whether the SKU is a bundle share one word (the units shifted left
/// by one, the flag in the low bit): every part keeps its lines inline, so the flag's own 8
/// bytes (with padding) were 8 bytes per hold. Units are at most `QUANTITY_MAX` (10^12), far
/// inside the 63 bits left.
#[derive(Clone, PartialEq, Eq)]
pub struct LineHeader {
    pub sku: Sku,
    units: i64,
}

impl LineHeader {
    pub fn new(sku: Sku, requested: i64, is_bundle: bool) -> LineHeader {
        debug_assert!(
            requested.unsigned_abs() < 1 << 62,
            "{requested} units do not fit"
        );
        LineHeader {
            sku,
            units: (requested << 1) | i64::from(is_bundle),
        }
    }
    /// Units requested.
    pub fn requested(&self) -> i64 {
        self.units >> 1
    }
    pub fn is_bundle(&self) -> bool {
        self.units & 1 == 1
    }
}

/// Printed as the struct of three fields it was (the state digest prints it).
impl std::fmt::Debug for LineHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineHeader")
            .field("sku", &self.sku)
            .field("requested", &self.requested())
            .field("is_bundle", &self.is_bundle())
            .finish()
    }
}

/// The lines of a reservation, shared by its job and every part of it: the usual single line
/// inline (no allocation per reservation), several lines in one shared list.
#[derive(Clone, Eq)]
pub enum LineHeaders {
    One([LineHeader; 1]),
    Many(Arc<[LineHeader]>),
}

impl LineHeaders {
    /// The headers of `lines`, made by `f`.
    pub fn from_fn<T>(lines: &[T], f: impl Fn(&T) -> LineHeader) -> LineHeaders {
        match lines {
            [one] => LineHeaders::One([f(one)]),
            _ => LineHeaders::Many(lines.iter().map(f).collect()),
        }
    }
}

impl From<Vec<LineHeader>> for LineHeaders {
    fn from(mut v: Vec<LineHeader>) -> Self {
        match v.pop() {
            Some(one) if v.is_empty() => LineHeaders::One([one]),
            last => {
                v.extend(last);
                LineHeaders::Many(v.into())
            }
        }
    }
}

impl std::ops::Deref for LineHeaders {
    type Target = [LineHeader];
    fn deref(&self) -> &[LineHeader] {
        match self {
            LineHeaders::One(one) => one,
            LineHeaders::Many(many) => many,
        }
    }
}

/// Compared as lists, however they are stored.
impl PartialEq for LineHeaders {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

/// Printed as a list (the state digest prints it).
impl std::fmt::Debug for LineHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        <[LineHeader] as std::fmt::Debug>::fmt(self, f)
    }
}

/// Units granted per line of a reservation. Stored only when some line is not granted in full
/// (a partial fill, a partial commit): the usual full grant is `None` and costs no allocation.
/// Always normalised by [`Granted::new`], so equal grants compare equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Granted(Option<Arc<Vec<i64>>>);

impl Granted {
    /// Every line granted in full.
    pub const FULL: Granted = Granted(None);
    /// The grant of `units` per line of `lines`.
    pub fn new(lines: &[LineHeader], units: &[i64]) -> Granted {
        debug_assert_eq!(lines.len(), units.len());
        let full = lines.iter().zip(units).all(|(l, &u)| l.requested() == u);
        Granted((!full).then(|| Arc::new(units.to_vec())))
    }
    /// Units granted on line `li` of `lines`.
    pub fn get(&self, lines: &[LineHeader], li: usize) -> i64 {
        match &self.0 {
            Some(units) => units[li],
            None => lines[li].requested(),
        }
    }
    /// Units granted per line of `lines`.
    pub fn units(&self, lines: &[LineHeader]) -> SmallVec<[i64; 4]> {
        match &self.0 {
            Some(units) => SmallVec::from_slice(units),
            None => lines.iter().map(|l| l.requested()).collect(),
        }
    }
}

/// One physical SKU to allocate for a line (the line's SKU, or one bundle component).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemReq {
    pub line: u16,
    /// Position among the line's items (component order).
    pub slot: u16,
    pub sku: Sku,
    /// Units of this SKU per unit of the line (1 for plain lines).
    pub per_unit: i64,
    /// The shard that owns the SKU (`shard_of`), found once by the front.
    pub shard: u16,
}

#[derive(Clone, Debug)]
pub enum JobKind {
    Config {
        config: Arc<TenantConfig>,
        /// Boxed: configuration is rare, and every job is moved several times.
        event: Box<EventKind>,
    },
    Receive {
        sku: Sku,
        loc: LocIdx,
        quantity: i64,
        unit_cost: Option<Decimal>,
        reason: String,
    },
    Expect {
        sku: Sku,
        loc: LocIdx,
        quantity: i64,
        expected_at: Option<TimeMs>,
        reason: String,
    },
    Adjust {
        sku: Sku,
        loc: LocIdx,
        delta: i64,
        reason: String,
    },
    Set {
        sku: Sku,
        loc: LocIdx,
        quantity: i64,
        compare: Option<i64>,
        reason: String,
    },
    Move {
        sku: Sku,
        loc: LocIdx,
        from: Bucket,
        to: Bucket,
        quantity: i64,
        reason: String,
    },
    Transfer {
        sku: Sku,
        loc: LocIdx,
        to: LocIdx,
        quantity: i64,
        expected_at: Option<TimeMs>,
        reason: String,
    },
    Reserve {
        channel: ChanIdx,
        lines: LineHeaders,
        /// Inline for the usual one item: no allocation per reservation (the parts keep
        /// `lines`, not the items).
        items: SmallVec<[ItemReq; 1]>,
        expires_at: TimeMs,
        /// Rare, so behind thin pointers: a job is moved several times on its way to the
        /// shards, and most reservations have neither.
        order_ref: Option<Box<String>>,
        ship_to_region: Option<Box<String>>,
        fill: FillPolicy,
    },
    Extend {
        id: ReservationId,
        expires_at: TimeMs,
    },
    /// `lines`: (line sku, units to keep); `None` keeps everything.
    Commit {
        id: ReservationId,
        lines: Option<Vec<(Sku, Option<i64>)>>,
    },
    Release {
        id: ReservationId,
    },
    Cancel {
        id: ReservationId,
    },
    Fulfil {
        id: ReservationId,
        lines: Vec<(FulfilLine, LocIdx)>,
    },
    Return {
        id: ReservationId,
        sku: Sku,
        loc: LocIdx,
        quantity: i64,
        damaged: bool,
    },
    Tick,
    GetStock {
        sku: Sku,
    },
    GetReservation {
        id: ReservationId,
    },
    Explain {
        sku: Sku,
        channel: ChanIdx,
    },
}

/// A command with everything the shards need, as the front sequenced it.
#[derive(Clone, Debug)]
pub struct Job {
    /// For reads: the sequence number of the last write before them.
    pub seq: Seq,
    pub now: TimeMs,
    pub tenant: u32,
    pub tenant_id: TenantId,
    pub key_id: compact_str::CompactString,
    pub kind: JobKind,
    /// The shards taking part, as a bit mask; never empty.
    pub shards: u64,
    /// A replayed reservation whose answer nobody reads (see [`crate::Engine::replay_submit`]):
    /// the state changes as always, but no events and only a bare answer are built.
    pub quiet: bool,
}

impl Job {
    pub fn shard_count(&self) -> u32 {
        self.shards.count_ones()
    }
}

/// What a shard read while preparing a reservation, per item it owns.
#[derive(Clone, Debug, Default)]
pub struct ItemPrep {
    pub item: usize,
    /// The channel's ATS for the item's SKU.
    pub ats: i64,
    /// Eligible locations with their available units, in creation order.
    pub locations: SmallVec<[(LocIdx, i64); 4]>,
    pub routing: Option<crate::rules::CompiledRouting>,
    /// Where the preparing shard found the SKU's state ([`crate::shard::SkuTable::slot`]), so
    /// applying the decision does not look it up again.
    pub sku_slot: Option<u32>,
}

/// A reservation part's summary, for lifecycle decisions.
#[derive(Clone, Debug)]
pub struct PartPrep {
    pub lifecycle: crate::shard::Lifecycle,
    pub expires_at: TimeMs,
    pub lines: LineHeaders,
    /// Units granted per line.
    pub granted: Granted,
    pub open_units: i64,
    pub shipped_units: i64,
    pub backordered_units: i64,
    /// For fulfil and return: per request line this shard owns, the units that line may
    /// touch at its (SKU, location) (open for fulfil, shipped less returned for return);
    /// `None` when the reservation has no allocation there.
    pub checks: Vec<(usize, Option<i64>)>,
}

/// What one shard contributes before the decision.
#[derive(Clone, Debug)]
pub enum Prep {
    None,
    Items(SmallVec<[ItemPrep; 1]>),
    Part(Option<PartPrep>),
    Refused(Refusal),
}

/// Units of one item taken at each location, decided for all shards at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemPlan {
    pub item: usize,
    pub quantity: i64,
    pub allocations: SmallVec<[(LocIdx, i64); 2]>,
    /// The item's [`ItemPrep::sku_slot`], for the shard that owns the item.
    pub sku_slot: Option<u32>,
}

/// The decision every participant applies.
#[derive(Clone, Debug)]
pub enum Decision {
    Refuse(Refusal),
    /// Expired before this command: expire the parts, then refuse.
    ExpireThenRefuse(Refusal),
    Proceed,
    Reserve {
        granted: Granted,
        plans: SmallVec<[ItemPlan; 3]>,
    },
    /// Units to keep per line: the rest is released.
    Commit {
        keep: Granted,
    },
}

/// What one shard returns after applying.
#[derive(Clone, Debug, Default)]
pub struct PartOut {
    /// Events with a sort key unique within the command.
    pub events: Vec<(u64, EventKind)>,
    pub data: PartData,
}

impl PartOut {
    /// False for an output with no events and no data, which adds nothing to an answer (a
    /// held reservation's view is built from its decision).
    pub fn adds_to_answer(&self) -> bool {
        !self.events.is_empty() || !matches!(self.data, PartData::None)
    }
}

#[derive(Clone, Debug, Default)]
pub enum PartData {
    #[default]
    None,
    Refused(Refusal),
    // The large variants are boxed: every part's answer is moved a few times, most are `None`.
    Stock(Box<crate::outcome::StockView>),
    Explain(Box<crate::outcome::Explanation>),
    /// Reservation content held by this shard.
    Reservation(Box<crate::shard::PartSnapshot>),
    Ticked {
        expired: Vec<(ReservationId, u32)>,
        dropped: Vec<ReservationId>,
    },
    /// The ATS of components, for a bundle read.
    ComponentAts(Vec<(Sku, Vec<i64>)>),
}

/// The answer to a job once merged.
#[derive(Clone, Debug)]
pub struct Finished {
    pub outcome: Outcome,
    /// The job's events, numbered: built in place, in the list the caller receives. An event
    /// of another tenant than the job's carries the job's tenant until
    /// [`crate::front::respond`] names it (see `foreign`).
    pub events: Vec<Event>,
    /// Events that belong to another tenant than the job's (expiries during a tick): their
    /// index in `events` and their tenant.
    pub foreign: Vec<(usize, u32)>,
    /// Reservations that no longer exist anywhere (routes may be dropped).
    pub dropped: Vec<ReservationId>,
}

impl Finished {
    /// An answer with no events.
    pub fn new(outcome: Outcome) -> Finished {
        Finished {
            outcome,
            events: Vec::new(),
            foreign: Vec::new(),
            dropped: Vec::new(),
        }
    }

    /// Appends the next event of `job`; `tenant` names another tenant it belongs to.
    pub fn push_event(&mut self, job: &Job, tenant: Option<u32>, kind: EventKind) {
        let index = self.events.len();
        if let Some(t) = tenant {
            self.foreign.push((index, t));
        }
        self.events.push(Event {
            seq: job.seq,
            index: index as u32,
            at: job.now,
            tenant: job.tenant_id.clone(),
            key_id: job.key_id.clone(),
            kind,
        });
    }
}

/// Location ids for views.
pub fn loc_id(cfg: &TenantConfig, loc: LocIdx) -> LocationId {
    cfg.locations[loc as usize].id.clone()
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    /// A header's units and bundle flag share a word: every value a line may have comes back
    /// as it went in, and the header prints as the three fields the state digest always read.
    #[test]
    fn a_line_header_keeps_its_units_and_flag() {
        use super::LineHeader;
        use crate::limits::QUANTITY_MAX;
        let sku = crate::ids::Sku::new("MUG").expect("valid");
        for requested in [0, 1, 2, 3, 1_000_000, QUANTITY_MAX - 1, QUANTITY_MAX] {
            for is_bundle in [false, true] {
                let h = LineHeader::new(sku.clone(), requested, is_bundle);
                assert_eq!((h.requested(), h.is_bundle()), (requested, is_bundle));
            }
        }
        let h = LineHeader::new(sku, 5, true);
        assert_eq!(
            format!("{h:?}"),
            r#"LineHeader { sku: "MUG", requested: 5, is_bundle: true }"#
        );
        assert!(size_of::<LineHeader>() <= 32, "{}", size_of::<LineHeader>());
    }

    /// Every part's answer and every event is moved a few times on its way out: their large,
    /// rare variants stay boxed so that the common ones are not copied at the size of the
    /// largest.
    #[test]
    fn answers_and_events_stay_small() {
        assert!(
            size_of::<super::PartData>() <= 64,
            "{}",
            size_of::<super::PartData>()
        );
        assert!(
            size_of::<super::PartOut>() <= 88,
            "{}",
            size_of::<super::PartOut>()
        );
        let kind = size_of::<crate::outcome::EventKind>();
        assert!(kind <= 112, "{kind}");
    }
}
