//! depot's write-ahead log: every sequenced write ([`LogEntry`]) as a checksummed record in
//! numbered segment files, made durable in batches, and read back in order after a crash.
//!
//! - [`format`]: the byte layouts (segment header, record frame), pure and panic-free, and
//!   [`codec`]: the binary record body.
//! - [`WalWriter`]: buffered appends, one `fdatasync` per [`WalWriter::sync`], rotation; a
//!   failed fsync or a full disk stops it for good.
//! - [`WalReader`] / [`read_log`]: recovery; a torn last record is reported as
//!   [`Tail::Torn`] (and cut by the next [`WalWriter::open`]), any other damage is
//!   [`WalError::Corrupt`] naming the file and offset.
//! - [`WalJournal`]: group commit for the engine (many appends, one `fdatasync`), and
//!   [`open_engine`]: recover from the log, then run a threaded engine that logs to it.
//! - [`write_snapshot`] / [`load_newest_snapshot`]: state images in checksummed snapshot
//!   files; [`recover`] starts from the newest usable one and replays the log after it.
//! - [`Snapshotter`]: snapshots of a running engine in the background (the image is captured in
//!   a short pause of the writes, then serialized and written while they go on), followed by
//!   [`apply_retention`]: covered log segments kept for a while, then deleted or archived.
//! - [`Storage`] / [`Directory`]: the storage seam, with the file system ([`FsDir`]), memory
//!   ([`MemDir`], which can "crash") and a faulty medium ([`FaultDir`]).
//!
//! `docs/wal_format.md` has the byte tables, the rotation rule and the crash-safety argument.

/// The binary record body: [`depot_engine::codec`], which the idempotency fingerprint shares.
pub use depot_engine::codec;
mod error;
mod fault;
pub mod format;
pub mod fuzzing;
mod journal;
mod mem;
mod reader;
mod retention;
mod snapshot_file;
mod snapshotter;
mod storage;
mod writer;

pub use depot_engine::LogEntry;
pub use error::WalError;
pub use fault::{flip_bit, FaultDir};
pub use format::{FrameError, RECORD_BODY_MAX, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
pub use journal::{
    open_engine, recover, recover_with_events, recover_with_progress, GroupCommitStats,
    SyncObserver, WalJournal,
};
pub use mem::{MemDir, MemFile};
pub use reader::{
    log_bytes_after, read_log, valid_record_after, Tail, WalReader, SEGMENT_FILE_MAX,
};
pub use retention::{apply_retention, RetentionAction, RetentionPolicy, RetentionReport};
pub use snapshot_file::{
    decode_snapshot, encode_snapshot, load_newest_snapshot, parse_snapshot_name, snapshot_name,
    write_snapshot, write_state_snapshot, SNAPSHOT_BODY_MAX, SNAPSHOT_HEADER_LEN, SNAPSHOT_MAGIC,
    SNAPSHOT_VERSION,
};
pub use snapshotter::{
    capture_image, capture_state, wall_clock_ms, CapturedImage, CapturedState, SnapshotStats,
    Snapshotter, SnapshotterConfig, TakenSnapshot,
};
pub use storage::{is_disk_full, read_all, Directory, FsDir, FsFile, Storage};
pub use writer::{sync_log, WalOptions, WalWriter};
