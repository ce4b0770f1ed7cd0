//! Scaffolding of multi-node clusters on one etcd, shared by
//! `tests/cluster.rs` and the failover benchmarks (`bench/src/bin/failover.rs`,
//! `bench/src/bin/mass_failover.rs`): each node's `cluster.toml`, a cluster
//! name no other cluster of the process uses, and control scripts that
//! append to one log shared by every node, read back as [`ScriptEntry`]s.

use std::path::Path;

use crate::ConfigDir;

/// `cluster.toml` of cluster `name` on the etcd at `endpoint`;
/// `store_extra` is appended, inside `[store]` (such as
/// `max_parallel_actions = 4\n`).
pub fn etcd_cluster_toml(
    name: &str,
    nodes: &[&str],
    endpoint: &str,
    lease_ttl_seconds: u32,
    store_extra: &str,
) -> String {
    let nodes: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "[cluster]\nname = \"{name}\"\nnodes = [{}]\n[store]\ntype = \"etcd\"\nendpoints = [\"{endpoint}\"]\nlease_ttl_seconds = {lease_ttl_seconds}\n{store_extra}",
        nodes.join(", ")
    )
}

/// A cluster name no other cluster of this process uses, even on a shared
/// etcd: `<prefix><pid>x<n>`.
pub fn unique_cluster_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{prefix}{}x{n}", std::process::id())
}

/// The clock a control script stamps its line with (`date +%s%3N` or
/// `date +%s%N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    Millis,
    Nanos,
}

/// The log every node's control scripts append to, in a temporary
/// directory removed on drop.
pub struct ScriptLog {
    path: std::path::PathBuf,
    stamp: Stamp,
    _dir: tempfile::TempDir,
}

/// One line of a [`ScriptLog`]: `<at> <op> <package> <node> <reason> <token>`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptEntry {
    /// Since the epoch, in the log's [`Stamp`] unit.
    pub at: i128,
    /// `run` or `halt`.
    pub op: String,
    pub package: String,
    pub node: String,
    /// `$VIGIL_REASON`.
    pub reason: String,
    /// `$VIGIL_FENCE_TOKEN`.
    pub token: u64,
}

impl ScriptLog {
    /// A log `scripts.log` in a new temporary directory named `prefix...`.
    pub fn new(prefix: &str, stamp: Stamp) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("temporary dir for the script log");
        Self {
            path: dir.path().join("scripts.log"),
            stamp,
            _dir: dir,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `pkg/run.sh` and `pkg/halt.sh` into `cfg`, each appending its
    /// line; `before_run` is shell run first by `run.sh` (such as a sleep).
    pub fn write_scripts(&self, cfg: &ConfigDir, before_run: &str) {
        let date = match self.stamp {
            Stamp::Millis => "%s%3N",
            Stamp::Nanos => "%s%N",
        };
        for (op, first) in [("run", before_run), ("halt", "")] {
            cfg.script(
                &format!("pkg/{op}.sh"),
                &format!(
                    "#!/bin/sh\n{first}echo \"$(date +{date}) {op} $VIGIL_PACKAGE $VIGIL_NODE $VIGIL_REASON $VIGIL_FENCE_TOKEN\" >> {}\n",
                    self.path.display()
                ),
            );
        }
    }

    /// Every complete line so far, in order.
    pub fn entries(&self) -> Vec<ScriptEntry> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                Some(ScriptEntry {
                    at: f.first()?.parse().ok()?,
                    op: f.get(1)?.to_string(),
                    package: f.get(2)?.to_string(),
                    node: f.get(3)?.to_string(),
                    reason: f.get(4)?.to_string(),
                    token: f.get(5)?.parse().ok()?,
                })
            })
            .collect()
    }
}
