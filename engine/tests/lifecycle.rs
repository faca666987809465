//! Reservations from reserve to return: `docs/allocation.md` "Reserve", "Lifecycle",
//! "Oversell incident" and "Idempotency", plus tenant isolation and limits.

mod common;

use common::*;
use depot_engine::outcome::{ReservationView, Shortage};
use depot_engine::{
    Bucket, Command, EventKind, FillPolicy, Limits, Outcome, Refusal, Reply, ReservationId,
    ReservationState,
};

fn shortages(r: Refusal) -> Vec<(String, i64, i64)> {
    match r {
        Refusal::InsufficientStock { shortages } => shortages
            .into_iter()
            .map(
                |Shortage {
                     sku,
                     requested,
                     available_to_sell,
                 }| (sku.to_string(), requested, available_to_sell),
            )
            .collect(),
        r => panic!("expected insufficient_stock, got {r:?}"),
    }
}

fn short(ls: &[(&str, i64, i64)]) -> Vec<(String, i64, i64)> {
    ls.iter().map(|&(s, r, a)| (s.to_string(), r, a)).collect()
}

/// (on_hand, reserved, committed, available) of a level.
fn lvl(fx: &mut Fx, s: &str, l: &str) -> (i64, i64, i64, i64) {
    let v = fx.level(s, l);
    (v.on_hand, v.reserved, v.committed, v.available)
}

fn line<'a>(v: &'a ReservationView, s: &str) -> &'a depot_engine::outcome::LineView {
    v.lines
        .iter()
        .find(|l| l.sku.as_str() == s)
        .expect("line exists")
}

// ---------------------------------------------------------------------------------------------
// reserve

#[test]
fn all_or_nothing_holds_everything_or_refuses_with_shortages_per_line() {
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 5));
    fx.ok(receive("B", "west", 3));
    let resp = fx.exec(reserve("web", &[("A", 3), ("B", 2)]));
    let v = resp.outcome.reservation().expect("held").clone();
    assert_eq!(
        v.id,
        ReservationId(resp.seq.unwrap()),
        "the id is the command's sequence number"
    );
    assert_eq!(
        (v.state, v.created_at, v.expires_at),
        (ReservationState::Held, T0, T0 + 900_000)
    );
    assert_eq!(fx.event_kinds(), ["reservation_held"]);
    assert_eq!(lvl(&mut fx, "A", "east"), (5, 3, 0, 2));
    assert_eq!(lvl(&mut fx, "B", "west"), (3, 2, 0, 1));
    assert_eq!(fx.ats3("A"), [2, 2, 2]);

    let r = fx.refused(reserve("web", &[("A", 3), ("B", 2)]));
    assert_eq!(shortages(r), short(&[("A", 3, 2), ("B", 2, 1)]));
    let r = fx.refused(reserve("web", &[("A", 1), ("B", 2), ("NOSTOCK", 1)]));
    assert_eq!(shortages(r), short(&[("B", 2, 1), ("NOSTOCK", 1, 0)]));
    fx.check(vec![(
        "exactly what is left",
        reserve("amazon", &[("A", 2), ("B", 1)]),
        "ok",
    )]);
    assert_eq!(fx.ats3("A"), [0, 0, 0]);
}

#[test]
fn partial_grants_what_each_line_can_get() {
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 5));
    fx.ok(receive("B", "west", 5));
    let v = fx.res(reserve_with(
        "web",
        &[("A", 8), ("NOSTOCK", 2), ("B", 1)],
        FillPolicy::Partial,
        None,
    ));
    let got: Vec<(i64, i64)> = v.lines.iter().map(|l| (l.quantity, l.requested)).collect();
    assert_eq!(got, [(5, 8), (0, 2), (1, 0)]);
    assert!(line(&v, "NOSTOCK").allocations.is_empty());
    // A bundle line gets the largest k whose components all fit: B has 4 left -> 2 kits, but
    // A has none left.
    let r = fx.refused(reserve_with(
        "web",
        &[("A", 1), ("KIT", 3)],
        FillPolicy::Partial,
        None,
    ));
    assert_eq!(shortages(r), short(&[("A", 1, 0), ("KIT", 3, 0)]));
    fx.ok(receive("A", "west", 1));
    let v = fx.res(reserve_with(
        "web",
        &[("KIT", 3)],
        FillPolicy::Partial,
        None,
    ));
    let kit = line(&v, "KIT");
    assert_eq!((kit.quantity, kit.requested), (1, 3));
    let comps: Vec<(String, i64)> = kit
        .components
        .iter()
        .map(|c| (c.sku.to_string(), c.quantity))
        .collect();
    assert_eq!(comps, [("A".to_string(), 1), ("B".to_string(), 2)]);
}

#[test]
fn partial_shares_a_sku_between_lines_in_order() {
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 5));
    fx.ok(receive("B", "east", 10));
    // KIT 3 takes 3 A and 6 B; the plain A line gets the 2 left.
    let v = fx.res(reserve_with(
        "web",
        &[("KIT", 3), ("A", 4)],
        FillPolicy::Partial,
        None,
    ));
    assert_eq!([line(&v, "KIT").quantity, line(&v, "A").quantity], [3, 2]);
    assert_eq!(lvl(&mut fx, "A", "east"), (5, 5, 0, 0));
}

#[test]
fn split_limits_the_locations_per_item() {
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 3));
    fx.ok(receive("A", "west", 3));
    fx.ok(receive("A", "eu", 3));
    let split = |n| FillPolicy::Split { max_locations: n };
    let r = fx.refused(reserve_with("web", &[("A", 5)], split(1), None));
    assert_eq!(shortages(r), short(&[("A", 5, 9)]));
    fx.check(vec![
        (
            "zero locations",
            reserve_with("web", &[("A", 1)], split(0), None),
            "invalid_request:fill.max_locations",
        ),
        (
            "over the ATS",
            reserve_with("web", &[("A", 10)], split(3), None),
            "insufficient_stock",
        ),
        (
            "one location suffices",
            reserve_with("web", &[("A", 3)], split(1), None),
            "ok",
        ),
        (
            "two locations",
            reserve_with("web", &[("A", 5)], split(2), None),
            "ok",
        ),
    ]);
    assert_eq!(fx.ats3("A"), [1, 1, 1]);
}

#[test]
fn bundles_reserve_their_components_atomically() {
    let mut fx = Fx::new();
    let (a, b) = (
        depot_engine::shard::shard_of(0, "A", 2),
        depot_engine::shard::shard_of(0, "B", 2),
    );
    fx.ok(receive("A", "east", 2));
    fx.ok(receive("B", "west", 10));
    assert_eq!(fx.ats3("KIT"), [2, 2, 2]);
    let r = fx.refused(reserve("web", &[("KIT", 3)]));
    assert_eq!(shortages(r), short(&[("KIT", 3, 2)]));
    assert_eq!(
        [lvl(&mut fx, "A", "east").1, lvl(&mut fx, "B", "west").1],
        [0, 0],
        "nothing held (A on shard {a}, B on {b})"
    );
    let v = fx.res(reserve("web", &[("KIT", 2)]));
    let kit = line(&v, "KIT");
    assert!(kit.allocations.is_empty());
    let comps: Vec<(String, i64, String)> = kit
        .components
        .iter()
        .map(|c| {
            (
                c.sku.to_string(),
                c.quantity,
                c.allocations[0].location.to_string(),
            )
        })
        .collect();
    assert_eq!(
        comps,
        [
            ("A".into(), 2, "east".into()),
            ("B".into(), 4, "west".into())
        ]
    );
    assert_eq!(
        [lvl(&mut fx, "A", "east").1, lvl(&mut fx, "B", "west").1],
        [2, 4]
    );
    assert_eq!(fx.ats3("KIT"), [0, 0, 0]);
    assert_eq!(fx.ats3("B"), [6, 6, 6]);
}

