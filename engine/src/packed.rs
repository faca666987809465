//! Stored answers of idempotency keys, packed.
//!
//! Every keyed write keeps its answer for the keys' retention window (a day by default): under
//! keyed load, millions of them. Most are a held reservation, whose [`ReservationView`] owns a
//! list of lines of 128 bytes each with their allocations: a three-line cart's answer was about
//! 620 bytes on the heap (the response's cell and the list of lines), more than half of all the
//! memory a keyed reservation adds to the server. Fresh memory is not free: every page is
//! faulted in and cleared by the writing thread (on a virtual machine whose host takes back
//! freed memory, a fault costs several microseconds), and late in a long run that was up to
//! half of that thread's time.
//!
//! So a reservation's answer is stored as bytes: numbers as LEB128 varints (quantities
//! zigzag-mapped), names as a length and their text. A three-line cart takes about 90 bytes.
//! The bytes stay in memory only; they are never written to disk (a snapshot stores the
//! answer as it always did, unpacked), so the layout has no version and may change freely.
//! Packing costs the writer about 80-100 ns per keyed cart of three lines; unpacking (about
//! 320 ns) happens only for a repeated key, a digest, and a snapshot of an answer its
//! reservation no longer shows ([`packed_view`] reads the view in place for the check).
//!
//! Other answers (refusals, stock levels, `done`) are stored as they are: they are small, or
//! rare under keyed load.

use crate::codec::Writer;
use crate::exec::{Shown, ShownAllocation, ShownAllocations, ShownItem, ShownLine};
use crate::ids::{ChannelId, LocationId, ReservationId, Sku};
use crate::outcome::{
    AllocationView, Allocations, ItemView, LineView, Lines, Outcome, Reply, ReservationView,
    Response,
};
use crate::snapshot::{state_code, state_of};
use std::borrow::Cow;

/// An answer as it is stored: packed when it is a reservation, else as it is.
#[derive(Clone, Debug, PartialEq)]
pub enum StoredAnswer {
    Packed(Box<[u8]>),
    Full(Box<Response>),
}

impl StoredAnswer {
    /// `r` in its stored form.
    pub fn of(r: &Response) -> StoredAnswer {
        match &r.outcome {
            Outcome::Ok(Reply::Reservation(v)) => StoredAnswer::Packed(pack(r, v)),
            _ => StoredAnswer::Full(Box::new(r.clone())),
        }
    }

    /// The answer (a reservation's unpacked).
    pub fn response(&self) -> Cow<'_, Response> {
        match self {
            StoredAnswer::Full(r) => Cow::Borrowed(r),
            StoredAnswer::Packed(b) => Cow::Owned(unpacked(b)),
        }
    }
}

/// The answer packed in `bytes` (of a [`StoredAnswer::Packed`]).
pub fn unpacked(bytes: &[u8]) -> Response {
    unpack(bytes).expect("packed answers are only ever made by `pack`")
}

/// The id of the reservation whose answer is packed in `bytes`, read without unpacking the rest.
pub fn packed_id(bytes: &[u8]) -> u64 {
    let mut r = Cursor { bytes, at: 0 };
    let id = r
        .opt(Cursor::var)
        .and_then(|_| r.u8())
        .and_then(|_| r.var());
    id.expect("packed answers are only ever made by `pack`")
}

/// Room for a typical answer: a cart of three lines at one location each takes 80 to 100
/// bytes.
const TYPICAL: usize = 128;

fn pack(r: &Response, v: &ReservationView) -> Box<[u8]> {
    let mut out = Vec::with_capacity(TYPICAL);
    let mut w = Writer(&mut out);
    w.opt(r.seq, |w, s| w.var(s));
    w.u8(u8::from(r.replayed));
    w.var(v.id.0);
    w.str(v.channel.as_str());
    w.u8(state_code(v.state));
    w.var(v.created_at);
    w.var(v.expires_at);
    w.opt(v.order_ref.as_deref(), |w, o| w.str(o));
    w.var(v.lines.len() as u64);
    for l in &v.lines {
        w.str(l.sku.as_str());
        w.ivar(l.quantity);
        w.ivar(l.requested);
        allocations(&mut w, &l.allocations);
        w.var(l.components.len() as u64);
        for c in &l.components {
            w.str(c.sku.as_str());
            w.ivar(c.quantity);
            allocations(&mut w, &c.allocations);
            w.ivar(c.backordered);
        }
        w.ivar(l.backordered);
    }
    // Kept in a block of its exact size (a size class of 96 bytes instead of 128 for a cart
    // of three lines); the buffer's block is freed at once and taken again by the next answer.
    Box::from(&out[..])
}

fn allocations(w: &mut Writer<'_>, a: &Allocations) {
    w.var(a.len() as u64);
    for a in a {
        w.str(a.location.as_str());
        w.ivar(a.quantity);
        w.ivar(a.shipped);
        w.ivar(a.returned);
    }
}

