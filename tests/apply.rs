//! `vigil apply` (DESIGN §7): one applied package set for the cluster, run
//! by every host instead of its local files, changed live. Real etcd, three
//! real `vigil host` processes with a config dir each; and one node on the
//! embedded store, where a SIGHUP applies `packages.d/` too.

use std::path::PathBuf;
use std::time::Duration;

use vigil_tests::*;

const WAIT: Duration = Duration::from_secs(30);
const NODES: [&str; 3] = ["node1", "node2", "node3"];

/// A cluster name no other test of this run uses, even on a shared etcd.
fn unique_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{prefix}{}x{n}", std::process::id())
}

/// A package on every node, node1 first, whose service is `sleep MARKER`
/// (so its pid can be found) and whose scripts log `run|halt PKG NODE
/// REASON ARG` to the shared log; `extra` is appended.
fn package(name: &str, marker: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\ntype = \"failover\"\nnodes = [\"node1\", \"node2\", \"node3\"]\nrun = [\"pkg/run.sh\"]\nhalt = [\"pkg/halt.sh\"]\n{extra}\n[[service]]\nname = \"server\"\ncommand = [\"/bin/sleep\", \"{marker}\"]\n"
    )
}

/// Three config dirs on one etcd, one host per dir as it is started.
struct Cluster {
    _etcd: Etcd,
    dirs: Vec<ConfigDir>,
    hosts: Vec<Host>,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
    /// Unique per test: the service commands are `sleep <marker><n>`.
    marker: u32,
}

