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
//! Packing costs the writer a few hundred nanoseconds per keyed reservation; unpacking happens
//! only for a repeated key, a snapshot and a digest.
//!
//! Other answers (refusals, stock levels, `done`) are stored as they are: they are small, or
//! rare under keyed load.

use crate::codec::{BodyError, Reader, Writer};
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
    let mut r = Reader::new(bytes);
    let id = r
        .opt("seq", |r| r.var("seq"))
        .and_then(|_| r.u8("replayed"))
        .and_then(|_| r.var("id"));
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

fn unpack(bytes: &[u8]) -> Result<Response, BodyError> {
    let mut r = Reader::new(bytes);
    let seq = r.opt("seq", |r| r.var("seq"))?;
    let replayed = r.u8("replayed")? != 0;
    let id = ReservationId(r.var("id")?);
    let channel = r.id("channel", ChannelId::new)?;
    let state = state_of(r.u8("state")?).map_err(|e| r.fail("state", e.to_string()))?;
    let created_at = r.var("created_at")?;
    let expires_at = r.var("expires_at")?;
    let order_ref = r.opt("order_ref", |r| r.string("order_ref"))?;
    let lines = r.list("lines", |r| {
        Ok(LineView {
            sku: r.id("sku", Sku::new)?,
            quantity: r.ivar("quantity")?,
            requested: r.ivar("requested")?,
            allocations: unpack_allocations(r)?,
            components: r.list("components", |r| {
                Ok(ItemView {
                    sku: r.id("sku", Sku::new)?,
                    quantity: r.ivar("quantity")?,
                    allocations: unpack_allocations(r)?,
                    backordered: r.ivar("backordered")?,
                })
            })?,
            backordered: r.ivar("backordered")?,
        })
    })?;
    if !r.done() {
        return Err(r.fail("end", "bytes after the answer".into()));
    }
    Ok(Response {
        seq,
        replayed,
        outcome: Outcome::Ok(Reply::Reservation(ReservationView {
            id,
            channel,
            state,
            created_at,
            expires_at,
            order_ref,
            lines: Lines::from(lines),
        })),
    })
}

fn unpack_allocations(r: &mut Reader<'_>) -> Result<Allocations, BodyError> {
    Ok(r.list("allocations", |r| {
        Ok(AllocationView {
            location: r.id("location", LocationId::new)?,
            quantity: r.ivar("quantity")?,
            shipped: r.ivar("shipped")?,
            returned: r.ivar("returned")?,
        })
    })?
    .into_iter()
    .collect())
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
    fn bytes_not_packed_by_pack_are_an_error_not_a_panic() {
        let StoredAnswer::Packed(b) = StoredAnswer::of(&cart(2)) else {
            unreachable!()
        };
        for cut in 0..b.len() {
            assert!(unpack(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = b.to_vec();
        longer.push(0);
        assert!(unpack(&longer).is_err());
        let mut bad_state = b.to_vec();
        // seq tag + 3-byte seq, replayed, 3-byte id, channel "web" (1 + 3), then the state.
        bad_state[1 + 3 + 1 + 3 + 4] = 200;
        assert!(unpack(&bad_state).is_err());
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
        }
    }
}