#[test]
fn demand_adds_a_bundle_component_to_a_plain_line_of_it() {
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 3));
    fx.ok(receive("B", "east", 10));
    // 2 kits need 2 A; the A line 2 more: 4 > 3. Both lines hold A.
    let r = fx.refused(reserve("web", &[("KIT", 2), ("A", 2), ("B", 1)]));
    assert_eq!(shortages(r), short(&[("KIT", 2, 3), ("A", 2, 3)]));
}

#[test]
fn reserve_validation_refusals() {
    let mut fx = Fx::with_limits(Limits {
        lines_per_reservation_max: 3,
        ..Limits::default()
    });
    fx.ok(receive("A", "east", 5));
    let ttl = |ms| Command::Reserve {
        channel: ch("web"),
        lines: lines(&[("A", 1)]),
        ttl_ms: Some(ms),
        order_ref: None,
        ship_to_region: None,
        fill: FillPolicy::AllOrNothing,
    };
    fx.check(vec![
        ("unknown channel", reserve("nope", &[("A", 1)]), "not_found"),
        ("no lines", reserve("web", &[]), "invalid_request:lines"),
        (
            "too many lines",
            reserve("web", &[("A", 1), ("B", 1), ("C", 1), ("D", 1)]),
            "invalid_request:lines",
        ),
        (
            "at the line limit",
            reserve("web", &[("A", 1), ("B", 0), ("C", 1)]),
            "invalid_request:lines[1].quantity",
        ),
        (
            "zero quantity",
            reserve("web", &[("A", 0)]),
            "invalid_request:lines[0].quantity",
        ),
        (
            "negative quantity",
            reserve("web", &[("A", -2)]),
            "invalid_request:lines[0].quantity",
        ),
        (
            "same SKU twice",
            reserve("web", &[("A", 1), ("B", 1), ("A", 1)]),
            "invalid_request:lines[2].sku",
        ),
        ("ttl too short", ttl(999), "invalid_request:ttl_seconds"),
        (
            "ttl too long",
            ttl(30 * 24 * HOUR + 1),
            "invalid_request:ttl_seconds",
        ),
        (
            "order_ref too long",
            Command::Reserve {
                channel: ch("web"),
                lines: lines(&[("A", 1)]),
                ttl_ms: None,
                order_ref: Some("o".repeat(1025)),
                ship_to_region: None,
                fill: FillPolicy::AllOrNothing,
            },
            "invalid_request:order_ref",
        ),
        ("ttl at the minimum", ttl(1000), "ok"),
        ("ttl at the maximum", ttl(30 * 24 * HOUR), "ok"),
    ]);
}

#[test]
fn reserve_of_many_huge_bundles_sharing_a_component_is_refused_not_an_overflow() {
    // demand(A) = 10 lines x 10^12 kits x 10^6 per kit overflowed i64.
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 5));
    let mut ls = Vec::new();
    for i in 0..10 {
        let name = format!("BIG{i}");
        fx.ok(put_bundle(&name, &[("A", 1_000_000)]));
        ls.push(name);
    }
    let req: Vec<(&str, i64)> = ls.iter().map(|s| (s.as_str(), 1_000_000_000_000)).collect();
    let r = fx.refused(reserve("web", &req));
    assert_eq!(shortages(r).len(), 10);
    let r = fx.refused(reserve_with(
        "web",
        &req,
        FillPolicy::Split { max_locations: 1 },
        None,
    ));
    assert_eq!(shortages(r).len(), 10);
}

// ---------------------------------------------------------------------------------------------
// extend, commit, release, cancel

/// A fixture with A at east 3 and west 10, B at east 10, and a web hold of A 5 + B 2
/// (A: east 3, west 2).
fn held() -> (Fx, ReservationId) {
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 3));
    fx.ok(receive("A", "west", 10));
    fx.ok(receive("B", "east", 10));
    let v = fx.res(reserve("web", &[("A", 5), ("B", 2)]));
    assert_eq!(
        Fx::allocs(&v, "A"),
        [("east".to_string(), 3), ("west".to_string(), 2)]
    );
    (fx, v.id)
}

#[test]
fn extend_moves_the_expiry() {
    let (mut fx, id) = held();
    fx.advance(1000);
    fx.ok(Command::Extend {
        id,
        ttl_ms: 2 * HOUR,
    });
    assert!(
        matches!(fx.events[0].kind, EventKind::ReservationExtended { expires_at, .. } if expires_at == T0 + 1000 + 2 * HOUR)
    );
    assert_eq!(fx.get(id).expires_at, T0 + 1000 + 2 * HOUR);
    // The old expiry passes: still held.
    fx.advance(HOUR);
    assert_eq!(fx.tick().0, 0);
    assert_eq!(fx.get(id).state, ReservationState::Held);
    fx.check(vec![
        (
            "ttl too short",
            Command::Extend { id, ttl_ms: 10 },
            "invalid_request:ttl_seconds",
        ),
        (
            "unknown id",
            Command::Extend {
                id: ReservationId(9999),
                ttl_ms: HOUR,
            },
            "not_found",
        ),
    ]);
    fx.ok(commit(id));
    fx.check(vec![(
        "extend a committed reservation",
        Command::Extend { id, ttl_ms: HOUR },
        "invalid_state",
    )]);
}

#[test]
fn commit_all_moves_reserved_to_committed() {
    let (mut fx, id) = held();
    let v = fx.res(commit(id));
    assert_eq!(v.state, ReservationState::Committed);
    assert_eq!(fx.event_kinds(), ["reservation_committed"]);
    assert_eq!(lvl(&mut fx, "A", "east"), (3, 0, 3, 0));
    assert_eq!(lvl(&mut fx, "A", "west"), (10, 0, 2, 8));
    assert_eq!(lvl(&mut fx, "B", "east"), (10, 0, 2, 8));
    assert_eq!(fx.ats3("A"), [8, 8, 8]);
    fx.check(vec![
        ("commit twice", commit(id), "invalid_state"),
        (
            "release a committed reservation",
            Command::Release { id },
            "invalid_state",
        ),
    ]);
}

