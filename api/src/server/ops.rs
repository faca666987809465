//! The tenant operations of the API, shared by the single endpoints and `POST /v1/batch`:
//! authorize (role, then scopes), parse the body, build the engine request(s), run them as one
//! group, and render the answer as the status and JSON body of the single endpoint.
//!
//! Order of checks, for every operation: the role may use the endpoint (403), the body parses
//! (400 naming the field), the key's channels or locations cover it (403), a channel key only
//! sees reservations of its own channels (404, as for an id that does not exist: a channel key
//! learns nothing about other channels' orders).

use super::body::Body;
use super::dto::*;
use super::error::{json_text, ApiError};
use super::runner::Answer;
use super::AppState;
use axum::http::StatusCode;
use depot_engine::{
    ChannelId, Command, CommitLine, Component, EventKind, FillPolicy, FulfilLine, LineRequest,
    LocationId, Outcome, Refusal, Reply, Request, ReservationId, RuleDocument, Sku, TenantId,
};
use serde_json::{json, Value};

use crate::keys::KeyRecord;
pub use crate::keys::Role;
use std::sync::Arc;

/// Who is asking, once authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The master key: tenants and keys only.
    Master,
    Key(KeyScope),
}

/// What a tenant key may do: its record (id, role, channels, locations, through `Deref`),
/// shared with the key store rather than copied for every request, and its tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyScope {
    pub tenant: TenantId,
    record: Arc<KeyRecord>,
}

impl KeyScope {
    /// The scope of `record`; `None` for a record without a tenant (the store never makes one).
    pub fn of(record: Arc<KeyRecord>) -> Option<KeyScope> {
        let tenant = record.tenant.clone()?;
        Some(KeyScope { tenant, record })
    }
}

impl std::ops::Deref for KeyScope {
    type Target = KeyRecord;

    fn deref(&self) -> &KeyRecord {
        &self.record
    }
}

impl Caller {
    pub fn key_id(&self) -> &str {
        match self {
            Caller::Master => "master",
            Caller::Key(k) => &k.id,
        }
    }

    /// The key's scope when its role is one of `roles`; 403 otherwise.
    pub fn require(&self, roles: &[Role]) -> Result<&KeyScope, ApiError> {
        match self {
            Caller::Master => Err(ApiError::forbidden(
                "the master key may only create tenants and keys; use a tenant key",
            )),
            Caller::Key(k) if roles.contains(&k.role) => Ok(k),
            Caller::Key(k) => Err(ApiError::forbidden(format!(
                "a {} key may not do this",
                k.role.as_str()
            ))),
        }
    }
}

const ANY: &[Role] = &[Role::Admin, Role::Channel, Role::Wms, Role::Reader];
const ADMIN: &[Role] = &[Role::Admin];
const ADMIN_CHANNEL: &[Role] = &[Role::Admin, Role::Channel];
const ADMIN_WMS: &[Role] = &[Role::Admin, Role::Wms];

impl KeyScope {
    fn check_channel(&self, channel: &str) -> Result<(), ApiError> {
        if self.role == Role::Channel && !self.acts_for_channel(channel) {
            return Err(ApiError::forbidden(format!(
                "this key may not act for channel {channel:?}"
            )));
        }
        Ok(())
    }
    fn check_location(&self, location: &str) -> Result<(), ApiError> {
        if self.role == Role::Wms
            && !self.locations.is_empty()
            && !self.locations.iter().any(|l| l.as_str() == location)
        {
            return Err(ApiError::forbidden(format!(
                "this key may not act for location {location:?}"
            )));
        }
        Ok(())
    }
    /// A channel key sees only its channels' reservations.
    fn sees_reservations_of(&self, channel: &str) -> bool {
        self.role != Role::Channel || self.acts_for_channel(channel)
    }
    fn acts_for_channel(&self, channel: &str) -> bool {
        self.channels.is_empty() || self.channels.iter().any(|c| c.as_str() == channel)
    }
}

/// Which operation, with its path parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    PutLocation(String),
    PutChannel(String),
    PutBundle(String),
    PutRules,
    Adjust,
    GetStock(String),
    Explain {
        sku: String,
        channel: Option<String>,
    },
    Reserve,
    GetReservation(String),
    Commit(String),
    Release(String),
    Cancel(String),
    Extend(String),
    Fulfil(String),
    Return(String),
}

