//! Nagios plugin output (text, long text, perfdata) and thresholds, and the
//! samples the host makes of them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vigil_sdk::nagios::{CheckOutput, Threshold, samples};

fuzz_target!(|input: (Option<i8>, &str)| {
    let (code, text) = input;
    let output = CheckOutput::parse(code.map(i32::from), text);
    let _ = output.reason();
    let _ = samples("fuzz", &output);
    if let Ok(t) = Threshold::parse(text) {
        let _ = t.alerts(0.0);
    }
});
