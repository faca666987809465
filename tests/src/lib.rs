//! Shared helpers for depot's cross-crate tests.
