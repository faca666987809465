//! Configuration and stock operations: every effect and every refusal of `docs/allocation.md`
//! "Stock levels", plus tenants, locations, channels and bundles.

mod common;

use common::*;
use depot_engine::limits::QUANTITY_MAX;
use depot_engine::{Bucket, Command, EventKind, Limits, Outcome, Refusal, Reply, TenantId};
use rust_decimal::Decimal;

// ---------------------------------------------------------------------------------------------
// tenants, locations, channels

#[test]
fn create_tenant_twice_is_invalid_state() {
    let mut fx = Fx::new();
    fx.check(vec![("again", Command::CreateTenant, "invalid_state")]);
    fx.tenant = "_system".into();
    fx.check(vec![(
        "reserved id",
        Command::CreateTenant,
        "invalid_request:id",
    )]);
    fx.tenant = "other".into();
    fx.check(vec![("new tenant", Command::CreateTenant, "ok")]);
    assert_eq!(fx.event_kinds(), ["tenant_created"]);
}

#[test]
fn commands_of_an_unknown_tenant_are_not_found() {
    let mut fx = Fx::new();
    fx.tenant = "nobody".into();
    fx.check(vec![
        ("receive", receive("A", "east", 1), "not_found"),
        ("location", put_location("x", None), "not_found"),
        ("stock", Command::GetStock { sku: sku("A") }, "not_found"),
        ("reserve", reserve("web", &[("A", 1)]), "not_found"),
    ]);
}

#[test]
fn tenant_limit_refuses_one_more() {
    let mut fx = Fx::with_limits(Limits {
        tenants_max: 1,
        ..Limits::default()
    });
    fx.tenant = "second".into();
    fx.check(vec![(
        "over the limit",
        Command::CreateTenant,
        "limit_exceeded",
    )]);
}

#[test]
fn put_location_and_channel_create_then_replace() {
    let mut fx = Fx::new();
    fx.ok(put_location("north", Some("us-north")));
    assert_eq!(fx.event_kinds(), ["location_put"]);
    fx.ok(put_channel("pos", 3));
    assert_eq!(fx.event_kinds(), ["channel_put"]);
    // Replacing keeps one entry each.
    fx.ok(put_location("north", None));
    fx.ok(put_channel("pos", 7));
    let cfg = fx.m.front.config(0).unwrap().clone();
    assert_eq!(cfg.locations.len(), 4);
    assert_eq!(cfg.locations[3].region, None);
    assert_eq!(cfg.channels.len(), 4);
    assert_eq!(cfg.channels[3].priority, 7);
    // A new channel shows in every SKU's ATS.
    fx.ok(receive("A", "east", 5));
    assert_eq!(fx.ats("A", "pos"), 5);
}

#[test]
fn location_and_channel_limits_and_text_limits() {
    let mut fx = Fx::with_limits(Limits {
        locations_per_tenant_max: 3,
        channels_per_tenant_max: 3,
        text_len_max: 20,
        ..Limits::default()
    });
    let long = "x".repeat(21);
    fx.check(vec![
        (
            "fourth location",
            put_location("north", None),
            "limit_exceeded",
        ),
        (
            "replacing is fine",
            put_location("east", Some("us-east")),
            "ok",
        ),
        ("fourth channel", put_channel("pos", 1), "limit_exceeded"),
        (
            "long name",
            Command::PutLocation {
                location: loc("east"),
                kind: depot_engine::LocationKind::Store,
                name: long.clone(),
                region: None,
                wms: None,
            },
            "invalid_request:name",
        ),
        (
            "long region",
            put_location("east", Some(&long)),
            "invalid_request:region",
        ),
    ]);
}

// ---------------------------------------------------------------------------------------------
// bundles

