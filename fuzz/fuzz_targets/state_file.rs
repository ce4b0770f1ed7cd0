//! The `vigil simulate` state file, and a `--set` argument applied to it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vigil_host::placement::state_file::StateFile;

fuzz_target!(|input: (&str, &str)| {
    let (text, set) = input;
    if let Ok(mut state) = StateFile::parse(text, "fuzz.toml") {
        let _ = state.apply_set(set);
        state.set_node_down("node1");
    }
});
