//! The placement engine: which package runs on which node, and why.
//!
//! A pure function from a [`ClusterSnapshot`] (nodes, package specs, package
//! states, judged resource verdicts) to a [`Plan`] (target placement, ordered
//! run/halt actions, an [`Explanation`] per package). It powers the daemon's
//! coordinator, `vigil simulate` and `vigil why`. It deliberately does no
//! I/O, reads no clock, spawns nothing and draws no random numbers; it does
//! not parse `packages.d/` (the config layer maps its model onto
//! [`PackageSpec`]) and does not judge resource values (the registry's
//! criteria and hysteresis do, and hand in verdicts). Semantics and action
//! ordering are described in `docs/placement.md`.

mod convergence;
mod engine;
mod model;
mod plan;
pub mod state_file;
mod synthetic;
#[cfg(test)]
mod tests;

pub use convergence::{ConvergenceError, apply, check_convergence, describe};
pub use engine::plan;
pub use model::{
    ClusterSnapshot, Dependency, DependencyCondition, DependencyLocation, Evaluate, FailbackPolicy,
    FailoverPolicy, NodeState, PackageKind, PackageSpec, PackageState, ResourceRequirement,
    ResourceVerdicts,
};
pub use plan::{
    Action, ActionReason, Blocked, Choice, Explanation, NodeVerdict, Op, Plan, Rejection,
};
pub use synthetic::{
    SYNTHETIC_RESOURCE, random_scenario, random_scenario_choices, random_scenario_from_seed,
    synthetic_cluster,
};
