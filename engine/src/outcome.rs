//! Outcomes, views and events: what the engine answers and what it records.
//!
//! Business refusals (insufficient stock, an expired hold) are values of [`Refusal`], not
//! errors: they are deterministic results of the state machine and are logged and replayed
//! like successes.

use crate::ids::{ChannelId, LocationId, ReservationId, Seq, Sku, TenantId, TimeMs};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The command's sequence number; `None` for reads and for requests refused before they
    /// were sequenced (invalid input, a full queue).
    pub seq: Option<Seq>,
    /// True when this is the stored first outcome of a repeated idempotency key.
    pub replayed: bool,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum Outcome {
    Ok(Reply),
    Refused(Refusal),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Outcome::Refused(r) => Some(r),
            Outcome::Ok(_) => None,
        }
    }
    pub fn reservation(&self) -> Option<&ReservationView> {
        match self {
            Outcome::Ok(Reply::Reservation(r)) => Some(r),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reply")]
pub enum Reply {
    Done,
    Rules { version: u64 },
    Stock(StockView),
    Reservation(ReservationView),
    Explain(Explanation),
    Ticked { expired: u64, dropped: u64 },
}

/// A refusal: the request changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "code")]
pub enum Refusal {
    #[error("invalid {field}: {message}")]
    InvalidRequest { field: String, message: String },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("insufficient stock")]
    InsufficientStock { shortages: Shortages },
    #[error("{message}")]
    InvalidState { message: String },
    #[error("compare failed: expected {expected}, found {actual}")]
    CompareFailed { expected: i64, actual: i64 },
    #[error("idempotency key reused with a different request")]
    IdempotencyKeyReused,
    #[error("limit reached: {what} (at most {limit})")]
    LimitExceeded { what: String, limit: u64 },
    #[error("the engine is overloaded; retry later")]
    Overloaded,
    /// Writes cannot be made durable (a failed sync, a full disk); reads still work.
    #[error("writes are unavailable: {message}")]
    Unavailable { message: String },
}

impl Refusal {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Refusal::InvalidRequest {
            field: field.to_string(),
            message: message.into(),
        }
    }
    pub fn not_found(what: impl Into<String>) -> Self {
        Refusal::NotFound { what: what.into() }
    }
    pub fn state(message: impl Into<String>) -> Self {
        Refusal::InvalidState {
            message: message.into(),
        }
    }
}

/// The lines of a refused reservation that could not be granted: usually one, kept inline, so
/// a refusal allocates nothing (half of the carts of a sold-out hot SKU are refused).
pub type Shortages = smallvec::SmallVec<[Shortage; 1]>;

/// Why one line could not be granted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortage {
    pub sku: Sku,
    pub requested: i64,
    pub available_to_sell: i64,
}

/// One (SKU, location) stock level.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelView {
    pub location: LocationId,
    pub on_hand: i64,
    pub reserved: i64,
    pub committed: i64,
    pub damaged: i64,
    pub quality_control: i64,
    pub safety_stock: i64,
    pub incoming: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming_expected_at: Option<TimeMs>,
    pub available: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelAts {
    pub channel: ChannelId,
    pub available_to_sell: i64,
}

/// A SKU's stock: levels per location and ATS per channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StockView {
    pub sku: Sku,
    pub locations: Vec<LevelView>,
    pub channels: Vec<ChannelAts>,
    /// Weighted average unit cost of receipts, when any receipt carried a cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_unit_cost: Option<Decimal>,
    /// For a bundle: its components (a bundle has no stock of its own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<crate::config::Component>,
}

/// A reservation's state, as PRODUCT.md names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationState {
    Held,
    Committed,
    Fulfilled,
    PartiallyFulfilled,
    Released,
    Expired,
    Cancelled,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationView {
    pub location: LocationId,
    /// Units held or committed here and not yet shipped.
    pub quantity: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shipped: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub returned: i64,
}

/// The allocations of a line or item: one location inline (nearly every line is served from
/// one), more on the heap. Serialised as a list.
pub type Allocations = smallvec::SmallVec<[AllocationView; 1]>;

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// A physical SKU inside a line (the line's own SKU, or a bundle component).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemView {
    pub sku: Sku,
    /// Units of this SKU the line asked for.
    pub quantity: i64,
    pub allocations: Allocations,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub backordered: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineView {
    pub sku: Sku,
    /// Units granted (requested, unless the fill policy was partial).
    pub quantity: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub requested: i64,
    /// The line's own SKU: its allocations. A bundle line: empty, see `components`.
    pub allocations: Allocations,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<ItemView>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub backordered: i64,
}

