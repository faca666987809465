//! The handlers of the tenant operations (configuration, stock, reservations, batch): each
//! is a thin shell over [`ops::perform`], annotated for the OpenAPI document.

use super::batch::{self, OpBody};
use super::body::{Body, RawBody};
use super::dto::*;
use super::error::ApiError;
use super::ops::{self, Caller, OpAnswer, OpRequest, Route};
use super::path::PathParam;
use super::AppState;
use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

/// Longest `Idempotency-Key`: the engine's limit, checked here too so that the refusal names
/// the header.
const IDEMPOTENCY_KEY_MAX: usize = depot_engine::limits::IDEMPOTENCY_KEY_LEN_MAX;

/// The `Idempotency-Key` header of a request, checked by [`idempotency_key`]: read from the
/// request's headers where they are, where axum's `HeaderMap` extractor would clone them all.
/// Never rejects: a malformed key is answered after the body is read, as before.
#[derive(Debug)]
pub struct IdemHeader(pub Result<Option<String>, ApiError>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for IdemHeader {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(IdemHeader(idempotency_key(&parts.headers)))
    }
}

/// The request header naming an idempotency key, and the answer header of a replay; as
/// constants, so that no request parses their names to look them up.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const IDEMPOTENT_REPLAY: HeaderName = HeaderName::from_static("idempotent-replay");

/// The `Idempotency-Key` header, when given.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get(IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|s| {
                (1..=IDEMPOTENCY_KEY_MAX).contains(&s.len())
                    && s.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
            })
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| {
                ApiError::invalid(
                    "Idempotency-Key",
                    format!("must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters"),
                )
            }),
    }
}

/// The answer of one operation as an HTTP response.
pub fn respond(answer: Result<OpAnswer, ApiError>) -> Response {
    match answer {
        Ok(a) => {
            let mut res = (a.status, [(CONTENT_TYPE, JSON)], a.body).into_response();
            if a.replayed {
                res.headers_mut()
                    .insert(IDEMPOTENT_REPLAY, HeaderValue::from_static("true"));
            }
            res
        }
        Err(e) => e.into_response(),
    }
}

