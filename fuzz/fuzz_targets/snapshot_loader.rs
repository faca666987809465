//! Fuzzes the snapshot loader: the file envelope, rkyv's validation of the image, and loading
//! the image into a machine, with arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| depot_wal::fuzzing::snapshot_loader(data));
