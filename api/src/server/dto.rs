//! The API's request and response bodies (JSON, `snake_case`, quantities as integers, times as
//! RFC 3339 UTC), with their OpenAPI schemas, and the conversions from and to engine types.
//!
//! Request bodies refuse unknown fields, so a misspelt field (`ttl_ms` for `ttl_seconds`) is a
//! 400 naming it instead of being silently ignored.

use depot_engine::outcome::{
    AllocationView, ChannelAts, Explanation, ItemView, LevelView, LineView, ReservationView,
    StockView, Term,
};
use depot_engine::ReservationState;
use serde::{Deserialize, Serialize};
use std::time::UNIX_EPOCH;
use utoipa::ToSchema;

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds (`2024-05-01T12:00:00.000Z`).
pub use crate::events::rfc3339;

/// RFC 3339 text as milliseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    t.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_millis()).ok())
}

// ---------------------------------------------------------------- tenants and keys

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantBody {
    /// The tenant's id: 1 to 128 printable ASCII bytes.
    #[schema(example = "acme")]
    pub id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantDto {
    pub id: String,
}

/// A key's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoleDto {
    Admin,
    Channel,
    Wms,
    Reader,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyBody {
    /// Required for the master key; an admin key creates keys of its own tenant.
    pub tenant: Option<String>,
    pub role: RoleDto,
    /// The channels a `channel` key may act for.
    pub channels: Option<Vec<String>>,
    /// The locations a `wms` key may act for.
    pub locations: Option<Vec<String>>,
    /// Networks the key may be used from (`10.0.0.0/8`, `::1/128`); any when absent.
    pub cidrs: Option<Vec<String>>,
}

/// A new key. `key` is shown only here: it is stored hashed.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKeyDto {
    pub id: String,
    pub key: String,
    pub tenant: String,
    pub role: RoleDto,
    pub channels: Vec<String>,
    pub locations: Vec<String>,
    pub cidrs: Vec<String>,
}

// ---------------------------------------------------------------- configuration

#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LocationKindDto {
    Warehouse,
    #[serde(rename = "3pl")]
    ThirdParty,
    Store,
    ChannelFulfilled,
}

