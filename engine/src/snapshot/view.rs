//! A state's image serialized straight from its tables.
//!
//! [`take`](super::take) builds an owned [`Image`](super::Image): every SKU, reservation and
//! stored answer copied into strings and vectors of its own, about a dozen allocations per
//! held reservation with an idempotency key, and as many frees after. For a million such holds
//! that was 1.2 to 1.4 s of the snapshot thread and a second copy of the state in memory, on a
//! server that takes snapshots while it works. [`StateImage`] holds only references into the
//! tables, sorted as the image is, and [`serialize_state_into`] writes the archived image from
//! them: the types below archive as the image's own archived types (`#[rkyv(as = ...)]`), so the
//! bytes are the same as those of [`to_bytes`](super::to_bytes) of [`take`](super::take)
//! (`tests/tests/snapshot.rs` and the model test compare them), and loading knows no difference.
//! Reading the tables in the image's order still costs most of what building did (a stored
//! answer is a few cache misses away from its key); what goes is the allocation and the copy.

use super::{
    json, level_image, lifecycle_code, shows, state_code, AllocImage, ArchivedAllocationViewImage,
    ArchivedIdemImage, ArchivedImage, ArchivedItemImage, ArchivedItemViewImage, ArchivedLineImage,
    ArchivedLineViewImage, ArchivedReservationImage, ArchivedReservationReplyImage,
    ArchivedResponseImage, ArchivedSkuImage, LevelImage, ReferenceImage, TenantImage,
    IMAGE_VERSION,
};
use crate::exec::Shown;
use crate::front::{Front, IdemEntry, IdemKey};
use crate::job::LineHeader;
use crate::outcome::{
    AllocationView, ItemView, LineView, Outcome, Reply, ReservationView, Response,
};
use crate::packed::{packed_id, packed_view, unpacked, StoredAnswer};
use crate::shard::{Alloc, Part, PartItem, ShardState, SkuKey, SkuState};
use rkyv::rancor::{Fallible, Source};
use rkyv::ser::{Allocator, Writer};
use rkyv::string::{ArchivedString, StringResolver};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::with::{ArchiveWith, Inline, Map, SerializeWith};
use rkyv::{Archive, Place, Serialize, SerializeUnsized};
use smallvec::SmallVec;
use std::borrow::Cow;

/// A state ready to be serialized as its image: references into a front and its shards,
/// sorted as [`take`](super::take) sorts them. The few things an image keeps as text of their
/// own (tenant configurations, answers that are not a reservation's, unit costs) are made
/// here, once.
pub struct StateImage<'a> {
    seq: u64,
    now: u64,
    tenants: Vec<TenantImage>,
    idempotency: Vec<IdemItem<'a>>,
    skus: Vec<SkuItem<'a>>,
    /// Every part of every shard by reservation id (a reservation's parts in shard order).
    parts: Vec<(u64, &'a Part)>,
    /// Where each reservation's parts start in `parts`, and `parts.len()` last.
    starts: Vec<usize>,
}

impl std::fmt::Debug for StateImage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateImage")
            .field("seq", &self.seq)
            .field("tenants", &self.tenants.len())
            .field("idempotency_keys", &self.idempotency.len())
            .field("skus", &self.skus.len())
            .field("reservations", &self.reservations())
            .finish()
    }
}

struct IdemItem<'a> {
    key: &'a IdemKey,
    entry: &'a IdemEntry,
    stored: Stored<'a>,
}

/// A stored answer as the image keeps it.
enum Stored<'a> {
    /// The request is still executing (never at a quiet point).
    None,
    /// A reservation's answer in its stored form, packed ([`crate::packed`]), until the
    /// image is built: then a `Reference`, or unpacked into a `Reservation`.
    Packed(&'a [u8]),
    /// A reservation's answer, field by field (unpacked for the image only when its
    /// reservation no longer shows it).
    Reservation(Cow<'a, Response>),
    /// A reservation's answer by reference to the reservation (see
    /// [`ResponseImage::Reference`](super::ResponseImage::Reference)).
    Reference(ReferenceImage),
    /// Any other answer, as its JSON.
    Json(String),
}

impl Stored<'_> {
    /// The answer and its reservation, when this is a reservation's answer.
    fn reservation(&self) -> Option<(&Response, &ReservationView)> {
        match self {
            Stored::Reservation(r) => r.outcome.reservation().map(|v| (&**r, v)),
            _ => None,
        }
    }
}

