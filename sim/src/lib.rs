//! depot's simulator: load generation from scenario files, replay of recorded logs (at a chosen
//! speed, in-process or against a running server, optionally under other allocation rules),
//! and deterministic simulation testing (one seed drives workload, clock, storage faults and
//! crashes through the real engine and the real log code).
//!
//! - [`scenario`]: the TOML scenario files and their validation.
//! - [`generate`]: a scenario run on simulated time through the engine, into a real log.
//! - [`replay`]: a recorded log replayed in-process (with what-if rules) or over HTTP.
//! - [`dst`]: deterministic simulation testing with faults and crash recovery.
//! - [`invariants`], [`stats`], [`report`]: the checks after every step, the figures, and the
//!   `report.md` / `report.html` every run writes.
//! - [`cli`]: `depot sim generate | replay | dst`.

pub mod cli;
pub mod dst;
pub mod generate;
pub mod http;
pub mod invariants;
pub mod progress;
pub mod replay;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod zipf;

pub use depot_engine as engine;
