//! The guard beside `vigil host`, end to end (DESIGN §8, invariant 1): the
//! real binary, a package with a real supervised service and control
//! scripts, and a host that is frozen (SIGSTOP), killed (SIGKILL) or
//! stopped cleanly (SIGTERM).
//!
//! The service appends `start|stop <ns since epoch> <fence token> <pid>`
//! lines to a log, so a test can check that no two copies of it ever ran
//! at the same time.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vigil_tests::*;

const WAIT: Duration = Duration::from_secs(30);

struct Setup {
    cfg: ConfigDir,
    /// Lines of the control scripts: `run|halt <reason> <token>`.
    script_log: PathBuf,
    /// Lines of the service: `start|stop <ns> <token> <pid>`.
    service_log: PathBuf,
    /// On the service's command line, to find (and finally kill) it.
    marker: String,
}

impl Setup {
    /// A one-node cluster with package `web` (no resources: it starts at
    /// once) and the given lease TTL, from which the guard's margin (50 %)
    /// is derived.
    fn new(lease_ttl_seconds: u32, tag: u32) -> Self {
        let cfg = ConfigDir::new();
        cfg.write(
            "cluster.toml",
            &format!(
                "[cluster]\nname = \"test\"\nnodes = [\"node1\"]\n\n[store]\ntype = \"embedded\"\nlease_ttl_seconds = {lease_ttl_seconds}\n"
            ),
        );
        let script_log = cfg.path().join("script.log");
        let service_log = cfg.path().join("service.log");
        let marker = format!("guard-test-{}-{tag}", std::process::id());
        let script = |what: &str| {
            format!(
                "#!/bin/sh\necho \"{what} $VIGIL_REASON $VIGIL_FENCE_TOKEN\" >> {}\n",
                script_log.display()
            )
        };
        cfg.script("pkg/run.sh", &script("run"));
        cfg.script("pkg/halt.sh", &script("halt"));
        cfg.script(
            "pkg/service.sh",
            &format!(
                "#!/bin/sh\n\
                 log={log}\n\
                 echo \"start $(date +%s%N) $VIGIL_FENCE_TOKEN $$\" >> $log\n\
                 trap 'echo \"stop $(date +%s%N) $VIGIL_FENCE_TOKEN $$\" >> $log; exit 0' TERM\n\
                 while :; do sleep 0.05; done\n",
                log = service_log.display()
            ),
        );
        cfg.write(
            "packages.d/web.toml",
            &format!(
                "name = \"web\"\ntype = \"failover\"\nnodes = [\"node1\"]\nrun = [\"pkg/run.sh\"]\nhalt = [\"pkg/halt.sh\"]\n\n[[service]]\nname = \"server\"\ncommand = [\"/bin/sh\", \"pkg/service.sh\", \"{marker}\"]\nrestarts = 3\n"
            ),
        );
        Self {
            cfg,
            script_log,
            service_log,
            marker,
        }
    }