struct SkuItem<'a> {
    key: &'a SkuKey,
    state: &'a SkuState,
    cost: Option<String>,
}

impl<'a> StateImage<'a> {
    /// The image of `front` and `shards` (a quiet state, or a copy of one).
    pub fn new(front: &'a Front, shards: impl Iterator<Item = &'a ShardState>) -> Self {
        let tenants = super::tenant_images(front);
        // Sized at once: grown by doubling, these lists (tens of MB for a million holds) were
        // copied at every step, into fresh pages each time.
        let shards: SmallVec<[&ShardState; 8]> = shards.collect();
        let mut skus = Vec::with_capacity(shards.iter().map(|s| s.skus.len()).sum());
        let mut parts: Vec<(u64, &Part)> =
            Vec::with_capacity(shards.iter().map(|s| s.parts.len()).sum());
        for s in shards {
            skus.extend(s.skus.iter().map(|(key, state)| SkuItem {
                key,
                state,
                cost: state.cost.as_deref().map(|c| c.to_string()),
            }));
            parts.extend(s.parts.iter().map(|(id, p)| (id.0, p)));
        }
        skus.sort_unstable_by(|a, b| {
            (a.key.tenant, a.key.sku.as_str()).cmp(&(b.key.tenant, b.key.sku.as_str()))
        });
        // Stable: a reservation's parts stay in shard order, and the first gives its header.
        parts.sort_by_key(|(id, _)| *id);
        let mut starts = Vec::with_capacity(parts.len() + 1);
        for (i, (id, _)) in parts.iter().enumerate() {
            if i == 0 || parts[i - 1].0 != *id {
                starts.push(i);
            }
        }
        starts.push(parts.len());
        let mut idempotency: Vec<IdemItem<'a>> = front
            .idempotency_sorted()
            .into_iter()
            .map(|(key, entry)| IdemItem {
                key,
                entry,
                stored: match entry.response.stored() {
                    None => Stored::None,
                    Some(StoredAnswer::Packed(b)) => Stored::Packed(b),
                    Some(StoredAnswer::Full(r)) => match &r.outcome {
                        Outcome::Ok(Reply::Reservation(_)) => Stored::Reservation(Cow::Borrowed(r)),
                        _ => Stored::Json(json(r)),
                    },
                },
            })
            .collect();
        // Which reservations' answers their reservations still show: visited in id order,
        // in step with the parts (sorted by id), not in the keys' order, where every answer
        // would be a lookup of its parts a few cache misses away. Answers were made in about
        // id order too, so they are read in about the order they are in memory; what this
        // needs of a key is taken in the keys' order, and the keys are changed in it.
        let mut answers: Vec<(u64, usize, u32)> = idempotency
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let id = match &item.stored {
                    Stored::Packed(b) => packed_id(b),
                    stored => stored.reservation()?.1.id.0,
                };
                Some((id, i, item.key.tenant))
            })
            .collect();
        answers.sort_unstable_by_key(|&(id, i, ..)| (id, i));
        let mut group = 0;
        let mut group_parts: SmallVec<[&Part; 2]> = SmallVec::new();
        for (id, i, tenant) in answers {
            while group + 1 < starts.len() && parts[starts[group]].0 < id {
                group += 1;
            }
            if group + 1 == starts.len() || parts[starts[group]].0 != id {
                // No reservation: the answer itself goes into the image.
                if let Stored::Packed(b) = idempotency[i].stored {
                    idempotency[i].stored = Stored::Reservation(Cow::Owned(unpacked(b)));
                }
                continue;
            }
            group_parts.clear();
            group_parts.extend(
                parts[starts[group]..starts[group + 1]]
                    .iter()
                    .map(|(_, p)| *p),
            );
            // A packed answer is checked as it is packed, in the order the answers were made
            // (about the order of their bytes in memory), and unpacked only if the image
            // needs the answer itself.
            let reference = match &idempotency[i].stored {
                Stored::Packed(b) => {
                    let (seq, replayed, v) = packed_view(b);
                    shows(front, tenant, &v, &group_parts).then_some(ReferenceImage {
                        seq,
                        replayed,
                        id,
                    })
                }
                stored => stored.reservation().and_then(|(r, v)| {
                    shows(front, tenant, &Shown::of(v), &group_parts)
                        .then(|| ReferenceImage::of(r, v))
                }),
            };
            idempotency[i].stored = match (reference, &idempotency[i].stored) {
                (Some(reference), _) => Stored::Reference(reference),
                (None, Stored::Packed(b)) => Stored::Reservation(Cow::Owned(unpacked(b))),
                _ => continue,
            };
        }
        StateImage {
            seq: front.seq,
            now: front.now,
            tenants,
            idempotency,
            skus,
            parts,
            starts,
        }
    }

    /// The last seq the image holds.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    fn reservations(&self) -> usize {
        self.starts.len() - 1
    }

    fn reservation(&self, i: usize) -> ReservationRef<'_> {
        let group = &self.parts[self.starts[i]..self.starts[i + 1]];
        let (id, p) = group[0];
        let mut items: SmallVec<[&PartItem; 4]> =
            group.iter().flat_map(|(_, p)| p.items.iter()).collect();
        items.sort_by_key(|i| i.item);
        ReservationRef {
            id,
            tenant: p.tenant,
            channel: p.channel,
            lifecycle: lifecycle_code(p.lifecycle),
            created_at: p.created_at,
            expires_at: p.expires_at,
            ended_at: p.ended_at(),
            order_ref: p.order_ref(),
            lines: ListOf::new(&p.lines[..], |l, i| LineRef::of(&l[i])),
            granted: ListOf {
                ctx: p,
                len: p.lines.len(),
                item: |p, i| p.granted().get(&p.lines, i),
            },
            items: ListOf {
                len: items.len(),
                ctx: (items, &p.lines[..]),
                item: |(items, lines), i| ItemRef::of(items[i], lines),
            },
        }
    }
}

