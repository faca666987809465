//! Commands: everything that can be asked of the engine, as plain data.

use crate::config::{ChannelKind, Component, LocationKind};
use crate::ids::{ChannelId, LocationId, ReservationId, Sku, TenantId, TimeMs};
use crate::rules::RuleDocument;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// One request to the engine: a command on behalf of a tenant, with who asked and an optional
/// idempotency key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub tenant: TenantId,
    /// The API key (or other actor) that asked; recorded in events.
    #[serde(default)]
    pub key_id: compact_str::CompactString,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub command: Command,
}

/// A line of a reservation request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRequest {
    pub sku: Sku,
    pub quantity: i64,
}

/// How much of a reservation may be granted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "policy")]
pub enum FillPolicy {
    /// Every line in full, or nothing.
    #[default]
    AllOrNothing,
    /// Each line gets what its ATS allows; refused only when nothing at all is available.
    Partial,
    /// Every line in full, each from at most `max_locations` locations, or nothing.
    Split { max_locations: u16 },
}

/// A line to commit: all of it, or `quantity` of it (the rest is released).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitLine {
    pub sku: Sku,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<i64>,
}

/// What a WMS reports for one allocation: units picked, and units found missing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FulfilLine {
    pub sku: Sku,
    pub location: LocationId,
    pub quantity: i64,
    #[serde(default)]
    pub missing: i64,
}

/// A named quantity stock can be moved between.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    Available,
    Damaged,
    QualityControl,
    SafetyStock,
}

/// Every command of the engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Command {
    // --- configuration (applied on every shard) ---
    CreateTenant,
    PutLocation {
        location: LocationId,
        kind: LocationKind,
        name: String,
        region: Option<String>,
        wms: Option<String>,
    },
    PutChannel {
        channel: ChannelId,
        kind: ChannelKind,
        priority: i32,
    },
    PutBundle {
        sku: Sku,
        components: Vec<Component>,
    },
    PutRules {
        document: RuleDocument,
    },

    // --- stock operations (one SKU, one shard) ---
    /// Inbound units: on_hand += quantity, incoming -= min(quantity, incoming).
    Receive {
        sku: Sku,
        location: LocationId,
        quantity: i64,
        unit_cost: Option<Decimal>,
        reason: String,
    },
    /// Expected units: incoming += quantity, with the date they are expected.
    Expect {
        sku: Sku,
        location: LocationId,
        quantity: i64,
        expected_at: Option<TimeMs>,
        reason: String,
    },
    /// on_hand += delta; may not make available negative.
    Adjust {
        sku: Sku,
        location: LocationId,
        delta: i64,
        reason: String,
    },
    /// A physical count: on_hand = quantity. May make available negative (an oversell incident).
    Set {
        sku: Sku,
        location: LocationId,
        quantity: i64,
        compare_quantity: Option<i64>,
        reason: String,
    },
    /// Between named quantities (available <-> damaged, quality_control, safety_stock).
    Move {
        sku: Sku,
        location: LocationId,
        from: Bucket,
        to: Bucket,
        quantity: i64,
        reason: String,
    },
    /// Out of `location` now, incoming at `to_location` (received there later).
    Transfer {
        sku: Sku,
        location: LocationId,
        to_location: LocationId,
        quantity: i64,
        expected_at: Option<TimeMs>,
        reason: String,
    },

    // --- reservations ---
    Reserve {
        channel: ChannelId,
        lines: Vec<LineRequest>,
        ttl_ms: Option<u64>,
        order_ref: Option<String>,
        ship_to_region: Option<String>,
        #[serde(default)]
        fill: FillPolicy,
    },
    Extend {
        id: ReservationId,
        ttl_ms: u64,
    },
    Commit {
        id: ReservationId,
        lines: Option<Vec<CommitLine>>,
    },
    Release {
        id: ReservationId,
    },
    Cancel {
        id: ReservationId,
    },
    Fulfil {
        id: ReservationId,
        lines: Vec<FulfilLine>,
    },
    /// Units of a fulfilled line come back, sellable or damaged.
    Return {
        id: ReservationId,
        sku: Sku,
        location: LocationId,
        quantity: i64,
        damaged: bool,
        reason: String,
    },

    /// Advances time on every shard: expires holds, drops ended reservations past retention.
    Tick,

    // --- reads (not logged, consume no sequence number) ---
    GetStock {
        sku: Sku,
    },
    GetReservation {
        id: ReservationId,
    },
    Explain {
        sku: Sku,
        channel: ChannelId,
    },
}

impl Command {
    /// Reads change nothing and are never logged.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Command::GetStock { .. } | Command::GetReservation { .. } | Command::Explain { .. }
        )
    }
    /// Configuration commands are applied on every shard.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Command::CreateTenant
                | Command::PutLocation { .. }
                | Command::PutChannel { .. }
                | Command::PutBundle { .. }
                | Command::PutRules { .. }
        )
    }
    /// A short name for logs, metrics and events.
    pub fn name(&self) -> &'static str {
        match self {
            Command::CreateTenant => "create_tenant",
            Command::PutLocation { .. } => "put_location",
            Command::PutChannel { .. } => "put_channel",
            Command::PutBundle { .. } => "put_bundle",
            Command::PutRules { .. } => "put_rules",
            Command::Receive { .. } => "receive",
            Command::Expect { .. } => "expect",
            Command::Adjust { .. } => "adjust",
            Command::Set { .. } => "set",
            Command::Move { .. } => "move",
            Command::Transfer { .. } => "transfer",
            Command::Reserve { .. } => "reserve",
            Command::Extend { .. } => "extend",
            Command::Commit { .. } => "commit",
            Command::Release { .. } => "release",
            Command::Cancel { .. } => "cancel",
            Command::Fulfil { .. } => "fulfil",
            Command::Return { .. } => "return",
            Command::Tick => "tick",
            Command::GetStock { .. } => "get_stock",
            Command::GetReservation { .. } => "get_reservation",
            Command::Explain { .. } => "explain",
        }
    }
}