/// Reads what [`pack`] wrote. Nothing else ever writes these bytes, so the reading is plain:
/// `None` on anything unexpected (the caller treats it as a broken invariant), no error values
/// to build, which halves the time of a reader that names what it failed to read.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }
    /// A LEB128 number ([`Writer::var`]).
    fn var(&mut self) -> Option<u64> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }
    /// A zigzag number ([`Writer::ivar`]).
    fn ivar(&mut self) -> Option<i64> {
        let z = self.var()?;
        Some(((z >> 1) as i64) ^ -((z & 1) as i64))
    }
    fn count(&mut self) -> Option<usize> {
        usize::try_from(self.var()?).ok()
    }
    fn str(&mut self) -> Option<&'a str> {
        let n = self.count()?;
        let s = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        std::str::from_utf8(s).ok()
    }
    fn opt<T>(&mut self, get: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.u8()? {
            0 => Some(None),
            1 => get(self).map(Some),
            _ => None,
        }
    }
}

/// The seq, the replayed flag and the reservation's view packed in `bytes`, borrowed from
/// them: what a snapshot needs to check the answer against its reservation, read without
/// allocating (a cart of up to four lines at one location each).
fn read(bytes: &[u8]) -> Option<(Option<u64>, bool, Shown<'_>)> {
    let mut r = Cursor { bytes, at: 0 };
    let seq = r.opt(Cursor::var)?;
    let replayed = r.u8()? != 0;
    let id = r.var()?;
    let channel = r.str()?;
    let state = state_of(r.u8()?).ok()?;
    let created_at = r.var()?;
    let expires_at = r.var()?;
    let order_ref = r.opt(Cursor::str)?;
    let n = r.count()?;
    // Every line takes at least six bytes: no count asks for more room than the bytes give.
    let mut lines = smallvec::SmallVec::with_capacity(n.min(bytes.len() / 6));
    for _ in 0..n {
        let sku = r.str()?;
        let quantity = r.ivar()?;
        let requested = r.ivar()?;
        let allocations = read_allocations(&mut r)?;
        let c = r.count()?;
        let mut components = Vec::with_capacity(c.min(bytes.len() / 4));
        for _ in 0..c {
            components.push(ShownItem {
                sku: r.str()?,
                quantity: r.ivar()?,
                allocations: read_allocations(&mut r)?,
                backordered: r.ivar()?,
            });
        }
        lines.push(ShownLine {
            sku,
            quantity,
            requested,
            allocations,
            components,
            backordered: r.ivar()?,
        });
    }
    if r.at != bytes.len() {
        return None;
    }
    let view = Shown {
        id,
        channel,
        state,
        created_at,
        expires_at,
        order_ref,
        lines,
    };
    Some((seq, replayed, view))
}

fn read_allocations<'a>(r: &mut Cursor<'a>) -> Option<ShownAllocations<'a>> {
    let n = r.count()?;
    let mut a = ShownAllocations::with_capacity(n.min(r.bytes.len() / 4));
    for _ in 0..n {
        a.push(ShownAllocation {
            location: r.str()?,
            quantity: r.ivar()?,
            shipped: r.ivar()?,
            returned: r.ivar()?,
        });
    }
    Some(a)
}

/// [`read`], for bytes that [`pack`] wrote.
pub fn packed_view(bytes: &[u8]) -> (Option<u64>, bool, Shown<'_>) {
    read(bytes).expect("packed answers are only ever made by `pack`")
}

