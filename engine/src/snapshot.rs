//! The state image: the whole state in a canonical, shard-independent form, archived with
//! rkyv. Taking an image and loading it into a machine with any number of shards gives the
//! same digest. Derived data (per-channel ATS, routes, timers) is not stored: loading rebuilds
//! it. Nothing here uses `usize`: the layout is the same on every platform.

use crate::config::{Channel, Component, Location, TenantConfig, TenantEntry};
use crate::front::{Front, IdemEntry, IdemKey};
use crate::ids::{ReservationId, Sku, TenantId};
use crate::job::{Granted, LineHeader, LineHeaders};
use crate::limits::QUANTITY_MAX;
use crate::machine::Machine;
use crate::shard::{shard_of, Alloc, Lifecycle, Part, PartItem, ShardState, SkuKey, SkuState};
use rkyv::{Archive, Deserialize, Serialize};
use std::sync::Arc;

/// The largest stock quantity (any term of a level, units held per channel, units of an item
/// of a reservation) an image may carry: twice [`LEVEL_MAX`](crate::limits::LEVEL_MAX), which
/// stock operations keep to (returns are not refused, so a level may pass it slightly). Low
/// enough that the ATS, a sum of such terms over every location, cannot overflow.
pub const STOCK_MAX: i64 = 2 * crate::limits::LEVEL_MAX;

