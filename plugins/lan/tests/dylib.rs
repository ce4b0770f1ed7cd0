//! The built `libvigil_lan.so`, loaded with `dlopen` the way the host loads
//! it: the ABI version symbol first, then the vtable, then the conformance
//! harness through that table (which starts and stops the link event thread
//! inside the loaded library).

use std::path::PathBuf;

use serde_json::json;
use vigil_sdk::abi::{ABI_VERSION, VigilMonitorVtable};
use vigil_sdk::testing::Conformance;

/// `target/<profile>/libvigil_lan.so`, beside the `deps/` directory that
/// holds this test executable.
fn library_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    profile_dir.join("libvigil_lan.so")
}

#[test]
fn built_library_loads_and_passes_conformance() {
    let path = library_path();
    assert!(
        path.exists(),
        "{} not built (crate-type must include cdylib)",
        path.display()
    );
    // SAFETY: our own library; its initialisers are Rust statics only.
    let library = unsafe { libloading::Library::new(&path) }.expect("dlopen libvigil_lan.so");
    // SAFETY: the symbol has this signature in every vigil plugin (export_monitor!).
    let version: libloading::Symbol<'_, extern "C" fn() -> u32> =
        unsafe { library.get(b"vigil_monitor_abi_version") }.expect("abi version symbol");
    assert_eq!(version(), ABI_VERSION);
    // SAFETY: as above.
    let vtable: libloading::Symbol<'_, extern "C" fn() -> *const VigilMonitorVtable> =
        unsafe { library.get(b"vigil_monitor_vtable") }.expect("vtable symbol");
    let table = vtable();
    // The harness needs a 'static table, so the library stays loaded for the
    // rest of the process.
    std::mem::forget(library);
    // SAFETY: the table is a static inside a library that is never unloaded.
    let table: &'static VigilMonitorVtable = unsafe { &*table };
    let report = Conformance::new(json!({"interfaces": ["lo"]}))
        .bad_params(json!({"interfaces": ["no/slash"]}))
        .check_abi(table);
    assert!(
        report
            .pushed
            .iter()
            .any(|s| s.name.as_str() == "/net/interfaces/lo/status"),
        "the loaded library's event thread pushed lo's state: {:?}",
        report.pushed
    );
}