impl Route {
    /// Reads and writes keyed by the caller need an `Idempotency-Key`.
    fn needs_idempotency_key(&self) -> bool {
        matches!(
            self,
            Route::Adjust
                | Route::Reserve
                | Route::Commit(_)
                | Route::Release(_)
                | Route::Cancel(_)
                | Route::Extend(_)
                | Route::Fulfil(_)
                | Route::Return(_)
        )
    }

    fn roles(&self) -> &'static [Role] {
        match self {
            Route::PutLocation(_)
            | Route::PutChannel(_)
            | Route::PutBundle(_)
            | Route::PutRules => ADMIN,
            Route::Adjust | Route::Fulfil(_) | Route::Return(_) => ADMIN_WMS,
            Route::GetStock(_) | Route::Explain { .. } | Route::GetReservation(_) => ANY,
            Route::Reserve
            | Route::Commit(_)
            | Route::Release(_)
            | Route::Cancel(_)
            | Route::Extend(_) => ADMIN_CHANNEL,
        }
    }

    /// Parses `METHOD /v1/...` (with an optional query for explain) as used in a batch.
    pub fn parse(method: &str, path: &str) -> Option<Route> {
        // The operation of nearly every batch, without taking the path apart.
        if path == "/v1/reservations" && method.eq_ignore_ascii_case("POST") {
            return Some(Route::Reserve);
        }
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        // At most three segments after `/v1/`; no allocation for the path or the method (a
        // batch parses one per operation).
        let mut segs = [""; 3];
        let mut n = 0;
        for seg in path.strip_prefix("/v1/")?.split('/') {
            *segs.get_mut(n)? = seg;
            n += 1;
        }
        let segs = &segs[..n];
        let s = |i: usize| segs[i].to_string();
        let method = ["GET", "POST", "PUT"]
            .into_iter()
            .find(|m| m.eq_ignore_ascii_case(method))?;
        let route = match (method, segs) {
            ("PUT", ["locations", _]) => Route::PutLocation(s(1)),
            ("PUT", ["channels", _]) => Route::PutChannel(s(1)),
            ("PUT", ["bundles", _]) => Route::PutBundle(s(1)),
            ("PUT", ["allocation-rules"]) => Route::PutRules,
            ("POST", ["stock", "adjustments"]) => Route::Adjust,
            ("GET", ["stock", _]) => Route::GetStock(s(1)),
            ("GET", ["stock", _, "explain"]) => Route::Explain {
                sku: s(1),
                channel: query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("channel="))
                    .map(str::to_string),
            },
            ("POST", ["reservations"]) => Route::Reserve,
            ("GET", ["reservations", _]) => Route::GetReservation(s(1)),
            ("POST", ["reservations", _, "commit"]) => Route::Commit(s(1)),
            ("POST", ["reservations", _, "release"]) => Route::Release(s(1)),
            ("POST", ["reservations", _, "cancel"]) => Route::Cancel(s(1)),
            ("POST", ["reservations", _, "extend"]) => Route::Extend(s(1)),
            ("POST", ["reservations", _, "fulfil"]) => Route::Fulfil(s(1)),
            ("POST", ["reservations", _, "return"]) => Route::Return(s(1)),
            _ => return None,
        };
        Some(route)
    }
}

/// One operation as asked.
#[derive(Clone, Debug)]
pub struct OpRequest<'a> {
    pub route: Route,
    pub body: Body,
    /// A reservation's body already read from a batch's bytes ([`super::batch`]); `body` is
    /// then [`Body::None`].
    pub reserve: Option<ReserveBody<'a>>,
    pub idempotency_key: Option<String>,
}

/// An operation's answer: what the single endpoint sends.
#[derive(Clone, Debug)]
pub struct OpAnswer {
    pub status: StatusCode,
    /// The body as JSON text.
    pub body: Vec<u8>,
    pub replayed: bool,
}

