//! The exec line protocol: one line a monitor program writes on stdout.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &str| {
    let _ = vigil_sdk::proto::parse_monitor_line(line);
});
