//! The placement engine's input: package specs and a cluster snapshot.
//!
//! These types are deliberately independent of `packages.d/*.toml` parsing:
//! the config layer maps its validated model onto them, the daemon fills the
//! snapshot from the cluster store, and `vigil simulate` builds one from a
//! state file ([`super::state_file`]). Nothing here judges resource values;
//! the snapshot carries the already-judged (hysteresis applied) verdicts.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// How many nodes a package runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PackageKind {
    /// One node at a time; moves between the nodes of its list.
    Failover,
    /// Every eligible node of its list.
    MultiNode,
    /// Every eligible node of the cluster; its node list is ignored.
    SystemMultiNode,
}

/// Which eligible node a failover package is placed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverPolicy {
    /// The first eligible node in list order.
    #[default]
    ConfiguredNode,
    /// The eligible node running the fewest packages, ties by list order.
    MinPackageNode,
}

impl PackageKind {
    /// The name used in `packages.d/` (`failover`, `multi_node`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            PackageKind::Failover => "failover",
            PackageKind::MultiNode => "multi_node",
            PackageKind::SystemMultiNode => "system_multi_node",
        }
    }
}

/// Whether a running failover package moves back to an earlier node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailbackPolicy {
    /// Stays where it runs until it must leave or an operator moves it.
    #[default]
    Manual,
    /// Moves back as soon as a node earlier in its list is eligible.
    Automatic,
}

/// When a resource requirement is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Evaluate {
    /// Gates the start: the resource must be up on a node before the package
    /// may start there.
    #[default]
    BeforeStart,
    /// Deferred: does not gate the start; once the package runs, a verdict of
    /// "down" makes it leave the node.
    AfterStart,
}

/// One `[[resource]]` of a package, by name; its criterion lives with the
/// judge that fills [`ClusterSnapshot::resource_up`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRequirement {
    pub name: String,
    #[serde(default)]
    pub evaluate: Evaluate,
}

/// Whether the predecessor must be up or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyCondition {
    Up,
    Down,
}

/// Where, relative to the candidate node, the condition is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyLocation {
    SameNode,
    DifferentNode,
    AnyNode,
    AllNodes,
}

impl DependencyCondition {
    pub fn as_str(self) -> &'static str {
        match self {
            DependencyCondition::Up => "up",
            DependencyCondition::Down => "down",
        }
    }
}

impl DependencyLocation {
    pub fn as_str(self) -> &'static str {
        match self {
            DependencyLocation::SameNode => "same_node",
            DependencyLocation::DifferentNode => "different_node",
            DependencyLocation::AnyNode => "any_node",
            DependencyLocation::AllNodes => "all_nodes",
        }
    }
}

/// One `[[dependency]]`: the package it belongs to (the dependent) may run on
/// a node only while `package` (the predecessor) satisfies the condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub package: String,
    pub condition: DependencyCondition,
    pub location: DependencyLocation,
}

/// Everything about a package that placement needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageSpec {
    pub name: String,
    pub kind: PackageKind,
    /// Ordered by preference; `["*"]` means every cluster node in cluster order.
    pub nodes: Vec<String>,
    #[serde(default)]
    pub failover_policy: FailoverPolicy,
    #[serde(default)]
    pub failback_policy: FailbackPolicy,
    #[serde(default = "default_true")]
    pub auto_run: bool,
    /// Lower is more important; `None` is the least important.
    #[serde(default)]
    pub priority: Option<u32>,
    #[serde(default)]
    pub resources: Vec<ResourceRequirement>,
    #[serde(default)]
    pub dependencies: Vec<Dependency>,
    #[serde(default)]
    pub follow: Option<String>,
    #[serde(default)]
    pub avoid: Vec<String>,
}

fn default_true() -> bool {
    true
}

impl PackageSpec {
    /// A failover package with the defaults of `packages.d/` (configured_node,
    /// manual failback, auto_run, no priority, no requirements).
    pub fn failover(name: &str, nodes: &[&str]) -> Self {
        PackageSpec {
            name: name.to_owned(),
            kind: PackageKind::Failover,
            nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
            failover_policy: FailoverPolicy::ConfiguredNode,
            failback_policy: FailbackPolicy::Manual,
            auto_run: true,
            priority: None,
            resources: Vec::new(),
            dependencies: Vec::new(),
            follow: None,
            avoid: Vec::new(),
        }
    }
}

/// A cluster member as the coordinator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    /// Member of the running cluster (holds its liveness lease).
    pub up: bool,
    /// `vigil node` / `cmmodpkg -n`: when false no package is started here,
    /// but packages already running stay.
    #[serde(default = "default_true")]
    pub switching_enabled: bool,
}

