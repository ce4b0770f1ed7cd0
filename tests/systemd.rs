//! vigil under systemd: the shipped unit verifies clean, and the host speaks
//! the notification protocol (READY, WATCHDOG from its main loop, STOPPING)
//! to a real datagram socket, as systemd's `Type=notify` expects.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use vigil_tests::*;

#[test]
fn shipped_unit_passes_systemd_analyze_verify() {
    require_tool("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(repo_root().join("packaging/systemd/vigil.service"))
        .expect("packaging/systemd/vigil.service");
    assert!(
        unit.contains("KillMode=process"),
        "packages must outlive a restart"
    );
    assert!(unit.contains("Type=notify"));
    // verify checks that ExecStart's program exists: point it at the build.
    let local = unit.replace("/usr/bin/vigil", &vigil_bin().display().to_string());
    let path = dir.path().join("vigil.service");
    std::fs::write(&path, local).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("vigil.service"),
        "systemd-analyze has remarks on the unit: {stderr}"
    );
}

/// Reads datagrams until one contains `want` or `within` passes.
fn wait_message(socket: &UnixDatagram, want: &str, within: Duration) -> String {
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < within {
        match socket.recv(&mut buf) {
            Ok(n) => {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                if message.lines().any(|l| l == want) {
                    return message;
                }
                seen.push(message);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
    panic!("no {want:?} within {within:?}; got {seen:?}");
}

#[test]
fn host_notifies_ready_watchdog_and_stopping() {
    let cfg = ConfigDir::new();
    let socket_path = cfg.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let path = socket_path.display().to_string();
    let mut host = cfg.start_host_as_with_env(
        "node1",
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "2000000")],
    );
    let ready = wait_message(&socket, "READY=1", Duration::from_secs(10));
    assert!(ready.contains("STATUS=node node1 running"), "{ready}");
    // Two watchdog pings: the loop keeps feeding it, not only at start.
    wait_message(&socket, "WATCHDOG=1", Duration::from_secs(5));
    wait_message(&socket, "WATCHDOG=1", Duration::from_secs(5));
    assert!(host.stop().unwrap().success());
    wait_message(&socket, "STOPPING=1", Duration::from_secs(5));
}
