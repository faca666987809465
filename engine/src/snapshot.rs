//! The state image: the whole state in a canonical, shard-independent form, archived with
//! rkyv. Taking an image and loading it into a machine with any number of shards gives the
//! same digest. Derived data (per-channel ATS, routes, timers) is not stored: loading rebuilds
//! it. Nothing here uses `usize`: the layout is the same on every platform.

use crate::config::{Channel, Component, Location, TenantConfig, TenantEntry};
use crate::exec::Shown;
use crate::front::{Front, IdemAnswer, IdemEntry, IdemKey, UNKNOWN_FINGERPRINT};
use crate::ids::{ChannelId, LocationId, ReservationId, Sku, TenantId};
use crate::job::{Granted, LineHeader, LineHeaders};
use crate::limits::QUANTITY_MAX;
use crate::machine::Machine;
use crate::outcome::{
    AllocationView, Allocations, ItemView, LineView, Lines, Outcome, Reply, ReservationState,
    ReservationView, Response,
};
use crate::shard::{shard_of, Alloc, Lifecycle, Part, PartItem, ShardState, SkuKey, SkuState};
use rkyv::{Archive, Deserialize, Serialize};
use smallvec::SmallVec;
use std::sync::Arc;

mod view;
pub use view::{serialize_state_into, StateImage};

/// The largest stock quantity (any term of a level, units held per channel, units of an item
/// of a reservation) an image may carry: twice [`LEVEL_MAX`](crate::limits::LEVEL_MAX), which
/// stock operations keep to (returns are not refused, so a level may pass it slightly). Low
/// enough that the ATS, a sum of such terms over every location, cannot overflow.
pub const STOCK_MAX: i64 = 2 * crate::limits::LEVEL_MAX;

/// Version of the image layout or of what it means; bumped on any change. Version 1
/// (idempotent responses as JSON only), version 2 (with fingerprints of the commands' JSON),
/// version 3 (no [`ResponseImage::Reference`]) and version 4 (this layout, with BLAKE3
/// fingerprints, which [`crate::front::same_command`] still compares) are still read: see
/// [`from_bytes`].
pub const IMAGE_VERSION: u32 = 5;

