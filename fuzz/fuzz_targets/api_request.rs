//! One request line on the control socket.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &str| {
    let _ = vigil_host::api::parse_request(line);
});
