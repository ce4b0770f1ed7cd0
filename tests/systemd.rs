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

/// `systemctl restart vigil` with the shipped unit's `KillMode=process`:
/// SIGTERM to the main pid only, wait for it to exit, start it again. The
/// package's service must keep running with the same pid and be re-adopted,
/// not restarted.
#[test]
fn systemd_style_restart_sigterm_to_main_pid_keeps_the_package_running_with_the_same_pid() {
    let cfg = ConfigDir::new();
    let marker = format!("{}", 700_000 + std::process::id());
    let runs = cfg.path().join("runs.log");
    cfg.script(
        "pkg/run.sh",
        &format!("#!/bin/sh\necho run >> {}\n", runs.display()),
    );
    cfg.write(
        "packages.d/app.toml",
        &format!(
            "name = \"app\"\ntype = \"failover\"\nnodes = [\"node1\"]\nrun = [\"pkg/run.sh\"]\nhalt = [\"/bin/true\"]\n\n[[service]]\nname = \"server\"\ncommand = [\"/bin/sleep\", \"{marker}\"]\n"
        ),
    );
    let socket_path = cfg.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let notify = socket_path.display().to_string();
    let env = [("NOTIFY_SOCKET", notify.as_str())];
    let service = || -> Vec<i32> {
        processes_matching(&format!("sleep {marker}"))
            .into_iter()
            .map(|(pid, _)| pid)
            .collect()
    };
    // The service dies when the test ends, passed or not.
    let _reap = KillMatching(format!("sleep {marker}"));
    let app = |want: &str| {
        wait_for(Duration::from_secs(20), &format!("app {want}"), || {
            let out = cfg.vigil(&["status", "--json"]);
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {out:?}"))?;
            let p = v["packages"][0].clone();
            if p["state"] == "up" && p["reason"].as_str().is_some_and(|r| r.contains(want)) {
                Ok(p)
            } else {
                Err(p.to_string())
            }
        })
    };

    let mut host = cfg.start_host_as_with_env("node1", &env);
    wait_message(&socket, "READY=1", Duration::from_secs(10));
    app("");
    let pid = wait_for(Duration::from_secs(20), "the service", || {
        match service().as_slice() {
            [pid] => Ok(*pid),
            other => Err(format!("{other:?}")),
        }
    });
    // The service is not in the host's process group: a signal to the
    // group (KillMode=mixed's SIGTERM, a shell's Ctrl-C) does not reach it.
    let host_pgid =
        nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(host.pid() as i32))).unwrap();
    let service_pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).unwrap();
    assert_ne!(host_pgid, service_pgid);

    // What systemd does for KillMode=process: SIGTERM to MainPID only.
    assert!(host.stop().unwrap().success(), "{}", host.log_text());
    wait_message(&socket, "STOPPING=1", Duration::from_secs(5));
    assert_eq!(service(), [pid], "the service outlives the host");

    let _host = cfg.start_host_as_with_env("node1", &env);
    wait_message(&socket, "READY=1", Duration::from_secs(10));
    let again = app("re-adopted");
    assert_eq!(service(), [pid], "same process, not restarted: {again}");
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap().lines().count(),
        1,
        "run ran once"
    );
}

/// `[logging] format = "json"`: every line the host (and its guard) writes
/// to stderr is one JSON object with timestamp, level, target, message and
/// fields; with stderr being the journal (`$JOURNAL_STREAM` names it), each
/// line starts with its syslog priority, which journald strips.
#[test]
fn json_log_lines_and_journal_priorities() {
    use std::os::unix::fs::MetadataExt;
    let cfg = ConfigDir::new();
    cfg.write(
        "cluster.toml",
        "[cluster]\nname = \"test\"\nnodes = [\"node1\"]\n[logging]\nformat = \"json\"\n",
    );
    let lines = |journal: bool| -> Vec<(Option<u8>, serde_json::Value)> {
        // The harness sends the host's stderr to host.log (same inode
        // every time): name it as the journal stream, or not.
        let log = cfg.path().join("host.log");
        std::fs::write(&log, "").unwrap();
        let meta = std::fs::metadata(&log).unwrap();
        let stream = format!("{}:{}", meta.dev(), meta.ino());
        let env: Vec<(&str, &str)> = if journal {
            vec![("JOURNAL_STREAM", &stream)]
        } else {
            vec![]
        };
        let mut host = cfg.start_host_as_with_env("node1", &env);
        assert!(host.stop().unwrap().success());
        let text = host.log_text();
        assert!(text.lines().count() > 3, "{text}");
        text.lines()
            .map(|line| {
                let (priority, json) = match line.strip_prefix('<') {
                    Some(rest) => {
                        let (n, json) = rest.split_once('>').expect("<N>");
                        (Some(n.parse::<u8>().expect("a priority")), json)
                    }
                    None => (None, line),
                };
                let v: serde_json::Value = serde_json::from_str(json)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                for key in ["timestamp", "level", "target", "message"] {
                    assert!(v[key].is_string(), "{key} missing: {line}");
                }
                assert!(v["fields"].is_object(), "fields missing: {line}");
                (priority, v)
            })
            .collect()
    };

    let plain = lines(false);
    assert!(plain.iter().all(|(p, _)| p.is_none()));
    let running = plain
        .iter()
        .find(|(_, v)| v["message"] == "vigil host running")
        .expect("the startup line");
    assert_eq!(running.1["fields"]["node"], "node1");
    assert_eq!(running.1["level"], "INFO");
    assert!(
        plain
            .iter()
            .any(|(_, v)| v["target"] == "vigil_host::guard"),
        "the guard's lines are JSON too"
    );

    for (priority, v) in lines(true) {
        let want = match v["level"].as_str().unwrap() {
            "ERROR" => 3,
            "WARN" => 4,
            "INFO" => 6,
            _ => 7,
        };
        assert_eq!(priority, Some(want), "{v}");
    }
}