fn unpack(bytes: &[u8]) -> Option<Response> {
    let (seq, replayed, v) = read(bytes)?;
    let allocations = |a: &ShownAllocations<'_>| -> Option<Allocations> {
        a.iter()
            .map(|a| {
                Some(AllocationView {
                    location: LocationId::new(a.location).ok()?,
                    quantity: a.quantity,
                    shipped: a.shipped,
                    returned: a.returned,
                })
            })
            .collect()
    };
    let lines = v
        .lines
        .iter()
        .map(|l| {
            Some(LineView {
                sku: Sku::new(l.sku).ok()?,
                quantity: l.quantity,
                requested: l.requested,
                allocations: allocations(&l.allocations)?,
                components: l
                    .components
                    .iter()
                    .map(|c| {
                        Some(ItemView {
                            sku: Sku::new(c.sku).ok()?,
                            quantity: c.quantity,
                            allocations: allocations(&c.allocations)?,
                            backordered: c.backordered,
                        })
                    })
                    .collect::<Option<Vec<_>>>()?,
                backordered: l.backordered,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Response {
        seq,
        replayed,
        outcome: Outcome::Ok(Reply::Reservation(ReservationView {
            id: ReservationId(v.id),
            channel: ChannelId::new(v.channel).ok()?,
            state: v.state,
            created_at: v.created_at,
            expires_at: v.expires_at,
            order_ref: v.order_ref.map(str::to_string),
            lines: Lines::from(lines),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::ReservationState;
    use proptest::prelude::*;

    fn alloc(location: &str, quantity: i64, shipped: i64, returned: i64) -> AllocationView {
        AllocationView {
            location: LocationId::new(location).unwrap(),
            quantity,
            shipped,
            returned,
        }
    }

    fn cart(lines: usize) -> Response {
        Response {
            seq: Some(1_234_567),
            replayed: false,
            outcome: Outcome::Ok(Reply::Reservation(ReservationView {
                id: ReservationId(987_654),
                channel: ChannelId::new("web").unwrap(),
                state: ReservationState::Held,
                created_at: 1_764_000_000_000,
                expires_at: 1_764_000_900_000,
                order_ref: None,
                lines: (0..lines)
                    .map(|i| LineView {
                        sku: Sku::new(&format!("sku-{:05}", i + 1)).unwrap(),
                        quantity: 2,
                        requested: 0,
                        allocations: [alloc("wh-1", 2, 0, 0)].into_iter().collect(),
                        components: Vec::new(),
                        backordered: 0,
                    })
                    .collect(),
            })),
        }
    }

    #[test]
    fn a_cart_of_three_lines_packs_small_and_back() {
        let r = cart(3);
        let s = StoredAnswer::of(&r);
        let StoredAnswer::Packed(b) = &s else {
            panic!("a reservation's answer is packed");
        };
        assert!(b.len() <= 100, "{} bytes", b.len());
        assert_eq!(*s.response(), r);
        assert_eq!(packed_id(b), 987_654);
    }

    #[test]
    fn other_answers_are_kept_as_they_are() {
        let done = Response {
            seq: Some(3),
            replayed: false,
            outcome: Outcome::Ok(Reply::Done),
        };
        let s = StoredAnswer::of(&done);
        assert!(matches!(s, StoredAnswer::Full(_)));
        assert!(matches!(s.response(), Cow::Borrowed(r) if *r == done));
    }

    #[test]
    fn bytes_not_packed_by_pack_are_refused_not_a_panic() {
        let StoredAnswer::Packed(b) = StoredAnswer::of(&cart(2)) else {
            unreachable!()
        };
        for cut in 0..b.len() {
            assert!(unpack(&b[..cut]).is_none(), "cut at {cut}");
        }
        let mut longer = b.to_vec();
        longer.push(0);
        assert!(unpack(&longer).is_none());
        let mut bad_state = b.to_vec();
        // seq tag + 3-byte seq, replayed, 3-byte id, channel "web" (1 + 3), then the state.
        bad_state[1 + 3 + 1 + 3 + 4] = 200;
        assert!(unpack(&bad_state).is_none());
    }

    fn name() -> impl Strategy<Value = String> {
        "[!-~]{1,30}"
    }

    fn allocations() -> impl Strategy<Value = Allocations> {
        prop::collection::vec((name(), any::<i64>(), any::<i64>(), any::<i64>()), 0..3).prop_map(
            |v| {
                v.into_iter()
                    .map(|(l, q, s, r)| alloc(&l, q, s, r))
                    .collect()
            },
        )
    }

    fn line() -> impl Strategy<Value = LineView> {
        let item = (name(), any::<i64>(), allocations(), any::<i64>()).prop_map(
            |(sku, quantity, allocations, backordered)| ItemView {
                sku: Sku::new(&sku).unwrap(),
                quantity,
                allocations,
                backordered,
            },
        );
        (
            name(),
            any::<i64>(),
            any::<i64>(),
            allocations(),
            prop::collection::vec(item, 0..3),
            any::<i64>(),
        )
            .prop_map(
                |(sku, quantity, requested, allocations, components, backordered)| LineView {
                    sku: Sku::new(&sku).unwrap(),
                    quantity,
                    requested,
                    allocations,
                    components,
                    backordered,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Any reservation answer comes back exactly as it was packed.
        #[test]
        fn every_reservation_answer_round_trips(
            seq in proptest::option::of(any::<u64>()),
            replayed in any::<bool>(),
            id in any::<u64>(),
            channel in name(),
            state in 0u8..7,
            created_at in any::<u64>(),
            expires_at in any::<u64>(),
            order_ref in proptest::option::of("\\PC{0,20}"),
            lines in prop::collection::vec(line(), 0..5),
        ) {
            let r = Response {
                seq,
                replayed,
                outcome: Outcome::Ok(Reply::Reservation(ReservationView {
                    id: ReservationId(id),
                    channel: ChannelId::new(&channel).unwrap(),
                    state: state_of(state).unwrap(),
                    created_at,
                    expires_at,
                    order_ref,
                    lines: Lines::from(lines),
                })),
            };
            let s = StoredAnswer::of(&r);
            let StoredAnswer::Packed(b) = &s else {
                panic!("a reservation's answer is packed");
            };
            prop_assert_eq!(packed_id(b), id);
            prop_assert_eq!(&*s.response(), &r);
            // Read in place, it is the same view (compared as printed: both borrow).
            let (seq_read, replayed_read, shown) = packed_view(b);
            prop_assert_eq!((seq_read, replayed_read), (seq, replayed));
            let v = r.outcome.reservation().unwrap();
            prop_assert_eq!(format!("{shown:?}"), format!("{:?}", Shown::of(v)));
        }
    }
}
