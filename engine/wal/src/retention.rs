//! Log retention: once a snapshot covers a segment (every record in it is at or before the
//! snapshot's seq), the segment is no longer needed for recovery, but it stays the audit trail
//! and the simulator's replay input. A [`RetentionPolicy`] keeps such segments for a while
//! (`keep_for`), then deletes them or moves them to an archive directory, and prunes old
//! snapshots. [`apply_retention`] never touches:
//!
//! - a segment holding any record after the newest valid snapshot that the log reaches (the
//!   *floor*: recovery starts there and needs every record after it);
//! - the last segment (the one the writer appends to);
//! - anything when no valid snapshot exists;
//! - the floor snapshot itself, or any snapshot newer than it.
//!
//! Segments go oldest first, so the log always stays one contiguous run of segments; a crash
//! part way leaves a shorter log that still starts at or before the floor.
//!
//! A segment's age is measured from the time of the first entry of the segment after it (the
//! moment it was closed), in the engine's milliseconds, so retention depends only on the log and
//! the `now` passed in.

use crate::error::WalError;
use crate::format::{
    decode_entry, decode_record, parse_segment_name, FrameError, RECORD_BODY_MAX,
    RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::reader::{list_segments, SEGMENT_FILE_MAX};
use crate::snapshot_file::{list_snapshots, read_snapshot};
use crate::storage::{is_disk_full, read_all, Directory};
use depot_engine::{Seq, TimeMs};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What happens to a segment once it is covered by a snapshot and older than `keep_for`.
#[derive(Clone)]
pub enum RetentionAction {
    /// Remove it.
    Delete,
    /// Copy it (under the same name, crash-safely) into this directory, then remove it from the
    /// log. The archive holds the oldest part of the log as ordinary segments, so the log tools
    /// read it (`depot log verify <archive>`), and copying its files back restores the log.
    Archive(Arc<dyn Directory>),
}

impl fmt::Debug for RetentionAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetentionAction::Delete => f.write_str("Delete"),
            RetentionAction::Archive(dir) => f.debug_tuple("Archive").field(dir).finish(),
        }
    }
}

/// How long covered segments and old snapshots are kept. See the module docs.
#[derive(Clone, Debug)]
pub struct RetentionPolicy {
    /// A segment covered by the floor snapshot is kept this long after it was closed.
    pub keep_for: Duration,
    pub action: RetentionAction,
    /// Snapshot files kept, newest first (at least the floor snapshot is always kept). Older
    /// ones are deleted: they only shorten a recovery the floor snapshot already shortens.
    pub keep_snapshots: usize,
}

impl Default for RetentionPolicy {
    /// Covered segments deleted after 7 days; the two newest snapshots kept.
    fn default() -> Self {
        RetentionPolicy {
            keep_for: Duration::from_secs(7 * 24 * 3600),
            action: RetentionAction::Delete,
            keep_snapshots: 2,
        }
    }
}

/// What one [`apply_retention`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// The seq of the floor snapshot; `None` when there is no valid snapshot the log reaches
    /// (then nothing is touched).
    pub floor: Option<Seq>,
    /// Segments deleted from the log.
    pub deleted: Vec<String>,
    /// Segments moved to the archive.
    pub archived: Vec<String>,
    /// Covered segments kept because they are younger than `keep_for`.
    pub kept_young: usize,
    /// Snapshot files deleted.
    pub snapshots_deleted: Vec<String>,
}

/// Applies `policy` to the log and snapshots in `dir` at time `now` (milliseconds, the clock
/// of the log's entries). Safe to run while a writer appends to the log and while snapshots
/// are written (it only acts on segments before the last and snapshots older than the floor).
/// On an error, what was done before it stays done and is consistent; nothing after it is.
pub fn apply_retention(
    dir: &dyn Directory,
    policy: &RetentionPolicy,
    now: TimeMs,
) -> Result<RetentionReport, WalError> {
    let mut report = RetentionReport::default();
    let segments = list_segments(dir)?;
    let Some(log_end) = log_end(dir, &segments)? else {
        return Ok(report); // no log: nothing to keep it for
    };
    let snapshots = list_snapshots(dir)?;
    // The newest valid snapshot the log reaches: what recovery would start from.
    let floor = snapshots.iter().find(|(seq, name)| {
        if *seq > log_end {
            return false; // ahead of the log: recovery skips it
        }
        match read_snapshot(dir, name) {
            Ok(_) => true,
            Err(reason) => {
                tracing::warn!(file = %name, %reason, "retention: skipping an invalid snapshot");
                false
            }
        }
    });
    let Some((floor_seq, floor_name)) = floor.cloned() else {
        return Ok(report);
    };
    report.floor = Some(floor_seq);

    let keep_for_ms = u64::try_from(policy.keep_for.as_millis()).unwrap_or(u64::MAX);
    let mut changed = false;
    // Segment i is covered when the next one starts at or before floor + 1; never the last.
    for pair in segments.windows(2) {
        let ((_, name), (next_first, next_name)) = (&pair[0], &pair[1]);
        if *next_first > floor_seq.saturating_add(1) {
            break;
        }
        let Some(closed_at) = first_entry_time(dir, next_name) else {
            break; // the next segment has no readable first entry yet: keep
        };
        if now.saturating_sub(closed_at) < keep_for_ms {
            report.kept_young += 1;
            continue; // younger than keep_for; later ones are younger still, but count them
        }
        if report.kept_young > 0 {
            break; // only a prefix of the log ever goes
        }
        match &policy.action {
            RetentionAction::Delete => {}
            RetentionAction::Archive(archive) => archive_segment(dir, &**archive, name)?,
        }
        dir.remove(name).map_err(|e| WalError::io(name, e))?;
        changed = true;
        tracing::info!(file = %name, floor = floor_seq, "retention: segment removed from the log");
        match policy.action {
            RetentionAction::Delete => report.deleted.push(name.clone()),
            RetentionAction::Archive(_) => report.archived.push(name.clone()),
        }
    }

    // Snapshots: keep the newest `keep_snapshots` and the floor; delete older ones.
    for (i, (seq, name)) in snapshots.iter().enumerate() {
        if *seq >= floor_seq || i < policy.keep_snapshots.max(1) || *name == floor_name {
            continue;
        }
        dir.remove(name).map_err(|e| WalError::io(name, e))?;
        changed = true;
        tracing::info!(file = %name, "retention: old snapshot deleted");
        report.snapshots_deleted.push(name.clone());
    }
    if changed {
        dir.sync().map_err(|e| WalError::SyncFailed {
            file: String::new(),
            message: e.to_string(),
        })?;
    }
    Ok(report)
}