/// How to turn the engine's answers into the API's.
#[derive(Clone, Debug)]
enum Render {
    Configured {
        id: String,
        body: Value,
    },
    Rules,
    /// An adjustment, followed by a stock read of `sku` for the levels at `locations`.
    Adjusted {
        locations: Vec<String>,
    },
    Stock,
    Explain,
    /// A reservation; `read_after` when the write replies `Done` and a read follows it.
    Reservation {
        status: StatusCode,
    },
}

/// An authorized operation: the engine requests to run (the operation, maybe a read after it).
#[derive(Debug)]
struct Planned {
    requests: Vec<Request>,
    /// A channel key's operation on this reservation: checked against its channels first.
    owner_check: Option<ReservationId>,
    render: Render,
}

/// `make` of `s`; a refusal names `field`, which is only written then (a line's field name,
/// `lines[3].sku`, is passed as `format_args!` and formatted for an error alone).
fn id<T>(
    field: impl std::fmt::Display,
    s: &str,
    make: fn(&str) -> Result<T, depot_engine::ids::IdError>,
) -> Result<T, ApiError> {
    make(s).map_err(|e| ApiError::invalid(&field.to_string(), e.to_string()))
}

fn sku(field: impl std::fmt::Display, s: &str) -> Result<Sku, ApiError> {
    id(field, s, Sku::new)
}
fn location(field: impl std::fmt::Display, s: &str) -> Result<LocationId, ApiError> {
    id(field, s, LocationId::new)
}
fn channel(field: impl std::fmt::Display, s: &str) -> Result<ChannelId, ApiError> {
    id(field, s, ChannelId::new)
}

/// A reservation id from a path: malformed ids are ids that do not exist.
pub fn reservation_id(s: &str) -> Result<ReservationId, ApiError> {
    s.parse::<ReservationId>()
        .map_err(|()| ApiError::not_found(format!("reservation {s}")))
}

fn ttl_ms(field: &str, seconds: u64) -> Result<u64, ApiError> {
    seconds
        .checked_mul(1000)
        .ok_or_else(|| ApiError::invalid(field, "too large"))
}

fn time_ms(field: &str, s: &Option<String>) -> Result<Option<u64>, ApiError> {
    s.as_deref()
        .map(|t| {
            parse_rfc3339(t).ok_or_else(|| ApiError::invalid(field, "must be an RFC 3339 time"))
        })
        .transpose()
}

fn lines_max(field: &str, n: usize, max: usize) -> Result<(), ApiError> {
    if n > max {
        return Err(ApiError::invalid(
            field,
            format!("{n} lines, at most {max} are allowed"),
        ));
    }
    Ok(())
}

