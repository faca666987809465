//! depot's simulator. Not built yet: scenario load, log replay and deterministic simulation
//! testing arrive with the simulation work.

pub use depot_engine as engine;