#[test]
fn bundle_validation_refusals() {
    let mut fx = Fx::new();
    let many: Vec<(String, i64)> = (0..33).map(|i| (format!("C{i}"), 1)).collect();
    let many: Vec<(&str, i64)> = many.iter().map(|(s, q)| (s.as_str(), *q)).collect();
    fx.check(vec![
        (
            "no components",
            put_bundle("B2", &[]),
            "invalid_request:components",
        ),
        (
            "too many components",
            put_bundle("B2", &many),
            "invalid_request:components",
        ),
        (
            "zero per bundle",
            put_bundle("B2", &[("A", 0)]),
            "invalid_request:components[0].quantity",
        ),
        (
            "too many per bundle",
            put_bundle("B2", &[("X", 1), ("A", 1_000_001)]),
            "invalid_request:components[1].quantity",
        ),
        (
            "contains itself",
            put_bundle("B2", &[("X", 1), ("B2", 1)]),
            "invalid_request:components[1]",
        ),
        (
            "nested",
            put_bundle("B2", &[("KIT", 1)]),
            "invalid_request:components[0]",
        ),
        (
            "listed twice",
            put_bundle("B2", &[("X", 1), ("Y", 1), ("X", 2)]),
            "invalid_request:components[2]",
        ),
        (
            "a component becomes a bundle",
            put_bundle("A", &[("X", 1)]),
            "invalid_request:sku",
        ),
        ("valid", put_bundle("B2", &[("X", 1), ("A", 3)]), "ok"),
        ("replace a bundle", put_bundle("B2", &[("X", 2)]), "ok"),
    ]);
    assert_eq!(fx.event_kinds(), ["bundle_put"]);
    assert_eq!(fx.stock("B2").components.len(), 1);
}

#[test]
fn stock_operations_on_a_bundle_are_refused() {
    let mut fx = Fx::new();
    fx.check(vec![
        ("receive", receive("KIT", "east", 1), "invalid_request:sku"),
        (
            "expect",
            expect("KIT", "east", 1, None),
            "invalid_request:sku",
        ),
        ("adjust", adjust("KIT", "east", 1), "invalid_request:sku"),
        ("set", set("KIT", "east", 1, None), "invalid_request:sku"),
        (
            "move",
            mv("KIT", "east", Bucket::Available, Bucket::Damaged, 1),
            "invalid_request:sku",
        ),
        (
            "transfer",
            transfer("KIT", "east", "west", 1),
            "invalid_request:sku",
        ),
    ]);
}

#[test]
fn bundle_stock_view_is_min_over_components() {
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 5));
    fx.ok(receive("B", "west", 7));
    let v = fx.stock("KIT");
    assert!(v.locations.is_empty());
    assert_eq!(v.components.len(), 2);
    // min(5 / 1, 7 / 2) = 3 on every channel.
    assert_eq!(fx.ats3("KIT"), [3, 3, 3]);
}

// ---------------------------------------------------------------------------------------------
// stock operations: effects

#[test]
fn receive_raises_on_hand_consumes_incoming_and_averages_cost() {
    let mut fx = Fx::new();
    fx.ok(expect("A", "east", 10, Some(T0 + HOUR)));
    let l = fx.level("A", "east");
    assert_eq!(
        (l.on_hand, l.incoming, l.incoming_expected_at, l.available),
        (0, 10, Some(T0 + HOUR), 0)
    );
    fx.ok(Command::Receive {
        sku: sku("A"),
        location: loc("east"),
        quantity: 4,
        unit_cost: Some(Decimal::new(1000, 2)),
        reason: "po".into(),
    });
    let l = fx.level("A", "east");
    assert_eq!((l.on_hand, l.incoming, l.available), (4, 6, 4));
    fx.ok(Command::Receive {
        sku: sku("A"),
        location: loc("east"),
        quantity: 6,
        unit_cost: Some(Decimal::new(2000, 2)),
        reason: "po".into(),
    });
    let l = fx.level("A", "east");
    assert_eq!(
        (l.on_hand, l.incoming, l.incoming_expected_at),
        (10, 0, None)
    );
    // (4 x 10 + 6 x 20) / 10 = 16
    assert_eq!(fx.stock("A").average_unit_cost, Some(Decimal::new(16, 0)));
    // Receiving more than is incoming leaves incoming at zero, not negative.
    fx.ok(expect("A", "east", 2, None));
    fx.ok(receive("A", "east", 5));
    let events = std::mem::take(&mut fx.events);
    assert_eq!(fx.level("A", "east").incoming, 0);
    match &events[0].kind {
        EventKind::StockChanged {
            op, level, reason, ..
        } => {
            assert_eq!(
                (op.as_str(), level.on_hand, reason.as_str()),
                ("receive", 15, "po")
            );
        }
        e => panic!("unexpected event {e:?}"),
    }
}