/// Serializes `state` as its image into `writer`: byte for byte what
/// [`serialize_into`](super::serialize_into) writes for [`take`](super::take) of the same
/// state.
pub fn serialize_state_into<W>(state: &StateImage<'_>, writer: W) -> Result<W, rkyv::rancor::Error>
where
    W: Writer<rkyv::rancor::Error>,
{
    let image = ImageRef {
        version: IMAGE_VERSION,
        seq: state.seq,
        now: state.now,
        tenants: &state.tenants,
        idempotency: Listed(state.idempotency.iter().map(IdemRef::of).collect()),
        skus: Listed(state.skus.iter().map(SkuRef::of).collect()),
        // Made from the sorted parts on each of rkyv's two passes rather than collected: the
        // parts are read in about the order they sit in memory, and a collected list was 184
        // bytes a reservation of fresh memory (a million holds: 184 MB and 45,000 page faults).
        reservations: ListOf {
            ctx: state,
            len: state.reservations(),
            item: |s, i| s.reservation(i),
        },
    };
    rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&image, writer)
}

/// Archives a `&str` as an owned string would be.
struct Str;

impl<'s> ArchiveWith<&'s str> for Str {
    type Archived = ArchivedString;
    type Resolver = StringResolver;
    fn resolve_with(field: &&'s str, resolver: StringResolver, out: Place<ArchivedString>) {
        ArchivedString::resolve_from_str(field, resolver, out);
    }
}

impl<'s, S> SerializeWith<&'s str, S> for Str
where
    S: Fallible + ?Sized,
    S::Error: Source,
    str: SerializeUnsized<S>,
{
    fn serialize_with(field: &&'s str, serializer: &mut S) -> Result<StringResolver, S::Error> {
        ArchivedString::serialize_from_str(field, serializer)
    }
}

/// A list archived as a vector, its items made one at a time from `ctx` (twice each: once to
/// write what they point to, once to write them), never collected.
struct ListOf<C, R> {
    ctx: C,
    len: usize,
    item: fn(&C, usize) -> R,
}

impl<'a, T, R> ListOf<&'a [T], R> {
    fn new(items: &'a [T], item: fn(&&'a [T], usize) -> R) -> Self {
        ListOf {
            ctx: items,
            len: items.len(),
            item,
        }
    }
}

impl<C, R: Archive> Archive for ListOf<C, R> {
    type Archived = ArchivedVec<R::Archived>;
    type Resolver = VecResolver;
    fn resolve(&self, resolver: VecResolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(self.len, resolver, out);
    }
}

