//! The coordinator's decisions: what this node does next, from facts.
//!
//! Pure, like the placement engine it drives: the store as this node sees
//! it, what is under way here, the resource verdicts and the lease's health
//! go in; a list of [`Effect`]s comes out — record writes (each a
//! compare-and-swap on the revision it was decided from) and what follows
//! them (run or halt a package here), or a halt that touches no record. No
//! I/O, no clock, no channel: the manager gathers the facts, calls
//! [`decide`], and carries the effects out; a write that lost its
//! compare-and-swap is simply decided again from newer facts.
//!
//! In order, each step only when the ones before it asked for nothing:
//!
//! 1. a copy running here whose ownership moved to another node (this host
//!    was frozen or cut off) is halted without touching the record;
//! 2. a record saying this node runs (or starts, or halts) a package that
//!    does not run here — an attempt abandoned after a store error, an
//!    outcome that could not be recorded — is set straight;
//! 3. the first live node in cluster order records that gone owners (their
//!    lease expired, so their guard halted what ran there) run nothing, and
//!    deletes the records of packages the applied set dropped once they
//!    run nowhere;
//! 4. what must stop now is halted here, all at once: failed services, a
//!    drained node, every package when the lease is in doubt (and then
//!    nothing is started), packages the applied set dropped, and packages
//!    whose definition of what runs changed (to run again here);
//! 5. otherwise the placement engine plans, and every action of this node
//!    that waits for nothing ([`order`](super::order)) is taken, up to the
//!    room left under `max_parallel_actions` — a required resource down
//!    here halts at once, whatever else is under way and whatever room is
//!    left.
//!
//! Maintenance (DESIGN §5) holds back every run and halt of a package in
//! maintenance, and every run and halt on a node in maintenance, at steps
//! 4 and 5: each becomes an [`Effect::Withheld`] saying what would have
//! happened, and does not count as a step asking for something. A node in
//! maintenance is not eligible for new starts (as with switching disabled
//! on it). The safety halts are never held back: a copy whose ownership
//! moved (step 1) and everything when the lease is in doubt.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::lifecycle::Reason;
use crate::placement::{
    self, ActionReason, ClusterSnapshot, NodeState as PlacementNode, Op, PackageKind, PackageSpec,
    ResourceVerdicts,
};
use crate::store::{NodeState, PackageState, PackageUpdate, Revision, Snapshot};

/// Everything a decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// This node.
    pub node: &'a str,
    /// `cluster.nodes`, in order.
    pub cluster_nodes: &'a [String],
    pub packages: &'a [PackageSpec],
    /// The store as this node last saw it.
    pub store: &'a Snapshot,
    /// This node's judgement of each package's required resources, per node
    /// (package → node → resource → up); absent means no verdict.
    pub verdicts: &'a ResourceVerdicts,
    /// Packages with a run or halt under way here.
    pub in_flight: &'a BTreeSet<String>,
    /// Failover packages recorded as starting here, waiting for their permit.
    pub claiming: &'a BTreeSet<String>,
    /// What runs here, as far as this node knows.
    pub running_here: &'a BTreeSet<String>,
    /// Packages still being re-adopted after a host restart.
    pub adopting: &'a BTreeSet<String>,
    /// Service failures waiting for their halt: package → why.
    pub failures: &'a BTreeMap<String, String>,
    /// Packages whose `after_start` resource went down here: package → why.
    /// Such a halt fails the package here (Serviceguard's deferred
    /// resources), instead of letting it flap.
    pub deferred_down: &'a BTreeMap<String, String>,
    /// Packages whose old copy here the guard is still halting.
    pub guard_halting: &'a BTreeSet<String>,
    /// Packages running here from a definition that the applied package
    /// set has since changed in what runs (run, halt, services, parts):
    /// halted here and run again with the new one (`vigil apply`).
    pub redefined: &'a BTreeSet<String>,
    /// Packages the applied package set no longer has: halted where they
    /// run, and their records deleted once they run nowhere.
    pub retired: &'a BTreeSet<String>,
    /// This node's lease might expire within the safety margin.
    pub lease_in_doubt: bool,
    /// `[store] max_parallel_actions`.
    pub max_parallel: usize,
}