#[test]
fn adjust_set_move_transfer_effects() {
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 10));
    fx.ok(adjust("A", "east", 5));
    assert_eq!(fx.level("A", "east").on_hand, 15);
    fx.ok(adjust("A", "east", -3));
    assert_eq!(fx.level("A", "east").on_hand, 12);
    fx.ok(set("A", "east", 20, Some(12)));
    assert_eq!(fx.level("A", "east").on_hand, 20);
    fx.ok(set("A", "east", 18, None));
    assert_eq!(fx.level("A", "east").on_hand, 18);

    fx.ok(mv("A", "east", Bucket::Available, Bucket::Damaged, 3));
    fx.ok(mv(
        "A",
        "east",
        Bucket::Available,
        Bucket::QualityControl,
        2,
    ));
    fx.ok(mv("A", "east", Bucket::Available, Bucket::SafetyStock, 1));
    let l = fx.level("A", "east");
    assert_eq!(
        (
            l.on_hand,
            l.damaged,
            l.quality_control,
            l.safety_stock,
            l.available
        ),
        (18, 3, 2, 1, 12)
    );
    fx.ok(mv(
        "A",
        "east",
        Bucket::QualityControl,
        Bucket::Available,
        2,
    ));
    fx.ok(mv("A", "east", Bucket::Damaged, Bucket::SafetyStock, 1));
    let l = fx.level("A", "east");
    assert_eq!(
        (l.damaged, l.quality_control, l.safety_stock, l.available),
        (2, 0, 2, 14)
    );
    assert_eq!(fx.ats("A", "web"), 14);

    fx.ok(Command::Transfer {
        sku: sku("A"),
        location: loc("east"),
        to_location: loc("west"),
        quantity: 4,
        expected_at: Some(T0 + 5),
        reason: "x".into(),
    });
    assert_eq!(fx.event_kinds(), ["stock_changed", "stock_changed"]);
    let (e, w) = (fx.level("A", "east"), fx.level("A", "west"));
    assert_eq!((e.on_hand, e.available), (14, 10));
    assert_eq!(
        (w.on_hand, w.incoming, w.incoming_expected_at),
        (0, 4, Some(T0 + 5))
    );
    fx.ok(receive("A", "west", 4));
    assert_eq!(fx.level("A", "west").incoming, 0);
}

#[test]
fn a_missing_level_reads_as_zeros() {
    let mut fx = Fx::new();
    let v = fx.stock("NEVER");
    assert!(v.locations.is_empty());
    assert_eq!(fx.ats3("NEVER"), [0, 0, 0]);
    // set with compare 0 on a missing level succeeds: on_hand reads 0.
    fx.check(vec![(
        "compare against zero",
        set("NEW", "east", 3, Some(0)),
        "ok",
    )]);
    assert_eq!(fx.level("NEW", "east").on_hand, 3);
}

// ---------------------------------------------------------------------------------------------
// stock operations: refusals

