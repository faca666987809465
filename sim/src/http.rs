//! `depot sim replay --target URL`: a recorded log replayed against a running `depot serve`
//! over its HTTP API (API.md), with the key of `--key` / `DEPOT_KEY` (an `admin` key of the
//! tenant to load; the log's tenant names are ignored: everything goes to the key's tenant).
//!
//! - `create_tenant` and `tick` entries are skipped: the tenant exists already and the server
//!   expires holds on its own clock. Hold TTLs are divided by the speed factor (at least one
//!   second), so carts abandoned in the log still expire before their orders would have been
//!   checked out; at `max` speed they are sent as recorded.
//! - Reservation ids are mapped: the server numbers reservations its own way, and a later
//!   commit, cancel or pick of a reservation the server refused is skipped and counted.
//! - Every write carries an `Idempotency-Key` made of a per-run nonce and the entry's seq, so
//!   a replay can be repeated against the same server. 429 and 503 `overloaded` are retried
//!   after `Retry-After`.
//! - At the end, every SKU the log names is read back (`GET /v1/stock/{sku}`) and checked:
//!   no level below zero (unless the log holds a count), what channels hold within the
//!   sellable stock, and no channel's ATS above the units available.

use crate::replay::{channels_of, pace, Speed};
use crate::report::RunReport;
use crate::stats::{window_for, Collector};
use anyhow::{bail, Context};
use depot_engine::{Bucket, Command, FillPolicy, LogEntry, ReservationId, RuleDocument};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// What an HTTP replay did beyond the figures.
#[derive(Debug, Clone, Default)]
pub struct HttpOutcome {
    pub sent: u64,
    pub skipped: u64,
    /// Entries about a reservation the server refused (nothing to act on).
    pub unmapped: u64,
    /// Answers other than 2xx, insufficient stock and invalid state, by status.
    pub errors: BTreeMap<u16, u64>,
}

fn bucket(b: Bucket) -> &'static str {
    match b {
        Bucket::Available => "available",
        Bucket::Damaged => "damaged",
        Bucket::QualityControl => "quality_control",
        Bucket::SafetyStock => "safety_stock",
    }
}