/// Version of the image layout; bumped on any change.
pub const IMAGE_VERSION: u32 = 1;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Image {
    pub version: u32,
    pub seq: u64,
    pub now: u64,
    pub tenants: Vec<TenantImage>,
    pub idempotency: Vec<IdemImage>,
    pub skus: Vec<SkuImage>,
    pub reservations: Vec<ReservationImage>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TenantImage {
    pub id: String,
    /// Locations, channels and bundles as JSON: small, and their wire form is already stable.
    pub locations_json: String,
    pub channels_json: String,
    pub bundles_json: String,
    pub rules_json: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct IdemImage {
    pub tenant: u32,
    pub key: String,
    pub fingerprint: [u8; 32],
    pub at: u64,
    /// The stored response as JSON; `None` for a request still executing (never in an image
    /// taken at a quiet point).
    pub response_json: Option<String>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SkuImage {
    pub tenant: u32,
    pub sku: String,
    /// Per level: location index and the seven quantities plus the incoming date.
    pub levels: Vec<LevelImage>,
    /// Units held or committed per channel index.
    pub held: Vec<i64>,
    /// Average unit cost, as a decimal string.
    pub cost: Option<String>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct LevelImage {
    pub loc: u16,
    pub on_hand: i64,
    pub reserved: i64,
    pub committed: i64,
    pub damaged: i64,
    pub quality_control: i64,
    pub safety_stock: i64,
    pub incoming: i64,
    pub incoming_at: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ReservationImage {
    pub id: u64,
    pub tenant: u32,
    pub channel: u16,
    /// 0 held, 1 committed, 2 released, 3 expired, 4 cancelled.
    pub lifecycle: u8,
    pub created_at: u64,
    pub expires_at: u64,
    pub ended_at: u64,
    pub order_ref: Option<String>,
    pub lines: Vec<LineImage>,
    pub granted: Vec<i64>,
    pub items: Vec<ItemImage>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct LineImage {
    pub sku: String,
    pub requested: i64,
    pub is_bundle: bool,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ItemImage {
    pub item: u16,
    pub line: u16,
    pub slot: u16,
    pub sku: String,
    pub per_unit: i64,
    pub quantity: i64,
    pub allocs: Vec<AllocImage>,
    pub backordered: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct AllocImage {
    pub loc: u16,
    pub open: i64,
    pub shipped: i64,
    pub returned: i64,
}

/// Why an image could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the image does not validate: {0}")]
    Invalid(String),
    #[error("image version {0} is not supported (this build reads {IMAGE_VERSION})")]
    Version(u32),
    #[error("the image is inconsistent: {0}")]
    Inconsistent(String),
}

fn lifecycle_code(l: Lifecycle) -> u8 {
    match l {
        Lifecycle::Held => 0,
        Lifecycle::Committed => 1,
        Lifecycle::Released => 2,
        Lifecycle::Expired => 3,
        Lifecycle::Cancelled => 4,
    }
}

fn lifecycle_of(code: u8) -> Result<Lifecycle, ImageError> {
    Ok(match code {
        0 => Lifecycle::Held,
        1 => Lifecycle::Committed,
        2 => Lifecycle::Released,
        3 => Lifecycle::Expired,
        4 => Lifecycle::Cancelled,
        x => {
            return Err(ImageError::Inconsistent(format!(
                "unknown lifecycle code {x}"
            )))
        }
    })
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("configuration serializes")
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, ImageError> {
    serde_json::from_str(s).map_err(|e| ImageError::Inconsistent(format!("{what}: {e}")))
}

/// Takes the image of a front and its shards. Call it at a quiet point (nothing in flight).
pub fn take<'a>(front: &Front, shards: impl Iterator<Item = &'a ShardState>) -> Image {
    let tenants = front
        .tenants
        .iter()
        .map(|e| TenantImage {
            id: e.id.to_string(),
            locations_json: json(&e.config.locations),
            channels_json: json(&e.config.channels),
            bundles_json: json(&e.config.bundles),
            rules_json: json(&e.config.rule_document),
        })
        .collect();
    let idempotency = front
        .idempotency_sorted()
        .into_iter()
        .map(|(k, e)| IdemImage {
            tenant: k.tenant,
            key: k.key.to_string(),
            fingerprint: e.fingerprint,
            at: e.at,
            response_json: e.response.as_deref().map(json),
        })
        .collect();
    let mut skus = Vec::new();
    let mut parts: std::collections::BTreeMap<u64, ReservationImage> =
        std::collections::BTreeMap::new();
    for s in shards {
        for (k, st) in &s.skus {
            skus.push(SkuImage {
                tenant: k.tenant,
                sku: k.sku.to_string(),
                levels: st.levels.iter().map(level_image).collect(),
                held: st.held().to_vec(),
                cost: st.cost.as_deref().map(|c| c.to_string()),
            });
        }
        for (id, p) in &s.parts {
            let r = parts.entry(id.0).or_insert_with(|| ReservationImage {
                id: id.0,
                tenant: p.tenant,
                channel: p.channel,
                lifecycle: lifecycle_code(p.lifecycle),
                created_at: p.created_at,
                expires_at: p.expires_at,
                ended_at: p.ended_at,
                order_ref: p.order_ref.as_deref().map(str::to_string),
                lines: p
                    .lines
                    .iter()
                    .map(|l| LineImage {
                        sku: l.sku.to_string(),
                        requested: l.requested,
                        is_bundle: l.is_bundle,
                    })
                    .collect(),
                granted: p.granted.units(&p.lines).to_vec(),
                items: Vec::new(),
            });
            r.items.extend(p.items.iter().map(item_image));
        }
    }
    skus.sort_by(|a, b| (a.tenant, &a.sku).cmp(&(b.tenant, &b.sku)));
    let reservations = parts
        .into_values()
        .map(|mut r| {
            r.items.sort_by_key(|i| i.item);
            r
        })
        .collect();
    Image {
        version: IMAGE_VERSION,
        seq: front.seq,
        now: front.now,
        tenants,
        idempotency,
        skus,
        reservations,
    }
}

fn level_image(l: &crate::ats::Level) -> LevelImage {
    LevelImage {
        loc: l.loc,
        on_hand: l.on_hand,
        reserved: l.reserved,
        committed: l.committed,
        damaged: l.damaged,
        quality_control: l.quality_control,
        safety_stock: l.safety_stock,
        incoming: l.incoming,
        incoming_at: l.incoming_at,
    }
}

fn item_image(i: &PartItem) -> ItemImage {
    ItemImage {
        item: i.item,
        line: i.line,
        slot: i.slot,
        sku: i.sku.to_string(),
        per_unit: i.per_unit,
        quantity: i.quantity,
        allocs: i
            .allocs
            .iter()
            .map(|a| AllocImage {
                loc: a.loc,
                open: a.open,
                shipped: a.shipped,
                returned: a.returned,
            })
            .collect(),
        backordered: i.backordered,
    }
}

/// Serializes an image (rkyv).
pub fn to_bytes(image: &Image) -> Vec<u8> {
    rkyv::to_bytes::<rkyv::rancor::Error>(image)
        .expect("images serialize")
        .to_vec()
}

/// Validates (bytecheck) and reads an image. Never panics on arbitrary bytes.
pub fn from_bytes(bytes: &[u8]) -> Result<Image, ImageError> {
    // rkyv needs the archive aligned; copy into an aligned buffer.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    let image = rkyv::from_bytes::<Image, rkyv::rancor::Error>(&aligned)
        .map_err(|e| ImageError::Invalid(e.to_string()))?;
    if image.version != IMAGE_VERSION {
        return Err(ImageError::Version(image.version));
    }
    Ok(image)
}

/// Builds a machine with `shards` shards from an image.
pub fn load(
    image: &Image,
    limits: crate::limits::Limits,
    shards: usize,
) -> Result<Machine, ImageError> {
    let mut m = Machine::new(limits, shards);
    m.front.seq = image.seq;
    m.front.now = image.now;
    for (i, t) in image.tenants.iter().enumerate() {
        let id = TenantId::new(&t.id)
            .map_err(|e| ImageError::Inconsistent(format!("tenant id: {e}")))?;
        let mut cfg = TenantConfig {
            tenant_idx: i as u32,
            locations: from_json::<Vec<Location>>("locations", &t.locations_json)?,
            channels: from_json::<Vec<Channel>>("channels", &t.channels_json)?,
            bundles: from_json::<std::collections::BTreeMap<Sku, Vec<Component>>>(
                "bundles",
                &t.bundles_json,
            )?,
            rule_document: from_json("rules", &t.rules_json)?,
            ..TenantConfig::default()
        };
        cfg.rules = crate::rules::compile(&cfg.rule_document, &cfg)
            .map_err(|e| ImageError::Inconsistent(e.to_string()))?;
        let cfg = Arc::new(cfg);
        m.front.tenant_index.insert(id.clone(), i as u32);
        m.front.tenants.push(TenantEntry {
            id,
            config: cfg.clone(),
        });
        for s in &mut m.shards {
            s.set_config(cfg.clone());
        }
    }
    let mut idempotency = Vec::with_capacity(image.idempotency.len());
    for e in &image.idempotency {
        let response = e
            .response_json
            .as_deref()
            .map(|r| from_json("idempotent response", r).map(Arc::new))
            .transpose()?;
        idempotency.push((
            IdemKey::new(e.tenant, &e.key),
            IdemEntry {
                fingerprint: e.fingerprint,
                at: e.at,
                seq: 0,
                response,
            },
        ));
    }
    m.front.restore_idempotency(idempotency);
    let tenants = m.front.tenants.len() as u32;
    for s in &image.skus {
        let level_terms = s.levels.iter().flat_map(|l| {
            [
                l.on_hand,
                l.reserved,
                l.committed,
                l.damaged,
                l.quality_control,
                l.safety_stock,
                l.incoming,
            ]
        });
        if let Some(q) = level_terms
            .chain(s.held.iter().copied())
            .find(|q| !(0..=STOCK_MAX).contains(q))
        {
            return Err(ImageError::Inconsistent(format!(
                "SKU {}: quantity {q} is outside 0..={STOCK_MAX}",
                s.sku
            )));
        }
        if s.tenant >= tenants {
            return Err(ImageError::Inconsistent(format!(
                "SKU {} names tenant {} of {tenants}",
                s.sku, s.tenant
            )));
        }
        let sku = Sku::new(&s.sku).map_err(|e| ImageError::Inconsistent(format!("SKU id: {e}")))?;
        let shard = &mut m.shards[shard_of(s.tenant, &s.sku, shards)];
        let cfg = shard.tenants[s.tenant as usize].clone();
        let mut st = SkuState {
            levels: s.levels.iter().map(level_of).collect(),
            ..SkuState::default()
        };
        st.resize(cfg.channels.len());
        for (c, h) in s.held.iter().enumerate().take(cfg.channels.len()) {
            *st.held_mut(c as u16) = *h;
        }
        st.cost = s
            .cost
            .as_deref()
            .map(|c| {
                c.parse()
                    .map(Box::new)
                    .map_err(|e| ImageError::Inconsistent(format!("cost of {}: {e}", s.sku)))
            })
            .transpose()?;
        st.refresh(&cfg, &sku);
        shard.skus.insert(
            SkuKey {
                tenant: s.tenant,
                sku: Box::from(s.sku.as_str()),
            },
            st,
        );
    }
    for r in &image.reservations {
        load_reservation(&mut m, r, shards)?;
    }
    Ok(m)
}

fn level_of(l: &LevelImage) -> crate::ats::Level {
    crate::ats::Level {
        loc: l.loc,
        on_hand: l.on_hand,
        reserved: l.reserved,
        committed: l.committed,
        damaged: l.damaged,
        quality_control: l.quality_control,
        safety_stock: l.safety_stock,
        incoming: l.incoming,
        incoming_at: l.incoming_at,
    }
}

fn load_reservation(
    m: &mut Machine,
    r: &ReservationImage,
    shards: usize,
) -> Result<(), ImageError> {
    let bad = |what: String| ImageError::Inconsistent(format!("reservation {}: {what}", r.id));
    let cfg = m
        .front
        .config(r.tenant)
        .ok_or_else(|| bad(format!("names tenant {}", r.tenant)))?;
    if r.channel as usize >= cfg.channels.len() {
        return Err(bad(format!("names channel {}", r.channel)));
    }
    let sku = |s: &str| Sku::new(s).map_err(|e| bad(format!("SKU id: {e}")));
    let lines: LineHeaders = r
        .lines
        .iter()
        .map(|l| {
            Ok(LineHeader {
                sku: sku(&l.sku)?,
                requested: l.requested,
                is_bundle: l.is_bundle,
            })
        })
        .collect::<Result<Vec<_>, ImageError>>()?
        .into();
    if r.granted.len() != lines.len() {
        return Err(bad("granted does not match the lines".into()));
    }
    let per_line = r
        .lines
        .iter()
        .map(|l| l.requested)
        .chain(r.granted.iter().copied());
    let mut per_line = per_line.chain(r.items.iter().map(|i| i.per_unit));
    if let Some(q) = per_line.find(|q| !(0..=QUANTITY_MAX).contains(q)) {
        return Err(bad(format!("quantity {q} is outside 0..={QUANTITY_MAX}")));
    }
    let mut item_terms = r.items.iter().flat_map(|i| {
        [i.quantity, i.backordered].into_iter().chain(
            i.allocs
                .iter()
                .flat_map(|a| [a.open, a.shipped, a.returned]),
        )
    });
    if let Some(q) = item_terms.find(|q| !(0..=STOCK_MAX).contains(q)) {
        return Err(bad(format!("quantity {q} is outside 0..={STOCK_MAX}")));
    }
    let granted = Granted::new(&lines, &r.granted);
    let lifecycle = lifecycle_of(r.lifecycle)?;
    let mut by_shard: std::collections::BTreeMap<usize, Vec<PartItem>> =
        std::collections::BTreeMap::new();
    for i in &r.items {
        let item = PartItem {
            item: i.item,
            line: i.line,
            slot: i.slot,
            sku: sku(&i.sku)?,
            per_unit: i.per_unit,
            quantity: i.quantity,
            allocs: i
                .allocs
                .iter()
                .map(|a| Alloc {
                    loc: a.loc,
                    open: a.open,
                    shipped: a.shipped,
                    returned: a.returned,
                })
                .collect(),
            backordered: i.backordered,
        };
        by_shard
            .entry(shard_of(r.tenant, &i.sku, shards))
            .or_default()
            .push(item);
    }
    if by_shard.is_empty() {
        return Err(bad("no items".into()));
    }
    let id = ReservationId(r.id);
    let mut mask = 0u64;
    for (s, items) in by_shard {
        mask |= 1 << s;
        let part = Part {
            tenant: r.tenant,
            channel: r.channel,
            lifecycle,
            created_at: r.created_at,
            expires_at: r.expires_at,
            ended_at: r.ended_at,
            order_ref: r.order_ref.as_deref().map(Box::from),
            lines: lines.clone(),
            granted: granted.clone(),
            items: items.into_iter().collect(),
        };
        let shard = &mut m.shards[s];
        match lifecycle {
            Lifecycle::Held => shard.expiry.insert(r.expires_at, id),
            l if l.ended() => shard
                .purge
                .insert(r.ended_at.saturating_add(shard.ended_retention_ms), id),
            _ => {}
        }
        shard.parts.insert(id, part);
    }
    m.front.routes.insert(id, mask);
    Ok(())
}

impl Machine {
    /// The image of this machine's state.
    pub fn image(&self) -> Image {
        take(&self.front, self.shards.iter())
    }
}