/// Something for the manager to carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Halt the copy running here, leaving the record alone: it belongs to
    /// the node that took the package over.
    HaltUnrecorded { package: String, reason: Reason },
    /// Write a record, then hand on what follows.
    Write(Prepared),
    /// Maintenance holds this back: nothing is done; `would` says what
    /// would have happened (`would halt on node1: resource down`).
    Withheld { package: String, would: String },
    /// Delete the record of a retired package that runs nowhere (a
    /// compare-and-swap on `revision`).
    DeleteRecord { package: String, revision: Revision },
}

/// A record write decided from the record at `revision`, and what follows
/// it once it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub package: String,
    pub revision: Revision,
    pub update: PackageUpdate,
    pub then: AfterWrite,
}

/// What is handed to the agent once the record is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterWrite {
    /// Only the record changes.
    Nothing,
    /// `then_fail`: once halted, the package is recorded as failed here
    /// for this reason.
    Halt {
        reason: Reason,
        then_fail: Option<String>,
    },
    /// `failover`: a failover package, which needs its run permit first.
    Run { reason: Reason, failover: bool },
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Effect::HaltUnrecorded { package, reason } => {
                write!(f, "halt {package} here ({reason}), record untouched")
            }
            Effect::Withheld { package, would } => {
                write!(f, "withhold {package} (maintenance): {would}")
            }
            Effect::DeleteRecord { package, .. } => write!(f, "delete the record of {package}"),
            Effect::Write(p) => {
                let u = &p.update;
                write!(
                    f,
                    "write {}: {} on [{}]",
                    p.package,
                    u.state.as_str(),
                    u.owners.join(", ")
                )?;
                if !u.failed_on.is_empty() {
                    let failed: Vec<&str> = u.failed_on.iter().map(String::as_str).collect();
                    write!(f, ", failed on [{}]", failed.join(", "))?;
                }
                if let Some(left) = &u.left {
                    write!(f, ", left {left}")?;
                }
                write!(f, " \"{}\"", u.reason)?;
                match &p.then {
                    AfterWrite::Nothing => Ok(()),
                    AfterWrite::Halt {
                        reason,
                        then_fail: None,
                    } => write!(f, "; then halt ({reason})"),
                    AfterWrite::Halt {
                        reason,
                        then_fail: Some(why),
                    } => write!(f, "; then halt ({reason}) and fail: {why}"),
                    &AfterWrite::Run { reason, failover } => write!(
                        f,
                        "; then {} ({reason})",
                        if failover { "claim and run" } else { "run" }
                    ),
                }
            }
        }
    }
}

/// What this node does next; see the module documentation for the steps.
pub fn decide(facts: &Facts<'_>) -> Vec<Effect> {
    let mut effects = halt_lost_copies(facts);
    if let Some(fix) = correct_abandoned(facts) {
        effects.push(fix);
        return effects;
    }
    let gone = record_gone_owners(facts);
    if !gone.is_empty() {
        effects.extend(gone);
        return effects;
    }
    effects.extend(delete_retired(facts));
    let (urgent, held) = hold_back(facts, urgent_halts(facts));
    effects.extend(held);
    if facts.lease_in_doubt || !urgent.is_empty() {
        effects.extend(urgent);
        return effects;
    }
    effects.extend(planned(facts));
    effects
}

/// Is `package` in maintenance, or `node`? Then vigil takes no action for
/// the package there (DESIGN §5).
pub fn in_maintenance(store: &Snapshot, package: &str, node: &str) -> bool {
    store
        .packages
        .get(package)
        .is_some_and(|r| r.value.admin.maintenance)
        || node_in_maintenance(store, node)
}

/// Is anything in maintenance at all?
pub fn any_maintenance(store: &Snapshot) -> bool {
    store.packages.values().any(|r| r.value.admin.maintenance)
        || store.nodes.values().any(|n| n.value.maintenance)
}