#[test]
fn commit_some_lines_trims_from_the_last_location_and_releases_the_rest() {
    let (mut fx, id) = held();
    let v = fx.res(commit_lines(id, &[("A", Some(4))]));
    assert_eq!(
        Fx::allocs(&v, "A"),
        [("east".to_string(), 3), ("west".to_string(), 1)]
    );
    assert_eq!(line(&v, "A").quantity, 4);
    assert_eq!(line(&v, "B").quantity, 0);
    assert_eq!(lvl(&mut fx, "A", "west"), (10, 0, 1, 9));
    assert_eq!(lvl(&mut fx, "B", "east"), (10, 0, 0, 10));
    // Trimming can drop a whole location.
    let (mut fx, id) = held();
    let v = fx.res(commit_lines(id, &[("A", Some(2)), ("B", None)]));
    assert_eq!(Fx::allocs(&v, "A"), [("east".to_string(), 2)]);
    assert_eq!(line(&v, "B").quantity, 2);
    assert_eq!(lvl(&mut fx, "A", "east"), (3, 0, 2, 1));
    assert_eq!(lvl(&mut fx, "A", "west"), (10, 0, 0, 10));
}

#[test]
fn commit_line_refusals() {
    let (mut fx, id) = held();
    fx.check(vec![
        ("empty list", commit_lines(id, &[]), "invalid_request:lines"),
        (
            "unknown line",
            commit_lines(id, &[("Z", None)]),
            "invalid_request:lines[0]",
        ),
        (
            "more than the line",
            commit_lines(id, &[("A", Some(6))]),
            "invalid_request:lines[0]",
        ),
        (
            "zero",
            commit_lines(id, &[("A", Some(0))]),
            "invalid_request:lines[0].quantity",
        ),
        (
            "listed twice",
            commit_lines(id, &[("A", Some(1)), ("A", Some(1))]),
            "invalid_request:lines[1]",
        ),
        (
            "unknown reservation",
            commit(ReservationId(12345)),
            "not_found",
        ),
    ]);
    assert_eq!(fx.get(id).state, ReservationState::Held);
}

#[test]
fn release_returns_held_units() {
    let (mut fx, id) = held();
    fx.ok(Command::Release { id });
    assert_eq!(fx.event_kinds(), ["reservation_released"]);
    assert_eq!(fx.get(id).state, ReservationState::Released);
    assert_eq!(lvl(&mut fx, "A", "east"), (3, 0, 0, 3));
    assert_eq!(fx.ats3("A"), [13, 13, 13]);
    fx.check(vec![
        ("release twice", Command::Release { id }, "invalid_state"),
        ("commit a released hold", commit(id), "invalid_state"),
        (
            "cancel a released hold",
            Command::Cancel { id },
            "invalid_state",
        ),
    ]);
}

#[test]
fn cancel_returns_committed_units_and_drops_backorders() {
    let (mut fx, id) = held();
    fx.check(vec![(
        "cancel a hold",
        Command::Cancel { id },
        "invalid_state",
    )]);
    fx.ok(commit(id));
    // Ship 1 of A at east, 1 found missing and backordered (B east has none of A elsewhere? A
    // has west: it is re-allocated there).
    fx.ok(fulfil(id, &[("A", "east", 1, 0)]));
    fx.ok(Command::Cancel { id });
    assert_eq!(fx.event_kinds(), ["reservation_cancelled"]);
    assert_eq!(fx.get(id).state, ReservationState::Cancelled);
    assert_eq!(lvl(&mut fx, "A", "east"), (2, 0, 0, 2));
    assert_eq!(lvl(&mut fx, "A", "west"), (10, 0, 0, 10));
    assert_eq!(lvl(&mut fx, "B", "east"), (10, 0, 0, 10));
    fx.check(vec![(
        "cancel twice",
        Command::Cancel { id },
        "invalid_state",
    )]);

    // Backorders are dropped.
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 2));
    let id = fx.res(reserve("web", &[("A", 2)])).id;
    fx.ok(commit(id));
    fx.ok(fulfil(id, &[("A", "east", 0, 2)]));
    assert_eq!(line(&fx.get(id), "A").backordered, 2);
    fx.ok(Command::Cancel { id });
    assert_eq!(line(&fx.get(id), "A").backordered, 0);
}

#[test]
fn a_fulfilled_reservation_cannot_be_cancelled() {
    let (mut fx, id) = held();
    fx.ok(commit(id));
    fx.ok(fulfil(
        id,
        &[
            ("A", "east", 3, 0),
            ("A", "west", 2, 0),
            ("B", "east", 2, 0),
        ],
    ));
    assert_eq!(fx.get(id).state, ReservationState::Fulfilled);
    fx.check(vec![("cancel", Command::Cancel { id }, "invalid_state")]);
}

// ---------------------------------------------------------------------------------------------
// expiry

#[test]
fn tick_expires_due_holds_with_an_event() {
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 10));
    let short_hold = fx.res(reserve_ttl("web", &[("A", 2)], 1_000)).id;
    let long_hold = fx.res(reserve_ttl("web", &[("A", 3)], 5_000)).id;
    fx.advance(999);
    assert_eq!(fx.tick(), (0, 0));
    assert_eq!(fx.get(short_hold).state, ReservationState::Held);
    fx.advance(1);
    assert_eq!(fx.tick(), (1, 0));
    assert_eq!(fx.events.len(), 1);
    assert!(matches!(fx.events[0].kind, EventKind::ReservationExpired { id } if id == short_hold));
    assert_eq!(
        fx.events[0].tenant.as_str(),
        TENANT,
        "the expiry belongs to the reservation's tenant"
    );
    assert_eq!(fx.get(short_hold).state, ReservationState::Expired);
    assert_eq!(lvl(&mut fx, "A", "east"), (10, 3, 0, 7));
    fx.check(vec![
        ("commit after expiry", commit(short_hold), "invalid_state"),
        (
            "extend after expiry",
            Command::Extend {
                id: short_hold,
                ttl_ms: HOUR,
            },
            "invalid_state",
        ),
        (
            "release after expiry",
            Command::Release { id: short_hold },
            "invalid_state",
        ),
    ]);
    fx.advance(10_000);
    assert_eq!(fx.tick(), (1, 0));
    assert_eq!(fx.get(long_hold).state, ReservationState::Expired);
    assert_eq!(fx.ats3("A"), [10, 10, 10]);
}

#[test]
fn the_engine_says_when_a_tick_may_have_work() {
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 10));
    let reserve = fx.request(reserve_ttl("web", &[("A", 2)], 5_500));
    let tick = fx.request(Command::Tick);
    let e = depot_engine::Engine::from_machine(fx.m, Limits::default(), None);
    assert_eq!(e.next_due(), None, "no hold, nothing to tick");

    assert!(matches!(
        e.execute_one(reserve, T0).0.outcome,
        Outcome::Ok(_)
    ));
    let due = e.next_due().expect("a hold waits");
    assert!(due <= T0 + 5_500 && due > T0 + 4_000, "{due}");

    // The expiry ends the hold; only the dropping of the ended reservation (a day later) waits.
    let ans = e.execute_one(tick, T0 + 6_000);
    assert!(matches!(
        ans.0.outcome,
        Outcome::Ok(Reply::Ticked { expired: 1, .. })
    ));
    let due = e
        .next_due()
        .expect("the ended reservation waits to be dropped");
    assert!(due > T0 + 20 * HOUR, "{due}");
}