#[test]
fn stock_refusals() {
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 10));
    fx.res(reserve("web", &[("A", 4)])); // reserved 4, available 6
    let long = "r".repeat(1025);
    fx.check(vec![
        // quantities out of range
        (
            "receive 0",
            receive("A", "east", 0),
            "invalid_request:quantity",
        ),
        (
            "receive too many",
            receive("A", "east", QUANTITY_MAX + 1),
            "invalid_request:quantity",
        ),
        ("receive max", receive("Z", "east", QUANTITY_MAX), "ok"),
        (
            "expect 0",
            expect("A", "east", 0, None),
            "invalid_request:quantity",
        ),
        (
            "expect negative",
            expect("A", "east", -1, None),
            "invalid_request:quantity",
        ),
        (
            "adjust 0",
            adjust("A", "east", 0),
            "invalid_request:quantity",
        ),
        (
            "adjust too large",
            adjust("A", "east", QUANTITY_MAX + 1),
            "invalid_request:quantity",
        ),
        (
            "adjust too small",
            adjust("A", "east", -QUANTITY_MAX - 1),
            "invalid_request:quantity",
        ),
        (
            "set negative",
            set("A", "east", -1, None),
            "invalid_request:quantity",
        ),
        (
            "set too large",
            set("A", "east", QUANTITY_MAX + 1, None),
            "invalid_request:quantity",
        ),
        (
            "compare negative",
            set("A", "east", 1, Some(-1)),
            "invalid_request:compare_quantity",
        ),
        (
            "move 0",
            mv("A", "east", Bucket::Available, Bucket::Damaged, 0),
            "invalid_request:quantity",
        ),
        (
            "transfer 0",
            transfer("A", "east", "west", 0),
            "invalid_request:quantity",
        ),
        // oversized text
        (
            "long reason",
            Command::Receive {
                sku: sku("A"),
                location: loc("east"),
                quantity: 1,
                unit_cost: None,
                reason: long.clone(),
            },
            "invalid_request:reason",
        ),
        (
            "long adjust reason",
            Command::Adjust {
                sku: sku("A"),
                location: loc("east"),
                delta: 1,
                reason: long.clone(),
            },
            "invalid_request:reason",
        ),
        (
            "negative cost",
            Command::Receive {
                sku: sku("A"),
                location: loc("east"),
                quantity: 1,
                unit_cost: Some(Decimal::new(-1, 0)),
                reason: String::new(),
            },
            "invalid_request:unit_cost",
        ),
        // unknown locations
        ("receive unknown", receive("A", "mars", 1), "not_found"),
        ("expect unknown", expect("A", "mars", 1, None), "not_found"),
        ("adjust unknown", adjust("A", "mars", 1), "not_found"),
        ("set unknown", set("A", "mars", 1, None), "not_found"),
        (
            "move unknown",
            mv("A", "mars", Bucket::Available, Bucket::Damaged, 1),
            "not_found",
        ),
        (
            "transfer from unknown",
            transfer("A", "mars", "west", 1),
            "not_found",
        ),
        (
            "transfer to unknown",
            transfer("A", "east", "mars", 1),
            "not_found",
        ),
        // state
        (
            "adjust below zero on_hand",
            adjust("A", "west", -1),
            "invalid_state",
        ),
        (
            "adjust below zero available",
            adjust("A", "east", -7),
            "invalid_state",
        ),
        (
            "adjust to exactly zero available",
            adjust("A", "east", -6),
            "ok",
        ),
        (
            "compare mismatch",
            set("A", "east", 50, Some(5)),
            "compare_failed",
        ),
        (
            "move more than available",
            mv("A", "east", Bucket::Available, Bucket::Damaged, 1),
            "invalid_state",
        ),
        (
            "move same bucket",
            mv("A", "east", Bucket::Damaged, Bucket::Damaged, 1),
            "invalid_request:to",
        ),
        (
            "move more than damaged",
            mv("A", "east", Bucket::Damaged, Bucket::Available, 1),
            "invalid_state",
        ),
        (
            "transfer more than available",
            transfer("A", "east", "west", 1),
            "invalid_state",
        ),
        (
            "transfer to itself",
            transfer("A", "east", "east", 1),
            "invalid_request:to_location",
        ),
    ]);
    let l = fx.level("A", "east");
    assert_eq!((l.on_hand, l.reserved, l.available), (4, 4, 0));
}

#[test]
fn compare_failed_reports_expected_and_actual() {
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 7));
    assert_eq!(
        fx.refused(set("A", "east", 1, Some(9))),
        Refusal::CompareFailed {
            expected: 9,
            actual: 7
        }
    );
}

#[test]
fn adjust_by_i64_min_is_refused_not_a_panic() {
    // `delta.abs()` overflowed for i64::MIN.
    let mut fx = Fx::new();
    fx.check(vec![
        (
            "i64::MIN",
            adjust("A", "east", i64::MIN),
            "invalid_request:quantity",
        ),
        (
            "i64::MAX",
            adjust("A", "east", i64::MAX),
            "invalid_request:quantity",
        ),
    ]);
}

#[test]
fn extreme_quantities_are_refused_not_a_panic() {
    let mut fx = Fx::new();
    fx.check(vec![
        (
            "receive i64::MAX",
            receive("A", "east", i64::MAX),
            "invalid_request:quantity",
        ),
        (
            "receive i64::MIN",
            receive("A", "east", i64::MIN),
            "invalid_request:quantity",
        ),
        (
            "set i64::MIN",
            set("A", "east", i64::MIN, None),
            "invalid_request:quantity",
        ),
        (
            "compare i64::MAX",
            set("A", "east", 1, Some(i64::MAX)),
            "invalid_request:compare_quantity",
        ),
        (
            "reserve i64::MAX",
            reserve("web", &[("A", i64::MAX)]),
            "invalid_request:lines[0].quantity",
        ),
        (
            "reserve i64::MIN",
            reserve("web", &[("A", i64::MIN)]),
            "invalid_request:lines[0].quantity",
        ),
    ]);
}