/// `vigil node maintenance NAME on`.
pub fn node_in_maintenance(store: &Snapshot, node: &str) -> bool {
    store.nodes.get(node).is_some_and(|n| n.value.maintenance)
}

/// What would have happened: `would halt on node1: resource down`.
fn would(op: &str, node: &str, reason: Reason) -> String {
    format!(
        "would {op} on {node}: {}",
        reason.as_str().replace('_', " ")
    )
}

/// Splits the runs and halts maintenance holds back from those it lets
/// through. Only a halt for a lease in doubt is never held back.
fn hold_back(facts: &Facts<'_>, effects: Vec<Effect>) -> (Vec<Effect>, Vec<Effect>) {
    let mut held = Vec::new();
    let mut through = Vec::new();
    for effect in effects {
        let Effect::Write(Prepared { package, then, .. }) = &effect else {
            through.push(effect);
            continue;
        };
        let op = match then {
            AfterWrite::Halt { reason, .. } if *reason != Reason::LeaseLost => {
                Some(("halt", *reason))
            }
            &AfterWrite::Run { reason, .. } => Some(("run", reason)),
            _ => None,
        };
        match op {
            Some((op, reason)) if in_maintenance(facts.store, package, facts.node) => {
                held.push(Effect::Withheld {
                    package: package.clone(),
                    would: would(op, facts.node, reason),
                });
            }
            _ => through.push(effect),
        }
    }
    (through, held)
}

/// What maintenance holds back now, package → what would have happened,
/// on every node as far as this one can tell (its plan, with the resource
/// states the others published, and its own service failures): shown by
/// `vigil status` and `vigil why`.
pub fn withheld(facts: &Facts<'_>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    // The common case costs no plan.
    let any = facts
        .store
        .packages
        .values()
        .any(|r| r.value.admin.maintenance)
        || facts.store.nodes.values().any(|n| n.value.maintenance);
    if !any {
        return out;
    }
    for package in facts.failures.keys() {
        if in_maintenance(facts.store, package, facts.node) {
            out.insert(
                package.clone(),
                would("halt", facts.node, Reason::ServiceFailed),
            );
        }
    }
    let plan = placement::plan(&placement_input(facts));
    for action in &plan.actions {
        if in_maintenance(facts.store, &action.package, &action.node) {
            let op = match action.op {
                Op::Run => "run",
                Op::Halt => "halt",
            };
            out.entry(action.package.clone())
                .or_insert_with(|| would(op, &action.node, lifecycle_reason(action.reason)));
        }
    }
    out
}

/// The placement engine's view of the cluster in `facts`.
pub fn placement_input(facts: &Facts<'_>) -> ClusterSnapshot {
    let store = facts.store;
    let mut snap = ClusterSnapshot {
        nodes: facts
            .cluster_nodes
            .iter()
            .map(|n| PlacementNode {
                name: n.clone(),
                up: store
                    .nodes
                    .get(n)
                    .is_some_and(|r| r.value.state == NodeState::Up),
                switching_enabled: !node_in_maintenance(store, n),
            })
            .collect(),
        packages: facts.packages.to_vec(),
        resource_up: facts.verdicts.clone(),
        ..ClusterSnapshot::default()
    };
    for spec in facts.packages {
        let state = snap.state_mut(&spec.name);
        let Some(record) = store.packages.get(&spec.name) else {
            continue;
        };
        let r = &record.value;
        if matches!(
            r.state,
            PackageState::Up | PackageState::Starting | PackageState::Halting
        ) {
            state.running_on = r.owners.clone();
        }
        state.switching_enabled = r.switching;
        state.failed_on = r.failed_on.clone();
        state.disabled_nodes = r.disabled_nodes.clone();
        state.left = r.left.clone();
        state.halted_by_admin = r.admin.halted;
        state.run_requested = r.admin.run;
        state.requested_node = r.admin.node.clone();
    }
    snap
}

