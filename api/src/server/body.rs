//! Request bodies: read as bytes by [`RawBody`] (so the role is checked before the body is
//! judged), parsed later into typed DTOs with errors that name the failing field.

use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::{Deserialize, DeserializeOwned};
use serde_json::value::RawValue;
use serde_json::Value;

/// A request body not yet parsed.
#[derive(Clone, Debug, Default)]
pub enum Body {
    /// No body (or an empty one).
    #[default]
    None,
    /// Bytes with a JSON content type.
    Json(Bytes),
    /// Bytes with another content type (or none): refused when a body is needed.
    NotJson(Bytes, String),
    /// An operation's body inside `POST /v1/batch`: its JSON text, the bytes of the batch's
    /// body that hold it (never `null`: a `null` body is [`Body::None`]).
    Raw(Bytes),
}

/// The body as bytes, at most [`BodyLimit`] of them (413 above it).
#[derive(Debug)]
pub struct RawBody(pub Body);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        // The content type is kept as the header's value (a cheap clone of shared bytes) and
        // judged without allocating; only a body that is not JSON gets its text copied.
        let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(usize::MAX, |l| l.0);
        let limited = http_body_util::Limited::new(req.into_body(), limit);
        let bytes = match http_body_util::BodyExt::collect(limited).await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ApiError::payload_too_large(limit));
            }
            Err(e) => {
                return Err(ApiError::invalid(
                    "body",
                    format!("could not read the body: {e}"),
                ))
            }
        };
        if bytes.is_empty() {
            return Ok(RawBody(Body::None));
        }
        let text = content_type
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if is_json_type(text) {
            Ok(RawBody(Body::Json(bytes)))
        } else {
            Ok(RawBody(Body::NotJson(bytes, text.to_string())))
        }
    }
}

/// True for `application/json` and any `+json` type, in any case, with or without parameters.
fn is_json_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    const JSON: &str = "application/json";
    const SUFFIX: &str = "+json";
    essence.eq_ignore_ascii_case(JSON)
        || (essence.len() >= SUFFIX.len()
            && essence.as_bytes()[essence.len() - SUFFIX.len()..]
                .eq_ignore_ascii_case(SUFFIX.as_bytes()))
}

/// The body size limit, put in the request's extensions by the edge layer
/// ([`EdgeLayer`](super::layers::EdgeLayer)).
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

impl Body {
    /// Parses the body as `T` (which may borrow from it); a missing body is an error.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, ApiError> {
        match self {
            Body::None => Err(ApiError::invalid("body", "a JSON body is required")),
            _ => self.parse_inner(),
        }
    }

    /// Parses the body as `T`; a missing body is `T::default()`.
    pub fn parse_or_default<T: DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        match self {
            Body::None => Ok(T::default()),
            _ => self.parse_inner(),
        }
    }

    /// The body as text, when it is JSON (by its content type) and UTF-8.
    pub fn text(&self) -> Option<&str> {
        match self {
            Body::Json(b) | Body::Raw(b) => std::str::from_utf8(b).ok(),
            Body::None | Body::NotJson(..) => None,
        }
    }

    /// Refuses any body (for operations that take none).
    pub fn empty(&self) -> Result<(), ApiError> {
        match self {
            Body::None => Ok(()),
            Body::Json(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(()),
            Body::Json(b) => Self::empty_object(b),
            Body::Raw(b) => Self::empty_object(b),
            Body::NotJson(..) => Err(ApiError::invalid("body", "this operation takes no body")),
        }
    }

    fn empty_object(b: &[u8]) -> Result<(), ApiError> {
        match serde_json::from_slice::<Value>(b) {
            Ok(Value::Object(m)) if m.is_empty() => Ok(()),
            _ => Err(ApiError::invalid("body", "this operation takes no body")),
        }
    }

    /// The body of one operation of a batch: `raw`, a value of this body, as a [`Body::Raw`]
    /// sharing this body's bytes.
    pub fn part(&self, raw: &RawValue) -> Body {
        let text = raw.get().as_bytes();
        let bytes = match self {
            Body::Json(all) | Body::Raw(all) => {
                // Where `raw` lies in this body; it was parsed from it, so always inside.
                let start = (text.as_ptr() as usize).wrapping_sub(all.as_ptr() as usize);
                match start.checked_add(text.len()) {
                    Some(end) if end <= all.len() => all.slice(start..end),
                    _ => Bytes::copy_from_slice(text),
                }
            }
            _ => Bytes::copy_from_slice(text),
        };
        Body::Raw(bytes)
    }

    fn parse_inner<'a, T: Deserialize<'a>>(&'a self) -> Result<T, ApiError> {
        // Every body is an object: serde would also read a struct from an array (`[null]`
        // as "all fields absent"), which no client means.
        let object = match self {
            Body::Json(b) | Body::Raw(b) => starts_an_object(b),
            _ => true,
        };
        if !object {
            return Err(ApiError::invalid("body", "must be a JSON object"));
        }
        match self {
            Body::None => Err(ApiError::invalid("body", "a JSON body is required")),
            Body::NotJson(_, ct) => Err(ApiError::invalid(
                "content-type",
                format!("must be application/json, not {ct:?}"),
            )),
            Body::Json(bytes) | Body::Raw(bytes) => from_slice(bytes),
        }
    }
}