/// The lines of a reservation view or event: a shared, immutable list. The reply to a
/// reservation and its event carry the same lines, so they share one list instead of each
/// owning a copy. Reads as a slice (`iter`, `len`, indexing, `for l in &lines`); built with
/// `collect` or from a `Vec`. Serialised, and printed with `{:?}`, exactly as a `Vec`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Lines(Arc<[LineView]>);

impl std::ops::Deref for Lines {
    type Target = [LineView];
    fn deref(&self) -> &[LineView] {
        &self.0
    }
}

impl std::fmt::Debug for Lines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        <[LineView] as std::fmt::Debug>::fmt(&self.0, f)
    }
}

impl FromIterator<LineView> for Lines {
    fn from_iter<I: IntoIterator<Item = LineView>>(it: I) -> Self {
        Lines(it.into_iter().collect())
    }
}

impl Lines {
    /// A list of one line: one allocation, the line written once (a collected list of one
    /// goes through the general path of `Arc<[T]>`'s `FromIterator`).
    pub fn one(line: LineView) -> Lines {
        Lines(Arc::new([line]))
    }
}

impl From<Vec<LineView>> for Lines {
    fn from(v: Vec<LineView>) -> Self {
        Lines(v.into())
    }
}

impl<'a> IntoIterator for &'a Lines {
    type Item = &'a LineView;
    type IntoIter = std::slice::Iter<'a, LineView>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl PartialEq<Vec<LineView>> for Lines {
    fn eq(&self, other: &Vec<LineView>) -> bool {
        *self.0 == **other
    }
}

impl Serialize for Lines {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        <[LineView]>::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Lines {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<LineView>::deserialize(d).map(Lines::from)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationView {
    pub id: ReservationId,
    pub channel: ChannelId,
    pub state: ReservationState,
    pub created_at: TimeMs,
    pub expires_at: TimeMs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_ref: Option<String>,
    pub lines: Lines,
}

/// One term of an ATS explanation: `quantity` is added to the running total (negative terms
/// subtract); `rule` names the rule that caused it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Term {
    pub term: String,
    pub quantity: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Why a channel's ATS for a SKU is what it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub sku: Sku,
    pub channel: ChannelId,
    pub available_to_sell: i64,
    pub terms: Vec<Term>,
}

/// A recorded change. `seq` is the causing command's global sequence number; `index` orders
/// the events of one command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: Seq,
    pub index: u32,
    pub at: TimeMs,
    pub tenant: TenantId,
    /// Up to 24 bytes inline: numbering an event allocates nothing for its actor.
    pub key_id: compact_str::CompactString,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum EventKind {
    TenantCreated,
    LocationPut {
        location: LocationId,
    },
    ChannelPut {
        channel: ChannelId,
    },
    BundlePut {
        sku: Sku,
    },
    RulesPut {
        version: u64,
    },
    /// A stock operation changed a level; `level` is the level after it (boxed: the largest
    /// field of any event, and events are moved a few times on their way out).
    StockChanged {
        op: String,
        sku: Sku,
        level: Box<LevelView>,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unit_cost: Option<Decimal>,
    },
    ReservationHeld {
        id: ReservationId,
        channel: ChannelId,
        lines: Lines,
    },
    ReservationExtended {
        id: ReservationId,
        expires_at: TimeMs,
    },
    ReservationCommitted {
        id: ReservationId,
        lines: Lines,
    },
    ReservationReleased {
        id: ReservationId,
    },
    ReservationExpired {
        id: ReservationId,
    },
    ReservationCancelled {
        id: ReservationId,
    },
    /// Units picked and shipped.
    Fulfilled {
        id: ReservationId,
        sku: Sku,
        location: LocationId,
        quantity: i64,
    },
    /// A short pick: units expected at a location were not found (on_hand lowered).
    Discrepancy {
        id: ReservationId,
        sku: Sku,
        location: LocationId,
        missing: i64,
    },
    /// Units of an order moved to another location after a short pick.
    Reallocated {
        id: ReservationId,
        sku: Sku,
        from: LocationId,
        to: LocationId,
        quantity: i64,
    },
    /// Units of an order that cannot be served now.
    Backordered {
        id: ReservationId,
        sku: Sku,
        location: LocationId,
        quantity: i64,
        cause: String,
    },
    Returned {
        id: ReservationId,
        sku: Sku,
        location: LocationId,
        quantity: i64,
        damaged: bool,
    },
    /// A physical count made available negative; every channel's ATS for the SKU is zero
    /// until it is positive again.
    OversellIncident {
        sku: Sku,
        location: LocationId,
        deficit: i64,
    },
}