/// Step 1.
fn halt_lost_copies(facts: &Facts<'_>) -> Vec<Effect> {
    facts
        .running_here
        .iter()
        .filter(|p| {
            !facts.in_flight.contains(*p)
                && facts
                    .store
                    .packages
                    .get(*p)
                    .is_some_and(|r| !r.value.owners.iter().any(|o| o == facts.node))
        })
        .map(|p| Effect::HaltUnrecorded {
            package: p.clone(),
            reason: Reason::LostOwnership,
        })
        .collect()
}

/// Step 2: a record naming this node an owner of a package that does not
/// run here — a start or halt abandoned after a store error, or one whose
/// outcome could not be recorded (etcd was out while this node halted
/// everything for its lease) — is set straight, or the other nodes would
/// wait for ever for this one to halt it.
fn correct_abandoned(facts: &Facts<'_>) -> Option<Effect> {
    let record = facts.store.packages.values().find(|r| {
        let r = &r.value;
        matches!(
            r.state,
            PackageState::Up | PackageState::Starting | PackageState::Halting
        ) && r.owners.iter().any(|o| o == facts.node)
            && !facts.running_here.contains(&r.name)
            && !facts.adopting.contains(&r.name)
            && !facts.in_flight.contains(&r.name)
            && !facts.claiming.contains(&r.name)
    })?;
    let mut update = PackageUpdate::from(&record.value);
    update.reason = if record.value.state == PackageState::Up {
        format!(
            "not running on {} (its start or halt was not recorded)",
            facts.node
        )
    } else {
        format!("start or halt on {} abandoned", facts.node)
    };
    update.owners.retain(|o| o != facts.node);
    // A multi-node package still runs on its other owners.
    update.state = if update.owners.is_empty() {
        PackageState::Down
    } else {
        PackageState::Up
    };
    Some(Effect::Write(Prepared {
        package: record.value.name.clone(),
        revision: record.mod_revision,
        update,
        then: AfterWrite::Nothing,
    }))
}

/// Step 3: done by the first live node in cluster order, so that one node
/// writes each such record.
fn record_gone_owners(facts: &Facts<'_>) -> Vec<Effect> {
    let store = facts.store;
    let live = |n: &String| store.nodes.contains_key(n);
    let janitor = facts.cluster_nodes.iter().find(|n| live(n));
    if janitor.is_none_or(|n| n != facts.node) {
        return Vec::new();
    }
    store
        .packages
        .values()
        .filter(|r| {
            matches!(
                r.value.state,
                PackageState::Up | PackageState::Starting | PackageState::Halting
            ) && r.value.owners.iter().any(|o| !live(o))
        })
        .map(|record| {
            let mut update = PackageUpdate::from(&record.value);
            let gone: Vec<String> = update.owners.iter().filter(|o| !live(o)).cloned().collect();
            update.owners.retain(live);
            if update.owners.is_empty() {
                update.state = PackageState::Down;
                update.left = gone.first().cloned();
                update.reason = format!("its node {} is gone", gone.join(", "));
            }
            Effect::Write(Prepared {
                package: record.value.name.clone(),
                revision: record.mod_revision,
                update,
                then: AfterWrite::Nothing,
            })
        })
        .collect()
}

/// Step 3, too: the janitor deletes the records of retired packages that
/// run nowhere (a failed halt keeps its owner, and so its record).
fn delete_retired(facts: &Facts<'_>) -> Vec<Effect> {
    let store = facts.store;
    let janitor = facts
        .cluster_nodes
        .iter()
        .find(|n| store.nodes.contains_key(*n));
    if janitor.is_none_or(|n| n != facts.node) {
        return Vec::new();
    }
    facts
        .retired
        .iter()
        .filter_map(|p| store.packages.get(p))
        .filter(|r| {
            r.value.owners.is_empty()
                && matches!(r.value.state, PackageState::Down | PackageState::Failed)
        })
        .map(|r| Effect::DeleteRecord {
            package: r.value.name.clone(),
            revision: r.mod_revision,
        })
        .collect()
}

