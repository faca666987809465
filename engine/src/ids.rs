//! Validated identifiers: tenants, SKUs, locations, channels, reservations, and time.
//!
//! String ids are stored inline up to 24 bytes (`CompactString`): cloning one copies bytes
//! instead of touching a reference count that every shard thread would share.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest id of any kind, in bytes (PRODUCT.md: SKUs are 1–128 printable bytes).
pub const ID_LEN_MAX: usize = 128;

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("is {0} bytes long, the limit is {ID_LEN_MAX}")]
    TooLong(usize),
    #[error("contains a byte that is not printable ASCII at offset {0}")]
    NotPrintable(usize),
}

/// Checks the shared id rule: 1..=128 bytes, each printable ASCII (0x21..=0x7e, no spaces).
pub fn check_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > ID_LEN_MAX {
        return Err(IdError::TooLong(s.len()));
    }
    if let Some(i) = s.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(IdError::NotPrintable(i));
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(CompactString);

        impl $name {
            /// Validates and wraps `s`.
            pub fn new(s: &str) -> Result<Self, IdError> {
                check_id(s)?;
                Ok(Self(CompactString::new(s)))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(&s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0.into_string()
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0.as_str())
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// A merchant.
    TenantId
);
string_id!(
    /// A stock-keeping unit, unique within a tenant.
    Sku
);
string_id!(
    /// A place where units physically are.
    LocationId
);
string_id!(
    /// A place where units are sold, e.g. `shopify:acme` or `b2b`.
    ChannelId
);

/// A reservation's id: the sequence number of the command that created it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReservationId(pub u64);

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "res_{}", self.0)
    }
}

impl std::str::FromStr for ReservationId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let digits = s.strip_prefix("res_").ok_or(())?;
        if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(());
        }
        digits.parse().map(ReservationId).map_err(|_| ())
    }
}

/// Milliseconds since the Unix epoch. The engine never reads a clock: every command carries one.
pub type TimeMs = u64;

/// The global sequence number of a logged command.
pub type Seq = u64;
