//! Handlers outside the batchable operations: tenants and keys, the rule document, channel
//! exposure, events, health, readiness and metrics.

use super::body::RawBody;
use super::dto::*;
use super::error::{json_text, ApiError};
use super::handlers::{idempotency_key, respond};
use super::ops::{Caller, KeyScope, OpAnswer, Role};
use super::path::PathParam;
use super::AppState;
use crate::keys::KeyError;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use depot_engine::{ChannelId, Command, LocationId, Outcome, Refusal, Request, Sku, TenantId};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

fn key_error(e: KeyError) -> ApiError {
    match e {
        KeyError::Invalid { field, message } => ApiError::invalid(&field, message),
        KeyError::NotFound => ApiError::not_found("key"),
        KeyError::LimitExceeded { what, limit } => {
            ApiError::from_refusal(&Refusal::LimitExceeded { what, limit })
        }
        e @ (KeyError::Io { .. } | KeyError::Corrupt { .. }) => {
            tracing::error!(error = %e, "the key store failed");
            ApiError::from_refusal(&Refusal::Unavailable {
                message: "the key store cannot be written".into(),
            })
        }
    }
}

/// Creates a tenant (master key only).
#[utoipa::path(post, path = "/v1/tenants", tag = "keys",
    request_body = CreateTenantBody,
    responses((status = 201, body = TenantDto), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "invalid_state: the tenant exists", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_tenant(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    respond(create_tenant_inner(&s, &caller, &headers, body).await)
}

async fn create_tenant_inner(
    s: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    body: super::body::Body,
) -> Result<OpAnswer, ApiError> {
    if *caller != Caller::Master {
        return Err(ApiError::forbidden("only the master key creates tenants"));
    }
    let b: CreateTenantBody = body.parse()?;
    let tenant = TenantId::new(&b.id).map_err(|e| ApiError::invalid("id", e.to_string()))?;
    let request = Request {
        tenant: tenant.clone(),
        key_id: caller.key_id().into(),
        idempotency_key: idempotency_key(headers)?,
        command: Command::CreateTenant,
    };
    let (response, _) = run_one(s, request).await?;
    if let Outcome::Refused(r) = &response.outcome {
        return Err(ApiError::from_refusal(r));
    }
    Ok(OpAnswer {
        status: StatusCode::CREATED,
        body: json_text(&TenantDto {
            id: tenant.to_string(),
        }),
        replayed: response.replayed,
    })
}

async fn run_one(s: &AppState, request: Request) -> Result<super::runner::Answer, ApiError> {
    let runner = s.runner()?;
    let mut answers = runner.run(vec![request]).await.map_err(super::run_error)?;
    answers.pop().ok_or_else(ApiError::overloaded)
}

/// 404 unless `tenant` exists.
async fn tenant_exists(s: &AppState, tenant: &TenantId) -> Result<(), ApiError> {
    // Reading any SKU of a tenant that does not exist is refused with `not_found`.
    let probe = Request {
        tenant: tenant.clone(),
        key_id: "keys".into(),
        idempotency_key: None,
        command: Command::GetStock {
            sku: Sku::new("-").expect("a valid id"),
        },
    };
    let (response, _) = run_one(s, probe).await?;
    match response.outcome {
        Outcome::Refused(Refusal::NotFound { .. }) => {
            Err(ApiError::not_found(format!("tenant {tenant}")))
        }
        _ => Ok(()),
    }
}

fn parse_list<T>(
    field: &str,
    items: Option<Vec<String>>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, ApiError> {
    items
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, s)| parse(s).map_err(|m| ApiError::invalid(&format!("{field}[{i}]"), m)))
        .collect()
}