/// Step 4.
fn urgent_halts(facts: &Facts<'_>) -> Vec<Effect> {
    let here_halted = facts
        .store
        .nodes
        .get(facts.node)
        .is_some_and(|n| n.value.state == NodeState::Halted);
    let all = |reason: Reason| {
        facts
            .packages
            .iter()
            .map(move |p| (p.name.as_str(), reason))
    };
    let mut halted = BTreeSet::new();
    let mut effects = Vec::new();
    let candidates = facts
        .failures
        .keys()
        .map(|p| (p.as_str(), Reason::ServiceFailed))
        .chain(all(Reason::NodeHalt).filter(|_| here_halted))
        .chain(all(Reason::LeaseLost).filter(|_| facts.lease_in_doubt))
        .chain(
            facts
                .retired
                .iter()
                .chain(facts.redefined)
                .filter(|p| facts.running_here.contains(*p))
                .map(|p| (p.as_str(), Reason::Reconfigured)),
        );
    for (package, reason) in candidates {
        let owned_here = facts.store.packages.get(package).is_some_and(|r| {
            r.value.owners.iter().any(|o| o == facts.node) && r.value.state != PackageState::Failed
        });
        if owned_here && !facts.in_flight.contains(package) && halted.insert(package) {
            let failure = facts.failures.get(package).cloned();
            let mut halt = prepare_halt(facts.store, facts.node, package, reason, failure);
            // A failover package halted to take its new definition comes
            // back here, as an operator's move would, not wherever
            // placement would put it from scratch.
            let failover = facts
                .packages
                .iter()
                .any(|p| p.name == package && p.kind == PackageKind::Failover);
            if let Some(h) = halt.as_mut().filter(|_| {
                reason == Reason::Reconfigured && failover && facts.redefined.contains(package)
            }) {
                h.update.admin.run = true;
                h.update.admin.node = Some(facts.node.to_owned());
            }
            effects.extend(halt.map(Effect::Write));
        }
    }
    effects
}

/// Step 5.
fn planned(facts: &Facts<'_>) -> Vec<Effect> {
    let plan = placement::plan(&placement_input(facts));
    let store = facts.store;
    // A package being started or halted anywhere holds back the actions
    // that depend on it; one whose owners are all gone is not busy (no one
    // will finish that start), it is simply moved.
    let busy: BTreeSet<String> = store
        .packages
        .values()
        .filter(|r| {
            matches!(
                r.value.state,
                PackageState::Starting | PackageState::Halting
            ) && r.value.owners.iter().any(|o| store.nodes.contains_key(o))
        })
        .map(|r| r.value.name.clone())
        .chain(facts.in_flight.iter().cloned())
        .chain(facts.claiming.iter().cloned())
        .collect();
    let ready = super::order::ready(&plan.actions, facts.packages, &busy);
    let mine = |action: &&placement::Action| {
        action.node == facts.node
            && !facts.in_flight.contains(&action.package)
            && !facts.claiming.contains(&action.package)
    };
    let held = |action: &placement::Action| in_maintenance(store, &action.package, facts.node);
    let free = |action: &&placement::Action| mine(action) && !held(action);
    let mut withheld: Vec<Effect> = Vec::new();
    for action in plan.actions.iter().filter(mine).filter(|a| held(a)) {
        let seen = withheld
            .iter()
            .any(|w| matches!(w, Effect::Withheld { package, .. } if *package == action.package));
        if !seen {
            let op = match action.op {
                Op::Run => "run",
                Op::Halt => "halt",
            };
            withheld.push(Effect::Withheld {
                package: action.package.clone(),
                would: would(op, facts.node, lifecycle_reason(action.reason)),
            });
        }
    }
    // The local fast path: a package whose required resource went down
    // here halts now, whatever else is under way or waiting, and whether
    // or not max_parallel_actions leaves room.
    let fast: Vec<&placement::Action> = plan
        .actions
        .iter()
        .filter(|a| a.op == Op::Halt && a.reason == ActionReason::ResourceDown)
        .filter(free)
        .collect();
    let room = facts
        .max_parallel
        .saturating_sub(facts.in_flight.len() + facts.claiming.len() + fast.len());
    let mut rest: Vec<&placement::Action> = Vec::new();
    for action in ready.into_iter().filter(free) {
        let taken = |c: &&placement::Action| c.package == action.package;
        if !fast.iter().any(taken) && !rest.iter().any(taken) {
            rest.push(action);
        }
    }
    withheld
        .into_iter()
        .chain(
            fast.into_iter()
                .chain(rest.into_iter().take(room))
                .filter_map(|action| prepare(facts, action)),
        )
        .collect()
}

