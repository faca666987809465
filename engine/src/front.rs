//! The front: validates requests, keeps tenant configuration, idempotency keys and reservation
//! routes, assigns sequence numbers and time, and turns requests into [`Job`]s.
//!
//! Everything that decides whether a request is sequenced lives here and changes only when a
//! request is admitted, never when a result comes back, so the same requests in the same order
//! are admitted the same way however the shards are scheduled.

use crate::chunked::ChunkDeque;
use crate::command::{Command, FillPolicy, Request};
use crate::config::{Channel, Location, TenantConfig, TenantEntry};
use crate::idem::IdemStore;
pub use crate::idem::{IdemAnswer, IdemEntry, IdemKey};
use crate::ids::{ReservationId, Seq, Sku, TenantId, TimeMs};
use crate::job::{Finished, ItemReq, Job, JobKind, LineHeader, LineHeaders};
use crate::limits::{Limits, QUANTITY_MAX};
use crate::outcome::{Event, EventKind, Outcome, Refusal, Response};
use crate::rules::{self, RuleDocument};
use crate::shard::shard_of;
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The tenant name used for engine-wide commands such as [`Command::Tick`].
pub const SYSTEM_TENANT: &str = "_system";

/// A reservation's lines and the physical items they expand into.
type Expanded = (LineHeaders, smallvec::SmallVec<[ItemReq; 1]>);

/// What the front decided about a request.
#[derive(Debug)]
pub enum Admission {
    /// Answered without the shards: refused, or a stored idempotent response.
    Immediate(Response),
    /// The same idempotency key is executing right now (as the write `Seq`); wait for its
    /// response.
    Wait(IdemKey, Seq),
    /// Run on the shards. `idem` names the key the job took and the answer it sets when it
    /// finishes (the one the key's entry holds).
    Run {
        job: Job,
        idem: Option<(IdemKey, IdemAnswer)>,
    },
}

/// Front state. See the module documentation.
#[derive(Clone, Debug)]
pub struct Front {
    pub limits: Limits,
    pub shards: usize,
    /// The last sequence number assigned.
    pub seq: Seq,
    /// The latest time seen; commands never go back in time.
    pub now: TimeMs,
    pub tenants: Vec<TenantEntry>,
    pub tenant_index: BTreeMap<TenantId, u32>,
    pub idempotency: IdemStore,
    /// Which shards hold parts of a reservation. A missing route only means the command is
    /// sent to one fallback shard, which answers "not found" the same way.
    pub routes: Routes,
}

/// Seqs kept in the dense part of [`Routes`] before old live entries may move to its map.
const ROUTES_WINDOW: usize = 1 << 22;

/// Reservation routes (id -> shard mask). Reservation ids are sequence numbers, given in
/// increasing order, so recent routes live in a deque indexed by `id - base` (8 bytes per
/// sequence number, nothing to hash or resize); the front of the deque is dropped as soon as
/// its reservations are gone. Routes that outlive the window while most of it is empty (a
/// long-lived order) move to a map, so one old reservation never pins the deque.
#[derive(Clone, Debug)]
pub struct Routes {
    /// Sequence numbers the deque spans before old entries may move to the map.
    window: usize,
    base: u64,
    /// In chunks: a `VecDeque` doubled, and at ten million live reservations one doubling
    /// copied 80 MB into fresh pages on the sequencer's thread while every write waited.
    dense: ChunkDeque<u64>,
    /// Non-zero entries of `dense`.
    live: usize,
    sparse: FxHashMap<ReservationId, u64>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes::with_window(ROUTES_WINDOW)
    }
}

