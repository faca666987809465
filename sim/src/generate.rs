//! `depot sim generate`: a scenario run on simulated time through the real engine
//! ([`Machine`]), every write appended to a real write-ahead log in `<out>/wal` (synced once
//! per `engine.sync_every_seconds` simulated seconds and at the end), with the invariants
//! checked after every command. Deterministic: the scenario and its seed give the same log and
//! the same state digest, byte for byte. Only the wall-time latencies differ between runs.

use crate::invariants::{self, Checker};
use crate::report::RunReport;
use crate::scenario::{Fill, Scenario};
use crate::stats::{window_for, Collector};
use crate::zipf::Zipf;
use anyhow::{bail, Context};
use depot_engine::outcome::ReservationView;
use depot_engine::{
    ChannelId, Command, FillPolicy, FulfilLine, Limits, LineRequest, LocationId, Machine, Outcome,
    Reply, Request, ReservationId, ReservationState, Response, Sku, TenantId, TimeMs,
};
use depot_wal::{FsDir, WalOptions, WalWriter};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options of a generation run.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub out: PathBuf,
    /// Overrides the scenario's `duration_minutes`.
    pub minutes: Option<u64>,
    /// Overrides the scenario's `seed`.
    pub seed: Option<u64>,
    pub progress: bool,
}

/// What a generation run produced.
#[derive(Debug, Clone)]
pub struct Generated {
    pub report: RunReport,
    pub digest: [u8; 32],
    pub log_dir: PathBuf,
    /// Log entries written.
    pub entries: u64,
}

/// What `run.json` in the output directory records, for replay to compare against.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    pub scenario: String,
    pub seed: u64,
    pub duration_minutes: u64,
    pub shards: usize,
    pub entries: u64,
    pub last_seq: u64,
    pub digest: String,
}

enum Action {
    Arrive {
        channel: usize,
        top: Option<usize>,
    },
    Checkout(ReservationId),
    Release(ReservationId),
    Cancel(ReservationId),
    Pick {
        id: ReservationId,
        attempt: u32,
    },
    Return {
        id: ReservationId,
        sku: Sku,
        location: LocationId,
        quantity: i64,
        damaged: bool,
    },
}

struct Gen<'a> {
    sc: &'a Scenario,
    rng: ChaCha8Rng,
    zipf: Zipf,
    machine: Machine,
    writer: WalWriter,
    tenant: TenantId,
    channels: Vec<ChannelId>,
    locations: Vec<LocationId>,
    stats: Collector,
    checker: Checker,
    entries: u64,
    queue: BTreeMap<(TimeMs, u64), Action>,
    counter: u64,
    /// Holds that may expire: (expires_at, id).
    expiry: BTreeSet<(TimeMs, ReservationId)>,
    /// SKUs of live reservations, for the checks after commands that name only the id.
    res_skus: BTreeMap<ReservationId, (Vec<Sku>, TimeMs)>,
    /// A lagging channel's view of ATS: (channel, rank) -> (ATS, read at).
    listing: BTreeMap<(usize, usize), (i64, TimeMs)>,
    orders: u64,
}

fn request(tenant: &TenantId, command: Command, key: Option<String>) -> Request {
    Request {
        tenant: tenant.clone(),
        key_id: "sim".into(),
        idempotency_key: key,
        command,
    }
}

/// Poisson(λ): Knuth's method for small λ, a rounded normal approximation above 30.
fn poisson(rng: &mut ChaCha8Rng, lambda: f64) -> u64 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda > 30.0 {
        let (u1, u2): (f64, f64) = (rng.gen::<f64>().max(1e-12), rng.gen());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        return (lambda + lambda.sqrt() * z).round().max(0.0) as u64;
    }
    let l = (-lambda).exp();
    let (mut k, mut p) = (0u64, 1.0f64);
    loop {
        p *= rng.gen::<f64>();
        if p <= l {
            return k;
        }
        k += 1;
    }
}