/// The HTTP request of a log entry: (method, path, body). `None`: not sent.
fn route(
    command: &Command,
    ids: &BTreeMap<ReservationId, String>,
    ttl_divisor: f64,
) -> Result<Option<(&'static str, String, Value)>, ()> {
    let res = |id: &ReservationId| ids.get(id).cloned().ok_or(());
    let adj = |sku: &depot_engine::Sku,
               loc: &depot_engine::LocationId,
               kind: &str,
               q: i64,
               reason: &str| {
        json!({"sku": sku, "location": loc, "kind": kind, "quantity": q, "reason": reason})
    };
    let r = match command {
        Command::CreateTenant | Command::Tick => return Ok(None),
        Command::GetStock { .. } | Command::GetReservation { .. } | Command::Explain { .. } => {
            return Ok(None)
        }
        Command::PutLocation {
            location,
            kind,
            name,
            region,
            wms,
        } => (
            "PUT",
            format!("/v1/locations/{location}"),
            json!({"kind": kind, "name": name, "region": region, "wms": wms}),
        ),
        Command::PutChannel {
            channel,
            kind,
            priority,
        } => (
            "PUT",
            format!("/v1/channels/{channel}"),
            json!({"kind": kind, "priority": priority}),
        ),
        Command::PutBundle { sku, components } => (
            "PUT",
            format!("/v1/bundles/{sku}"),
            json!({"components": components}),
        ),
        Command::PutRules { document } => {
            let mut body = serde_json::to_value(document).unwrap_or(Value::Null);
            if let Some(m) = body.as_object_mut() {
                m.remove("version");
            }
            ("PUT", "/v1/allocation-rules".to_string(), body)
        }
        Command::Receive {
            sku,
            location,
            quantity,
            unit_cost,
            reason,
        } => {
            let mut b = adj(sku, location, "receive", *quantity, reason);
            if let Some(c) = unit_cost {
                b["unit_cost"] = json!(c.to_string());
            }
            ("POST", "/v1/stock/adjustments".into(), b)
        }
        Command::Expect {
            sku,
            location,
            quantity,
            reason,
            ..
        } => (
            "POST",
            "/v1/stock/adjustments".into(),
            adj(sku, location, "expect", *quantity, reason),
        ),
        Command::Adjust {
            sku,
            location,
            delta,
            reason,
        } => (
            "POST",
            "/v1/stock/adjustments".into(),
            adj(sku, location, "adjust", *delta, reason),
        ),
        Command::Set {
            sku,
            location,
            quantity,
            compare_quantity,
            reason,
        } => {
            let mut b = adj(sku, location, "set", *quantity, reason);
            if let Some(c) = compare_quantity {
                b["compare_quantity"] = json!(c);
            }
            ("POST", "/v1/stock/adjustments".into(), b)
        }
        Command::Move {
            sku,
            location,
            from,
            to,
            quantity,
            reason,
        } => {
            let mut b = adj(sku, location, "move", *quantity, reason);
            b["from"] = json!(bucket(*from));
            b["to"] = json!(bucket(*to));
            ("POST", "/v1/stock/adjustments".into(), b)
        }
        Command::Transfer {
            sku,
            location,
            to_location,
            quantity,
            reason,
            ..
        } => {
            let mut b = adj(sku, location, "transfer", *quantity, reason);
            b["to_location"] = json!(to_location);
            ("POST", "/v1/stock/adjustments".into(), b)
        }
        Command::Reserve {
            channel,
            lines,
            ttl_ms,
            order_ref,
            ship_to_region,
            fill,
        } => {
            let mut b = json!({"channel": channel, "lines": lines});
            if let Some(ttl) = ttl_ms {
                let secs = (*ttl as f64 / 1000.0 / ttl_divisor).ceil().max(1.0) as u64;
                b["ttl_seconds"] = json!(secs);
            }
            if let Some(o) = order_ref {
                b["order_ref"] = json!(o);
            }
            if let Some(s) = ship_to_region {
                b["ship_to_region"] = json!(s);
            }
            match fill {
                FillPolicy::AllOrNothing => {}
                FillPolicy::Partial => b["fill"] = json!("partial"),
                FillPolicy::Split { max_locations } => {
                    b["fill"] = json!("split");
                    b["max_locations"] = json!(max_locations);
                }
            }
            ("POST", "/v1/reservations".into(), b)
        }
        Command::Extend { id, ttl_ms } => {
            let secs = (*ttl_ms as f64 / 1000.0 / ttl_divisor).ceil().max(1.0) as u64;
            (
                "POST",
                format!("/v1/reservations/{}/extend", res(id)?),
                json!({"ttl_seconds": secs}),
            )
        }
        Command::Commit { id, lines } => {
            let b = match lines {
                Some(l) => json!({"lines": l}),
                None => json!({}),
            };
            ("POST", format!("/v1/reservations/{}/commit", res(id)?), b)
        }
        Command::Release { id } => (
            "POST",
            format!("/v1/reservations/{}/release", res(id)?),
            Value::Null,
        ),
        Command::Cancel { id } => (
            "POST",
            format!("/v1/reservations/{}/cancel", res(id)?),
            Value::Null,
        ),
        Command::Fulfil { id, lines } => (
            "POST",
            format!("/v1/reservations/{}/fulfil", res(id)?),
            json!({"lines": lines}),
        ),
        Command::Return {
            id,
            sku,
            location,
            quantity,
            damaged,
            reason,
        } => (
            "POST",
            format!("/v1/reservations/{}/return", res(id)?),
            json!({"sku": sku, "location": location, "quantity": quantity, "damaged": damaged, "reason": reason}),
        ),
    };
    Ok(Some(r))
}

fn units_of(body: &Value) -> i64 {
    body["lines"]
        .as_array()
        .map(|ls| ls.iter().filter_map(|l| l["quantity"].as_i64()).sum())
        .unwrap_or(0)
}