/// Creates a key (master key for any tenant, admin key for its own). The secret is in the
/// answer and nowhere else.
#[utoipa::path(post, path = "/v1/keys", tag = "keys",
    request_body = CreateKeyBody,
    responses((status = 201, body = CreatedKeyDto), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_key(
    State(s): State<AppState>,
    caller: Caller,
    RawBody(body): RawBody,
) -> Response {
    respond(create_key_inner(&s, &caller, body).await)
}

async fn create_key_inner(
    s: &AppState,
    caller: &Caller,
    body: super::body::Body,
) -> Result<OpAnswer, ApiError> {
    let own = admin_tenant(caller)?;
    let b: CreateKeyBody = body.parse()?;
    let tenant = match (own, &b.tenant) {
        (None, None) => return Err(ApiError::invalid("tenant", "required with the master key")),
        (None, Some(t)) => {
            TenantId::new(t).map_err(|e| ApiError::invalid("tenant", e.to_string()))?
        }
        (Some(own), None) => own,
        (Some(own), Some(t)) if own.as_str() == t => own,
        (Some(_), Some(_)) => {
            return Err(ApiError::forbidden(
                "an admin key creates keys of its own tenant only",
            ))
        }
    };
    let channels = parse_list("channels", b.channels.clone(), |c| {
        ChannelId::new(c).map_err(|e| e.to_string())
    })?;
    let locations = parse_list("locations", b.locations.clone(), |l| {
        LocationId::new(l).map_err(|e| e.to_string())
    })?;
    let cidrs = parse_list("cidrs", b.cidrs.clone(), |c| {
        c.parse::<ipnet::IpNet>()
            .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| "expected a CIDR such as 10.0.0.0/8".to_string())
    })?;
    let role = match b.role {
        RoleDto::Admin => Role::Admin,
        RoleDto::Channel => Role::Channel,
        RoleDto::Wms => Role::Wms,
        RoleDto::Reader => Role::Reader,
    };
    // Scopes a role does not use would be stored and never applied: refused, not ignored.
    if !channels.is_empty() && role != Role::Channel {
        return Err(ApiError::invalid(
            "channels",
            format!(
                "only a channel key acts for channels, not a {} key",
                role.as_str()
            ),
        ));
    }
    if !locations.is_empty() && role != Role::Wms {
        return Err(ApiError::invalid(
            "locations",
            format!(
                "only a wms key acts for locations, not a {} key",
                role.as_str()
            ),
        ));
    }
    tenant_exists(s, &tenant).await?;
    let keys = s.keys().clone();
    let now = super::runner::wall_ms() as i64;
    let t = tenant.clone();
    let created = tokio::task::spawn_blocking(move || {
        keys.create(Some(t), role, channels, locations, cidrs, now)
    })
    .await
    .map_err(|_| ApiError::overloaded())?
    .map_err(key_error)?;
    let (record, secret) = created;
    tracing::info!(key = %record.id, tenant = %tenant, role = role.as_str(), "key created");
    Ok(OpAnswer {
        status: StatusCode::CREATED,
        body: json_text(&CreatedKeyDto {
            id: record.id,
            key: secret,
            tenant: tenant.to_string(),
            role: b.role,
            channels: record.channels.iter().map(ToString::to_string).collect(),
            locations: record.locations.iter().map(ToString::to_string).collect(),
            cidrs: record.cidrs.iter().map(ToString::to_string).collect(),
        }),
        replayed: false,
    })
}

/// `None` for the master key, the tenant of an admin key, 403 for any other key.
fn admin_tenant(caller: &Caller) -> Result<Option<TenantId>, ApiError> {
    match caller {
        Caller::Master => Ok(None),
        Caller::Key(k) if k.role == Role::Admin => Ok(Some(k.tenant.clone())),
        Caller::Key(_) => Err(ApiError::forbidden(
            "only the master key and admin keys manage keys",
        )),
    }
}

