//! The convergence property of the placement engine, as a function that
//! checks it on one snapshot.
//!
//! DESIGN §6: carrying out a plan and planning again gives no further
//! actions, and a package halted to move somewhere is started where the move
//! said, never planned back. [`check_convergence`] checks three things:
//!
//! * **fixpoint**: carrying out every action of the plan and planning again
//!   gives no action;
//! * **no halt/run loop after a partial plan**: after any prefix of the
//!   plan's actions, the next plan does not start a package on a node the
//!   prefix halted it on;
//! * **the coordinator's walk ends**: doing what the daemon does — carry out
//!   the first action, plan again, repeat — reaches a plan with no action
//!   within a bound, and never starts a package on a node it was halted on
//!   during the walk.
//!
//! It is used by the property test (random scenarios from
//! [`super::random_scenario`]) and by `bench/src/bin/convergence.rs`. It does
//! not model failures while carrying out actions (a failed start is an event
//! from outside, not part of a plan).

use std::collections::BTreeSet;
use std::fmt;

use super::engine::plan;
use super::model::{ClusterSnapshot, Evaluate, PackageKind};
use super::plan::{Action, ActionReason, Op, Plan};

/// How a snapshot breaks the convergence property.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvergenceError {
    #[error("carrying out the plan and planning again gives more actions: {}", actions(.again))]
    NotAFixpoint {
        first: Vec<Action>,
        again: Vec<Action>,
    },
    #[error(
        "halt/run loop: {package} was halted on {node} ({}), and the next plan starts it there again ({})",
        actions(.before), actions(.after)
    )]
    PlannedBack {
        package: String,
        node: String,
        /// The actions carried out, ending with the halt.
        before: Vec<Action>,
        /// The plan made after them.
        after: Vec<Action>,
    },
    #[error("the coordinator's walk does not end within {steps} steps: {}", actions(.walk))]
    NoEnd { steps: usize, walk: Vec<Action> },
}

fn actions(list: &[Action]) -> String {
    if list.is_empty() {
        return "none".to_owned();
    }
    let texts: Vec<String> = list.iter().map(Action::to_string).collect();
    texts.join(", ")
}

/// Carries out one action on the snapshot as the daemon records it: a run
/// makes a failover package's only owner the node and consumes an
/// operator's run/move request, a halt removes the node and, unless an
/// operator asked for it, records the node as the one it `left`. A multi-node
/// package's run request is kept: it asks for an instance on every eligible
/// node, not only the first one started (were it consumed by the first
/// start, a package with switching disabled would stop short of the plan). A halt for an
/// `after_start` resource that is down there marks the package failed on
/// that node, as the package manager does (a deferred resource does not gate
/// the start, so without the mark it would start there again). A run forgets
/// the package's `after_start` verdicts on the node: a deferred resource is
/// judged after the start (it often exists only once the package runs), and
/// an unknown verdict does not make a running package leave.
pub fn apply(snapshot: &mut ClusterSnapshot, action: &Action) {
    let spec = snapshot.packages.iter().find(|s| s.name == action.package);
    let failover = spec.is_none_or(|s| s.kind == PackageKind::Failover);
    let deferred_down = action.op == Op::Halt
        && action.reason == ActionReason::ResourceDown
        && spec.is_some_and(|s| {
            s.resources.iter().any(|r| {
                r.evaluate == Evaluate::AfterStart
                    && snapshot.resource(&s.name, &action.node, &r.name) == Some(false)
            })
        });
    if action.op == Op::Run {
        let deferred: Vec<String> = spec
            .iter()
            .flat_map(|s| &s.resources)
            .filter(|r| r.evaluate == Evaluate::AfterStart)
            .map(|r| r.name.clone())
            .collect();
        if let Some(here) = snapshot
            .resource_up
            .get_mut(&action.package)
            .and_then(|m| m.get_mut(&action.node))
        {
            for r in &deferred {
                here.remove(r);
            }
        }
    }
    let state = snapshot.state_mut(&action.package);
    if deferred_down {
        state.failed_on.insert(action.node.clone());
    }
    match action.op {
        Op::Run => {
            if failover {
                state.running_on = vec![action.node.clone()];
                state.run_requested = false;
            } else if !state.running_on.contains(&action.node) {
                state.running_on.push(action.node.clone());
            }
            state.requested_node = None;
            state.left = None;
        }
        Op::Halt => {
            state.running_on.retain(|n| *n != action.node);
            // The package manager records where a package left from unless
            // an operator halted it.
            if action.reason != ActionReason::Admin {
                state.left = Some(action.node.clone());
            }
        }
    }
}

/// Checks the convergence property on one snapshot (see the module doc).
pub fn check_convergence(snapshot: &ClusterSnapshot) -> Result<(), ConvergenceError> {
    let first = plan(snapshot);
    check_fixpoint(snapshot, &first)?;
    check_prefixes(snapshot, &first)?;
    check_walk(snapshot, first)
}

fn check_fixpoint(snapshot: &ClusterSnapshot, first: &Plan) -> Result<(), ConvergenceError> {
    let mut done = snapshot.clone();
    for a in &first.actions {
        apply(&mut done, a);
    }
    let again = plan(&done);
    if again.actions.is_empty() {
        Ok(())
    } else {
        Err(ConvergenceError::NotAFixpoint {
            first: first.actions.clone(),
            again: again.actions,
        })
    }
}