/// Replays `entries` against the server at `base` (e.g. `http://127.0.0.1:8080`).
pub fn replay_http(
    entries: &[LogEntry],
    base: &str,
    key: &str,
    speed: Speed,
    rules: Option<&RuleDocument>,
    label: &str,
    progress: bool,
) -> anyhow::Result<(RunReport, HttpOutcome)> {
    let base = base.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        bail!("--target must be `in-process` or an http:// URL, got {base:?}");
    }
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(35))
        .build()
        .context("building the HTTP client")?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let ttl_divisor = match speed {
        Speed::Max => 1.0,
        Speed::Factor(f) => f,
    };
    let first = entries.first().map_or(0, |e| e.now);
    let last = entries.last().map_or(0, |e| e.now);
    let mut stats = Collector::new(first, window_for(last - first), &channels_of(entries));
    let mut ids: BTreeMap<ReservationId, String> = BTreeMap::new();
    let mut channel_of: BTreeMap<ReservationId, String> = BTreeMap::new();
    let mut out = HttpOutcome::default();
    let bar = crate::progress::bar("sending", entries.len() as u64, progress);
    let wall = Instant::now();
    for (i, entry) in entries.iter().enumerate() {
        let mut command = entry.request.command.clone();
        if let (Some(doc), Command::PutRules { .. }) = (rules, &command) {
            command = Command::PutRules {
                document: doc.clone(),
            };
        }
        let (method, path, body) = match route(&command, &ids, ttl_divisor) {
            Ok(Some(r)) => r,
            Ok(None) => {
                out.skipped += 1;
                continue;
            }
            Err(()) => {
                out.unmapped += 1;
                continue;
            }
        };
        pace(speed, first, entry.now, wall);
        let started = Instant::now();
        let mut attempt = 0;
        let (status, answer) = loop {
            attempt += 1;
            let mut req = match method {
                "PUT" => client.put(format!("{base}{path}")),
                _ => client.post(format!("{base}{path}")),
            }
            .bearer_auth(key)
            .header("Idempotency-Key", format!("sim-{nonce}-{}", entry.seq));
            if !body.is_null() {
                req = req.json(&body);
            }
            let resp = req
                .send()
                .with_context(|| format!("{method} {base}{path}"))?;
            let status = resp.status().as_u16();
            let retry = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let answer: Value = resp.json().unwrap_or(Value::Null);
            if (status == 429 || status == 503) && attempt < 20 {
                std::thread::sleep(Duration::from_millis(retry.unwrap_or(1).clamp(1, 5) * 200));
                continue;
            }
            break (status, answer);
        };
        let ns = started.elapsed().as_nanos() as u64;
        out.sent += 1;
        let ok = (200..300).contains(&status);
        let code = answer["error"]["code"].as_str().unwrap_or("");
        let stockout = code == "insufficient_stock";
        if status == 401 || status == 403 {
            bail!("the server refused the key ({status} {code}) for {method} {path}: use an admin key of the tenant");
        }
        if !ok && !stockout && code != "invalid_state" && code != "not_found" {
            *out.errors.entry(status).or_default() += 1;
            tracing::debug!(status, %code, %path, "replayed request refused");
        }
        let units = if ok { units_of(&answer) } else { 0 };
        stats.record_http(&command, ok, stockout, units, entry.now, ns);
        match &command {
            Command::Reserve { channel, .. } if ok => {
                if let Some(id) = answer["id"].as_str() {
                    let log_id = ReservationId(entry.seq);
                    ids.insert(log_id, id.to_string());
                    channel_of.insert(log_id, channel.to_string());
                }
            }
            Command::Commit { id, .. } if ok => {
                if let Some(ch) = channel_of.get(id) {
                    stats.committed_http(ch, units);
                }
            }
            _ => {}
        }
        if i % 256 == 0 {
            bar.set_position(i as u64);
        }
    }
    bar.finish_and_clear();
    let wall_seconds = wall.elapsed().as_secs_f64();
    let (oversells, violations) = check_server(&client, base, key, entries)?;
    let report = RunReport {
        label: label.to_string(),
        commands: out.sent,
        wall_seconds,
        simulated_seconds: (last - first) as f64 / 1000.0,
        latency: stats.latency(),
        window_seconds: stats.window_ms() as f64 / 1000.0,
        windows: stats.windows(),
        channels: stats.channels(),
        oversells,
        violations,
        holds_expired: 0,
        units_supplied: stats.units_supplied,
        final_digest: "(server-side)".into(),
    };
    Ok((report, out))
}

/// Reads every SKU the log names back from the server and checks the invariants visible there.
fn check_server(
    client: &reqwest::blocking::Client,
    base: &str,
    key: &str,
    entries: &[LogEntry],
) -> anyhow::Result<(u64, Vec<String>)> {
    let counts = entries
        .iter()
        .any(|e| matches!(e.request.command, Command::Set { .. }));
    let skus: BTreeSet<String> = entries
        .iter()
        .flat_map(|e| crate::invariants::touched_skus(&e.request.command, &[]))
        .map(|s| s.to_string())
        .collect();
    let mut found = Vec::new();
    for sku in &skus {
        let v: Value = client
            .get(format!("{base}/v1/stock/{sku}"))
            .bearer_auth(key)
            .send()
            .and_then(|r| r.json())
            .with_context(|| format!("GET /v1/stock/{sku}"))?;
        let levels = v["locations"].as_array().cloned().unwrap_or_default();
        let n = |l: &Value, f: &str| l[f].as_i64().unwrap_or(0);
        let (mut held, mut sellable, mut available) = (0, 0, 0);
        for l in &levels {
            if !counts && n(l, "available") < 0 {
                found.push(format!(
                    "oversold: {sku} at {}: available {}",
                    l["location"],
                    n(l, "available")
                ));
            }
            held += n(l, "reserved") + n(l, "committed");
            sellable +=
                n(l, "on_hand") - n(l, "damaged") - n(l, "quality_control") - n(l, "safety_stock");
            available += n(l, "available").max(0);
        }
        if held > sellable && !counts {
            found.push(format!(
                "oversold: {sku}: channels hold {held} of {sellable} sellable"
            ));
        }
        for c in v["channels"].as_array().cloned().unwrap_or_default() {
            let ats = c["available_to_sell"].as_i64().unwrap_or(0);
            if ats > available {
                found.push(format!(
                    "oversold: {sku} on {}: ATS {ats} above {available} available",
                    c["channel"]
                ));
            }
        }
    }
    Ok((found.len() as u64, found.into_iter().take(100).collect()))
}
