//! Operator controls on a real three-node cluster (real etcd, three real
//! `vigil host` processes): package and node maintenance, per-node
//! switching, and fail-fast (DESIGN §5, §7).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vigil_tests::*;

const WAIT: Duration = Duration::from_secs(30);
const NODES: [&str; 3] = ["node1", "node2", "node3"];
/// The nodes' lease TTL: long enough that a loaded test machine does not
/// make a node lose its lease (a safety halt maintenance never holds
/// back), and far above what fail-fast takes.
const TTL_SECONDS: u32 = 6;
/// How long a test watches that nothing happens.
const QUIET: Duration = Duration::from_secs(3);

/// A cluster name no other test of this run uses, even on a shared etcd.
fn unique_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{prefix}{}x{n}", std::process::id())
}

/// One line of the shared log: control scripts write
/// `<ms> run|halt <package> <node> <reason>`, services
/// `<ms> start <package> <node> <service> <pid>`.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    at_ms: u64,
    op: String,
    package: String,
    node: String,
    rest: Vec<String>,
}

struct Controls {
    _etcd: Etcd,
    dirs: BTreeMap<&'static str, ConfigDir>,
    hosts: BTreeMap<&'static str, Host>,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

/// A failover package on node1, node2, node3 (in that order) with the
/// logging scripts, the given services (`(name, extra keys)`), and, with
/// `gated`, the need for this node's flag file.
fn package(name: &str, services: &[(&str, &str)], gated: bool) -> String {
    let mut text = format!(
        "name = \"{name}\"\ntype = \"failover\"\nnodes = [\"node1\", \"node2\", \"node3\"]\nrun = [\"pkg/run.sh\"]\nhalt = [\"pkg/halt.sh\"]\n"
    );
    for (service, extra) in services {
        text.push_str(&format!(
            "\n[[service]]\nname = \"{service}\"\ncommand = [\"pkg/service.sh\"]\n{extra}\n"
        ));
    }
    if gated {
        text.push_str("\n[[resource]]\nname = \"/example/file/flag/present\"\nup = \"== yes\"\n");
    }
    text
}

impl Controls {
    /// Three config dirs with `packages` (name → TOML), each node watching
    /// its own flag file (present at first); no host started yet.
    fn new(extra_cluster: &str, packages: &[(&str, String)]) -> Self {
        let etcd = Etcd::start();
        let name = unique_name("controls");
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("scripts.log");
        let mut dirs = BTreeMap::new();
        for node in NODES {
            let cfg = ConfigDir::new();
            cfg.write(
                "cluster.toml",
                &format!(
                    "[cluster]\nname = \"{name}\"\nnodes = [\"node1\", \"node2\", \"node3\"]\n{extra_cluster}[store]\ntype = \"etcd\"\nendpoints = [\"{}\"]\nlease_ttl_seconds = {TTL_SECONDS}\n",
                    etcd.endpoint
                ),
            );
            for op in ["run", "halt"] {
                cfg.script(
                    &format!("pkg/{op}.sh"),
                    &format!(
                        "#!/bin/sh\necho \"$(date +%s%3N) {op} $VIGIL_PACKAGE $VIGIL_NODE $VIGIL_REASON\" >> {}\n",
                        log.display()
                    ),
                );
            }
            cfg.script(
                "pkg/service.sh",
                &format!(
                    "#!/bin/sh\necho \"$(date +%s%3N) start $VIGIL_PACKAGE $VIGIL_NODE $VIGIL_SERVICE $$\" >> {}\nexec sleep 100000\n",
                    log.display()
                ),
            );
            cfg.monitor(
                "file",
                &format!(
                    "name = \"file\"\ntype = \"dylib\"\nplugin = \"vigil_example_file\"\ninterval_seconds = 0.1\n[params.files]\nflag = \"{}\"\n",
                    cfg.path().join("flag").display()
                ),
            );
            std::fs::write(cfg.path().join("flag"), "").unwrap();
            for (name, text) in packages {
                cfg.write(&format!("packages.d/{name}.toml"), text);
            }
            dirs.insert(node, cfg);
        }
        Self {
            _etcd: etcd,
            dirs,
            hosts: BTreeMap::new(),
            log,
            _log_dir: log_dir,
        }
    }