    fn lines(path: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn script_log(&self) -> Vec<String> {
        Self::lines(&self.script_log)
    }

    fn guard_log(&self) -> String {
        std::fs::read_to_string(self.cfg.path().join("run/guard.log")).unwrap_or_default()
    }

    /// The package `web`, the only one here, as `status --json` shows it.
    fn package(&self) -> Result<serde_json::Value, String> {
        self.cfg.package_status("web")
    }

    /// Waits until `web` is up with a token `check` accepts.
    fn wait_up(&self, check: impl Fn(u64) -> bool) -> serde_json::Value {
        wait_for(WAIT, "web to be up", || {
            let p = self.package()?;
            match p["fence_token"].as_u64() {
                Some(t) if p["state"] == "up" && check(t) => Ok(p),
                _ => Err(p.to_string()),
            }
        })
    }

    /// Live (not zombie) service processes.
    fn service_pids(&self) -> Vec<i32> {
        live_matching(&format!("service.sh {}", self.marker))
    }

    fn one_service(&self) -> i32 {
        wait_for(WAIT, "one service process", || {
            match self.service_pids().as_slice() {
                [pid] => Ok(*pid),
                other => Err(format!("{other:?}")),
            }
        })
    }

    /// Live guard processes of this config dir.
    fn guard_pids(&self) -> Vec<i32> {
        live_matching(&format!("{} guard ", self.cfg.path().display()))
    }

    fn one_guard(&self) -> i32 {
        wait_for(WAIT, "one guard process", || {
            match self.guard_pids().as_slice() {
                [pid] => Ok(*pid),
                other => Err(format!("{other:?}")),
            }
        })
    }

    fn wait_no_guard(&self) {
        wait_for(WAIT, "the guard to exit", || {
            let pids = self.guard_pids();
            if pids.is_empty() {
                Ok(())
            } else {
                Err(format!("{pids:?}; log:\n{}", self.guard_log()))
            }
        });
    }

    /// The service's runs as (start ns, stop ns or None, token), checking
    /// that no two of them overlapped.
    fn service_intervals(&self) -> Vec<(u128, Option<u128>, u64)> {
        let mut runs: Vec<(u128, Option<u128>, u64, String)> = Vec::new();
        for line in Self::lines(&self.service_log) {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 4, "bad service log line {line:?}");
            let ns: u128 = f[1].parse().unwrap();
            let token: u64 = f[2].parse().unwrap();
            match f[0] {
                "start" => runs.push((ns, None, token, f[3].to_owned())),
                "stop" => {
                    let run = runs
                        .iter_mut()
                        .find(|r| r.3 == f[3])
                        .unwrap_or_else(|| panic!("stop without start: {line}"));
                    run.1 = Some(ns);
                }
                other => panic!("bad service log line {other:?}"),
            }
        }
        runs.sort();
        for pair in runs.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let end =
                a.1.unwrap_or_else(|| panic!("run {a:?} never stopped but {b:?} started"));
            assert!(
                end <= b.0,
                "two copies of the service overlapped: {a:?} and {b:?}"
            );
        }
        runs.into_iter().map(|(s, e, t, _)| (s, e, t)).collect()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for pid in self.service_pids().into_iter().chain(self.guard_pids()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Live processes whose command line contains `needle`, without the
/// children they fork (a shell's child has its command line until it
/// execs).
fn live_matching(needle: &str) -> Vec<i32> {
    let found: Vec<i32> = processes_matching(needle)
        .into_iter()
        .filter(|(_, state)| *state != 'Z')
        .map(|(pid, _)| pid)
        .collect();
    let parent = |pid: i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        rest.split(' ').nth(1)?.parse().ok()
    };
    found
        .iter()
        .copied()
        .filter(|pid| !parent(*pid).is_some_and(|p| found.contains(&p)))
        .collect()
}

/// Sends SIGCONT when dropped, so a test that fails while the host is
/// frozen still lets the host be stopped.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn frozen_host_has_its_package_halted_by_the_guard_and_never_resumes_the_old_copy() {
    // Margin 2 s: the service gets margin / 4 = 500 ms to handle SIGTERM.
    let s = Setup::new(4, 1);
    let host = s.cfg.start_host();
    let _resume = Resume(host.pid() as i32);
    let up = s.wait_up(|t| t >= 1);
    let token = up["fence_token"].as_u64().unwrap();
    let old_pid = s.one_service();
    let guard_pid = s.one_guard();
    assert_ne!(guard_pid, host.pid() as i32);
    assert_eq!(
        nix::unistd::getsid(Some(Pid::from_raw(guard_pid))).unwrap(),
        Pid::from_raw(guard_pid),
        "the guard leads a session of its own"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(s.cfg.path().join("run/guard.sock"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let frozen_at = now_ns();
    let t0 = Instant::now();
    kill(Pid::from_raw(host.pid() as i32), Signal::SIGSTOP).unwrap();
    wait_for(WAIT, "the guard to stop the service", || {
        match s.service_pids().as_slice() {
            [] => Ok(()),
            other => Err(format!("{other:?}; guard log:\n{}", s.guard_log())),
        }
    });
    eprintln!("service gone {} ms after SIGSTOP", t0.elapsed().as_millis());
    wait_for(WAIT, "the guard to finish the halt", || {
        let log = s.guard_log();
        if log.contains("waiting for a host to heartbeat again") {
            Ok(())
        } else {
            Err(log)
        }
    });
    let log = s.guard_log();
    assert!(log.contains("no heartbeat from vigil host"), "{log}");
    assert!(log.contains("package web: halt succeeded"), "{log}");
    assert_eq!(
        s.script_log(),
        [
            format!("run startup {token}"),
            format!("halt guard_expired {token}")
        ]
    );
    let runs = s.service_intervals();
    let stopped = runs[0].1.expect("the service logged its SIGTERM");
    eprintln!(
        "detection: service stopped {} ms after SIGSTOP",
        (stopped - frozen_at) / 1_000_000
    );
    let records = s.cfg.path().join("run/packages");
    assert!(
        !records.join("web.json").exists(),
        "the run record was claimed"
    );
    let claim: serde_json::Value =
        serde_json::from_slice(&std::fs::read(records.join("web.guard.json")).unwrap()).unwrap();
    assert_eq!(claim["phase"], "halted");
    assert_eq!(claim["record"]["fence_token"], token);

    // The host wakes up: it must not restart or re-adopt the old copy; the
    // package starts again through placement, with a new token.
    drop(_resume);
    let again = s.wait_up(|t| t > token);
    let new_token = again["fence_token"].as_u64().unwrap();
    let new_pid = s.one_service();
    assert_ne!(new_pid, old_pid);
    wait_for(WAIT, "the claim to be settled", || {
        if records.join("web.guard.json").exists() {
            Err("web.guard.json is still there".into())
        } else {
            Ok(())
        }
    });
    let runs = s.service_intervals();
    assert_eq!(
        runs.iter().map(|r| r.2).collect::<Vec<_>>(),
        [token, new_token],
        "the old copy was never restarted: {runs:?}"
    );
    let log = s.script_log();
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(log[2].starts_with("run ") && log[2].ends_with(&format!(" {new_token}")));
    // The same guard watches the woken host again.
    assert_eq!(s.one_guard(), guard_pid);
    assert!(
        s.guard_log().contains(&format!(
            "vigil host pid {} heartbeats again after the expiry; re-armed",
            host.pid()
        )),
        "{}",
        s.guard_log()
    );
    let host_log = host.log_text();
    assert!(
        host_log.contains("the guard halted this package"),
        "{host_log}"
    );
}

#[test]
fn killed_host_has_its_package_halted_after_the_margin() {
    let s = Setup::new(4, 2);
    let mut host = s.cfg.start_host();
    let up = s.wait_up(|t| t >= 1);
    let token = up["fence_token"].as_u64().unwrap();
    s.one_service();
    let guard_pid = s.one_guard();
    let host_pid = host.pid() as i32;
    kill(Pid::from_raw(host_pid), Signal::SIGKILL).unwrap();
    host.stop();
    // The guard outlives the host, halts the package, then exits.
    wait_for(WAIT, "the guard to halt the package", || {
        if s.script_log().len() == 2 && s.service_pids().is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{:?}; guard log:\n{}",
                s.script_log(),
                s.guard_log()
            ))
        }
    });
    assert_eq!(s.script_log()[1], format!("halt guard_expired {token}"));
    wait_for(WAIT, "the guard to finish the halt", || {
        let log = s.guard_log();
        if log.contains("waiting for a host to heartbeat again") {
            Ok(())
        } else {
            Err(log)
        }
    });
    // It stays, and halts what gets recorded while no host heartbeats.
    assert_eq!(s.guard_pids(), [guard_pid]);
    let log = s.guard_log();
    assert!(
        log.contains(&format!("no heartbeat from vigil host pid {host_pid}")),
        "{log}"
    );
    assert!(log.contains(&format!("pid {guard_pid}]")), "{log}");
    s.service_intervals();