impl Routes {
    pub fn with_window(window: usize) -> Self {
        Routes {
            window: window.max(2),
            base: 0,
            dense: ChunkDeque::default(),
            live: 0,
            sparse: FxHashMap::default(),
        }
    }
    pub fn len(&self) -> usize {
        self.live + self.sparse.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn get(&self, id: &ReservationId) -> Option<u64> {
        match id.0.checked_sub(self.base) {
            Some(i) if (i as usize) < self.dense.len() => {
                Some(self.dense[i as usize]).filter(|&m| m != 0)
            }
            _ => self.sparse.get(id).copied(),
        }
    }
    pub fn insert(&mut self, id: ReservationId, mask: u64) {
        debug_assert!(mask != 0, "a route names at least one shard");
        if self.dense.is_empty() {
            self.base = id.0;
        }
        let Some(i) = id.0.checked_sub(self.base) else {
            self.sparse.insert(id, mask);
            return;
        };
        if i as usize >= self.dense.len() + self.window {
            // A jump far ahead (forced sequence numbers): move everything to the map.
            self.spill(self.dense.len());
            self.base = id.0;
            return self.insert(id, mask);
        }
        let i = i as usize;
        if i == self.dense.len() {
            // The usual case, the next sequence number: pushed, not looked up.
            self.dense.push_back(mask);
            self.live += 1;
        } else {
            if i > self.dense.len() {
                self.dense.resize(i + 1, 0);
            }
            let m = &mut self.dense[i];
            if *m == 0 {
                self.live += 1;
            }
            *m = mask;
        }
        if self.dense.len() > self.window && self.live * 4 < self.dense.len() {
            let n = self.dense.len() - self.window / 2;
            self.spill(n);
        }
    }
    pub fn remove(&mut self, id: &ReservationId) {
        match id.0.checked_sub(self.base) {
            Some(i) if (i as usize) < self.dense.len() => {
                let m = &mut self.dense[i as usize];
                if *m != 0 {
                    *m = 0;
                    self.live -= 1;
                }
                while self.dense.front() == Some(&0) {
                    self.dense.pop_front();
                    self.base += 1;
                }
            }
            _ => {
                self.sparse.remove(id);
            }
        }
    }
    /// Moves the first `n` entries of the deque to the map.
    fn spill(&mut self, n: usize) {
        for _ in 0..n {
            let Some(m) = self.dense.pop_front() else {
                break;
            };
            if m != 0 {
                self.live -= 1;
                self.sparse.insert(ReservationId(self.base), m);
            }
            self.base += 1;
        }
        while self.dense.front() == Some(&0) {
            self.dense.pop_front();
            self.base += 1;
        }
    }
}

fn refuse(r: Refusal) -> Admission {
    Admission::Immediate(Response {
        seq: None,
        replayed: false,
        outcome: Outcome::Refused(r),
    })
}

fn check_qty(field: &str, q: i64, min: i64) -> Result<(), Refusal> {
    check_qty_at(|| field.to_string(), q, min)
}

/// As [`check_qty`], naming the field only when it is wrong (the hot path formats nothing).
fn check_qty_at(field: impl FnOnce() -> String, q: i64, min: i64) -> Result<(), Refusal> {
    if q < min || q > QUANTITY_MAX {
        return Err(Refusal::invalid(
            &field(),
            format!("must be between {min} and {QUANTITY_MAX}"),
        ));
    }
    Ok(())
}

impl Front {
    pub fn new(limits: Limits, shards: usize) -> Self {
        assert!(
            (1..=crate::limits::SHARDS_MAX).contains(&shards),
            "shard count out of range"
        );
        Front {
            limits,
            shards,
            seq: 0,
            now: 0,
            tenants: Vec::new(),
            tenant_index: BTreeMap::new(),
            idempotency: IdemStore::default(),
            routes: Routes::default(),
        }
    }

    fn all_shards(&self) -> u64 {
        if self.shards == 64 {
            u64::MAX
        } else {
            (1u64 << self.shards) - 1
        }
    }

    /// The shard owning `sku` of the tenant `cfg` configures.
    fn shard_index(&self, cfg: &TenantConfig, sku: &crate::ids::Sku) -> u16 {
        shard_of(cfg.tenant_idx, sku.as_str(), self.shards) as u16
    }

    fn shard_bit(&self, tenant: u32, sku: &str) -> u64 {
        1u64 << shard_of(tenant, sku, self.shards)
    }

    /// Warms the idempotency tables for the keys of `requests` ([`IdemStore::warm`]) before
    /// they are admitted one by one.
    pub fn warm<'r>(&self, requests: impl Iterator<Item = &'r Request>) {
        let keys = requests.filter_map(|r| {
            let key = r.idempotency_key.as_deref()?;
            let t = *self.tenant_index.get(&r.tenant)?;
            Some((t, key))
        });
        std::hint::black_box(self.idempotency.warm(keys));
    }

    /// Tidies the idempotency tables a little ([`IdemStore::tidy`]); true while there is more
    /// to do. Changes nothing any request can see.
    pub fn tidy(&mut self, budget: usize) -> bool {
        self.idempotency.tidy(budget)
    }

    /// Admits a request at time `now`. With `forced_seq` (log replay) the request is
    /// sequenced with that number.
    pub fn admit(&mut self, req: &Request, now: TimeMs, forced_seq: Option<Seq>) -> Admission {
        let before = self.now;
        self.now = self.now.max(now);
        let admission = self.admit_now(req, forced_seq);
        // Only a sequenced write moves the clock (and expires idempotency keys): replays, reads
        // and refusals are not logged, and replaying the log must rebuild the same state.
        if !matches!(admission, Admission::Run { .. }) || req.command.is_read() {
            self.now = before;
        }
        admission
    }

