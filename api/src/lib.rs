//! depot's HTTP API and the `depot` binary: the server ([`server`]: router, handlers, auth,
//! limits), its parts ([`keys`], [`events`], [`metrics`], [`ratelimit`], [`demo`]) and the
//! binary's offline log tools ([`cli`]).

pub mod cli;
pub mod demo;
pub mod events;
pub mod keys;
pub mod metrics;
pub mod pretouch;
pub mod ratelimit;
pub mod server;

pub use depot_engine as engine;
