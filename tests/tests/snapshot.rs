//! The state image: taken from a machine, archived, validated and loaded into any number of
//! shards, it gives the same digest, and the loaded machine goes on exactly as the original.

use depot_engine::front::UNKNOWN_FINGERPRINT;
use depot_engine::snapshot::{from_bytes, load, to_bytes};
use depot_engine::{
    ChannelId, ChannelKind, Command, CommitLine, Component, FillPolicy, FulfilLine, Limits,
    LineRequest, LocationId, LocationKind, Machine, Request, ReservationId, Response, Sku,
    TenantId,
};

fn req(command: Command) -> Request {
    Request {
        tenant: TenantId::new("acme").unwrap(),
        key_id: "k1".into(),
        idempotency_key: None,
        command,
    }
}

fn sku(s: &str) -> Sku {
    Sku::new(s).unwrap()
}

fn loc(s: &str) -> LocationId {
    LocationId::new(s).unwrap()
}

fn reserve(lines: &[(&str, i64)], ttl_ms: u64) -> Command {
    Command::Reserve {
        channel: ChannelId::new("web").unwrap(),
        lines: lines
            .iter()
            .map(|(s, q)| LineRequest {
                sku: sku(s),
                quantity: *q,
            })
            .collect(),
        ttl_ms: Some(ttl_ms),
        order_ref: Some("order-1".into()),
        ship_to_region: None,
        fill: FillPolicy::AllOrNothing,
    }
}

/// A state with every kind of record: tenants, config, rules, bundles, levels with every
/// bucket, held, committed, fulfilled, expired and backordered reservations, and a key.
fn busy_machine() -> Machine {
    let mut m = Machine::new(Limits::default(), 2);
    let mut run = |c: Command, now: u64| m.execute(&req(c), now).0;
    run(Command::CreateTenant, 1_000);
    for (l, r) in [("east", "us-east"), ("west", "us-west")] {
        run(
            Command::PutLocation {
                location: loc(l),
                kind: LocationKind::Warehouse,
                name: l.into(),
                region: Some(r.into()),
                wms: None,
            },
            1_000,
        );
    }
    run(
        Command::PutChannel {
            channel: ChannelId::new("web").unwrap(),
            kind: ChannelKind::Shopify,
            priority: 5,
        },
        1_000,
    );
    run(
        Command::PutChannel {
            channel: ChannelId::new("b2b").unwrap(),
            kind: ChannelKind::B2b,
            priority: 1,
        },
        1_000,
    );
    let rules = serde_json::from_value(serde_json::json!({
        "oversell_policy": "lowest_priority_first",
        "rules": [{"id": "fence", "kind": "ring_fence", "channel": "b2b", "units": 3},
                  {"id": "near", "kind": "routing", "strategy": "most_stock"}]
    }))
    .unwrap();
    run(Command::PutRules { document: rules }, 1_000);
    run(
        Command::PutBundle {
            sku: sku("kit"),
            components: vec![
                Component {
                    sku: sku("mug"),
                    quantity: 2,
                },
                Component {
                    sku: sku("tea"),
                    quantity: 1,
                },
            ],
        },
        1_000,
    );
    for (s, l, q) in [
        ("mug", "east", 30),
        ("mug", "west", 12),
        ("tea", "east", 20),
        ("pen", "west", 9),
    ] {
        run(
            Command::Receive {
                sku: sku(s),
                location: loc(l),
                quantity: q,
                unit_cost: Some("1.25".parse().unwrap()),
                reason: "po".into(),
            },
            2_000,
        );
    }
    run(
        Command::Move {
            sku: sku("pen"),
            location: loc("west"),
            from: depot_engine::Bucket::Available,
            to: depot_engine::Bucket::Damaged,
            quantity: 2,
            reason: "box".into(),
        },
        2_000,
    );
    run(
        Command::Expect {
            sku: sku("tea"),
            location: loc("west"),
            quantity: 5,
            expected_at: Some(9_000_000),
            reason: "asn".into(),
        },
        2_000,
    );
    let held = run(reserve(&[("kit", 2), ("pen", 1)], 60_000), 3_000);
    let committed = run(reserve(&[("mug", 4), ("tea", 2)], 60_000), 3_000);
    let short = run(reserve(&[("mug", 3)], 60_000), 3_000);
    let _expiring = run(reserve(&[("tea", 1)], 1_000), 3_000);
    // A keyed bundle reservation: its stored response has components.
    let keyed_kit = Request {
        idempotency_key: Some("pay-kit".into()),
        ..req(reserve(&[("kit", 1)], 60_000))
    };
    let kit = m.execute(&keyed_kit, 3_000).0;
    assert!(kit.outcome.is_ok());
    let mut run = |c: Command, now: u64| m.execute(&req(c), now).0;
    let id = |r: &Response| ReservationId(r.seq.unwrap());
    // Committed since: its stored answer (held) is no longer the reservation's view.
    run(
        Command::Commit {
            id: id(&kit),
            lines: None,
        },
        4_000,
    );
    run(
        Command::Commit {
            id: id(&committed),
            lines: Some(vec![CommitLine {
                sku: sku("mug"),
                quantity: Some(3),
            }]),
        },
        4_000,
    );
    run(
        Command::Commit {
            id: id(&short),
            lines: None,
        },
        4_000,
    );
    let fulfil = FulfilLine {
        sku: sku("mug"),
        location: loc("east"),
        quantity: 1,
        missing: 1,
    };
    run(
        Command::Fulfil {
            id: id(&short),
            lines: vec![fulfil],
        },
        5_000,
    );
    run(Command::Tick, 10_000);
    run(
        Command::Set {
            sku: sku("tea"),
            location: loc("east"),
            quantity: 1,
            compare_quantity: None,
            reason: "count".into(),
        },
        11_000,
    );
    let keyed = Request {
        idempotency_key: Some("pay-1".into()),
        ..req(reserve(&[("pen", 1)], 60_000))
    };
    m.execute(&keyed, 12_000);
    // Keyed answers that are not a reservation's: a refusal and a receipt.
    for (key, command) in [
        ("pay-too-many", reserve(&[("pen", 500)], 60_000)),
        (
            "po-7",
            Command::Receive {
                sku: sku("pen"),
                location: loc("west"),
                quantity: 4,
                unit_cost: None,
                reason: "po".into(),
            },
        ),
    ] {
        let keyed = Request {
            idempotency_key: Some(key.into()),
            ..req(command)
        };
        m.execute(&keyed, 12_000);
    }
    let _ = held;
    m
}

