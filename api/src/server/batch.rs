//! `POST /v1/batch` read in one pass over its bytes.
//!
//! The general reading ([`BatchBody`]) keeps each operation's body as raw JSON text and parses
//! it later, as the operation's route says: every body is scanned twice, once to find where it
//! ends and once to read it. That was about a quarter of the server's work per reservation in a
//! batch. [`FastBatch`] reads a reservation's body (`POST /v1/reservations`) as a
//! [`ReserveBody`] where it stands, when the operation's `method` and `path` come before its
//! `body` (the order of `docs/http_api.md` and of the OpenAPI document); other bodies stay raw
//! text.
//!
//! The fast reading is only a shortcut: it accepts a subset of what the general one accepts
//! (objects only, no duplicate or unknown fields, every reservation body well formed), and
//! where it succeeds the operations are the same. Anything else, including every error, is read
//! again the general way, whose errors name the operation and the field.

pub(crate) mod scan;

use super::body::Body;
use super::dto::{BatchBody, ReserveBody};
use super::ops::Route;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// An operation's body as the batch's reading left it.
#[derive(Debug)]
pub enum OpBody<'a> {
    /// Absent or `null`.
    Absent,
    /// JSON text, parsed by the operation as its route says.
    Raw(&'a RawValue),
    /// A reservation's body, already read.
    Reserve(ReserveBody<'a>),
}

/// One operation of a batch (the fields of [`BatchOperation`](super::dto::BatchOperation)).
#[derive(Debug)]
pub struct FastOp<'a> {
    pub method: Cow<'a, str>,
    pub path: Cow<'a, str>,
    /// `Route::parse(method, path)`: `None` when it is not an operation of a batch.
    pub route: Option<Route>,
    pub body: OpBody<'a>,
    pub idempotency_key: Option<String>,
}

/// A batch read in one pass.
#[derive(Debug)]
pub struct FastBatch<'a> {
    pub operations: Vec<FastOp<'a>>,
}

/// The operations of a batch's body: read in one pass where it can be, else the general way
/// (whose error, if any, is the batch's answer).
pub fn operations(body: &Body) -> Result<Vec<FastOp<'_>>, super::error::ApiError> {
    match fast(body) {
        Some(fast) => Ok(fast.operations),
        None => general(body),
    }
}

/// The operations read the general way: each body kept as text.
fn general(body: &Body) -> Result<Vec<FastOp<'_>>, super::error::ApiError> {
    let general: BatchBody = body.parse()?;
    Ok(general
        .operations
        .into_iter()
        .map(|op| FastOp {
            route: Route::parse(&op.method, &op.path),
            method: op.method,
            path: op.path,
            body: op.body.map_or(OpBody::Absent, OpBody::Raw),
            idempotency_key: op.idempotency_key,
        })
        .collect())
}

/// The batch read in one pass, or `None` when it must be read the general way.
pub fn fast(body: &Body) -> Option<FastBatch<'_>> {
    let Body::Json(bytes) = body else {
        return None;
    };
    let text = std::str::from_utf8(bytes).ok()?;
    if !text.trim_start().starts_with('{') {
        return None;
    }
    // Room for the operations from the start (an operation is rarely under 96 bytes), so that
    // the list is not copied as it grows.
    let capacity = (text.len() / 96).min(OPERATIONS_GUESS_MAX);
    scan::scan(text, capacity).or_else(|| by_serde(text, capacity))
}

/// The batch read in one pass by serde's visitors (any key order, any body as text).
fn by_serde(text: &str, capacity: usize) -> Option<FastBatch<'_>> {
    let mut de = serde_json::Deserializer::from_str(text);
    let batch = BatchSeed { capacity }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(batch)
}

/// The most operations room is made for before any is read.
const OPERATIONS_GUESS_MAX: usize = 4096;

/// `{"operations": [...]}`, with room for `capacity` operations.
struct BatchSeed {
    capacity: usize,
}

