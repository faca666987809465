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
        for text in &read_fast {
            let body = json(text);
            let fast = fast(&body).unwrap_or_else(|| panic!("read in one pass: {text}"));
            let got: Vec<String> = fast.operations.iter().map(shown).collect();
            assert_eq!(Ok(got), general(&body), "{text}");
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
            if let Some(fast) = fast(&body) {
                let got: Vec<String> = fast.operations.iter().map(shown).collect();
                proptest::prop_assert_eq!(Ok(got), want.clone(), "{}", text);
            }
            let got = operations(&body)
                .map(|ops| ops.iter().map(shown).collect::<Vec<_>>())
                .map_err(|e| e.message);
            proptest::prop_assert_eq!(got, want, "{}", text);
        }
    }
}
