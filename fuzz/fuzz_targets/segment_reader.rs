//! Fuzzes recovery of a one-segment log with arbitrary bytes, and checks that the writer
//! opens whatever recovers and leaves it clean.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| depot_wal::fuzzing::segment_reader(data));