    /// Starts node1 and waits for `packages` on it, then node2 and node3.
    fn start(mut self, packages: &[&str]) -> Self {
        self.hosts
            .insert("node1", self.dirs["node1"].start_host_as("node1"));
        for p in packages {
            self.wait_on("node1", p, "node1");
        }
        for node in ["node2", "node3"] {
            self.hosts.insert(node, self.dirs[node].start_host_as(node));
        }
        wait_for(WAIT, "three nodes up", || {
            let status = self.status("node1")?;
            let up = status["nodes"]
                .as_array()
                .map_or(0, |n| n.iter().filter(|n| n["state"] == "up").count());
            if up == 3 {
                Ok(())
            } else {
                Err(status.to_string())
            }
        });
        self
    }

    fn status(&self, from: &str) -> Result<serde_json::Value, String> {
        let out = self.dirs[from].vigil(&["status", "--json"]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    fn package(&self, from: &str, package: &str) -> Result<serde_json::Value, String> {
        self.dirs[from].package_status(package)
    }

    fn wait_on(&self, from: &str, package: &str, node: &str) -> serde_json::Value {
        wait_for(
            WAIT,
            &format!("{package} up on {node}, seen from {from}"),
            || {
                let p = self.package(from, package)?;
                if p["state"] == "up" && p["running_on"] == serde_json::json!([node]) {
                    Ok(p)
                } else {
                    Err(p.to_string())
                }
            },
        )
    }

    /// `vigil ARGS` on `on`, which must succeed.
    fn vigil(&self, on: &str, args: &[&str]) -> String {
        let out = self.dirs[on].vigil(args);
        assert!(out.status.success(), "{args:?} on {on}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn lines(&self) -> Vec<Line> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                Some(Line {
                    at_ms: f.first()?.parse().ok()?,
                    op: (*f.get(1)?).to_owned(),
                    package: (*f.get(2)?).to_owned(),
                    node: (*f.get(3)?).to_owned(),
                    rest: f[4..].iter().map(|s| (*s).to_owned()).collect(),
                })
            })
            .collect()
    }

    /// Service starts of `package`'s `service` on `node`: their pids.
    fn starts(&self, package: &str, node: &str, service: &str) -> Vec<i32> {
        self.lines()
            .iter()
            .filter(|l| l.op == "start" && l.package == package && l.node == node)
            .filter(|l| l.rest.first().is_some_and(|s| s == service))
            .filter_map(|l| l.rest.get(1)?.parse().ok())
            .collect()
    }

    fn count(&self, op: &str, package: &str, node: &str) -> usize {
        self.lines()
            .iter()
            .filter(|l| l.op == op && l.package == package && l.node == node)
            .count()
    }

    /// Kills the running copy of `service` (its latest start).
    fn kill_service(&self, package: &str, node: &str, service: &str) {
        let pid = *self
            .starts(package, node, service)
            .last()
            .expect("the service started");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }

    fn logs(&self) -> String {
        self.dirs
            .iter()
            .map(|(node, dir)| {
                let log = std::fs::read_to_string(dir.path().join("host.log")).unwrap_or_default();
                let tail: Vec<&str> = log
                    .lines()
                    .filter(|l| {
                        l.contains("vigil") && !l.contains(" DEBUG ") && !l.contains(" TRACE ")
                    })
                    .rev()
                    .take(40)
                    .collect();
                format!("--- {node} (newest first)\n{}\n", tail.join("\n"))
            })
            .collect()
    }
}

/// Nothing happens to `package` on node1 for [`QUIET`]: no new service
/// start, no halt, still up there.
fn assert_untouched(c: &Controls, package: &str, service: &str, starts: usize) {
    let halts = c.count("halt", package, "node1");
    std::thread::sleep(QUIET);
    assert_eq!(
        c.starts(package, "node1", service).len(),
        starts,
        "restarted in maintenance\n{}",
        c.logs()
    );
    assert_eq!(
        c.count("halt", package, "node1"),
        halts,
        "halted in maintenance\n{}",
        c.logs()
    );
    let p = c.package("node2", package).unwrap();
    assert_eq!(p["state"], "up", "{p}");
    assert_eq!(p["running_on"], serde_json::json!(["node1"]), "{p}");
}

