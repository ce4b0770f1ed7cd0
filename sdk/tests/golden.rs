//! Golden files pin the wire format: what the SDK writes must equal them
//! byte for byte, and what they say must parse to the expected values. A
//! change here is a protocol change: bump `PROTOCOL_VERSION` or `ABI_VERSION`
//! if it is not backwards compatible.

use std::path::Path;

use vigil_sdk::proto::{self, HelloTag, HostHello, Mode, MonitorMessage};
use vigil_sdk::wire::{self, WireSample};
use vigil_sdk::{ResourceName, ResourcePattern, Sample, Value};

const T: u64 = 1_700_000_000_000;

fn golden(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn name(s: &str) -> ResourceName {
    ResourceName::new(s).unwrap()
}

fn at(mut s: Sample) -> Sample {
    s.timestamp_ms = T;
    s
}

/// `message` encodes to the golden file and the golden file parses back to it.
fn check_monitor_line(file: &str, message: MonitorMessage) {
    let text = golden(file);
    assert_eq!(
        proto::encode_line(&message),
        text,
        "{file}: encoding changed"
    );
    assert_eq!(
        proto::parse_monitor_line(text.trim_end()).unwrap(),
        message,
        "{file}: parsing changed"
    );
}

#[test]
fn host_hello() {
    let hello = HostHello {
        kind: HelloTag::Hello,
        protocol: 1,
        monitor: "app".into(),
        mode: Mode::Stream,
        interval_ms: 5000,
        params: serde_json::json!({"targets": ["10.0.0.1"]}),
    };
    let text = golden("host_hello.json");
    assert_eq!(proto::encode_line(&hello), text);
    assert_eq!(serde_json::from_str::<HostHello>(&text).unwrap(), hello);
}

#[test]
fn monitor_messages() {
    let publishes = [
        ResourcePattern::new("/app/*/status").unwrap(),
        ResourcePattern::new("/app/queue/depth").unwrap(),
    ];
    check_monitor_line("monitor_hello.json", proto::monitor_hello(&publishes));
    let one = |s: Sample| MonitorMessage::Sample(WireSample::from(&at(s)));
    check_monitor_line(
        "sample_text.json",
        one(Sample::down(name("/app/web/status"), "connection refused")),
    );
    check_monitor_line(
        "sample_number.json",
        one(Sample::number(name("/app/queue/depth"), 42.5, Some("msgs"))),
    );
    check_monitor_line(
        "sample_unknown.json",
        one(Sample::unknown(name("/app/db/status"), "probe timed out")),
    );
    check_monitor_line(
        "samples.json",
        MonitorMessage::Samples {
            samples: vec![
                WireSample::from(&at(Sample::up(name("/app/web/status")))),
                WireSample::from(&at(Sample::number(name("/app/queue/depth"), 3.0, None))),
            ],
        },
    );
    check_monitor_line(
        "error.json",
        MonitorMessage::Error {
            message: "params: targets must be a list".into(),
        },
    );
    check_monitor_line(
        "log.json",
        MonitorMessage::Log {
            level: Some("warn".into()),
            message: "slow probe".into(),
        },
    );
}

#[test]
fn abi_buffers() {
    let samples = vec![
        at(Sample::up(name("/app/web/status"))),
        at(Sample::number(name("/app/queue/depth"), 42.5, Some("msgs"))),
        at(Sample::unknown(name("/app/db/status"), "probe timed out")),
    ];
    let text = golden("abi_poll_samples.json");
    assert_eq!(
        String::from_utf8(wire::encode_samples(&samples)).unwrap(),
        text.trim_end()
    );
    assert_eq!(wire::decode_samples(text.as_bytes()).unwrap(), samples);
    assert_eq!(samples[1].value, Some(Value::number(42.5, Some("msgs"))));
    let patterns = vec![
        ResourcePattern::new("/net/interfaces/*/status").unwrap(),
        ResourcePattern::new("/system/load/1min").unwrap(),
    ];
    let text = golden("abi_declare.json");
    assert_eq!(
        String::from_utf8(wire::encode_patterns(&patterns)).unwrap(),
        text.trim_end()
    );
    assert_eq!(wire::decode_patterns(text.as_bytes()).unwrap(), patterns);
}
