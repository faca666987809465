//! `depot serve --pretouch-memory-mib N`: write N MiB once at start, for the state to grow
//! into without page faults.
//!
//! Memory a process writes for the first time costs a page fault and the kernel's clearing of
//! the page, on the thread that writes it. In depot that is the engine's writing thread, as the
//! state grows by every reservation and idempotency key: under keyed `/v1/batch` load on the
//! 2 vCPU benchmark machine, about 0.19 faults and 780 bytes per cart, and from a quarter to a
//! third of the writing thread's time in them (a virtual machine whose host takes back the
//! memory its guests free pays twice: the host faults too). Writing the memory at start and
//! keeping it moves that cost to before the first request, as a JVM's `AlwaysPreTouch` does.
//!
//! "Keeping it" is the allocator's part: mimalloc gives memory freed in bulk back to the system
//! after `MIMALLOC_PURGE_DELAY` milliseconds (1,000 by default), so the pretouched memory would
//! be gone again when the state grows into it. mimalloc reads its options once, when the process
//! starts; [`prepare`] therefore restarts the process (`exec`, same arguments) with
//! `MIMALLOC_PURGE_DELAY=-1` (never give memory back) when that variable is not set, and only
//! then writes the memory. An operator who sets the variable keeps the choice (and is warned
//! if it gives the memory back). The price is a resident size that starts at N MiB and does
//! not shrink when the state does.

use std::os::unix::process::CommandExt;
use std::time::Instant;

/// The allocator option [`prepare`] sets before writing memory.
pub const PURGE_VAR: &str = "MIMALLOC_PURGE_DELAY";

/// Bytes written per allocation: small enough to come from the allocator's own segments
/// (which it reuses for small objects), large enough to be quick.
const CHUNK: usize = 1 << 20;

/// Makes `mib` MiB resident for the state to grow into (nothing for 0). When the allocator
/// would give the memory back, restarts the process with [`PURGE_VAR`] set first; returns only
/// when the memory is written (or the restart failed: then it goes on without, with a
/// warning).
pub fn prepare(mib: u64) {
    if mib == 0 {
        return;
    }
    match std::env::var(PURGE_VAR) {
        Err(_) => {
            let err = restart_with_purge_off();
            tracing::warn!(error = %err, "--pretouch-memory-mib: cannot restart with {PURGE_VAR}=-1; memory is not pretouched");
            return;
        }
        Ok(v) if v.trim() != "-1" => tracing::warn!(
            value = %v,
            "--pretouch-memory-mib: {PURGE_VAR} is set and not -1: the allocator may give the pretouched memory back"
        ),
        Ok(_) => {}
    }
    touch(mib);
}

/// Replaces the process with itself, same arguments, [`PURGE_VAR`] set to -1. Returns only on
/// failure.
fn restart_with_purge_off() -> std::io::Error {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return e,
    };
    tracing::info!("restarting with {PURGE_VAR}=-1 to keep the pretouched memory");
    std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(PURGE_VAR, "-1")
        .exec()
}

/// Allocates and writes `mib` MiB, then frees it to the allocator, which keeps it.
fn touch(mib: u64) {
    let started = Instant::now();
    let chunks = usize::try_from(mib).unwrap_or(usize::MAX);
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for _ in 0..chunks {
        // A non-zero fill: the allocator may hand out zeroed memory for zero fills without
        // writing it.
        kept.push(std::hint::black_box(vec![0x5a; CHUNK]));
    }
    drop(kept);
    let ms = started.elapsed().as_millis() as u64;
    tracing::info!(mib, ms, "pretouched memory");
}
