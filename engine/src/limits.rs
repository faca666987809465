//! Limits on everything. A full queue or table refuses; nothing grows without bound.

use serde::{Deserialize, Serialize};

/// Largest quantity of any one line, adjustment or rule, in units. Keeps every sum of
/// quantities far from `i64` overflow.
pub const QUANTITY_MAX: i64 = 1_000_000_000_000;

/// Largest value a stock operation may leave in any quantity of a level (receipts, expected
/// units, adjustments, moves and transfers beyond it are refused): about 1,100 times
/// `QUANTITY_MAX`, so that the ATS, summed over every location of a tenant, cannot overflow.
pub const LEVEL_MAX: i64 = 1 << 49;

/// Most shards one engine runs (a reservation's shards are kept as a 64-bit mask).
pub const SHARDS_MAX: usize = 64;
/// The default longest idempotency key, in bytes ([`Limits::idempotency_key_len_max`]).
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;

/// The engine's configurable limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most lines in one reservation request.
    pub lines_per_reservation_max: usize,
    /// Most components of one bundle.
    pub components_per_bundle_max: usize,
    /// Most locations per tenant.
    pub locations_per_tenant_max: usize,
    /// Most channels per tenant.
    pub channels_per_tenant_max: usize,
    /// Most tenants.
    pub tenants_max: usize,
    /// Most reservation parts (held, committed, or retained after their end) per shard.
    pub holds_per_shard_max: usize,
    /// Most commands waiting in one shard's queue.
    pub queue_depth_max: usize,
    /// Most commands in one batch handed to the engine.
    pub batch_len_max: usize,
    /// Shortest and longest hold TTL, in milliseconds.
    pub ttl_ms_min: u64,
    pub ttl_ms_max: u64,
    /// TTL when a reservation gives none.
    pub ttl_ms_default: u64,
    /// How long ended reservations stay readable before they are dropped.
    pub ended_retention_ms: u64,
    /// How long an idempotency key is remembered.
    pub idempotency_retention_ms: u64,
    /// Most idempotency keys remembered at once; a full table refuses new keys until the
    /// retention window frees room.
    pub idempotency_keys_max: usize,
    /// Longest idempotency key, in bytes.
    pub idempotency_key_len_max: usize,
    /// Longest free-text field (reasons, names, order references), in bytes.
    pub text_len_max: usize,
    /// Most tasks of a batch the submitting thread runs itself, under the shards' locks,
    /// when the shards it touches have nothing queued (0: always hand them to the shard
    /// threads). A small batch then costs no wake-up of a shard thread and no rendezvous.
    #[serde(default = "inline_tasks_max_default")]
    pub inline_tasks_max: usize,
    /// A batch the submitting thread does not run itself, touching several shards, of whose
    /// tasks at least this percentage belong to jobs spanning shards, runs on one shard thread
    /// under the locks of every shard it touches, with no rendezvous (0: every batch touching
    /// several shards; above 100: never).
    #[serde(default = "combine_percent_default")]
    pub combine_percent: u32,
}

fn inline_tasks_max_default() -> usize {
    Limits::default().inline_tasks_max
}

fn combine_percent_default() -> u32 {
    Limits::default().combine_percent
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            lines_per_reservation_max: 100,
            components_per_bundle_max: 32,
            locations_per_tenant_max: 1_000,
            channels_per_tenant_max: 256,
            tenants_max: 100_000,
            holds_per_shard_max: 16 * 1024 * 1024,
            queue_depth_max: 1024 * 1024,
            batch_len_max: 65_536,
            ttl_ms_min: 1_000,
            ttl_ms_max: 30 * 24 * 3_600_000,
            ttl_ms_default: 900_000,
            ended_retention_ms: 24 * 3_600_000,
            idempotency_retention_ms: 24 * 3_600_000,
            idempotency_keys_max: 16 * 1024 * 1024,
            idempotency_key_len_max: IDEMPOTENCY_KEY_LEN_MAX,
            text_len_max: 1_024,
            inline_tasks_max: 32,
            combine_percent: 50,
        }
    }
}
