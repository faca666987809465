//! The binary record body (record version 2): every command round-trips through it exactly as
//! through JSON, damaged bodies are refused with an error naming the field, and logs written
//! with JSON bodies (version 1) still recover, also when newer records follow them.

use depot_engine::{
    Bucket, ChannelId, ChannelKind, Command, CommitLine, FillPolicy, FulfilLine, LineRequest,
    LocationId, LocationKind, LogEntry, Request, ReservationId, Sku, TenantId,
};
use depot_wal::codec;
use depot_wal::format::{
    decode_entry, encode_entry, encode_entry_json, encode_record, encode_segment_header,
    segment_name, Record, SegmentHeader, RECORD_VERSION_BINARY, RECORD_VERSION_JSON,
};
use depot_wal::{read_log, MemDir, Tail, WalOptions, WalWriter};
use proptest::prelude::*;
use rust_decimal::Decimal;

fn id_text() -> impl Strategy<Value = String> {
    "[!-~]{1,40}"
}
fn sku() -> impl Strategy<Value = Sku> {
    id_text().prop_map(|s| Sku::new(&s).unwrap())
}
fn loc() -> impl Strategy<Value = LocationId> {
    id_text().prop_map(|s| LocationId::new(&s).unwrap())
}
fn text() -> impl Strategy<Value = String> {
    // Any unicode, including the empty string and characters JSON escapes.
    ".{0,30}"
}
fn bucket() -> impl Strategy<Value = Bucket> {
    prop_oneof![
        Just(Bucket::Available),
        Just(Bucket::Damaged),
        Just(Bucket::QualityControl),
        Just(Bucket::SafetyStock),
    ]
}
fn rid() -> impl Strategy<Value = ReservationId> {
    any::<u64>().prop_map(ReservationId)
}
fn decimal() -> impl Strategy<Value = Decimal> {
    (any::<i64>(), 0u32..=10).prop_map(|(m, scale)| Decimal::new(m, scale))
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (
            sku(),
            loc(),
            any::<i64>(),
            proptest::option::of(decimal()),
            text()
        )
            .prop_map(
                |(sku, location, quantity, unit_cost, reason)| Command::Receive {
                    sku,
                    location,
                    quantity,
                    unit_cost,
                    reason
                }
            ),
        (sku(), loc(), any::<i64>(), any::<Option<u64>>(), text()).prop_map(
            |(sku, location, quantity, expected_at, reason)| Command::Expect {
                sku,
                location,
                quantity,
                expected_at,
                reason
            }
        ),
        (sku(), loc(), any::<i64>(), text()).prop_map(|(sku, location, delta, reason)| {
            Command::Adjust {
                sku,
                location,
                delta,
                reason,
            }
        }),
        (sku(), loc(), any::<i64>(), any::<Option<i64>>(), text()).prop_map(
            |(sku, location, quantity, compare_quantity, reason)| Command::Set {
                sku,
                location,
                quantity,
                compare_quantity,
                reason
            }
        ),
        (sku(), loc(), bucket(), bucket(), any::<i64>(), text()).prop_map(
            |(sku, location, from, to, quantity, reason)| Command::Move {
                sku,
                location,
                from,
                to,
                quantity,
                reason
            }
        ),
        (
            sku(),
            loc(),
            loc(),
            any::<i64>(),
            any::<Option<u64>>(),
            text()
        )
            .prop_map(
                |(sku, location, to_location, quantity, expected_at, reason)| Command::Transfer {
                    sku,
                    location,
                    to_location,
                    quantity,
                    expected_at,
                    reason
                }
            ),
        (
            id_text(),
            proptest::collection::vec((sku(), any::<i64>()), 0..5),
            any::<Option<u64>>(),
            proptest::option::of(text()),
            proptest::option::of(text()),
            prop_oneof![
                Just(FillPolicy::AllOrNothing),
                Just(FillPolicy::Partial),
                any::<u16>().prop_map(|max_locations| FillPolicy::Split { max_locations }),
            ],
        )
            .prop_map(
                |(channel, lines, ttl_ms, order_ref, ship_to_region, fill)| Command::Reserve {
                    channel: ChannelId::new(&channel).unwrap(),
                    lines: lines
                        .into_iter()
                        .map(|(sku, quantity)| LineRequest { sku, quantity })
                        .collect(),
                    ttl_ms,
                    order_ref,
                    ship_to_region,
                    fill,
                }
            ),
        (rid(), any::<u64>()).prop_map(|(id, ttl_ms)| Command::Extend { id, ttl_ms }),
        (
            rid(),
            proptest::option::of(proptest::collection::vec(
                (sku(), any::<Option<i64>>()),
                0..4
            ))
        )
            .prop_map(|(id, lines)| Command::Commit {
                id,
                lines: lines.map(|l| l
                    .into_iter()
                    .map(|(sku, quantity)| CommitLine { sku, quantity })
                    .collect()),
            }),
        rid().prop_map(|id| Command::Release { id }),
        rid().prop_map(|id| Command::Cancel { id }),
        (
            rid(),
            proptest::collection::vec((sku(), loc(), any::<i64>(), any::<i64>()), 0..4)
        )
            .prop_map(|(id, lines)| Command::Fulfil {
                id,
                lines: lines
                    .into_iter()
                    .map(|(sku, location, quantity, missing)| FulfilLine {
                        sku,
                        location,
                        quantity,
                        missing,
                    })
                    .collect(),
            }),
        (rid(), sku(), loc(), any::<i64>(), any::<bool>(), text()).prop_map(
            |(id, sku, location, quantity, damaged, reason)| Command::Return {
                id,
                sku,
                location,
                quantity,
                damaged,
                reason
            }
        ),
        Just(Command::Tick),
        Just(Command::CreateTenant),
        (loc(), text(), proptest::option::of(text())).prop_map(|(location, name, region)| {
            Command::PutLocation {
                location,
                kind: LocationKind::ThirdParty,
                name,
                region,
                wms: Some("edi".into()),
            }
        }),
        (id_text(), any::<i32>()).prop_map(|(c, priority)| Command::PutChannel {
            channel: ChannelId::new(&c).unwrap(),
            kind: ChannelKind::Temu,
            priority,
        }),
    ]
}

