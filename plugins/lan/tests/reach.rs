//! Reachability against real endpoints: a TCP listener on loopback, and
//! ICMP (v4 and v6) and TCP between two network namespaces the test creates,
//! so no probe ever leaves the machine or touches links the test does not own.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::json;
use vigil_lan::LanMonitor;
use vigil_sdk::{Monitor, Sample};

use common::{Netns, describe, find, ip, is};

fn poll(monitor: &mut LanMonitor) -> Vec<Sample> {
    let timeout = Duration::from_secs(2);
    let started = Instant::now();
    let samples = monitor.poll(started + timeout).expect("poll");
    assert!(
        started.elapsed() < timeout + Duration::from_millis(100),
        "poll kept its deadline"
    );
    samples
}

fn status<'a>(samples: &'a [Sample], target: &str) -> &'a Sample {
    find(
        samples,
        &format!("/net/reach/{}/status", vigil_sdk::encode_segment(target)),
    )
}

fn rtt_ms(samples: &[Sample], target: &str) -> Option<f64> {
    let s = find(
        samples,
        &format!("/net/reach/{}/rtt_ms", vigil_sdk::encode_segment(target)),
    );
    s.value.as_ref().and_then(|v| v.as_number())
}

fn check_status(samples: &[Sample], target: &str, want: &str, reason_contains: Option<&str>) {
    let s = status(samples, target);
    assert!(
        is(s, s.name.as_str(), want),
        "{target}: want {want}, got {}",
        describe(s)
    );
    if let Some(part) = reason_contains {
        let reason = s.reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains(part),
            "{target}: reason {reason:?} lacks {part:?}"
        );
    }
}