/// The record write that carries out one action of this node's plan, or
/// `None` when it cannot be carried out now.
fn prepare(facts: &Facts<'_>, action: &placement::Action) -> Option<Effect> {
    let store = facts.store;
    let record = store.packages.get(&action.package)?;
    let mut reason = lifecycle_reason(action.reason);
    // A package that left another node because something failed there
    // fails over here, even though no node runs it at this moment.
    let left_elsewhere = record.value.left.as_ref().is_some_and(|n| n != facts.node);
    if action.op == Op::Run && action.reason == ActionReason::Startup && left_elsewhere {
        reason = Reason::Failover;
    }
    if action.op == Op::Halt {
        let deferred = (action.reason == ActionReason::ResourceDown)
            .then(|| facts.deferred_down.get(&action.package).cloned())
            .flatten();
        return prepare_halt(facts.store, facts.node, &action.package, reason, deferred)
            .map(Effect::Write);
    }
    if facts.guard_halting.contains(&action.package) {
        return None;
    }
    let failover = facts
        .packages
        .iter()
        .find(|p| p.name == action.package)
        .is_some_and(|p| p.kind == PackageKind::Failover);
    // A failover package is taken over only from owners that are gone; a
    // live owner halts it first (its next step does), so two nodes never
    // both believe they own it. (A halted node is still there and halts
    // its packages itself; only a node whose record is gone — its lease
    // expired — has nothing left to halt.)
    let live_owner = record
        .value
        .owners
        .iter()
        .any(|o| o != facts.node && store.nodes.contains_key(o));
    if failover && live_owner {
        return None;
    }
    let mut update = PackageUpdate::from(&record.value);
    update.state = PackageState::Starting;
    // A failover package has one owner; a multi-node one gains this node.
    if failover {
        update.owners = vec![facts.node.to_owned()];
    } else if !update.owners.iter().any(|o| o == facts.node) {
        update.owners.push(facts.node.to_owned());
    }
    update.reason = format!("starting on {} ({reason})", facts.node);
    // An operator's run/move request is done once it starts.
    update.admin.run = false;
    update.admin.node = None;
    update.left = None;
    Some(Effect::Write(Prepared {
        package: action.package.clone(),
        revision: record.mod_revision,
        update,
        then: AfterWrite::Run { reason, failover },
    }))
}

/// The record write that starts a halt here. With `then_fail`, the
/// package is recorded as failed here for that reason once halted.
pub fn prepare_halt(
    store: &Snapshot,
    node: &str,
    package: &str,
    reason: Reason,
    then_fail: Option<String>,
) -> Option<Prepared> {
    let record = store.packages.get(package)?;
    let mut update = PackageUpdate::from(&record.value);
    update.state = PackageState::Halting;
    update.reason = format!("halting on {node} ({reason})");
    Some(Prepared {
        package: package.to_owned(),
        revision: record.mod_revision,
        update,
        then: AfterWrite::Halt { reason, then_fail },
    })
}

/// The reason handed to control scripts for a placement action.
pub fn lifecycle_reason(reason: ActionReason) -> Reason {
    match reason {
        ActionReason::Startup => Reason::Startup,
        ActionReason::Failover => Reason::Failover,
        ActionReason::Failback => Reason::Failback,
        ActionReason::ResourceDown => Reason::ResourceDown,
        ActionReason::Admin => Reason::Manual,
        ActionReason::Avoid => Reason::Avoid,
        ActionReason::Displaced => Reason::Displaced,
        ActionReason::Dependency => Reason::DependencyDown,
        ActionReason::Reconfigured => Reason::Reconfigured,
        ActionReason::Duplicate => Reason::Duplicate,
    }
}

#[cfg(test)]
mod tests;