#[test]
fn the_engine_counts_reservations_by_state_once_each() {
    let mut fx = Fx::new();
    let skus = ["A", "B", "C", "D", "E", "F"];
    for s in skus {
        fx.ok(receive(s, "east", 10));
    }
    // One reservation over six SKUs (spanning both shards), one short hold, one committed.
    let all: Vec<(&str, i64)> = skus.iter().map(|s| (*s, 1)).collect();
    let reqs = [
        fx.request(reserve_ttl("web", &all, 60_000)),
        fx.request(reserve_ttl("web", &[("A", 1)], 1_000)),
        fx.request(reserve_ttl("web", &[("B", 1)], 60_000)),
    ];
    let e = depot_engine::Engine::from_machine(fx.m, Limits::default(), None);
    let mut ids = Vec::new();
    for r in reqs {
        let (resp, _) = e.execute_one(r, T0);
        match resp.outcome {
            Outcome::Ok(Reply::Reservation(v)) => ids.push(v.id),
            o => panic!("{o:?}"),
        }
    }
    let commit = depot_engine::Request {
        tenant: depot_engine::TenantId::new(TENANT).unwrap(),
        key_id: "key_test".into(),
        idempotency_key: None,
        command: commit(ids[2]),
    };
    assert!(matches!(
        e.execute_one(commit, T0).0.outcome,
        Outcome::Ok(_)
    ));
    let c = e.reservation_counts(T0 + 2_000);
    assert_eq!((c.held, c.overdue, c.committed), (1, 1, 1), "{c:?}");
}

#[test]
fn a_command_on_an_overdue_hold_expires_it_and_is_refused() {
    let (mut fx, id) = held();
    fx.advance(900_000);
    // Read before any tick: already shown as expired, units still reserved.
    assert_eq!(fx.get(id).state, ReservationState::Expired);
    let r = fx.refused(commit(id));
    assert!(matches!(r, Refusal::InvalidState { .. }));
    assert_eq!(fx.event_kinds(), ["reservation_expired"]);
    assert_eq!(lvl(&mut fx, "A", "east"), (3, 0, 0, 3));
    assert_eq!(lvl(&mut fx, "B", "east"), (10, 0, 0, 10));
    // The tick finds nothing more to expire.
    assert_eq!(fx.tick().0, 0);
}

#[test]
fn ended_reservations_are_dropped_after_the_retention_window() {
    let (mut fx, id) = held();
    fx.ok(Command::Release { id });
    fx.advance(24 * HOUR - 1);
    assert_eq!(fx.tick(), (0, 0));
    assert_eq!(fx.get(id).state, ReservationState::Released);
    fx.advance(1);
    assert_eq!(fx.tick(), (0, 1));
    fx.check(vec![(
        "read a dropped reservation",
        Command::GetReservation { id },
        "not_found",
    )]);
}

// ---------------------------------------------------------------------------------------------
// fulfil and return

/// A committed web order of A 5 at east (A: east 5, west 10).
fn committed() -> (Fx, ReservationId) {
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 5));
    fx.ok(receive("A", "west", 10));
    let id = fx.res(reserve("web", &[("A", 5)])).id;
    fx.ok(commit(id));
    (fx, id)
}

#[test]
fn fulfil_ships_picked_units() {
    let (mut fx, id) = committed();
    fx.ok(fulfil(id, &[("A", "east", 2, 0)]));
    assert_eq!(fx.event_kinds(), ["fulfilled"]);
    assert_eq!(fx.get(id).state, ReservationState::PartiallyFulfilled);
    assert_eq!(lvl(&mut fx, "A", "east"), (3, 0, 3, 0));
    fx.ok(fulfil(id, &[("A", "east", 3, 0)]));
    let v = fx.get(id);
    assert_eq!(v.state, ReservationState::Fulfilled);
    let a = &line(&v, "A").allocations[0];
    assert_eq!((a.quantity, a.shipped), (0, 5));
    assert_eq!(lvl(&mut fx, "A", "east"), (0, 0, 0, 0));
    assert_eq!(fx.ats3("A"), [10, 10, 10]);
}

#[test]
fn short_pick_reallocates_to_another_location() {
    let (mut fx, id) = committed();
    fx.ok(fulfil(id, &[("A", "east", 3, 2)]));
    assert_eq!(
        fx.event_kinds(),
        ["fulfilled", "discrepancy", "reallocated"]
    );
    assert!(
        matches!(&fx.events[2].kind, EventKind::Reallocated { quantity: 2, to, .. } if to.as_str() == "west")
    );
    assert_eq!(lvl(&mut fx, "A", "east"), (0, 0, 0, 0));
    assert_eq!(lvl(&mut fx, "A", "west"), (10, 0, 2, 8));
    let v = fx.get(id);
    assert_eq!(v.state, ReservationState::PartiallyFulfilled);
    assert_eq!(line(&v, "A").backordered, 0);
    fx.ok(fulfil(id, &[("A", "west", 2, 0)]));
    assert_eq!(fx.get(id).state, ReservationState::Fulfilled);
}

#[test]
fn short_pick_respects_eligibility_when_reallocating() {
    let (mut fx, id) = committed();
    fx.ok(receive("A", "eu", 10));
    fx.ok(rules(
        r#"{"rules":[{"kind":"eligibility","deny_locations":["west"]}]}"#,
    ));
    fx.ok(fulfil(id, &[("A", "east", 0, 1)]));
    assert!(matches!(&fx.events[1].kind, EventKind::Reallocated { to, .. } if to.as_str() == "eu"));
    assert_eq!(lvl(&mut fx, "A", "west").2, 0);
}

#[test]
fn short_pick_backorders_what_cannot_be_placed() {
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 5));
    fx.ok(receive("A", "west", 1));
    let id = fx.res(reserve("web", &[("A", 5)])).id;
    fx.ok(commit(id));
    fx.ok(fulfil(id, &[("A", "east", 2, 3)]));
    assert_eq!(
        fx.event_kinds(),
        ["fulfilled", "discrepancy", "reallocated", "backordered"]
    );
    assert!(
        matches!(&fx.events[3].kind, EventKind::Backordered { quantity: 2, cause, .. } if cause == "short_pick")
    );
    let v = fx.get(id);
    assert_eq!(line(&v, "A").backordered, 2);
    assert_eq!(v.state, ReservationState::PartiallyFulfilled);
    assert_eq!(lvl(&mut fx, "A", "east"), (0, 0, 0, 0));
    assert_eq!(lvl(&mut fx, "A", "west"), (1, 0, 1, 0));
    // Everything missing and nothing shipped: still committed.
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 2));
    let id = fx.res(reserve("web", &[("A", 2)])).id;
    fx.ok(commit(id));
    fx.ok(fulfil(id, &[("A", "east", 0, 2)]));
    assert_eq!(fx.get(id).state, ReservationState::Committed);
}