impl Gen<'_> {
    fn schedule(&mut self, at: TimeMs, action: Action) {
        self.counter += 1;
        self.queue.insert((at, self.counter), action);
    }

    /// Runs one request: engine, log, figures, invariants. `extra` SKUs are checked too.
    fn exec(
        &mut self,
        command: Command,
        key: Option<String>,
        now: TimeMs,
        extra: &[Sku],
        lagging: bool,
    ) -> anyhow::Result<Response> {
        let req = request(&self.tenant, command, key);
        let started = Instant::now();
        let (resp, events, log) = self.machine.execute(&req, now);
        if let Some(entry) = &log {
            self.writer.append(entry).context("appending to the log")?;
            self.entries += 1;
        }
        let ns = started.elapsed().as_nanos() as u64;
        self.stats
            .record(&req.command, &resp, &events, now, Some(ns), lagging);
        self.checker.observe(&req, &resp.outcome);
        let mut skus = invariants::touched_skus(&req.command, &events);
        skus.extend(extra.iter().cloned());
        for e in &events {
            if let depot_engine::EventKind::ReservationExpired { id } = &e.kind {
                if let Some((s, _)) = self.res_skus.remove(id) {
                    skus.extend(s);
                }
            }
        }
        let context = format!("{} at {now}", req.command.name());
        self.checker
            .check(&mut self.machine, &self.tenant, &skus, &req, now, &context);
        Ok(resp)
    }

    fn read(&mut self, command: Command, now: TimeMs) -> Outcome {
        let req = request(&self.tenant, command, None);
        self.machine.execute(&req, now).0.outcome
    }

    fn reservation(&mut self, id: ReservationId, now: TimeMs) -> Option<ReservationView> {
        match self.read(Command::GetReservation { id }, now) {
            Outcome::Ok(Reply::Reservation(v)) => Some(v),
            _ => None,
        }
    }

    fn setup(&mut self, now: TimeMs) -> anyhow::Result<()> {
        let sc = self.sc;
        let mut config = vec![Command::CreateTenant];
        for l in &sc.locations {
            config.push(Command::PutLocation {
                location: LocationId::new(&l.id)?,
                kind: l.kind,
                name: l.name.clone().unwrap_or_else(|| l.id.clone()),
                region: l.region.clone(),
                wms: None,
            });
        }
        for c in &sc.channels {
            config.push(Command::PutChannel {
                channel: ChannelId::new(&c.id)?,
                kind: c.kind,
                priority: c.priority,
            });
        }
        for command in config {
            let name = command.name();
            let resp = self.exec(command, None, now, &[], false)?;
            if let Outcome::Refused(r) = resp.outcome {
                bail!("scenario setup: {name} refused: {r}");
            }
        }
        // Always a rule document (possibly empty), so a what-if replay has one to replace.
        let resp = self.exec(
            Command::PutRules {
                document: sc.allocation.clone(),
            },
            None,
            now,
            &[],
            false,
        )?;
        if let Outcome::Refused(r) = resp.outcome {
            bail!("scenario field `allocation`: the rule document is refused: {r}");
        }
        for r in 1..=sc.catalog.skus {
            let sku = sc.sku(r);
            for (l, loc) in sc.locations.iter().zip(self.locations.clone()) {
                if l.stock_per_sku > 0 {
                    self.exec(
                        Command::Receive {
                            sku: sku.clone(),
                            location: loc,
                            quantity: l.stock_per_sku,
                            unit_cost: None,
                            reason: "opening stock".into(),
                        },
                        None,
                        now,
                        &[],
                        false,
                    )?;
                }
            }
        }
        Ok(())
    }

    fn arrive(&mut self, channel: usize, top: Option<usize>, now: TimeMs) -> anyhow::Result<()> {
        let sc = self.sc;
        let d = &sc.demand;
        let limit = top.unwrap_or(sc.catalog.skus).min(sc.catalog.skus);
        let n = self.rng.gen_range(d.lines_min..=d.lines_max).min(limit);
        let mut ranks: Vec<usize> = Vec::with_capacity(n);
        let mut tries = 0;
        while ranks.len() < n && tries < 1_000 {
            tries += 1;
            let r = self.zipf.sample_top(&mut self.rng, limit);
            if !ranks.contains(&r) {
                ranks.push(r);
            }
        }
        ranks.sort_unstable();
        let lines: Vec<(usize, i64)> = ranks
            .iter()
            .map(|&r| (r, self.rng.gen_range(1..=d.quantity_max)))
            .collect();
        let spec = &sc.channels[channel];
        let lagging = spec.sync_lag_seconds > 0;
        // The customer sees the channel's listing: the ATS depot last sent it, refreshed every
        // sync_lag_seconds (0: live). A SKU listed below the quantity is not ordered.
        let lag_ms = spec.sync_lag_seconds * 1_000;
        for &(r, q) in &lines {
            let cached = self.listing.get(&(channel, r)).copied();
            let ats = match cached {
                Some((ats, at)) if lagging && now.saturating_sub(at) < lag_ms => ats,
                _ => {
                    let ats = self.ats(channel, r, now);
                    self.listing.insert((channel, r), (ats, now));
                    ats
                }
            };
            if ats < q {
                self.stats
                    .listing_sold_out(self.channels[channel].as_str(), now);
                return Ok(());
            }
        }
        self.orders += 1;
        let order = format!("ord-{}", self.orders);
        let command = Command::Reserve {
            channel: self.channels[channel].clone(),
            lines: lines
                .iter()
                .map(|&(r, q)| LineRequest {
                    sku: sc.sku(r),
                    quantity: q,
                })
                .collect(),
            ttl_ms: Some(d.hold_ttl_seconds * 1_000),
            order_ref: Some(order.clone()),
            ship_to_region: spec.ship_to_region.clone(),
            fill: match spec.fill {
                Fill::AllOrNothing => FillPolicy::AllOrNothing,
                Fill::Partial => FillPolicy::Partial,
            },
        };
        let resp = self.exec(command, Some(order), now, &[], lagging)?;
        let fate: f64 = self.rng.gen();
        let delay = self
            .rng
            .gen_range(d.checkout_seconds_min..=d.checkout_seconds_max)
            * 1_000;
        if let Some(view) = resp.outcome.reservation() {
            let id = view.id;
            self.expiry.insert((view.expires_at, id));
            self.res_skus.insert(id, (skus_of(view), view.expires_at));
            if fate < d.abandon_rate {
                // Abandoned: the hold expires.
            } else if fate < d.abandon_rate + d.release_rate {
                self.schedule(now + delay, Action::Release(id));
            } else {
                self.schedule(now + delay, Action::Checkout(id));
            }
        }
        Ok(())
    }

    fn ats(&mut self, channel: usize, rank: usize, now: TimeMs) -> i64 {
        let sku = self.sc.sku(rank);
        invariants::stock(&mut self.machine, &self.tenant, &sku, now)
            .and_then(|v| {
                v.channels
                    .iter()
                    .find(|c| c.channel == self.channels[channel])
                    .map(|c| c.available_to_sell)
            })
            .unwrap_or(0)
    }

    fn unhold(&mut self, id: ReservationId) -> Vec<Sku> {
        match self.res_skus.get(&id) {
            Some((skus, expires)) => {
                self.expiry.remove(&(*expires, id));
                skus.clone()
            }
            None => Vec::new(),
        }
    }

    fn act(&mut self, now: TimeMs, action: Action) -> anyhow::Result<()> {
        let sc = self.sc;
        match action {
            Action::Arrive { channel, top } => self.arrive(channel, top, now)?,
            Action::Release(id) => {
                let skus = self.unhold(id);
                self.res_skus.remove(&id);
                self.exec(Command::Release { id }, None, now, &skus, false)?;
            }
            Action::Checkout(id) => {
                let skus = self.unhold(id);
                let resp = self.exec(
                    Command::Commit { id, lines: None },
                    Some(format!("commit-{}", id.0)),
                    now,
                    &skus,
                    false,
                )?;
                if resp.outcome.is_ok() {
                    let w = &sc.wms;
                    if self.rng.gen::<f64>() < sc.demand.cancel_rate {
                        let before = w.pick_delay_minutes_min.max(1) * 60_000;
                        let at = now + self.rng.gen_range(0..before);
                        self.schedule(at, Action::Cancel(id));
                    } else {
                        let m = self
                            .rng
                            .gen_range(w.pick_delay_minutes_min..=w.pick_delay_minutes_max);
                        self.schedule(now + m * 60_000 + 1, Action::Pick { id, attempt: 1 });
                    }
                } else {
                    self.res_skus.remove(&id);
                }
            }
            Action::Cancel(id) => {
                let skus = self.res_skus.remove(&id).map(|r| r.0).unwrap_or_default();
                self.exec(Command::Cancel { id }, None, now, &skus, false)?;
            }
            Action::Pick { id, attempt } => self.pick(id, attempt, now)?,
            Action::Return {
                id,
                sku,
                location,
                quantity,
                damaged,
            } => {
                self.exec(
                    Command::Return {
                        id,
                        sku,
                        location,
                        quantity,
                        damaged,
                        reason: "customer return".into(),
                    },
                    None,
                    now,
                    &[],
                    false,
                )?;
            }
        }
        Ok(())
    }

    fn pick(&mut self, id: ReservationId, attempt: u32, now: TimeMs) -> anyhow::Result<()> {
        let sc = self.sc;
        let Some(view) = self.reservation(id, now) else {
            return Ok(());
        };
        let mut lines: Vec<FulfilLine> = Vec::new();
        for l in &view.lines {
            let items = std::iter::once((&l.sku, &l.allocations))
                .chain(l.components.iter().map(|c| (&c.sku, &c.allocations)));
            for (sku, allocs) in items {
                for a in allocs.iter().filter(|a| a.quantity > 0) {
                    lines.push(FulfilLine {
                        sku: sku.clone(),
                        location: a.location.clone(),
                        quantity: a.quantity,
                        missing: 0,
                    });
                }
            }
        }
        if lines.is_empty() {
            self.res_skus.remove(&id);
            return Ok(());
        }
        if attempt == 1 && self.rng.gen::<f64>() < sc.wms.short_pick_rate {
            let i = self.rng.gen_range(0..lines.len());
            lines[i].quantity -= 1;
            lines[i].missing = 1;
        }
        let skus = self
            .res_skus
            .get(&id)
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let resp = self.exec(Command::Fulfil { id, lines }, None, now, &skus, false)?;
        if !resp.outcome.is_ok() {
            return Ok(());
        }
        let Some(after) = self.reservation(id, now) else {
            return Ok(());
        };
        let open = after.lines.iter().any(|l| {
            l.allocations.iter().any(|a| a.quantity > 0)
                || l.components
                    .iter()
                    .any(|c| c.allocations.iter().any(|a| a.quantity > 0))
        });
        if open
            && attempt < 3
            && matches!(
                after.state,
                ReservationState::Committed | ReservationState::PartiallyFulfilled
            )
        {
            let m = sc.wms.pick_delay_minutes_min.max(1);
            self.schedule(
                now + m * 60_000,
                Action::Pick {
                    id,
                    attempt: attempt + 1,
                },
            );
            return Ok(());
        }
        self.res_skus.remove(&id);
        if self.rng.gen::<f64>() < sc.returns.rate {
            let shipped: Vec<(Sku, LocationId, i64)> = after
                .lines
                .iter()
                .flat_map(|l| l.allocations.iter().map(move |a| (l.sku.clone(), a)))
                .filter(|(_, a)| a.shipped > 0)
                .map(|(s, a)| (s, a.location.clone(), a.shipped))
                .collect();
            if !shipped.is_empty() {
                let (sku, location, max) = shipped[self.rng.gen_range(0..shipped.len())].clone();
                let quantity = self.rng.gen_range(1..=max);
                let damaged = self.rng.gen::<f64>() < sc.returns.damaged_rate;
                let r = &sc.returns;
                let m = self
                    .rng
                    .gen_range(r.delay_minutes_min..=r.delay_minutes_max);
                self.schedule(
                    now + m * 60_000 + 1,
                    Action::Return {
                        id,
                        sku,
                        location,
                        quantity,
                        damaged,
                    },
                );
            }
        }
        Ok(())
    }

    fn replenish(&mut self, now: TimeMs) -> anyhow::Result<()> {
        let Some(p) = self.sc.replenishment.clone() else {
            return Ok(());
        };
        for r in 1..=self.sc.catalog.skus {
            let sku = self.sc.sku(r);
            let Some(view) = invariants::stock(&mut self.machine, &self.tenant, &sku, now) else {
                continue;
            };
            for lv in &view.locations {
                if lv.available < p.below {
                    self.exec(
                        Command::Receive {
                            sku: sku.clone(),
                            location: lv.location.clone(),
                            quantity: p.units,
                            unit_cost: None,
                            reason: "replenishment".into(),
                        },
                        None,
                        now,
                        &[],
                        false,
                    )?;
                }
            }
        }
        Ok(())
    }
}

