//! Fuzzes the record frame decoder and the body parser with arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| depot_wal::fuzzing::record_decoder(data));