impl<'de> DeserializeSeed<'de> for BatchSeed {
    type Value = FastBatch<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<FastBatch<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BatchSeed {
    type Value = FastBatch<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a batch")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FastBatch<'de>, A::Error> {
        let mut operations = None;
        while let Some(key) = map.next_key::<Text<'de>>()? {
            if key.0 != "operations" || operations.is_some() {
                return Err(de::Error::custom("not a field of a batch, or given twice"));
            }
            operations = Some(map.next_value_seed(OperationsSeed {
                capacity: self.capacity,
            })?);
        }
        Ok(FastBatch {
            operations: operations.ok_or_else(|| de::Error::missing_field("operations"))?,
        })
    }
}

/// The list of operations.
struct OperationsSeed {
    capacity: usize,
}

impl<'de> DeserializeSeed<'de> for OperationsSeed {
    type Value = Vec<FastOp<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<FastOp<'de>>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for OperationsSeed {
    type Value = Vec<FastOp<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of operations")
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<FastOp<'de>>, A::Error> {
        let mut operations = Vec::with_capacity(self.capacity);
        while let Some(op) = seq.next_element()? {
            operations.push(op);
        }
        Ok(operations)
    }
}

/// The fields of an operation.
enum Field {
    Method,
    Path,
    Body,
    IdempotencyKey,
}

const FIELDS: &[&str] = &["method", "path", "body", "idempotency_key"];

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field of an operation")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                match v {
                    "method" => Ok(Field::Method),
                    "path" => Ok(Field::Path),
                    "body" => Ok(Field::Body),
                    "idempotency_key" => Ok(Field::IdempotencyKey),
                    _ => Err(E::unknown_field(v, FIELDS)),
                }
            }
        }
        d.deserialize_identifier(V)
    }
}