fn skus_of(view: &ReservationView) -> Vec<Sku> {
    let mut out: Vec<Sku> = Vec::new();
    for l in &view.lines {
        out.push(l.sku.clone());
        out.extend(l.components.iter().map(|c| c.sku.clone()));
    }
    out
}

/// Runs `scenario` into `opts.out` (`wal/`, `run.json`, `scenario.toml`, the reports).
pub fn generate(
    scenario: &Scenario,
    scenario_text: &str,
    opts: &GenerateOptions,
) -> anyhow::Result<Generated> {
    let mut sc = scenario.clone();
    if let Some(m) = opts.minutes {
        sc.duration_minutes = m.max(1);
    }
    if let Some(s) = opts.seed {
        sc.seed = s;
    }
    let log_dir = opts.out.join("wal");
    if log_dir.is_dir()
        && std::fs::read_dir(&log_dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    {
        bail!(
            "{} already holds a log: choose another --out directory or remove it",
            log_dir.display()
        );
    }
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    std::fs::write(opts.out.join("scenario.toml"), scenario_text)?;
    let dir = FsDir::open(&log_dir).with_context(|| format!("opening {}", log_dir.display()))?;
    let writer = WalWriter::open(Box::new(dir), WalOptions::default())?;
    let start = sc.start_unix_ms;
    let duration_ms = sc.duration_minutes * 60_000;
    let channel_names: Vec<String> = sc.channels.iter().map(|c| c.id.clone()).collect();
    let mut g = Gen {
        sc: &sc,
        rng: ChaCha8Rng::seed_from_u64(sc.seed),
        zipf: Zipf::new(sc.catalog.skus, sc.catalog.zipf_skew),
        machine: Machine::new(Limits::default(), sc.engine.shards),
        writer,
        tenant: TenantId::new(&sc.tenant)?,
        channels: sc
            .channels
            .iter()
            .map(|c| ChannelId::new(&c.id))
            .collect::<Result<_, _>>()?,
        locations: sc
            .locations
            .iter()
            .map(|l| LocationId::new(&l.id))
            .collect::<Result<_, _>>()?,
        stats: Collector::new(start, window_for(duration_ms), &channel_names),
        checker: Checker::new(),
        entries: 0,
        queue: BTreeMap::new(),
        counter: 0,
        expiry: BTreeSet::new(),
        res_skus: BTreeMap::new(),
        listing: BTreeMap::new(),
        orders: 0,
    };
    let wall = Instant::now();
    tracing::info!(scenario = %sc.name, seed = sc.seed, minutes = sc.duration_minutes, out = %opts.out.display(), "generating");
    g.setup(start)?;
    let seconds = duration_ms / 1_000;
    let bar = crate::progress::bar("simulating", seconds, opts.progress);
    let share_total: f64 = sc.channels.iter().map(|c| c.share).sum();
    for sec in 0..seconds {
        let t0 = start + sec * 1_000;
        let minute = sec as f64 / 60.0;
        if let Some(p) = &sc.replenishment {
            if sec > 0 && sec % (p.every_minutes * 60) == 0 {
                g.replenish(t0)?;
            }
        }
        for (c, spec) in sc.channels.iter().enumerate() {
            let (mult, top) = sc.multiplier(&spec.id, minute);
            let lambda = sc.demand.orders_per_minute / 60.0 * spec.share / share_total * mult;
            let k = poisson(&mut g.rng, lambda);
            for _ in 0..k {
                let at = t0 + g.rng.gen_range(0..1_000);
                g.schedule(at, Action::Arrive { channel: c, top });
            }
        }
        let end = t0 + 1_000;
        while let Some(entry) = g.queue.first_entry() {
            if entry.key().0 >= end {
                break;
            }
            let ((at, _), action) = entry.remove_entry();
            g.act(at, action)?;
        }
        // Like the server: a tick only when a hold is due.
        if g.expiry.first().is_some_and(|(at, _)| *at <= end) {
            while g.expiry.first().is_some_and(|(at, _)| *at <= end) {
                g.expiry.pop_first();
            }
            g.exec(Command::Tick, None, end, &[], false)?;
        }
        if (sec + 1) % sc.engine.sync_every_seconds == 0 {
            g.writer.sync().context("syncing the log")?;
        }
        if sec % 60 == 0 {
            bar.set_position(sec);
        }
    }
    g.writer.sync().context("syncing the log")?;
    bar.finish_and_clear();
    // A last sweep over every SKU.
    let all: BTreeSet<Sku> = (1..=sc.catalog.skus).map(|r| sc.sku(r)).collect();
    let end = start + duration_ms;
    let tick = request(&g.tenant, Command::Tick, None);
    g.checker
        .check(&mut g.machine, &g.tenant, &all, &tick, end, "final sweep");
    let digest = g.machine.digest();
    let last_seq = g.machine.front.seq;
    let report = RunReport {
        label: "recorded".into(),
        commands: g.stats.commands,
        wall_seconds: wall.elapsed().as_secs_f64(),
        simulated_seconds: duration_ms as f64 / 1000.0,
        latency: g.stats.latency(),
        window_seconds: g.stats.window_ms() as f64 / 1000.0,
        windows: g.stats.windows(),
        channels: g.stats.channels(),
        oversells: g.checker.violation_count,
        violations: g.checker.violations.clone(),
        holds_expired: g.stats.holds_expired,
        units_supplied: g.stats.units_supplied,
        final_digest: depot_engine::digest::hex(&digest),
    };
    let record = RunRecord {
        scenario: sc.name.clone(),
        seed: sc.seed,
        duration_minutes: sc.duration_minutes,
        shards: sc.engine.shards,
        entries: g.entries,
        last_seq,
        digest: report.final_digest.clone(),
    };
    std::fs::write(
        opts.out.join("run.json"),
        serde_json::to_string_pretty(&record)?,
    )?;
    Ok(Generated {
        report,
        digest,
        log_dir,
        entries: g.entries,
    })
}

/// Reads `run.json` next to a log directory (`<out>/wal` -> `<out>/run.json`), if there is one.
pub fn read_record(log_dir: &Path) -> Option<RunRecord> {
    let path = log_dir.parent()?.join("run.json");
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}
