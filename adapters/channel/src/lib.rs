//! The shared sync mechanism of depot's channel adapters. Not built yet: outbox, coalescing,
//! rate limits, retries, dead letters and reconciliation arrive with the adapter work.

pub use depot_engine as engine;
