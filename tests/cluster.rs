//! Multi-node clusters on a real etcd with three real `vigil host`
//! processes (node1..node3), each with its own config directory: the seed
//! scenario of DESIGN §6 end to end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use vigil_tests::cluster::{
    ScriptEntry as Entry, ScriptLog, Stamp, etcd_cluster_toml, unique_cluster_name as unique_name,
};
use vigil_tests::*;

const WAIT: Duration = Duration::from_secs(30);
const NODES: [&str; 3] = ["node1", "node2", "node3"];

/// `vigil status --json` asked through `dir`'s host.
fn status_of(dir: &ConfigDir) -> Result<serde_json::Value, String> {
    dir.status_json()
}

/// Waits until the host behind `dir` sees `count` nodes up.
fn wait_nodes_up(dir: &ConfigDir, count: usize) {
    wait_for(WAIT, &format!("{count} nodes up"), || {
        let status = status_of(dir)?;
        let up = status["nodes"]
            .as_array()
            .map_or(0, |n| n.iter().filter(|n| n["state"] == "up").count());
        if up == count {
            Ok(())
        } else {
            Err(status.to_string())
        }
    });
}

/// A config dir of cluster `name` (node1..node3 on `etcd`, TTL 2 s) with a
/// control script `pkg/true.sh` that does nothing.
fn three_node_dir(name: &str, etcd: &Etcd) -> ConfigDir {
    let cfg = ConfigDir::new();
    cfg.write(
        "cluster.toml",
        &etcd_cluster_toml(name, &NODES, &etcd.endpoint, 2, ""),
    );
    cfg.script("pkg/true.sh", "#!/bin/sh\nexit 0\n");
    cfg
}

struct Cluster {
    etcd: Etcd,
    dirs: BTreeMap<&'static str, ConfigDir>,
    hosts: BTreeMap<&'static str, Host>,
    log: ScriptLog,
}

impl Cluster {
    /// The seed packages: `ascs` follows `ers`; `ers` avoids `ascs` and
    /// prefers node2. With node1 up alone, ascs takes node1 (ers, which would
    /// have to leave it, cannot run); node2 joining then gets ers: the seed
    /// layout (ascs on node1, ers on node2).
    fn new() -> Self {
        let etcd = Etcd::start();
        let log = ScriptLog::new("vigil-seed-", Stamp::Millis);
        let name = unique_name("seed");
        let mut dirs = BTreeMap::new();
        for node in NODES {
            let cfg = ConfigDir::new();
            cfg.write(
                "cluster.toml",
                &etcd_cluster_toml(&name, &NODES, &etcd.endpoint, 2, ""),
            );
            log.write_scripts(&cfg, "");
            cfg.write(
                "packages.d/ascs.toml",
                "name = \"ascs\"\ntype = \"failover\"\nnodes = [\"node1\", \"node2\", \"node3\"]\nrun = [\"pkg/run.sh\"]\nhalt = [\"pkg/halt.sh\"]\nfollow = \"ers\"\n",
            );
            cfg.write(
                "packages.d/ers.toml",
                "name = \"ers\"\ntype = \"failover\"\nnodes = [\"node2\", \"node3\", \"node1\"]\nrun = [\"pkg/run.sh\"]\nhalt = [\"pkg/halt.sh\"]\navoid = [\"ascs\"]\n",
            );
            dirs.insert(node, cfg);
        }
        Self {
            etcd,
            dirs,
            hosts: BTreeMap::new(),
            log,
        }
    }

    fn start(&mut self, node: &'static str) {
        let host = self.dirs[node].start_host_as(node);
        self.hosts.insert(node, host);
    }

    /// `vigil status --json` asked on `node`.
    fn status(&self, node: &str) -> Result<serde_json::Value, String> {
        status_of(&self.dirs[node])
    }

    /// Waits until, seen from `from`, every package in `want` is up on its node.
    fn wait_placement(&self, from: &str, want: &[(&str, &str)]) -> serde_json::Value {
        wait_for(
            WAIT,
            &format!("placement {want:?} seen from {from}"),
            || {
                let status = self.status(from)?;
                let ok = want.iter().all(|(pkg, node)| {
                    status["packages"].as_array().is_some_and(|ps| {
                        ps.iter().any(|p| {
                            p["name"] == *pkg
                                && p["state"] == "up"
                                && p["running_on"] == serde_json::json!([node])
                        })
                    })
                });
                if ok {
                    Ok(status)
                } else {
                    Err(status.to_string())
                }
            },
        )
    }

    fn entries(&self) -> Vec<Entry> {
        self.log.entries()
    }

    fn position(&self, op: &str, package: &str, node: &str) -> usize {
        let entries = self.entries();
        entries
            .iter()
            .position(|e| e.op == op && e.package == package && e.node == node)
            .unwrap_or_else(|| panic!("no `{op} {package} on {node}` in {entries:#?}"))
    }

