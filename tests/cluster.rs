//! Multi-node clusters on a real etcd with three real `vigil host`
//! processes (node1..node3), each with its own config directory: the seed
//! scenario of DESIGN §6 end to end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use vigil_tests::*;

const WAIT: Duration = Duration::from_secs(30);
const NODES: [&str; 3] = ["node1", "node2", "node3"];

/// One line of the shared control-script log.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    at_ms: u64,
    op: String,
    package: String,
    node: String,
    reason: String,
    token: u64,
}

struct Cluster {
    etcd: Etcd,
    dirs: BTreeMap<&'static str, ConfigDir>,
    hosts: BTreeMap<&'static str, Host>,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Cluster {
    /// The seed packages: `ascs` follows `ers`; `ers` avoids `ascs` and
    /// prefers node2. With node1 up alone, ascs takes node1 (ers, which would
    /// have to leave it, cannot run); node2 joining then gets ers: the seed
    /// layout (ascs on node1, ers on node2).
    fn new() -> Self {
        let etcd = Etcd::start();
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("scripts.log");
        let name = format!("seed{}", std::process::id());
        let mut dirs = BTreeMap::new();
        for node in NODES {
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
                        "#!/bin/sh\necho \"$(date +%s%3N) {op} $VIGIL_PACKAGE $VIGIL_NODE $VIGIL_REASON $VIGIL_FENCE_TOKEN\" >> {}\n",
                        log.display()
                    ),
                );
            }
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
            _log_dir: log_dir,
        }
    }

    fn start(&mut self, node: &'static str) {
        let host = self.dirs[node].start_host_as(node);
        self.hosts.insert(node, host);
    }

    /// `vigil status --json` asked on `node`.
    fn status(&self, node: &str) -> Result<serde_json::Value, String> {
        let out = self.dirs[node].vigil(&["status", "--json"]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
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
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                Some(Entry {
                    at_ms: f.first()?.parse().ok()?,
                    op: f.get(1)?.to_string(),
                    package: f.get(2)?.to_string(),
                    node: f.get(3)?.to_string(),
                    reason: f.get(4)?.to_string(),
                    token: f.get(5)?.parse().ok()?,
                })
            })
            .collect()
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
        wait_for(WAIT, "three nodes up", || {
            let status = self.status("node3")?;
            let up = status["nodes"]
                .as_array()
                .map_or(0, |n| n.iter().filter(|n| n["state"] == "up").count());
            if up == 3 {
                Ok(())
            } else {
                Err(status.to_string())
            }
        });
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
