//! `depot sim replay`: a recorded log (a `wal/` directory, e.g. one `depot sim generate`
//! wrote, or a server's `<data-dir>/wal`) replayed at a chosen speed, in-process through a
//! fresh engine or against a running server (see [`crate::http`]), optionally under another
//! rule document (what-if: the same demand, new rules).
//!
//! In-process, every entry is replayed with its recorded sequence number and time
//! ([`Machine::replay`]), so reservation ids stay those of the log even when a what-if run
//! refuses some orders; the invariants are checked after every entry.

use crate::invariants::{self, Checker};
use crate::report::RunReport;
use crate::stats::{window_for, Collector};
use anyhow::{bail, Context};
use depot_engine::{
    Command, EventKind, Limits, LogEntry, Machine, Outcome, Request, ReservationId, RuleDocument,
    Sku, TenantId,
};
use depot_wal::{read_log, FsDir, Tail};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// How fast a log is replayed relative to its recorded times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// As fast as possible.
    Max,
    /// `f` times real time (`10x`: ten recorded seconds per wall second).
    Factor(f64),
}

impl FromStr for Speed {
    type Err = String;
    fn from_str(s: &str) -> Result<Speed, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("max") {
            return Ok(Speed::Max);
        }
        let n = t.strip_suffix(['x', 'X']).unwrap_or(t);
        match n.parse::<f64>() {
            Ok(f) if f.is_finite() && f > 0.0 => Ok(Speed::Factor(f)),
            _ => Err(format!(
                "speed must be `max` or a factor above 0 such as `10x`, got {s:?}"
            )),
        }
    }
}

/// Reads a whole log directory; refuses a corrupt one (naming file and offset).
pub fn load_log(dir: &Path) -> anyhow::Result<(Vec<LogEntry>, Tail)> {
    if !dir.is_dir() {
        bail!("{} is not a log directory", dir.display());
    }
    let fs = FsDir::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let (entries, tail) =
        read_log(&fs, 1).with_context(|| format!("reading the log in {}", dir.display()))?;
    if entries.is_empty() {
        bail!("{} holds no log entries", dir.display());
    }
    Ok((entries, tail))
}

/// Reads a rule document (the body of `PUT /v1/allocation-rules`) from JSON, or from TOML when
/// the file name ends in `.toml`.
pub fn load_rules(path: &Path) -> anyhow::Result<RuleDocument> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read rules file {}", path.display()))?;
    let doc: Result<RuleDocument, String> = if path.extension().is_some_and(|e| e == "toml") {
        toml::Deserializer::parse(&text)
            .map_err(|e| e.to_string())
            .and_then(|de| {
                serde_path_to_error::deserialize(de).map_err(|e| {
                    let path = e.path().to_string();
                    format!("field `{path}`: {}", e.into_inner())
                })
            })
    } else {
        let mut de = serde_json::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            format!("field `{path}`: {}", e.into_inner())
        })
    };
    doc.map_err(|e| anyhow::anyhow!("rules file {}: {}", path.display(), e.trim()))
}

/// Channel ids in the order the log configures them.
pub fn channels_of(entries: &[LogEntry]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in entries {
        if let Command::PutChannel { channel, .. } = &e.request.command {
            if !out.iter().any(|c| c == channel.as_str()) {
                out.push(channel.to_string());
            }
        }
    }
    out
}

