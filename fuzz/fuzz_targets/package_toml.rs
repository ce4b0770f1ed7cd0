//! A `packages.d/*.toml` package, on its own and cross-checked.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use vigil_host::config::package::{check_packages, load_package_text};
use vigil_host::config::{SourceFile, load_cluster_text};

fuzz_target!(|text: &str| {
    let dir = Path::new("/etc/vigil");
    let cluster = SourceFile::from_text(
        &dir.join("cluster.toml"),
        "[cluster]\nname = \"fuzz\"\nnodes = [\"node1\", \"node2\"]\n",
    );
    let Ok(cluster) = load_cluster_text(dir, &cluster) else {
        panic!("the fixed cluster.toml is valid");
    };
    let file = SourceFile::from_text(&dir.join("packages.d/fuzz.toml"), text);
    if let Ok(package) = load_package_text(&file, &cluster) {
        let _ = check_packages(&[package], &cluster.nodes, |_| true);
    }
});