/// Authorizes `op` for `key` and builds its requests.
fn plan(op: &mut OpRequest<'_>, key: &KeyScope, lines_limit: usize) -> Result<Planned, ApiError> {
    // Taken, not copied: nothing reads an operation's key after its plan.
    let mut idem = op.idempotency_key.take();
    if op.route.needs_idempotency_key() && idem.is_none() {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "this operation requires an Idempotency-Key header",
        ));
    }
    let body = &op.body;
    let mut owner_check = None;
    let mut follow: Option<Command> = None;
    let (command, render) = match &op.route {
        Route::PutLocation(l) => {
            let b: PutLocationBody = body.parse()?;
            let c = Command::PutLocation {
                location: location("location", l)?,
                kind: b.kind.into(),
                name: b.name.clone(),
                region: b.region.clone(),
                wms: b.wms.clone(),
            };
            let echo = serde_json::to_value(&b).unwrap_or(Value::Null);
            (
                c,
                Render::Configured {
                    id: l.clone(),
                    body: echo,
                },
            )
        }
        Route::PutChannel(ch) => {
            let b: PutChannelBody = body.parse()?;
            let c = Command::PutChannel {
                channel: channel("channel", ch)?,
                kind: b.kind.into(),
                priority: b.priority.unwrap_or(0),
            };
            let echo = json!({ "kind": b.kind, "priority": b.priority.unwrap_or(0) });
            (
                c,
                Render::Configured {
                    id: ch.clone(),
                    body: echo,
                },
            )
        }
        Route::PutBundle(s) => {
            let b: PutBundleBody = body.parse()?;
            let components = b
                .components
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    Ok(Component {
                        sku: sku(format_args!("components[{i}].sku"), &c.sku)?,
                        quantity: c.quantity,
                    })
                })
                .collect::<Result<Vec<_>, ApiError>>()?;
            let echo = json!({ "components": b.components });
            let c = Command::PutBundle {
                sku: sku("sku", s)?,
                components,
            };
            (
                c,
                Render::Configured {
                    id: s.clone(),
                    body: echo,
                },
            )
        }
        Route::PutRules => {
            let document: RuleDocument = body.parse()?;
            (Command::PutRules { document }, Render::Rules)
        }
        Route::Adjust => {
            let b: AdjustmentBody = body.parse()?;
            key.check_location(&b.location)?;
            if let Some(to) = &b.to_location {
                key.check_location(to)?;
            }
            let s = sku("sku", &b.sku)?;
            let mut locations = vec![b.location.clone()];
            locations.extend(b.to_location.clone());
            follow = Some(Command::GetStock { sku: s.clone() });
            (adjustment(&b, s)?, Render::Adjusted { locations })
        }
        Route::GetStock(s) => {
            idem = None;
            (
                Command::GetStock {
                    sku: sku("sku", s)?,
                },
                Render::Stock,
            )
        }
        Route::Explain {
            sku: s,
            channel: ch,
        } => {
            idem = None;
            let ch = ch
                .as_deref()
                .ok_or_else(|| ApiError::invalid("channel", "the query parameter is required"))?;
            key.check_channel(ch)?;
            let c = Command::Explain {
                sku: sku("sku", s)?,
                channel: channel("channel", ch)?,
            };
            (c, Render::Explain)
        }
        Route::Reserve => {
            let parsed;
            let b = match &op.reserve {
                Some(b) => b,
                None => {
                    // A single request's body: read by hand where it has the shape nearly
                    // every one has (as a batch's are), by serde otherwise.
                    parsed = match body.text().and_then(super::batch::scan::reserve_body) {
                        Some(b) => b,
                        None => body.parse::<ReserveBody<'_>>()?,
                    };
                    &parsed
                }
            };
            key.check_channel(&b.channel)?;
            (
                reserve(b)?,
                Render::Reservation {
                    status: StatusCode::CREATED,
                },
            )
        }
        Route::GetReservation(r) => {
            idem = None;
            let id = reservation_id(r)?;
            owner_check = Some(id);
            (Command::GetReservation { id }, ok_reservation())
        }
        Route::Commit(r) => {
            let id = reservation_id(r)?;
            let b: CommitBody = body.parse_or_default()?;
            let lines = match &b.lines {
                None => None,
                Some(ls) => {
                    lines_max("lines", ls.len(), lines_limit)?;
                    Some(
                        ls.iter()
                            .enumerate()
                            .map(|(i, l)| {
                                Ok(CommitLine {
                                    sku: sku(format_args!("lines[{i}].sku"), &l.sku)?,
                                    quantity: l.quantity,
                                })
                            })
                            .collect::<Result<Vec<_>, ApiError>>()?,
                    )
                }
            };
            owner_check = Some(id);
            (Command::Commit { id, lines }, ok_reservation())
        }
        Route::Release(r) | Route::Cancel(r) => {
            let id = reservation_id(r)?;
            body.empty()?;
            owner_check = Some(id);
            follow = Some(Command::GetReservation { id });
            let c = if matches!(op.route, Route::Release(_)) {
                Command::Release { id }
            } else {
                Command::Cancel { id }
            };
            (c, ok_reservation())
        }
        Route::Extend(r) => {
            let id = reservation_id(r)?;
            let b: ExtendBody = body.parse()?;
            owner_check = Some(id);
            follow = Some(Command::GetReservation { id });
            let c = Command::Extend {
                id,
                ttl_ms: ttl_ms("ttl_seconds", b.ttl_seconds)?,
            };
            (c, ok_reservation())
        }
        Route::Fulfil(r) => {
            let id = reservation_id(r)?;
            let b: FulfilBody = body.parse()?;
            lines_max("lines", b.lines.len(), lines_limit)?;
            let mut lines = Vec::with_capacity(b.lines.len());
            for (i, l) in b.lines.iter().enumerate() {
                key.check_location(&l.location)?;
                lines.push(FulfilLine {
                    sku: sku(format_args!("lines[{i}].sku"), &l.sku)?,
                    location: location(format_args!("lines[{i}].location"), &l.location)?,
                    quantity: l.quantity,
                    missing: l.missing.unwrap_or(0),
                });
            }
            follow = Some(Command::GetReservation { id });
            (Command::Fulfil { id, lines }, ok_reservation())
        }
        Route::Return(r) => {
            let id = reservation_id(r)?;
            let b: ReturnBody = body.parse()?;
            key.check_location(&b.location)?;
            follow = Some(Command::GetReservation { id });
            let c = Command::Return {
                id,
                sku: sku("sku", &b.sku)?,
                location: location("location", &b.location)?,
                quantity: b.quantity,
                damaged: b.damaged.unwrap_or(false),
                reason: b.reason.clone(),
            };
            (c, ok_reservation())
        }
    };
    let request = |command, idempotency_key| Request {
        tenant: key.tenant.clone(),
        key_id: key.id.as_str().into(),
        idempotency_key,
        command,
    };
    let mut requests = vec![request(command, idem)];
    requests.extend(follow.map(|c| request(c, None)));
    // Only channel keys are limited to some reservations.
    if key.role != Role::Channel {
        owner_check = None;
    }
    Ok(Planned {
        requests,
        owner_check,
        render,
    })
}

