//! The placement engine's output: target placement, ordered actions, and an
//! explanation per package.
//!
//! Everything here is plain data with `Display` for `vigil why` and
//! `vigil simulate`, and serde for `--json`; nothing here decides anything.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::model::{DependencyCondition, DependencyLocation, FailoverPolicy, PackageKind};

/// Whether an action starts or stops a package on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Run,
    Halt,
}

/// Why an action is taken; `Display` gives the word control scripts see in
/// `VIGIL_REASON`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionReason {
    /// Started from "not running".
    Startup,
    /// Its node went down or it failed there.
    Failover,
    /// Back to a node earlier in its list (`failback_policy = "automatic"`).
    Failback,
    /// A resource it requires went down on its node.
    ResourceDown,
    /// It avoids a package that needed its node (it yields), or it shares a
    /// node with a package it avoids (or that avoids it).
    Avoid,
    /// A higher priority package took its node.
    Displaced,
    /// A dependency stopped holding on its node.
    Dependency,
    /// An operator asked for it (`vigil pkg run|halt|move`).
    Admin,
    /// Its node was removed from its node list.
    Reconfigured,
    /// A failover package found running on more than one node keeps one.
    Duplicate,
}

impl ActionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionReason::Startup => "startup",
            ActionReason::Failover => "failover",
            ActionReason::Failback => "failback",
            ActionReason::ResourceDown => "resource_down",
            ActionReason::Avoid => "avoid",
            ActionReason::Displaced => "displaced",
            ActionReason::Dependency => "dependency",
            ActionReason::Admin => "admin",
            ActionReason::Reconfigured => "reconfigured",
            ActionReason::Duplicate => "duplicate",
        }
    }
}