/// The last seq the log holds (a lower bound while a writer appends), `None` without segments.
fn log_end(dir: &dyn Directory, segments: &[(Seq, String)]) -> Result<Option<Seq>, WalError> {
    let Some((first, name)) = segments.last() else {
        return Ok(None);
    };
    let file = dir.open(name).map_err(|e| WalError::io(name, e))?;
    let bytes = read_all(&*file, SEGMENT_FILE_MAX).map_err(|e| WalError::io(name, e))?;
    let mut offset = SEGMENT_HEADER_LEN as usize;
    let mut next = *first;
    // Records already checked by recovery and the writer; stop at the first that does not
    // decode (a write in progress, or a torn tail).
    while let Some(Ok(record)) = bytes.get(offset..).map(decode_record) {
        if record.seq != next {
            break;
        }
        offset += record.encoded_len() as usize;
        next = next.saturating_add(1);
    }
    Ok(Some(next.saturating_sub(1)))
}

/// The time of the first entry of segment `name`, read without loading the segment; `None` when
/// it has no complete, valid first record.
fn first_entry_time(dir: &dyn Directory, name: &str) -> Option<TimeMs> {
    let first_seq = parse_segment_name(name)?;
    let file = dir.open(name).ok()?;
    let mut header = [0u8; RECORD_HEADER_LEN as usize];
    file.read_at(SEGMENT_HEADER_LEN, &mut header).ok()?;
    let len = u32::from_le_bytes(header[2..6].try_into().ok()?);
    if len > RECORD_BODY_MAX {
        return None; // checked before allocating
    }
    let mut record = vec![0u8; RECORD_HEADER_LEN as usize + len as usize];
    file.read_at(SEGMENT_HEADER_LEN, &mut record).ok()?;
    let decoded = decode_record(&record).map_err(|_: FrameError| ()).ok()?;
    if decoded.seq != first_seq {
        return None;
    }
    decode_entry(&decoded).ok().map(|e| e.now)
}

/// Copies segment `name` into `archive` crash-safely: a temporary name, `fdatasync`, rename,
/// directory `fsync`. Only then may the caller remove it from the log.
fn archive_segment(
    dir: &dyn Directory,
    archive: &dyn Directory,
    name: &str,
) -> Result<(), WalError> {
    let file = dir.open(name).map_err(|e| WalError::io(name, e))?;
    let bytes = read_all(&*file, SEGMENT_FILE_MAX).map_err(|e| WalError::io(name, e))?;
    let tmp = format!("{name}.tmp");
    match archive.remove(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(WalError::io(&tmp, e)),
    }
    let write_error = |e: std::io::Error| {
        if is_disk_full(&e) {
            WalError::DiskFull { file: tmp.clone() }
        } else {
            WalError::io(&tmp, e)
        }
    };
    let copied = (|| {
        let mut out = archive.create(&tmp).map_err(write_error)?;
        out.write_at(0, &bytes).map_err(write_error)?;
        out.sync_data().map_err(|e| WalError::SyncFailed {
            file: tmp.clone(),
            message: e.to_string(),
        })
    })();
    if let Err(e) = copied {
        let _ = archive.remove(&tmp);
        return Err(e);
    }
    archive
        .rename(&tmp, name)
        .map_err(|e| WalError::io(name, e))?;
    archive.sync().map_err(|e| WalError::SyncFailed {
        file: String::new(),
        message: format!("archive directory: {e}"),
    })
}