#[test]
fn package_maintenance_holds_back_restart_halt_and_failover_until_it_is_off() {
    let c = Controls::new(
        "",
        &[("app", package("app", &[("server", "restarts = 3")], true))],
    )
    .start(&["app"]);
    // on or off is required, and only maintenance takes it (usage errors).
    for args in [
        &["pkg", "maintenance", "app"][..],
        &["pkg", "halt", "app", "on"],
        &["node", "maintenance", "node1"],
    ] {
        let out = c.dirs["node2"].vigil(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
    let out = c.vigil("node2", &["pkg", "maintenance", "app", "on"]);
    assert!(out.contains("app is in maintenance"), "{out}");
    wait_for(WAIT, "maintenance seen on node1", || {
        let p = c.package("node1", "app")?;
        if p["maintenance"] == true {
            Ok(())
        } else {
            Err(p.to_string())
        }
    });

    // A service exit is not restarted in maintenance…
    c.kill_service("app", "node1", "server");
    assert_untouched(&c, "app", "server", 1);
    // …and is once maintenance is off.
    c.vigil("node3", &["pkg", "maintenance", "app", "off"]);
    wait_for(WAIT, "the server restarted on node1", || {
        let n = c.starts("app", "node1", "server").len();
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n} starts"))
        }
    });
    c.wait_on("node2", "app", "node1");

    // A required resource down is no halt and no failover in maintenance;
    // status and why say what would have happened.
    c.vigil("node1", &["pkg", "maintenance", "app", "on"]);
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_file(c.dirs["node1"].path().join("flag")).unwrap();
    wait_for(WAIT, "status to show the withheld halt", || {
        let p = c.package("node1", "app")?;
        if p["withheld"] == "would halt on node1: resource down" {
            Ok(())
        } else {
            Err(p.to_string())
        }
    });
    let why = c.vigil("node1", &["why", "app"]);
    assert!(
        why.contains("maintenance holds back: would halt on node1: resource down"),
        "{why}"
    );
    let text = c.vigil("node1", &["status"]);
    assert!(
        text.contains("maintenance: would halt on node1: resource down"),
        "{text}"
    );
    assert_untouched(&c, "app", "server", 2);

    // Off: the pending halt and failover happen at once.
    c.vigil("node2", &["pkg", "maintenance", "app", "off"]);
    c.wait_on("node2", "app", "node2");
    assert_eq!(c.count("halt", "app", "node1"), 1, "{}", c.logs());
}