fn entry() -> impl Strategy<Value = LogEntry> {
    (
        any::<u64>(),
        any::<u64>(),
        id_text(),
        text(),
        proptest::option::of(text()),
        command(),
    )
        .prop_map(
            |(seq, now, tenant, key_id, idempotency_key, command)| LogEntry {
                seq,
                now,
                request: Request {
                    tenant: TenantId::new(&tenant).unwrap(),
                    key_id: key_id.into(),
                    idempotency_key,
                    command,
                },
            },
        )
}

fn binary(e: &LogEntry) -> Vec<u8> {
    let mut body = Vec::new();
    encode_entry(e, &mut body);
    body
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_entry_round_trips_and_every_cut_is_refused(e in entry()) {
        let body = binary(&e);
        let r = Record { seq: e.seq, version: RECORD_VERSION_BINARY, body: &body };
        prop_assert_eq!(decode_entry(&r), Ok(e.clone()));
        // The same entry as a version 1 record decodes to the same thing.
        let mut json = Vec::new();
        encode_entry_json(&e, &mut json);
        let j = Record { seq: e.seq, version: RECORD_VERSION_JSON, body: &json };
        prop_assert_eq!(decode_entry(&j), Ok(e.clone()));
        // Every strict prefix, and any byte added, is an error, never a panic or another entry.
        for cut in 0..body.len() {
            prop_assert!(codec::decode(e.seq, &body[..cut]).is_err(), "cut at {}", cut);
        }
        let mut longer = body.clone();
        longer.push(0);
        prop_assert!(codec::decode(e.seq, &longer).is_err());
    }

    /// A reader decodes a log's records one after the other, copying the tenant, key and
    /// channel when they repeat the last record's: it must give exactly what decoding each
    /// body on its own gives, for good bodies and damaged ones, whatever came before.
    #[test]
    fn decoding_a_sequence_with_recent_names_equals_decoding_each_alone(
        steps in proptest::collection::vec(
            (0..3usize, 0..3usize, 0..3usize, any::<bool>(), proptest::option::of((any::<prop::sample::Index>(), any::<u8>()))),
            1..40,
        )
    ) {
        let tenants = ["t1", "t2", "tenant-with-a-longer-name-than-24"];
        let keys = ["k1", "", "key-\u{fc}"];
        let channels = ["web", "amz", "w"];
        let mut recent = codec::Recent::default();
        for (i, (t, k, c, reserve, damage)) in steps.into_iter().enumerate() {
            let command = if reserve {
                Command::Reserve {
                    channel: ChannelId::new(channels[c]).unwrap(),
                    lines: vec![LineRequest { sku: Sku::new("sku-1").unwrap(), quantity: 1 }],
                    ttl_ms: Some(60_000),
                    order_ref: None,
                    ship_to_region: None,
                    fill: FillPolicy::AllOrNothing,
                }
            } else {
                Command::Release { id: ReservationId(7) }
            };
            let e = LogEntry {
                seq: i as u64 + 1,
                now: 5,
                request: Request {
                    tenant: TenantId::new(tenants[t]).unwrap(),
                    key_id: keys[k].into(),
                    idempotency_key: None,
                    command,
                },
            };
            let mut body = binary(&e);
            if let Some((at, byte)) = damage {
                let at = at.index(body.len());
                body[at] = byte;
            }
            let alone = codec::decode(e.seq, &body);
            let with = codec::decode_with(e.seq, &body, &mut recent);
            prop_assert_eq!(&with, &alone, "record {}", i);
            if damage.is_none() {
                prop_assert_eq!(with, Ok(e));
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(e) = codec::decode(1, &bytes) {
            prop_assert_eq!(codec::decode(1, &binary(&e)), Ok(e));
        }
    }
}

fn reserve(seq: u64) -> LogEntry {
    LogEntry {
        seq,
        now: 1_700_000_000_000,
        request: Request {
            tenant: TenantId::new("bench").unwrap(),
            key_id: "bench-key".into(),
            idempotency_key: None,
            command: Command::Reserve {
                channel: ChannelId::new("web").unwrap(),
                lines: vec![LineRequest {
                    sku: Sku::new("sku-00245").unwrap(),
                    quantity: 1,
                }],
                ttl_ms: Some(900_000),
                order_ref: None,
                ship_to_region: None,
                fill: FillPolicy::AllOrNothing,
            },
        },
    }
}

#[test]
fn a_single_line_reservation_is_a_quarter_of_its_json() {
    let e = reserve(9);
    let mut json = Vec::new();
    encode_entry_json(&e, &mut json);
    let body = binary(&e);
    assert!(
        body.len() * 3 < json.len(),
        "{} vs {}",
        body.len(),
        json.len()
    );
}

#[test]
fn damage_is_named() {
    let e = reserve(9);
    let body = binary(&e);
    let err = |b: &[u8]| codec::decode(9, b).unwrap_err().to_string();
    // The operation byte follows time (8), tenant (1 + 5), key id (1 + 9), no idempotency key (1).
    let op_at = 8 + 6 + 10 + 1;
    let mut bad_op = body.clone();
    bad_op[op_at] = 200;
    assert!(err(&bad_op).contains("unknown operation code 200"));
    let mut bad_option = body.clone();
    bad_option[op_at - 1] = 7;
    assert!(err(&bad_option).contains("idempotency key"));
    // The tenant's first byte made a space: not an id.
    let mut bad_id = body.clone();
    bad_id[9] = b' ';
    assert!(err(&bad_id).contains("tenant"), "{}", err(&bad_id));
    // A count far larger than the body: refused before anything is allocated for it.
    let mut hostile = body[..op_at + 1 + 4].to_vec();
    hostile.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(err(&hostile).contains("exceeds"), "{}", err(&hostile));
    let mut not_utf8 = body.clone();
    not_utf8[16] = 0xff; // inside the key id
    assert!(err(&not_utf8).contains("key id"), "{}", err(&not_utf8));
    let mut trailing = body.clone();
    trailing.extend([1, 2]);
    assert!(err(&trailing).contains("2 bytes after the entry"));
}

#[test]
fn rule_documents_travel_as_json_inside_the_binary_body() {
    let document = serde_json::from_str(
        r#"{"rules":[{"id":"cap","kind":"cap","channels":["web"],"units":50},
                     {"id":"buf","kind":"buffer","channels":["web"],"units":2}]}"#,
    )
    .unwrap();
    let mut e = reserve(3);
    e.request.command = Command::PutRules { document };
    let body = binary(&e);
    assert_eq!(codec::decode(3, &body).unwrap(), e);
}