fn starts_an_object(b: &[u8]) -> bool {
    b.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'{')
}

fn from_slice<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    // The plain parse first: tracking the path of every value costs on every request, and the
    // path is only needed to name the field of an error. A body that fails is parsed again,
    // tracking the path, for the error (the same parser on the same bytes fails the same way).
    // The plain parse reads text checked as UTF-8 once: serde_json's reader of bytes checks
    // each string it reads on its own, and a batch of reservations has a dozen strings per
    // operation (a tenth of the server's work on a batch went to those checks). Bytes that are
    // not UTF-8 go to the second parse, which says where.
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(value) = serde_json::from_str(text) {
            return Ok(value);
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(field_error)?;
    de.end()
        .map_err(|e| ApiError::invalid("body", format!("trailing data: {e}")))?;
    Ok(value)
}

/// A deserialization error as 400 `invalid_request` naming the field (`lines[0].quantity`).
fn field_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let message = strip_position(&inner.to_string());
    let mut field = if path == "." { String::new() } else { path };
    // A missing field is reported at its parent: name the field itself.
    if let Some(rest) = message.strip_prefix("missing field `") {
        if let Some(name) = rest.split('`').next() {
            field = if field.is_empty() {
                name.to_string()
            } else {
                format!("{field}.{name}")
            };
        }
    }
    if inner.is_syntax() || inner.is_eof() {
        return ApiError::invalid(
            if field.is_empty() { "body" } else { &field },
            format!("not valid JSON: {message}"),
        );
    }
    ApiError::invalid(if field.is_empty() { "body" } else { &field }, message)
}

/// `... at line 1 column 7` → `...`: positions mean little to an API client.
fn strip_position(m: &str) -> String {
    match m.rfind(" at line ") {
        Some(i) => m[..i].to_string(),
        None => m.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn json_content_types_are_told_apart_without_case() {
        for yes in [
            "application/json",
            "Application/JSON",
            " application/json ; charset=utf-8",
            "application/merge-patch+json",
            "application/problem+JSON;q=1",
        ] {
            assert!(is_json_type(yes), "{yes}");
        }
        for no in [
            "",
            "json",
            "text/plain",
            "application/jsonx",
            "application/json-seq",
            "+jso",
            "application/xml; note=+json",
        ] {
            assert!(!is_json_type(no), "{no}");
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Line {
        sku: String,
        quantity: i64,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Lines {
        lines: Vec<Line>,
    }

    fn field_of(json: &str) -> String {
        let e = Body::Json(Bytes::from(json.to_string()))
            .parse::<Lines>()
            .unwrap_err();
        e.details["field"].as_str().unwrap().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            field_of(r#"{"lines":[{"sku":"a","quantity":"x"}]}"#),
            "lines[0].quantity"
        );
        assert_eq!(field_of(r#"{"lines":[{"sku":"a"}]}"#), "lines[0].quantity");
        assert_eq!(field_of(r#"{"lines":[], "ttl_ms": 5}"#), "ttl_ms");
        assert_eq!(field_of(r#"{"lines":"#), "lines");
        assert_eq!(field_of(r#""x""#), "body");
    }

    /// A batch's operations borrow their bodies from the batch's bytes, and parse as the same
    /// bodies sent alone would.
    #[test]
    fn a_batch_operation_body_is_a_part_of_the_batch() {
        #[derive(Debug, Deserialize)]
        struct Ops<'a> {
            #[serde(borrow)]
            ops: Vec<Option<&'a RawValue>>,
        }
        let all = Body::Json(Bytes::from(
            r#"{"ops":[{"lines":[{"sku":"a","quantity":2}]}, {}, null, {"lines":1}]}"#,
        ));
        let ops: Ops = all.parse().expect("parses");
        let parts: Vec<Body> = ops
            .ops
            .iter()
            .map(|r| r.map_or(Body::None, |r| all.part(r)))
            .collect();
        let Body::Json(bytes) = &all else {
            unreachable!()
        };
        let Body::Raw(first) = &parts[0] else {
            panic!("a part: {:?}", parts[0])
        };
        assert_eq!(&first[..], br#"{"lines":[{"sku":"a","quantity":2}]}"#);
        // The same memory, not a copy.
        assert!(std::ptr::eq(first.as_ptr(), bytes[8..].as_ptr()));
        let lines: Lines = parts[0].parse().expect("a body");
        assert_eq!(lines.lines[0].quantity, 2);
        assert!(parts[1].empty().is_ok());
        assert!(matches!(parts[2], Body::None));
        let e = parts[3].parse::<Lines>().unwrap_err();
        assert_eq!(e.details["field"], "lines");
        // A value from elsewhere is copied.
        let other: Box<RawValue> = serde_json::from_str(r#"{"x":1}"#).expect("json");
        let Body::Raw(copied) = all.part(&other) else {
            unreachable!()
        };
        assert_eq!(&copied[..], br#"{"x":1}"#);
    }
}
