//! Authentication of `/v1` requests: `Authorization: Bearer <key>` checked against the key
//! store from the peer's address (CIDR allow-lists), then the key's rate limit.

use super::error::ApiError;
use super::ops::{Caller, KeyScope};
use super::AppState;
use crate::keys::{AuthError, Principal};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Instant;

/// The peer address of a request. A request without one (a router test without a socket) is
/// seen as coming from `::`, the unspecified address: only a key without CIDRs (or with
/// `::/0`) may be used from it.
fn peer_ip(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |c| c.0.ip())
}

/// The bearer token of a request.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthenticated("missing Authorization: Bearer <key>"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthenticated("the Authorization header is not ASCII"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthenticated("expected Authorization: Bearer <key>"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthenticated(
            "expected Authorization: Bearer <key>",
        ));
    }
    Ok(token.trim())
}

/// Authenticates a request and applies its key's rate limit.
pub fn authenticate(state: &AppState, parts: &Parts) -> Result<Caller, ApiError> {
    let token = bearer(parts)?;
    let principal = state
        .keys()
        .authenticate(token, peer_ip(parts))
        .map_err(|e| match e {
            AuthError::Unauthenticated => ApiError::unauthenticated("unknown or revoked key"),
            AuthError::Forbidden => {
                ApiError::forbidden("this key may not be used from this address")
            }
        })?;
    if let Err(wait) = state.limiter().check(principal.key_id(), Instant::now()) {
        return Err(ApiError::rate_limited(crate::ratelimit::retry_after_secs(
            wait,
        )));
    }
    Ok(match principal {
        Principal::Master => Caller::Master,
        // The store never makes a key without a tenant; refuse rather than guess one.
        Principal::Key(k) => Caller::Key(
            KeyScope::of(k).ok_or_else(|| ApiError::unauthenticated("the key has no tenant"))?,
        ),
    })
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(state, parts)
    }
}