#[test]
fn a_log_of_json_records_recovers_and_takes_binary_records_after_them() {
    let dir = MemDir::new();
    let mut seg = encode_segment_header(SegmentHeader { first_seq: 1 }).to_vec();
    for seq in 1..=3 {
        let mut body = Vec::new();
        encode_entry_json(&reserve(seq), &mut body);
        encode_record(seq, RECORD_VERSION_JSON, &body, &mut seg);
    }
    dir.insert(&segment_name(1), seg);
    let (entries, tail) = read_log(&dir, 1).unwrap();
    assert_eq!(tail, Tail::Clean);
    assert_eq!(entries, (1..=3).map(reserve).collect::<Vec<_>>());

    let mut w = WalWriter::open(Box::new(dir.clone()), WalOptions::default()).unwrap();
    for seq in 4..=5 {
        w.append(&reserve(seq)).unwrap();
    }
    w.sync().unwrap();
    drop(w);
    let (entries, tail) = read_log(&dir, 1).unwrap();
    assert_eq!(tail, Tail::Clean);
    assert_eq!(entries, (1..=5).map(reserve).collect::<Vec<_>>());
    // The new records are binary, one write group (a start, then a continuation), and zeros
    // written ahead of them follow.
    let bytes = dir.bytes(&segment_name(1)).unwrap();
    let (versions, end) = {
        let mut v = Vec::new();
        let mut at = 24;
        while at < bytes.len() && bytes[at] != 0 {
            let r = depot_wal::format::decode_record(&bytes[at..]).unwrap();
            v.push(r.version);
            at += r.encoded_len() as usize;
        }
        (v, at)
    };
    assert_eq!(versions, [1, 1, 1, 2, 3]);
    assert!(bytes.len() > end, "zeros follow the records");
    assert!(bytes[end..].iter().all(|&b| b == 0));
}

#[test]
fn a_json_body_whose_seq_differs_from_its_frame_is_refused() {
    let mut body = Vec::new();
    encode_entry_json(&reserve(4), &mut body);
    let r = Record {
        seq: 5,
        version: RECORD_VERSION_JSON,
        body: &body,
    };
    let e = decode_entry(&r).unwrap_err().to_string();
    assert!(e.contains("body has seq 4, frame has 5"), "{e}");
}