/// Revokes a key (master key, or an admin key for its tenant's keys; others' are 404).
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path)),
    responses((status = 204, description = "revoked"), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke_key(
    State(s): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Response {
    let own = match admin_tenant(&caller) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let keys = s.keys().clone();
    let revoked = tokio::task::spawn_blocking(move || keys.revoke(&id, own.as_ref())).await;
    match revoked {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => key_error(e).into_response(),
        Err(_) => ApiError::overloaded().into_response(),
    }
}

/// Runs `f` on the engine's whole state in a blocking thread (the rule document, exposure).
async fn inspect<R: Send + 'static>(
    s: &AppState,
    f: impl FnOnce(&depot_engine::front::Front, &[&depot_engine::shard::ShardState]) -> R
        + Send
        + 'static,
) -> Result<R, ApiError> {
    let runner = s.runner()?;
    tokio::task::spawn_blocking(move || runner.engine().inspect(f))
        .await
        .map_err(|_| ApiError::overloaded())
}

/// The rule document with its version (any key of the tenant).
#[utoipa::path(get, path = "/v1/allocation-rules", tag = "configuration",
    responses((status = 200, body = RuleDocumentDto), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_rules(State(s): State<AppState>, caller: Caller) -> Response {
    let key = match caller.require(&[Role::Admin, Role::Channel, Role::Wms, Role::Reader]) {
        Ok(k) => k.clone(),
        Err(e) => return e.into_response(),
    };
    let doc = inspect(&s, move |front, _| {
        front
            .tenant_index
            .get(&key.tenant)
            .map(|&t| front.tenants[t as usize].config.rule_document.clone())
    })
    .await;
    match doc {
        Ok(Some(doc)) => Json(doc).into_response(),
        Ok(None) => ApiError::not_found("tenant").into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExposureQuery {
    /// Only SKUs after this one (the `next` of the previous page).
    pub after: Option<String>,
    /// SKUs per page, 1 to 1000 (default 100).
    pub limit: Option<usize>,
}

/// Per SKU, what a channel is offered (its ATS) against the real available: the units held
/// back from it and any units advertised beyond the real stock (admin, reader, channel for
/// its channels).
#[utoipa::path(get, path = "/v1/channels/{channel}/exposure", tag = "stock",
    params(("channel" = String, Path), ExposureQuery),
    responses((status = 200, body = ExposureDto), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn exposure(
    State(s): State<AppState>,
    caller: Caller,
    PathParam(channel): PathParam,
    query: Result<Query<ExposureQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match exposure_inner(&s, &caller, channel, query).await {
        Ok(dto) => Json(dto).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn exposure_inner(
    s: &AppState,
    caller: &Caller,
    channel: String,
    query: Result<Query<ExposureQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<ExposureDto, ApiError> {
    let key: KeyScope = caller
        .require(&[Role::Admin, Role::Reader, Role::Channel])?
        .clone();
    let Query(q) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be 1 to 1000"));
    }
    if key.role == Role::Channel
        && !key.channels.is_empty()
        && !key.channels.iter().any(|c| c.as_str() == channel)
    {
        return Err(ApiError::forbidden(format!(
            "this key may not act for channel {channel:?}"
        )));
    }
    let ch = ChannelId::new(&channel).map_err(|e| ApiError::invalid("channel", e.to_string()))?;
    let after = q.after.unwrap_or_default();
    let tenant = key.tenant.clone();
    let found = inspect(s, move |front, shards| {
        let &t = front.tenant_index.get(&tenant)?;
        let cfg = &front.tenants[t as usize].config;
        let c = cfg.channel_idx(&ch)?;
        let mut rows: Vec<ExposureSkuDto> = shards
            .iter()
            .flat_map(|sh| sh.skus.iter())
            .filter(|(k, _)| k.tenant == t && *k.sku > *after.as_str())
            .filter(|(k, _)| Sku::new(&k.sku).is_ok_and(|s| !cfg.is_bundle(&s)))
            .map(|(k, st)| {
                let ats = st.ats(c);
                let available: i64 = st.levels.iter().map(|l| l.available()).sum();
                ExposureSkuDto {
                    sku: k.sku.to_string(),
                    available_to_sell: ats,
                    available,
                    held_back: (available - ats).max(0),
                    exposure: (ats - available.max(0)).max(0),
                }
            })
            .collect();
        rows.sort_by(|a, b| a.sku.cmp(&b.sku));
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next = more.then(|| rows.last().map(|r| r.sku.clone())).flatten();
        Some(ExposureDto {
            channel: ch.to_string(),
            skus: rows,
            next,
        })
    })
    .await?;
    found.ok_or_else(|| ApiError::not_found(format!("channel {channel}")))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Events after this sequence number (the `next` of the previous page); default 0.
    pub after: Option<u64>,
    /// Sequence numbers per page, 1 to 1000 (default 100).
    pub limit: Option<usize>,
}

fn events_key(caller: &Caller) -> Result<KeyScope, ApiError> {
    caller.require(&[Role::Admin, Role::Reader]).cloned()
}

/// The tenant's events after a cursor (admin, reader). Events are held in memory (the most
/// recent ones); the log is the full history.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(EventsQuery),
    responses((status = 200, body = EventPageDto), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn events(
    State(s): State<AppState>,
    caller: Caller,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let key = match events_key(&caller) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return ApiError::invalid("query", e.body_text()).into_response(),
    };
    let max = s.limits().events_page_max;
    let limit = q.limit.unwrap_or(100);
    if !(1..=max).contains(&limit) {
        return ApiError::invalid("limit", format!("must be 1 to {max}")).into_response();
    }
    let page = s.events().read(&key.tenant, q.after.unwrap_or(0), limit);
    let mut body = json!(EventPageDto {
        events: page.events,
        next: page.next,
    });
    if page.missed {
        body["missed"] = json!(true);
    }
    Json(body).into_response()
}

/// The tenant's events as server-sent events, from `after` or the `Last-Event-ID` header
/// (admin, reader). Each event's `id` is its sequence number.
#[utoipa::path(get, path = "/v1/events/stream", tag = "events",
    params(EventsQuery, ("Last-Event-ID" = Option<String>, Header)),
    responses((status = 200, description = "text/event-stream", content_type = "text/event-stream"),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn event_stream(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let key = match events_key(&caller) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let after = match query {
        Ok(Query(q)) => q.after.unwrap_or(0),
        Err(e) => return ApiError::invalid("query", e.body_text()).into_response(),
    };
    let after = match headers.get("last-event-id").map(|v| v.to_str()) {
        None => after,
        Some(Ok(v)) => match v.trim().parse::<u64>() {
            Ok(id) => id,
            Err(_) => {
                return ApiError::invalid("Last-Event-ID", "must be a sequence number")
                    .into_response()
            }
        },
        Some(Err(_)) => {
            return ApiError::invalid("Last-Event-ID", "must be a sequence number").into_response()
        }
    };
    let mut stopping = s.stopping();
    let stop = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let stream = crate::events::sse(s.events().clone(), key.tenant, after).take_until(stop);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = HealthDto)))]
pub async fn healthz() -> Json<HealthDto> {
    Json(HealthDto {
        status: "ok".into(),
    })
}

/// Readiness: recovery is done and `/v1` is served.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = HealthDto), (status = 503, body = ErrorBody)))]
pub async fn readyz(State(s): State<AppState>) -> Response {
    if s.is_ready() {
        Json(HealthDto {
            status: "ready".into(),
        })
        .into_response()
    } else {
        ApiError::not_ready().into_response()
    }
}

/// Prometheus metrics (bind the server privately: this endpoint has no authentication).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(s): State<AppState>) -> Response {
    let m = s.metrics();
    if let Ok(runner) = s.runner() {
        let mut depths = runner.engine().queue_depths();
        let (writes, reads) = runner.queued();
        depths.extend([writes, reads]);
        m.set_queue_depths(&depths);
        if let Some(j) = runner.journal() {
            m.observe_group_commit(&j.stats());
        }
        let engine = runner.engine().clone();
        let now = super::runner::wall_ms();
        if let Ok(c) = tokio::task::spawn_blocking(move || engine.reservation_counts(now)).await {
            m.set_holds(c.held, c.overdue, c.committed);
        }
    }
    if let Some(last) = s.snapshot_stats().and_then(|st| st.last) {
        m.set_snapshot(last.pause.as_secs_f64(), last.seq);
    }
    let mut res = m.render().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    res
}
