//! depot's HTTP API and the `depot` binary. The server, keys and endpoints of `API.md` arrive
//! with the API work; for now the crate holds the binary's log tools ([`cli`]) and re-exports
//! the engine.

pub mod cli;

pub use depot_engine as engine;