    /// The seed layout: ers on node2, ascs on node1, all three nodes up.
    fn seed_layout(&mut self) {
        self.start("node1");
        self.wait_placement("node1", &[("ascs", "node1")]);
        self.start("node2");
        self.wait_placement("node2", &[("ascs", "node1"), ("ers", "node2")]);
        self.start("node3");
        wait_nodes_up(&self.dirs["node3"], 3);
        // Steady: nothing moves once all are up.
        std::thread::sleep(Duration::from_secs(1));
        self.wait_placement("node3", &[("ascs", "node1"), ("ers", "node2")]);
    }

    /// No package ever ran on two nodes at once, and each package's fence
    /// tokens only grow, according to the scripts' own log.
    fn check_no_overlap(&self) {
        let entries = self.entries();
        for package in ["ascs", "ers"] {
            let mut running: Option<&Entry> = None;
            let mut last_token = 0;
            for e in entries.iter().filter(|e| e.package == package) {
                match e.op.as_str() {
                    "run" => {
                        assert!(
                            running.is_none(),
                            "{package} started on {} while running on {}: {entries:#?}",
                            e.node,
                            running.unwrap().node
                        );
                        assert!(
                            e.token > last_token,
                            "{package}: token {} after {last_token}: {entries:#?}",
                            e.token
                        );
                        last_token = e.token;
                        running = Some(e);
                    }
                    _ => {
                        if running.is_some_and(|r| r.node == e.node) {
                            running = None;
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn seed_node1_dies_ascs_follows_ers_then_ers_moves_away() {
    let mut c = Cluster::new();
    c.seed_layout();
    c.hosts.get_mut("node1").unwrap().kill();
    c.wait_placement("node2", &[("ascs", "node2"), ("ers", "node3")]);
    // DESIGN §6: ascs starts on node2, then ers halts there and starts on node3.
    let run_ascs = c.position("run", "ascs", "node2");
    let halt_ers = c.position("halt", "ers", "node2");
    let run_ers = c.position("run", "ers", "node3");
    assert!(
        run_ascs < halt_ers && halt_ers < run_ers,
        "{:#?}",
        c.entries()
    );
    // node1's guard halted its copy of ascs before node2 ran one.
    let halt_ascs_node1 = c.position("halt", "ascs", "node1");
    assert!(halt_ascs_node1 < run_ascs, "{:#?}", c.entries());
    assert_eq!(c.entries()[halt_ascs_node1].reason, "guard_expired");
    c.check_no_overlap();
    // Any node tells the whole cluster.
    let status = c.status("node3").unwrap();
    let node1 = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node1")
        .unwrap()
        .clone();
    assert_eq!(node1["state"], "down", "{status}");
}

#[test]
fn seed_node2_dies_only_ers_moves() {
    let mut c = Cluster::new();
    c.seed_layout();
    let before = c.entries().len();
    c.hosts.get_mut("node2").unwrap().kill();
    c.wait_placement("node1", &[("ascs", "node1"), ("ers", "node3")]);
    std::thread::sleep(Duration::from_secs(1));
    let after: Vec<Entry> = c.entries()[before..].to_vec();
    assert!(
        after.iter().all(|e| e.package == "ers"),
        "only ers acts: {after:#?}"
    );
    assert!(
        after.iter().any(|e| e.op == "run" && e.node == "node3"),
        "{after:#?}"
    );
    c.check_no_overlap();
    assert!(c.etcd.endpoint.starts_with("http://127.0.0.1:"));
}

/// Two nodes and one package `app` (nodes [node1, node2]) whose service
/// logs when it starts and stops, to prove no two copies ever overlapped.
struct AppCluster {
    etcd: Etcd,
    dirs: BTreeMap<&'static str, ConfigDir>,
    hosts: BTreeMap<&'static str, Host>,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

/// (node, token, start ms, stop ms if it stopped) per service copy.
type Interval = (String, u64, u64, Option<u64>);

impl AppCluster {
    /// With `gated`, `app` also needs `/example/file/flag/present == yes`,
    /// where each node's flag is its own file (`flag_path(node)`), watched
    /// by the example file monitor.
    fn build(lease_ttl_seconds: u32, gated: bool) -> Self {
        Self::build_with(lease_ttl_seconds, gated, |_, etcd| etcd.endpoint.clone())
    }

    /// `endpoint(node, etcd)` chooses the etcd endpoint each node uses.
    fn build_with(
        lease_ttl_seconds: u32,
        gated: bool,
        endpoint: impl Fn(&str, &Etcd) -> String,
    ) -> Self {
        let etcd = Etcd::start();
        let name = unique_name("app");
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("app.log");
        let mut dirs = BTreeMap::new();
        for node in ["node1", "node2"] {
            let cfg = ConfigDir::new();
            cfg.write(
                "cluster.toml",
                &etcd_cluster_toml(
                    &name,
                    &["node1", "node2"],
                    &endpoint(node, &etcd),
                    lease_ttl_seconds,
                    "",
                ),
            );
            cfg.script("pkg/run.sh", "#!/bin/sh\nexit 0\n");
            // The halt script runs once the services are stopped: its line
            // closes a copy whose service was killed before its trap could
            // write one (the guard's SIGKILL on a busy machine).
            cfg.script(
                "pkg/halt.sh",
                &format!(
                    "#!/bin/sh\necho \"$(date +%s%3N) stop $VIGIL_NODE $VIGIL_FENCE_TOKEN\" >> {log}\nexit 0\n",
                    log = log.display()
                ),
            );
            cfg.script(
                "pkg/service.sh",
                &format!(
                    "#!/bin/sh\necho \"$(date +%s%3N) start $VIGIL_NODE $VIGIL_FENCE_TOKEN\" >> {log}\ntrap 'echo \"$(date +%s%3N) stop $VIGIL_NODE $VIGIL_FENCE_TOKEN\" >> {log}; exit 0' TERM\nwhile :; do sleep 0.1; done\n",
                    log = log.display()
                ),
            );
            let mut package = "name = \"app\"\ntype = \"failover\"\nnodes = [\"node1\", \"node2\"]\nrun = [\"pkg/run.sh\"]\nhalt = [\"pkg/halt.sh\"]\n\n[[service]]\nname = \"server\"\ncommand = [\"pkg/service.sh\"]\n".to_owned();
            if gated {
                cfg.monitor(
                    "file",
                    &format!(
                        "name = \"file\"\ntype = \"dylib\"\nplugin = \"vigil_example_file\"\ninterval_seconds = 0.1\n[params.files]\nflag = \"{}\"\n",
                        cfg.path().join("flag").display()
                    ),
                );
                std::fs::write(cfg.path().join("flag"), "").unwrap();
                package.push_str(
                    "\n[[resource]]\nname = \"/example/file/flag/present\"\nup = \"== yes\"\n",
                );
            }
            cfg.write("packages.d/app.toml", &package);
            dirs.insert(node, cfg);
        }
        Self {
            etcd,
            dirs,
            hosts: BTreeMap::new(),
            log,
            _log_dir: log_dir,
        }
    }

    fn status(&self, node: &str) -> Result<serde_json::Value, String> {
        status_of(&self.dirs[node])
    }

    /// Starts node1 (with `env`), waits for app on it, then node2; returns
    /// app's status as first seen on node1.
    fn started(
        lease_ttl_seconds: u32,
        gated: bool,
        env: &[(&str, &str)],
    ) -> (Self, serde_json::Value) {
        let mut c = Self::build(lease_ttl_seconds, gated);
        c.hosts.insert(
            "node1",
            c.dirs["node1"].start_host_as_with_env("node1", env),
        );
        let first = c.wait_app_on("node1", "node1");
        c.hosts
            .insert("node2", c.dirs["node2"].start_host_as("node2"));
        c.wait_app_on("node2", "node1");
        (c, first)
    }

    fn wait_app_on(&self, from: &str, node: &str) -> serde_json::Value {
        wait_for(WAIT, &format!("app up on {node}, seen from {from}"), || {
            let status = self.status(from)?;
            let app = status["packages"][0].clone();
            if app["state"] == "up" && app["running_on"] == serde_json::json!([node]) {
                Ok(app)
            } else {
                Err(status.to_string())
            }
        })
    }

    fn intervals(&self) -> Vec<Interval> {
        let mut out: Vec<Interval> = Vec::new();
        for line in std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
        {
            let f: Vec<&str> = line.split(' ').collect();
            let (Some(at), Some(op), Some(node), Some(token)) =
                (f.first(), f.get(1), f.get(2), f.get(3))
            else {
                continue;
            };
            let (Ok(at), Ok(token)) = (at.parse::<u64>(), token.parse::<u64>()) else {
                continue;
            };
            match *op {
                "start" => out.push((node.to_string(), token, at, None)),
                _ => {
                    if let Some(i) = out
                        .iter_mut()
                        .find(|i| i.0 == *node && i.1 == token && i.3.is_none())
                    {
                        i.3 = Some(at);
                    }
                }
            }
        }
        out
    }

    /// Pairs of service copies on different nodes that ran at the same time.
    fn overlaps(&self) -> Vec<(Interval, Interval)> {
        let all = self.intervals();
        let mut found = Vec::new();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                let a_end = a.3.unwrap_or(u64::MAX);
                let b_end = b.3.unwrap_or(u64::MAX);
                if a.0 != b.0 && a.2 < b_end && b.2 < a_end {
                    found.push((a.clone(), b.clone()));
                }
            }
        }
        found
    }

    /// Every host's log, for a failure message.
    fn logs(&self) -> String {
        self.dirs
            .iter()
            .map(|(node, dir)| {
                let log = std::fs::read_to_string(dir.path().join("host.log")).unwrap_or_default();
                // vigil's own lines at info and above; the debug lines of
                // the gRPC stack would push them out.
                let tail: Vec<&str> = log
                    .lines()
                    .filter(|l| {
                        l.contains("vigil") && !l.contains(" DEBUG ") && !l.contains(" TRACE ")
                    })
                    .rev()
                    .take(60)
                    .collect();
                format!(
                    "--- {node} (last 60 lines, newest first)\n{}\n",
                    tail.join("\n")
                )
            })
            .collect()
    }

    fn signal(&self, node: &str, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.hosts[node].pid() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }
}

impl Drop for AppCluster {
    fn drop(&mut self) {
        for host in self.hosts.keys() {
            let pid = nix::unistd::Pid::from_raw(self.hosts[host].pid() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        }
        self.hosts.clear();
        // Services left behind (the guard-less run) die with the test.
        for dir in self.dirs.values() {
            for (pid, _) in processes_matching(&dir.path().display().to_string()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// A resource-down halt waited for its record write: with etcd hung (frozen,
/// so requests time out instead of failing fast) the host never halted the
/// package itself, and only its guard did, once the lease was in doubt. A
/// halt of this node's own copy is safe without the store, so the host
/// hands it to the agent at once and records it when the store answers.
#[test]
fn a_resource_down_halt_does_not_wait_for_a_hung_store() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    // TTL 4 s: store calls give up after 1 s, the guard fires after 2 s.
    let (c, first) = AppCluster::started(4, true, &[]);
    let etcd = Pid::from_raw(c.etcd.pid().expect("etcd runs") as i32);
    kill(etcd, Signal::SIGSTOP).unwrap();
    std::fs::remove_file(c.dirs["node1"].path().join("flag")).unwrap();
    let halted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(WAIT, "node1's copy halted", || {
            let halted = c
                .intervals()
                .iter()
                .any(|(node, _, _, stop)| node == "node1" && stop.is_some());
            if halted {
                Ok(())
            } else {
                Err(format!("{:?}\n{}", c.intervals(), c.logs()))
            }
        })
    }));
    kill(etcd, Signal::SIGCONT).unwrap();
    halted.unwrap();
    let host_log = std::fs::read_to_string(c.dirs["node1"].path().join("host.log")).unwrap();
    assert!(
        host_log
            .lines()
            .any(|l| l.contains("halting package") && l.contains("resource_down")),
        "the host halted it:\n{}",
        c.logs()
    );
    let guard_log = std::fs::read_to_string(c.dirs["node1"].path().join("run/guard.log")).unwrap();
    assert!(
        guard_log.contains("heartbeats from vigil host")
            && !guard_log.contains("halting this node's packages"),
        "the guard did not have to:\n{guard_log}"
    );
    let moved = c.wait_app_on("node2", "node2");
    assert!(
        moved["fence_token"].as_u64() > first["fence_token"].as_u64(),
        "{first} then {moved}"
    );
    assert!(c.overlaps().is_empty(), "{:?}", c.overlaps());
}

/// An operator command waited for the store on the main loop: with etcd
/// hung, `vigil pkg clear app` held the loop for the store's deadline, and a
/// resource-down halt that came meanwhile waited behind it.
#[test]
fn an_operator_command_on_a_hung_store_does_not_hold_back_a_resource_down_halt() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    // TTL 4 s: store calls give up after 1 s, the lease is in doubt after 2 s.
    let (c, _) = AppCluster::started(4, true, &[]);
    let etcd = Pid::from_raw(c.etcd.pid().expect("etcd runs") as i32);
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    kill(etcd, Signal::SIGSTOP).unwrap();
    let (answered_ms, answer) = std::thread::scope(|s| {
        let command = s.spawn(|| {
            let out = c.dirs["node1"].vigil(&["pkg", "clear", "app"]);
            (now_ms(), out)
        });
        // The command is on its way (or waiting) when the flag goes.
        std::thread::sleep(Duration::from_millis(200));
        std::fs::remove_file(c.dirs["node1"].path().join("flag")).unwrap();
        command.join().unwrap()
    });
    let halted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(WAIT, "node1's copy halted", || {
            match c
                .intervals()
                .iter()
                .find(|(node, _, _, stop)| node == "node1" && stop.is_some())
            {
                Some(i) => Ok(i.3.unwrap()),
                None => Err(format!("{:?}\n{}", c.intervals(), c.logs())),
            }
        })
    }));
    kill(etcd, Signal::SIGCONT).unwrap();
    let halted_ms = halted.unwrap();
    assert!(
        !answer.status.success(),
        "the store was hung, yet: {}",
        String::from_utf8_lossy(&answer.stdout)
    );
    assert!(
        halted_ms < answered_ms,
        "the halt ({halted_ms}) waited for the command's answer ({answered_ms}):\n{}",
        c.logs()
    );
    assert!(
        String::from_utf8_lossy(&answer.stderr).contains("app"),
        "the error names the package: {}",
        String::from_utf8_lossy(&answer.stderr)
    );
    c.wait_app_on("node2", "node2");
    assert!(c.overlaps().is_empty(), "{:?}", c.overlaps());
}

#[test]
fn split_brain_frozen_owner_is_halted_by_its_guard_before_the_package_moves() {
    use nix::sys::signal::Signal;
    let (c, first) = AppCluster::started(2, false, &[]);
    // Freeze node1's host past its lease.
    c.signal("node1", Signal::SIGSTOP);
    let moved = c.wait_app_on("node2", "node2");
    assert!(
        moved["fence_token"].as_u64() > first["fence_token"].as_u64(),
        "{first} then {moved}"
    );
    let intervals = c.intervals();
    let old = intervals
        .iter()
        .find(|i| i.0 == "node1")
        .expect("node1's copy")
        .clone();
    let new = intervals
        .iter()
        .find(|i| i.0 == "node2")
        .expect("node2's copy")
        .clone();
    assert!(
        old.3.is_some_and(|stop| stop <= new.2),
        "node1's copy stopped before node2's started: {intervals:?}"
    );
    // Thawed, node1 finds it lost ownership and does not restart its copy.
    c.signal("node1", Signal::SIGCONT);
    std::thread::sleep(Duration::from_secs(3));
    let starts_on_node1 = c.intervals().iter().filter(|i| i.0 == "node1").count();
    assert_eq!(starts_on_node1, 1, "{:?}\n{}", c.intervals(), c.logs());
    let seen_from_node1 = c.wait_app_on("node1", "node2");
    assert_eq!(seen_from_node1["fence_token"], moved["fence_token"]);
    assert!(c.overlaps().is_empty(), "{:?}", c.overlaps());
}

#[test]
fn split_brain_without_the_guard_two_copies_overlap() {
    use nix::sys::signal::Signal;
    let (c, _) = AppCluster::started(2, false, &[("VIGIL_GUARD", "off")]);
    c.signal("node1", Signal::SIGSTOP);
    c.wait_app_on("node2", "node2");
    // Nobody stopped node1's copy: this is what the guard is for.
    let overlaps = wait_for(WAIT, "an overlap", || {
        let o = c.overlaps();
        if o.is_empty() {
            Err(format!("{:?}", c.intervals()))
        } else {
            Ok(o)
        }
    });
    assert!(overlaps.iter().all(|(a, b)| a.0 != b.0));
    // Once thawed, the host sees it lost ownership and halts its copy itself.
    c.signal("node1", Signal::SIGCONT);
    wait_for(WAIT, "node1's stale copy to stop", || {
        let i = c.intervals();
        if i.iter().filter(|i| i.0 == "node1").all(|i| i.3.is_some()) {
            Ok(())
        } else {
            Err(format!("{i:?}"))
        }
    });
}

#[test]
fn etcd_outage_shorter_than_the_margin_changes_nothing() {
    // A host stops vouching for its lease 30 % of the TTL after its last
    // renewal: 2.4 s here, more than etcd needs to restart.
    let (mut c, before) = AppCluster::started(8, false, &[]);
    // A cluster in its stride, whose leases have been renewed (a host that
    // has not had one renewal acknowledged yet vouches from the grant, and
    // etcd's restart plus the client's reconnect can take it past 2.4 s).
    std::thread::sleep(Duration::from_secs(2));
    let lines = c.intervals();
    c.etcd.stop();
    std::thread::sleep(Duration::from_millis(300));
    c.etcd.resume();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        c.intervals(),
        lines,
        "no service stopped or started; logs:\n{}",
        c.logs()
    );
    let after = c.wait_app_on("node2", "node1");
    assert_eq!(after["fence_token"], before["fence_token"]);
}

#[test]
fn etcd_outage_longer_than_the_margin_halts_safely_and_the_cluster_recovers() {
    let (mut c, before) = AppCluster::started(4, false, &[]);
    c.etcd.stop();
    // Within the margin (50 % of the 4 s lease) node1's guard stops the app.
    wait_for(WAIT, "the app to be halted during the outage", || {
        let i = c.intervals();
        if i.iter().all(|i| i.3.is_some()) {
            Ok(())
        } else {
            Err(format!("{i:?}"))
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    c.etcd.resume();
    // The cluster recovers by itself: the app runs again, under a new token.
    let again = wait_for(WAIT, "the app to run again", || {
        let status = c.status("node2")?;
        let app = status["packages"][0].clone();
        if app["state"] == "up" && app["fence_token"].as_u64() > before["fence_token"].as_u64() {
            Ok(app)
        } else {
            Err(format!("{status}\n{}", c.logs()))
        }
    });
    assert_eq!(again["running_on"].as_array().map(Vec::len), Some(1));
    assert!(c.overlaps().is_empty(), "{:?}", c.overlaps());
}

#[test]
fn resource_fault_on_the_owner_moves_the_package_to_the_adoptive_node() {
    let (c, first) = AppCluster::started(2, true, &[]);
    // A real fault on node1 only: its flag file goes away.
    std::fs::remove_file(c.dirs["node1"].path().join("flag")).unwrap();
    let moved = c.wait_app_on("node2", "node2");
    assert!(moved["fence_token"].as_u64() > first["fence_token"].as_u64());
    let intervals = c.intervals();
    let old = intervals
        .iter()
        .find(|i| i.0 == "node1")
        .expect("node1's copy");
    let new = intervals
        .iter()
        .find(|i| i.0 == "node2")
        .expect("node2's copy");
    assert!(old.3.is_some_and(|stop| stop <= new.2), "{intervals:?}");
    // node2's start is a failover (VIGIL_REASON), though nothing ran at that instant.
    let node2_log = std::fs::read_to_string(c.dirs["node2"].path().join("host.log")).unwrap();
    assert!(
        node2_log
            .lines()
            .any(|l| l.contains("starting package") && l.contains("reason=failover")),
        "{}",
        c.logs()
    );
    // And node1 is not eligible while its resource is down.
    let why = c.dirs["node2"].vigil(&["why", "app"]);
    let why = String::from_utf8_lossy(&why.stdout);
    assert!(
        why.contains("node1: not eligible: resource /example/file/flag/present is not up"),
        "{why}"
    );
    assert!(c.overlaps().is_empty(), "{:?}", c.overlaps());
}

#[test]
fn operator_commands_on_any_node_take_effect_cluster_wide() {
    let (c, _) = AppCluster::started(2, false, &[]);
    let run = |on: &str, args: &[&str]| {
        let out = c.dirs[on].vigil(args);
        assert!(out.status.success(), "{args:?} on {on}: {out:?}");
    };
    // Asked on node2, the package running on node1 moves to node2.
    run("node2", &["pkg", "move", "app", "--node", "node2"]);
    c.wait_app_on("node1", "node2");
    // Asked on node1, the package running on node2 halts and stays down.
    run("node1", &["pkg", "halt", "app"]);
    wait_for(WAIT, "app halted", || {
        let status = c.status("node2")?;
        if status["packages"][0]["state"] == "down" {
            Ok(())
        } else {
            Err(status.to_string())
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.status("node1").unwrap()["packages"][0]["state"], "down");
    run("node2", &["pkg", "run", "app"]);
    c.wait_app_on("node1", "node1");
    // Draining node1 from node2 moves the package away.
    run("node2", &["node", "halt", "node1"]);
    c.wait_app_on("node2", "node2");
    let status = c.status("node2").unwrap();
    let node1 = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node1")
        .unwrap()
        .clone();
    assert_eq!(node1["state"], "halted");
    assert!(c.overlaps().is_empty(), "{:?}", c.overlaps());
}

#[test]
fn owner_cut_off_from_etcd_halts_before_another_node_takes_over() {
    // node1 reaches etcd through a relay the test cuts; node2 directly. A
    // live host that cannot renew its lease must have its package halted
    // (by its guard) before the lease expires and node2 takes over.
    let proxy = std::sync::OnceLock::new();
    let mut c = AppCluster::build_with(2, false, |node, etcd| {
        if node == "node1" {
            let p = proxy
                .get_or_init(|| CuttableProxy::start(etcd.endpoint.trim_start_matches("http://")));
            p.url()
        } else {
            etcd.endpoint.clone()
        }
    });
    c.hosts
        .insert("node1", c.dirs["node1"].start_host_as("node1"));
    let first = c.wait_app_on("node1", "node1");
    c.hosts
        .insert("node2", c.dirs["node2"].start_host_as("node2"));
    c.wait_app_on("node2", "node1");
    proxy.get().expect("proxy").cut();
    let moved = c.wait_app_on("node2", "node2");
    assert!(moved["fence_token"].as_u64() > first["fence_token"].as_u64());
    let intervals = c.intervals();
    let old = intervals
        .iter()
        .find(|i| i.0 == "node1")
        .expect("node1's copy");
    let new = intervals
        .iter()
        .find(|i| i.0 == "node2")
        .expect("node2's copy");
    assert!(
        old.3.is_some_and(|stop| stop <= new.2),
        "node1's copy stopped first: {intervals:?}\n{}",
        c.logs()
    );
    assert!(c.overlaps().is_empty(), "{:?}", c.overlaps());
    // Reconnected, node1 rejoins and starts nothing old.
    proxy.get().expect("proxy").mend();
    wait_nodes_up(&c.dirs["node2"], 2);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        c.intervals().iter().filter(|i| i.0 == "node1").count(),
        1,
        "{:?}",
        c.intervals()
    );
    assert!(c.overlaps().is_empty(), "{:?}", c.overlaps());
}

/// Hosts started at the same moment on a fresh cluster killed each other:
/// creating a missing package record treated a lost race as fatal
/// (`expected revision 0, found 11 (changed by another writer)`). Twenty
/// rounds of three hosts started at once, each round a new cluster on one
/// etcd: every host stays up and the seed packages come up.
#[test]
fn hosts_started_at_the_same_moment_all_stay_up() {
    let etcd = Etcd::start();
    for round in 0..20 {
        let name = unique_name("race");
        let dirs: Vec<ConfigDir> = NODES
            .iter()
            .map(|_| {
                let cfg = three_node_dir(&name, &etcd);
                let packages = [
                    ("ascs", r#"["node1", "node2", "node3"]"#),
                    ("ers", r#"["node2", "node3", "node1"]"#),
                    ("db", r#"["node3", "node1", "node2"]"#),
                ];
                for (pkg, nodes) in packages {
                    cfg.write(
                        &format!("packages.d/{pkg}.toml"),
                        &format!(
                            "name = \"{pkg}\"\ntype = \"failover\"\nnodes = {nodes}\nrun = [\"pkg/true.sh\"]\nhalt = [\"pkg/true.sh\"]\n"
                        ),
                    );
                }
                cfg
            })
            .collect();
        let mut hosts: Vec<Host> = NODES
            .iter()
            .zip(&dirs)
            .map(|(node, cfg)| cfg.spawn_host_as(node))
            .collect();
        for (cfg, host) in dirs.iter().zip(hosts.iter_mut()) {
            cfg.wait_ready(host);
        }
        wait_nodes_up(&dirs[0], 3);
        wait_for(WAIT, &format!("round {round}: every package up"), || {
            let status = status_of(&dirs[2])?;
            let up = status["packages"]
                .as_array()
                .map_or(0, |p| p.iter().filter(|p| p["state"] == "up").count());
            if up == 3 {
                Ok(())
            } else {
                Err(status.to_string())
            }
        });
        for (node, host) in NODES.iter().zip(hosts.iter_mut()) {
            assert!(
                host.try_exit().is_none(),
                "round {round}: {node}'s host exited; log:\n{}",
                host.log_text()
            );
        }
    }
}

/// An etcd outage longer than the guard margin but shorter than the lease
/// TTL, with the owner's required resource going down meanwhile. This test
/// wedged (app down for good) until the owner retried publishing its
/// resource state: the write made during the outage was lost, so the other
/// node planned the package back onto the owner, and the owner, knowing
/// better, planned it onto the other node; each waited for the other. The
/// owner
/// cannot record a halt, so its guard halts the package while every node
/// keeps its lease, and the package must then run on the other node. This
/// is the path where the owner recorded the guard's halt but kept its run
/// permit, and the adoptive node logged `run permit still held; waiting` as
/// long as the owner lived (whether the owner's own halt or its record of
/// the guard's halt comes first after the outage is a race; both must free
/// the permit).
#[test]
fn run_permit_is_released_after_the_guard_halts_a_package_on_a_live_node() {
    // TTL 4 s: the guard fires after 2 s of silence, leases need 4.
    let (mut c, first) = AppCluster::started(4, true, &[]);
    c.etcd.stop();
    // node1 halts at once (a halt of its own copy waits for no store
    // write), or its guard does while the host waits; either way its
    // permit can only be given back once etcd is there again.
    std::fs::remove_file(c.dirs["node1"].path().join("flag")).unwrap();
    wait_for(WAIT, "node1's guard to halt app", || {
        let halted = c
            .intervals()
            .iter()
            .any(|(node, _, _, stop)| node == "node1" && stop.is_some());
        if halted {
            Ok(())
        } else {
            Err(format!("{:?}", c.intervals()))
        }
    });
    c.etcd.resume();
    let moved = wait_for(WAIT, "app up on node2", || {
        let status = c.status("node2")?;
        let app = status["packages"][0].clone();
        if app["state"] == "up" && app["running_on"] == serde_json::json!(["node2"]) {
            Ok(app)
        } else {
            Err(format!("{status}\n{}", c.logs()))
        }
    });
    assert!(
        moved["fence_token"].as_u64() > first["fence_token"].as_u64(),
        "{first} then {moved}"
    );
    // (node1 usually keeps its lease; when etcd's restart takes long, the
    // peers may revoke it instead, which frees the permit another way.)
    assert!(c.overlaps().is_empty(), "{:?}", c.overlaps());
}

/// `pkg halt` of a package whose owner node was dead left `status` showing
/// it up on that node until the node came back: nobody was left to record
/// the halt. A live node records that a gone node runs nothing.
#[test]
fn halting_a_package_whose_owner_is_dead_shows_it_down() {
    let (mut c, _) = AppCluster::started(2, false, &[]);
    c.hosts.get_mut("node1").unwrap().kill();
    let out = c.dirs["node2"].vigil(&["pkg", "halt", "app"]);
    assert!(out.status.success(), "{out:?}");
    wait_for(WAIT, "app down, seen from node2", || {
        let status = c.status("node2")?;
        let app = status["packages"][0].clone();
        if app["state"] == "down" && app["running_on"] == serde_json::json!([]) {
            Ok(())
        } else {
            Err(format!("{status}\n{}", c.logs()))
        }
    });
    // Halted by the operator: it stays down, on node2 too.
    std::thread::sleep(Duration::from_secs(1));
    let status = c.status("node2").unwrap();
    assert_eq!(status["packages"][0]["state"], "down", "{status}");
    assert!(c.overlaps().is_empty(), "{:?}", c.overlaps());
}

/// Three nodes with a `multi_node` package `mn`, a `system_multi_node`
/// package `sys`, and a failover package `app` that needs `mn` up on all
/// nodes: until now these kinds were tested only inside the placement engine.
struct MultiCluster {
    _etcd: Etcd,
    dirs: BTreeMap<&'static str, ConfigDir>,
    hosts: BTreeMap<&'static str, Host>,
}

impl MultiCluster {
    fn new() -> Self {
        let etcd = Etcd::start();
        let name = unique_name("multi");
        let mut dirs = BTreeMap::new();
        for node in NODES {
            let cfg = three_node_dir(&name, &etcd);
            let scripts = "run = [\"pkg/true.sh\"]\nhalt = [\"pkg/true.sh\"]\n";
            cfg.write(
                "packages.d/mn.toml",
                &format!("name = \"mn\"\ntype = \"multi_node\"\nnodes = [\"*\"]\n{scripts}"),
            );
            cfg.write(
                "packages.d/sys.toml",
                &format!("name = \"sys\"\ntype = \"system_multi_node\"\n{scripts}"),
            );
            cfg.write(
                "packages.d/app.toml",
                &format!(
                    "name = \"app\"\ntype = \"failover\"\nnodes = [\"node1\", \"node2\", \"node3\"]\n{scripts}\n[[dependency]]\npackage = \"mn\"\ncondition = \"up\"\nlocation = \"all_nodes\"\n"
                ),
            );
            dirs.insert(node, cfg);
        }
        Self {
            _etcd: etcd,
            dirs,
            hosts: BTreeMap::new(),
        }
    }

    fn start(&mut self, node: &'static str) {
        let host = self.dirs[node].start_host_as(node);
        self.hosts.insert(node, host);
    }

    /// Waits until, seen from `from`, each package runs exactly on its nodes.
    fn wait_running(&self, from: &str, want: &[(&str, &[&str])]) {
        wait_for(WAIT, &format!("{want:?} seen from {from}"), || {
            let status = status_of(&self.dirs[from])?;
            let ok = want.iter().all(|(pkg, nodes)| {
                status["packages"].as_array().is_some_and(|ps| {
                    ps.iter().any(|p| {
                        let mut on: Vec<String> = p["running_on"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|n| n.as_str().map(str::to_owned))
                                    .collect()
                            })
                            .unwrap_or_default();
                        on.sort();
                        p["name"] == *pkg
                            && (nodes.is_empty() || p["state"] == "up")
                            && on == nodes.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()
                    })
                })
            });
            if ok { Ok(()) } else { Err(status.to_string()) }
        });
    }
}

#[test]
fn multi_node_packages_run_on_every_live_node_and_follow_membership() {
    let mut c = MultiCluster::new();
    c.start("node1");
    c.start("node2");
    c.wait_running(
        "node2",
        &[
            ("mn", &["node1", "node2"]),
            ("sys", &["node1", "node2"]),
            ("app", &["node1"]),
        ],
    );
    // A node that joins starts its system_multi_node (and multi_node) packages.
    c.start("node3");
    c.wait_running(
        "node3",
        &[
            ("mn", &["node1", "node2", "node3"]),
            ("sys", &["node1", "node2", "node3"]),
            ("app", &["node1"]),
        ],
    );
    // A node's death moves nothing: the others keep their copies.
    c.hosts.get_mut("node3").unwrap().kill();
    c.wait_running(
        "node1",
        &[
            ("mn", &["node1", "node2"]),
            ("sys", &["node1", "node2"]),
            ("app", &["node1"]),
        ],
    );
    // app needs mn on all nodes: halting mn halts app, running it again
    // brings app back.
    let out = c.dirs["node1"].vigil(&["pkg", "halt", "mn"]);
    assert!(out.status.success(), "{out:?}");
    c.wait_running("node1", &[("mn", &[]), ("app", &[])]);
    let out = c.dirs["node1"].vigil(&["pkg", "run", "mn"]);
    assert!(out.status.success(), "{out:?}");
    c.wait_running("node1", &[("mn", &["node1", "node2"]), ("app", &["node1"])]);
}
