//! An rtnetlink datagram, as the lan plugin reads it from the kernel.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|buf: &[u8]| {
    let _ = vigil_lan::netlink::parse(buf);
});