    // Inlined into its one caller: an `Admission` (256 bytes) returned through a call is
    // copied twice more on the way out, once per admitted request.
    #[inline(always)]
    fn admit_now(&mut self, req: &Request, forced_seq: Option<Seq>) -> Admission {
        let now = self.now;
        let retention = self.limits.idempotency_retention_ms;
        let is_read = req.command.is_read();
        // Engine-wide commands.
        if let Command::Tick = req.command {
            self.expire_idempotency(now);
            let job = self.job(
                0,
                TenantId::new(SYSTEM_TENANT).expect("valid id"),
                req,
                JobKind::Tick,
                self.all_shards(),
                forced_seq,
            );
            return Admission::Run { job, idem: None };
        }
        let tenant = match (&req.command, self.tenant_index.get(&req.tenant)) {
            (Command::CreateTenant, Some(_)) => {
                return refuse(Refusal::state(format!(
                    "tenant {} exists already",
                    req.tenant
                )));
            }
            (Command::CreateTenant, None) => None,
            (_, Some(&t)) => Some(t),
            (_, None) => return refuse(Refusal::not_found(format!("tenant {}", req.tenant))),
        };
        // Idempotency, for writes of an existing tenant.
        let mut idem = None;
        if let (Some(key), Some(t), false) = (&req.idempotency_key, tenant, is_read) {
            if key.is_empty() || key.len() > self.limits.idempotency_key_len_max {
                return refuse(Refusal::invalid(
                    "idempotency_key",
                    format!("must be 1 to {} bytes", self.limits.idempotency_key_len_max),
                ));
            }
            let fingerprint = fingerprint(&req.command);
            // An entry past the retention window is forgotten (removed when a write is sequenced).
            if let Some(e) = self
                .idempotency
                .get(t, key)
                .filter(|e| e.at.saturating_add(retention) > now)
            {
                if !same_command(&e.fingerprint, &fingerprint, &req.command) {
                    return refuse(Refusal::IdempotencyKeyReused);
                }
                return match e.response.get() {
                    Some(r) => Admission::Immediate(Response {
                        replayed: true,
                        ..r.into_owned()
                    }),
                    None => Admission::Wait(IdemKey::new(t, key), e.seq),
                };
            }
            let forgotten = self.idempotency.expired(now, retention);
            if forced_seq.is_none()
                && self.idempotency.len() - forgotten >= self.limits.idempotency_keys_max
            {
                return refuse(Refusal::LimitExceeded {
                    what: "idempotency keys remembered".into(),
                    limit: self.limits.idempotency_keys_max as u64,
                });
            }
            idem = Some((t, key, fingerprint));
        }
        let admitted = match tenant {
            None => self.admit_create_tenant(req, forced_seq),
            Some(t) => self.admit_command(t, req, forced_seq),
        };
        let job = match admitted {
            Ok(job) => job,
            Err(r) => return refuse(r),
        };
        if !is_read {
            self.expire_idempotency(now);
        }
        let idem = idem.map(|(t, key, fingerprint)| {
            let key = IdemKey::new(t, key);
            let answer = IdemAnswer::default();
            self.idempotency.insert(
                key.clone(),
                IdemEntry {
                    fingerprint,
                    at: now,
                    seq: job.seq,
                    response: answer.clone(),
                },
            );
            (key, answer)
        });
        Admission::Run { job, idem }
    }

    fn expire_idempotency(&mut self, now: TimeMs) {
        self.idempotency
            .expire(now, self.limits.idempotency_retention_ms);
    }

    fn job(
        &mut self,
        tenant: u32,
        tenant_id: TenantId,
        req: &Request,
        kind: JobKind,
        shards: u64,
        forced: Option<Seq>,
    ) -> Job {
        let seq = if req.command.is_read() {
            self.seq
        } else {
            self.seq = forced.unwrap_or(self.seq + 1);
            self.seq
        };
        Job {
            seq,
            now: self.now,
            tenant,
            tenant_id,
            key_id: req.key_id.clone(),
            kind,
            shards,
            quiet: false,
        }
    }

    fn admit_create_tenant(&mut self, req: &Request, forced: Option<Seq>) -> Result<Job, Refusal> {
        if self.tenants.len() >= self.limits.tenants_max {
            return Err(Refusal::LimitExceeded {
                what: "tenants".into(),
                limit: self.limits.tenants_max as u64,
            });
        }
        if req.tenant.as_str() == SYSTEM_TENANT {
            return Err(Refusal::invalid("id", "this tenant id is reserved"));
        }
        let idx = self.tenants.len() as u32;
        let config = Arc::new(TenantConfig {
            tenant_idx: idx,
            ..TenantConfig::default()
        });
        self.tenants.push(TenantEntry {
            id: req.tenant.clone(),
            config: config.clone(),
        });
        self.tenant_index.insert(req.tenant.clone(), idx);
        let all = self.all_shards();
        Ok(self.job(
            idx,
            req.tenant.clone(),
            req,
            JobKind::Config {
                config,
                event: Box::new(EventKind::TenantCreated),
            },
            all,
            forced,
        ))
    }

    fn text(&self, field: &str, s: &str) -> Result<(), Refusal> {
        if s.len() > self.limits.text_len_max {
            return Err(Refusal::invalid(
                field,
                format!(
                    "is {} bytes, the limit is {}",
                    s.len(),
                    self.limits.text_len_max
                ),
            ));
        }
        Ok(())
    }

    fn loc(
        &self,
        cfg: &TenantConfig,
        field: &str,
        l: &crate::ids::LocationId,
    ) -> Result<u16, Refusal> {
        cfg.location_idx(l)
            .ok_or_else(|| Refusal::not_found(format!("location {l} (in `{field}`)")))
    }

    fn stock_sku(&self, cfg: &TenantConfig, sku: &Sku) -> Result<(), Refusal> {
        if cfg.is_bundle(sku) {
            return Err(Refusal::invalid(
                "sku",
                format!("{sku} is a bundle; stock is kept for its components"),
            ));
        }
        Ok(())
    }

    fn ttl(&self, ttl_ms: Option<u64>) -> Result<u64, Refusal> {
        let ttl = ttl_ms.unwrap_or(self.limits.ttl_ms_default);
        if ttl < self.limits.ttl_ms_min || ttl > self.limits.ttl_ms_max {
            return Err(Refusal::invalid(
                "ttl_seconds",
                format!(
                    "must be between {} and {}",
                    self.limits.ttl_ms_min / 1000,
                    self.limits.ttl_ms_max / 1000
                ),
            ));
        }
        Ok(ttl)
    }