#[test]
fn stock_events_carry_the_level_after_the_change() {
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 3));
    fx.ok(adjust("A", "east", 2));
    assert_eq!(fx.events.len(), 1);
    let Some(EventKind::StockChanged { op, level, .. }) = fx.events.first().map(|e| &e.kind) else {
        panic!("{:?}", fx.events)
    };
    assert_eq!(
        (op.as_str(), level.on_hand, level.available),
        ("adjust", 5, 5)
    );
    assert_eq!(fx.events[0].tenant, TenantId::new(TENANT).unwrap());
    assert_eq!(fx.events[0].key_id, "key_test");
}

#[test]
fn reads_consume_no_sequence_number() {
    let mut fx = Fx::new();
    let seq = fx.m.front.seq;
    let r = fx.exec(Command::GetStock { sku: sku("A") });
    assert!(matches!(r.outcome, Outcome::Ok(Reply::Stock(_))));
    assert_eq!((r.seq, fx.m.front.seq), (None, seq));
    let r = fx.exec(receive("A", "east", 1));
    assert_eq!(r.seq, Some(seq + 1));
}

#[test]
fn a_bundle_put_over_a_stocked_sku_hides_its_levels() {
    // Documented limitation: the front does not know stock levels, so it cannot refuse this.
    let mut fx = Fx::new();
    fx.ok(receive("X", "east", 5));
    fx.ok(put_bundle("X", &[("Y", 1)]));
    let v = fx.stock("X");
    assert!(v.locations.is_empty());
    assert_eq!(fx.ats3("X"), [0, 0, 0]);
    fx.check(vec![(
        "stock ops are refused",
        receive("X", "east", 1),
        "invalid_request:sku",
    )]);
}

#[test]
fn a_level_never_grows_past_level_max() {
    use depot_engine::limits::LEVEL_MAX;
    let mut fx = Fx::new();
    let receipts = LEVEL_MAX / QUANTITY_MAX;
    for _ in 0..receipts {
        fx.ok(receive("A", "east", QUANTITY_MAX));
    }
    let room = LEVEL_MAX - receipts * QUANTITY_MAX;
    for (name, cmd) in [
        ("receive", receive("A", "east", room + 1)),
        ("adjust", adjust("A", "east", room + 1)),
    ] {
        let r = fx.refused(cmd);
        assert!(
            matches!(&r, Refusal::InvalidState { message } if message.contains("on_hand would be")),
            "{name}: {r:?}"
        );
    }
    fx.ok(receive("A", "east", room));
    for _ in 0..receipts {
        fx.ok(expect("A", "west", QUANTITY_MAX, None));
    }
    let r = fx.refused(transfer("A", "east", "west", QUANTITY_MAX));
    assert!(
        matches!(&r, Refusal::InvalidState { message } if message.contains("incoming would be")),
        "{r:?}"
    );
    let r = fx.refused(expect("A", "west", QUANTITY_MAX, None));
    assert!(matches!(r, Refusal::InvalidState { .. }), "{r:?}");
}

#[test]
fn a_return_never_takes_a_level_past_level_max() {
    use depot_engine::limits::LEVEL_MAX;
    let mut fx = Fx::new();
    fx.ok(receive("A", "east", 5));
    let id = fx.res(reserve("web", &[("A", 5)])).id;
    fx.ok(commit(id));
    fx.ok(fulfil(id, &[("A", "east", 5, 0)]));
    // Refill the level to 2 units below the bound.
    let receipts = (LEVEL_MAX - 2) / QUANTITY_MAX;
    for _ in 0..receipts {
        fx.ok(receive("A", "east", QUANTITY_MAX));
    }
    fx.ok(receive(
        "A",
        "east",
        LEVEL_MAX - 2 - receipts * QUANTITY_MAX,
    ));
    let r = fx.refused(ret(id, "A", "east", 3, false));
    assert!(
        matches!(&r, Refusal::InvalidState { message }
            if message.contains(&format!("on_hand would be {}", LEVEL_MAX + 1))),
        "{r:?}"
    );
    // What fits is taken back.
    fx.ok(ret(id, "A", "east", 2, false));
    assert_eq!(fx.stock("A").locations[0].on_hand, LEVEL_MAX);
}