/// Polls until `target` reports `want`, for links that take a moment to
/// settle (carrier, neighbour discovery).
fn poll_until(monitor: &mut LanMonitor, target: &str, want: &str) -> Vec<Sample> {
    let give_up = Instant::now() + Duration::from_secs(15);
    loop {
        let samples = poll(monitor);
        let s = status(&samples, target);
        if is(s, s.name.as_str(), want) {
            return samples;
        }
        assert!(
            Instant::now() < give_up,
            "{target} never became {want}: {}",
            describe(s)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn tcp_target_goes_down_after_misses_when_the_listener_closes() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let target = listener.local_addr().expect("bound address").to_string();
    let mut monitor = LanMonitor::configure(json!({
        "targets": [target], "attempts": 1, "timeout_ms": 300, "misses_before_down": 2
    }))
    .expect("configure");

    let samples = poll(&mut monitor);
    check_status(&samples, &target, "up", None);
    assert!(rtt_ms(&samples, &target).is_some_and(|ms| ms >= 0.0));

    // Stop listening but keep the port bound: on Linux, shutting a listening
    // socket down closes it for connections (they are refused) while it still
    // holds the port, so no other test process can take the port and answer
    // in its place (a plain drop let that happen once).
    {
        use std::os::fd::AsRawFd;
        // SAFETY: shutdown(2) on a socket this test owns and keeps open.
        let rc = unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
        assert_eq!(rc, 0, "shutdown: {}", std::io::Error::last_os_error());
    }
    let samples = poll(&mut monitor);
    check_status(&samples, &target, "up", Some("1 of 2 misses"));
    assert_eq!(rtt_ms(&samples, &target), None, "no reply, no rtt");
    let samples = poll(&mut monitor);
    check_status(&samples, &target, "down", Some("refused"));
    drop(listener);
}

#[test]
fn unanswered_tcp_target_is_down_from_the_first_poll() {
    // Bound but never listening: connects are refused at once.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
    let target = format!("127.0.0.1:{}", socket.local_addr().expect("address").port());
    let mut monitor =
        LanMonitor::configure(json!({"targets": [target], "attempts": 3, "timeout_ms": 100}))
            .expect("configure");
    check_status(&poll(&mut monitor), &target, "down", Some("refused"));
}

/// True when this thread's namespace allows unprivileged ICMP ping sockets.
fn ping_socket_allowed() -> bool {
    // SAFETY: plain socket(2) call; a valid fd is closed right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP) };
    if fd >= 0 {
        // SAFETY: `fd` was just opened and is not used again.
        unsafe { libc::close(fd) };
    }
    fd >= 0
}

#[test]
fn icmp_and_tcp_between_namespaces() {
    if !common::privileged("icmp_and_tcp_between_namespaces") {
        return;
    }
    let (ns_a, ns_b) = (Netns::new("ra"), Netns::new("rb"));
    let pid = std::process::id();
    let (a, b) = (format!("vt{pid}ra"), format!("vt{pid}rb"));
    // The addresses live only in the two private namespaces.
    let net = format!("10.{}.{}", (pid >> 8) & 0xff, pid & 0xff);
    let net6 = format!("fd00:7669:{:x}", pid & 0xffff);
    let (v4, v6, tcp) = (
        format!("{net}.2"),
        format!("{net6}::2"),
        format!("{net}.2:7"),
    );
    ip(&[
        "-n", &ns_a.name, "link", "add", &a, "type", "veth", "peer", "name", &b, "netns",
        &ns_b.name,
    ]);
    ip(&[
        "-n",
        &ns_a.name,
        "addr",
        "add",
        &format!("{net}.1/30"),
        "dev",
        &a,
    ]);
    ip(&[
        "-n",
        &ns_b.name,
        "addr",
        "add",
        &format!("{net}.2/30"),
        "dev",
        &b,
    ]);
    ip(&[
        "-n",
        &ns_a.name,
        "addr",
        "add",
        &format!("{net6}::1/64"),
        "dev",
        &a,
        "nodad",
    ]);
    ip(&[
        "-n",
        &ns_b.name,
        "addr",
        "add",
        &format!("{net6}::2/64"),
        "dev",
        &b,
        "nodad",
    ]);
    ip(&["-n", &ns_a.name, "link", "set", &a, "up"]);
    ip(&["-n", &ns_b.name, "link", "set", &b, "up"]);

    // A socket keeps the namespace it was created in: this listener lives in B.
    let listener6 = ns_b.run(|| TcpListener::bind(format!("[{v6}]:0")).expect("bind in B"));
    let tcp6 = listener6.local_addr().expect("bound address").to_string();
    assert!(tcp6.starts_with('['), "{tcp6}");

    ns_a.run(|| {
        let mut monitor = LanMonitor::configure(json!({
            "interfaces": [a], "targets": [v4, v6, tcp, tcp6], "misses_before_down": 2,
        }))
        .expect("configure");
        // A new namespace forbids ping sockets: this exercises the raw socket.
        assert!(
            !ping_socket_allowed(),
            "fresh namespace allows ping sockets"
        );
        poll_until(&mut monitor, &v4, "up");
        let samples = poll_until(&mut monitor, &v6, "up");
        assert!(rtt_ms(&samples, &v4).is_some_and(|ms| ms >= 0.0));
        assert!(rtt_ms(&samples, &v6).is_some_and(|ms| ms >= 0.0));
        // Nothing listens on port 7 in B: reachable host, refused service.
        check_status(&samples, &tcp, "down", Some("refused"));
        // `[` and `]` are escaped in the resource name.
        check_status(&samples, &tcp6, "up", None);
        let encoded = status(&samples, &tcp6).name.as_str();
        assert!(encoded.starts_with("/net/reach/_5bfd00:7669:"), "{encoded}");
        assert!(rtt_ms(&samples, &tcp6).is_some());

        // The peer stops answering: up while misses < 2, then down.
        ip(&[
            "-n",
            &ns_b.name,
            "addr",
            "del",
            &format!("{net}.2/30"),
            "dev",
            &b,
        ]);
        let samples = poll(&mut monitor);
        check_status(&samples, &v4, "up", Some("1 of 2 misses"));
        let samples = poll(&mut monitor);
        check_status(&samples, &v4, "down", Some("no icmp echo reply"));
        check_status(&samples, &v6, "up", None);

        ip(&[
            "-n",
            &ns_b.name,
            "addr",
            "add",
            &format!("{net}.2/30"),
            "dev",
            &b,
        ]);
        poll_until(&mut monitor, &v4, "up");

        // The peer's link goes down: both families go down.
        ip(&["-n", &ns_b.name, "link", "set", &b, "down"]);
        poll(&mut monitor);
        let samples = poll(&mut monitor);
        check_status(&samples, &v4, "down", None);
        check_status(&samples, &v6, "down", None);
        let link = find(&samples, &format!("/net/interfaces/{a}/status"));
        assert!(is(link, link.name.as_str(), "down"), "{}", describe(link));
        ip(&["-n", &ns_b.name, "link", "set", &b, "up"]);
        // Setting a link down flushes its global IPv6 addresses.
        ip(&[
            "-n",
            &ns_b.name,
            "addr",
            "add",
            &format!("{net6}::2/64"),
            "dev",
            &b,
            "nodad",
        ]);
        poll_until(&mut monitor, &v4, "up");

        // Allow ping sockets in A: the same probe now runs unprivileged.
        std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")
            .expect("set ping_group_range in namespace A");
        assert!(
            ping_socket_allowed(),
            "ping sockets allowed after the sysctl"
        );
        let samples = poll_until(&mut monitor, &v4, "up");
        assert!(rtt_ms(&samples, &v4).is_some());
        poll_until(&mut monitor, &v6, "up");
    });
}