fn ok_reservation() -> Render {
    Render::Reservation {
        status: StatusCode::OK,
    }
}

fn adjustment(b: &AdjustmentBody, sku: Sku) -> Result<Command, ApiError> {
    let loc = location("location", &b.location)?;
    let reason = b.reason.clone();
    let quantity = b.quantity;
    let need = |v: Option<BucketDto>, f: &str| {
        v.map(Into::into)
            .ok_or_else(|| ApiError::invalid(f, "required for a move"))
    };
    Ok(match b.kind {
        AdjustmentKind::Receive => Command::Receive {
            sku,
            location: loc,
            quantity,
            unit_cost: b
                .unit_cost
                .as_deref()
                .map(|c| {
                    c.parse()
                        .map_err(|_| ApiError::invalid("unit_cost", "must be a decimal string"))
                })
                .transpose()?,
            reason,
        },
        AdjustmentKind::Adjust => Command::Adjust {
            sku,
            location: loc,
            delta: quantity,
            reason,
        },
        AdjustmentKind::Set => Command::Set {
            sku,
            location: loc,
            quantity,
            compare_quantity: b.compare_quantity,
            reason,
        },
        AdjustmentKind::Move => Command::Move {
            sku,
            location: loc,
            from: need(b.from, "from")?,
            to: need(b.to, "to")?,
            quantity,
            reason,
        },
        AdjustmentKind::Transfer => Command::Transfer {
            sku,
            location: loc,
            to_location: location(
                "to_location",
                b.to_location
                    .as_deref()
                    .ok_or_else(|| ApiError::invalid("to_location", "required for a transfer"))?,
            )?,
            quantity,
            expected_at: time_ms("expected_at", &b.expected_at)?,
            reason,
        },
        AdjustmentKind::Expect => Command::Expect {
            sku,
            location: loc,
            quantity,
            expected_at: time_ms("expected_at", &b.expected_at)?,
            reason,
        },
    })
}

fn reserve(b: &ReserveBody<'_>) -> Result<Command, ApiError> {
    let lines = b
        .lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            Ok(LineRequest {
                sku: sku(format_args!("lines[{i}].sku"), &l.sku)?,
                quantity: l.quantity,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let fill = match (b.fill, b.max_locations) {
        (None | Some(FillDto::AllOrNothing), None) => FillPolicy::AllOrNothing,
        (Some(FillDto::Partial), None) => FillPolicy::Partial,
        (Some(FillDto::Split), Some(n)) => FillPolicy::Split { max_locations: n },
        (Some(FillDto::Split), None) => {
            return Err(ApiError::invalid(
                "max_locations",
                "required with fill \"split\"",
            ))
        }
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                "max_locations",
                "only allowed with fill \"split\"",
            ))
        }
    };
    Ok(Command::Reserve {
        channel: channel("channel", &b.channel)?,
        lines,
        ttl_ms: b
            .ttl_seconds
            .map(|s| ttl_ms("ttl_seconds", s))
            .transpose()?,
        order_ref: b.order_ref.clone(),
        ship_to_region: b.ship_to_region.clone(),
        fill,
    })
}

