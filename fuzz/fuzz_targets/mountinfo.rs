//! `/proc/self/mountinfo`, and lookups in the parsed table.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use vigil_sdk::mountinfo::{find, parse, state};

fuzz_target!(|text: &str| {
    let table = parse(text);
    let _ = find(&table, Path::new("/data/x"));
    let _ = state(&table, Path::new("/"));
});
