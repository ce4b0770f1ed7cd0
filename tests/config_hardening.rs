//! Bad configuration files and misbehaving control-socket clients, end to
//! end with the real `vigil` binary: none of them may hang `vigil check`,
//! stop the host's main loop, drop a working monitor, or be accepted by one
//! of `check` and the host and refused by the other (issue #10).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vigil_tests::*;

const WAIT: Duration = Duration::from_secs(20);

/// Runs `vigil -c DIR args` and kills it if it has not finished within a
/// minute (a hang is the defect some of these tests look for).
fn vigil_or_hang(cfg: &ConfigDir, args: &[&str]) -> std::process::Output {
    let mut child = Command::new(vigil_bin())
        .arg("-c")
        .arg(cfg.path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vigil");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vigil {args:?} hung for a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("collect output")
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo");
}

fn testkit_monitor(cfg: &ConfigDir, name: &str) {
    cfg.monitor(
        name,
        &format!(
            "name = \"{name}\"\ntype = \"dylib\"\nplugin = \"vigil_testkit\"\ninterval_seconds = 0.2\n[params]\ninstance = \"{name}\"\n"
        ),
    );
}

/// Sends SIGHUP and waits until the host logged the outcome of that reload
/// (one more line about a reload than before).
fn reload(host: &Host) -> String {
    let count = |log: &str| {
        log.lines()
            .filter(|l| l.contains("configuration reloaded") || l.contains("reload refused"))
            .count()
    };
    let before = count(&host.log_text());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    wait_for(WAIT, "the host to log the reload", || {
        let log = host.log_text();
        if count(&log) > before {
            Ok(log)
        } else {
            Err(log.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
        }
    })
}

fn monitor_list(cfg: &ConfigDir) -> serde_json::Value {
    let out = cfg.vigil(&["monitor", "list", "--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("monitor list JSON")
}

#[test]
fn check_refuses_a_fifo_or_oversized_monitor_file_without_hanging() {
    let cfg = ConfigDir::new();
    testkit_monitor(&cfg, "good");
    mkfifo(&cfg.path().join("monitors.d/pipe.toml"));
    let big = cfg.path().join("monitors.d/big.toml");
    std::fs::write(&big, "# padding\n".repeat(200_000)).unwrap();
    let out = vigil_or_hang(&cfg, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let dir = cfg.path().display().to_string();
    assert!(
        stderr.contains(&format!("{dir}/monitors.d/pipe.toml: not a regular file")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{dir}/monitors.d/big.toml: too large (2000000 bytes, limit 1048576)"
        )),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
}

#[test]
fn sighup_with_a_fifo_in_monitors_d_keeps_the_host_answering() {
    let cfg = ConfigDir::new();
    testkit_monitor(&cfg, "good");
    let host = cfg.start_host();
    wait_for(WAIT, "the good monitor", || {
        cfg.resource("/testkit/good/r0")
    });
    mkfifo(&cfg.path().join("monitors.d/pipe.toml"));
    let log = reload(&host);
    assert!(log.contains("pipe.toml: not a regular file"), "{log}");
    // The loop goes on: the socket answers and the good monitor still runs.
    cfg.resource("/testkit/good/r0").expect("good monitor kept");
    let list = monitor_list(&cfg);
    assert!(
        list["config_errors"]
            .to_string()
            .contains("not a regular file"),
        "{list}"
    );
    // `vigil check` does not hang on it either.
    let out = vigil_or_hang(&cfg, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

#[test]
fn reload_with_a_broken_monitor_file_keeps_the_last_good_version() {
    let cfg = ConfigDir::new();
    testkit_monitor(&cfg, "good");
    let host = cfg.start_host();
    wait_for(WAIT, "the good monitor", || {
        cfg.resource("/testkit/good/r0")
    });
    cfg.monitor(
        "good",
        "name = \"good\"\ntype = \"dylib\"\nplugin = \"vigil_testkit\"\nintervall_seconds = 3\n",
    );
    let log = reload(&host);
    let dir = cfg.path().display().to_string();
    let error = format!("{dir}/monitors.d/good.toml:4: unknown field `intervall_seconds`");
    assert!(log.contains(&error), "{log}");
    // Still running the last good version.
    let r = cfg.resource("/testkit/good/r0").expect("resource kept");
    assert_eq!(r["monitor"], "good", "{r}");
    let list = monitor_list(&cfg);
    let errors = list["config_errors"].as_array().expect("config_errors");
    assert_eq!(errors.len(), 1, "{list}");
    assert_eq!(errors[0]["line"], 4, "{list}");
    assert_eq!(errors[0]["kept_running"], "good", "{list}");
    let text = cfg.vigil(&["monitor", "list"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains(&error),
        "{text:?}"
    );
    let out = cfg.vigil(&["check"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&error),
        "{out:?}"
    );
    let status = cfg.vigil(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["config_errors"][0]["kept_running"], "good",
        "{status}"
    );

    // Fixed: the new version replaces it and the error is gone.
    cfg.monitor(
        "good",
        "name = \"good\"\ntype = \"dylib\"\nplugin = \"vigil_testkit\"\ninterval_seconds = 0.3\n[params]\ninstance = \"good\"\n",
    );
    reload(&host);
    let list = monitor_list(&cfg);
    assert_eq!(list["config_errors"], serde_json::json!([]), "{list}");
}

#[test]
fn reload_refuses_cluster_changes_it_cannot_apply_and_applies_packages() {
    let cfg = ConfigDir::new();
    testkit_monitor(&cfg, "good");
    cfg.write(
        "packages.d/app.toml",
        "name = \"app\"\ntype = \"failover\"\nnodes = [\"node1\"]\nauto_run = false\nrun = [\"/bin/true\"]\nhalt = [\"/bin/true\"]\n",
    );
    let host = cfg.start_host();
    wait_for(WAIT, "the good monitor", || {
        cfg.resource("/testkit/good/r0")
    });

    // A cluster.toml that no longer lists this node: nothing applied.
    cfg.write(
        "cluster.toml",
        "[cluster]\nname = \"test\"\nnodes = [\"node9\"]\n",
    );
    testkit_monitor(&cfg, "newer");
    let log = reload(&host);
    assert!(
        log.contains("reload refused")
            && log.contains("node1")
            && log.contains("not in cluster.nodes"),
        "{log}"
    );
    assert!(
        cfg.monitor_state("newer").is_err(),
        "a refused reload started a monitor"
    );

    // Keys that need a restart keep their old values; the rest applies.
    cfg.write(
        "cluster.toml",
        "[cluster]\nname = \"test\"\nnodes = [\"node1\", \"node2\"]\n[store]\ntype = \"embedded\"\npath = \"elsewhere\"\n",
    );
    cfg.write(
        "packages.d/app.toml",
        "name = \"app\"\ntype = \"failover\"\nnodes = [\"node1\"]\nauto_run = false\nrun = [\"/bin/true\"]\nhalt = [\"/bin/false\"]\n",
    );
    let log = reload(&host);
    assert!(log.contains("cluster.nodes changed"), "{log}");
    assert!(log.contains("[store] changed"), "{log}");
    assert!(log.contains("needs a restart"), "{log}");
    assert!(
        log.contains("packages.d changed") && log.contains("running the applied package set"),
        "{log}"
    );
    wait_for(WAIT, "the new monitor", || cfg.monitor_state("newer"));
    assert!(!cfg.path().join("elsewhere").exists());
}

#[test]
fn the_host_leaves_out_what_check_refuses_and_names_package_files_as_packages() {
    let cfg = ConfigDir::new();
    testkit_monitor(&cfg, "good");
    cfg.write(
        "packages.d/needs.toml",
        "name = \"needs\"\ntype = \"failover\"\nnodes = [\"node1\"]\nrun = [\"/bin/true\"]\nhalt = [\"/bin/true\"]\n\n[[resource]]\nname = \"/nobody/publishes/this\"\n",
    );
    cfg.write(
        "packages.d/ok.toml",
        "name = \"ok\"\ntype = \"failover\"\nnodes = [\"node1\"]\nauto_run = false\nrun = [\"/bin/true\"]\nhalt = [\"/bin/true\"]\n",
    );
    cfg.write("packages.d/broken.toml", "name = [\n");
    let out = cfg.vigil(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let check_errors: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(check_errors.len(), 2, "{check_errors:?}");

    let host = cfg.start_host();
    let status = cfg.vigil(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let names: Vec<&str> = status["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["ok"], "{status}");
    let log = host.log_text();
    for e in &check_errors {
        let escaped = e.replace('"', "\\\"");
        assert!(
            log.contains(e) || log.contains(&escaped),
            "{e} not in the log:\n{log}"
        );
    }
    assert!(!log.contains("monitor left out"), "{log}");
}

#[test]
fn check_refuses_addresses_paths_and_numbers_the_host_cannot_use() {
    let long = format!("/tmp/{}", "s".repeat(200));
    let cases: &[(&str, &str, &str)] = &[
        (
            "[api]\nhttp_listen = \"not an address\"\n",
            "cluster.toml:6: api.http_listen",
            "",
        ),
        (
            "[api]\nhttp_listen = \"127.0.0.1:99999\"\n",
            "cluster.toml:6: api.http_listen",
            "",
        ),
        ("[api]\nsocket = \"\"\n", "cluster.toml:6: api.socket", ""),
        (
            &format!("[api]\nsocket = \"{long}\"\n"),
            "cluster.toml:6: api.socket",
            "",
        ),
        (
            "[store]\ntype = \"etcd\"\nendpoints = [\"http://not a host:2379\"]\n",
            "cluster.toml:7: store.endpoints",
            "",
        ),
        (
            "[store]\ntype = \"etcd\"\nendpoints = [\"http://127.0.0.1:port\"]\n",
            "cluster.toml:7: store.endpoints",
            "",
        ),
        (
            "[store]\ntype = \"embedded\"\nlease_ttl_seconds = 0.001\n",
            "cluster.toml:7: store.lease_ttl_seconds",
            "",
        ),
        (
            "",
            "monitors.d/tiny.toml:3: interval_seconds",
            "name = \"tiny\"\ntype = \"exec\"\ninterval_seconds = 1e-300\ncommand = [\"/bin/true\"]\n",
        ),
        (
            "",
            "monitors.d/tiny.toml:3: timeout_seconds",
            "name = \"tiny\"\ntype = \"exec\"\ntimeout_seconds = nan\ncommand = [\"/bin/true\"]\n",
        ),
    ];
    for (cluster_tail, expect, monitor) in cases {
        let cfg = ConfigDir::new();
        cfg.write(
            "cluster.toml",
            &format!("[cluster]\nname = \"test\"\nnodes = [\"node1\"]\n\n{cluster_tail}"),
        );
        if !monitor.is_empty() {
            cfg.monitor("tiny", monitor);
        }
        let out = cfg.vigil(&["check"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{cluster_tail}{monitor} was accepted: {stderr}"
        );
        assert!(
            stderr.contains(&format!("{}/{expect}", cfg.path().display())),
            "want {expect:?} for {cluster_tail}{monitor}, got {stderr}"
        );
    }
}

/// A host started from the config dir's parent with `-c <relative dir>`.
struct RelativeHost(Child);

impl Drop for RelativeHost {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn relative_config_dir_runs_package_scripts() {
    let cfg = ConfigDir::new();
    cfg.script("pkg/run.sh", "#!/bin/sh\necho ran > ran.txt\n");
    cfg.script("pkg/halt.sh", "#!/bin/sh\nexit 0\n");
    cfg.write(
        "packages.d/app.toml",
        "name = \"app\"\ntype = \"failover\"\nnodes = [\"node1\"]\nrun = [\"pkg/run.sh\"]\nhalt = [\"pkg/halt.sh\"]\n",
    );
    let parent = cfg.path().parent().expect("tempdir has a parent");
    let relative = cfg.path().file_name().expect("tempdir has a name");
    let log = std::fs::File::create(cfg.path().join("host.log")).unwrap();
    let _host = RelativeHost(
        Command::new(vigil_bin())
            .current_dir(parent)
            .arg("-c")
            .arg(relative)
            .arg("host")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn vigil host"),
    );
    let state = wait_for(WAIT, "app to be up", || {
        let out = cfg.vigil(&["status", "--json"]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {out:?}"))?;
        let app = v["packages"][0].clone();
        match app["state"].as_str() {
            Some("up") => Ok(app),
            Some("failed") => Ok(app),
            _ => Err(v.to_string()),
        }
    });
    assert_eq!(
        state["state"],
        "up",
        "{state}\n{}",
        std::fs::read_to_string(cfg.path().join("host.log")).unwrap_or_default()
    );
    assert!(cfg.path().join("ran.txt").is_file());
}

/// Sends one raw line to the host's control socket and returns its answer.
fn raw_request(cfg: &ConfigDir, line: &str) -> serde_json::Value {
    let mut stream = UnixStream::connect(cfg.path().join("run/vigil.sock")).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(line.as_bytes()).unwrap();
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

#[test]
fn control_socket_refuses_unknown_fields_and_resls_paths_without_a_slash() {
    let cfg = ConfigDir::new();
    testkit_monitor(&cfg, "good");
    let _host = cfg.start_host();
    for line in [
        "{\"op\":\"ping\",\"bogus\":1}\n",
        "{\"op\":\"monitors\",\"verbose\":true}\n",
        "{\"op\":\"resls\",\"path\":\"/\",\"recursive\":true}\n",
    ] {
        let answer = raw_request(&cfg, line);
        assert_eq!(answer["ok"], false, "{line} -> {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap_or_default()
                .contains("unknown field"),
            "{line} -> {answer}"
        );
    }
    let answer = raw_request(&cfg, "{\"op\":\"resls\",\"path\":\"system\"}\n");
    assert_eq!(answer["ok"], false, "{answer}");

    for path in ["system", ""] {
        let out = cfg.vigil(&["resls", path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "resls {path:?}: {out:?}");
        assert!(
            stderr.contains("PATH") && stderr.contains(&format!("{path:?}")),
            "resls {path:?}: {stderr}"
        );
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn control_socket_closes_idle_clients_and_caps_connections() {
    let cfg = ConfigDir::new();
    let host = cfg.start_host();
    let before = open_fds(host.pid());
    // 3,000 clients that connect and say nothing.
    let idle: Vec<UnixStream> = (0..3000)
        .map(|_| UnixStream::connect(cfg.path().join("run/vigil.sock")).expect("connect"))
        .collect();
    // Once this one is answered (served or refused), the host has accepted
    // every connection before it.
    let answer = raw_request(&cfg, "{\"op\":\"ping\"}\n");
    let during = open_fds(host.pid());
    assert!(
        during < before + 200,
        "{} idle clients cost the host {} fds (answer to the last: {answer})",
        idle.len(),
        during - before
    );
    // An idle client is eventually closed by the host, and the socket
    // serves again.
    let mut first = &idle[0];
    first
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut rest = Vec::new();
    first
        .read_to_end(&mut rest)
        .expect("the host closes an idle client");
    drop(idle);
    wait_for(WAIT, "the socket to serve again", || {
        let answer = raw_request(&cfg, "{\"op\":\"ping\"}\n");
        if answer["ok"] == true {
            Ok(())
        } else {
            Err(answer.to_string())
        }
    });
}