    /// Installs a changed configuration and returns it for the shards.
    fn reconfigure(&mut self, t: u32, mut cfg: TenantConfig) -> Result<Arc<TenantConfig>, Refusal> {
        cfg.rules = rules::compile(&cfg.rule_document, &cfg)
            .map_err(|e| Refusal::invalid(&rule_field(&e), e.to_string()))?;
        let cfg = Arc::new(cfg);
        self.tenants[t as usize].config = cfg.clone();
        Ok(cfg)
    }

    /// Admits a reservation, the hot path: it reads the tenant's configuration in place (the
    /// other commands hold their own reference to it, since some of them replace it).
    fn admit_reserve(
        &mut self,
        t: u32,
        req: &Request,
        forced: Option<Seq>,
    ) -> Result<Job, Refusal> {
        let Command::Reserve {
            channel,
            lines,
            ttl_ms,
            order_ref,
            ship_to_region,
            fill,
        } = &req.command
        else {
            unreachable!("called for reservations")
        };
        let cfg = &self.tenants[t as usize].config;
        let c = cfg
            .channel_idx(channel)
            .ok_or_else(|| Refusal::not_found(format!("channel {channel}")))?;
        let ttl = self.ttl(*ttl_ms)?;
        self.text("order_ref", order_ref.as_deref().unwrap_or(""))?;
        self.text("ship_to_region", ship_to_region.as_deref().unwrap_or(""))?;
        if let FillPolicy::Split { max_locations: 0 } = fill {
            return Err(Refusal::invalid("fill.max_locations", "must be at least 1"));
        }
        let (headers, items) = self.expand_lines(cfg, lines)?;
        let mask = items.iter().fold(0u64, |m, it| m | 1u64 << it.shard);
        let kind = JobKind::Reserve {
            channel: c,
            lines: headers,
            items,
            expires_at: self.now.saturating_add(ttl),
            order_ref: order_ref.clone().map(Box::new),
            ship_to_region: ship_to_region.clone().map(Box::new),
            fill: *fill,
        };
        let job = self.job(t, req.tenant.clone(), req, kind, mask, forced);
        self.routes.insert(ReservationId(job.seq), mask);
        Ok(job)
    }

