//! `cluster.toml`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use vigil_host::config::{SourceFile, load_cluster_text};

fuzz_target!(|text: &str| {
    let dir = Path::new("/etc/vigil");
    let file = SourceFile::from_text(&dir.join("cluster.toml"), text);
    let _ = load_cluster_text(dir, &file);
});
