//! The SDK conformance harness, run directly and through the C ABI, with
//! loopback targets only.

mod common;

use std::net::TcpListener;

use serde_json::json;
use vigil_lan::LanMonitor;
use vigil_sdk::testing::{Conformance, Report};

use common::{find, is};

fn conformance(params: serde_json::Value) -> Conformance {
    Conformance::new(params)
        .bad_params(json!({"interfaces": 3}))
        .bad_params(json!({"interfaces": ["bad/name"]}))
        .bad_params(json!({"interfaces": [format!("nosuch{}", std::process::id())]}))
        .bad_params(json!({"targets": ["not-an-address"]}))
        .bad_params(json!({"targets": ["127.0.0.1"], "method": "tcp"}))
        .bad_params(json!({"method": "udp"}))
        .bad_params(json!({"attempts": 0}))
        .bad_params(json!({"timeout_ms": 100000}))
        .bad_params(json!({"misses_before_down": 0}))
}

fn check_named(report: &Report, tcp_target: &str) {
    assert!(is(
        find(&report.polled, "/net/interfaces/lo/status"),
        "/net/interfaces/lo/status",
        "up"
    ));
    // The event thread pushes the current state as soon as it starts.
    assert!(
        report
            .pushed
            .iter()
            .any(|s| is(s, "/net/interfaces/lo/status", "up")),
        "start pushed no state for lo: {:?}",
        report.pushed
    );
    let status = format!("/net/reach/{tcp_target}/status");
    assert!(is(find(&report.polled, &status), &status, "up"));
    let rtt = find(&report.polled, &format!("/net/reach/{tcp_target}/rtt_ms"));
    assert_eq!(rtt.value.as_ref().and_then(|v| v.unit()), Some("ms"));
    assert!(
        rtt.value
            .as_ref()
            .and_then(|v| v.as_number())
            .is_some_and(|ms| ms >= 0.0)
    );
    // ICMP to loopback needs a ping socket or CAP_NET_RAW (root has it);
    // without either the status must still be a known up/down.
    let icmp = find(&report.polled, "/net/reach/127.0.0.1/status");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(
            is(icmp, icmp.name.as_str(), "up"),
            "icmp to loopback as root: {icmp:?}"
        );
    } else {
        assert!(icmp.value.is_some(), "icmp status unknown: {icmp:?}");
    }
}

#[test]
fn lan_conformance_with_named_interface_and_loopback_targets() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let tcp_target = listener.local_addr().expect("bound address").to_string();
    let params = json!({"interfaces": ["lo"], "targets": ["127.0.0.1", tcp_target]});
    let run = conformance(params);
    let report = run.check::<LanMonitor>();
    check_named(&report, &tcp_target);
    let report = run.check_abi(vigil_lan::vigil_vtable());
    check_named(&report, &tcp_target);
}

#[test]
fn lan_conformance_watching_every_link() {
    for report in [
        conformance(json!({})).check::<LanMonitor>(),
        conformance(json!({})).check_abi(vigil_lan::vigil_vtable()),
    ] {
        let declared: Vec<&str> = report.declared.iter().map(|p| p.as_str()).collect();
        assert_eq!(declared, ["/net/interfaces/*/status"]);
        assert!(
            report
                .polled
                .iter()
                .all(|s| s.name.as_str() != "/net/interfaces/lo/status"),
            "loopback is only published when named"
        );
    }
}