    fn admit_command(
        &mut self,
        t: u32,
        req: &Request,
        forced: Option<Seq>,
    ) -> Result<Job, Refusal> {
        if let Command::Reserve { .. } = req.command {
            return self.admit_reserve(t, req, forced);
        }
        let cfg = self.tenants[t as usize].config.clone();
        let tid = req.tenant.clone();
        let all = self.all_shards();
        let one = |s: &Self, sku: &Sku| s.shard_bit(t, sku.as_str());
        let (kind, shards) = match &req.command {
            Command::CreateTenant | Command::Tick => unreachable!("handled by admit"),
            Command::PutLocation {
                location,
                kind,
                name,
                region,
                wms,
            } => {
                self.text("name", name)?;
                self.text("region", region.as_deref().unwrap_or(""))?;
                self.text("wms", wms.as_deref().unwrap_or(""))?;
                let mut next = (*cfg).clone();
                let loc = Location {
                    id: location.clone(),
                    kind: *kind,
                    name: name.clone(),
                    region: region.clone(),
                    wms: wms.clone(),
                };
                match next.location_idx(location) {
                    Some(i) => next.locations[i as usize] = loc,
                    None if next.locations.len() >= self.limits.locations_per_tenant_max => {
                        return Err(Refusal::LimitExceeded {
                            what: "locations per tenant".into(),
                            limit: self.limits.locations_per_tenant_max as u64,
                        })
                    }
                    None => next.locations.push(loc),
                }
                let config = self.reconfigure(t, next)?;
                (
                    JobKind::Config {
                        config,
                        event: Box::new(EventKind::LocationPut {
                            location: location.clone(),
                        }),
                    },
                    all,
                )
            }
            Command::PutChannel {
                channel,
                kind,
                priority,
            } => {
                let mut next = (*cfg).clone();
                let ch = Channel {
                    id: channel.clone(),
                    kind: *kind,
                    priority: *priority,
                };
                match next.channel_idx(channel) {
                    Some(i) => next.channels[i as usize] = ch,
                    None if next.channels.len() >= self.limits.channels_per_tenant_max => {
                        return Err(Refusal::LimitExceeded {
                            what: "channels per tenant".into(),
                            limit: self.limits.channels_per_tenant_max as u64,
                        })
                    }
                    None => next.channels.push(ch),
                }
                let config = self.reconfigure(t, next)?;
                (
                    JobKind::Config {
                        config,
                        event: Box::new(EventKind::ChannelPut {
                            channel: channel.clone(),
                        }),
                    },
                    all,
                )
            }
            Command::PutBundle { sku, components } => {
                self.check_bundle(&cfg, sku, components)?;
                let mut next = (*cfg).clone();
                next.bundles.insert(sku.clone(), components.clone());
                let config = self.reconfigure(t, next)?;
                (
                    JobKind::Config {
                        config,
                        event: Box::new(EventKind::BundlePut { sku: sku.clone() }),
                    },
                    all,
                )
            }
            Command::PutRules { document } => {
                let mut next = (*cfg).clone();
                next.rule_document = RuleDocument {
                    version: cfg.rule_document.version + 1,
                    ..document.clone()
                };
                let config = self.reconfigure(t, next)?;
                let version = config.rule_document.version;
                (
                    JobKind::Config {
                        config,
                        event: Box::new(EventKind::RulesPut { version }),
                    },
                    all,
                )
            }
            Command::Receive {
                sku,
                location,
                quantity,
                unit_cost,
                reason,
            } => {
                self.stock_sku(&cfg, sku)?;
                check_qty("quantity", *quantity, 1)?;
                self.text("reason", reason)?;
                if let Some(c) = unit_cost {
                    if c.is_sign_negative() || *c > rust_decimal::Decimal::from(QUANTITY_MAX) {
                        return Err(Refusal::invalid(
                            "unit_cost",
                            format!("must be between 0 and {QUANTITY_MAX}"),
                        ));
                    }
                }
                let loc = self.loc(&cfg, "location", location)?;
                let kind = JobKind::Receive {
                    sku: sku.clone(),
                    loc,
                    quantity: *quantity,
                    unit_cost: *unit_cost,
                    reason: reason.clone(),
                };
                (kind, one(self, sku))
            }
            Command::Expect {
                sku,
                location,
                quantity,
                expected_at,
                reason,
            } => {
                self.stock_sku(&cfg, sku)?;
                check_qty("quantity", *quantity, 1)?;
                self.text("reason", reason)?;
                let loc = self.loc(&cfg, "location", location)?;
                let kind = JobKind::Expect {
                    sku: sku.clone(),
                    loc,
                    quantity: *quantity,
                    expected_at: *expected_at,
                    reason: reason.clone(),
                };
                (kind, one(self, sku))
            }
            Command::Adjust {
                sku,
                location,
                delta,
                reason,
            } => {
                self.stock_sku(&cfg, sku)?;
                if *delta == 0 || !(-QUANTITY_MAX..=QUANTITY_MAX).contains(delta) {
                    return Err(Refusal::invalid(
                        "quantity",
                        format!("a non-zero delta between -{QUANTITY_MAX} and {QUANTITY_MAX}"),
                    ));
                }
                self.text("reason", reason)?;
                let loc = self.loc(&cfg, "location", location)?;
                (
                    JobKind::Adjust {
                        sku: sku.clone(),
                        loc,
                        delta: *delta,
                        reason: reason.clone(),
                    },
                    one(self, sku),
                )
            }
            Command::Set {
                sku,
                location,
                quantity,
                compare_quantity,
                reason,
            } => {
                self.stock_sku(&cfg, sku)?;
                check_qty("quantity", *quantity, 0)?;
                if let Some(c) = compare_quantity {
                    check_qty("compare_quantity", *c, 0)?;
                }
                self.text("reason", reason)?;
                let loc = self.loc(&cfg, "location", location)?;
                let kind = JobKind::Set {
                    sku: sku.clone(),
                    loc,
                    quantity: *quantity,
                    compare: *compare_quantity,
                    reason: reason.clone(),
                };
                (kind, one(self, sku))
            }
            Command::Move {
                sku,
                location,
                from,
                to,
                quantity,
                reason,
            } => {
                self.stock_sku(&cfg, sku)?;
                check_qty("quantity", *quantity, 1)?;
                if from == to {
                    return Err(Refusal::invalid("to", "`from` and `to` must differ"));
                }
                self.text("reason", reason)?;
                let loc = self.loc(&cfg, "location", location)?;
                let kind = JobKind::Move {
                    sku: sku.clone(),
                    loc,
                    from: *from,
                    to: *to,
                    quantity: *quantity,
                    reason: reason.clone(),
                };
                (kind, one(self, sku))
            }
            Command::Transfer {
                sku,
                location,
                to_location,
                quantity,
                expected_at,
                reason,
            } => {
                self.stock_sku(&cfg, sku)?;
                check_qty("quantity", *quantity, 1)?;
                self.text("reason", reason)?;
                let loc = self.loc(&cfg, "location", location)?;
                let to = self.loc(&cfg, "to_location", to_location)?;
                if loc == to {
                    return Err(Refusal::invalid(
                        "to_location",
                        "must differ from `location`",
                    ));
                }
                let kind = JobKind::Transfer {
                    sku: sku.clone(),
                    loc,
                    to,
                    quantity: *quantity,
                    expected_at: *expected_at,
                    reason: reason.clone(),
                };
                (kind, one(self, sku))
            }
            Command::Reserve { .. } => unreachable!("admitted by admit_reserve"),
            Command::Extend { id, ttl_ms } => {
                let ttl = self.ttl(Some(*ttl_ms))?;
                (
                    JobKind::Extend {
                        id: *id,
                        expires_at: self.now.saturating_add(ttl),
                    },
                    self.route(*id),
                )
            }
            Command::Commit { id, lines } => {
                if let Some(lines) = lines {
                    if lines.len() > self.limits.lines_per_reservation_max {
                        return Err(Refusal::invalid("lines", "too many lines"));
                    }
                    for (i, l) in lines.iter().enumerate() {
                        if let Some(q) = l.quantity {
                            check_qty_at(|| format!("lines[{i}].quantity"), q, 1)?;
                        }
                    }
                }
                let lines = lines
                    .as_ref()
                    .map(|ls| ls.iter().map(|l| (l.sku.clone(), l.quantity)).collect());
                (JobKind::Commit { id: *id, lines }, self.route(*id))
            }
            Command::Release { id } => (JobKind::Release { id: *id }, self.route(*id)),
            Command::Cancel { id } => (JobKind::Cancel { id: *id }, self.route(*id)),
            Command::Fulfil { id, lines } => {
                if lines.is_empty() || lines.len() > self.limits.lines_per_reservation_max {
                    return Err(Refusal::invalid(
                        "lines",
                        format!("give 1 to {} lines", self.limits.lines_per_reservation_max),
                    ));
                }
                let mut out = Vec::with_capacity(lines.len());
                for (i, l) in lines.iter().enumerate() {
                    check_qty_at(|| format!("lines[{i}].quantity"), l.quantity, 0)?;
                    check_qty_at(|| format!("lines[{i}].missing"), l.missing, 0)?;
                    if l.quantity + l.missing == 0 {
                        return Err(Refusal::invalid(
                            &format!("lines[{i}]"),
                            "report at least one unit picked or missing",
                        ));
                    }
                    let loc = self.loc(&cfg, &format!("lines[{i}].location"), &l.location)?;
                    if out
                        .iter()
                        .any(|(x, lx): &(crate::command::FulfilLine, u16)| {
                            x.sku == l.sku && *lx == loc
                        })
                    {
                        return Err(Refusal::invalid(
                            &format!("lines[{i}]"),
                            "the same SKU and location are listed twice",
                        ));
                    }
                    out.push((l.clone(), loc));
                }
                (
                    JobKind::Fulfil {
                        id: *id,
                        lines: out,
                    },
                    self.route(*id),
                )
            }
            Command::Return {
                id,
                sku,
                location,
                quantity,
                damaged,
                reason,
            } => {
                check_qty("quantity", *quantity, 1)?;
                self.text("reason", reason)?;
                let loc = self.loc(&cfg, "location", location)?;
                let kind = JobKind::Return {
                    id: *id,
                    sku: sku.clone(),
                    loc,
                    quantity: *quantity,
                    damaged: *damaged,
                };
                (kind, self.route(*id))
            }
            Command::GetStock { sku } => {
                let mask = match cfg.bundles.get(sku) {
                    Some(comps) => comps.iter().fold(0, |m, c| m | one(self, &c.sku)),
                    None => one(self, sku),
                };
                (JobKind::GetStock { sku: sku.clone() }, mask)
            }
            Command::GetReservation { id } => {
                (JobKind::GetReservation { id: *id }, self.route(*id))
            }
            Command::Explain { sku, channel } => {
                let c = cfg
                    .channel_idx(channel)
                    .ok_or_else(|| Refusal::not_found(format!("channel {channel}")))?;
                let mask = match cfg.bundles.get(sku) {
                    Some(comps) => comps.iter().fold(0, |m, k| m | one(self, &k.sku)),
                    None => one(self, sku),
                };
                (
                    JobKind::Explain {
                        sku: sku.clone(),
                        channel: c,
                    },
                    mask,
                )
            }
        };
        Ok(self.job(t, tid, req, kind, shards, forced))
    }