#[test]
fn fulfil_refusals() {
    let (mut fx, id) = committed();
    let hold = fx.res(reserve("web", &[("A", 1)])).id;
    fx.check(vec![
        (
            "over-pick",
            fulfil(id, &[("A", "east", 6, 0)]),
            "invalid_request:lines[0]",
        ),
        (
            "picked plus missing over",
            fulfil(id, &[("A", "east", 4, 2)]),
            "invalid_request:lines[0]",
        ),
        (
            "no allocation there",
            fulfil(id, &[("A", "west", 1, 0)]),
            "invalid_request:lines[0]",
        ),
        (
            "SKU not in the order",
            fulfil(id, &[("B", "east", 1, 0)]),
            "invalid_request:lines[0]",
        ),
        (
            "unknown location",
            fulfil(id, &[("A", "mars", 1, 0)]),
            "not_found",
        ),
        ("no lines", fulfil(id, &[]), "invalid_request:lines"),
        (
            "nothing reported",
            fulfil(id, &[("A", "east", 0, 0)]),
            "invalid_request:lines[0]",
        ),
        (
            "negative",
            fulfil(id, &[("A", "east", -1, 0)]),
            "invalid_request:lines[0].quantity",
        ),
        (
            "negative missing",
            fulfil(id, &[("A", "east", 1, -1)]),
            "invalid_request:lines[0].missing",
        ),
        (
            "listed twice",
            fulfil(id, &[("A", "east", 1, 0), ("A", "east", 1, 0)]),
            "invalid_request:lines[1]",
        ),
        (
            "a held reservation",
            fulfil(hold, &[("A", "west", 1, 0)]),
            "invalid_state",
        ),
        (
            "unknown reservation",
            fulfil(ReservationId(777), &[("A", "east", 1, 0)]),
            "not_found",
        ),
    ]);
}

#[test]
fn returns_come_back_sellable_or_damaged() {
    let (mut fx, id) = committed();
    fx.check(vec![(
        "return before shipping",
        ret(id, "A", "east", 1, false),
        "invalid_request:quantity",
    )]);
    fx.ok(fulfil(id, &[("A", "east", 5, 0)]));
    fx.ok(ret(id, "A", "east", 2, false));
    assert_eq!(fx.event_kinds(), ["returned"]);
    let l = fx.level("A", "east");
    assert_eq!((l.on_hand, l.damaged, l.available), (2, 0, 2));
    fx.ok(ret(id, "A", "east", 1, true));
    let l = fx.level("A", "east");
    assert_eq!((l.on_hand, l.damaged, l.available), (3, 1, 2));
    assert_eq!(line(&fx.get(id), "A").allocations[0].returned, 3);
    fx.check(vec![
        (
            "over-return",
            ret(id, "A", "east", 3, false),
            "invalid_request:quantity",
        ),
        ("the rest", ret(id, "A", "east", 2, false), "ok"),
        (
            "nothing left",
            ret(id, "A", "east", 1, false),
            "invalid_request:quantity",
        ),
        (
            "another location",
            ret(id, "A", "west", 1, false),
            "invalid_request:location",
        ),
        (
            "zero",
            ret(id, "A", "east", 0, false),
            "invalid_request:quantity",
        ),
        (
            "unknown reservation",
            ret(ReservationId(777), "A", "east", 1, false),
            "not_found",
        ),
    ]);
    let hold = fx.res(reserve("web", &[("A", 1)])).id;
    fx.check(vec![(
        "return on a hold",
        ret(hold, "A", "east", 1, false),
        "invalid_state",
    )]);
}

// ---------------------------------------------------------------------------------------------
// oversell incident

/// A at east 10; web commits 4 (older), amazon commits 4 (newer), b2b commits 1 (newest).
fn oversold(policy: &str) -> (Fx, [ReservationId; 3]) {
    let mut fx = Fx::new();
    fx.ok(rules(&format!(
        r#"{{"oversell_policy":"{policy}","rules":[]}}"#
    )));
    fx.ok(receive("A", "east", 10));
    let mut ids = [ReservationId(0); 3];
    for (i, (c, q)) in [("web", 4), ("amazon", 4), ("b2b", 1)]
        .into_iter()
        .enumerate()
    {
        ids[i] = fx.res(reserve(c, &[("A", q)])).id;
        fx.ok(commit(ids[i]));
    }
    (fx, ids)
}

fn backordered(fx: &mut Fx, id: ReservationId) -> i64 {
    line(&fx.get(id), "A").backordered
}

#[test]
fn oversell_newest_first_backorders_the_latest_orders() {
    let (mut fx, [web, amazon, b2b]) = oversold("newest_first");
    fx.ok(set("A", "east", 5, None));
    // deficit 4: b2b 1, then amazon 3.
    assert_eq!(
        fx.event_kinds(),
        [
            "stock_changed",
            "oversell_incident",
            "backordered",
            "backordered"
        ]
    );
    assert!(matches!(
        &fx.events[1].kind,
        EventKind::OversellIncident { deficit: 4, .. }
    ));
    assert!(
        matches!(&fx.events[2].kind, EventKind::Backordered { id, quantity: 1, cause, .. } if *id == b2b && cause == "oversell_incident")
    );
    assert!(
        matches!(&fx.events[3].kind, EventKind::Backordered { id, quantity: 3, .. } if *id == amazon)
    );
    assert_eq!(
        [
            backordered(&mut fx, web),
            backordered(&mut fx, amazon),
            backordered(&mut fx, b2b)
        ],
        [0, 3, 1]
    );
    assert_eq!(lvl(&mut fx, "A", "east"), (5, 0, 5, 0));
    assert_eq!(fx.ats3("A"), [0, 0, 0]);
}

#[test]
fn oversell_lowest_priority_first_backorders_low_priority_channels() {
    let (mut fx, [web, amazon, b2b]) = oversold("lowest_priority_first");
    fx.ok(set("A", "east", 4, None));
    // deficit 5: b2b (1) 1, then amazon (5) 4; web (10) keeps its order.
    assert_eq!(
        [
            backordered(&mut fx, web),
            backordered(&mut fx, amazon),
            backordered(&mut fx, b2b)
        ],
        [0, 4, 1]
    );
    let (mut fx, [web, amazon, b2b]) = oversold("lowest_priority_first");
    fx.ok(set("A", "east", 0, None));
    assert_eq!(
        [
            backordered(&mut fx, web),
            backordered(&mut fx, amazon),
            backordered(&mut fx, b2b)
        ],
        [4, 4, 1]
    );
}