impl NodeState {
    pub fn up(name: &str) -> Self {
        NodeState {
            name: name.to_owned(),
            up: true,
            switching_enabled: true,
        }
    }

    pub fn down(name: &str) -> Self {
        NodeState {
            name: name.to_owned(),
            up: false,
            switching_enabled: true,
        }
    }
}

/// The runtime state of a package; a package without an entry in
/// [`ClusterSnapshot::package_states`] has the [`Default`] state (not running,
/// switching enabled, no failures, not halted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PackageState {
    /// Nodes it runs on now (one for a healthy failover package).
    pub running_on: Vec<String>,
    /// Package switching (`vigil pkg enable|disable`): when false the package
    /// is neither started nor failed over automatically, but keeps running
    /// where it is while that node stays eligible.
    pub switching_enabled: bool,
    /// Nodes where it failed since the last `vigil pkg clear`.
    pub failed_on: BTreeSet<String>,
    /// `vigil pkg disable NAME --node N`: switching is disabled for this
    /// package on these nodes alone; it neither starts nor stays there.
    pub disabled_nodes: BTreeSet<String>,
    /// `vigil pkg halt`: must not run anywhere until run again.
    pub halted_by_admin: bool,
    /// `vigil pkg run`: start it even though `auto_run` or package switching
    /// would not.
    pub run_requested: bool,
    /// `vigil pkg run|move --node N`: place it on this node when eligible
    /// there, ahead of its policy.
    pub requested_node: Option<String>,
    /// The node it last left for a reason other than an operator's halt,
    /// when it has not started since: it is moving (halted, its start
    /// elsewhere still to come), so it may start as a running package could
    /// fail over, even with `auto_run = false`.
    pub left: Option<String>,
}

impl Default for PackageState {
    fn default() -> Self {
        PackageState {
            running_on: Vec::new(),
            switching_enabled: true,
            failed_on: BTreeSet::new(),
            disabled_nodes: BTreeSet::new(),
            halted_by_admin: false,
            run_requested: false,
            requested_node: None,
            left: None,
        }
    }
}

impl PackageState {
    pub fn running_on(nodes: &[&str]) -> Self {
        PackageState {
            running_on: nodes.iter().map(|n| (*n).to_owned()).collect(),
            ..PackageState::default()
        }
    }
}

/// Resource verdicts, per package, per node, per resource name: `true` up,
/// `false` down. A missing entry means "not known to be up": it blocks a
/// `before_start` requirement, but does not make a running package leave for
/// an `after_start` one (only an explicit `false` does).
pub type ResourceVerdicts = BTreeMap<String, BTreeMap<String, BTreeMap<String, bool>>>;

/// Everything the engine looks at, in one value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterSnapshot {
    /// Cluster nodes in cluster order (the order `"*"` expands to).
    pub nodes: Vec<NodeState>,
    pub packages: Vec<PackageSpec>,
    pub package_states: BTreeMap<String, PackageState>,
    /// package → node → resource → up.
    pub resource_up: ResourceVerdicts,
}

impl ClusterSnapshot {
    /// Records the verdict on one requirement of `package` on `node`.
    pub fn set_resource(&mut self, package: &str, node: &str, resource: &str, up: bool) {
        self.resource_up
            .entry(package.to_owned())
            .or_default()
            .entry(node.to_owned())
            .or_default()
            .insert(resource.to_owned(), up);
    }

    /// The verdict on one requirement, `None` when nothing was recorded.
    pub fn resource(&self, package: &str, node: &str, resource: &str) -> Option<bool> {
        self.resource_up
            .get(package)?
            .get(node)?
            .get(resource)
            .copied()
    }

    /// Marks every requirement of every package up on every node; a
    /// convenience for tests and simulations that only care about a few
    /// resources going down.
    pub fn set_all_resources_up(&mut self) {
        let nodes: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        let reqs: Vec<(String, String)> = self
            .packages
            .iter()
            .flat_map(|p| {
                p.resources
                    .iter()
                    .map(move |r| (p.name.clone(), r.name.clone()))
            })
            .collect();
        for (package, resource) in reqs {
            for node in &nodes {
                self.set_resource(&package, node, &resource, true);
            }
        }
    }

    /// The state of a package (the default state when none is recorded).
    pub fn state_of(&self, package: &str) -> PackageState {
        self.package_states
            .get(package)
            .cloned()
            .unwrap_or_default()
    }

    /// Mutable state of a package, created with the default state if absent.
    pub fn state_mut(&mut self, package: &str) -> &mut PackageState {
        self.package_states.entry(package.to_owned()).or_default()
    }

    /// Marks a node up or down.
    pub fn set_node_up(&mut self, node: &str, up: bool) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.name == node) {
            n.up = up;
        }
    }
}