/// The version before [`IMAGE_VERSION`] in the same layout: its idempotency fingerprints are
/// BLAKE3 digests of the command's layout, where this version's are XXH3-128.
const BLAKE3_FINGERPRINTS_VERSION: u32 = 4;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Image {
    pub version: u32,
    pub seq: u64,
    pub now: u64,
    pub tenants: Vec<TenantImage>,
    pub idempotency: Vec<IdemImage>,
    pub skus: Vec<SkuImage>,
    pub reservations: Vec<ReservationImage>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TenantImage {
    pub id: String,
    /// Locations, channels and bundles as JSON: small, and their wire form is already stable.
    pub locations_json: String,
    pub channels_json: String,
    pub bundles_json: String,
    pub rules_json: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct IdemImage {
    pub tenant: u32,
    pub key: String,
    pub fingerprint: [u8; 32],
    pub at: u64,
    /// The stored response; `None` for a request still executing (never in an image taken at
    /// a quiet point).
    pub response: Option<ResponseImage>,
}

/// A stored idempotent response.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ResponseImage {
    /// The answer of a reservation operation, field by field: about half the bytes of its
    /// JSON, and no JSON to write or parse. Archived behind a pointer (since version 4): inline
    /// it made every stored response, of whatever kind, take its 90 bytes.
    Reservation(#[rkyv(with = rkyv::with::AsBox)] ReservationReplyImage),
    /// Any other response, as its JSON.
    Json(String),
    /// A reservation's answer that is that reservation's view as this image holds it (the
    /// reservation has not changed since it was answered: most keyed holds). Loading builds
    /// the view from the reservation, as `GET /v1/reservations/{id}` would at the image's
    /// `now`. A keyed single-line hold's key and answer take 124 bytes instead of 272, and
    /// there is less to write. Added in version 4, after the other variants (whose tags it
    /// keeps).
    Reference(ReferenceImage),
}

/// A [`ResponseImage::Reference`]: the answer is `Response { seq, replayed, outcome:
/// Ok(Reply::Reservation(view of reservation id)) }`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct ReferenceImage {
    pub seq: Option<u64>,
    pub replayed: bool,
    pub id: u64,
}

impl ReferenceImage {
    /// The reference that stands for `r`, whose answer is `v`.
    fn of(r: &Response, v: &ReservationView) -> Self {
        ReferenceImage {
            seq: r.seq,
            replayed: r.replayed,
            id: v.id.0,
        }
    }
}

/// A [`Response`] whose outcome is `Ok(Reply::Reservation(view))`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ReservationReplyImage {
    pub seq: Option<u64>,
    pub replayed: bool,
    pub id: u64,
    pub channel: String,
    /// 0 held, 1 committed, 2 fulfilled, 3 partially fulfilled, 4 released, 5 expired,
    /// 6 cancelled.
    pub state: u8,
    pub created_at: u64,
    pub expires_at: u64,
    pub order_ref: Option<String>,
    pub lines: Vec<LineViewImage>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct LineViewImage {
    pub sku: String,
    pub quantity: i64,
    pub requested: i64,
    pub allocations: Vec<AllocationViewImage>,
    pub components: Vec<ItemViewImage>,
    pub backordered: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ItemViewImage {
    pub sku: String,
    pub quantity: i64,
    pub allocations: Vec<AllocationViewImage>,
    pub backordered: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AllocationViewImage {
    pub location: String,
    pub quantity: i64,
    pub shipped: i64,
    pub returned: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SkuImage {
    pub tenant: u32,
    pub sku: String,
    /// Per level: location index and the seven quantities plus the incoming date.
    pub levels: Vec<LevelImage>,
    /// Units held or committed per channel index.
    pub held: Vec<i64>,
    /// Average unit cost, as a decimal string.
    pub cost: Option<String>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct LevelImage {
    pub loc: u16,
    pub on_hand: i64,
    pub reserved: i64,
    pub committed: i64,
    pub damaged: i64,
    pub quality_control: i64,
    pub safety_stock: i64,
    pub incoming: i64,
    pub incoming_at: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ReservationImage {
    pub id: u64,
    pub tenant: u32,
    pub channel: u16,
    /// 0 held, 1 committed, 2 released, 3 expired, 4 cancelled.
    pub lifecycle: u8,
    pub created_at: u64,
    pub expires_at: u64,
    pub ended_at: u64,
    pub order_ref: Option<String>,
    pub lines: Vec<LineImage>,
    pub granted: Vec<i64>,
    pub items: Vec<ItemImage>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct LineImage {
    pub sku: String,
    pub requested: i64,
    pub is_bundle: bool,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ItemImage {
    pub item: u16,
    pub line: u16,
    pub slot: u16,
    pub sku: String,
    pub per_unit: i64,
    pub quantity: i64,
    pub allocs: Vec<AllocImage>,
    pub backordered: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct AllocImage {
    pub loc: u16,
    pub open: i64,
    pub shipped: i64,
    pub returned: i64,
}

/// Why an image could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the image does not validate: {0}")]
    Invalid(String),
    #[error("image version {0} is not supported (this build reads versions 1 to {IMAGE_VERSION})")]
    Version(u32),
    #[error("the image is inconsistent: {0}")]
    Inconsistent(String),
}

fn lifecycle_code(l: Lifecycle) -> u8 {
    match l {
        Lifecycle::Held => 0,
        Lifecycle::Committed => 1,
        Lifecycle::Released => 2,
        Lifecycle::Expired => 3,
        Lifecycle::Cancelled => 4,
    }
}

fn lifecycle_of(code: u8) -> Result<Lifecycle, ImageError> {
    Ok(match code {
        0 => Lifecycle::Held,
        1 => Lifecycle::Committed,
        2 => Lifecycle::Released,
        3 => Lifecycle::Expired,
        4 => Lifecycle::Cancelled,
        x => {
            return Err(ImageError::Inconsistent(format!(
                "unknown lifecycle code {x}"
            )))
        }
    })
}

pub(crate) fn state_code(s: ReservationState) -> u8 {
    match s {
        ReservationState::Held => 0,
        ReservationState::Committed => 1,
        ReservationState::Fulfilled => 2,
        ReservationState::PartiallyFulfilled => 3,
        ReservationState::Released => 4,
        ReservationState::Expired => 5,
        ReservationState::Cancelled => 6,
    }
}

pub(crate) fn state_of(code: u8) -> Result<ReservationState, ImageError> {
    Ok(match code {
        0 => ReservationState::Held,
        1 => ReservationState::Committed,
        2 => ReservationState::Fulfilled,
        3 => ReservationState::PartiallyFulfilled,
        4 => ReservationState::Released,
        5 => ReservationState::Expired,
        6 => ReservationState::Cancelled,
        x => {
            return Err(ImageError::Inconsistent(format!(
                "idempotent response: unknown reservation state {x}"
            )))
        }
    })
}

fn allocation_images(allocations: &[AllocationView]) -> Vec<AllocationViewImage> {
    allocations
        .iter()
        .map(|a| AllocationViewImage {
            location: a.location.as_str().to_owned(),
            quantity: a.quantity,
            shipped: a.shipped,
            returned: a.returned,
        })
        .collect()
}

/// The parts of reservation `id` in `shards`, in shard order (none: not held).
fn parts_of<'a>(shards: &[&'a ShardState], id: ReservationId) -> SmallVec<[&'a Part; 2]> {
    shards.iter().filter_map(|s| s.parts.get(&id)).collect()
}

/// True when an image may store `v`, the answer to a request of `tenant`, as a
/// [`ResponseImage::Reference`]: `parts` (its reservation's, in shard order; none when the
/// image holds no such reservation) are `tenant`'s, and their view at the front's `now` (what
/// loading will build) is `v` exactly.
fn shows(front: &Front, tenant: u32, v: &Shown<'_>, parts: &[&Part]) -> bool {
    let Some(head) = parts.first() else {
        return false;
    };
    let Some(cfg) = front.config(head.tenant).filter(|_| head.tenant == tenant) else {
        return false;
    };
    let id = ReservationId(v.id);
    let shows = crate::exec::view_shows(v, cfg, id, parts, front.now);
    #[cfg(debug_assertions)]
    {
        // Compared as printed: a `Shown` borrows, and one borrowing `built` is not of `v`'s
        // lifetime (its lists make it invariant in it).
        let built = crate::exec::reservation_view(cfg, id, parts, front.now);
        assert_eq!(
            shows,
            format!("{:?}", Shown::of(&built)) == format!("{v:?}"),
            "view_shows disagrees with reservation_view on {v:?}"
        );
    }
    shows
}

/// A stored response in its image form: by reference to its reservation when that shows it
/// (`current`, see [`shows`]), field by field for another reservation's answer, JSON
/// otherwise.
fn response_image(r: &Response, current: impl FnOnce(&ReservationView) -> bool) -> ResponseImage {
    let Outcome::Ok(Reply::Reservation(v)) = &r.outcome else {
        return ResponseImage::Json(json(r));
    };
    if current(v) {
        return ResponseImage::Reference(ReferenceImage::of(r, v));
    }
    ResponseImage::Reservation(ReservationReplyImage {
        seq: r.seq,
        replayed: r.replayed,
        id: v.id.0,
        channel: v.channel.as_str().to_owned(),
        state: state_code(v.state),
        created_at: v.created_at,
        expires_at: v.expires_at,
        order_ref: v.order_ref.clone(),
        lines: v
            .lines
            .iter()
            .map(|l| LineViewImage {
                sku: l.sku.as_str().to_owned(),
                quantity: l.quantity,
                requested: l.requested,
                allocations: allocation_images(&l.allocations),
                components: l
                    .components
                    .iter()
                    .map(|c| ItemViewImage {
                        sku: c.sku.as_str().to_owned(),
                        quantity: c.quantity,
                        allocations: allocation_images(&c.allocations),
                        backordered: c.backordered,
                    })
                    .collect(),
                backordered: l.backordered,
            })
            .collect(),
    })
}

fn id_of<T>(what: &str, made: Result<T, impl std::fmt::Display>) -> Result<T, ImageError> {
    made.map_err(|e| ImageError::Inconsistent(format!("idempotent response: {what}: {e}")))
}

fn allocations_of(images: &[AllocationViewImage]) -> Result<Allocations, ImageError> {
    images
        .iter()
        .map(|a| {
            Ok(AllocationView {
                location: id_of("location", LocationId::new(&a.location))?,
                quantity: a.quantity,
                shipped: a.shipped,
                returned: a.returned,
            })
        })
        .collect()
}

/// The response an image stores, checked as the engine's own constructors check ids (not a
/// [`ResponseImage::Reference`], which needs the reservations: see [`referenced`]).
fn response_of(image: &ResponseImage) -> Result<Response, ImageError> {
    let r = match image {
        ResponseImage::Json(text) => return from_json("idempotent response", text),
        ResponseImage::Reference(_) => unreachable!("a reference is built from its reservation"),
        ResponseImage::Reservation(r) => r,
    };
    let state = state_of(r.state)?;
    let mut lines = Vec::with_capacity(r.lines.len());
    for l in &r.lines {
        let mut components = Vec::with_capacity(l.components.len());
        for c in &l.components {
            components.push(ItemView {
                sku: id_of("sku", Sku::new(&c.sku))?,
                quantity: c.quantity,
                allocations: allocations_of(&c.allocations)?,
                backordered: c.backordered,
            });
        }
        lines.push(LineView {
            sku: id_of("sku", Sku::new(&l.sku))?,
            quantity: l.quantity,
            requested: l.requested,
            allocations: allocations_of(&l.allocations)?,
            components,
            backordered: l.backordered,
        });
    }
    Ok(Response {
        seq: r.seq,
        replayed: r.replayed,
        outcome: Outcome::Ok(Reply::Reservation(ReservationView {
            id: ReservationId(r.id),
            channel: id_of("channel", ChannelId::new(&r.channel))?,
            state,
            created_at: r.created_at,
            expires_at: r.expires_at,
            order_ref: r.order_ref.clone(),
            lines: Lines::from(lines),
        })),
    })
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("configuration serializes")
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, ImageError> {
    serde_json::from_str(s).map_err(|e| ImageError::Inconsistent(format!("{what}: {e}")))
}

/// The tenants of an image: few, and kept as their configuration's JSON.
fn tenant_images(front: &Front) -> Vec<TenantImage> {
    front
        .tenants
        .iter()
        .map(|e| TenantImage {
            id: e.id.as_str().to_owned(),
            locations_json: json(&e.config.locations),
            channels_json: json(&e.config.channels),
            bundles_json: json(&e.config.bundles),
            rules_json: json(&e.config.rule_document),
        })
        .collect()
}

/// Takes the image of a front and its shards as an owned [`Image`]. Call it at a quiet point
/// (nothing in flight). A snapshot of a large state is better written with
/// [`StateImage`] and [`serialize_state_into`]: the same bytes, without the copy.
pub fn take<'a>(front: &Front, shards: impl Iterator<Item = &'a ShardState>) -> Image {
    let shards: Vec<&ShardState> = shards.collect();
    let tenants = tenant_images(front);
    let idempotency = front
        .idempotency_sorted()
        .into_iter()
        .map(|(k, e)| IdemImage {
            tenant: k.tenant,
            key: String::from(&*k.key),
            fingerprint: e.fingerprint,
            at: e.at,
            response: e.response.get().map(|r| {
                response_image(&r, |v| {
                    shows(front, k.tenant, &Shown::of(v), &parts_of(&shards, v.id))
                })
            }),
        })
        .collect();
    let mut skus = Vec::new();
    // Every part of every shard, in shard order; sorted by id below (a stable sort: a
    // reservation's parts stay in shard order, and the first one gives its header).
    let mut parts: Vec<(u64, &Part)> = Vec::new();
    for s in shards {
        for (k, st) in &s.skus {
            skus.push(SkuImage {
                tenant: k.tenant,
                sku: String::from(&*k.sku),
                levels: st.levels.iter().map(level_image).collect(),
                held: st.held().to_vec(),
                cost: st.cost.as_deref().map(|c| c.to_string()),
            });
        }
        parts.extend(s.parts.iter().map(|(id, p)| (id.0, p)));
    }
    skus.sort_by(|a, b| (a.tenant, &a.sku).cmp(&(b.tenant, &b.sku)));
    parts.sort_by_key(|(id, _)| *id);
    let mut reservations: Vec<ReservationImage> = Vec::new();
    for (id, p) in parts {
        let items = p.items.iter().map(|i| item_image(i, &p.lines));
        match reservations.last_mut() {
            Some(r) if r.id == id => r.items.extend(items),
            _ => reservations.push(ReservationImage {
                id,
                tenant: p.tenant,
                channel: p.channel,
                lifecycle: lifecycle_code(p.lifecycle),
                created_at: p.created_at,
                expires_at: p.expires_at,
                ended_at: p.ended_at(),
                order_ref: p.order_ref().map(str::to_owned),
                lines: p
                    .lines
                    .iter()
                    .map(|l| LineImage {
                        sku: l.sku.as_str().to_owned(),
                        requested: l.requested(),
                        is_bundle: l.is_bundle(),
                    })
                    .collect(),
                granted: p.granted().units(&p.lines).to_vec(),
                items: items.collect(),
            }),
        }
    }
    for r in &mut reservations {
        r.items.sort_by_key(|i| i.item);
    }
    Image {
        version: IMAGE_VERSION,
        seq: front.seq,
        now: front.now,
        tenants,
        idempotency,
        skus,
        reservations,
    }
}

fn level_image(l: &crate::ats::Level) -> LevelImage {
    LevelImage {
        loc: l.loc,
        on_hand: l.on_hand,
        reserved: l.reserved,
        committed: l.committed,
        damaged: l.damaged,
        quality_control: l.quality_control,
        safety_stock: l.safety_stock,
        incoming: l.incoming,
        incoming_at: l.incoming_at,
    }
}

fn item_image(i: &PartItem, lines: &[LineHeader]) -> ItemImage {
    ItemImage {
        item: i.item,
        line: i.line,
        slot: i.slot,
        sku: i.sku(lines).as_str().to_owned(),
        per_unit: i.per_unit(),
        quantity: i.quantity,
        allocs: i
            .allocs
            .iter()
            .map(|a| AllocImage {
                loc: a.loc,
                open: a.open,
                shipped: a.shipped(),
                returned: a.returned(),
            })
            .collect(),
        backordered: i.backordered(),
    }
}

/// A byte buffer aligned as an archived image needs it.
pub type AlignedBytes = rkyv::util::AlignedVec<16>;

/// Serializes an image (rkyv).
pub fn to_bytes(image: &Image) -> AlignedBytes {
    serialize_into(image, AlignedBytes::new()).expect("images serialize")
}

/// Serializes an image into `writer`, byte for byte as [`to_bytes`] does: a file can take the
/// image as it is serialized, without a buffer of the whole image in memory.
pub fn serialize_into<W>(image: &Image, writer: W) -> Result<W, rkyv::rancor::Error>
where
    W: rkyv::ser::Writer<rkyv::rancor::Error>,
{
    rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(image, writer)
}

/// Validates (bytecheck) and reads an image. Never panics on arbitrary bytes.
pub fn from_bytes(bytes: &[u8]) -> Result<Image, ImageError> {
    // rkyv needs the archive aligned: bytes that are not (a slice of a plain `Vec`) are copied
    // into an aligned buffer first.
    let copy;
    let aligned = if bytes.as_ptr().align_offset(16) == 0 {
        bytes
    } else {
        let mut v = AlignedBytes::with_capacity(bytes.len());
        v.extend_from_slice(bytes);
        copy = v;
        &copy[..]
    };
    // The version is the first field of every layout: an archive that validates as this
    // layout but says another version is read again in the layout of that version.
    let current = rkyv::from_bytes::<Image, rkyv::rancor::Error>(aligned);
    if let Ok(image) = &current {
        if image.version == IMAGE_VERSION {
            return current.map_err(|e| ImageError::Invalid(e.to_string()));
        }
        if image.version == BLAKE3_FINGERPRINTS_VERSION {
            let mut image = current.expect("checked");
            image.version = IMAGE_VERSION;
            return Ok(image);
        }
    }
    let v3 = rkyv::from_bytes::<v3::Image, rkyv::rancor::Error>(aligned);
    match &v3 {
        Ok(old) if old.version == 3 => return Ok(v3.expect("checked").upgrade()),
        Ok(old) if old.version == 2 => {
            return Ok(forget_fingerprints(v3.expect("checked").upgrade()))
        }
        _ => {}
    }
    match rkyv::from_bytes::<v1::Image, rkyv::rancor::Error>(aligned) {
        Ok(old) if old.version == 1 => Ok(forget_fingerprints(old.upgrade())),
        Ok(old) => Err(ImageError::Version(old.version)),
        Err(e1) => Err(match (current, v3) {
            (Ok(image), _) => ImageError::Version(image.version),
            (_, Ok(old)) => ImageError::Version(old.version),
            (Err(e), Err(e3)) => {
                ImageError::Invalid(format!("{e} (as version 3: {e3}; as version 1: {e1})"))
            }
        }),
    }
}

/// An image of version 1 or 2 in the current version. Their fingerprints hashed the commands'
/// JSON, which this build no longer writes: each becomes [`UNKNOWN_FINGERPRINT`], and a repeat
/// of such a key within its retention gets the first outcome without comparing bodies (a
/// repeat with another body is answered as a replay, not refused as `idempotency_key_reused`).
/// Keys first used after the upgrade are compared as always.
fn forget_fingerprints(mut image: Image) -> Image {
    image.version = IMAGE_VERSION;
    for e in &mut image.idempotency {
        e.fingerprint = UNKNOWN_FINGERPRINT;
    }
    image
}

/// Versions 2 and 3 of the image: a reservation's stored answer inline in its key's entry,
/// none by reference. Read, never written (except by [`v3::to_bytes`], for tests).
pub mod v3 {
    use super::{ReservationImage, ReservationReplyImage, SkuImage, TenantImage};
    use rkyv::{Archive, Deserialize, Serialize};

    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct Image {
        pub version: u32,
        pub seq: u64,
        pub now: u64,
        pub tenants: Vec<TenantImage>,
        pub idempotency: Vec<IdemImage>,
        pub skus: Vec<SkuImage>,
        pub reservations: Vec<ReservationImage>,
    }

    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct IdemImage {
        pub tenant: u32,
        pub key: String,
        pub fingerprint: [u8; 32],
        pub at: u64,
        pub response: Option<ResponseImage>,
    }

    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub enum ResponseImage {
        Reservation(ReservationReplyImage),
        Json(String),
    }

    impl Image {
        /// The same state in the current layout.
        pub fn upgrade(self) -> super::Image {
            super::Image {
                version: super::IMAGE_VERSION,
                seq: self.seq,
                now: self.now,
                tenants: self.tenants,
                idempotency: self
                    .idempotency
                    .into_iter()
                    .map(|e| super::IdemImage {
                        tenant: e.tenant,
                        key: e.key,
                        fingerprint: e.fingerprint,
                        at: e.at,
                        response: e.response.map(|r| match r {
                            ResponseImage::Reservation(r) => super::ResponseImage::Reservation(r),
                            ResponseImage::Json(text) => super::ResponseImage::Json(text),
                        }),
                    })
                    .collect(),
                skus: self.skus,
                reservations: self.reservations,
            }
        }
    }

    /// `image` as version 3 wrote it (`version`: 3, or 2 for its fingerprints of JSON).
    pub fn to_bytes(image: &super::Image, version: u32) -> super::AlignedBytes {
        let image = super::without_references(image).expect("an image that loads");
        let old = Image {
            version,
            seq: image.seq,
            now: image.now,
            tenants: image.tenants,
            idempotency: image
                .idempotency
                .into_iter()
                .map(|e| IdemImage {
                    tenant: e.tenant,
                    key: e.key,
                    fingerprint: e.fingerprint,
                    at: e.at,
                    response: e.response.map(|r| match r {
                        super::ResponseImage::Reservation(r) => ResponseImage::Reservation(r),
                        super::ResponseImage::Json(text) => ResponseImage::Json(text),
                        super::ResponseImage::Reference(_) => unreachable!("no references"),
                    }),
                })
                .collect(),
            skus: image.skus,
            reservations: image.reservations,
        };
        rkyv::to_bytes::<rkyv::rancor::Error>(&old).expect("images serialize")
    }
}

/// Version 1 of the image: idempotent responses as JSON only. Read, never written (except by
/// [`v1::to_bytes`], for tests of the upgrade).
pub mod v1 {
    use super::{ReservationImage, ResponseImage, SkuImage, TenantImage};
    use rkyv::{Archive, Deserialize, Serialize};

    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct Image {
        pub version: u32,
        pub seq: u64,
        pub now: u64,
        pub tenants: Vec<TenantImage>,
        pub idempotency: Vec<IdemImage>,
        pub skus: Vec<SkuImage>,
        pub reservations: Vec<ReservationImage>,
    }

    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct IdemImage {
        pub tenant: u32,
        pub key: String,
        pub fingerprint: [u8; 32],
        pub at: u64,
        pub response_json: Option<String>,
    }

    impl Image {
        /// The same state in the current layout (responses stay JSON until the next image).
        pub fn upgrade(self) -> super::Image {
            super::Image {
                version: super::IMAGE_VERSION,
                seq: self.seq,
                now: self.now,
                tenants: self.tenants,
                idempotency: self
                    .idempotency
                    .into_iter()
                    .map(|e| super::IdemImage {
                        tenant: e.tenant,
                        key: e.key,
                        fingerprint: e.fingerprint,
                        at: e.at,
                        response: e.response_json.map(ResponseImage::Json),
                    })
                    .collect(),
                skus: self.skus,
                reservations: self.reservations,
            }
        }
    }

    /// `image` as version 1 wrote it: every response as JSON.
    pub fn to_bytes(image: &super::Image) -> super::AlignedBytes {
        let image = &super::without_references(image).expect("an image that loads");
        let old = Image {
            version: 1,
            seq: image.seq,
            now: image.now,
            tenants: image.tenants.clone(),
            idempotency: image
                .idempotency
                .iter()
                .map(|e| IdemImage {
                    tenant: e.tenant,
                    key: e.key.clone(),
                    fingerprint: e.fingerprint,
                    at: e.at,
                    response_json: e.response.as_ref().map(|r| match r {
                        ResponseImage::Json(text) => text.clone(),
                        ResponseImage::Reservation(_) => super::json(
                            &super::response_of(r).expect("a response taken from a machine"),
                        ),
                        ResponseImage::Reference(_) => unreachable!("no references"),
                    }),
                })
                .collect(),
            skus: image.skus.clone(),
            reservations: image.reservations.clone(),
        };
        rkyv::to_bytes::<rkyv::rancor::Error>(&old).expect("images serialize")
    }
}

/// Builds a machine with `shards` shards from an image.
pub fn load(
    image: &Image,
    limits: crate::limits::Limits,
    shards: usize,
) -> Result<Machine, ImageError> {
    let mut m = Machine::new(limits, shards);
    m.front.seq = image.seq;
    m.front.now = image.now;
    for (i, t) in image.tenants.iter().enumerate() {
        let id = TenantId::new(&t.id)
            .map_err(|e| ImageError::Inconsistent(format!("tenant id: {e}")))?;
        let mut cfg = TenantConfig {
            tenant_idx: i as u32,
            locations: from_json::<Vec<Location>>("locations", &t.locations_json)?,
            channels: from_json::<Vec<Channel>>("channels", &t.channels_json)?,
            bundles: from_json::<std::collections::BTreeMap<Sku, Vec<Component>>>(
                "bundles",
                &t.bundles_json,
            )?,
            rule_document: from_json("rules", &t.rules_json)?,
            ..TenantConfig::default()
        };
        cfg.rules = crate::rules::compile(&cfg.rule_document, &cfg)
            .map_err(|e| ImageError::Inconsistent(e.to_string()))?;
        let cfg = Arc::new(cfg);
        m.front.tenant_index.insert(id.clone(), i as u32);
        m.front.tenants.push(TenantEntry {
            id,
            config: cfg.clone(),
        });
        for s in &mut m.shards {
            s.set_config(cfg.clone());
        }
    }
    let tenants = m.front.tenants.len() as u32;
    for s in &image.skus {
        let level_terms = s.levels.iter().flat_map(|l| {
            [
                l.on_hand,
                l.reserved,
                l.committed,
                l.damaged,
                l.quality_control,
                l.safety_stock,
                l.incoming,
            ]
        });
        if let Some(q) = level_terms
            .chain(s.held.iter().copied())
            .find(|q| !(0..=STOCK_MAX).contains(q))
        {
            return Err(ImageError::Inconsistent(format!(
                "SKU {}: quantity {q} is outside 0..={STOCK_MAX}",
                s.sku
            )));
        }
        if s.tenant >= tenants {
            return Err(ImageError::Inconsistent(format!(
                "SKU {} names tenant {} of {tenants}",
                s.sku, s.tenant
            )));
        }
        let sku = Sku::new(&s.sku).map_err(|e| ImageError::Inconsistent(format!("SKU id: {e}")))?;
        let shard = &mut m.shards[shard_of(s.tenant, &s.sku, shards)];
        let cfg = shard.tenants[s.tenant as usize].clone();
        if let Some(l) = s
            .levels
            .iter()
            .find(|l| usize::from(l.loc) >= cfg.locations.len())
        {
            return Err(ImageError::Inconsistent(format!(
                "SKU {}: a level names location {} of {}",
                s.sku,
                l.loc,
                cfg.locations.len()
            )));
        }
        let mut st = SkuState {
            levels: s.levels.iter().map(level_of).collect(),
            ..SkuState::default()
        };
        st.resize(cfg.channels.len());
        for (c, h) in s.held.iter().enumerate().take(cfg.channels.len()) {
            *st.held_mut(c as u16) = *h;
        }
        st.cost = s
            .cost
            .as_deref()
            .map(|c| {
                c.parse()
                    .map(Box::new)
                    .map_err(|e| ImageError::Inconsistent(format!("cost of {}: {e}", s.sku)))
            })
            .transpose()?;
        st.refresh(&cfg, &sku);
        shard.skus.insert(
            SkuKey {
                tenant: s.tenant,
                sku: s.sku.as_str().into(),
            },
            st,
        );
    }
    for r in &image.reservations {
        load_reservation(&mut m, r, shards)?;
    }
    // After the reservations: an answer stored by reference is built from its reservation,
    // in the reservations' order (in which they were loaded, and sit in memory), not in the
    // keys' order, where each would be a few cache misses away.
    let mut references: Vec<(u64, usize, u32, ReferenceImage)> = image
        .idempotency
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match &e.response {
            Some(ResponseImage::Reference(r)) => Some((r.id, i, e.tenant, *r)),
            _ => None,
        })
        .collect();
    references.sort_unstable_by_key(|&(id, i, ..)| (id, i));
    let mut referred: Vec<Option<Response>> = Vec::new();
    if !references.is_empty() {
        referred.resize_with(image.idempotency.len(), || None);
        let shard_states: Vec<&ShardState> = m.shards.iter().collect();
        for (_, i, tenant, r) in references {
            referred[i] = Some(referenced(&m.front, &shard_states, tenant, &r)?);
        }
    }
    let mut idempotency = Vec::with_capacity(image.idempotency.len());
    for (i, e) in image.idempotency.iter().enumerate() {
        let response = match e.response.as_ref() {
            None => IdemAnswer::default(),
            Some(ResponseImage::Reference(_)) => {
                IdemAnswer::ready(referred[i].take().expect("references are built above"))
            }
            Some(r) => IdemAnswer::ready(response_of(r)?),
        };
        idempotency.push((
            IdemKey::new(e.tenant, &e.key),
            IdemEntry {
                fingerprint: e.fingerprint,
                at: e.at,
                seq: 0,
                response,
            },
        ));
    }
    m.front.restore_idempotency(idempotency);
    Ok(m)
}

/// The answer a [`ResponseImage::Reference`] of a key of `tenant` stands for, from the
/// reservations loaded into `shards`.
fn referenced(
    front: &Front,
    shards: &[&ShardState],
    tenant: u32,
    r: &ReferenceImage,
) -> Result<Response, ImageError> {
    let id = ReservationId(r.id);
    let parts = parts_of(shards, id);
    let head = parts.first().ok_or_else(|| {
        ImageError::Inconsistent(format!(
            "idempotent response: names reservation {id}, which the image does not hold"
        ))
    })?;
    if head.tenant != tenant {
        return Err(ImageError::Inconsistent(format!(
            "idempotent response: a key of tenant {tenant} names reservation {id} of tenant {}",
            head.tenant
        )));
    }
    let cfg = front.config(tenant).expect("a loaded reservation's tenant");
    Ok(Response {
        seq: r.seq,
        replayed: r.replayed,
        outcome: Outcome::Ok(Reply::Reservation(crate::exec::reservation_view(
            cfg, id, &parts, front.now,
        ))),
    })
}

/// `image` with every reservation's answer field by field, none by reference, as versions
/// before 4 stored them (for [`v3::to_bytes`] and [`v1::to_bytes`]).
pub fn without_references(image: &Image) -> Result<Image, ImageError> {
    let mut old = image.clone();
    if old
        .idempotency
        .iter()
        .all(|e| !matches!(e.response, Some(ResponseImage::Reference(_))))
    {
        return Ok(old);
    }
    let m = load(image, crate::limits::Limits::default(), 1)?;
    for (e, (_, loaded)) in old.idempotency.iter_mut().zip(m.front.idempotency_sorted()) {
        if let (Some(ResponseImage::Reference(_)), Some(r)) = (&e.response, loaded.response.get()) {
            e.response = Some(response_image(&r, |_| false));
        }
    }
    Ok(old)
}

fn level_of(l: &LevelImage) -> crate::ats::Level {
    crate::ats::Level {
        loc: l.loc,
        on_hand: l.on_hand,
        reserved: l.reserved,
        committed: l.committed,
        damaged: l.damaged,
        quality_control: l.quality_control,
        safety_stock: l.safety_stock,
        incoming: l.incoming,
        incoming_at: l.incoming_at,
    }
}

fn load_reservation(
    m: &mut Machine,
    r: &ReservationImage,
    shards: usize,
) -> Result<(), ImageError> {
    let bad = |what: String| ImageError::Inconsistent(format!("reservation {}: {what}", r.id));
    let cfg = m
        .front
        .config(r.tenant)
        .ok_or_else(|| bad(format!("names tenant {}", r.tenant)))?;
    if r.channel as usize >= cfg.channels.len() {
        return Err(bad(format!("names channel {}", r.channel)));
    }
    let sku = |s: &str| Sku::new(s).map_err(|e| bad(format!("SKU id: {e}")));
    if r.granted.len() != r.lines.len() {
        return Err(bad("granted does not match the lines".into()));
    }
    let per_line = r
        .lines
        .iter()
        .map(|l| l.requested)
        .chain(r.granted.iter().copied());
    let mut per_line = per_line.chain(r.items.iter().map(|i| i.per_unit));
    if let Some(q) = per_line.find(|q| !(0..=QUANTITY_MAX).contains(q)) {
        return Err(bad(format!("quantity {q} is outside 0..={QUANTITY_MAX}")));
    }
    // Made after the check: a header holds units up to 2^62.
    let lines: LineHeaders = r
        .lines
        .iter()
        .map(|l| Ok(LineHeader::new(sku(&l.sku)?, l.requested, l.is_bundle)))
        .collect::<Result<Vec<_>, ImageError>>()?
        .into();
    let mut item_terms = r.items.iter().flat_map(|i| {
        [i.quantity, i.backordered].into_iter().chain(
            i.allocs
                .iter()
                .flat_map(|a| [a.open, a.shipped, a.returned]),
        )
    });
    if let Some(q) = item_terms.find(|q| !(0..=STOCK_MAX).contains(q)) {
        return Err(bad(format!("quantity {q} is outside 0..={STOCK_MAX}")));
    }
    let granted = Granted::new(&lines, &r.granted);
    let lifecycle = lifecycle_of(r.lifecycle)?;
    let mut by_shard: std::collections::BTreeMap<usize, Vec<PartItem>> =
        std::collections::BTreeMap::new();
    for i in &r.items {
        if usize::from(i.line) >= lines.len() {
            return Err(bad(format!(
                "an item names line {} of {}",
                i.line,
                lines.len()
            )));
        }
        if let Some(a) = i
            .allocs
            .iter()
            .find(|a| usize::from(a.loc) >= cfg.locations.len())
        {
            return Err(bad(format!(
                "an allocation names location {} of {}",
                a.loc,
                cfg.locations.len()
            )));
        }
        // A plain line's item is the line's SKU, one unit per unit: the part stores neither.
        let line = &lines[usize::from(i.line)];
        let component = if line.is_bundle() {
            Some(crate::shard::Component {
                sku: sku(&i.sku)?,
                per_unit: i.per_unit,
            })
        } else if line.sku.as_str() != i.sku.as_str() || i.per_unit != 1 {
            return Err(bad(format!(
                "an item of plain line {} names {} x {:?} (the line is {:?})",
                i.line, i.per_unit, i.sku, line.sku
            )));
        } else {
            None
        };
        let mut item = PartItem::new(
            i.item,
            i.line,
            i.slot,
            component,
            i.quantity,
            i.allocs
                .iter()
                .map(|a| Alloc::new(a.loc, a.open, a.shipped, a.returned))
                .collect(),
        );
        item.set_backordered(i.backordered);
        by_shard
            .entry(shard_of(r.tenant, &i.sku, shards))
            .or_default()
            .push(item);
    }
    if by_shard.is_empty() {
        return Err(bad("no items".into()));
    }
    let id = ReservationId(r.id);
    let mut mask = 0u64;
    for (s, items) in by_shard {
        mask |= 1 << s;
        let mut part = Part::new(
            r.tenant,
            r.channel,
            lifecycle,
            r.created_at,
            r.expires_at,
            r.order_ref.clone(),
            lines.clone(),
            granted.clone(),
            items.into_iter().collect(),
        );
        part.set_ended_at(r.ended_at);
        let shard = &mut m.shards[s];
        match lifecycle {
            Lifecycle::Held => shard.expiry.insert(r.expires_at, id),
            l if l.ended() => shard
                .purge
                .insert(r.ended_at.saturating_add(shard.ended_retention_ms), id),
            _ => {}
        }
        shard.parts.insert(id, part);
    }
    m.front.routes.insert(id, mask);
    Ok(())
}

impl Machine {
    /// The image of this machine's state.
    pub fn image(&self) -> Image {
        take(&self.front, self.shards.iter())
    }

    /// The same image as references into this machine's tables, ready to be serialized with
    /// [`serialize_state_into`].
    pub fn state_image(&self) -> StateImage<'_> {
        StateImage::new(&self.front, self.shards.iter())
    }
}