    /// The shards of a reservation, or one fallback shard that will answer "not found".
    /// The shards a reservation's parts live on, as a bit mask.
    pub fn route_of(&self, id: ReservationId) -> u64 {
        self.route(id)
    }

    fn route(&self, id: ReservationId) -> u64 {
        self.routes
            .get(&id)
            .unwrap_or(1u64 << (id.0 % self.shards as u64))
    }

    fn check_bundle(
        &self,
        cfg: &TenantConfig,
        sku: &Sku,
        components: &[crate::config::Component],
    ) -> Result<(), Refusal> {
        if components.is_empty() || components.len() > self.limits.components_per_bundle_max {
            return Err(Refusal::invalid(
                "components",
                format!(
                    "give 1 to {} components",
                    self.limits.components_per_bundle_max
                ),
            ));
        }
        if cfg.is_component(sku) {
            return Err(Refusal::invalid(
                "sku",
                format!("{sku} is a component of another bundle"),
            ));
        }
        for (i, c) in components.iter().enumerate() {
            let field = format!("components[{i}]");
            if !(1..=1_000_000).contains(&c.quantity) {
                return Err(Refusal::invalid(
                    &format!("{field}.quantity"),
                    "must be between 1 and 1000000",
                ));
            }
            if &c.sku == sku {
                return Err(Refusal::invalid(&field, "a bundle cannot contain itself"));
            }
            if cfg.is_bundle(&c.sku) {
                return Err(Refusal::invalid(
                    &field,
                    format!("{} is a bundle; bundles do not nest", c.sku),
                ));
            }
            if components[..i].iter().any(|o| o.sku == c.sku) {
                return Err(Refusal::invalid(
                    &field,
                    format!("{} is listed twice", c.sku),
                ));
            }
        }
        Ok(())
    }