impl<C, R, S> Serialize<S> for ListOf<C, R>
where
    R: Serialize<S>,
    S: Fallible + Allocator + Writer + ?Sized,
{
    fn serialize(&self, serializer: &mut S) -> Result<VecResolver, S::Error> {
        let (ctx, item) = (&self.ctx, self.item);
        ArchivedVec::serialize_from_iter::<R, _, _>(
            (0..self.len).map(move |i| item(ctx, i)),
            serializer,
        )
    }
}

/// A long list archived as a vector from its items made once, in order. rkyv writes a vector
/// in two passes over its items (what each points to, then the items themselves); made from
/// the tables twice, every item of a million was looked up twice, each time a few cache misses
/// away (the stored answer behind its key, say), and that cost as much as building the owned
/// image. Collected, the second pass reads them in order.
struct Listed<R>(Vec<R>);

impl<R: Archive> Archive for Listed<R> {
    type Archived = ArchivedVec<R::Archived>;
    type Resolver = VecResolver;
    fn resolve(&self, resolver: VecResolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(self.0.len(), resolver, out);
    }
}

impl<R, S> Serialize<S> for Listed<R>
where
    R: Serialize<S>,
    S: Fallible + Allocator + Writer + ?Sized,
{
    fn serialize(&self, serializer: &mut S) -> Result<VecResolver, S::Error> {
        ArchivedVec::serialize_from_slice(&self.0, serializer)
    }
}

#[derive(Archive, Serialize)]
#[rkyv(
    as = ArchivedImage,
    archive_bounds(
        Inline: ArchiveWith<&'a Vec<TenantImage>, Archived = ArchivedVec<super::ArchivedTenantImage>>,
        Listed<IdemRef<'a>>: Archive<Archived = ArchivedVec<ArchivedIdemImage>>,
        Listed<SkuRef<'a>>: Archive<Archived = ArchivedVec<ArchivedSkuImage>>,
        ListOf<&'a StateImage<'a>, ReservationRef<'a>>: Archive<Archived = ArchivedVec<ArchivedReservationImage>>
    )
)]
struct ImageRef<'a> {
    version: u32,
    seq: u64,
    now: u64,
    #[rkyv(with = Inline)]
    tenants: &'a Vec<TenantImage>,
    idempotency: Listed<IdemRef<'a>>,
    skus: Listed<SkuRef<'a>>,
    reservations: ListOf<&'a StateImage<'a>, ReservationRef<'a>>,
}

#[derive(Archive, Serialize)]
#[rkyv(
    as = ArchivedIdemImage,
    archive_bounds(
        Str: ArchiveWith<&'a str, Archived = ArchivedString>,
        Option<ResponseRef<'a>>: Archive<Archived = rkyv::option::ArchivedOption<ArchivedResponseImage>>
    )
)]
struct IdemRef<'a> {
    tenant: u32,
    #[rkyv(with = Str)]
    key: &'a str,
    fingerprint: [u8; 32],
    at: u64,
    response: Option<ResponseRef<'a>>,
}

impl<'a> IdemRef<'a> {
    fn of(i: &'a IdemItem<'a>) -> Self {
        IdemRef {
            tenant: i.key.tenant,
            key: &i.key.key,
            fingerprint: i.entry.fingerprint,
            at: i.entry.at,
            response: match &i.stored {
                Stored::None => None,
                Stored::Packed(_) => {
                    unreachable!("`StateImage::new` unpacks or refers to every packed answer")
                }
                Stored::Reservation(_) => i
                    .stored
                    .reservation()
                    .map(|(r, v)| ResponseRef::Reservation(Box::new(ReplyRef::of(r, v)))),
                Stored::Json(json) => Some(ResponseRef::Json(json)),
                Stored::Reference(r) => Some(ResponseRef::Reference(*r)),
            },
        }
    }
}

#[derive(Archive, Serialize)]
#[rkyv(
    as = ArchivedResponseImage,
    archive_bounds(
        Str: ArchiveWith<&'a str, Archived = ArchivedString>,
        ReplyRef<'a>: Archive<Archived = ArchivedReservationReplyImage>
    )
)]
enum ResponseRef<'a> {
    /// Boxed here as in the image: most keys' answers are a `Reference`, and a list of a
    /// million keys was 176 bytes a key with this inline (96 boxed).
    Reservation(Box<ReplyRef<'a>>),
    Json(#[rkyv(with = Str)] &'a str),
    Reference(ReferenceImage),
}

#[derive(Archive, Serialize)]
#[rkyv(
    as = ArchivedReservationReplyImage,
    archive_bounds(
        Str: ArchiveWith<&'a str, Archived = ArchivedString>,
        Map<Str>: ArchiveWith<Option<&'a str>, Archived = rkyv::option::ArchivedOption<ArchivedString>>,
        ListOf<&'a [LineView], LineViewRef<'a>>: Archive<Archived = ArchivedVec<ArchivedLineViewImage>>
    )
)]
struct ReplyRef<'a> {
    seq: Option<u64>,
    replayed: bool,
    id: u64,
    #[rkyv(with = Str)]
    channel: &'a str,
    state: u8,
    created_at: u64,
    expires_at: u64,
    #[rkyv(with = Map<Str>)]
    order_ref: Option<&'a str>,
    lines: ListOf<&'a [LineView], LineViewRef<'a>>,
}

