//! A `monitors.d/*.toml` registration.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use vigil_host::config::{SourceFile, load_monitor_text};

fuzz_target!(|text: &str| {
    let file = SourceFile::from_text(Path::new("/etc/vigil/monitors.d/fuzz.toml"), text);
    let _ = load_monitor_text(&file);
});