/// A string borrowed from the input where it has no escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// A reservation's body where it stands: `null` is absent, an object is read as a
/// [`ReserveBody`], anything else fails (and the batch is read the general way).
struct ReserveSeed<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> DeserializeSeed<'de> for ReserveSeed<'a> {
    type Value = OpBody<'a>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<OpBody<'a>, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = OpBody<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a reservation's body")
            }
            fn visit_unit<E: de::Error>(self) -> Result<OpBody<'a>, E> {
                Ok(OpBody::Absent)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<OpBody<'a>, A::Error> {
                ReserveBody::deserialize(MapAccessDeserializer::new(map)).map(OpBody::Reserve)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for FastOp<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = FastOp<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an operation")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FastOp<'a>, A::Error> {
                let mut method: Option<Cow<'a, str>> = None;
                let mut path: Option<Cow<'a, str>> = None;
                let mut body: Option<OpBody<'a>> = None;
                let mut key: Option<Option<String>> = None;
                let mut route: Option<Option<Route>> = None;
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Method if method.is_none() => {
                            method = Some(map.next_value::<Text<'a>>()?.0);
                        }
                        Field::Path if path.is_none() => {
                            path = Some(map.next_value::<Text<'a>>()?.0);
                        }
                        Field::IdempotencyKey if key.is_none() => {
                            key = Some(map.next_value()?);
                        }
                        Field::Body if body.is_none() => {
                            if let (Some(m), Some(p)) = (&method, &path) {
                                route = Some(Route::parse(m, p));
                            }
                            let reserve = matches!(route, Some(Some(Route::Reserve)));
                            body = Some(if reserve {
                                map.next_value_seed(ReserveSeed(std::marker::PhantomData))?
                            } else {
                                map.next_value::<Option<&'a RawValue>>()?
                                    .map_or(OpBody::Absent, OpBody::Raw)
                            });
                        }
                        _ => return Err(de::Error::custom("a field given twice")),
                    }
                }
                let method = method.ok_or_else(|| de::Error::missing_field("method"))?;
                let path = path.ok_or_else(|| de::Error::missing_field("path"))?;
                Ok(FastOp {
                    route: route.unwrap_or_else(|| Route::parse(&method, &path)),
                    method,
                    path,
                    body: body.unwrap_or(OpBody::Absent),
                    idempotency_key: key.flatten(),
                })
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;

    /// An operation as text, its reservation body read whichever way it came.
    fn shown(op: &FastOp<'_>) -> String {
        let body = match &op.body {
            OpBody::Absent => "absent".to_string(),
            OpBody::Reserve(b) => format!("{b:?}"),
            OpBody::Raw(raw) if matches!(op.route, Some(Route::Reserve)) => {
                match serde_json::from_str::<ReserveBody>(raw.get()) {
                    Ok(b) => format!("{b:?}"),
                    Err(_) => format!("raw {}", raw.get()),
                }
            }
            OpBody::Raw(raw) => format!("raw {}", raw.get()),
        };
        format!(
            "{} {} {:?} {body} {:?}",
            op.method, op.path, op.route, op.idempotency_key
        )
    }

    fn json(text: &str) -> Body {
        Body::Json(Bytes::from(text.to_string()))
    }

    /// The general reading's operations, shown.
    fn general(body: &Body) -> Result<Vec<String>, String> {
        let ops = super::general(body).map_err(|e| e.message)?;
        Ok(ops.iter().map(shown).collect())
    }

    const RESERVE: &str =
        r#"{"channel":"web","lines":[{"sku":"MUG","quantity":2}],"ttl_seconds":60}"#;

    /// Where the shortcut reads a batch, it reads what the general reading reads.
    #[test]
    fn the_shortcut_reads_what_the_general_reading_reads() {
        let read_fast = [
            format!(
                r#"{{"operations":[{{"method":"POST","path":"/v1/reservations","idempotency_key":"k1","body":{RESERVE}}}]}}"#
            ),
            // Escapes, whitespace, a lower-case method, a query, a null key, other routes.
            format!(
                r#" {{ "operations" : [ {{"method":"post","path":"\/v1\/reservations?x=1","body":{{"channel":"w\u0065b","lines":[{{"sku":"M\"G","quantity":1}}]}}}},
                {{"path":"/v1/reservations/res_1/commit","method":"POST","idempotency_key":null,"body":{{"lines":null}}}},
                {{"method":"GET","path":"/v1/stock/MUG"}},
                {{"method":"POST","path":"/v1/reservations","body":null,"idempotency_key":"k2"}},
                {{"method":"DELETE","path":"/v1/reservations","body":{RESERVE}}} ] }} "#
            ),
            // The body before the path: kept as text and read by the operation.
            format!(
                r#"{{"operations":[{{"body":{RESERVE},"method":"POST","path":"/v1/reservations"}}]}}"#
            ),
            r#"{"operations":[]}"#.to_string(),
        ];
        // Which of them the hand-written reader takes (no escapes, body after method and path);
        // serde's visitors read every one.
        let scanned = [true, false, false, true];
        for (text, scanned) in read_fast.iter().zip(scanned) {
            let body = json(text);
            let fast = fast(&body).unwrap_or_else(|| panic!("read in one pass: {text}"));
            let got: Vec<String> = fast.operations.iter().map(shown).collect();
            assert_eq!(Ok(got), general(&body), "{text}");
            let by_serde = by_serde(text, 0).unwrap_or_else(|| panic!("serde reads: {text}"));
            let got: Vec<String> = by_serde.operations.iter().map(shown).collect();
            assert_eq!(Ok(got), general(&body), "{text}");
            assert_eq!(scan::scan(text, 0).is_some(), scanned, "{text}");
        }
        let (first, body_first) = (json(&read_fast[0]), json(&read_fast[2]));
        let ops = fast(&first).expect("reads").operations;
        assert!(matches!(ops[0].body, OpBody::Reserve(_)));
        let ops = fast(&body_first).expect("reads").operations;
        assert!(matches!(ops[0].body, OpBody::Raw(_)));
    }

    /// Anything the shortcut does not take is read the general way: the same operations where
    /// that reading accepts the batch, its error where it does not.
    #[test]
    fn anything_else_is_read_the_general_way() {
        let bodies = [
            // A reservation body that the operation refuses on its own (the batch is fine).
            r#"{"operations":[{"method":"POST","path":"/v1/reservations","body":{"channel":"web","lines":[{"sku":"MUG","quantity":"2"}]}}]}"#,
            r#"{"operations":[{"method":"POST","path":"/v1/reservations","body":[1,2]}]}"#,
            r#"{"operations":[{"method":"POST","path":"/v1/reservations","body":{"channel":"web","lines":[],"colour":"red"}}]}"#,
            r#"{"operations":[{"method":"POST","path":"/v1/reservations","body":"text"}]}"#,
            // An operation written as a list: serde reads a struct from one.
            r#"{"operations":[["POST","/v1/reservations",null,"k"]]}"#,
            // Errors of the batch itself.
            r#"{"operations":[{"method":"POST","method":"GET","path":"/v1/reservations"}]}"#,
            r#"{"operations":[{"method":"POST","path":"/v1/reservations","extra":1}]}"#,
            r#"{"operations":[{"path":"/v1/reservations"}]}"#,
            r#"{"operations":[],"operations":[]}"#,
            r#"{"operations":[], "more": 1}"#,
            r#"{}"#,
            r#"[]"#,
            r#"{"operations":[]} trailing"#,
            r#"{"operations":[{"method":"POST","path":"/v1/reservations","body":{"#,
        ];
        for text in bodies {
            let body = json(text);
            assert!(fast(&body).is_none(), "not read in one pass: {text}");
            let got = operations(&body)
                .map(|ops| ops.iter().map(shown).collect::<Vec<_>>())
                .map_err(|e| e.message);
            assert_eq!(got, general(&body), "{text}");
        }
        // Not UTF-8, or not JSON: the general reading's errors.
        let bad = Body::Json(Bytes::from_static(b"{\"operations\":[\xff]}"));
        assert!(fast(&bad).is_none());
        assert!(operations(&bad).is_err());
        let not_json = Body::NotJson(Bytes::from_static(b"{}"), "text/plain".into());
        assert!(fast(&not_json).is_none());
        assert!(operations(&not_json).is_err());
    }

    /// One field of a generated operation.
    fn field() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let reserve = prop_oneof![
            Just(RESERVE.to_string()),
            Just(
                r#"{"lines":[{"quantity":1,"sku":"A\u0042"}],"channel":"web","fill":"partial"}"#
                    .to_string()
            ),
            Just(
                r#"{"channel":"web","lines":[{"sku":"MUG","quantity":-1}],"max_locations":2}"#
                    .to_string()
            ),
            Just(r#"{"channel":"web","lines":[{"sku":"MUG","quantity":1.5}]}"#.to_string()),
            Just(r#"{"channel":"web"}"#.to_string()),
            Just(r#"{"channel":"web","lines":[],"ttl_seconds":99999999999999999999}"#.to_string()),
            Just("null".to_string()),
            Just("{}".to_string()),
            Just("[]".to_string()),
            Just(r#""x""#.to_string()),
        ];
        prop_oneof![
            prop_oneof![
                Just("POST"),
                Just("post"),
                Just("GET"),
                Just("PUT"),
                Just("PATCH")
            ]
            .prop_map(|m| format!(r#""method":"{m}""#)),
            prop_oneof![
                Just("/v1/reservations"),
                Just("\\/v1\\/reservations"),
                Just("/v1/reservations?x=1"),
                Just("/v1/reservations/res_1/commit"),
                Just("/v1/stock/MUG"),
                Just("/v2/reservations"),
            ]
            .prop_map(|p| format!(r#""path":"{p}""#)),
            reserve.prop_map(|b| format!(r#""body":{b}"#)),
            prop_oneof![Just("\"k\""), Just("null"), Just("7")]
                .prop_map(|k| format!(r#""idempotency_key":{k}"#)),
            Just(r#""colour":"red""#.to_string()),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Batches of generated operations (any fields in any order, some twice, some bodies
        /// malformed): the shortcut, where it reads one, reads what the general reading reads;
        /// [`operations`] always gives the general reading's answer.
        #[test]
        fn both_readings_agree(
            ops in proptest::collection::vec(proptest::collection::vec(field(), 0..6), 0..5),
        ) {
            let ops: Vec<String> = ops.iter().map(|fields| format!("{{{}}}", fields.join(","))).collect();
            let text = format!(r#"{{"operations":[{}]}}"#, ops.join(","));
            let body = json(&text);
            let want = general(&body);
            for fast in [fast(&body), by_serde(&text, 0), scan::scan(&text, 0)].into_iter().flatten() {
                let got: Vec<String> = fast.operations.iter().map(shown).collect();
                proptest::prop_assert_eq!(Ok(got), want.clone(), "{}", text);
            }
            let got = operations(&body)
                .map(|ops| ops.iter().map(shown).collect::<Vec<_>>())
                .map_err(|e| e.message);
            proptest::prop_assert_eq!(got, want, "{}", text);
        }
    }

    /// Well-formed values of a reservation body's fields, for the hand-written reader.
    const CHANNELS: &[&str] = &[r#""web""#, r#""""#, r#""wéb""#];
    const LINES: &[&str] = &[
        "[]",
        r#"[{"sku":"MUG","quantity":2}]"#,
        r#"[{"quantity":1,"sku":"A"},{"sku":"B","quantity":-3}]"#,
        r#"[ { "sku" : "MÜG" , "quantity" : 0 } ]"#,
        r#"[{"sku":"A","quantity":9223372036854775807}]"#,
        r#"[{"sku":"A","quantity":-9223372036854775807}]"#,
    ];
    const MORE: &[(&str, &str)] = &[
        ("ttl_seconds", "900"),
        ("ttl_seconds", "0"),
        ("ttl_seconds", "null"),
        ("ttl_seconds", "18446744073709551615"),
        ("order_ref", r#""o-1""#),
        ("order_ref", "null"),
        ("ship_to_region", r#""eu""#),
        ("ship_to_region", "null"),
        ("fill", r#""partial""#),
        ("fill", r#""split""#),
        ("fill", r#""all_or_nothing""#),
        ("fill", "null"),
        ("max_locations", "2"),
        ("max_locations", "65535"),
        ("max_locations", "0"),
        ("max_locations", "null"),
    ];
    /// Fields that are off in one of the ways the reader must leave to serde (an escape, a
    /// float, a number out of range, a wrong type, a duplicate or unknown key, broken JSON).
    const OFF: &[(&str, &str)] = &[
        ("channel", r#""w\u0065b""#),
        ("channel", "null"),
        ("channel", "7"),
        ("lines", r#"[{"sku":"A","quantity":01}]"#),
        ("lines", r#"[{"sku":"A","quantity":-0}]"#),
        ("lines", r#"[{"sku":"A","quantity":1.0}]"#),
        ("lines", r#"[{"sku":"A","quantity":1e2}]"#),
        ("lines", r#"[{"sku":"A","quantity":2E0}]"#),
        ("lines", r#"[{"sku":"A","quantity":-}]"#),
        ("lines", r#"[{"sku":"A","quantity":- 1}]"#),
        ("lines", r#"[{"sku":"A","quantity":+1}]"#),
        ("lines", r#"[{"sku":"A","quantity":9223372036854775808}]"#),
        ("lines", r#"[{"sku":"A","quantity":-9223372036854775808}]"#),
        ("lines", r#"[{"sku":"A","quantity":"2"}]"#),
        ("lines", r#"[{"sku":"A","quantity":null}]"#),
        ("lines", r#"[{"sku":"A"}]"#),
        ("lines", r#"[{"sku":"M\"G","quantity":1}]"#),
        ("lines", "[{\"sku\":\"M\tG\",\"quantity\":1}]"),
        ("lines", "[{\"sku\":\"M\u{1}G\",\"quantity\":1}]"),
        ("lines", r#"[{"sku":"A","quantity":1},]"#),
        ("lines", r#"[{"sku":"A","quantity":1,"x":1}]"#),
        ("lines", r#"[{"sku":"A","sku":"B","quantity":1}]"#),
        ("lines", r#"[{"sku":"A","quantity":1,"quantity":2}]"#),
        ("lines", r#"[{"sku":"A","quantity":1}"#),
        ("lines", r#"[{"sku":"A","quantity":1}}"#),
        ("lines", "null"),
        ("ttl_seconds", "18446744073709551616"),
        ("ttl_seconds", "-1"),
        ("ttl_seconds", "1.5"),
        ("ttl_seconds", "nul"),
        ("ttl_seconds", "nullx"),
        ("ttl_seconds", "true"),
        ("order_ref", r#""o\n""#),
        ("order_ref", "5"),
        ("ship_to_region", "true"),
        ("fill", r#""other""#),
        ("fill", r#""Partial""#),
        ("max_locations", "65536"),
        ("max_locations", "-1"),
        ("max_locations", "00"),
        ("colour", r#""red""#),
        ("channelx", r#""web""#),
        ("line", "[]"),
        ("fil", "null"),
        ("ttl_seconds_", "1"),
    ];

    /// A reservation's body fields, the whitespace around every token of its operation, and
    /// whether it has an idempotency key (else `null`).
    type GeneratedOp<'a> = (Vec<(&'a str, &'a str)>, &'a str, bool);

    /// A batch of one reservation per generated operation.
    fn reservations_batch(bodies: &[GeneratedOp<'_>]) -> String {
        let ops: Vec<String> = bodies
            .iter()
            .map(|(fields, w, key)| {
                let body = fields
                    .iter()
                    .map(|(k, v)| format!(r#"{w}"{k}"{w}:{w}{v}{w}"#))
                    .collect::<Vec<_>>()
                    .join(",");
                let key = if *key { r#""k1""# } else { "null" };
                format!(
                    r#"{w}{{{w}"method"{w}:{w}"POST"{w},{w}"path":"/v1/reservations",{w}"idempotency_key":{key},"body"{w}:{w}{{{body}}}{w}}}{w}"#
                )
            })
            .collect();
        format!(r#"{{"operations":[{}]}}"#, ops.join(","))
    }

    /// Where the hand-written reader takes `text`, it reads what the general reading reads;
    /// [`operations`] always gives the general reading's answer. Whether it took it.
    fn scanned_as_general(text: &str) -> Result<bool, String> {
        let body = json(text);
        let want = general(&body);
        let scanned = scan::scan(text, 0);
        if let Some(scanned) = &scanned {
            let got: Vec<String> = scanned.operations.iter().map(shown).collect();
            if Ok(&got) != want.as_ref() {
                return Err(format!("scanned {got:?}, general {want:?}: {text}"));
            }
        }
        let got = operations(&body)
            .map(|ops| ops.iter().map(shown).collect::<Vec<_>>())
            .map_err(|e| e.message);
        if got != want {
            return Err(format!("operations {got:?}, general {want:?}: {text}"));
        }
        Ok(scanned.is_some())
    }

    /// Every well-formed and every off field, in a body of its own (first and last, and twice),
    /// compact and spaced: the hand-written reader reads each as the general reading does,
    /// takes every well-formed one and leaves every off one and every duplicate to serde.
    #[test]
    fn the_scanner_reads_each_field_as_the_general_reading_does() {
        let base = [("channel", CHANNELS[0]), ("lines", LINES[1])];
        let well: Vec<(&str, &str)> = (CHANNELS.iter().map(|&c| ("channel", c)))
            .chain(LINES.iter().map(|&l| ("lines", l)))
            .chain(MORE.iter().copied())
            .collect();
        for (fields, off) in well
            .iter()
            .map(|f| (f, false))
            .chain(OFF.iter().map(|f| (f, true)))
        {
            let replaced: Vec<(&str, &str)> =
                base.iter().copied().filter(|b| b.0 != fields.0).collect();
            let last: Vec<_> = replaced.iter().copied().chain([*fields]).collect();
            let first: Vec<_> = [*fields]
                .into_iter()
                .chain(replaced.iter().copied())
                .collect();
            let twice: Vec<_> = base.iter().copied().chain([*fields, *fields]).collect();
            for w in ["", " \n"] {
                for (body, taken) in [(&last, !off), (&first, !off), (&twice, false)] {
                    let text = reservations_batch(&[(body.clone(), w, true)]);
                    assert_eq!(scanned_as_general(&text), Ok(taken), "{text}");
                }
            }
        }
    }

    /// A reservation body's fields for the property test: a channel and lines, up to three more
    /// well-formed fields (one may come twice), now and then an off one; in any order.
    fn reserve_fields(
    ) -> impl proptest::strategy::Strategy<Value = Vec<(&'static str, &'static str)>> {
        use proptest::prelude::*;
        let pick = |k: &'static str, vs: &'static [&'static str]| {
            proptest::sample::select(vs).prop_map(move |v| (k, v))
        };
        (
            pick("channel", CHANNELS),
            pick("lines", LINES),
            proptest::collection::vec(proptest::sample::select(MORE), 0..4),
            proptest::option::weighted(0.3, proptest::sample::select(OFF)),
        )
            .prop_map(|(c, l, mut fields, off)| {
                fields.push(c);
                fields.push(l);
                fields.extend(off);
                fields
            })
            .prop_shuffle()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Batches of reservations with generated bodies (fields in any order, some twice, some
        /// off) and any JSON whitespace: where the hand-written reader takes a batch, it
        /// reads what the general reading reads, and [`operations`] always gives that answer.
        #[test]
        fn the_scanner_reads_what_the_general_reading_reads(
            bodies in proptest::collection::vec(
                (reserve_fields(), proptest::sample::select(&["", " ", "\n\t ", "\r\n"][..]), proptest::bool::ANY),
                1..4,
            ),
        ) {
            let text = reservations_batch(&bodies);
            let r = scanned_as_general(&text);
            proptest::prop_assert!(r.is_ok(), "{:?}", r);
        }
    }

    /// `text` with each edit made (0: a byte replaced, 1: one inserted, else one removed, at a
    /// position taken modulo the length), if it is still UTF-8.
    fn damaged(text: String, edits: &[(u8, usize, u8)]) -> Option<String> {
        let mut bytes = text.into_bytes();
        for &(kind, at, byte) in edits {
            let at = at % (bytes.len() + 1);
            match kind {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        String::from_utf8(bytes).ok()
    }

    /// Where [`scan::reserve_body`] takes a single request's body, serde reads the same
    /// reservation from it; whether it took it.
    fn body_scanned_as_serde(text: &str) -> Result<bool, String> {
        let Some(scanned) = scan::reserve_body(text) else {
            return Ok(false);
        };
        match serde_json::from_str::<ReserveBody>(text) {
            Ok(b) if format!("{b:?}") == format!("{scanned:?}") => Ok(true),
            other => Err(format!("scanned {scanned:?}, serde {other:?}: {text}")),
        }
    }

    /// A single reservation's body of `fields`, with `w` around every token.
    fn reserve_text(fields: &[(&str, &str)], w: &str) -> String {
        let body = fields
            .iter()
            .map(|(k, v)| format!(r#"{w}"{k}"{w}:{w}{v}{w}"#))
            .collect::<Vec<_>>()
            .join(",");
        format!("{w}{{{body}}}{w}")
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// A single request's reservation body (fields in any order, some twice, some off, any
        /// whitespace), and the same with a few bytes replaced, inserted or removed: where the
        /// hand-written reader takes it, serde reads the same; it takes every well-formed body
        /// with each field once.
        #[test]
        fn a_single_reservation_body_is_scanned_as_serde_reads_it(
            fields in reserve_fields(),
            w in proptest::sample::select(&["", " ", "\n\t ", "\r\n"][..]),
            edits in proptest::collection::vec(
                (0..3u8, proptest::num::usize::ANY, proptest::sample::select(
                    &[b'"', b'\\', b'0', b'9', b'-', b'.', b'{', b'}', b'[', b']', b',', b':',
                        b' ', 0x01, b'n', 0xc3][..]
                )),
                0..3,
            ),
        ) {
            let text = reserve_text(&fields, w);
            let r = body_scanned_as_serde(&text);
            proptest::prop_assert!(r.is_ok(), "{:?}", r);
            let mut keys: Vec<&str> = fields.iter().map(|f| f.0).collect();
            keys.sort_unstable();
            keys.dedup();
            let well_formed = keys.len() == fields.len()
                && fields.iter().all(|f| !OFF.contains(f));
            if well_formed {
                proptest::prop_assert_eq!(r, Ok(true), "{}", text);
            }
            if let Some(text) = damaged(text, &edits) {
                let r = body_scanned_as_serde(&text);
                proptest::prop_assert!(r.is_ok(), "{:?}", r);
            }
        }
    }

    /// A batch of every well-formed reservation field, compact, for byte-level mutation.
    fn whole_batch() -> String {
        let mut fields = vec![("channel", CHANNELS[0]), ("lines", LINES[2])];
        fields.extend(MORE.iter().copied().filter(|(_, v)| *v != "null"));
        fields.dedup_by_key(|f| f.0);
        reservations_batch(&[
            (fields, "", true),
            (
                vec![("lines", LINES[3]), ("channel", CHANNELS[2])],
                " ",
                false,
            ),
        ])
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]
        /// A well-formed batch with a few bytes replaced, inserted or removed anywhere (quotes,
        /// backslashes, digits, signs, brackets, control and non-ASCII bytes): where the
        /// hand-written reader still takes it, it reads what the general reading reads.
        #[test]
        fn the_scanner_reads_damaged_batches_as_the_general_reading_does(
            edits in proptest::collection::vec(
                (
                    0..3u8,
                    proptest::num::usize::ANY,
                    proptest::sample::select(
                        &[b'"', b'\\', b'0', b'1', b'9', b'-', b'.', b'e', b'{', b'}', b'[', b']',
                            b',', b':', b' ', b'\n', 0x01, b'n', b'a', 0xc3, 0xa9][..]
                    ),
                ),
                1..4,
            ),
        ) {
            // Only text reaches either reader (the body is checked as UTF-8 first).
            if let Some(text) = damaged(whole_batch(), &edits) {
                let r = scanned_as_general(&text);
                proptest::prop_assert!(r.is_ok(), "{:?}", r);
            }
        }
    }

    /// The batches clients write (compact, as serde_json and the load generator write them;
    /// with spaces after `:` and `,`, as Python's `json.dumps` does) are read by the
    /// hand-written reader, as the general reading reads them.
    #[test]
    fn the_scanner_takes_the_batches_clients_write() {
        let line = |sku: &str, q: i64| format!(r#"{{"sku":"{sku}","quantity":{q}}}"#);
        let compact = format!(
            r#"{{"operations":[{{"method":"POST","path":"/v1/reservations","idempotency_key":"r1","body":{{"channel":"web","lines":[{}],"ttl_seconds":900}}}},{{"method":"POST","path":"/v1/reservations","idempotency_key":"r2","body":{{"channel":"web","lines":[{},{}],"order_ref":"o-7","fill":"partial","max_locations":2,"ship_to_region":"eu"}}}}]}}"#,
            line("SKU-000001", 1),
            line("SKU-000002", 3),
            line("SKU-000003", 1),
        );
        let spaced = r#"{"operations": [{"method": "POST", "path": "/v1/reservations", "idempotency_key": "r3", "body": {"channel": "web", "lines": [{"sku": "MUG", "quantity": 2}], "ttl_seconds": null}}, {"method": "GET", "path": "/v1/stock/MUG", "body": null}]}"#;
        for text in [compact.as_str(), spaced, r#"{"operations":[]}"#] {
            let scanned = scan::scan(text, 4).unwrap_or_else(|| panic!("scanned: {text}"));
            let got: Vec<String> = scanned.operations.iter().map(shown).collect();
            assert_eq!(Ok(got), general(&json(text)), "{text}");
        }
        let ops = scan::scan(&compact, 0).expect("scanned").operations;
        let OpBody::Reserve(b) = &ops[1].body else {
            panic!("a reservation's body: {:?}", ops[1].body);
        };
        assert_eq!(b.lines.len(), 2);
        assert_eq!(b.lines[0].quantity, 3);
        assert_eq!(b.max_locations, Some(2));
        assert_eq!(ops[1].idempotency_key.as_deref(), Some("r2"));
    }
}