/// Sleeps until `entry_now` is due at `speed`, measured from `first` and `wall_start`.
pub fn pace(speed: Speed, first: u64, entry_now: u64, wall_start: Instant) {
    if let Speed::Factor(f) = speed {
        let due = Duration::from_secs_f64(entry_now.saturating_sub(first) as f64 / 1000.0 / f);
        if let Some(wait) = due.checked_sub(wall_start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// One in-process replay of `entries`; with `rules`, every rule document of the log is
/// replaced by it. Returns the run's figures and the final state digest.
pub fn replay_in_process(
    entries: &[LogEntry],
    rules: Option<&RuleDocument>,
    speed: Speed,
    label: &str,
    shards: usize,
    progress: bool,
) -> anyhow::Result<(RunReport, [u8; 32])> {
    let first = entries.first().map_or(0, |e| e.now);
    let last = entries.last().map_or(0, |e| e.now);
    let mut stats = Collector::new(first, window_for(last - first), &channels_of(entries));
    let mut checker = Checker::new();
    let mut machine = Machine::new(Limits::default(), shards.max(1));
    let mut res_skus: BTreeMap<ReservationId, Vec<Sku>> = BTreeMap::new();
    let mut replaced = 0u64;
    let bar = crate::progress::bar("replaying", entries.len() as u64, progress);
    let wall = Instant::now();
    for (i, recorded) in entries.iter().enumerate() {
        let mut entry = recorded.clone();
        if let (Some(doc), Command::PutRules { .. }) = (rules, &entry.request.command) {
            entry.request.command = Command::PutRules {
                document: doc.clone(),
            };
            replaced += 1;
        }
        pace(speed, first, entry.now, wall);
        let started = Instant::now();
        let (resp, events) = machine.replay(&entry);
        let ns = started.elapsed().as_nanos() as u64;
        if replaced > 0 && matches!(entry.request.command, Command::PutRules { .. }) {
            if let Outcome::Refused(r) = &resp.outcome {
                bail!(
                    "the what-if rule document is refused at seq {}: {r}",
                    entry.seq
                );
            }
        }
        stats.record(
            &entry.request.command,
            &resp,
            &events,
            entry.now,
            Some(ns),
            false,
        );
        checker.observe(&entry.request, &resp.outcome);
        let mut skus = invariants::touched_skus(&entry.request.command, &events);
        if let Some(v) = resp.outcome.reservation() {
            let mut s: Vec<Sku> = v.lines.iter().map(|l| l.sku.clone()).collect();
            s.extend(
                v.lines
                    .iter()
                    .flat_map(|l| l.components.iter().map(|c| c.sku.clone())),
            );
            skus.extend(s.iter().cloned());
            res_skus.insert(v.id, s);
        }
        for e in &events {
            if let EventKind::ReservationExpired { id }
            | EventKind::ReservationReleased { id }
            | EventKind::ReservationCancelled { id } = &e.kind
            {
                skus.extend(res_skus.get(id).cloned().unwrap_or_default());
            }
        }
        let tenant = entry.request.tenant.clone();
        let context = format!("seq {} ({})", entry.seq, entry.request.command.name());
        checker.check(
            &mut machine,
            &tenant,
            &skus,
            &entry.request,
            entry.now,
            &context,
        );
        if i % 4096 == 0 {
            bar.set_position(i as u64);
        }
    }
    bar.finish_and_clear();
    if rules.is_some() && replaced == 0 {
        bail!(
            "the log holds no rule document to replace (no put_rules entry); a what-if needs the \
             log to set one (`depot sim generate` always does)"
        );
    }
    // A last sweep over every SKU the log names.
    let mut all: BTreeMap<TenantId, BTreeSet<Sku>> = BTreeMap::new();
    for e in entries {
        all.entry(e.request.tenant.clone())
            .or_default()
            .extend(invariants::touched_skus(&e.request.command, &[]));
    }
    for (tenant, skus) in &all {
        let tick = Request {
            tenant: tenant.clone(),
            key_id: Default::default(),
            idempotency_key: None,
            command: Command::Tick,
        };
        checker.check(&mut machine, tenant, skus, &tick, last, "final sweep");
    }
    let digest = machine.digest();
    let report = RunReport {
        label: label.to_string(),
        commands: stats.commands,
        wall_seconds: wall.elapsed().as_secs_f64(),
        simulated_seconds: (last - first) as f64 / 1000.0,
        latency: stats.latency(),
        window_seconds: stats.window_ms() as f64 / 1000.0,
        windows: stats.windows(),
        channels: stats.channels(),
        oversells: checker.violation_count,
        violations: checker.violations.clone(),
        holds_expired: stats.holds_expired,
        units_supplied: stats.units_supplied,
        final_digest: depot_engine::digest::hex(&digest),
    };
    Ok((report, digest))
}