#[test]
fn responses_are_stored_field_by_field_and_version_1_images_still_load() {
    use depot_engine::snapshot::{v1, ResponseImage, IMAGE_VERSION};
    let m = busy_machine();
    let image = m.image();
    let stored: Vec<&ResponseImage> = image
        .idempotency
        .iter()
        .map(|e| e.response.as_ref().expect("answered"))
        .collect();
    assert_eq!(stored.len(), 4);
    // A reservation's answer that its reservation still shows by reference (`pay-1`, held),
    // one it no longer shows field by field (`pay-kit`, committed since: a bundle's, with its
    // components), the others as JSON.
    let compact: Vec<_> = stored
        .iter()
        .filter_map(|r| match r {
            ResponseImage::Reservation(v) => Some(v),
            _ => None,
        })
        .collect();
    assert_eq!(compact.len(), 1);
    assert_eq!(compact[0].state, 0, "held when answered");
    assert!(compact[0].lines.iter().any(|l| !l.components.is_empty()));
    let referenced: Vec<_> = stored
        .iter()
        .filter_map(|r| match r {
            ResponseImage::Reference(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(referenced.len(), 1);
    assert_eq!(
        Some(referenced[0].id),
        referenced[0].seq,
        "the hold the key made"
    );
    assert_eq!(
        stored
            .iter()
            .filter(|r| matches!(r, ResponseImage::Json(_)))
            .count(),
        2
    );
    let again = load(
        &from_bytes(&to_bytes(&image)).unwrap(),
        Limits::default(),
        3,
    )
    .unwrap();
    assert_eq!(again.digest(), m.digest());

    // The same state written by version 1: every response as JSON.
    let old = from_bytes(&v1::to_bytes(&image)).expect("a version 1 image reads");
    assert_eq!(old.version, IMAGE_VERSION);
    assert!(old
        .idempotency
        .iter()
        .all(|e| matches!(e.response, Some(ResponseImage::Json(_)))));
    assert_ne!(old, image);
    // Its fingerprints hashed the commands' JSON: they are forgotten (see the next test).
    assert!(old
        .idempotency
        .iter()
        .all(|e| e.fingerprint == UNKNOWN_FINGERPRINT));
    let upgraded = load(&old, Limits::default(), 2).unwrap();
    let mut forgotten = image.clone();
    for e in &mut forgotten.idempotency {
        e.fingerprint = UNKNOWN_FINGERPRINT;
    }
    let expected = load(&forgotten, Limits::default(), 3).unwrap();
    assert_eq!(upgraded.canonical(), expected.canonical());
    assert_eq!(upgraded.digest(), expected.digest());
    // Its next image is in the current layout again.
    assert_eq!(upgraded.image(), forgotten);
}

/// `command` under the idempotency key `key`.
fn keyed(key: &str, command: Command) -> Request {
    Request {
        idempotency_key: Some(key.into()),
        ..req(command)
    }
}

/// A repeat of a key with another body: refused.
fn assert_key_reused(r: &Response) {
    use depot_engine::{Outcome, Refusal};
    assert!(
        matches!(r.outcome, Outcome::Refused(Refusal::IdempotencyKeyReused)),
        "{:?}",
        r.outcome
    );
}

/// An image of version 2 (this layout, fingerprints of the commands' JSON) loads with its
/// keys' fingerprints unknown: a repeat of such a key gets its first outcome whatever its body,
/// and a key first used after the upgrade is compared again.
#[test]
fn version_2_images_load_with_their_fingerprints_unknown() {
    use depot_engine::snapshot::IMAGE_VERSION;
    let mut m = busy_machine();
    let mut image = m.image();
    assert!(image
        .idempotency
        .iter()
        .all(|e| e.fingerprint != UNKNOWN_FINGERPRINT));
    image.version = 2;
    let old = from_bytes(&depot_engine::snapshot::v3::to_bytes(&image, 2))
        .expect("a version 2 image reads");
    assert_eq!(old.version, IMAGE_VERSION);
    assert!(old
        .idempotency
        .iter()
        .all(|e| e.fingerprint == UNKNOWN_FINGERPRINT));
    let mut upgraded = load(&old, Limits::default(), 2).unwrap();
    // `pay-1` reserved one pen; asked again for two, it is the first outcome, replayed.
    let (first, ..) = m.execute(&keyed("pay-1", reserve(&[("pen", 1)], 60_000)), 13_000);
    let (again, ..) = upgraded.execute(&keyed("pay-1", reserve(&[("pen", 2)], 60_000)), 13_000);
    assert!(again.replayed);
    assert_eq!(again.outcome, first.outcome);
    // A new key remembers the new fingerprint and refuses another body.
    let (fresh, ..) = upgraded.execute(&keyed("pay-2", reserve(&[("mug", 1)], 60_000)), 13_000);
    assert!(fresh.outcome.is_ok() && !fresh.replayed);
    let (other, ..) = upgraded.execute(&keyed("pay-2", reserve(&[("mug", 2)], 60_000)), 13_000);
    assert_key_reused(&other);
}

#[test]
fn a_damaged_compact_response_is_refused_by_name() {
    use depot_engine::snapshot::ResponseImage;
    let m = busy_machine();
    let mut image = m.image();
    let entry = image
        .idempotency
        .iter_mut()
        .find(|e| matches!(e.response, Some(ResponseImage::Reservation(_))))
        .expect("a reservation's response");
    let Some(ResponseImage::Reservation(v)) = entry.response.as_mut() else {
        unreachable!()
    };
    v.state = 9;
    let e = load(&image, Limits::default(), 2).unwrap_err().to_string();
    assert!(e.contains("unknown reservation state 9"), "{e}");
    let mut image = m.image();
    for e in &mut image.idempotency {
        if let Some(ResponseImage::Reservation(v)) = e.response.as_mut() {
            v.lines[0].sku = "not a sku!".into();
        }
    }
    let e = load(&image, Limits::default(), 2).unwrap_err().to_string();
    assert!(e.contains("idempotent response: sku"), "{e}");
}

#[test]
fn image_round_trips_into_any_shard_count_with_the_same_digest() {
    let m = busy_machine();
    let bytes = to_bytes(&m.image());
    let image = from_bytes(&bytes).expect("a fresh image validates");
    assert_eq!(image, m.image());
    // Bytes that are not aligned (inside a file buffer, say) read the same.
    for skew in 1..16 {
        let mut shifted = vec![0u8; skew];
        shifted.extend_from_slice(&bytes);
        assert_eq!(
            from_bytes(&shifted[skew..]).ok().as_ref(),
            Some(&image),
            "skew {skew}"
        );
    }
    for shards in [1, 2, 5] {
        let loaded = load(&image, Limits::default(), shards).expect("a fresh image loads");
        assert_eq!(loaded.canonical(), m.canonical(), "{shards} shard(s)");
        assert_eq!(loaded.digest(), m.digest());
    }
}

#[test]
fn a_loaded_machine_goes_on_exactly_as_the_original() {
    let mut original = busy_machine();
    let mut loaded = load(
        &from_bytes(&to_bytes(&original.image())).unwrap(),
        Limits::default(),
        3,
    )
    .unwrap();
    // Reads, writes, a repeated idempotency key, and ticks that expire and drop reservations
    // (their timers are rebuilt by the load).
    let keyed = Request {
        idempotency_key: Some("pay-1".into()),
        ..req(reserve(&[("pen", 1)], 60_000))
    };
    let script: Vec<(Request, u64)> = vec![
        (req(Command::GetStock { sku: sku("mug") }), 13_000),
        (req(Command::GetStock { sku: sku("kit") }), 13_000),
        (keyed, 13_000),
        (req(reserve(&[("mug", 2), ("pen", 1)], 5_000)), 13_000),
        (req(Command::Tick), 70_000),
        (req(Command::Tick), 100_000_000),
        (
            req(Command::GetReservation {
                id: ReservationId(15),
            }),
            100_000_000,
        ),
        (
            req(Command::Explain {
                sku: sku("mug"),
                channel: ChannelId::new("web").unwrap(),
            }),
            100_000_000,
        ),
    ];
    for (r, now) in script {
        let a = original.execute(&r, now);
        let b = loaded.execute(&r, now);
        assert_eq!((a.0, a.1), (b.0, b.1), "{:?}", r.command);
    }
    assert_eq!(original.digest(), loaded.digest());
}

#[test]
fn damaged_images_are_refused_never_a_panic() {
    let bytes = to_bytes(&busy_machine().image());
    for len in [0, 1, 7, 16, bytes.len() / 2, bytes.len() - 1] {
        assert!(from_bytes(&bytes[..len]).is_err(), "truncated to {len}");
    }
    // Flip bits all over the image: each result is an error or a valid image, never a panic.
    let mut refused = 0;
    for i in (0..bytes.len()).step_by(7) {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        if let Ok(image) = from_bytes(&b) {
            let _ = load(&image, Limits::default(), 2);
        } else {
            refused += 1;
        }
    }
    assert!(refused > 0, "bytecheck must catch some flips");
}

#[test]
fn images_with_quantities_out_of_range_are_refused() {
    use depot_engine::snapshot::STOCK_MAX;
    let good = busy_machine().image();
    type Edit = Box<dyn Fn(&mut depot_engine::snapshot::Image)>;
    let mut edits: Vec<Edit> = vec![
        Box::new(|i| i.skus[0].levels[0].on_hand = i64::MIN),
        Box::new(|i| i.skus[0].levels[0].reserved = STOCK_MAX + 1),
        Box::new(|i| i.skus[0].levels[0].safety_stock = -1),
        Box::new(|i| i.skus[0].held[0] = i64::MAX),
    ];
    if !good.reservations.is_empty() {
        edits.push(Box::new(|i| i.reservations[0].granted[0] = -1));
        edits.push(Box::new(|i| i.reservations[0].items[0].per_unit = i64::MAX));
    }
    for (n, edit) in edits.iter().enumerate() {
        let mut image = good.clone();
        edit(&mut image);
        let err = load(&image, Limits::default(), 2).expect_err("an out-of-range quantity");
        assert!(err.to_string().contains("outside"), "edit {n}: {err}");
    }
    // Extreme but allowed stock still loads, and the ATS does not overflow.
    let mut image = good.clone();
    image.skus[0].levels[0].on_hand = STOCK_MAX;
    image.skus[0].levels[0].safety_stock = STOCK_MAX;
    let m = load(&image, Limits::default(), 2).expect("in range");
    let _ = m.digest();
}

/// A reservation and an item of it on a plain (not bundle) line.
fn plain_item(i: &depot_engine::snapshot::Image) -> (usize, usize) {
    i.reservations
        .iter()
        .enumerate()
        .find_map(|(r, res)| {
            res.items
                .iter()
                .position(|it| !res.lines[usize::from(it.line)].is_bundle)
                .map(|it| (r, it))
        })
        .expect("the busy machine has plain lines")
}

#[test]
fn images_naming_locations_or_lines_that_do_not_exist_are_refused() {
    let good = busy_machine().image();
    assert!(!good.reservations.is_empty());
    let locations = good.tenants[0].locations_json.matches("\"id\"").count() as u16;
    type Edit = Box<dyn Fn(&mut depot_engine::snapshot::Image)>;
    let edits: Vec<(Edit, &str)> = vec![
        (
            Box::new(move |i| i.skus[0].levels[0].loc = locations),
            "location",
        ),
        (Box::new(|i| i.skus[0].levels[0].loc = u16::MAX), "location"),
        (
            Box::new(move |i| i.reservations[0].items[0].allocs[0].loc = locations),
            "location",
        ),
        (
            Box::new(|i| {
                let lines = i.reservations[0].lines.len() as u16;
                i.reservations[0].items[0].line = lines;
            }),
            "line",
        ),
        // A plain line's item is the line's SKU, one unit per unit: the part does not store
        // them, so an image that says otherwise is refused rather than silently changed.
        (
            Box::new(|i| {
                let (r, it) = plain_item(i);
                i.reservations[r].items[it].sku = "NOT-THE-LINE".into();
            }),
            "plain line",
        ),
        (
            Box::new(|i| {
                let (r, it) = plain_item(i);
                i.reservations[r].items[it].per_unit = 2;
            }),
            "plain line",
        ),
    ];
    for (n, (edit, what)) in edits.iter().enumerate() {
        let mut image = good.clone();
        edit(&mut image);
        let err = load(&image, Limits::default(), 2).expect_err("a reference out of range");
        assert!(err.to_string().contains(what), "edit {n}: {err}");
    }
    // The largest location index there is still loads.
    let mut image = good.clone();
    image.skus[0].levels[0].loc = locations - 1;
    load(&image, Limits::default(), 2).expect("in range");
}

#[test]
fn the_image_serialized_from_the_tables_is_the_owned_image_byte_for_byte() {
    use depot_engine::snapshot::{serialize_state_into, AlignedBytes};
    let busy = busy_machine();
    let empty = Machine::new(Limits::default(), 1);
    for m in [&busy, &empty] {
        let bytes = to_bytes(&m.image());
        let streamed = serialize_state_into(&m.state_image(), AlignedBytes::new()).unwrap();
        assert_eq!(&streamed[..], &bytes[..]);
    }
    // Reservations in parts on several shards, SKUs spread over them.
    for shards in [1, 3, 5] {
        let m = load(&busy.image(), Limits::default(), shards).unwrap();
        let streamed = serialize_state_into(&m.state_image(), AlignedBytes::new()).unwrap();
        assert_eq!(
            &streamed[..],
            &to_bytes(&busy.image())[..],
            "{shards} shards"
        );
        assert_eq!(from_bytes(&streamed).unwrap(), busy.image());
    }
    let state = busy.state_image();
    assert_eq!(state.seq(), busy.image().seq);
    assert!(format!("{state:?}").contains("reservations"));
}

/// An image of version 4 (this layout, BLAKE3 fingerprints) loads with its fingerprints as
/// they are, and they are still compared: a repeat with the same body is replayed, one with
/// another body refused.
#[test]
fn version_4_images_load_and_their_blake3_fingerprints_are_compared() {
    use depot_engine::snapshot::IMAGE_VERSION;
    let mut m = busy_machine();
    let command = reserve(&[("pen", 1)], 60_000);
    let (first, ..) = m.execute(&keyed("pay-4", command.clone()), 13_000);
    let mut image = m.image();
    let mut layout = Vec::new();
    depot_engine::codec::encode_command(&command, &mut layout);
    let blake3 = *blake3::hash(&layout).as_bytes();
    let entry = image
        .idempotency
        .iter_mut()
        .find(|e| e.key == "pay-4")
        .expect("the key's entry");
    assert_eq!(
        entry.fingerprint,
        depot_engine::front::fingerprint(&command)
    );
    entry.fingerprint = blake3;
    image.version = 4;
    let read = from_bytes(&to_bytes(&image)).expect("a version 4 image reads");
    assert_eq!(read.version, IMAGE_VERSION);
    let kept = read.idempotency.iter().find(|e| e.key == "pay-4");
    assert_eq!(kept.map(|e| e.fingerprint), Some(blake3));
    let mut upgraded = load(&read, Limits::default(), 2).unwrap();
    let (again, ..) = upgraded.execute(&keyed("pay-4", command.clone()), 14_000);
    assert!(again.replayed);
    assert_eq!(again.outcome, first.outcome);
    let (other, ..) = upgraded.execute(&keyed("pay-4", reserve(&[("pen", 2)], 60_000)), 14_000);
    assert_key_reused(&other);
}

/// An image of version 3 (every reservation's answer field by field and inline, none by
/// reference) loads into the same state; the next image refers again, and is smaller.
#[test]
fn version_3_images_load_and_the_next_image_refers() {
    use depot_engine::snapshot::{v3, without_references, ResponseImage, IMAGE_VERSION};
    let m = busy_machine();
    let image = m.image();
    let expanded = without_references(&image).expect("loads");
    assert!(expanded
        .idempotency
        .iter()
        .all(|e| !matches!(e.response, Some(ResponseImage::Reference(_)))));
    assert_ne!(expanded, image);
    let old_bytes = v3::to_bytes(&image, 3);
    let read = from_bytes(&old_bytes).expect("a version 3 image reads");
    assert_eq!(read.version, IMAGE_VERSION);
    assert_eq!(read, expanded);
    let loaded = load(&read, Limits::default(), 2).unwrap();
    assert_eq!(loaded.digest(), m.digest());
    assert_eq!(loaded.image(), image);
    // A reference and answers behind pointers: over a hundred bytes less for one held
    // reservation's stored answer and three other answers.
    let new_bytes = to_bytes(&image);
    assert!(
        new_bytes.len() + 100 < old_bytes.len(),
        "{} against {}",
        new_bytes.len(),
        old_bytes.len()
    );
}

#[test]
fn a_reference_to_a_reservation_not_in_the_image_is_refused_by_name() {
    use depot_engine::snapshot::ResponseImage;
    let m = busy_machine();
    let refer = |f: &dyn Fn(&mut depot_engine::snapshot::ReferenceImage, &mut u32)| {
        let mut image = m.image();
        let entry = image
            .idempotency
            .iter_mut()
            .find(|e| matches!(e.response, Some(ResponseImage::Reference(_))))
            .expect("an answer by reference");
        let Some(ResponseImage::Reference(r)) = entry.response.as_mut() else {
            unreachable!()
        };
        f(r, &mut entry.tenant);
        load(&image, Limits::default(), 2).unwrap_err().to_string()
    };
    let e = refer(&|r, _| r.id = 999_999);
    assert!(
        e.contains("names reservation res_999999, which the image does not hold"),
        "{e}"
    );
    // The key's tenant must be the reservation's (a second tenant exists only in name here).
    let e = refer(&|_, t| *t = 7);
    assert!(e.contains("a key of tenant 7 names reservation"), "{e}");
}