#[test]
fn node_maintenance_holds_back_every_action_for_its_packages_until_it_is_off() {
    let c = Controls::new(
        "",
        &[("app", package("app", &[("server", "restarts = 3")], true))],
    )
    .start(&["app"]);
    let out = c.vigil("node3", &["node", "maintenance", "node1", "on"]);
    assert!(out.contains("node node1 is in maintenance"), "{out}");
    wait_for(WAIT, "node maintenance seen on node1", || {
        let status = c.status("node1")?;
        let node1 = status["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["name"] == "node1").cloned())
            .unwrap_or_default();
        if node1["maintenance"] == true && node1["state"] == "up" {
            Ok(())
        } else {
            Err(status.to_string())
        }
    });

    c.kill_service("app", "node1", "server");
    std::fs::remove_file(c.dirs["node1"].path().join("flag")).unwrap();
    wait_for(WAIT, "status to show the withheld halt", || {
        let p = c.package("node1", "app")?;
        if p["withheld"] == "would halt on node1: resource down" {
            Ok(())
        } else {
            Err(p.to_string())
        }
    });
    assert_untouched(&c, "app", "server", 1);

    c.vigil("node1", &["node", "maintenance", "node1", "off"]);
    c.wait_on("node3", "app", "node2");
    assert_eq!(c.count("halt", "app", "node1"), 1, "{}", c.logs());
}

#[test]
fn package_disabled_on_a_node_moves_off_it_and_stays_off() {
    let mut c =
        Controls::new("", &[("app", package("app", &[("server", "")], false))]).start(&["app"]);
    let out = c.vigil("node3", &["pkg", "disable", "app", "--node", "node1"]);
    assert!(out.contains("switching disabled for app on node1"), "{out}");
    let p = c.wait_on("node1", "app", "node2");
    assert_eq!(p["disabled_on"], serde_json::json!(["node1"]), "{p}");
    assert_eq!(p["switching"], true, "{p}");
    let why = c.vigil("node1", &["why", "app"]);
    assert!(
        why.contains("node1: not eligible: switching is disabled for the package on this node"),
        "{why}"
    );
    // node2 dies: app fails over to node3, not back to node1.
    c.hosts.get_mut("node2").unwrap().kill();
    c.wait_on("node1", "app", "node3");
    // Enabled again: with failback_policy = "manual" it stays where it is.
    c.vigil("node1", &["pkg", "enable", "app", "--node", "node1"]);
    std::thread::sleep(Duration::from_secs(2));
    let p = c.wait_on("node1", "app", "node3");
    assert_eq!(p["disabled_on"], serde_json::json!([]), "{p}");
    // An unknown node is refused, naming it.
    let out = c.dirs["node1"].vigil(&["pkg", "disable", "app", "--node", "node9"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("node9"),
        "{out:?}"
    );
}

#[test]
fn fail_fast_service_failure_halts_the_node_and_its_packages_move_at_once() {
    let mut c = Controls::new(
        "fail_fast_action = \"halt_node\"\n",
        &[
            (
                "ff",
                package(
                    "ff",
                    &[("server", ""), ("sentinel", "fail_fast = true")],
                    false,
                ),
            ),
            ("other", package("other", &[("server", "")], false)),
        ],
    )
    .start(&["ff", "other"]);
    let node1_pids: Vec<i32> = ["ff", "other"]
        .iter()
        .flat_map(|p| c.starts(p, "node1", "server"))
        .collect();

    let killed = Instant::now();
    c.kill_service("ff", "node1", "sentinel");
    for p in ["ff", "other"] {
        c.wait_on("node2", p, "node2");
    }
    let moved = killed.elapsed();
    eprintln!(
        "fail-fast: every package of node1 up on node2 {} ms after its fail-fast service died (lease TTL {TTL_SECONDS} s)",
        moved.as_millis()
    );

    // The node halted: the host ended with status 4 and said why.
    let host = c.hosts.get_mut("node1").unwrap();
    let status = wait_for(WAIT, "node1's host to exit", || {
        host.try_exit().ok_or_else(|| "still running".to_owned())
    });
    assert_eq!(status.code(), Some(4), "{}", c.logs());
    let log = c.hosts["node1"].log_text();
    assert!(log.contains("fail-fast: node halted"), "{log}");
    // Without halt scripts, and nothing of node1's packages left running.
    assert_eq!(c.count("halt", "ff", "node1"), 0, "{}", c.logs());
    assert_eq!(c.count("halt", "other", "node1"), 0, "{}", c.logs());
    for pid in node1_pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "service {pid} of node1 still runs"
        );
    }
    // The others see node1 down, not halted by an operator.
    let status = c.status("node2").unwrap();
    let node1 = status["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["name"] == "node1").cloned())
        .unwrap();
    assert_eq!(node1["state"], "down", "{status}");
}

#[test]
fn node_fail_fast_package_out_of_restarts_halts_its_node() {
    let mut c = Controls::new(
        "",
        &[(
            "nff",
            format!(
                "node_fail_fast = true\n{}",
                package("nff", &[("server", "restarts = 0")], false)
            ),
        )],
    )
    .start(&["nff"]);
    c.kill_service("nff", "node1", "server");
    c.wait_on("node3", "nff", "node2");
    let host = c.hosts.get_mut("node1").unwrap();
    let status = wait_for(WAIT, "node1's host to exit", || {
        host.try_exit().ok_or_else(|| "still running".to_owned())
    });
    assert_eq!(status.code(), Some(4), "{}", c.logs());
    assert_eq!(c.count("halt", "nff", "node1"), 0, "{}", c.logs());
}