impl<'a> ReplyRef<'a> {
    /// `v` is the reservation `r` answers with.
    fn of(r: &'a Response, v: &'a ReservationView) -> Self {
        ReplyRef {
            seq: r.seq,
            replayed: r.replayed,
            id: v.id.0,
            channel: v.channel.as_str(),
            state: state_code(v.state),
            created_at: v.created_at,
            expires_at: v.expires_at,
            order_ref: v.order_ref.as_deref(),
            lines: ListOf::new(&v.lines[..], |l, i| LineViewRef::of(&l[i])),
        }
    }
}

#[derive(Archive, Serialize)]
#[rkyv(
    as = ArchivedLineViewImage,
    archive_bounds(
        Str: ArchiveWith<&'a str, Archived = ArchivedString>,
        ListOf<&'a [AllocationView], AllocationViewRef<'a>>: Archive<Archived = ArchivedVec<ArchivedAllocationViewImage>>,
        ListOf<&'a [ItemView], ItemViewRef<'a>>: Archive<Archived = ArchivedVec<ArchivedItemViewImage>>
    )
)]
struct LineViewRef<'a> {
    #[rkyv(with = Str)]
    sku: &'a str,
    quantity: i64,
    requested: i64,
    allocations: ListOf<&'a [AllocationView], AllocationViewRef<'a>>,
    components: ListOf<&'a [ItemView], ItemViewRef<'a>>,
    backordered: i64,
}

impl<'a> LineViewRef<'a> {
    fn of(l: &'a LineView) -> Self {
        LineViewRef {
            sku: l.sku.as_str(),
            quantity: l.quantity,
            requested: l.requested,
            allocations: ListOf::new(&l.allocations[..], |a, i| AllocationViewRef::of(&a[i])),
            components: ListOf::new(&l.components[..], |c, i| ItemViewRef::of(&c[i])),
            backordered: l.backordered,
        }
    }
}

#[derive(Archive, Serialize)]
#[rkyv(
    as = ArchivedItemViewImage,
    archive_bounds(
        Str: ArchiveWith<&'a str, Archived = ArchivedString>,
        ListOf<&'a [AllocationView], AllocationViewRef<'a>>: Archive<Archived = ArchivedVec<ArchivedAllocationViewImage>>
    )
)]
struct ItemViewRef<'a> {
    #[rkyv(with = Str)]
    sku: &'a str,
    quantity: i64,
    allocations: ListOf<&'a [AllocationView], AllocationViewRef<'a>>,
    backordered: i64,
}

impl<'a> ItemViewRef<'a> {
    fn of(c: &'a ItemView) -> Self {
        ItemViewRef {
            sku: c.sku.as_str(),
            quantity: c.quantity,
            allocations: ListOf::new(&c.allocations[..], |a, i| AllocationViewRef::of(&a[i])),
            backordered: c.backordered,
        }
    }
}

#[derive(Archive, Serialize)]
#[rkyv(
    as = ArchivedAllocationViewImage,
    archive_bounds(
        Str: ArchiveWith<&'a str, Archived = ArchivedString>
    )
)]
struct AllocationViewRef<'a> {
    #[rkyv(with = Str)]
    location: &'a str,
    quantity: i64,
    shipped: i64,
    returned: i64,
}

impl<'a> AllocationViewRef<'a> {
    fn of(a: &'a AllocationView) -> Self {
        AllocationViewRef {
            location: a.location.as_str(),
            quantity: a.quantity,
            shipped: a.shipped,
            returned: a.returned,
        }
    }
}