/// The API answer of a planned operation from the engine's answers to its requests.
fn render(render: &Render, answers: &[Answer]) -> Result<OpAnswer, ApiError> {
    let (first, events) = answers.first().ok_or_else(ApiError::overloaded)?;
    let replayed = first.replayed;
    let reply = match &first.outcome {
        Outcome::Refused(r) => return Err(ApiError::from_refusal(r)),
        Outcome::Ok(reply) => reply,
    };
    let ok = |status: StatusCode, body: Vec<u8>| OpAnswer {
        status,
        body,
        replayed,
    };
    let follow = answers.get(1).map(|(r, _)| &r.outcome);
    Ok(match (render, reply) {
        (Render::Configured { id, body }, _) => {
            let mut b = body.clone();
            if let Value::Object(m) = &mut b {
                m.insert("id".into(), json!(id));
            }
            ok(StatusCode::OK, json_text(&b))
        }
        (Render::Rules, Reply::Rules { version }) => ok(
            StatusCode::OK,
            json_text(&RulesVersionDto { version: *version }),
        ),
        (Render::Adjusted { locations }, _) => {
            let levels: Vec<LevelDto> = match follow {
                Some(Outcome::Ok(Reply::Stock(s))) => s
                    .locations
                    .iter()
                    .filter(|l| locations.iter().any(|x| x == l.location.as_str()))
                    .map(LevelDto::from)
                    .collect(),
                // Without the read (it cannot fail after the write), the levels of the events.
                _ => events
                    .iter()
                    .filter_map(|e| match &e.kind {
                        EventKind::StockChanged { level, .. } => Some(LevelDto::from(&**level)),
                        _ => None,
                    })
                    .collect(),
            };
            let sku = match follow {
                Some(Outcome::Ok(Reply::Stock(s))) => s.sku.to_string(),
                _ => String::new(),
            };
            ok(
                StatusCode::OK,
                json_text(&AdjustmentDto {
                    seq: first.seq.unwrap_or(0),
                    sku,
                    levels,
                }),
            )
        }
        (Render::Stock, Reply::Stock(s)) => ok(StatusCode::OK, json_text(&StockDto::from(s))),
        (Render::Explain, Reply::Explain(e)) => {
            ok(StatusCode::OK, json_text(&ExplanationDto::from(e)))
        }
        (Render::Reservation { status }, Reply::Reservation(r)) => ok(*status, reservation_text(r)),
        (Render::Reservation { status }, _) => match follow {
            Some(Outcome::Ok(Reply::Reservation(r))) => ok(*status, reservation_text(r)),
            Some(Outcome::Refused(r)) => return Err(ApiError::from_refusal(r)),
            _ => ok(*status, json_text(&json!({}))),
        },
        (_, other) => {
            tracing::error!(?other, "unexpected reply from the engine");
            return Err(ApiError::from_refusal(&Refusal::Unavailable {
                message: "unexpected reply".into(),
            }));
        }
    })
}

/// A reservation's answer as JSON text (see [`write_reservation`]).
fn reservation_text(r: &depot_engine::outcome::ReservationView) -> Vec<u8> {
    let mut text = Vec::with_capacity(256 + 128 * r.lines.len());
    write_reservation(r, &mut text);
    text
}