impl From<LocationKindDto> for depot_engine::LocationKind {
    fn from(k: LocationKindDto) -> Self {
        use depot_engine::LocationKind as K;
        match k {
            LocationKindDto::Warehouse => K::Warehouse,
            LocationKindDto::ThirdParty => K::ThirdParty,
            LocationKindDto::Store => K::Store,
            LocationKindDto::ChannelFulfilled => K::ChannelFulfilled,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutLocationBody {
    pub kind: LocationKindDto,
    pub name: String,
    pub region: Option<String>,
    /// The WMS that runs this location.
    pub wms: Option<String>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKindDto {
    Shopify,
    Amazon,
    Ebay,
    Temu,
    B2b,
    Pos,
    Agent,
    Other,
}

impl From<ChannelKindDto> for depot_engine::ChannelKind {
    fn from(k: ChannelKindDto) -> Self {
        use depot_engine::ChannelKind as K;
        match k {
            ChannelKindDto::Shopify => K::Shopify,
            ChannelKindDto::Amazon => K::Amazon,
            ChannelKindDto::Ebay => K::Ebay,
            ChannelKindDto::Temu => K::Temu,
            ChannelKindDto::B2b => K::B2b,
            ChannelKindDto::Pos => K::Pos,
            ChannelKindDto::Agent => K::Agent,
            ChannelKindDto::Other => K::Other,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutChannelBody {
    pub kind: ChannelKindDto,
    /// Higher is more important (scarcity rules, oversell policy). Default 0.
    pub priority: Option<i32>,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ComponentDto {
    pub sku: String,
    pub quantity: i64,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutBundleBody {
    pub components: Vec<ComponentDto>,
}

/// The rule document as `README.md` ("The rule document") describes it: `oversell_policy` and
/// `rules`; `version` is assigned by depot.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleDocumentDto {
    pub version: u64,
    #[schema(value_type = String, example = "newest_first")]
    pub oversell_policy: serde_json::Value,
    #[schema(value_type = Vec<Object>)]
    pub rules: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RulesVersionDto {
    pub version: u64,
}

/// A configured location, channel or bundle, as stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfiguredDto {
    pub id: String,
    #[schema(value_type = Object)]
    #[serde(flatten)]
    pub body: serde_json::Value,
}

// ---------------------------------------------------------------- stock

/// The stock operations of `POST /v1/stock/adjustments`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdjustmentKind {
    /// Inbound units: on_hand += quantity (lowers incoming).
    Receive,
    /// on_hand += quantity (a signed delta).
    Adjust,
    /// A physical count: on_hand = quantity (`compare_quantity` guards it).
    Set,
    /// quantity from bucket `from` to bucket `to`.
    Move,
    /// quantity out of `location`, incoming at `to_location`.
    Transfer,
    /// quantity expected at `location` (incoming), optionally at `expected_at`.
    Expect,
}

/// A named quantity for `move`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BucketDto {
    Available,
    Damaged,
    QualityControl,
    SafetyStock,
}

impl From<BucketDto> for depot_engine::Bucket {
    fn from(b: BucketDto) -> Self {
        use depot_engine::Bucket as B;
        match b {
            BucketDto::Available => B::Available,
            BucketDto::Damaged => B::Damaged,
            BucketDto::QualityControl => B::QualityControl,
            BucketDto::SafetyStock => B::SafetyStock,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentBody {
    pub sku: String,
    pub location: String,
    pub kind: AdjustmentKind,
    pub quantity: i64,
    /// `set` only: fails with 409 `compare_failed` when on_hand differs.
    pub compare_quantity: Option<i64>,
    /// `move` only.
    pub from: Option<BucketDto>,
    /// `move` only.
    pub to: Option<BucketDto>,
    /// `transfer` only.
    pub to_location: Option<String>,
    /// `receive` only: the unit cost, a decimal string (`"3.40"`).
    pub unit_cost: Option<String>,
    /// `expect` and `transfer`: when the units are expected (RFC 3339).
    pub expected_at: Option<String>,
    pub reason: String,
}

/// The levels an adjustment changed, after it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdjustmentDto {
    pub seq: u64,
    pub sku: String,
    pub levels: Vec<LevelDto>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LevelDto {
    pub location: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub committed: i64,
    pub damaged: i64,
    pub quality_control: i64,
    pub safety_stock: i64,
    pub incoming: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incoming_expected_at: Option<String>,
    pub available: i64,
}

impl From<&LevelView> for LevelDto {
    fn from(l: &LevelView) -> Self {
        LevelDto {
            location: l.location.to_string(),
            on_hand: l.on_hand,
            reserved: l.reserved,
            committed: l.committed,
            damaged: l.damaged,
            quality_control: l.quality_control,
            safety_stock: l.safety_stock,
            incoming: l.incoming,
            incoming_expected_at: l.incoming_expected_at.map(rfc3339),
            available: l.available,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelAtsDto {
    pub channel: String,
    pub available_to_sell: i64,
}

impl From<&ChannelAts> for ChannelAtsDto {
    fn from(c: &ChannelAts) -> Self {
        ChannelAtsDto {
            channel: c.channel.to_string(),
            available_to_sell: c.available_to_sell,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StockDto {
    pub sku: String,
    pub locations: Vec<LevelDto>,
    pub channels: Vec<ChannelAtsDto>,
    /// Weighted average unit cost of receipts, a decimal string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub average_unit_cost: Option<String>,
    /// For a bundle: its components (a bundle has no stock of its own).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<ComponentDto>,
}

impl From<&StockView> for StockDto {
    fn from(s: &StockView) -> Self {
        StockDto {
            sku: s.sku.to_string(),
            locations: s.locations.iter().map(LevelDto::from).collect(),
            channels: s.channels.iter().map(ChannelAtsDto::from).collect(),
            average_unit_cost: s.average_unit_cost.map(|d| d.to_string()),
            components: s
                .components
                .iter()
                .map(|c| ComponentDto {
                    sku: c.sku.to_string(),
                    quantity: c.quantity,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TermDto {
    /// What this term is (`on_hand`, `committed`, `buffer`, `ring_fence`, ...).
    pub term: String,
    /// Added to the running total (negative terms subtract).
    pub quantity: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Why a channel's ATS for a SKU is what it is, term by term.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExplanationDto {
    pub sku: String,
    pub channel: String,
    pub available_to_sell: i64,
    pub terms: Vec<TermDto>,
}

impl From<&Explanation> for ExplanationDto {
    fn from(e: &Explanation) -> Self {
        ExplanationDto {
            sku: e.sku.to_string(),
            channel: e.channel.to_string(),
            available_to_sell: e.available_to_sell,
            terms: e
                .terms
                .iter()
                .map(|t: &Term| TermDto {
                    term: t.term.clone(),
                    quantity: t.quantity,
                    rule: t.rule.clone(),
                    detail: t.detail.clone(),
                })
                .collect(),
        }
    }
}

/// One SKU of a channel's exposure.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExposureSkuDto {
    pub sku: String,
    /// What depot advertises to the channel now (its ATS).
    pub available_to_sell: i64,
    /// The real available of the SKU: Σ over its locations of available (may be negative
    /// during an oversell incident).
    pub available: i64,
    /// Units the channel is not offered although they are available (rules, other channels'
    /// ring-fences, ineligible locations): max(0, available - available_to_sell).
    pub held_back: i64,
    /// Units advertised beyond what is really available: max(0, available_to_sell -
    /// max(available, 0)). Zero unless something is wrong.
    pub exposure: i64,
}

/// A channel's exposure, per SKU, in SKU order.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExposureDto {
    pub channel: String,
    pub skus: Vec<ExposureSkuDto>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

// ---------------------------------------------------------------- reservations

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineDto<'a> {
    #[serde(borrow)]
    #[schema(value_type = String)]
    pub sku: std::borrow::Cow<'a, str>,
    pub quantity: i64,
}

/// How much of a reservation may be granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FillDto {
    /// Every line in full, or nothing (the default).
    AllOrNothing,
    /// Each line gets what its ATS allows.
    Partial,
    /// Every line in full, each from at most `max_locations` locations.
    Split,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveBody<'a> {
    // The texts are borrowed from the request's bytes (copied only when they hold escapes).
    #[serde(borrow)]
    #[schema(value_type = String)]
    pub channel: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub lines: Vec<LineDto<'a>>,
    /// How long the hold lasts; default 900.
    pub ttl_seconds: Option<u64>,
    pub order_ref: Option<String>,
    /// For `nearest` routing rules.
    pub ship_to_region: Option<String>,
    pub fill: Option<FillDto>,
    /// With `fill: split`: at most this many locations per line.
    pub max_locations: Option<u16>,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitLineDto {
    pub sku: String,
    /// Units to commit (the rest of the line is released); all when absent.
    pub quantity: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitBody {
    /// The lines to commit; all when absent.
    pub lines: Option<Vec<CommitLineDto>>,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    pub ttl_seconds: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FulfilLineDto {
    pub sku: String,
    pub location: String,
    /// Units picked and shipped.
    pub quantity: i64,
    /// Units found missing (a short pick).
    pub missing: Option<i64>,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FulfilBody {
    pub lines: Vec<FulfilLineDto>,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReturnBody {
    pub sku: String,
    pub location: String,
    pub quantity: i64,
    /// Returned damaged (on_hand and damaged both rise).
    pub damaged: Option<bool>,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStateDto {
    Held,
    Committed,
    Fulfilled,
    PartiallyFulfilled,
    Released,
    Expired,
    Cancelled,
}

impl ReservationStateDto {
    /// The name serde writes for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Committed => "committed",
            Self::Fulfilled => "fulfilled",
            Self::PartiallyFulfilled => "partially_fulfilled",
            Self::Released => "released",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }
}

impl From<ReservationState> for ReservationStateDto {
    fn from(s: ReservationState) -> Self {
        use ReservationState as S;
        match s {
            S::Held => Self::Held,
            S::Committed => Self::Committed,
            S::Fulfilled => Self::Fulfilled,
            S::PartiallyFulfilled => Self::PartiallyFulfilled,
            S::Released => Self::Released,
            S::Expired => Self::Expired,
            S::Cancelled => Self::Cancelled,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AllocationDto<'a> {
    pub location: &'a str,
    /// Units held or committed here and not yet shipped.
    pub quantity: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub shipped: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub returned: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl<'a> From<&'a AllocationView> for AllocationDto<'a> {
    fn from(a: &'a AllocationView) -> Self {
        AllocationDto {
            location: a.location.as_str(),
            quantity: a.quantity,
            shipped: a.shipped,
            returned: a.returned,
        }
    }
}

/// A component of a bundle line.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemDto<'a> {
    pub sku: &'a str,
    pub quantity: i64,
    pub allocations: Vec<AllocationDto<'a>>,
    #[serde(skip_serializing_if = "is_zero")]
    pub backordered: i64,
}

impl<'a> From<&'a ItemView> for ItemDto<'a> {
    fn from(i: &'a ItemView) -> Self {
        ItemDto {
            sku: i.sku.as_str(),
            quantity: i.quantity,
            allocations: i.allocations.iter().map(AllocationDto::from).collect(),
            backordered: i.backordered,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReservationLineDto<'a> {
    pub sku: &'a str,
    /// Units granted (requested, unless the fill policy was partial).
    pub quantity: i64,
    /// Units asked for, when more than granted.
    #[serde(skip_serializing_if = "is_zero")]
    pub requested: i64,
    /// The line's own SKU; a bundle line has none, see `components`.
    pub allocations: Vec<AllocationDto<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<ItemDto<'a>>,
    #[serde(skip_serializing_if = "is_zero")]
    pub backordered: i64,
}

impl<'a> From<&'a LineView> for ReservationLineDto<'a> {
    fn from(l: &'a LineView) -> Self {
        ReservationLineDto {
            sku: l.sku.as_str(),
            quantity: l.quantity,
            requested: l.requested,
            allocations: l.allocations.iter().map(AllocationDto::from).collect(),
            components: l.components.iter().map(ItemDto::from).collect(),
            backordered: l.backordered,
        }
    }
}

/// A time (milliseconds since the epoch) written as RFC 3339 text ([`rfc3339`]) straight into
/// the answer, without a string of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rfc3339(pub u64);

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::events::with_rfc3339(self.0, |t| s.serialize_str(t))
    }
}

/// A value written as its `Display` text, without a string of its own.
#[derive(Clone, Copy, Debug)]
pub struct Shown<T>(pub T);

impl<T: std::fmt::Display> Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

// Borrowed from the engine's view of the reservation: nothing is copied on the way to the
// answer's JSON (every write of a batch answers with one).
#[derive(Debug, Serialize, ToSchema)]
pub struct ReservationDto<'a> {
    /// `res_<n>`.
    #[schema(value_type = String, example = "res_42")]
    pub id: Shown<depot_engine::ReservationId>,
    pub channel: &'a str,
    pub state: ReservationStateDto,
    #[schema(value_type = String)]
    pub created_at: Rfc3339,
    #[schema(value_type = String)]
    pub expires_at: Rfc3339,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_ref: Option<&'a str>,
    pub lines: Vec<ReservationLineDto<'a>>,
}

impl<'a> From<&'a ReservationView> for ReservationDto<'a> {
    fn from(r: &'a ReservationView) -> Self {
        ReservationDto {
            id: Shown(r.id),
            channel: r.channel.as_str(),
            state: r.state.into(),
            created_at: Rfc3339(r.created_at),
            expires_at: Rfc3339(r.expires_at),
            order_ref: r.order_ref.as_deref(),
            lines: r.lines.iter().map(ReservationLineDto::from).collect(),
        }
    }
}

/// Appends the JSON of `r`: byte for byte what serde_json writes for
/// `ReservationDto::from(r)` (the test `reservations_write_as_serde_writes_them` holds the two
/// equal), without the DTO's lists and without serde escaping every key. Nearly every write
/// answers with a reservation, a batch with thousands of them; serde's path cost about 4,500
/// instructions for a one-line reservation.
pub fn write_reservation(r: &ReservationView, out: &mut Vec<u8>) {
    out.extend_from_slice(br#"{"id":"res_"#);
    int(out, r.id.0);
    out.extend_from_slice(br#"","channel":"#);
    string(out, r.channel.as_str());
    out.extend_from_slice(br#","state":""#);
    out.extend_from_slice(ReservationStateDto::from(r.state).name().as_bytes());
    out.extend_from_slice(br#"","created_at":""#);
    time(out, r.created_at);
    out.extend_from_slice(br#"","expires_at":""#);
    time(out, r.expires_at);
    out.push(b'"');
    if let Some(o) = &r.order_ref {
        out.extend_from_slice(br#","order_ref":"#);
        string(out, o);
    }
    out.extend_from_slice(br#","lines":"#);
    list(out, &r.lines, |out, l| {
        out.extend_from_slice(br#"{"sku":"#);
        string(out, l.sku.as_str());
        out.extend_from_slice(br#","quantity":"#);
        int(out, l.quantity);
        nonzero(out, br#","requested":"#, l.requested);
        out.extend_from_slice(br#","allocations":"#);
        write_allocations(&l.allocations, out);
        if !l.components.is_empty() {
            out.extend_from_slice(br#","components":"#);
            list(out, &l.components, |out, c| {
                out.extend_from_slice(br#"{"sku":"#);
                string(out, c.sku.as_str());
                out.extend_from_slice(br#","quantity":"#);
                int(out, c.quantity);
                out.extend_from_slice(br#","allocations":"#);
                write_allocations(&c.allocations, out);
                nonzero(out, br#","backordered":"#, c.backordered);
                out.push(b'}');
            });
        }
        nonzero(out, br#","backordered":"#, l.backordered);
        out.push(b'}');
    });
    out.push(b'}');
}

fn write_allocations(allocations: &[AllocationView], out: &mut Vec<u8>) {
    list(out, allocations, |out, a| {
        out.extend_from_slice(br#"{"location":"#);
        string(out, a.location.as_str());
        out.extend_from_slice(br#","quantity":"#);
        int(out, a.quantity);
        nonzero(out, br#","shipped":"#, a.shipped);
        nonzero(out, br#","returned":"#, a.returned);
        out.push(b'}');
    });
}

/// A JSON list of `items`, each written by `each`.
fn list<T>(out: &mut Vec<u8>, items: &[T], mut each: impl FnMut(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        each(out, x);
    }
    out.push(b']');
}

/// `key` (`,"name":`) and `n`, unless `n` is zero (serde's `skip_serializing_if = "is_zero"`).
fn nonzero(out: &mut Vec<u8>, key: &[u8], n: i64) {
    if n != 0 {
        out.extend_from_slice(key);
        int(out, n);
    }
}

fn int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A JSON string, escaped by serde_json itself. A string with nothing to escape (no quote,
/// backslash or control character: every id but a rare one), found eight bytes at a time, is
/// written as it is: serde_json looks its bytes up one by one.
fn string(out: &mut Vec<u8>, s: &str) {
    if crate::server::batch::scan::string_end(s.as_bytes(), 0) == s.len() {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// An RFC 3339 time's text, which has nothing to escape (digits, `-`, `:`, `T`, `.`, `Z`).
fn time(out: &mut Vec<u8>, ms: u64) {
    crate::events::with_rfc3339_bytes(ms, |t| out.extend_from_slice(t));
}

// ---------------------------------------------------------------- batch, events, errors

/// One operation of `POST /v1/batch`: what a single request would say.
// Borrowed from the request's bytes: a batch of a thousand operations is not copied into
// thousands of strings on its way to the engine.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchOperation<'a> {
    /// `GET`, `POST` or `PUT`.
    #[serde(borrow)]
    #[schema(value_type = String, example = "POST")]
    pub method: std::borrow::Cow<'a, str>,
    /// The path of the single request, e.g. `/v1/reservations/res_42/commit`. A query string
    /// is allowed for the explain path (`?channel=...`).
    #[serde(borrow)]
    #[schema(value_type = String, example = "/v1/reservations")]
    pub path: std::borrow::Cow<'a, str>,
    /// The body the single request would carry.
    #[serde(borrow)]
    #[schema(value_type = Option<Object>)]
    pub body: Option<&'a serde_json::value::RawValue>,
    /// Its own `Idempotency-Key` (required where the single request requires it).
    pub idempotency_key: Option<String>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody<'a> {
    #[serde(borrow)]
    pub operations: Vec<BatchOperation<'a>>,
}

/// The answer to one operation: its status and body as the single request would get them.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResult {
    pub status: u16,
    #[schema(value_type = Object)]
    pub body: Box<serde_json::value::RawValue>,
    /// The stored first answer of its idempotency key.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResults {
    pub results: Vec<BatchResult>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventPageDto {
    /// `{seq, at, kind, key_id, ...}` with the fields of each kind.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
    /// Pass as `after` for the next page.
    pub next: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// `invalid_request`, `unauthenticated`, `forbidden`, `not_found`, `insufficient_stock`,
    /// `invalid_state`, `compare_failed`, `payload_too_large`, `idempotency_key_reused`,
    /// `rate_limited`, `not_ready`, `limit_exceeded`, `overloaded`, `unavailable`, `timeout`.
    pub code: String,
    pub message: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthDto {
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_as_rfc3339_utc() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.123Z"),
            Some(1_700_000_000_123)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59.999Z");
    }

    /// The thread's remembered day never gives another time's text: repeated times, times
    /// alternating between days and times of a new day all read as a fresh formatting does.
    #[test]
    fn remembered_times_are_the_times_asked_for() {
        let fresh = |ms: u64| {
            let t = UNIX_EPOCH + std::time::Duration::from_millis(ms);
            humantime::format_rfc3339_millis(t).to_string()
        };
        let times = [
            0,
            1,
            1_700_000_000_123,
            1,
            0,
            42,
            1_700_000_000_123,
            86_399_999,
        ];
        for round in 0..3u64 {
            for &ms in &times {
                let ms = ms + round;
                assert_eq!(rfc3339(ms), fresh(ms));
                let json = serde_json::to_string(&Rfc3339(ms)).expect("serializes");
                assert_eq!(json, format!("\"{}\"", fresh(ms)));
            }
        }
        assert_eq!(
            serde_json::to_string(&Rfc3339(u64::MAX)).expect("serializes"),
            "\"9999-12-31T23:59:59.999Z\""
        );
        // Every millisecond field of a day, across its end, in steps that reach every digit
        // position: the time of day written by hand is humantime's.
        let day = 1_700_006_400_000u64; // 2023-11-15T00:00:00.000Z
        let mut ms = day - 10;
        while ms < day + 2 * 86_400_000 + 10 {
            assert_eq!(rfc3339(ms), fresh(ms));
            ms += 9_999_937;
        }
        for ms in [
            day - 1,
            day,
            day + 1,
            day + 86_399_999,
            day + 86_400_000,
            0,
            999,
        ] {
            assert_eq!(rfc3339(ms), fresh(ms));
        }
    }

    mod written {
        use super::*;
        use depot_engine::{ChannelId, LocationId, ReservationId, Sku};
        use proptest::prelude::*;

        /// Zero half the time (the fields serde leaves out when zero), anything otherwise.
        fn maybe_zero() -> impl Strategy<Value = i64> {
            prop_oneof![Just(0i64), any::<i64>()]
        }

        /// Printable ASCII ids, quotes and backslashes included (they need escapes).
        const ID: &str = "[!-~]{1,10}";

        fn allocation() -> impl Strategy<Value = AllocationView> {
            (ID, any::<i64>(), maybe_zero(), maybe_zero()).prop_map(|(l, q, s, r)| AllocationView {
                location: LocationId::new(&l).expect("an id"),
                quantity: q,
                shipped: s,
                returned: r,
            })
        }

        fn item() -> impl Strategy<Value = ItemView> {
            (
                ID,
                any::<i64>(),
                proptest::collection::vec(allocation(), 0..3),
                maybe_zero(),
            )
                .prop_map(|(sku, q, a, b)| ItemView {
                    sku: Sku::new(&sku).expect("an id"),
                    quantity: q,
                    allocations: a.into_iter().collect(),
                    backordered: b,
                })
        }

        fn line() -> impl Strategy<Value = LineView> {
            (
                ID,
                any::<i64>(),
                maybe_zero(),
                proptest::collection::vec(allocation(), 0..3),
                proptest::collection::vec(item(), 0..3),
                maybe_zero(),
            )
                .prop_map(|(sku, q, r, a, c, b)| LineView {
                    sku: Sku::new(&sku).expect("an id"),
                    quantity: q,
                    requested: r,
                    allocations: a.into_iter().collect(),
                    components: c,
                    backordered: b,
                })
        }

        const STATES: [ReservationState; 7] = [
            ReservationState::Held,
            ReservationState::Committed,
            ReservationState::Fulfilled,
            ReservationState::PartiallyFulfilled,
            ReservationState::Released,
            ReservationState::Expired,
            ReservationState::Cancelled,
        ];

        fn reservation() -> impl Strategy<Value = ReservationView> {
            (
                any::<u64>(),
                ID,
                0..STATES.len(),
                any::<u64>(),
                any::<u64>(),
                proptest::option::of(any::<String>()),
                proptest::collection::vec(line(), 0..4),
            )
                .prop_map(|(id, ch, st, c, e, o, lines)| ReservationView {
                    id: ReservationId(id),
                    channel: ChannelId::new(&ch).expect("an id"),
                    state: STATES[st],
                    created_at: c,
                    expires_at: e,
                    order_ref: o,
                    lines: lines.into(),
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]
            /// The hand-written JSON of a reservation is serde's, byte for byte: every field,
            /// every left-out zero, every escape (ids with quotes and backslashes, order
            /// references with any text), any time and any quantity.
            #[test]
            fn reservations_write_as_serde_writes_them(r in reservation()) {
                let mut written = b"[".to_vec();
                write_reservation(&r, &mut written);
                written.push(b']');
                let serde = serde_json::to_vec(&[ReservationDto::from(&r)]).expect("serializes");
                prop_assert_eq!(
                    String::from_utf8(written).expect("UTF-8"),
                    String::from_utf8(serde).expect("UTF-8")
                );
            }
        }
    }

    /// A reservation's JSON, borrowed from the engine's view, has the fields and texts of
    /// API.md.
    #[test]
    fn a_reservation_shows_as_api_md_says() {
        let json = |v: &ReservationView| {
            serde_json::to_value(ReservationDto::from(v)).expect("serializes")
        };
        let view: ReservationView = serde_json::from_value(serde_json::json!({
            "id": 42, "channel": "shopify", "state": "held",
            "created_at": 1_700_000_000_123u64, "expires_at": 1_700_000_900_123u64,
            "order_ref": null,
            "lines": [{"sku": "tee-m", "quantity": 2, "requested": 0, "backordered": 0,
                "allocations": [{"location": "wh-1", "quantity": 2, "shipped": 0, "returned": 0}],
                "components": []}]
        }))
        .expect("a view");
        assert_eq!(
            json(&view),
            serde_json::json!({
                "id": "res_42", "channel": "shopify", "state": "held",
                "created_at": "2023-11-14T22:13:20.123Z",
                "expires_at": "2023-11-14T22:28:20.123Z",
                "lines": [{"sku": "tee-m", "quantity": 2,
                    "allocations": [{"location": "wh-1", "quantity": 2}]}]
            })
        );
    }
}
