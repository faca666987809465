//! depot's HTTP API. Not built yet: the server, keys and endpoints of `API.md` arrive with the
//! API work. Until then this crate only re-exports the engine so the workspace layout is whole.

pub use depot_engine as engine;