/// Runs `ops` for `caller` as one group (sequenced together, in order) and answers each.
pub async fn perform(
    state: &AppState,
    caller: &Caller,
    ops: &mut [OpRequest<'_>],
) -> Vec<Result<OpAnswer, ApiError>> {
    let lines_limit = state.limits().lines_max;
    let mut planned: Vec<Result<Planned, ApiError>> = ops
        .iter_mut()
        .map(|op| {
            let key = caller.require(op.route.roles())?;
            plan(op, key, lines_limit)
        })
        .collect();
    let runner = match state.runner() {
        Ok(r) => r,
        Err(e) => return ops.iter().map(|_| Err(e.clone())).collect(),
    };
    if let Caller::Key(key) = caller {
        check_owners(&runner, key, &mut planned).await;
    }
    // The requests move to the engine; each operation keeps how many answers are its own.
    let mut requests: Vec<Request> = Vec::with_capacity(planned.len());
    let counts: Vec<usize> = planned
        .iter_mut()
        .map(|p| match p {
            Ok(p) => {
                let n = p.requests.len();
                requests.append(&mut p.requests);
                n
            }
            Err(_) => 0,
        })
        .collect();
    let answers = match runner.run(requests).await {
        Ok(a) => a,
        Err(e) => {
            let err = super::run_error(e);
            return planned
                .into_iter()
                .map(|p| p.and(Err(err.clone())))
                .collect();
        }
    };
    let mut answers = answers.as_slice();
    planned
        .into_iter()
        .zip(counts)
        .map(|(p, n)| {
            let p = p?;
            let (mine, rest) = answers.split_at(n.min(answers.len()));
            answers = rest;
            render(&p.render, mine)
        })
        .collect()
}

/// A channel key's operations on reservations of other channels become 404.
async fn check_owners(
    runner: &super::runner::Runner,
    key: &KeyScope,
    planned: &mut [Result<Planned, ApiError>],
) {
    let ids: Vec<(usize, ReservationId)> = planned
        .iter()
        .enumerate()
        .filter_map(|(i, p)| Some((i, p.as_ref().ok()?.owner_check?)))
        .collect();
    if ids.is_empty() {
        return;
    }
    let reads = ids
        .iter()
        .map(|&(_, id)| Request {
            tenant: key.tenant.clone(),
            key_id: key.id.as_str().into(),
            idempotency_key: None,
            command: Command::GetReservation { id },
        })
        .collect();
    let answers = match runner.run(reads).await {
        Ok(a) => a,
        Err(e) => {
            for (i, _) in ids {
                planned[i] = Err(super::run_error(e));
            }
            return;
        }
    };
    for ((i, id), (response, _)) in ids.into_iter().zip(answers) {
        let denied = match &response.outcome {
            Outcome::Ok(Reply::Reservation(r)) => !key.sees_reservations_of(r.channel.as_str()),
            // Not found (or another refusal): the operation itself answers the same way.
            _ => false,
        };
        if denied {
            planned[i] = Err(ApiError::not_found(format!("reservation {id}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An id's field name is written for its refusal only, and names the line.
    #[test]
    fn a_bad_id_names_its_field() {
        let i = 2;
        let e = sku(format_args!("lines[{i}].sku"), "").expect_err("an empty SKU");
        assert_eq!(e.details["field"], "lines[2].sku");
        let e = location(format_args!("lines[{i}].location"), "").expect_err("empty");
        assert_eq!(e.details["field"], "lines[2].location");
        assert_eq!(
            sku(format_args!("lines[{i}].sku"), "mug")
                .expect("valid")
                .as_str(),
            "mug"
        );
    }

    #[test]
    fn batch_paths_parse() {
        assert_eq!(
            Route::parse("post", "/v1/reservations/res_4/commit"),
            Some(Route::Commit("res_4".into()))
        );
        assert_eq!(
            Route::parse("GET", "/v1/stock/MUG/explain?channel=b2b"),
            Some(Route::Explain {
                sku: "MUG".into(),
                channel: Some("b2b".into())
            })
        );
        assert_eq!(Route::parse("DELETE", "/v1/reservations/res_4"), None);
        assert_eq!(Route::parse("PATCH", "/v1/reservations"), None);
        assert_eq!(
            Route::parse("Post", "/v1/reservations"),
            Some(Route::Reserve)
        );
        assert_eq!(
            Route::parse("POST", "/v1/reservations/res_4/commit/now"),
            None
        );
        assert_eq!(Route::parse("POST", "/v1/"), None);
        assert_eq!(Route::parse("POST", "/v1/batch"), None);
        assert_eq!(Route::parse("POST", "/v2/reservations"), None);
    }
}