#[derive(Archive, Serialize)]
#[rkyv(
    as = ArchivedSkuImage,
    archive_bounds(
        Str: ArchiveWith<&'a str, Archived = ArchivedString>,
        Map<Str>: ArchiveWith<Option<&'a str>, Archived = rkyv::option::ArchivedOption<ArchivedString>>,
        ListOf<&'a [crate::ats::Level], LevelImage>: Archive<Archived = ArchivedVec<super::ArchivedLevelImage>>,
        ListOf<&'a [i64], i64>: Archive<Archived = ArchivedVec<rkyv::Archived<i64>>>
    )
)]
struct SkuRef<'a> {
    tenant: u32,
    #[rkyv(with = Str)]
    sku: &'a str,
    levels: ListOf<&'a [crate::ats::Level], LevelImage>,
    held: ListOf<&'a [i64], i64>,
    #[rkyv(with = Map<Str>)]
    cost: Option<&'a str>,
}

impl<'a> SkuRef<'a> {
    fn of(s: &'a SkuItem<'a>) -> Self {
        SkuRef {
            tenant: s.key.tenant,
            sku: s.key.sku.as_str(),
            levels: ListOf::new(&s.state.levels[..], |l, i| level_image(&l[i])),
            held: ListOf::new(s.state.held(), |h, i| h[i]),
            cost: s.cost.as_deref(),
        }
    }
}

#[derive(Archive, Serialize)]
#[rkyv(
    as = ArchivedReservationImage,
    archive_bounds(
        Map<Str>: ArchiveWith<Option<&'a str>, Archived = rkyv::option::ArchivedOption<ArchivedString>>,
        ListOf<&'a [LineHeader], LineRef<'a>>: Archive<Archived = ArchivedVec<ArchivedLineImage>>,
        ListOf<&'a Part, i64>: Archive<Archived = ArchivedVec<rkyv::Archived<i64>>>,
        ListOf<(SmallVec<[&'a PartItem; 4]>, &'a [LineHeader]), ItemRef<'a>>: Archive<Archived = ArchivedVec<ArchivedItemImage>>
    )
)]
struct ReservationRef<'a> {
    id: u64,
    tenant: u32,
    channel: u16,
    lifecycle: u8,
    created_at: u64,
    expires_at: u64,
    ended_at: u64,
    #[rkyv(with = Map<Str>)]
    order_ref: Option<&'a str>,
    lines: ListOf<&'a [LineHeader], LineRef<'a>>,
    granted: ListOf<&'a Part, i64>,
    items: ListOf<(SmallVec<[&'a PartItem; 4]>, &'a [LineHeader]), ItemRef<'a>>,
}

#[derive(Archive, Serialize)]
#[rkyv(
    as = ArchivedLineImage,
    archive_bounds(
        Str: ArchiveWith<&'a str, Archived = ArchivedString>
    )
)]
struct LineRef<'a> {
    #[rkyv(with = Str)]
    sku: &'a str,
    requested: i64,
    is_bundle: bool,
}

impl<'a> LineRef<'a> {
    fn of(l: &'a LineHeader) -> Self {
        LineRef {
            sku: l.sku.as_str(),
            requested: l.requested(),
            is_bundle: l.is_bundle(),
        }
    }
}

#[derive(Archive, Serialize)]
#[rkyv(
    as = ArchivedItemImage,
    archive_bounds(
        Str: ArchiveWith<&'a str, Archived = ArchivedString>,
        ListOf<&'a [Alloc], AllocImage>: Archive<Archived = ArchivedVec<super::ArchivedAllocImage>>
    )
)]
struct ItemRef<'a> {
    item: u16,
    line: u16,
    slot: u16,
    #[rkyv(with = Str)]
    sku: &'a str,
    per_unit: i64,
    quantity: i64,
    allocs: ListOf<&'a [Alloc], AllocImage>,
    backordered: i64,
}

impl<'a> ItemRef<'a> {
    fn of(i: &'a PartItem, lines: &'a [LineHeader]) -> Self {
        ItemRef {
            item: i.item,
            line: i.line,
            slot: i.slot,
            sku: i.sku(lines).as_str(),
            per_unit: i.per_unit(),
            quantity: i.quantity,
            allocs: ListOf::new(&i.allocs[..], |a, j| {
                let a = &a[j];
                AllocImage {
                    loc: a.loc,
                    open: a.open,
                    shipped: a.shipped(),
                    returned: a.returned(),
                }
            }),
            backordered: i.backordered(),
        }
    }
}