#[test]
fn ats_is_zero_everywhere_while_a_level_is_negative() {
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 10));
    fx.ok(receive("A", "west", 10));
    fx.res(reserve("web", &[("A", 8)]));
    // Held units are not backordered: east stays at -3.
    fx.ok(set("A", "east", 5, None));
    assert_eq!(fx.event_kinds(), ["stock_changed", "oversell_incident"]);
    assert_eq!(lvl(&mut fx, "A", "east").3, -3);
    assert_eq!(fx.ats3("A"), [0, 0, 0]);
    assert_eq!(fx.ats3("KIT"), [0, 0, 0]);
    let r = fx.refused(reserve("amazon", &[("A", 1)]));
    assert_eq!(shortages(r), short(&[("A", 1, 0)]));
    // Also with rules installed.
    fx.ok(rules(r#"{"rules":[{"kind":"buffer","units":1}]}"#));
    assert_eq!(fx.ats3("A"), [0, 0, 0]);
    fx.ok(set("A", "east", 8, None));
    assert_eq!(fx.ats3("A"), [9, 9, 9]);
}

#[test]
fn a_count_backorders_only_the_orders_on_hand_cannot_cover() {
    // 10 at east: an order of 4 committed, a cart holding 6. A count finds 8: short by 2, but
    // the 8 cover the order. The order keeps its units; the hold keeps available below zero.
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 10));
    let order = fx.res(reserve("web", &[("A", 4)])).id;
    fx.ok(commit(order));
    let cart = fx.res(reserve("amazon", &[("A", 6)])).id;
    fx.ok(set("A", "east", 8, None));
    assert_eq!(fx.event_kinds(), ["stock_changed", "oversell_incident"]);
    assert!(matches!(
        &fx.events[1].kind,
        EventKind::OversellIncident { deficit: 2, .. }
    ));
    assert_eq!(backordered(&mut fx, order), 0);
    assert_eq!(lvl(&mut fx, "A", "east"), (8, 6, 4, -2));
    assert_eq!(fx.ats3("A"), [0, 0, 0]);
    fx.ok(fulfil(order, &[("A", "east", 4, 0)]));
    // Committing the cart then commits 4 and backorders the 2 that are not there.
    assert_eq!(line(&fx.res(commit(cart)), "A").backordered, 2);
    assert_eq!(lvl(&mut fx, "A", "east"), (4, 0, 4, 0));

    // Safety stock is a buffer, not a shortage: no order is given up for it.
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 10));
    let order = fx.res(reserve("web", &[("A", 4)])).id;
    fx.ok(commit(order));
    fx.ok(mv("A", "east", Bucket::Available, Bucket::SafetyStock, 3));
    fx.ok(set("A", "east", 5, None));
    assert_eq!(fx.event_kinds(), ["stock_changed", "oversell_incident"]);
    assert_eq!(backordered(&mut fx, order), 0);
    assert_eq!(lvl(&mut fx, "A", "east"), (5, 0, 4, -2));
}

#[test]
fn a_short_commit_across_shards_reports_its_incidents_in_line_order() {
    // Four lines, each held at a level a count then left short. The SKUs are spread over the
    // shards of every machine below but the first; the events must not depend on that spread.
    let skus = ["S1", "S2", "S3", "S4"];
    let run = |shards: usize| {
        let mut fx = Fx {
            m: depot_engine::Machine::new(Limits::default(), shards),
            ..Fx::empty(Limits::default())
        };
        fx.setup_tenant(TENANT);
        for s in skus {
            fx.ok(receive(s, "east", 1));
        }
        let id = fx.res(reserve("web", &skus.map(|s| (s, 1)))).id;
        // Counted in reverse order, so that the order of the counts is not the answer.
        for s in skus.iter().rev() {
            fx.ok(set(s, "east", 0, None));
        }
        let v = fx.res(commit(id));
        assert!(skus.iter().all(|s| line(&v, s).backordered == 1));
        fx.events.clone()
    };
    let one = run(1);
    let t = Fx::new().m.front.tenant_index[&depot_engine::TenantId::new(TENANT).unwrap()];
    for shards in [2, 3, 5] {
        let spread: std::collections::BTreeSet<usize> = skus
            .iter()
            .map(|s| depot_engine::shard::shard_of(t, s, shards))
            .collect();
        assert!(spread.len() > 1, "the SKUs must span {shards} shards");
    }
    // On one shard: the commit, then per line, an incident and its backorder.
    let kinds: Vec<(&str, String)> = one
        .iter()
        .map(|e| match &e.kind {
            EventKind::ReservationCommitted { .. } => ("reservation_committed", String::new()),
            EventKind::OversellIncident { sku, .. } => ("oversell_incident", sku.to_string()),
            EventKind::Backordered { sku, .. } => ("backordered", sku.to_string()),
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    let mut want = vec![("reservation_committed", String::new())];
    for s in skus {
        want.push(("oversell_incident", s.to_string()));
        want.push(("backordered", s.to_string()));
    }
    assert_eq!(kinds, want);
    for shards in [2, 3, 5] {
        assert_eq!(run(shards), one, "events with {shards} shards");
    }
}

#[test]
fn committing_a_hold_a_count_left_short_backorders_what_is_not_on_hand() {
    // A at east 1, held by web; a count finds none. The hold stays (holds are not orders).
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 1));
    let id = fx.res(reserve("web", &[("A", 1)])).id;
    fx.ok(set("A", "east", 0, None));
    assert_eq!(lvl(&mut fx, "A", "east"), (0, 1, 0, -1));
    // Committing it commits no unit that is not there: the unit is backordered at once.
    let v = fx.res(commit(id));
    assert_eq!(v.state, ReservationState::Committed);
    assert_eq!(line(&v, "A").backordered, 1);
    assert_eq!(line(&v, "A").allocations[0].quantity, 0);
    assert_eq!(
        fx.event_kinds(),
        ["reservation_committed", "oversell_incident", "backordered"]
    );
    assert!(matches!(
        &fx.events[1].kind,
        EventKind::OversellIncident { deficit: 1, .. }
    ));
    assert!(
        matches!(&fx.events[2].kind, EventKind::Backordered { id: b, quantity: 1, cause, .. } if *b == id && cause == "oversell_incident")
    );
    assert_eq!(lvl(&mut fx, "A", "east"), (0, 0, 0, 0));
    // The warehouse cannot ship it from east, and on hand never goes below zero.
    fx.check(vec![(
        "ship a backordered unit",
        fulfil(id, &[("A", "east", 1, 0)]),
        "invalid_request:lines[0]",
    )]);
    assert_eq!(lvl(&mut fx, "A", "east"), (0, 0, 0, 0));

    // Only what on hand does not cover: 10 held by two holds of 4 and a third of 2, counted
    // at 5. Committing one hold of 4 commits 4 (on hand covers it; the other holds wait).
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 10));
    let h1 = fx.res(reserve("web", &[("A", 4)])).id;
    let h2 = fx.res(reserve("amazon", &[("A", 4)])).id;
    fx.res(reserve("b2b", &[("A", 2)]));
    fx.ok(set("A", "east", 5, None));
    assert_eq!(lvl(&mut fx, "A", "east"), (5, 10, 0, -5));
    assert_eq!(line(&fx.res(commit(h1)), "A").backordered, 0);
    assert_eq!(lvl(&mut fx, "A", "east"), (5, 6, 4, -5));
    // The second: 8 committed against 5 on hand; the newest order gives up 3.
    let v = fx.res(commit(h2));
    assert_eq!(line(&v, "A").backordered, 3);
    assert_eq!(lvl(&mut fx, "A", "east"), (5, 2, 5, -2));
    fx.ok(fulfil(h1, &[("A", "east", 4, 0)]));
    fx.ok(fulfil(h2, &[("A", "east", 1, 0)]));
    assert_eq!(lvl(&mut fx, "A", "east"), (0, 2, 0, -2));
}

// ---------------------------------------------------------------------------------------------
// idempotency

