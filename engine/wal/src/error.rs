//! The log's errors. Corruption names the file and byte offset; a failed fsync and a full
//! disk stop the writer for good.

use depot_engine::Seq;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An I/O operation failed. `file` is a segment name, or `""` for the directory.
    #[error("I/O error on {file:?}: {source}")]
    Io {
        file: String,
        #[source]
        source: io::Error,
    },
    /// The medium is full. The writer refuses every later append and sync; what was synced
    /// before is intact.
    #[error("disk full while writing {file:?}: the log refuses further writes")]
    DiskFull { file: String },
    /// An fsync failed. What reached the medium is unknown (the kernel may have dropped the
    /// dirty pages), so the writer refuses every later call: the process must restart and
    /// recover from what is on disk.
    #[error("fsync of {file:?} failed ({message}): the log refuses further writes")]
    SyncFailed { file: String, message: String },
    /// An earlier write failed in a way that leaves the medium unknown; the writer is stopped.
    #[error("the log stopped after a failed write to {file:?} ({message})")]
    Stopped { file: String, message: String },
    /// Bytes that cannot be a torn tail do not decode: the log must not be used until a person
    /// has looked (restore from a replica or backup). Nothing is skipped.
    #[error("corrupt log: {file:?} at byte {offset}: {reason}")]
    Corrupt {
        file: String,
        offset: u64,
        reason: String,
    },
    /// An appended entry does not carry the next sequence number.
    #[error("log entry {seq} appended out of order: the next must be {expected}")]
    OutOfOrder { expected: Seq, seq: Seq },
    /// An entry's body exceeds [`crate::RECORD_BODY_MAX`]; nothing was written.
    #[error("log entry {seq} is {len} bytes, more than the maximum {max}")]
    TooLarge { seq: Seq, len: u64, max: u64 },
    /// Reading from `from` is impossible: the log's oldest entry is `first`.
    #[error("the log starts at {first}, after the requested {from}")]
    Gap { from: Seq, first: Seq },
}

impl WalError {
    pub(crate) fn io(file: &str, source: io::Error) -> WalError {
        WalError::Io {
            file: file.to_string(),
            source,
        }
    }

    pub(crate) fn corrupt(file: &str, offset: u64, reason: impl Into<String>) -> WalError {
        WalError::Corrupt {
            file: file.to_string(),
            offset,
            reason: reason.into(),
        }
    }
}

impl WalError {
    /// An equal error (for sticky failures: `io::Error` is not `Clone`, so its kind and
    /// message are kept).
    pub(crate) fn duplicate(&self) -> WalError {
        match self {
            WalError::Io { file, source } => WalError::Io {
                file: file.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            WalError::DiskFull { file } => WalError::DiskFull { file: file.clone() },
            WalError::SyncFailed { file, message } => WalError::SyncFailed {
                file: file.clone(),
                message: message.clone(),
            },
            WalError::Stopped { file, message } => WalError::Stopped {
                file: file.clone(),
                message: message.clone(),
            },
            WalError::Corrupt {
                file,
                offset,
                reason,
            } => WalError::Corrupt {
                file: file.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            WalError::OutOfOrder { expected, seq } => WalError::OutOfOrder {
                expected: *expected,
                seq: *seq,
            },
            WalError::TooLarge { seq, len, max } => WalError::TooLarge {
                seq: *seq,
                len: *len,
                max: *max,
            },
            WalError::Gap { from, first } => WalError::Gap {
                from: *from,
                first: *first,
            },
        }
    }
}