async fn single(
    state: &AppState,
    caller: &Caller,
    route: Route,
    body: Body,
    idempotency_key: Result<Option<String>, ApiError>,
) -> Response {
    let idempotency_key = match idempotency_key {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let mut op = OpRequest {
        route,
        body,
        reserve: None,
        idempotency_key,
    };
    let answer = ops::perform(state, caller, std::slice::from_mut(&mut op))
        .await
        .pop()
        .unwrap_or_else(|| Err(ApiError::overloaded()));
    respond(answer)
}

/// Stores a location (admin).
#[utoipa::path(put, path = "/v1/locations/{location}", tag = "configuration",
    params(("location" = String, Path, description = "the location's id")),
    request_body = PutLocationBody,
    responses((status = 200, description = "the stored location", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_location(
    State(s): State<AppState>,
    caller: Caller,
    PathParam(location): PathParam,
    idem: IdemHeader,
    RawBody(body): RawBody,
) -> Response {
    single(&s, &caller, Route::PutLocation(location), body, idem.0).await
}

/// Stores a channel (admin).
#[utoipa::path(put, path = "/v1/channels/{channel}", tag = "configuration",
    params(("channel" = String, Path, description = "the channel's id, e.g. `shopify:acme`")),
    request_body = PutChannelBody,
    responses((status = 200, description = "the stored channel", body = Object),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_channel(
    State(s): State<AppState>,
    caller: Caller,
    PathParam(channel): PathParam,
    idem: IdemHeader,
    RawBody(body): RawBody,
) -> Response {
    single(&s, &caller, Route::PutChannel(channel), body, idem.0).await
}

/// Stores a bundle: a SKU made of components (admin).
#[utoipa::path(put, path = "/v1/bundles/{sku}", tag = "configuration",
    params(("sku" = String, Path, description = "the bundle's SKU")),
    request_body = PutBundleBody,
    responses((status = 200, description = "the stored bundle", body = Object),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_bundle(
    State(s): State<AppState>,
    caller: Caller,
    PathParam(sku): PathParam,
    idem: IdemHeader,
    RawBody(body): RawBody,
) -> Response {
    single(&s, &caller, Route::PutBundle(sku), body, idem.0).await
}

/// Replaces the whole allocation-rule document (admin). Validated as a whole; an error names
/// the rule and the field.
#[utoipa::path(put, path = "/v1/allocation-rules", tag = "configuration",
    request_body(content = Object, description = "`{oversell_policy?, rules: [...]}`"),
    responses((status = 200, body = RulesVersionDto),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_rules(
    State(s): State<AppState>,
    caller: Caller,
    idem: IdemHeader,
    RawBody(body): RawBody,
) -> Response {
    single(&s, &caller, Route::PutRules, body, idem.0).await
}

/// A stock operation: receive, adjust, set, move, transfer, expect (admin, wms for its
/// locations). Requires `Idempotency-Key`.
#[utoipa::path(post, path = "/v1/stock/adjustments", tag = "stock",
    params(("Idempotency-Key" = String, Header, description = "required")),
    request_body = AdjustmentBody,
    responses((status = 200, body = AdjustmentDto),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn adjust(
    State(s): State<AppState>,
    caller: Caller,
    idem: IdemHeader,
    RawBody(body): RawBody,
) -> Response {
    single(&s, &caller, Route::Adjust, body, idem.0).await
}

/// A SKU's levels per location and ATS per channel (any role).
#[utoipa::path(get, path = "/v1/stock/{sku}", tag = "stock",
    params(("sku" = String, Path)),
    responses((status = 200, body = StockDto), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_stock(
    State(s): State<AppState>,
    caller: Caller,
    PathParam(sku): PathParam,
) -> Response {
    single(&s, &caller, Route::GetStock(sku), Body::None, Ok(None)).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExplainQuery {
    /// The channel whose ATS is explained.
    pub channel: Option<String>,
}

/// Why a channel's ATS for a SKU is what it is, term by term (any role; a channel key for its
/// channels).
#[utoipa::path(get, path = "/v1/stock/{sku}/explain", tag = "stock",
    params(("sku" = String, Path), ExplainQuery),
    responses((status = 200, body = ExplanationDto), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn explain(
    State(s): State<AppState>,
    caller: Caller,
    PathParam(sku): PathParam,
    query: Result<Query<ExplainQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let channel = match query {
        Ok(Query(q)) => q.channel,
        Err(e) => return ApiError::invalid("query", e.body_text()).into_response(),
    };
    let route = Route::Explain { sku, channel };
    single(&s, &caller, route, Body::None, Ok(None)).await
}

/// Holds stock for an order (admin, channel for its channels). Requires `Idempotency-Key`.
#[utoipa::path(post, path = "/v1/reservations", tag = "reservations",
    params(("Idempotency-Key" = String, Header, description = "required")),
    request_body = ReserveBody,
    responses((status = 201, body = ReservationDto),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "insufficient_stock, with `details.shortages`", body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn reserve(
    State(s): State<AppState>,
    caller: Caller,
    idem: IdemHeader,
    RawBody(body): RawBody,
) -> Response {
    single(&s, &caller, Route::Reserve, body, idem.0).await
}

/// [`reserve`] without the router ([`super::App`]): the same extractors, in the same order
/// (the key, then the idempotency header, then the body), and the same handler.
pub async fn reserve_direct(state: AppState, req: axum::extract::Request) -> Response {
    use axum::extract::FromRequest;
    let (parts, body) = req.into_parts();
    let caller = match super::auth::authenticate(&state, &parts) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let idem = idempotency_key(&parts.headers);
    let req = axum::extract::Request::from_parts(parts, body);
    let body = match RawBody::from_request(req, &state).await {
        Ok(RawBody(body)) => body,
        Err(e) => return e.into_response(),
    };
    single(&state, &caller, Route::Reserve, body, idem).await
}

/// A reservation (any role; a channel key sees only its channels' reservations, others are
/// 404).
#[utoipa::path(get, path = "/v1/reservations/{id}", tag = "reservations",
    params(("id" = String, Path, description = "`res_<n>`")),
    responses((status = 200, body = ReservationDto), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_reservation(
    State(s): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Response {
    single(&s, &caller, Route::GetReservation(id), Body::None, Ok(None)).await
}

macro_rules! lifecycle {
    ($name:ident, $route:ident, $path:literal, $body:ty, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "reservations",
                            params(("id" = String, Path, description = "`res_<n>`"),
                                ("Idempotency-Key" = String, Header, description = "required")),
                            request_body = $body,
                            responses((status = 200, body = ReservationDto),
                                (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
                                (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
                                (status = 422, body = ErrorBody)),
                            security(("bearer" = [])))]
        pub async fn $name(
            State(s): State<AppState>,
            caller: Caller,
            PathParam(id): PathParam,
            idem: IdemHeader,
            RawBody(body): RawBody,
        ) -> Response {
            single(&s, &caller, Route::$route(id), body, idem.0).await
        }
    };
}

lifecycle!(
    commit,
    Commit,
    "/v1/reservations/{id}/commit",
    CommitBody,
    "Commits all lines, or the listed ones (admin, channel)."
);
lifecycle!(
    release,
    Release,
    "/v1/reservations/{id}/release",
    Object,
    "Releases a hold (admin, channel). No body."
);
lifecycle!(
    cancel,
    Cancel,
    "/v1/reservations/{id}/cancel",
    Object,
    "Cancels a committed order (admin, channel). No body."
);
lifecycle!(
    extend,
    Extend,
    "/v1/reservations/{id}/extend",
    ExtendBody,
    "Extends a hold: expires `ttl_seconds` from now (admin, channel)."
);
lifecycle!(
    fulfil,
    Fulfil,
    "/v1/reservations/{id}/fulfil",
    FulfilBody,
    "Picks and short picks per line and location (admin, wms for its locations)."
);
lifecycle!(
    return_units,
    Return,
    "/v1/reservations/{id}/return",
    ReturnBody,
    "Shipped units come back, sellable or damaged (admin, wms for its locations)."
);

/// Many operations in one request, sequenced together in order; each gets its own status and
/// body, as its single request would. Tenants, keys and events are not batchable.
#[utoipa::path(post, path = "/v1/batch", tag = "batch",
    request_body = BatchBody,
    responses((status = 200, body = BatchResults), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn batch(State(s): State<AppState>, caller: Caller, RawBody(body): RawBody) -> Response {
    let operations = match batch::operations(&body) {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let max = s.limits().batch_operations_max;
    if operations.len() > max {
        return ApiError::invalid(
            "operations",
            format!("{} operations, at most {max} are allowed", operations.len()),
        )
        .into_response();
    }
    // Operations whose method and path are not batchable are answered without running.
    let mut results: Vec<Option<Result<OpAnswer, ApiError>>> = Vec::with_capacity(operations.len());
    let mut ops = Vec::with_capacity(operations.len());
    for (i, op) in operations.into_iter().enumerate() {
        match op.route {
            Some(route) => {
                results.push(None);
                let (body, reserve) = match op.body {
                    OpBody::Absent => (Body::None, None),
                    OpBody::Raw(raw) => (body.part(raw), None),
                    OpBody::Reserve(b) => (Body::None, Some(b)),
                };
                ops.push(OpRequest {
                    route,
                    body,
                    reserve,
                    idempotency_key: op.idempotency_key,
                });
            }
            None => results.push(Some(Err(ApiError::invalid(
                &format!("operations[{i}].path"),
                format!("{} {} is not an operation of a batch", op.method, op.path),
            )))),
        }
    }
    let mut answers = ops::perform(&s, &caller, &mut ops).await.into_iter();
    let results: Vec<(StatusCode, Vec<u8>, bool)> = results
        .into_iter()
        .map(|r| {
            let r = r
                .or_else(|| answers.next())
                .unwrap_or_else(|| Err(ApiError::overloaded()));
            match r {
                Ok(a) => (a.status, a.body, a.replayed),
                Err(e) => (e.status, e.body_text(), false),
            }
        })
        .collect();
    (
        StatusCode::OK,
        [(CONTENT_TYPE, JSON)],
        batch_results(&results),
    )
        .into_response()
}

/// The JSON of [`BatchResults`] from each result's (status, body text, replayed): what serde
/// writes for it (`batch_results_write_as_serde_writes_them`), with each body copied as it is.
fn batch_results(results: &[(StatusCode, Vec<u8>, bool)]) -> Vec<u8> {
    let len = results.iter().map(|r| r.1.len() + 40).sum::<usize>();
    let mut out = Vec::with_capacity(len + 16);
    out.extend_from_slice(br#"{"results":["#);
    for (i, (status, body, replayed)) in results.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"status":"#);
        out.extend_from_slice(itoa::Buffer::new().format(status.as_u16()).as_bytes());
        out.extend_from_slice(br#","body":"#);
        out.extend_from_slice(body);
        if *replayed {
            out.extend_from_slice(br#","replayed":true"#);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// The media type of every answer.
const JSON: HeaderValue = HeaderValue::from_static("application/json");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_results_write_as_serde_writes_them() {
        let bodies = [
            r#"{"id":"res_1","lines":[]}"#,
            r#"{"error":{"code":"x"}}"#,
            "{}",
        ];
        let cases: Vec<Vec<(StatusCode, &str, bool)>> = vec![
            vec![],
            vec![(StatusCode::CREATED, bodies[0], false)],
            vec![
                (StatusCode::OK, bodies[0], true),
                (StatusCode::BAD_REQUEST, bodies[1], false),
                (StatusCode::OK, bodies[2], false),
            ],
        ];
        for case in cases {
            let written = batch_results(
                &case
                    .iter()
                    .map(|(s, b, r)| (*s, b.as_bytes().to_vec(), *r))
                    .collect::<Vec<_>>(),
            );
            let serde = serde_json::to_vec(&BatchResults {
                results: case
                    .iter()
                    .map(|(s, b, r)| BatchResult {
                        status: s.as_u16(),
                        body: serde_json::value::RawValue::from_string((*b).to_string())
                            .expect("JSON"),
                        replayed: *r,
                    })
                    .collect(),
            })
            .expect("serializes");
            assert_eq!(
                String::from_utf8(written).expect("UTF-8"),
                String::from_utf8(serde).expect("UTF-8")
            );
        }
    }
}