#[test]
fn an_idempotent_repeat_replays_the_first_response_and_changes_nothing() {
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 10));
    let mut req = fx.request(reserve("web", &[("A", 3)]));
    req.idempotency_key = Some("order-1".into());
    let first = fx.send(&req);
    assert!(first.outcome.is_ok() && !first.replayed);
    let digest = fx.m.digest();
    let again = fx.send(&req);
    assert_eq!(
        again,
        depot_engine::Response {
            replayed: true,
            ..first.clone()
        }
    );
    assert!(fx.events.is_empty());
    assert_eq!(fx.m.digest(), digest, "a replay changes nothing");
    assert_eq!(lvl(&mut fx, "A", "east").1, 3);

    // Another body under the same key.
    let mut other = fx.request(reserve("web", &[("A", 4)]));
    other.idempotency_key = Some("order-1".into());
    assert_eq!(
        fx.send(&other).outcome,
        Outcome::Refused(Refusal::IdempotencyKeyReused)
    );
    assert_eq!(fx.m.digest(), digest);

    // A refusal is remembered too.
    let mut big = fx.request(reserve("web", &[("A", 100)]));
    big.idempotency_key = Some("order-2".into());
    let refused = fx.send(&big);
    assert!(!refused.outcome.is_ok());
    fx.ok(receive("A", "east", 100));
    assert_eq!(
        fx.send(&big),
        depot_engine::Response {
            replayed: true,
            ..refused
        }
    );
}

#[test]
fn an_idempotency_key_is_forgotten_after_the_retention_window() {
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 10));
    let mut req = fx.request(receive("A", "east", 1));
    req.idempotency_key = Some("k".into());
    let first = fx.send(&req);
    fx.advance(24 * HOUR - 1);
    assert!(fx.send(&req).replayed);
    fx.advance(1);
    let later = fx.send(&req);
    assert!(!later.replayed && later.seq > first.seq);
    assert_eq!(fx.level("A", "east").on_hand, 12);
}

#[test]
fn idempotency_keys_are_per_tenant_and_bounded() {
    let mut fx = Fx::new();
    fx.setup_tenant("other");
    let mut req = fx.request(receive("A", "east", 1));
    req.idempotency_key = Some("k".into());
    fx.send(&req);
    fx.tenant = "other".into();
    let mut req = fx.request(receive("A", "east", 1));
    req.idempotency_key = Some("k".into());
    assert!(
        !fx.send(&req).replayed,
        "the same key of another tenant is another key"
    );
    for (key, want) in [
        (String::new(), "invalid_request:idempotency_key"),
        ("k".repeat(256), "invalid_request:idempotency_key"),
    ] {
        let mut req = fx.request(receive("A", "east", 1));
        req.idempotency_key = Some(key);
        let r = fx.send(&req);
        assert_eq!(describe(r.outcome.refusal().unwrap()), want);
    }
    let mut fx = Fx::with_limits(Limits {
        idempotency_keys_max: 1,
        ..Limits::default()
    });
    for (key, want) in [("a", true), ("b", false)] {
        let mut req = fx.request(receive("A", "east", 1));
        req.idempotency_key = Some(key.into());
        assert_eq!(fx.send(&req).outcome.is_ok(), want, "key {key}");
    }
}

#[test]
fn unlogged_requests_do_not_move_the_clock_or_forget_keys() {
    // Replays, reads and refusals before sequencing are not logged: rebuilding from the log
    // must give the state of the machine that answered them.
    let fx = Fx::empty(Limits::default());
    let with_key = |mut r: depot_engine::Request| {
        r.idempotency_key = Some("k".into());
        r
    };
    let steps = [
        (T0, fx.request(Command::CreateTenant)),
        (T0, fx.request(put_location("east", None))),
        (T0 + 10, with_key(fx.request(receive("A", "east", 5)))),
        (T0 + 20, with_key(fx.request(receive("A", "east", 5)))), // replay
        (T0 + 30, fx.request(Command::GetStock { sku: sku("A") })), // read
        (T0 + 40, fx.request(receive("A", "east", 0))),           // refused before sequencing
        (
            T0 + 50 + 24 * HOUR,
            fx.request(Command::GetStock { sku: sku("A") }),
        ), // after the key's window
        (
            T0 + 60 + 24 * HOUR,
            with_key(fx.request(receive("A", "east", 6))),
        ), // the key is forgotten: it runs
    ];
    let mut live = depot_engine::Machine::new(Limits::default(), 2);
    let mut log = Vec::new();
    for (now, req) in &steps {
        log.extend(live.execute(req, *now).2);
    }
    assert_eq!(log.len(), 4);
    let mut rebuilt = depot_engine::Machine::new(Limits::default(), 2);
    for e in &log {
        rebuilt.replay(e);
    }
    assert_eq!(rebuilt.canonical(), live.canonical());
    assert_eq!(rebuilt.digest(), live.digest());
}

// ---------------------------------------------------------------------------------------------
// tenant isolation

#[test]
fn another_tenant_cannot_see_or_touch_a_reservation() {
    let (mut fx, id) = held();
    fx.setup_tenant("other");
    fx.tenant = "other".into();
    fx.ok(receive("A", "east", 50));
    fx.check(vec![
        ("read", Command::GetReservation { id }, "not_found"),
        ("commit", commit(id), "not_found"),
        ("extend", Command::Extend { id, ttl_ms: HOUR }, "not_found"),
        ("release", Command::Release { id }, "not_found"),
        ("cancel", Command::Cancel { id }, "not_found"),
        ("fulfil", fulfil(id, &[("A", "east", 1, 0)]), "not_found"),
        ("return", ret(id, "A", "east", 1, false), "not_found"),
    ]);
    assert_eq!(fx.level("A", "east").reserved, 0);
    assert_eq!(fx.ats3("A"), [50, 50, 50]);
    fx.tenant = TENANT.into();
    assert_eq!(fx.get(id).state, ReservationState::Held);
    assert_eq!(fx.ats3("A"), [8, 8, 8]);
}

// ---------------------------------------------------------------------------------------------
// limits

#[test]
fn holds_per_shard_are_limited() {
    let mut fx = Fx::with_limits(Limits {
        holds_per_shard_max: 1,
        ..Limits::default()
    });
    let other = ["B", "C", "D", "E", "F", "G"]
        .into_iter()
        .find(|s| {
            depot_engine::shard::shard_of(0, s, 2) != depot_engine::shard::shard_of(0, "A", 2)
        })
        .expect("some SKU lives on the other shard");
    fx.ok(receive("A", "east", 10));
    fx.ok(receive(other, "east", 10));
    let id = fx.res(reserve("web", &[("A", 1)])).id;
    fx.check(vec![
        (
            "second hold on the shard",
            reserve("web", &[("A", 1)]),
            "limit_exceeded",
        ),
        (
            "the other shard has room",
            reserve("web", &[(other, 1)]),
            "ok",
        ),
    ]);
    // An ended reservation keeps its slot until it is dropped.
    fx.ok(Command::Release { id });
    fx.check(vec![(
        "released but retained",
        reserve("web", &[("A", 1)]),
        "limit_exceeded",
    )]);
    fx.advance(24 * HOUR);
    fx.tick();
    fx.check(vec![("dropped", reserve("web", &[("A", 1)]), "ok")]);
}