/// The first run in `next` of a package on a node in `halted`.
fn planned_back<'a>(halted: &BTreeSet<(String, String)>, next: &'a Plan) -> Option<&'a Action> {
    next.actions
        .iter()
        .find(|a| a.op == Op::Run && halted.contains(&(a.package.clone(), a.node.clone())))
}

fn check_prefixes(snapshot: &ClusterSnapshot, first: &Plan) -> Result<(), ConvergenceError> {
    let mut state = snapshot.clone();
    let mut halted = BTreeSet::new();
    for (k, a) in first.actions.iter().enumerate() {
        apply(&mut state, a);
        if a.op == Op::Halt {
            halted.insert((a.package.clone(), a.node.clone()));
        }
        if k + 1 == first.actions.len() {
            // The fixpoint check covers the full plan.
            break;
        }
        let next = plan(&state);
        if let Some(back) = planned_back(&halted, &next) {
            return Err(ConvergenceError::PlannedBack {
                package: back.package.clone(),
                node: back.node.clone(),
                before: first.actions[..=k].to_vec(),
                after: next.actions,
            });
        }
    }
    Ok(())
}

fn check_walk(snapshot: &ClusterSnapshot, first: Plan) -> Result<(), ConvergenceError> {
    // Every package may move a few times (failover, then a yield or a
    // dependency), each move two actions; far more than that is a loop.
    let steps = 4 * snapshot.packages.len() * (snapshot.nodes.len() + 1) + 4;
    let mut state = snapshot.clone();
    let mut halted = BTreeSet::new();
    let mut walk: Vec<Action> = Vec::new();
    let mut next = first;
    for _ in 0..steps {
        let Some(a) = next.actions.first().cloned() else {
            return Ok(());
        };
        apply(&mut state, &a);
        if a.op == Op::Halt {
            halted.insert((a.package.clone(), a.node.clone()));
        }
        walk.push(a);
        next = plan(&state);
        if let Some(back) = planned_back(&halted, &next) {
            return Err(ConvergenceError::PlannedBack {
                package: back.package.clone(),
                node: back.node.clone(),
                before: walk,
                after: next.actions,
            });
        }
    }
    if next.actions.is_empty() {
        Ok(())
    } else {
        Err(ConvergenceError::NoEnd { steps, walk })
    }
}

/// A compact, readable rendering of a snapshot for failure reports: one line
/// per node and per package, defaults left out.
pub fn describe(snapshot: &ClusterSnapshot) -> String {
    Described(snapshot).to_string()
}

struct Described<'a>(&'a ClusterSnapshot);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snap = self.0;
        for n in &snap.nodes {
            write!(f, "node {}: {}", n.name, if n.up { "up" } else { "down" })?;
            if !n.switching_enabled {
                write!(f, ", switching off")?;
            }
            writeln!(f)?;
        }
        for p in &snap.packages {
            write!(
                f,
                "package {} {} [{}]",
                p.name,
                p.kind.as_str(),
                p.nodes.join(", ")
            )?;
            if p.kind == PackageKind::Failover {
                write!(
                    f,
                    " {:?} failback {:?}",
                    p.failover_policy, p.failback_policy
                )?;
            }
            if let Some(prio) = p.priority {
                write!(f, " priority {prio}")?;
            }
            if !p.auto_run {
                write!(f, " auto_run off")?;
            }
            if let Some(l) = &p.follow {
                write!(f, " follow {l}")?;
            }
            if !p.avoid.is_empty() {
                write!(f, " avoid [{}]", p.avoid.join(", "))?;
            }
            for d in &p.dependencies {
                write!(
                    f,
                    " dep {} {} {}",
                    d.package,
                    d.condition.as_str(),
                    d.location.as_str()
                )?;
            }
            for r in &p.resources {
                write!(f, " needs {} {:?}", r.name, r.evaluate)?;
                if let Some(per_node) = snap.resource_up.get(&p.name) {
                    let verdicts: Vec<String> = per_node
                        .iter()
                        .filter_map(|(node, m)| {
                            m.get(&r.name)
                                .map(|up| format!("{node}={}", if *up { "up" } else { "down" }))
                        })
                        .collect();
                    write!(f, " ({})", verdicts.join(" "))?;
                }
            }
            let s = snap.state_of(&p.name);
            write!(f, "; running [{}]", s.running_on.join(", "))?;
            if !s.switching_enabled {
                write!(f, " switching off")?;
            }
            if !s.disabled_nodes.is_empty() {
                let off: Vec<&str> = s.disabled_nodes.iter().map(String::as_str).collect();
                write!(f, " disabled_on [{}]", off.join(", "))?;
            }
            if !s.failed_on.is_empty() {
                let failed: Vec<&str> = s.failed_on.iter().map(String::as_str).collect();
                write!(f, " failed_on [{}]", failed.join(", "))?;
            }
            if s.halted_by_admin {
                write!(f, " halted")?;
            }
            if s.run_requested {
                write!(f, " run_requested")?;
            }
            if let Some(n) = &s.requested_node {
                write!(f, " requested {n}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