    fn expand_lines(
        &self,
        cfg: &TenantConfig,
        lines: &[crate::command::LineRequest],
    ) -> Result<Expanded, Refusal> {
        if lines.is_empty() || lines.len() > self.limits.lines_per_reservation_max {
            return Err(Refusal::invalid(
                "lines",
                format!("give 1 to {} lines", self.limits.lines_per_reservation_max),
            ));
        }
        let mut bundles = false;
        for (i, l) in lines.iter().enumerate() {
            check_qty_at(|| format!("lines[{i}].quantity"), l.quantity, 1)?;
            if lines[..i].iter().any(|o| o.sku == l.sku) {
                return Err(Refusal::invalid(
                    &format!("lines[{i}].sku"),
                    format!("{} is on an earlier line", l.sku),
                ));
            }
            bundles |= cfg.is_bundle(&l.sku);
        }
        let headers = LineHeaders::from_fn(lines, |l| {
            LineHeader::new(l.sku.clone(), l.quantity, bundles && cfg.is_bundle(&l.sku))
        });
        if !bundles {
            // One item per line.
            let items = crate::small(lines.iter().enumerate().map(|(i, l)| ItemReq {
                line: i as u16,
                slot: 0,
                sku: l.sku.clone(),
                per_unit: 1,
                shard: self.shard_index(cfg, &l.sku),
            }));
            return Ok((headers, items));
        }
        let mut items = smallvec::SmallVec::with_capacity(lines.len());
        for (i, l) in lines.iter().enumerate() {
            let line = i as u16;
            match cfg.bundles.get(&l.sku) {
                Some(comps) => {
                    for (slot, c) in comps.iter().enumerate() {
                        items.push(ItemReq {
                            line,
                            slot: slot as u16,
                            sku: c.sku.clone(),
                            per_unit: c.quantity,
                            shard: self.shard_index(cfg, &c.sku),
                        });
                    }
                }
                None => items.push(ItemReq {
                    line,
                    slot: 0,
                    sku: l.sku.clone(),
                    per_unit: 1,
                    shard: self.shard_index(cfg, &l.sku),
                }),
            }
        }
        Ok((headers, items))
    }

    /// Records a finished job: sets the answer its idempotency key holds, forgets dropped
    /// routes, and turns the events into numbered [`Event`]s.
    pub fn finish(
        &mut self,
        job: &Job,
        idem: Option<(IdemKey, IdemAnswer)>,
        mut fin: Finished,
    ) -> (Response, Vec<Event>) {
        let dropped = std::mem::take(&mut fin.dropped);
        let (response, events) = respond(job, fin, |t| self.tenants[t as usize].id.clone());
        if let Some((_, answer)) = &idem {
            answer.set(&response);
        }
        self.forget_routes(&dropped);
        (response, events)
    }

    /// Forgets the routes of reservations that are gone (a finished job's front work; its
    /// idempotent answer is set by whoever finished it, see [`IdemAnswer`]).
    pub fn forget_routes(&mut self, dropped: &[ReservationId]) {
        for id in dropped {
            self.routes.remove(id);
        }
    }

    /// Config of a tenant by index.
    pub fn config(&self, t: u32) -> Option<&Arc<TenantConfig>> {
        self.tenants.get(t as usize).map(|e| &e.config)
    }

    /// A copy for building a state image ([`crate::snapshot::take`]) while this front goes on:
    /// the idempotency tables are shared (changes meanwhile are kept apart, see `crate::idem`),
    /// and the routes and the keys' expiry queue, which an image does not hold, are left out.
    /// Only for reading.
    pub fn image_copy(&self) -> Front {
        Front {
            limits: self.limits.clone(),
            shards: self.shards,
            seq: self.seq,
            now: self.now,
            tenants: self.tenants.clone(),
            tenant_index: self.tenant_index.clone(),
            idempotency: self.idempotency.image_copy(),
            routes: Routes::default(),
        }
    }

    /// Puts back the remembered keys when a state image is loaded.
    pub fn restore_idempotency(&mut self, entries: impl IntoIterator<Item = (IdemKey, IdemEntry)>) {
        self.idempotency.restore(entries);
    }

    /// Idempotency entries in a canonical order, for digests and snapshots.
    pub fn idempotency_sorted(&self) -> Vec<(&IdemKey, &IdemEntry)> {
        self.idempotency.sorted()
    }
}

/// Turns a finished job into its response and numbered events. `tenant_name` resolves the
/// tenant of events that belong to another tenant than the job's (expiries during a tick).
pub fn respond(
    job: &Job,
    fin: Finished,
    tenant_name: impl Fn(u32) -> TenantId,
) -> (Response, Vec<Event>) {
    let written = !matches!(
        job.kind,
        JobKind::GetStock { .. } | JobKind::GetReservation { .. } | JobKind::Explain { .. }
    );
    let response = Response {
        seq: written.then_some(job.seq),
        replayed: false,
        outcome: fin.outcome,
    };
    let mut events = fin.events;
    for &(i, t) in &fin.foreign {
        events[i].tenant = tenant_name(t);
    }
    (response, events)
}

fn rule_field(e: &rules::RuleError) -> String {
    match e.index {
        Some(i) => format!("rules[{i}].{}", e.field),
        None => e.field.to_string(),
    }
}

/// A stable fingerprint of a command's content, for idempotency: the 128-bit XXH3 digest of
/// its binary layout ([`crate::codec::encode_command`], the log's record body), little-endian,
/// in the first 16 bytes; the last 16 are zero. The layout is a few dozen bytes written without
/// formatting; the command's JSON, hashed before image version 3, cost five times as much to
/// write and hash. Images before version 5 stored the BLAKE3 digest of the same layout (32
/// bytes, with a last half that is not all zero but once in 2^128): [`same_command`] still
/// compares those.
pub fn fingerprint(c: &Command) -> [u8; 32] {
    with_layout(c, |bytes| {
        let mut f = [0; 32];
        f[..16].copy_from_slice(&xxhash_rust::xxh3::xxh3_128(bytes).to_le_bytes());
        f
    })
}