#[test]
fn fulfil_and_commit_line_counts_are_limited() {
    let mut fx = Fx::with_limits(Limits {
        lines_per_reservation_max: 1,
        ..Limits::default()
    });
    fx.ok(receive("A", "east", 10));
    let id = fx.res(reserve("web", &[("A", 2)])).id;
    fx.check(vec![
        (
            "two commit lines",
            commit_lines(id, &[("A", Some(1)), ("B", Some(1))]),
            "invalid_request:lines",
        ),
        (
            "two reserve lines",
            reserve("web", &[("A", 1), ("B", 1)]),
            "invalid_request:lines",
        ),
    ]);
    fx.ok(commit(id));
    fx.check(vec![(
        "two fulfil lines",
        fulfil(id, &[("A", "east", 1, 0), ("A", "west", 1, 0)]),
        "invalid_request:lines",
    )]);
}

// ---------------------------------------------------------------------------------------------
// events

#[test]
fn events_number_every_change_of_a_command() {
    let (mut fx, id) = committed();
    let resp = fx.exec(fulfil(id, &[("A", "east", 3, 2)]));
    let seq = resp.seq.unwrap();
    let numbered: Vec<(u64, u32)> = fx.events.iter().map(|e| (e.seq, e.index)).collect();
    assert_eq!(numbered, [(seq, 0), (seq, 1), (seq, 2)]);
    assert!(matches!(resp.outcome, Outcome::Ok(Reply::Done)));
    // Held event carries the granted lines.
    let resp = fx.exec(reserve("web", &[("A", 1)]));
    let Some(EventKind::ReservationHeld { id, channel, lines }) =
        fx.events.first().map(|e| e.kind.clone())
    else {
        panic!()
    };
    assert_eq!(
        (id.0, channel.as_str(), lines.len()),
        (resp.seq.unwrap(), "web", 1)
    );
}

#[test]
fn short_pick_reallocates_to_each_item_that_lost_units() {
    // All re-allocated (and backordered) units went to the first item of the SKU, leaving a
    // bundle component with more open units than it asked for.
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 3));
    fx.ok(receive("A", "west", 2));
    fx.ok(receive("B", "east", 10));
    let id = fx.res(reserve("web", &[("KIT", 1), ("A", 2)])).id;
    fx.ok(commit(id));
    // East loses all 3 A: 1 of the kit's, 2 of the plain line's. West can place 2.
    fx.ok(fulfil(id, &[("A", "east", 0, 3)]));
    let v = fx.get(id);
    let kit_a = line(&v, "KIT")
        .components
        .iter()
        .find(|c| c.sku.as_str() == "A")
        .unwrap()
        .clone();
    let plain = line(&v, "A").clone();
    let open = |allocs: &[depot_engine::outcome::AllocationView]| {
        allocs.iter().map(|a| a.quantity).sum::<i64>()
    };
    assert_eq!(
        (open(&kit_a.allocations), kit_a.backordered),
        (1, 0),
        "kit component: {kit_a:?}"
    );
    assert_eq!(
        (open(&plain.allocations), plain.backordered),
        (1, 1),
        "plain line: {plain:?}"
    );
    assert_eq!(lvl(&mut fx, "A", "west"), (2, 0, 2, 0));
    assert_eq!(lvl(&mut fx, "A", "east"), (0, 0, 0, 0));
}

#[test]
fn commit_part_of_a_bundle_line_keeps_whole_kits() {
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 5));
    fx.ok(receive("B", "west", 10));
    let id = fx.res(reserve("web", &[("KIT", 3)])).id;
    let v = fx.res(commit_lines(id, &[("KIT", Some(2))]));
    assert_eq!(line(&v, "KIT").quantity, 2);
    assert_eq!(lvl(&mut fx, "A", "east"), (5, 0, 2, 3));
    assert_eq!(lvl(&mut fx, "B", "west"), (10, 0, 4, 6));
}

#[test]
fn a_hold_due_later_in_the_ticked_second_still_expires() {
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 5));
    let id = fx.res(reserve_ttl("web", &[("A", 1)], 1_500)).id;
    fx.advance(1_200);
    assert_eq!(fx.tick().0, 0);
    fx.advance(300);
    assert_eq!(fx.tick().0, 1);
    assert_eq!(fx.get(id).state, ReservationState::Expired);
    // An extended hold expires at its new time, not its old one.
    let id = fx.res(reserve_ttl("web", &[("A", 1)], 1_000)).id;
    fx.ok(Command::Extend { id, ttl_ms: 5_000 });
    fx.advance(1_000);
    assert_eq!(fx.tick().0, 0);
    fx.advance(4_000);
    assert_eq!(fx.tick().0, 1);
}

#[test]
fn a_later_replay_forgotten_key_and_full_key_table() {
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 10));
    let mut req = fx.request(reserve("web", &[("A", 1)]));
    req.idempotency_key = Some("k".into());
    let first = fx.send(&req);
    let digest = fx.m.digest();
    fx.advance(HOUR);
    assert!(fx.send(&req).replayed);
    assert_eq!(
        fx.m.digest(),
        digest,
        "a replay an hour later changes nothing, not even the clock"
    );
    // Forgotten, executed again, and the new response is the one replayed.
    fx.advance(24 * HOUR);
    let second = fx.send(&req);
    assert!(!second.replayed && second.seq > first.seq);
    assert_eq!(
        fx.send(&req),
        depot_engine::Response {
            replayed: true,
            ..second
        }
    );
    // A full table counts only keys still remembered.
    let mut fx = Fx::with_limits(Limits {
        idempotency_keys_max: 1,
        ..Limits::default()
    });
    for (i, key) in ["a", "b"].into_iter().enumerate() {
        fx.advance(i as u64 * 24 * HOUR);
        let mut req = fx.request(receive("A", "east", 1));
        req.idempotency_key = Some(key.into());
        assert!(fx.send(&req).outcome.is_ok(), "key {key}");
    }
}

#[test]
fn the_digest_sees_parts_of_one_reservation_that_disagree() {
    let mut fx = Fx::new();
    let skus = ["A", "B", "C", "D", "E", "F"];
    for s in skus {
        fx.ok(receive(s, "east", 10));
    }
    let all: Vec<(&str, i64)> = skus.iter().map(|s| (*s, 1)).collect();
    let id = fx.res(reserve_ttl("web", &all, 60_000)).id;
    let holding: Vec<usize> = (0..fx.m.shards.len())
        .filter(|&i| fx.m.shards[i].parts.contains_key(&id))
        .collect();
    assert!(
        holding.len() > 1,
        "the reservation spans shards: {holding:?}"
    );
    let before = fx.m.digest();
    let last = *holding.last().unwrap();
    let part = fx.m.shards[last].parts.get_mut(&id).unwrap();
    part.expires_at += 1;
    assert_ne!(fx.m.digest(), before, "one part's header changed");
    assert!(fx.m.canonical().iter().any(|l| l.contains("DISAGREES")));
}
