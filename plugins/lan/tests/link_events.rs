//! Real link faults on veth pairs: the monitor must push `down` when the
//! peer (in another namespace) loses its link or ours is set down, and `up`
//! when it comes back, without waiting for a poll.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;
use vigil_lan::LanMonitor;
use vigil_sdk::{Monitor, encode_segment};

use common::{Collector, Netns, Veth, describe, find, ip, is};

/// Generous: the machine is shared and noisy. No test asserts on latency.
const WAIT: Duration = Duration::from_secs(10);

fn status_of(interface: &str) -> String {
    format!("/net/interfaces/{}/status", encode_segment(interface))
}

fn down_because(s: &vigil_sdk::Sample, name: &str, reason: &str) -> bool {
    is(s, name, "down") && s.reason.as_deref() == Some(reason)
}

#[test]
fn peer_down_in_another_namespace_pushes_down_then_up() {
    if !common::privileged("peer_down_in_another_namespace_pushes_down_then_up") {
        return;
    }
    let netns = Netns::new("peer");
    let veth = Veth::new("p");
    ip(&["link", "set", &veth.peer, "netns", &netns.name]);
    ip(&["-n", &netns.name, "link", "set", &veth.peer, "up"]);
    ip(&["link", "set", &veth.ours, "up"]);
    let name = status_of(&veth.ours);

    let mut monitor =
        LanMonitor::configure(json!({"interfaces": [veth.ours]})).expect("our veth exists");
    let collector = Collector::default();
    let started = Instant::now();
    monitor.start(collector.sink()).expect("start");
    collector.wait_for(started, WAIT, "up at start", |s| is(s, &name, "up"));

    let before = Instant::now();
    ip(&["-n", &netns.name, "link", "set", &veth.peer, "down"]);
    let command = before.elapsed();
    let (at, _) = collector.wait_for(before, WAIT, "down after peer down", |s| {
        down_because(s, &name, "no carrier")
    });
    eprintln!(
        "link down (peer set down) pushed {:?} after `ip link set down` started (the command itself took {command:?})",
        at - before
    );
    let polled = monitor
        .poll(Instant::now() + Duration::from_secs(2))
        .expect("poll");
    assert!(
        is(find(&polled, &name), &name, "down"),
        "poll agrees: {}",
        describe(find(&polled, &name))
    );

    let before = Instant::now();
    ip(&["-n", &netns.name, "link", "set", &veth.peer, "up"]);
    let (at, _) = collector.wait_for(before, WAIT, "up after peer up", |s| is(s, &name, "up"));
    eprintln!(
        "link up pushed {:?} after `ip link set up` started",
        at - before
    );

    let before = Instant::now();
    ip(&["link", "set", &veth.ours, "down"]);
    let (at, _) = collector.wait_for(before, WAIT, "down after our end down", |s| {
        down_because(s, &name, "administratively down")
    });
    eprintln!(
        "link down (our end set down) pushed {:?} after `ip link set down` started",
        at - before
    );

    // Deleting the namespace destroys the pair: our end disappears.
    let before = Instant::now();
    drop(netns);
    collector.wait_for(before, WAIT, "missing after the pair is gone", |s| {
        down_because(s, &name, "interface missing")
    });
    let polled = monitor
        .poll(Instant::now() + Duration::from_secs(2))
        .expect("poll");
    assert!(down_because(
        find(&polled, &name),
        &name,
        "interface missing"
    ));

    let stopping = Instant::now();
    monitor.stop();
    let count = collector.all().len();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        collector.all().len(),
        count,
        "nothing pushed after stop ({:?})",
        stopping.elapsed()
    );
    drop(veth);
}

#[test]
fn every_link_mode_publishes_links_that_appear_later() {
    if !common::privileged("every_link_mode_publishes_links_that_appear_later") {
        return;
    }
    let netns = Netns::new("all");
    let pid = std::process::id();
    // '#' is outside the resource name alphabet, so the segment is encoded.
    let (a, b) = (format!("v#{pid}a"), format!("v#{pid}b"));
    let collector = Collector::default();
    netns.run(|| {
        let mut monitor = LanMonitor::configure(json!({})).expect("configure");
        let polled = monitor
            .poll(Instant::now() + Duration::from_secs(2))
            .expect("poll");
        assert!(
            polled.is_empty(),
            "a fresh namespace has only lo: {polled:?}"
        );
        monitor.start(collector.sink()).expect("start");

        let before = Instant::now();
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        let name_a = status_of(&a);
        assert!(name_a.contains("v_23"), "{name_a} is encoded");
        collector.wait_for(before, WAIT, "new link published", |s| {
            down_because(s, &name_a, "administratively down")
        });
        ip(&["link", "set", &a, "up"]);
        ip(&["link", "set", &b, "up"]);
        collector.wait_for(before, WAIT, "new link up", |s| is(s, &name_a, "up"));
        collector.wait_for(before, WAIT, "peer up", |s| is(s, &status_of(&b), "up"));
        let polled = monitor
            .poll(Instant::now() + Duration::from_secs(2))
            .expect("poll");
        assert!(is(find(&polled, &name_a), &name_a, "up"));

        let before = Instant::now();
        ip(&["link", "del", &a]);
        collector.wait_for(before, WAIT, "deleted link missing", |s| {
            down_because(s, &name_a, "interface missing")
        });
        collector.wait_for(before, WAIT, "deleted peer missing", |s| {
            down_because(s, &status_of(&b), "interface missing")
        });
        monitor.stop();
        assert!(
            !collector
                .all()
                .iter()
                .any(|s| s.name.as_str() == "/net/interfaces/lo/status"),
            "loopback is not published in every-link mode"
        );
    });
}

#[test]
fn named_interface_must_exist_at_configure() {
    if !common::privileged("named_interface_must_exist_at_configure") {
        return;
    }
    let netns = Netns::new("cfg");
    netns.run(|| {
        let err = LanMonitor::configure(json!({"interfaces": ["eth0"]})).expect_err("no eth0 here");
        assert!(
            err.to_string()
                .contains("\"eth0\" does not exist on this node (links: lo)"),
            "{err}"
        );
        LanMonitor::configure(json!({"interfaces": ["lo"]})).expect("lo exists");
    });
}