    // A host started later takes the guard over, finds the claim instead
    // of the run record, and starts the package afresh.
    let later = s.cfg.start_host();
    let again = s.wait_up(|t| t > token);
    assert_eq!(s.guard_pids(), [guard_pid]);
    assert!(
        s.guard_log().contains(&format!(
            "vigil host pid {} heartbeats again after the expiry; re-armed",
            later.pid()
        )),
        "{}",
        s.guard_log()
    );
    s.one_service();
    let runs = s.service_intervals();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[1].2, again["fence_token"].as_u64().unwrap());
    let host_log = later.log_text();
    assert!(
        host_log.contains("not re-adopted: the guard halted it while no host ran"),
        "{host_log}"
    );
}

#[test]
fn host_restarted_within_the_margin_takes_over_the_guard_and_re_adopts() {
    // Margin 18 s: plenty of time to start the next host.
    let s = Setup::new(30, 3);
    let mut host = s.cfg.start_host();
    let up = s.wait_up(|t| t >= 1);
    let pid = s.one_service();
    let guard_pid = s.one_guard();
    let old_host = host.pid();
    kill(Pid::from_raw(old_host as i32), Signal::SIGKILL).unwrap();
    host.stop();
    let mut host = s.cfg.start_host();
    let again = s.wait_up(|t| t >= 1);
    assert!(
        again["reason"].as_str().unwrap().contains("re-adopted"),
        "{again}"
    );
    assert_eq!(again["fence_token"], up["fence_token"]);
    assert_eq!(s.service_pids(), [pid], "same process, not restarted");
    assert_eq!(s.one_guard(), guard_pid, "the first guard carries on");
    wait_for(WAIT, "the hand-over in the guard log", || {
        let log = s.guard_log();
        let handed = format!(
            "vigil host pid {} took over the heartbeat from pid {old_host}",
            host.pid()
        );
        if log.contains(&handed) {
            Ok(())
        } else {
            Err(log)
        }
    });
    let log = s.guard_log();
    assert!(
        log.contains("another guard"),
        "the new host's guard left: {log}"
    );
    assert_eq!(s.script_log().len(), 1, "{:?}", s.script_log());
    assert!(host.stop().unwrap().success());
    s.wait_no_guard();
    assert_eq!(
        s.service_pids(),
        [pid],
        "service log:\n{}\nguard log:\n{}\nhost log:\n{}",
        std::fs::read_to_string(&s.service_log).unwrap_or_default(),
        s.guard_log(),
        host.log_text()
    );
}

