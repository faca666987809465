//! A tenant's configuration: locations, channels, bundles and the compiled rule document.
//!
//! Configuration is small and changes rarely. The front validates every change; each shard
//! holds an `Arc` of the same `TenantConfig` and swaps it at the change's sequence number.

use crate::ids::{ChannelId, LocationId, Sku, TenantId};
use crate::rules::{CompiledRules, RuleDocument};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Index of a location inside its tenant, in order of creation.
pub type LocIdx = u16;
/// Index of a channel inside its tenant, in order of creation.
pub type ChanIdx = u16;

/// What kind of place a location is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocationKind {
    Warehouse,
    #[serde(rename = "3pl")]
    ThirdParty,
    Store,
    /// Stock held and shipped by a channel, such as Amazon FBA.
    ChannelFulfilled,
}

/// A location as configured with `PUT /v1/locations/{location}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub id: LocationId,
    pub kind: LocationKind,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The WMS that runs this location, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wms: Option<String>,
}

/// What kind of sales channel a channel is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Shopify,
    Amazon,
    Ebay,
    Temu,
    B2b,
    Pos,
    Agent,
    Other,
}

/// A channel as configured with `PUT /v1/channels/{channel}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    pub id: ChannelId,
    pub kind: ChannelKind,
    /// Higher is more important; used by scarcity rules and the oversell policy.
    #[serde(default)]
    pub priority: i32,
}

/// One component of a bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    pub sku: Sku,
    pub quantity: i64,
}

/// Everything a tenant has configured. Cloned on change (copy-on-write), never mutated in place
/// once shared with shards.
#[derive(Clone, Debug, Default)]
pub struct TenantConfig {
    pub tenant_idx: u32,
    pub locations: Vec<Location>,
    pub channels: Vec<Channel>,
    pub bundles: BTreeMap<Sku, Vec<Component>>,
    /// The document as the merchant wrote it, with its version (0 = never set).
    pub rule_document: RuleDocument,
    pub rules: CompiledRules,
}

impl TenantConfig {
    pub fn location_idx(&self, id: &LocationId) -> Option<LocIdx> {
        self.locations
            .iter()
            .position(|l| &l.id == id)
            .map(|i| i as LocIdx)
    }
    pub fn channel_idx(&self, id: &ChannelId) -> Option<ChanIdx> {
        self.channels
            .iter()
            .position(|c| &c.id == id)
            .map(|i| i as ChanIdx)
    }
    pub fn is_bundle(&self, sku: &Sku) -> bool {
        self.bundles.contains_key(sku)
    }
    /// True when any bundle of this tenant has `sku` as a component.
    pub fn is_component(&self, sku: &Sku) -> bool {
        self.bundles
            .values()
            .any(|cs| cs.iter().any(|c| &c.sku == sku))
    }
}

/// A tenant as the front knows it.
#[derive(Clone, Debug)]
pub struct TenantEntry {
    pub id: TenantId,
    pub config: std::sync::Arc<TenantConfig>,
}
