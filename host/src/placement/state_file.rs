//! The `vigil simulate --state FILE` model (DESIGN §7) and its conversion to a
//! [`ClusterSnapshot`].
//!
//! ```toml
//! [nodes.node1]
//! state = "up"                                   # up | down
//! resources = { "/net/interfaces/eth0/status" = "up", "/fs/data/used_percent" = 42.0 }
//! [packages.ascs]
//! running_on = ["node1"]
//! ```
//!
//! Beyond DESIGN's keys, a node may say `switching = false`, and a package
//! `switching = false`, `failed_on = [...]` and `halted = true`, so that every
//! input of the engine can be simulated. This module parses text (the caller
//! reads the file) and does not judge resource values: the caller passes a
//! judge (the criteria engine, in the CLI) that says whether a value satisfies
//! a package's requirement.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::model::{ClusterSnapshot, NodeState, PackageKind, PackageSpec, PackageState};

/// Errors in a state file or in its match with the configuration.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("{origin}: {source}")]
    Parse {
        origin: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("state file: node {node} is not a cluster node")]
    UnknownNode { node: String },
    #[error("state file: package {package} is not configured")]
    UnknownPackage { package: String },
    #[error("state file: package {package} runs on {node}, which is not a cluster node")]
    UnknownRunningNode { package: String, node: String },
    #[error("invalid --set {arg}: expected NODE:RESOURCE=VALUE")]
    BadSet { arg: String },
}

/// `state = "up" | "down"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStateWord {
    Up,
    Down,
}

/// A resource value as written: a number or a string (status word).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ResourceValue {
    Number(f64),
    Text(String),
}

impl ResourceValue {
    /// How `--set NODE:RESOURCE=VALUE` reads VALUE: a number when it parses
    /// as one, else a string.
    pub fn from_cli(value: &str) -> Self {
        match value.trim().parse::<f64>() {
            Ok(n) if n.is_finite() => ResourceValue::Number(n),
            _ => ResourceValue::Text(value.to_owned()),
        }
    }
}

impl fmt::Display for ResourceValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResourceValue::Number(n) => write!(f, "{n}"),
            ResourceValue::Text(s) => f.write_str(s),
        }
    }
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub state: NodeStateWord,
    #[serde(default)]
    pub resources: BTreeMap<String, ResourceValue>,
    #[serde(default = "default_true")]
    pub switching: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageEntry {
    #[serde(default)]
    pub running_on: Vec<String>,
    #[serde(default = "default_true")]
    pub switching: bool,
    #[serde(default)]
    pub failed_on: BTreeSet<String>,
    #[serde(default)]
    pub halted: bool,
}

/// A whole state file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeEntry>,
    #[serde(default)]
    pub packages: BTreeMap<String, PackageEntry>,
}

impl StateFile {
    /// Parses state file text; `origin` (usually the path) names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, StateFileError> {
        toml::from_str(text).map_err(|source| StateFileError::Parse {
            origin: origin.to_owned(),
            source,
        })
    }

    /// `--node-down N`.
    pub fn set_node_down(&mut self, node: &str) {
        self.nodes
            .entry(node.to_owned())
            .or_insert_with(|| NodeEntry {
                state: NodeStateWord::Down,
                resources: BTreeMap::new(),
                switching: true,
            })
            .state = NodeStateWord::Down;
    }

    /// `--set NODE:RESOURCE=VALUE`; a node not in the file is added as up.
    pub fn apply_set(&mut self, arg: &str) -> Result<(), StateFileError> {
        let bad = || StateFileError::BadSet {
            arg: arg.to_owned(),
        };
        let (node, rest) = arg.split_once(':').ok_or_else(bad)?;
        let (resource, value) = rest.split_once('=').ok_or_else(bad)?;
        if node.is_empty() || resource.is_empty() {
            return Err(bad());
        }
        self.nodes
            .entry(node.to_owned())
            .or_insert_with(|| NodeEntry {
                state: NodeStateWord::Up,
                resources: BTreeMap::new(),
                switching: true,
            })
            .resources
            .insert(resource.to_owned(), ResourceValue::from_cli(value));
        Ok(())
    }

    /// Builds the engine's snapshot. `cluster_nodes` is the cluster order
    /// from `cluster.toml`; a cluster node missing from the file is down.
    /// `judge(package, resource, value)` says whether `value` satisfies the
    /// package's requirement on `resource`; a resource missing on a node is
    /// not up there.
    pub fn to_snapshot<F>(
        &self,
        cluster_nodes: &[String],
        packages: Vec<PackageSpec>,
        judge: F,
    ) -> Result<ClusterSnapshot, StateFileError>
    where
        F: Fn(&PackageSpec, &str, &ResourceValue) -> bool,
    {
        if let Some(node) = self.nodes.keys().find(|n| !cluster_nodes.contains(n)) {
            return Err(StateFileError::UnknownNode { node: node.clone() });
        }
        let mut snap = ClusterSnapshot {
            nodes: cluster_nodes
                .iter()
                .map(|name| match self.nodes.get(name) {
                    Some(e) => NodeState {
                        name: name.clone(),
                        up: e.state == NodeStateWord::Up,
                        switching_enabled: e.switching,
                    },
                    None => NodeState::down(name),
                })
                .collect(),
            ..ClusterSnapshot::default()
        };
        for (package, entry) in &self.packages {
            if !packages.iter().any(|p| &p.name == package) {
                return Err(StateFileError::UnknownPackage {
                    package: package.clone(),
                });
            }
            if let Some(node) = entry.running_on.iter().find(|n| !cluster_nodes.contains(n)) {
                return Err(StateFileError::UnknownRunningNode {
                    package: package.clone(),
                    node: node.clone(),
                });
            }
            snap.package_states.insert(
                package.clone(),
                PackageState {
                    running_on: entry.running_on.clone(),
                    switching_enabled: entry.switching,
                    failed_on: entry.failed_on.clone(),
                    halted_by_admin: entry.halted,
                    ..PackageState::default()
                },
            );
        }
        for spec in &packages {
            let every_node =
                spec.kind == PackageKind::SystemMultiNode || spec.nodes.iter().any(|n| n == "*");
            for (node, entry) in &self.nodes {
                if !every_node && !spec.nodes.contains(node) {
                    continue;
                }
                for req in &spec.resources {
                    if let Some(value) = entry.resources.get(&req.name) {
                        let up = judge(spec, &req.name, value);
                        snap.set_resource(&spec.name, node, &req.name, up);
                    }
                }
            }
        }
        snap.packages = packages;
        Ok(snap)
    }
}