#[test]
fn clean_host_shutdown_stops_the_guard_and_leaves_the_package_running() {
    // Margin 2.4 s.
    let s = Setup::new(4, 4);
    let mut host = s.cfg.start_host();
    let up = s.wait_up(|t| t >= 1);
    let pid = s.one_service();
    s.one_guard();
    assert!(host.stop().unwrap().success());
    s.wait_no_guard();
    let log = s.guard_log();
    assert!(
        log.contains("stopped cleanly; exiting without halting"),
        "{log}"
    );
    // Well past the margin: nothing was halted.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(s.service_pids(), [pid]);
    assert_eq!(s.script_log().len(), 1, "{:?}", s.script_log());
    assert!(!log.contains("halting this node's packages"), "{log}");
    // The next host re-adopts it, as before the guard existed.
    let _host = s.cfg.start_host();
    let again = s.wait_up(|t| t >= 1);
    assert!(
        again["reason"].as_str().unwrap().contains("re-adopted"),
        "{again}"
    );
    assert_eq!(again["fence_token"], up["fence_token"]);
    assert_eq!(s.service_pids(), [pid]);
}

#[test]
fn a_killed_guard_is_replaced_by_the_host_and_nothing_is_halted() {
    let s = Setup::new(4, 5);
    let _host = s.cfg.start_host();
    s.wait_up(|t| t >= 1);
    let pid = s.one_service();
    let guard_pid = s.one_guard();
    kill(Pid::from_raw(guard_pid), Signal::SIGKILL).unwrap();
    let new_guard = wait_for(WAIT, "a new guard", || match s.guard_pids().as_slice() {
        [p] if *p != guard_pid => Ok(*p),
        other => Err(format!("{other:?}")),
    });
    wait_for(WAIT, "the new guard to hear the host", || {
        let log = s.guard_log();
        if log.contains(&format!("pid {new_guard}]: heartbeats from vigil host")) {
            Ok(())
        } else {
            Err(log)
        }
    });
    assert_eq!(s.service_pids(), [pid]);
    assert_eq!(s.script_log().len(), 1, "{:?}", s.script_log());
}

