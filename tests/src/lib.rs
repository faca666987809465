//! Shared helpers for depot's cross-crate tests.

pub mod model;