/// `f` of the command's binary layout, written into a buffer kept by the thread.
fn with_layout<T>(c: &Command, f: impl FnOnce(&[u8]) -> T) -> T {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        crate::codec::encode_command(c, &mut b);
        let out = f(&b);
        // A rare huge command does not keep its buffer.
        if b.capacity() > 64 * 1024 {
            *b = Vec::new();
        }
        out
    })
}

/// Whether a repeat whose command has the fingerprint `fresh` ([`fingerprint`]) is the command
/// whose key's entry remembers `stored`: the same fingerprint; or, for an entry loaded from an
/// image before version 5, its BLAKE3 digest of `c`'s layout; or any command for an entry whose
/// fingerprint is unknown ([`UNKNOWN_FINGERPRINT`]).
pub fn same_command(stored: &[u8; 32], fresh: &[u8; 32], c: &Command) -> bool {
    if stored == fresh || *stored == UNKNOWN_FINGERPRINT {
        return true;
    }
    if stored[16..].iter().all(|&b| b == 0) {
        return false;
    }
    with_layout(c, |bytes| blake3::hash(bytes).as_bytes() == stored)
}

/// The fingerprint of an idempotency key remembered by an image older than version 3, whose
/// fingerprints hashed another form of the command: a repeat of such a key is answered with
/// its first outcome whatever its body (see [`crate::snapshot::from_bytes`]).
pub const UNKNOWN_FINGERPRINT: [u8; 32] = [0; 32];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Fingerprints are stored in snapshots: they stay the XXH3-128 digest of the command's
    /// binary layout, and differ where the commands differ. A BLAKE3 fingerprint (images before
    /// version 5) is still compared with the command it was taken of.
    #[test]
    fn a_fingerprint_is_the_digest_of_the_binary_layout() {
        let c = Command::Receive {
            sku: crate::ids::Sku::new("MUG").unwrap(),
            location: crate::ids::LocationId::new("east").unwrap(),
            quantity: 12,
            unit_cost: Some("2.50".parse().unwrap()),
            reason: "po \"7\" ü".into(),
        };
        let mut other = c.clone();
        if let Command::Receive { quantity, .. } = &mut other {
            *quantity = 13;
        }
        assert_ne!(fingerprint(&c), fingerprint(&other));
        for c in [&c, &other, &Command::Tick] {
            let mut bytes = Vec::new();
            crate::codec::encode_command(c, &mut bytes);
            let f = fingerprint(c);
            assert_eq!(f[..16], xxhash_rust::xxh3::xxh3_128(&bytes).to_le_bytes());
            assert_eq!(f[16..], [0; 16]);
            assert_ne!(f, UNKNOWN_FINGERPRINT);
            assert!(same_command(&f, &f, c));
            let old = *blake3::hash(&bytes).as_bytes();
            assert!(
                same_command(&old, &f, c),
                "a BLAKE3 fingerprint of the same command"
            );
        }
        // XXH3-128 of the empty input, from its specification: the digest is fixed.
        assert_eq!(
            xxhash_rust::xxh3::xxh3_128(b""),
            0x99aa_06d3_0147_98d8_6001_c324_468d_497f
        );
        let (f, g) = (fingerprint(&c), fingerprint(&other));
        assert!(!same_command(&f, &g, &other));
        let old = {
            let mut bytes = Vec::new();
            crate::codec::encode_command(&c, &mut bytes);
            *blake3::hash(&bytes).as_bytes()
        };
        assert!(
            !same_command(&old, &g, &other),
            "a BLAKE3 fingerprint of another command"
        );
        assert!(same_command(&UNKNOWN_FINGERPRINT, &g, &other));
    }

    /// The routes behave as a map under inserts in increasing id order, removals in any
    /// order, long-lived entries spilling to the map and jumps ahead.
    #[test]
    fn routes_behave_as_a_map() {
        let mut r = Routes::with_window(16);
        let mut model: BTreeMap<u64, u64> = BTreeMap::new();
        let mut next = crate::test_rng::xorshift(0x2545_f491_4f6c_dd1d);
        let mut id = 1u64;
        for step in 0..20_000 {
            match next(10) {
                0..=4 => {
                    id += 1 + next(3) + if step % 997 == 0 { 100 } else { 0 };
                    let mask = 1 + next(7);
                    r.insert(ReservationId(id), mask);
                    model.insert(id, mask);
                }
                5..=8 => {
                    // Mostly recent ids; sometimes a long-lived one stays.
                    let victim = id.saturating_sub(next(40));
                    if next(50) != 0 {
                        r.remove(&ReservationId(victim));
                        model.remove(&victim);
                    }
                }
                _ => {
                    let probe = id.saturating_sub(next(200));
                    assert_eq!(r.get(&ReservationId(probe)), model.get(&probe).copied());
                }
            }
            assert_eq!(r.len(), model.len(), "step {step}");
        }
        for (&k, &v) in &model {
            assert_eq!(r.get(&ReservationId(k)), Some(v));
        }
        assert!(!r.sparse.is_empty(), "some routes outlived the window");
        assert!(r.dense.len() <= 64, "the deque stays near its window");
    }
}