impl Cluster {
    fn new() -> Self {
        let etcd = Etcd::start();
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("scripts.log");
        let name = unique_name("apply");
        let dirs = NODES
            .iter()
            .map(|_| {
                let cfg = ConfigDir::new();
                cfg.write(
                    "cluster.toml",
                    &format!(
                        "[cluster]\nname = \"{name}\"\nnodes = [\"node1\", \"node2\", \"node3\"]\n[store]\ntype = \"etcd\"\nendpoints = [\"{}\"]\nlease_ttl_seconds = 2\n",
                        etcd.endpoint
                    ),
                );
                for op in ["run", "halt"] {
                    cfg.script(
                        &format!("pkg/{op}.sh"),
                        &format!(
                            "#!/bin/sh\necho \"{op} $VIGIL_PACKAGE $VIGIL_NODE $VIGIL_REASON $1\" >> {}\n",
                            log.display()
                        ),
                    );
                }
                cfg
            })
            .collect();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let marker = 700_000
            + (std::process::id() % 1000) * 100
            + NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst) * 10;
        Self {
            _etcd: etcd,
            dirs,
            hosts: Vec::new(),
            log,
            _log_dir: log_dir,
            marker,
        }
    }

    fn dir(&self, node: usize) -> &ConfigDir {
        &self.dirs[node - 1]
    }

    /// `sleep` argument of package number `n`'s service.
    fn marker(&self, n: u32) -> String {
        (self.marker + n).to_string()
    }

    fn start_all(&mut self) {
        for (i, node) in NODES.iter().enumerate() {
            let host = self.dirs[i].start_host_as(node);
            self.hosts.push(host);
        }
    }

    fn status(&self, node: usize) -> Result<serde_json::Value, String> {
        let out = self.dir(node).vigil(&["status", "--json"]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    /// Waits until every node's status shows `package` up on `on`.
    fn wait_up_everywhere(&self, package: &str, on: &str) {
        for node in 1..=3 {
            wait_for(
                WAIT,
                &format!("{package} up on {on} seen from node{node}"),
                || {
                    let status = self.status(node)?;
                    let ok = status["packages"].as_array().is_some_and(|ps| {
                        ps.iter().any(|p| {
                            p["name"] == package
                                && p["state"] == "up"
                                && p["running_on"] == serde_json::json!([on])
                        })
                    });
                    if ok { Ok(()) } else { Err(status.to_string()) }
                },
            );
        }
    }

    /// Waits until no node's status lists `package`.
    fn wait_gone_everywhere(&self, package: &str) {
        for node in 1..=3 {
            wait_for(
                WAIT,
                &format!("{package} gone seen from node{node}"),
                || {
                    let status = self.status(node)?;
                    let listed = status["packages"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().any(|p| p["name"] == package));
                    if listed {
                        Err(status.to_string())
                    } else {
                        Ok(())
                    }
                },
            );
        }
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The pids of package `n`'s service, wherever it runs.
    fn pids(&self, n: u32) -> Vec<i32> {
        processes_matching(&format!("sleep {}", self.marker(n)))
            .into_iter()
            .map(|(pid, _)| pid)
            .collect()
    }

    fn apply(&self, node: usize) -> (Option<i32>, serde_json::Value, String) {
        let out = self.dir(node).vigil(&["apply", "--json"]);
        let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (
            out.status.code(),
            json,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            host.stop();
        }
        for n in 0..10 {
            for pid in self.pids(n) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// The applied revision in a status document.
fn revision(status: &serde_json::Value) -> u64 {
    status["applied"]["revision"].as_u64().unwrap_or(0)
}

#[test]
fn apply_adds_changes_and_removes_packages_live_and_a_broken_file_changes_nothing() {
    let mut c = Cluster::new();
    // Only node1 has files: the first host to start applies its set.
    c.dir(1)
        .write("packages.d/web.toml", &package("web", &c.marker(1), ""));
    c.start_all();
    c.wait_up_everywhere("web", "node1");
    let web_pid = c.pids(1);
    assert_eq!(web_pid.len(), 1, "{web_pid:?}");
    let status = c.status(3).unwrap();
    assert_eq!(revision(&status), 1, "{status}");
    assert_eq!(status["applied"]["applied_by"], "first start of node1");

    // Added: db starts, without any host restarting.
    c.dir(1)
        .write("packages.d/db.toml", &package("db", &c.marker(2), ""));
    let (code, out, err) = c.apply(1);
    assert_eq!(code, Some(0), "{out} {err}");
    assert_eq!(out["added"], serde_json::json!(["db"]), "{out}");
    assert_eq!(out["applied"]["revision"], 2, "{out}");
    c.wait_up_everywhere("db", "node1");

    // A policy-only change: replanned, not restarted (same pid, no script).
    let runs_before = c
        .lines()
        .iter()
        .filter(|l| l.starts_with("run web"))
        .count();
    c.dir(1).write(
        "packages.d/web.toml",
        &package(
            "web",
            &c.marker(1),
            "priority = 5\nfailback_policy = \"automatic\"\n",
        ),
    );
    let (code, out, err) = c.apply(1);
    assert_eq!(code, Some(0), "{out} {err}");
    assert_eq!(out["replanned"], serde_json::json!(["web"]), "{out}");
    assert_eq!(out["restarted"], serde_json::json!([]), "{out}");
    std::thread::sleep(Duration::from_secs(2));
    c.wait_up_everywhere("web", "node1");
    assert_eq!(
        c.pids(1),
        web_pid,
        "a policy-only change restarted the service"
    );
    let runs_after = c
        .lines()
        .iter()
        .filter(|l| l.starts_with("run web"))
        .count();
    assert_eq!(runs_before, runs_after, "{:#?}", c.lines());

    // A run change: halted with the old definition, run with the new one,
    // on the same node.
    c.dir(1).write(
        "packages.d/web.toml",
        &package(
            "web",
            &c.marker(1),
            "priority = 5\nfailback_policy = \"automatic\"\n",
        )
        .replace("run = [\"pkg/run.sh\"]", "run = [\"pkg/run.sh\", \"v2\"]"),
    );
    let (code, out, err) = c.apply(1);
    assert_eq!(code, Some(0), "{out} {err}");
    assert_eq!(out["restarted"], serde_json::json!(["web"]), "{out}");
    wait_for(WAIT, "web run again with v2", || {
        let lines = c.lines();
        if lines.iter().any(|l| l == "run web node1 manual v2") {
            Ok(())
        } else {
            Err(format!("{lines:#?}"))
        }
    });
    let lines = c.lines();
    let halt = lines
        .iter()
        .position(|l| l == "halt web node1 reconfigured ")
        .unwrap_or_else(|| panic!("no halt with the old definition: {lines:#?}"));
    let run = lines
        .iter()
        .position(|l| l == "run web node1 manual v2")
        .unwrap();
    assert!(halt < run, "{lines:#?}");
    c.wait_up_everywhere("web", "node1");
    let new_pid = c.pids(1);
    assert_eq!(new_pid.len(), 1, "{new_pid:?}");
    assert_ne!(new_pid, web_pid, "the service was not restarted");

    // Removed: db halts and leaves every node's status.
    std::fs::remove_file(c.dir(1).path().join("packages.d/db.toml")).unwrap();
    let (code, out, err) = c.apply(1);
    assert_eq!(code, Some(0), "{out} {err}");
    assert_eq!(out["removed"], serde_json::json!(["db"]), "{out}");
    c.wait_gone_everywhere("db");
    wait_for(WAIT, "db halted, its service gone", || {
        let halted = c
            .lines()
            .iter()
            .any(|l| l.starts_with("halt db node1 reconfigured"));
        if halted && c.pids(2).is_empty() {
            Ok(())
        } else {
            Err(format!("{:#?} {:?}", c.lines(), c.pids(2)))
        }
    });

    // A broken file: refused with file:line, nothing changes.
    let revision_before = revision(&c.status(2).unwrap());
    c.dir(1).write(
        "packages.d/bad.toml",
        "name = \"bad\"\ntype = \"failover\"\nbogus_key = 1\n",
    );
    let out = c.dir(1).vigil(&["apply"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("packages.d/bad.toml:3:"), "{stderr}");
    assert!(stderr.contains("nothing applied"), "{stderr}");
    std::thread::sleep(Duration::from_millis(500));
    let status = c.status(2).unwrap();
    assert_eq!(revision(&status), revision_before, "{status}");
    assert_eq!(c.pids(1), new_pid);
}

#[test]
fn a_node_whose_local_file_differs_runs_the_applied_version() {
    let mut c = Cluster::new();
    c.dir(1)
        .write("packages.d/web.toml", &package("web", &c.marker(1), ""));
    // node2's own file would put web on node2 and fail it back there at
    // once; node3 has no file at all.
    c.dir(2).write(
        "packages.d/web.toml",
        &package("web", &c.marker(1), "failback_policy = \"automatic\"\n").replace(
            "[\"node1\", \"node2\", \"node3\"]",
            "[\"node2\", \"node1\", \"node3\"]",
        ),
    );
    c.start_all();
    c.wait_up_everywhere("web", "node1");
    std::thread::sleep(Duration::from_secs(2));
    // Still on node1: node2 plans with the applied version.
    c.wait_up_everywhere("web", "node1");
    let digests: Vec<String> = (1..=3)
        .map(|n| {
            c.status(n).unwrap()["applied"]["digest"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    assert!(
        !c.lines().iter().any(|l| l.contains("node2")),
        "{:#?}",
        c.lines()
    );
    // check says the local file differs from what runs.
    let out = c.dir(2).vigil(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("differs from the applied package set") && stdout.contains("web.toml"),
        "{stdout}"
    );
    let out = c.dir(1).vigil(&["check", "--json"]);
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        check["applied"]["differences"],
        serde_json::Value::Null,
        "{check}"
    );
    assert_eq!(check["applied"]["digest"], digests[0].as_str(), "{check}");
}

/// Sends SIGHUP and waits until the host logged the outcome of the reload.
fn reload(host: &Host) {
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
            Ok(())
        } else {
            Err(log.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
        }
    });
}

#[test]
fn one_node_sighup_and_apply_pick_up_added_packages_and_a_broken_file_keeps_the_last_good_version()
{
    let cfg = ConfigDir::new();
    let marker = 800_000 + (std::process::id() % 1000) * 10;
    let simple = |name: &str, n: u32| {
        package(name, &(marker + n).to_string(), "")
            .replace("[\"node1\", \"node2\", \"node3\"]", "[\"node1\"]")
            .replace("pkg/run.sh", "/bin/true")
            .replace("pkg/halt.sh", "/bin/true")
    };
    let pids = |n: u32| {
        processes_matching(&format!("sleep {}", marker + n))
            .into_iter()
            .map(|(pid, _)| pid)
            .collect::<Vec<_>>()
    };
    struct Cleanup(Vec<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for needle in &self.0 {
                for (pid, _) in processes_matching(needle) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
    let _cleanup = Cleanup((1..=3).map(|n| format!("sleep {}", marker + n)).collect());
    cfg.write("packages.d/web.toml", &simple("web", 1));
    let mut host = cfg.start_host();
    let up = |name: &str| {
        wait_for(WAIT, &format!("{name} up"), || {
            let p = cfg.package_status(name)?;
            if p["state"] == "up" {
                Ok(())
            } else {
                Err(p.to_string())
            }
        })
    };
    up("web");
    let web = pids(1);

    // SIGHUP applies an added package.
    cfg.write("packages.d/db.toml", &simple("db", 2));
    reload(&host);
    up("db");
    let status: serde_json::Value =
        serde_json::from_slice(&cfg.vigil(&["status", "--json"]).stdout).unwrap();
    assert_eq!(
        status["applied"]["applied_by"], "reload on node1",
        "{status}"
    );

    // So does `vigil apply`.
    cfg.write("packages.d/cache.toml", &simple("cache", 3));
    let out = cfg.vigil(&["apply"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("added: cache"),
        "{out:?}"
    );
    up("cache");

    // A broken web.toml on reload: web keeps running its last good version,
    // and check, status and the log say so.
    cfg.write(
        "packages.d/web.toml",
        &format!("{}bogus_key = 1\n", simple("web", 1)),
    );
    reload(&host);
    std::thread::sleep(Duration::from_secs(1));
    up("web");
    assert_eq!(pids(1), web, "the broken file restarted or halted web");
    let status: serde_json::Value =
        serde_json::from_slice(&cfg.vigil(&["status", "--json"]).stdout).unwrap();
    let errors = status["config_errors"].as_array().unwrap();
    assert!(
        errors.iter().any(
            |e| e["file"].as_str().unwrap().ends_with("packages.d/web.toml")
                && e["line"] == 10
                && e["kept_package"] == "web"
        ),
        "{status}"
    );
    let check = cfg.vigil(&["check"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("packages.d/web.toml:10:"),
        "{check:?}"
    );
    let log = host.log_text();
    assert!(
        log.contains("keeping the last good version of the package"),
        "{log}"
    );
    // ... and an apply of that state is refused whole.
    let out = cfg.vigil(&["apply"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    host.stop();
}