/// The guard on its own, no host at all: it expires, then halts a package
/// recorded as running while it is expired, signalling only the process
/// the record names (pid and kernel start time).
#[test]
fn guard_alone_halts_a_recorded_package_and_spares_a_reused_pid() {
    use std::os::unix::process::CommandExt;
    let s = Setup::new(3, 6);
    std::fs::create_dir_all(s.cfg.path().join("run/packages")).unwrap();
    // The [paths] of the harness's cluster.toml, as a host would pass them.
    let run = s.cfg.path().join("run");
    let mut guard = std::process::Command::new(vigil_bin())
        .arg("-c")
        .arg(s.cfg.path())
        .args(["guard", "--node", "node1", "--margin-ms", "500"])
        .arg("--state-dir")
        .arg(&run)
        .arg("--run-dir")
        .arg(&run)
        .arg("--log-dir")
        .arg(&run)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let spawn = |args: &[&str]| {
        Reap(
            std::process::Command::new("/bin/sh")
                .args(args)
                .current_dir(s.cfg.path())
                .env("VIGIL_FENCE_TOKEN", "7")
                .stderr(std::process::Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap(),
        )
    };
    wait_for(WAIT, "the guard to expire with nothing to halt", || {
        let log = s.guard_log();
        if log.contains("nothing to halt") {
            Ok(())
        } else {
            Err(log)
        }
    });
    let mut service = spawn(&["pkg/service.sh", &s.marker]);
    // A process the record names by pid but with another start time: the
    // service's pid was reused by it, as far as the guard can tell.
    let bystander_marker = format!("{}-bystander", s.marker);
    let mut bystander = spawn(&["-c", "while :; do sleep 0.05; done", &bystander_marker]);
    let start_time = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(19).unwrap().parse().unwrap()
    };
    wait_for(WAIT, "the service to log its start", || {
        if std::fs::read_to_string(&s.service_log).is_ok_and(|l| l.starts_with("start ")) {
            Ok(())
        } else {
            Err("no start line yet".into())
        }
    });
    let (pid, other) = (service.0.id(), bystander.0.id());
    let record = serde_json::json!({
        "package": "web",
        "node": "node1",
        "fence_token": 7,
        "started_ms": 1,
        "services": [
            {"name": "server", "pid": pid, "pgid": pid, "start_time": start_time(pid), "started_ms": 1, "restarts": 0},
            {"name": "other", "pid": other, "pgid": other, "start_time": start_time(other) + 1, "started_ms": 1, "restarts": 0},
        ],
    });
    std::fs::write(
        s.cfg.path().join("run/packages/web.json"),
        serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();
    wait_for(WAIT, "the guard to halt web", || {
        if s.script_log() == ["halt guard_expired 7"] {
            Ok(())
        } else {
            Err(format!(
                "{:?}; guard log:\n{}",
                s.script_log(),
                s.guard_log()
            ))
        }
    });
    let status = service.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "the service exited on SIGTERM");
    assert!(
        bystander.0.try_wait().unwrap().is_none(),
        "the process with the wrong start time was not signalled"
    );
    let log = s.guard_log();
    assert!(log.contains("its pid reused; not signalled"), "{log}");
    assert!(log.contains("while the host is still silent"), "{log}");
    // The claim is updated just after the halt script exits.
    let claim = wait_for(WAIT, "the claim to say halted", || {
        let bytes = std::fs::read(s.cfg.path().join("run/packages/web.guard.json"))
            .map_err(|e| e.to_string())?;
        let claim: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if claim["phase"] == "halted" {
            Ok(claim)
        } else {
            Err(claim.to_string())
        }
    });
    assert_eq!(claim["record"]["fence_token"], 7);
    assert!(!s.cfg.path().join("run/packages/web.json").exists());
    let runs = s.service_intervals();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].1.is_some(), "{runs:?}");
    // Still there, waiting for a host; it leaves when its directory does.
    assert!(guard.try_wait().unwrap().is_none());
    let _ = guard.kill();
    let _ = guard.wait();
}