impl fmt::Display for ActionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step for a node agent: run or halt `package` on `node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    pub op: Op,
    pub package: String,
    pub node: String,
    pub reason: ActionReason,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Op::Run => "run",
            Op::Halt => "halt",
        };
        write!(
            f,
            "{op} {} on {} ({})",
            self.package, self.node, self.reason
        )
    }
}

/// A rule that makes a node ineligible for a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Rejection {
    /// Named in the node list or in `running_on`, but not a cluster node.
    UnknownNode,
    NodeDown,
    /// Not in the package's node list (an old node after a config change, or
    /// an operator's `--node`).
    NotListed,
    /// Switching is disabled for this node; nothing new starts there.
    NodeSwitchingDisabled,
    /// Switching is disabled for this package on this node
    /// (`vigil pkg disable NAME --node N`): it neither starts nor stays there.
    PackageDisabledOnNode,
    /// A `before_start` requirement is not up there.
    ResourceNotUp {
        resource: String,
    },
    /// An `after_start` requirement went down there while the package ran.
    ResourceDown {
        resource: String,
    },
    DependencyNotMet {
        package: String,
        condition: DependencyCondition,
        location: DependencyLocation,
    },
    /// This package avoids `package`, which runs there.
    Avoids {
        package: String,
    },
    /// `package`, which runs there, avoids this package.
    AvoidedBy {
        package: String,
    },
    /// This package runs there and avoids `package`, which was placed first
    /// and needed the node: this package yields (moves or stops).
    Yields {
        package: String,
    },
    /// `package` (placed earlier, being more important) took the node, and
    /// it avoids this package.
    DisplacedBy {
        package: String,
    },
    /// It failed there since the last `vigil pkg clear`.
    FailedHere,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::UnknownNode => f.write_str("not a cluster node"),
            Rejection::NodeDown => f.write_str("node is down"),
            Rejection::NotListed => f.write_str("not in the package's node list"),
            Rejection::NodeSwitchingDisabled => f.write_str("switching is disabled on the node"),
            Rejection::PackageDisabledOnNode => f.write_str(
                "switching is disabled for the package on this node (`vigil pkg enable NAME --node N`)",
            ),
            Rejection::ResourceNotUp { resource } => write!(f, "resource {resource} is not up"),
            Rejection::ResourceDown { resource } => {
                write!(f, "resource {resource} went down (after_start)")
            }
            Rejection::DependencyNotMet {
                package,
                condition,
                location,
            } => {
                let condition = match condition {
                    DependencyCondition::Up => "up",
                    DependencyCondition::Down => "down",
                };
                let location = match location {
                    DependencyLocation::SameNode => "on this node",
                    DependencyLocation::DifferentNode => "on a different node",
                    DependencyLocation::AnyNode => "on any node",
                    DependencyLocation::AllNodes => "on all nodes",
                };
                write!(
                    f,
                    "dependency not met: {package} must be {condition} {location}"
                )
            }
            Rejection::Avoids { package } => write!(f, "avoids {package}, which runs there"),
            Rejection::AvoidedBy { package } => {
                write!(f, "{package} runs there and avoids this package")
            }
            Rejection::Yields { package } => {
                write!(f, "avoids {package}, which needed this node")
            }
            Rejection::DisplacedBy { package } => {
                write!(f, "displaced by higher priority package {package}")
            }
            Rejection::FailedHere => f.write_str("failed there since the last `vigil pkg clear`"),
        }
    }
}

/// The verdict on one node for one package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeVerdict {
    pub node: String,
    /// Every rule that rejects the node; empty means eligible.
    pub rejections: Vec<Rejection>,
}

impl NodeVerdict {
    pub fn eligible(&self) -> bool {
        self.rejections.is_empty()
    }
}

/// Why a failover package went to (or stayed on) the node it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Choice {
    /// Already running there and still eligible.
    Sticky,
    /// `configured_node`: first eligible node in list order.
    FirstEligible,
    /// `min_package_node`: fewest packages (`count` placed there before
    /// this one).
    FewestPackages { count: u32 },
    /// `min_package_node` with automatic failback: its primary node (the
    /// first listed), where failback would move it anyway.
    PrimaryNode,
    /// It follows `leader`, which runs there.
    Follows { leader: String },
    /// It follows `leader`, which avoids it: it takes the leader's node and
    /// the leader moves away.
    Handover { leader: String },
    /// Automatic failback: to an earlier node of its list
    /// (`configured_node`) or to its primary node (`min_package_node`).
    Failback,
    /// An operator's `--node`.
    Requested,
    /// Multi-node packages run on every eligible node.
    EveryEligibleNode,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Choice::Sticky => f.write_str("already running there (sticky)"),
            Choice::FirstEligible => f.write_str("first eligible node in list order"),
            Choice::FewestPackages { count } => {
                write!(f, "eligible node running the fewest packages ({count})")
            }
            Choice::PrimaryNode => {
                f.write_str("its primary node (min_package_node with automatic failback)")
            }
            Choice::Follows { leader } => write!(f, "follows {leader}, which runs there"),
            Choice::Handover { leader } => write!(
                f,
                "takes over the node of {leader}, which it follows; {leader} avoids it and moves away"
            ),
            Choice::Failback => f.write_str("failback to an earlier node of its list"),
            Choice::Requested => f.write_str("requested by an operator"),
            Choice::EveryEligibleNode => f.write_str("runs on every eligible node"),
        }
    }
}

/// Why a package is not started at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Blocked {
    /// `vigil pkg halt`.
    HaltedByAdmin,
    /// `auto_run = false` and not running.
    AutoRunOff,
    /// Package switching is disabled and it is not running where it may stay.
    SwitchingDisabled,
    /// It should run, but no node is eligible.
    NoEligibleNode,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Blocked::HaltedByAdmin => "halted by an operator (`vigil pkg run` starts it again)",
            Blocked::AutoRunOff => "auto_run is off and it is not running",
            Blocked::SwitchingDisabled => "package switching is disabled",
            Blocked::NoEligibleNode => "no eligible node",
        })
    }
}

/// What `vigil why PACKAGE` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub package: String,
    pub kind: PackageKind,
    pub failover_policy: FailoverPolicy,
    pub priority: Option<u32>,
    pub running_on: Vec<String>,
    pub placed_on: Vec<String>,
    /// Its node list in order (every cluster node for system_multi_node),
    /// then current or requested nodes outside that list.
    pub nodes: Vec<NodeVerdict>,
    /// Why it went where it did (`None` when it runs nowhere).
    pub choice: Option<Choice>,
    /// Why it runs nowhere, when it does.
    pub blocked: Option<Blocked>,
}

fn node_list(nodes: &[String], empty: &str) -> String {
    if nodes.is_empty() {
        empty.to_owned()
    } else {
        nodes.join(", ")
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            PackageKind::Failover => match self.failover_policy {
                FailoverPolicy::ConfiguredNode => "failover, configured_node",
                FailoverPolicy::MinPackageNode => "failover, min_package_node",
            },
            PackageKind::MultiNode => "multi_node",
            PackageKind::SystemMultiNode => "system_multi_node",
        };
        write!(f, "{} ({kind}", self.package)?;
        if let Some(p) = self.priority {
            write!(f, ", priority {p}")?;
        }
        writeln!(
            f,
            "): running: {}; target: {}",
            node_list(&self.running_on, "none"),
            node_list(&self.placed_on, "none")
        )?;
        if let Some(choice) = &self.choice {
            writeln!(f, "  chosen: {choice}")?;
        }
        if let Some(blocked) = &self.blocked {
            writeln!(f, "  not running: {blocked}")?;
        }
        // A yield (the avoider gives way) gets its own line: it is the one
        // move that no rule about the package itself explains.
        for v in self
            .nodes
            .iter()
            .filter(|v| !self.placed_on.contains(&v.node))
        {
            for r in &v.rejections {
                if let Rejection::Yields { package } = r {
                    let moved = if self.placed_on.is_empty() {
                        "stopped on"
                    } else {
                        "moved from"
                    };
                    writeln!(
                        f,
                        "  {}: {moved} {}: avoids {package}, which needed {}",
                        self.package, v.node, v.node
                    )?;
                }
            }
        }
        for v in &self.nodes {
            let placed = if self.placed_on.contains(&v.node) {
                " (placed here)"
            } else {
                ""
            };
            if v.eligible() {
                writeln!(f, "  {}: eligible{placed}", v.node)?;
            } else {
                let rules: Vec<String> = v.rejections.iter().map(|r| r.to_string()).collect();
                writeln!(
                    f,
                    "  {}: not eligible{placed}: {}",
                    v.node,
                    rules.join("; ")
                )?;
            }
        }
        Ok(())
    }
}

/// The engine's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Every package → the nodes it should run on (empty: not running).
    pub placement: BTreeMap<String, Vec<String>>,
    /// In execution order: a node agent may run them one after the other.
    pub actions: Vec<Action>,
    pub explanations: BTreeMap<String, Explanation>,
}

impl Plan {
    /// The `vigil simulate --json` shape of DESIGN §7: a failover package maps
    /// to its node or null, a multi-node package to a list.
    pub fn simulate_json(&self) -> serde_json::Value {
        let placement: serde_json::Map<String, serde_json::Value> = self
            .placement
            .iter()
            .map(|(pkg, nodes)| {
                let failover = self
                    .explanations
                    .get(pkg)
                    .is_none_or(|e| e.kind == PackageKind::Failover);
                let value = if failover {
                    nodes
                        .first()
                        .map_or(serde_json::Value::Null, |n| n.clone().into())
                } else {
                    nodes.clone().into()
                };
                (pkg.clone(), value)
            })
            .collect();
        serde_json::json!({ "placement": placement, "actions": self.actions })
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "placement:")?;
        for (pkg, nodes) in &self.placement {
            writeln!(f, "  {pkg}: {}", node_list(nodes, "nowhere"))?;
        }
        writeln!(f, "actions:")?;
        if self.actions.is_empty() {
            writeln!(f, "  none")?;
        }
        for a in &self.actions {
            writeln!(f, "  {a}")?;
        }
        Ok(())
    }
}
