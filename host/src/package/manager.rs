//! The package manager in the daemon: the coordinator that asks the
//! placement engine what should run where, and carries out this node's
//! share of the answer through the [`agent`](super::agent).
//!
//! It works in small steps, each from fresh facts: build a
//! [`ClusterSnapshot`] from the store, the resource hub and operator
//! requests; plan; dispatch the first action; when that action is done (or
//! anything relevant changes: a resource transition, a service failure, an
//! operator command), plan again. One action is in flight at a time, so the
//! engine's ordering (predecessors before dependents, halts before the runs
//! that need the node) is kept without a separate scheduler, and a plan is
//! never carried out against stale facts.
//!
//! Every ownership change goes through the store's compare-and-swap, which
//! bumps the package's fence token; `run` gets the new token.
//!
//! This version coordinates the nodes that the store shows up; with the
//! embedded store that is this node alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::agent::{self, AgentCommand, AgentReport};
use super::lifecycle::{LifecycleEvent, Reason, RunnerContext};
use crate::config::package::PackageConfig;
use crate::criteria::{ResourceState, Transition};
use crate::guard::{Claim, ClaimPhase};
use crate::hub::ResourceHub;
use crate::placement::{self, ActionReason, ClusterSnapshot, NodeState as PlacementNode, Op, Plan};
use crate::store::{
    ClusterStore, NodeRecord, NodeState, PackageRecord, PackageState, PackageUpdate, Snapshot,
    StoreError, Versioned,
};
use crate::views::{NodeStatus, PackageStatus, ResourceStatus, StatusOutput, WhyOutput};

/// What is being carried out now.
#[derive(Debug, Clone, PartialEq)]
struct InFlight {
    reason: Reason,
    /// After this halt, mark the package failed here with this reason.
    then_fail: Option<String>,
    /// False when the package's record is not ours to write (we lost it).
    record: bool,
}

/// An operator command (`vigil pkg …`, `vigil node …`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminOp {
    Run,
    Halt,
    Move,
    Enable,
    Disable,
    Clear,
}

pub struct PackageManager {
    cluster: String,
    node: String,
    cluster_nodes: Vec<String>,
    packages: BTreeMap<String, PackageConfig>,
    store: Arc<dyn ClusterStore>,
    agent: mpsc::UnboundedSender<AgentCommand>,
    /// Actions under way, by package (one at a time per package).
    in_flight: BTreeMap<String, InFlight>,
    /// Packages still being re-adopted after a host restart.
    adopting: BTreeSet<String>,
    /// Service failures waiting for their halt.
    failures: BTreeMap<String, String>,
    /// What the agent runs here now, as far as this manager knows.
    running_here: BTreeSet<String>,
    /// Resource states of this node that other nodes have not been told
    /// (the store write failed): sent again on every tick until it works,
    /// or the others would plan with a stale state for ever.
    unpublished: BTreeMap<vigil_sdk::ResourceName, ResourceState>,
    link: Option<ClusterLink>,
    /// Failover packages whose record is ours, waiting for their run permit.
    claiming: BTreeMap<String, Claiming>,
    /// At most this many runs and halts under way here at once.
    max_parallel: usize,
    /// Run records and the guard's claims.
    run_dir: PathBuf,
}

/// Events the manager needs delivered back into the main loop.
pub struct ManagerChannels {
    pub reports: Box<dyn Fn(AgentReport) + Send + Sync>,
    pub lifecycle: mpsc::UnboundedSender<LifecycleEvent>,
}

/// What a multi-node (etcd) cluster adds: this node's lease and the
/// lease-bound run permits of failover packages.
pub struct ClusterLink {
    pub etcd: crate::store::etcd::EtcdStore,
    pub lease: crate::store::etcd::Lease,
    pub keepalive: crate::store::etcd::KeepAlive,
    /// Stop acting this long before the lease could expire.
    pub margin: std::time::Duration,
    /// This node's heartbeats, and the watcher of the others'.
    pub beats: super::peers::BeatWriter,
    pub reaper: tokio::task::JoinHandle<()>,
}

impl Drop for ClusterLink {
    fn drop(&mut self) {
        self.reaper.abort();
    }
}

/// An action ready to be recorded: the record write, and what follows it.
#[derive(Debug, Clone)]
struct Prepared {
    package: String,
    revision: crate::store::Revision,
    update: PackageUpdate,
    then: AfterWrite,
}

/// What is handed to the agent once the record is written.
#[derive(Debug, Clone)]
enum AfterWrite {
    Halt {
        reason: Reason,
        then_fail: Option<String>,
    },
    Run {
        reason: Reason,
        failover: bool,
    },
}

/// A failover package whose ownership record is ours, waiting for the
/// lease-bound permit to run (the previous holder must release it or die).
#[derive(Debug, Clone)]
struct Claiming {
    package: String,
    reason: Reason,
    fence: crate::store::FenceToken,
    revision: crate::store::Revision,
}

/// What the manager works with.
pub struct ManagerSetup {
    pub cluster: String,
    pub node: String,
    pub cluster_nodes: Vec<String>,
    pub packages: Vec<PackageConfig>,
    pub store: Arc<dyn ClusterStore>,
    pub ctx: RunnerContext,
    /// Where run records are kept for re-adoption.
    pub run_dir: PathBuf,
    /// Set on an etcd cluster.
    pub link: Option<ClusterLink>,
    /// `[store] max_parallel_actions`.
    pub max_parallel: usize,
}

impl PackageManager {
    /// Opens the manager: records this node as up, creates missing package
    /// records, starts watching every package resource in `hub`, and asks
    /// the agent to re-adopt packages the store says run here.
    pub async fn start(
        setup: ManagerSetup,
        hub: &mut ResourceHub,
        channels: ManagerChannels,
    ) -> Result<Self, StoreError> {
        let ManagerSetup {
            cluster,
            node,
            cluster_nodes,
            packages,
            store,
            ctx,
            run_dir,
            link: cluster_link,
            max_parallel,
        } = setup;
        let node = node.as_str();
        for p in &packages {
            for r in &p.resources {
                hub.watch(
                    &p.name,
                    r.name.clone(),
                    r.up.clone(),
                    r.rise,
                    r.fall,
                    vigil_sdk::now_ms(),
                );
            }
        }
        let agent = agent::spawn(
            &packages,
            ctx,
            run_dir.clone(),
            channels.lifecycle,
            channels.reports,
        );
        store
            .put_node(NodeRecord {
                name: node.to_owned(),
                state: NodeState::Up,
                updated_ms: vigil_sdk::now_ms(),
            })
            .await?;
        let snapshot = store.snapshot().await?;
        let mut adopting = BTreeSet::new();
        for p in &packages {
            match snapshot.packages.get(&p.name) {
                None => {
                    // Another host starting at the same moment may create it
                    // first: that is the record we wanted, not an error.
                    match store
                        .update_package(p.name.clone(), 0, PackageUpdate::down("configured"))
                        .await
                    {
                        Ok(_) | Err(StoreError::Conflict { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Some(record) if record.value.owners.iter().any(|o| o == node) => {
                    info!(package = %p.name, "re-adopting a package the store says runs here");
                    adopting.insert(p.name.clone());
                    let _ = agent.send(AgentCommand::Adopt {
                        package: p.name.clone(),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(Self {
            cluster,
            node: node.to_owned(),
            cluster_nodes,
            packages: packages.into_iter().map(|p| (p.name.clone(), p)).collect(),
            store,
            agent,
            in_flight: BTreeMap::new(),
            adopting,
            failures: BTreeMap::new(),
            running_here: BTreeSet::new(),
            unpublished: BTreeMap::new(),
            link: cluster_link,
            claiming: BTreeMap::new(),
            max_parallel,
            run_dir,
        })
    }

    /// Deals with what the guard did while this host was frozen or gone:
    /// a package it halted as it ran here is down (or failed here, when its
    /// `halt` failed) in the store, and the runner's copy of it is ended.
    /// Placement may then start it again, with a new fence token. A claim
    /// still being worked on by its guard is left alone until it is done.
    pub async fn check_guard(&mut self) {
        let claims: Vec<Claim> = self
            .packages
            .keys()
            .filter_map(|p| Claim::load(&self.run_dir, p))
            .filter(|c| !c.in_progress())
            .collect();
        if claims.is_empty() {
            return;
        }
        let store = match self.store.snapshot().await {
            Ok(store) => store,
            Err(e) => {
                warn!(error = %e, "cannot read the store to settle the guard's claims");
                return;
            }
        };
        let node = self.node.clone();
        for claim in claims {
            let package = claim.record.package.clone();
            let fence = claim.fence();
            let ours = store
                .packages
                .get(&package)
                .is_some_and(|r| r.value.owners.contains(&node) && r.value.fence_token == fence);
            if ours {
                let why = claim.describe(&node);
                let halted = claim.phase == ClaimPhase::Halted;
                warn!(%package, %fence, reason = %why, "the guard halted this package");
                let result = self
                    .write(&package, |u| {
                        if halted {
                            u.state = PackageState::Down;
                            u.owners.retain(|o| *o != node);
                        } else {
                            // As after a failed halt: something may still
                            // hold its resources, so it stays ours until
                            // an operator clears it.
                            u.state = PackageState::Failed;
                            u.failed_on.insert(node.clone());
                        }
                        u.reason = why.clone();
                    })
                    .await;
                if let Err(e) = result {
                    warn!(%package, error = %e, "cannot record the guard's halt; retrying");
                    continue;
                }
            }
            // Nothing of it runs here any more: the permit goes too, or the
            // adoptive node would wait for it as long as this node keeps its
            // lease. (After a failed halt something may still run, and the
            // package stays failed here, permit and all.)
            if claim.phase == ClaimPhase::Halted
                && let Some(link) = &self.link
                && let Err(e) = link.etcd.release_package(&package, &node).await
            {
                warn!(%package, error = %e, "cannot release the run permit after the guard's halt; retrying");
                continue;
            }
            self.running_here.remove(&package);
            let _ = self
                .agent
                .send(AgentCommand::GuardHalted { package, fence });
        }
    }

    /// The placement engine's view of the cluster now.
    fn cluster_snapshot(&self, store: &Snapshot, hub: &ResourceHub) -> ClusterSnapshot {
        let mut snap = ClusterSnapshot {
            nodes: self
                .cluster_nodes
                .iter()
                .map(|n| PlacementNode {
                    name: n.clone(),
                    up: store
                        .nodes
                        .get(n)
                        .is_some_and(|r| r.value.state == NodeState::Up),
                    switching_enabled: true,
                })
                .collect(),
            packages: self.packages.values().map(PackageConfig::to_spec).collect(),
            ..ClusterSnapshot::default()
        };
        let now = vigil_sdk::now_ms();
        for (name, p) in &self.packages {
            let state = snap.state_mut(name);
            if let Some(record) = store.packages.get(name) {
                let r = &record.value;
                if matches!(
                    r.state,
                    PackageState::Up | PackageState::Starting | PackageState::Halting
                ) {
                    state.running_on = r.owners.clone();
                }
                state.switching_enabled = r.switching;
                state.failed_on = r.failed_on.clone();
                state.left = r.left.clone();
                let admin = &r.admin;
                state.halted_by_admin = admin.halted;
                state.run_requested = admin.run;
                state.requested_node = admin.node.clone();
            }
            let running_on = state.running_on.clone();
            for r in &p.resources {
                for node in &self.cluster_nodes {
                    let judged = if *node == self.node {
                        hub.state_since(name, &r.name).map(|(state, since)| {
                            let held = std::time::Duration::from_millis(now.saturating_sub(since));
                            (state, held)
                        })
                    } else {
                        // Another node halts its own packages for a resource
                        // unknown there too long; here it only must not be
                        // planned away before that.
                        store
                            .resources
                            .get(&(node.clone(), r.name.clone()))
                            .map(|&state| (state, std::time::Duration::ZERO))
                    };
                    let runs_there = running_on.contains(node);
                    if let Some(up) = resource_verdict(r, judged, runs_there) {
                        snap.set_resource(name, node, r.name.as_str(), up);
                    }
                }
            }
        }
        snap
    }

    async fn plan(&self, hub: &ResourceHub) -> Result<(Snapshot, Plan), StoreError> {
        let store = self.store.snapshot().await?;
        let plan = placement::plan(&self.cluster_snapshot(&store, hub));
        Ok((store, plan))
    }

    /// Dispatches what can be dispatched now: the plan's next action when
    /// nothing is under way, and at any time the halts that must not wait
    /// (a resource down here, a failed service, lost ownership).
    pub async fn step(&mut self, hub: &ResourceHub) {
        if !self.adopting.is_empty() {
            return;
        }
        for claim in self.claiming.values().cloned().collect::<Vec<_>>() {
            let package = claim.package.clone();
            if let Err(e) = self.try_claim(claim).await {
                warn!(%package, error = %e, "claiming a package failed; replanning");
                self.claiming.remove(&package);
            }
        }
        if let Err(e) = self.try_step(hub).await {
            warn!(error = %e, "package manager step failed; retrying on the next event");
        }
    }

    async fn try_step(&mut self, hub: &ResourceHub) -> Result<(), StoreError> {
        let store = self.store.snapshot().await?;
        let here_halted = store
            .nodes
            .get(&self.node)
            .is_some_and(|n| n.value.state == NodeState::Halted);
        // A copy running here whose ownership went to another node (this
        // host was frozen or cut off, and the cluster moved on): stop it at
        // once, without touching a record that is no longer ours.
        let lost: Vec<String> = self
            .running_here
            .iter()
            .filter(|p| {
                !self.in_flight.contains_key(*p)
                    && store
                        .packages
                        .get(*p)
                        .is_some_and(|r| !r.value.owners.contains(&self.node))
            })
            .cloned()
            .collect();
        for package in lost {
            warn!(%package, node = %self.node, "ownership went to another node; halting the copy here");
            self.in_flight.insert(
                package.clone(),
                InFlight {
                    reason: Reason::LostOwnership,
                    then_fail: None,
                    record: false,
                },
            );
            let _ = self.agent.send(AgentCommand::Halt {
                package,
                reason: Reason::LostOwnership,
            });
        }
        // A record that says a start or halt is under way here while none
        // is (an attempt abandoned after a store error): set it straight, or
        // placement would believe it forever.
        let stale = store.packages.values().find(|r| {
            let r = &r.value;
            matches!(r.state, PackageState::Starting | PackageState::Halting)
                && r.owners.contains(&self.node)
                && !self.running_here.contains(&r.name)
                && !self.adopting.contains(&r.name)
                && !self.in_flight.contains_key(&r.name)
        });
        if let Some(record) = stale {
            let package = record.value.name.clone();
            let node = self.node.clone();
            warn!(%package, state = record.value.state.as_str(), "no start or halt is under way here; correcting the record");
            return self
                .write(&package, |u| {
                    u.state = PackageState::Down;
                    u.owners.retain(|o| *o != node);
                    u.reason = format!("start or halt on {node} abandoned");
                })
                .await;
        }
        // Owners that are gone (their lease expired, so their guard halted
        // what ran there) no longer run anything: say so in the record, or
        // a package nobody moves (halted by the operator, or with nowhere
        // to go) would show as running on a dead node until it came back.
        // One node does it, the first live one in cluster order.
        let janitor = self
            .cluster_nodes
            .iter()
            .find(|n| store.nodes.contains_key(*n));
        if janitor == Some(&self.node) {
            let stranded: Vec<String> = store
                .packages
                .values()
                .filter(|r| {
                    matches!(
                        r.value.state,
                        PackageState::Up | PackageState::Starting | PackageState::Halting
                    ) && r.value.owners.iter().any(|o| !store.nodes.contains_key(o))
                })
                .map(|r| r.value.name.clone())
                .collect();
            // One round of concurrent writes from this snapshot (a node
            // that ran a hundred packages leaves a hundred records), then a
            // fresh plan: the writes change the records the plan would use.
            let mut writes = tokio::task::JoinSet::new();
            for package in &stranded {
                let Some(record) = store.packages.get(package) else {
                    continue;
                };
                let mut u = PackageUpdate::from(&record.value);
                let gone: Vec<String> = u
                    .owners
                    .iter()
                    .filter(|o| !store.nodes.contains_key(*o))
                    .cloned()
                    .collect();
                u.owners.retain(|o| store.nodes.contains_key(o));
                if u.owners.is_empty() {
                    u.state = PackageState::Down;
                    u.left = gone.first().cloned();
                    u.reason = format!("its node {} is gone", gone.join(", "));
                }
                let (st, name, revision) = (
                    Arc::clone(&self.store),
                    package.clone(),
                    record.mod_revision,
                );
                writes.spawn(
                    async move { (name.clone(), st.update_package(name, revision, u).await) },
                );
            }
            while let Some(joined) = writes.join_next().await {
                match joined {
                    Ok((package, Ok(_))) => {
                        info!(%package, "recorded that a gone node no longer runs it")
                    }
                    // Someone else rewrote it first: the next plan sees that.
                    Ok((_, Err(StoreError::Conflict { .. }))) => {}
                    Ok((package, Err(e))) => {
                        warn!(%package, error = %e, "cannot record that a gone node no longer runs it")
                    }
                    Err(e) => warn!(error = %e, "a store write task failed"),
                }
            }
            if !stranded.is_empty() {
                return Ok(());
            }
        }
        // Without a sure lease this node may not act as an owner: halt what
        // runs here before the lease can expire, and start nothing.
        let lease_lost = self.lease_in_doubt();
        // Service failures and a draining node come first: halt here now.
        let urgent = self
            .failures
            .iter()
            .map(|(p, why)| (p.clone(), Reason::ServiceFailed, Some(why.clone())))
            .chain(
                self.packages
                    .keys()
                    .filter(|_| here_halted)
                    .map(|p| (p.clone(), Reason::NodeHalt, None)),
            )
            .chain(
                self.packages
                    .keys()
                    .filter(|_| lease_lost)
                    .map(|p| (p.clone(), Reason::LeaseLost, None)),
            )
            .filter(|(p, _, _)| {
                !self.in_flight.contains_key(p)
                    && store.packages.get(p).is_some_and(|r| {
                        r.value.owners.contains(&self.node) && r.value.state != PackageState::Failed
                    })
            })
            .collect::<Vec<_>>();
        // All at once: a node that must stop everything (lease in doubt,
        // drained) does not halt one package per step.
        let mut halted = BTreeSet::new();
        let mut prepared = Vec::new();
        for (package, reason, then_fail) in urgent {
            if halted.insert(package.clone())
                && let Some(p) = self.prepare_halt(&store, &package, reason, then_fail)
            {
                prepared.push(p);
            }
        }
        self.carry_out(prepared).await;
        // A failure whose halt is under way is handled; one whose record
        // write failed stays for the next step.
        let in_flight = &self.in_flight;
        self.failures.retain(|p, _| !in_flight.contains_key(p));
        if lease_lost || !halted.is_empty() {
            return Ok(());
        }
        let plan = placement::plan(&self.cluster_snapshot(&store, hub));
        // The plan is a partial order (see `order`): carry out every action
        // of this node that waits for nothing, up to max_parallel at once.
        // A package being started or halted anywhere holds back the actions
        // that depend on it; one whose owners are all gone is not busy (no
        // one will finish that start), it is simply moved.
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
            .chain(self.in_flight.keys().cloned())
            .chain(self.claiming.keys().cloned())
            .collect();
        let specs: Vec<_> = self.packages.values().map(PackageConfig::to_spec).collect();
        let ready = super::order::ready(&plan.actions, &specs, &busy);
        // The local fast path: a package whose required resource went down
        // here halts now, whatever else is under way or waiting.
        let fast = plan
            .actions
            .iter()
            .filter(|a| a.op == Op::Halt && a.reason == ActionReason::ResourceDown);
        let mut chosen: Vec<placement::Action> = Vec::new();
        for action in fast.chain(ready) {
            if action.node == self.node
                && !self.in_flight.contains_key(&action.package)
                && !self.claiming.contains_key(&action.package)
                && !chosen.iter().any(|c| c.package == action.package)
            {
                chosen.push(action.clone());
            }
        }
        let room = self
            .max_parallel
            .saturating_sub(self.in_flight.len() + self.claiming.len());
        let prepared: Vec<Prepared> = chosen
            .iter()
            .take(room)
            .filter_map(|action| self.prepare(&store, action, hub))
            .collect();
        self.carry_out(prepared).await;
        Ok(())
    }

    /// Writes the records of `prepared` all at once (one round of store
    /// writes, not one per action: a hundred starts must not hold the main
    /// loop for a hundred round trips), then hands what was recorded to the
    /// agent, claiming the run permits of failover packages together too.
    async fn carry_out(&mut self, prepared: Vec<Prepared>) {
        if prepared.is_empty() {
            return;
        }
        let mut writes = tokio::task::JoinSet::new();
        for (i, p) in prepared.iter().enumerate() {
            let store = Arc::clone(&self.store);
            let (package, revision, update) = (p.package.clone(), p.revision, p.update.clone());
            writes.spawn(async move { (i, store.update_package(package, revision, update).await) });
        }
        let mut results: Vec<Option<Result<Versioned<PackageRecord>, StoreError>>> =
            (0..prepared.len()).map(|_| None).collect();
        while let Some(joined) = writes.join_next().await {
            match joined {
                Ok((i, result)) => results[i] = Some(result),
                Err(e) => warn!(error = %e, "a store write task failed"),
            }
        }
        let mut claims = Vec::new();
        for (p, result) in prepared.into_iter().zip(results) {
            let updated = match result {
                Some(Ok(updated)) => updated,
                Some(Err(e)) => {
                    warn!(package = %p.package, error = %e, "cannot record the action; replanning");
                    continue;
                }
                None => continue,
            };
            match p.then {
                AfterWrite::Halt { reason, then_fail } => {
                    info!(package = %p.package, node = %self.node, %reason, "halting package");
                    self.in_flight.insert(
                        p.package.clone(),
                        InFlight {
                            reason,
                            then_fail,
                            record: true,
                        },
                    );
                    let _ = self.agent.send(AgentCommand::Halt {
                        package: p.package,
                        reason,
                    });
                }
                AfterWrite::Run { reason, failover } => {
                    let claim = Claiming {
                        package: p.package.clone(),
                        reason,
                        fence: updated.value.fence_token,
                        revision: updated.mod_revision,
                    };
                    if failover && self.link.is_some() {
                        self.claiming.insert(claim.package.clone(), claim.clone());
                        claims.push(claim);
                    } else {
                        self.launch(claim);
                    }
                }
            }
        }
        let Some(link) = &self.link else { return };
        let mut asks = tokio::task::JoinSet::new();
        for claim in claims {
            let (etcd, node, lease) = (link.etcd.clone(), self.node.clone(), link.lease.id);
            asks.spawn(async move {
                let outcome = etcd
                    .claim_package(&claim.package, claim.revision, &node, lease)
                    .await;
                (claim, outcome)
            });
        }
        while let Some(joined) = asks.join_next().await {
            let Ok((claim, outcome)) = joined else {
                continue;
            };
            let package = claim.package.clone();
            if let Err(e) = self.on_claim_outcome(claim, outcome).await {
                warn!(%package, error = %e, "claiming a package failed; replanning");
            }
        }
    }

    /// The record write that carries out one action of this node's plan,
    /// or `None` when it cannot be carried out now. No I/O: the write is
    /// [`carry_out`](Self::carry_out)'s.
    fn prepare(
        &self,
        store: &Snapshot,
        action: &placement::Action,
        hub: &ResourceHub,
    ) -> Option<Prepared> {
        let mut reason = lifecycle_reason(action.reason);
        // A package that left another node because something failed there
        // fails over here, even though no node runs it at this moment.
        let left_elsewhere = store
            .packages
            .get(&action.package)
            .and_then(|r| r.value.left.as_ref())
            .is_some_and(|n| *n != self.node);
        if action.op == Op::Run && action.reason == ActionReason::Startup && left_elsewhere {
            reason = Reason::Failover;
        }
        match action.op {
            Op::Halt => {
                // A deferred resource down after the start means the package
                // failed here (as Serviceguard's deferred resources): it is
                // not started here again until cleared, instead of flapping.
                let deferred_down = (action.reason == ActionReason::ResourceDown)
                    .then(|| self.packages.get(&action.package))
                    .flatten()
                    .and_then(|p| {
                        p.resources.iter().find(|r| {
                            r.evaluate == placement::Evaluate::AfterStart
                                && hub.state(&p.name, &r.name) == Some(ResourceState::Down)
                        })
                    })
                    .map(|r| format!("after_start resource {} went down on {}", r.name, self.node));
                self.prepare_halt(store, &action.package, reason, deferred_down)
            }
            Op::Run => {
                let record = store.packages.get(&action.package)?;
                // The guard is still halting the old copy here.
                if Claim::load(&self.run_dir, &action.package).is_some_and(|c| c.in_progress()) {
                    return None;
                }
                let failover = self
                    .packages
                    .get(&action.package)
                    .is_some_and(|p| p.kind == placement::PackageKind::Failover);
                // A failover package is taken over only from owners that are
                // gone; a live owner halts it first (its next step does), so
                // two nodes never both believe they own it.
                // (A halted node is still there and halts its packages itself;
                // only a node whose record is gone — its lease expired — has
                // nothing left to halt.)
                let live_owner = record
                    .value
                    .owners
                    .iter()
                    .find(|o| **o != self.node && store.nodes.contains_key(*o));
                if let (true, Some(owner)) = (failover, live_owner) {
                    info!(package = %action.package, %owner, "waiting for the current owner to halt it");
                    return None;
                }
                let mut update = PackageUpdate::from(&record.value);
                update.state = PackageState::Starting;
                // A failover package has one owner; a multi-node one gains this node.
                if failover {
                    update.owners = vec![self.node.clone()];
                } else if !update.owners.contains(&self.node) {
                    update.owners.push(self.node.clone());
                }
                update.reason = format!("starting on {} ({})", self.node, reason);
                // An operator's run/move request is done once it starts.
                update.admin.run = false;
                update.admin.node = None;
                update.left = None;
                Some(Prepared {
                    package: action.package.clone(),
                    revision: record.mod_revision,
                    update,
                    then: AfterWrite::Run { reason, failover },
                })
            }
        }
    }

    /// The record write that starts a halt here.
    fn prepare_halt(
        &self,
        store: &Snapshot,
        package: &str,
        reason: Reason,
        then_fail: Option<String>,
    ) -> Option<Prepared> {
        let record = store.packages.get(package)?;
        let mut update = PackageUpdate::from(&record.value);
        update.state = PackageState::Halting;
        update.reason = format!("halting on {} ({})", self.node, reason);
        Some(Prepared {
            package: package.to_owned(),
            revision: record.mod_revision,
            update,
            then: AfterWrite::Halt { reason, then_fail },
        })
    }

    /// Hands a start to the agent.
    fn launch(&mut self, claim: Claiming) {
        info!(package = %claim.package, node = %self.node, reason = %claim.reason, fence = %claim.fence, "starting package");
        self.in_flight.insert(
            claim.package.clone(),
            InFlight {
                reason: claim.reason,
                then_fail: None,
                record: true,
            },
        );
        let _ = self.agent.send(AgentCommand::Run {
            package: claim.package,
            reason: claim.reason,
            fence: claim.fence,
        });
    }

    /// Asks etcd for the package's lease-bound run permit; launches when
    /// granted, keeps waiting while another node holds it.
    async fn try_claim(&mut self, claim: Claiming) -> Result<(), StoreError> {
        let Some(link) = &self.link else {
            self.claiming.remove(&claim.package);
            self.launch(claim);
            return Ok(());
        };
        let outcome = link
            .etcd
            .claim_package(&claim.package, claim.revision, &self.node, link.lease.id)
            .await;
        self.on_claim_outcome(claim, outcome).await
    }

    /// Acts on the answer to a permit claim: launch when granted, keep
    /// waiting while another node holds it, give up when the record moved.
    async fn on_claim_outcome(
        &mut self,
        claim: Claiming,
        outcome: Result<crate::store::etcd::ClaimOutcome, StoreError>,
    ) -> Result<(), StoreError> {
        use crate::store::etcd::ClaimOutcome;
        match outcome {
            Ok(ClaimOutcome::Granted(_)) => {
                self.claiming.remove(&claim.package);
                self.launch(claim);
            }
            Ok(ClaimOutcome::HeldBy(holder)) => {
                info!(package = %claim.package, holder = %holder.value.node, "run permit still held; waiting");
            }
            Ok(ClaimOutcome::NotOwner { owners }) => {
                warn!(package = %claim.package, ?owners, "ownership moved while claiming; replanning");
                self.claiming.remove(&claim.package);
            }
            Err(StoreError::Conflict { .. }) => {
                // The record moved on (the old owner recorded its halt, say).
                // Still ours alone: claim again under its new revision.
                // Otherwise give up and replan; a record left saying it
                // starts here with nothing running would never be corrected.
                let record = self.record(&claim.package).await?;
                if record.value.owners == [self.node.clone()]
                    && record.value.state == PackageState::Starting
                {
                    if let Some(c) = self.claiming.get_mut(&claim.package) {
                        c.revision = record.mod_revision;
                        c.fence = record.value.fence_token;
                    }
                } else {
                    self.claiming.remove(&claim.package);
                }
            }
            Err(e) => {
                self.claiming.remove(&claim.package);
                return Err(e);
            }
        }
        Ok(())
    }

    /// On a cluster: when etcd says this node's lease is gone (it expired
    /// while etcd was unreachable), takes a new one and records the node as
    /// up again. Until then `lease_in_doubt` keeps this node from acting.
    pub async fn maintain_link(&mut self) {
        let Some(link) = &mut self.link else { return };
        if !link.keepalive.health().expired {
            return;
        }
        let ttl = link.lease.ttl;
        let result = async {
            let lease = link.etcd.grant_lease(ttl).await?;
            let keepalive = link.etcd.keep_alive(&lease);
            link.etcd
                .put_node_with_lease(
                    NodeRecord {
                        name: self.node.clone(),
                        state: NodeState::Up,
                        updated_ms: vigil_sdk::now_ms(),
                    },
                    lease.id,
                )
                .await?;
            Ok::<_, StoreError>((lease, keepalive))
        }
        .await;
        match result {
            Ok((lease, keepalive)) => {
                info!(node = %self.node, lease = %lease.id, "lease expired; rejoined with a new one");
                link.beats = super::peers::BeatWriter::spawn(
                    link.etcd.clone(),
                    self.node.clone(),
                    lease.id,
                    keepalive.subscribe(),
                    super::peers::beat_deadline(ttl),
                );
                link.lease = lease;
                link.keepalive = keepalive;
            }
            Err(e) => warn!(error = %e, "cannot rejoin the cluster yet"),
        }
    }

    /// Sends the resource states other nodes have not seen yet; kept for
    /// the next try when the store cannot take them.
    pub async fn publish_resource_states(&mut self) {
        if self.unpublished.is_empty() {
            return;
        }
        let states: Vec<_> = self
            .unpublished
            .iter()
            .map(|(r, s)| (r.clone(), *s))
            .collect();
        match self
            .store
            .set_resource_states(self.node.clone(), states)
            .await
        {
            Ok(_) => self.unpublished.clear(),
            Err(e) => {
                warn!(error = %e, pending = self.unpublished.len(), "cannot publish resource states; retrying every second")
            }
        }
    }

    /// True on a multi-node (etcd) cluster.
    pub fn on_cluster(&self) -> bool {
        self.link.is_some()
    }

    /// True when this node's lease might expire within the safety margin.
    pub fn lease_in_doubt(&self) -> bool {
        self.link.as_ref().is_some_and(|link| {
            let health = link.keepalive.health();
            let now = std::time::Instant::now();
            // Peers judge this node by its heartbeats, so a node whose
            // heartbeats stopped getting written must stop vouching too.
            let beat = link.beats.last_written().unwrap_or(link.lease.granted_at);
            let stop_after = link.lease.ttl.saturating_sub(link.margin);
            health.expired
                || health.valid_until <= now + link.margin
                || now.duration_since(beat) > stop_after
        })
    }

    async fn record(&self, package: &str) -> Result<Versioned<PackageRecord>, StoreError> {
        let store = self.store.snapshot().await?;
        store
            .packages
            .get(package)
            .cloned()
            .ok_or_else(|| StoreError::Backend {
                path: "store".into(),
                message: format!("package {package} has no record"),
            })
    }

    /// Writes `change` to the package's record (re-reading on a conflict).
    async fn write(
        &self,
        package: &str,
        change: impl Fn(&mut PackageUpdate),
    ) -> Result<(), StoreError> {
        for _ in 0..5 {
            let record = self.record(package).await?;
            let mut update = PackageUpdate::from(&record.value);
            change(&mut update);
            match self
                .store
                .update_package(package.to_owned(), record.mod_revision, update)
                .await
            {
                Err(StoreError::Conflict { .. }) => continue,
                other => return other.map(drop),
            }
        }
        Err(StoreError::Backend {
            path: "store".into(),
            message: format!("package {package}: too many conflicts"),
        })
    }

    /// The agent finished a command.
    pub async fn on_report(&mut self, report: AgentReport, hub: &mut ResourceHub) {
        let node = self.node.clone();
        let outcome = match report {
            AgentReport::Adopted { package, result } => {
                self.adopting.remove(&package);
                match result {
                    Ok(()) => {
                        info!(%package, "re-adopted: still running, not restarted");
                        self.running_here.insert(package.clone());
                        self.write(&package, |u| {
                            u.state = PackageState::Up;
                            u.reason = format!("re-adopted on {node} after a host restart");
                        })
                        .await
                    }
                    Err(e) => {
                        // The guard halted it while no host ran: its claim
                        // says how that went, and check_guard records it.
                        let claimed = match (
                            Claim::load(&self.run_dir, &package),
                            self.record(&package).await,
                        ) {
                            (Some(claim), Ok(record)) => claim.fence() == record.value.fence_token,
                            _ => false,
                        };
                        if claimed {
                            info!(%package, "not re-adopted: the guard halted it while no host ran");
                            self.check_guard().await;
                            Ok(())
                        } else {
                            warn!(%package, error = %e, "cannot re-adopt; it is not running here");
                            self.write(&package, |u| {
                                u.state = PackageState::Down;
                                u.owners.retain(|o| *o != node);
                                u.reason = format!("not running after a host restart: {e}");
                            })
                            .await
                        }
                    }
                }
            }
            AgentReport::Ran {
                package, result, ..
            } => {
                let flight = self.in_flight.remove(&package);
                match result {
                    Ok(()) => {
                        let why = flight.map_or("unrecorded", |f| f.reason.as_str());
                        info!(%package, %node, "package up");
                        self.running_here.insert(package.clone());
                        // Deferred resources count from now on, not from
                        // samples taken before the package ran.
                        if let Some(p) = self.packages.get(&package) {
                            for r in p
                                .resources
                                .iter()
                                .filter(|r| r.evaluate == placement::Evaluate::AfterStart)
                            {
                                hub.restart(&package, &r.name, vigil_sdk::now_ms());
                            }
                        }
                        self.write(&package, |u| {
                            u.state = PackageState::Up;
                            u.reason = format!("up on {node} ({why})");
                        })
                        .await
                    }
                    Err(e) => {
                        warn!(%package, %node, error = %e, "run failed; halting to clean up");
                        match self.store.snapshot().await {
                            Ok(store) => {
                                let halt = self.prepare_halt(
                                    &store,
                                    &package,
                                    Reason::RunFailed,
                                    Some(format!("run failed on {node}: {e}")),
                                );
                                self.carry_out(halt.into_iter().collect()).await;
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    }
                }
            }
            AgentReport::Halted { package, result } => {
                let flight = self.in_flight.remove(&package);
                self.running_here.remove(&package);
                if flight.as_ref().is_some_and(|f| !f.record) {
                    info!(%package, %node, ok = result.is_ok(), "stale copy halted");
                    self.step(hub).await;
                    return;
                }
                if let (Some(link), Ok(())) = (&self.link, &result)
                    && let Err(e) = link.etcd.release_package(&package, &node).await
                {
                    warn!(%package, error = %e, "cannot release the run permit; it goes with the lease");
                }
                let then_fail = flight.as_ref().and_then(|f| f.then_fail.clone());
                let reason = flight.map(|f| f.reason);
                let why = reason.map_or("unrecorded", |r| r.as_str());
                match (result, then_fail) {
                    (Ok(()), None) => {
                        info!(%package, %node, "package halted");
                        let failing = !reason.is_some_and(|r| r.is_deliberate());
                        self.write(&package, |u| {
                            u.owners.retain(|o| *o != node);
                            // A multi-node package still runs on its other
                            // owners: one record, one state, so it stays up
                            // (an owner that is halting records its own halt).
                            u.state = if u.owners.is_empty() {
                                PackageState::Down
                            } else {
                                PackageState::Up
                            };
                            u.reason = format!("halted on {node} ({why})");
                            if failing {
                                u.left = Some(node.clone());
                            }
                        })
                        .await
                    }
                    (Ok(()), Some(failure)) => {
                        warn!(%package, %node, %failure, "package failed here");
                        self.write(&package, |u| {
                            u.state = PackageState::Failed;
                            u.owners.retain(|o| *o != node);
                            u.failed_on.insert(node.clone());
                            u.reason = failure.clone();
                            u.left = Some(node.clone());
                        })
                        .await
                    }
                    // The halt script failed: something may still run, so the
                    // package keeps this node as owner and no other node may
                    // start it until an operator clears it.
                    (Err(e), _) => {
                        warn!(%package, %node, error = %e, "halt failed");
                        self.write(&package, |u| {
                            u.state = PackageState::Failed;
                            u.failed_on.insert(node.clone());
                            u.reason = format!("halt failed on {node}: {e}");
                        })
                        .await
                    }
                }
            }
        };
        if let Err(e) = outcome {
            warn!(error = %e, "cannot record an action's outcome in the store");
        }
        self.step(hub).await;
    }

    /// A service exited, restarted, or used up its restarts.
    pub async fn on_lifecycle(&mut self, event: LifecycleEvent, hub: &ResourceHub) {
        match event {
            LifecycleEvent::ServiceRestarted {
                package,
                service,
                restarts,
                ..
            } => {
                info!(%package, %service, restarts, "service restarted");
                let _ = self.agent.send(AgentCommand::SaveRecord { package });
            }
            LifecycleEvent::ServiceExited {
                package,
                service,
                exit,
                restarting,
                ..
            } => {
                warn!(%package, %service, %exit, restarting, "service exited");
            }
            LifecycleEvent::PackageFailed {
                package,
                service,
                reason,
            } => {
                let why = format!("service {service} failed on {}: {reason}", self.node);
                warn!(%package, %why, "package failed");
                self.failures.insert(package, why);
                self.step(hub).await;
            }
            LifecycleEvent::GuardHalted {
                package, service, ..
            } => {
                warn!(%package, %service, "service stopped by the guard");
                self.check_guard().await;
                self.step(hub).await;
            }
        }
    }

    /// A package's view of a resource changed: plan again at once, so a
    /// required resource going down halts the package here without waiting.
    pub async fn on_transition(&mut self, transition: &Transition, hub: &ResourceHub) {
        // Other nodes place packages on what this node reports.
        if self.link.is_some() {
            self.unpublished
                .insert(transition.resource.clone(), transition.to);
            self.publish_resource_states().await;
        }
        if self.packages.contains_key(&transition.package) {
            self.step(hub).await;
        }
    }

    pub async fn status(&self, hub: &ResourceHub) -> Result<StatusOutput, StoreError> {
        let store = self.store.snapshot().await?;
        Ok(StatusOutput {
            config_errors: Vec::new(),
            cluster: self.cluster.clone(),
            node: self.node.clone(),
            nodes: self
                .cluster_nodes
                .iter()
                .map(|n| NodeStatus {
                    name: n.clone(),
                    state: store
                        .nodes
                        .get(n)
                        .map_or("down", |r| r.value.state.as_str())
                        .to_owned(),
                })
                .collect(),
            packages: self
                .packages
                .values()
                .map(|p| {
                    let record = store.packages.get(&p.name).map(|r| &r.value);
                    let state = record.map_or(PackageState::Down, |r| r.state);
                    PackageStatus {
                        name: p.name.clone(),
                        state: state.as_str().to_owned(),
                        running_on: match state {
                            PackageState::Down | PackageState::Failed => Vec::new(),
                            _ => record.map(|r| r.owners.clone()).unwrap_or_default(),
                        },
                        switching: record.is_none_or(|r| r.switching),
                        reason: record.map(|r| r.reason.clone()).unwrap_or_default(),
                        fence_token: record.map_or(0, |r| r.fence_token.0),
                        failed_on: record
                            .map(|r| r.failed_on.iter().cloned().collect())
                            .unwrap_or_default(),
                        resources: p
                            .resources
                            .iter()
                            .map(|r| ResourceStatus {
                                name: r.name.to_string(),
                                state: hub
                                    .state(&p.name, &r.name)
                                    .unwrap_or(ResourceState::Pending)
                                    .as_str()
                                    .to_owned(),
                                criterion: r.up.to_string(),
                                evaluate: match r.evaluate {
                                    placement::Evaluate::BeforeStart => "before_start",
                                    placement::Evaluate::AfterStart => "after_start",
                                }
                                .to_owned(),
                            })
                            .collect(),
                    }
                })
                .collect(),
        })
    }

    pub async fn why(&self, package: &str, hub: &ResourceHub) -> Result<WhyOutput, String> {
        if !self.packages.contains_key(package) {
            return Err(format!("no package named {package:?}"));
        }
        let (store, plan) = self.plan(hub).await.map_err(|e| e.to_string())?;
        let explanation = plan
            .explanations
            .get(package)
            .cloned()
            .ok_or_else(|| format!("no explanation for {package}"))?;
        let record = store.packages.get(package).map(|r| &r.value);
        let mut text = String::new();
        if let Some(r) = record {
            text.push_str(&format!(
                "{package} is {} ({})\n",
                r.state.as_str(),
                r.reason
            ));
        }
        text.push_str(&explanation.to_string());
        Ok(WhyOutput {
            package: package.to_owned(),
            state: record.map_or("down", |r| r.state.as_str()).to_owned(),
            running_on: record.map(|r| r.owners.clone()).unwrap_or_default(),
            explanation,
            resources: Vec::new(),
            text,
        })
    }

    /// Carries out `vigil pkg OP NAME [--node N]`; returns what was done.
    pub async fn admin(
        &mut self,
        op: AdminOp,
        package: &str,
        node: Option<&str>,
        hub: &ResourceHub,
    ) -> Result<String, String> {
        if !self.packages.contains_key(package) {
            return Err(format!("no package named {package:?}"));
        }
        if let Some(n) = node.filter(|n| !self.cluster_nodes.iter().any(|c| c == n)) {
            return Err(format!("node {n:?} is not in cluster.nodes"));
        }
        let store_err = |e: StoreError| e.to_string();
        let done = match op {
            AdminOp::Halt => {
                self.write(package, |u| {
                    u.switching = false;
                    u.admin.halted = true;
                    u.admin.run = false;
                    u.admin.node = None;
                    u.reason = "halted by operator".into();
                })
                .await
                .map_err(store_err)?;
                format!("halting {package}; switching disabled until `vigil pkg run {package}`")
            }
            AdminOp::Run | AdminOp::Move => {
                if op == AdminOp::Move && node.is_none() {
                    return Err("pkg move needs --node".into());
                }
                let target = node.map(str::to_owned);
                let before = self.record(package).await.map_err(store_err)?.value;
                let running = before.state == PackageState::Up && !before.owners.is_empty();
                if running && node.is_none_or(|n| before.owners.iter().any(|o| o == n)) {
                    return Ok(format!(
                        "{package} already runs on {}: nothing to do",
                        before.owners.join(", ")
                    ));
                }
                self.write(package, |u| {
                    u.switching = true;
                    u.admin.halted = false;
                    u.admin.run = true;
                    u.admin.node = target.clone();
                })
                .await
                .map_err(store_err)?;
                // Say now when the request cannot be met, rather than
                // "starting" something that will not start.
                let (_, plan) = self.plan(hub).await.map_err(store_err)?;
                let placed = plan.placement.get(package).cloned().unwrap_or_default();
                let blocked = plan.explanations.get(package).and_then(|e| e.blocked);
                match (node, placed.is_empty(), blocked) {
                    (_, true, Some(why)) => {
                        return Err(format!(
                            "{package} cannot run anywhere: {why} (`vigil why {package}` says more)"
                        ));
                    }
                    (_, true, None) => {
                        return Err(format!(
                            "{package} cannot run anywhere now (`vigil why {package}` says why)"
                        ));
                    }
                    (Some(n), false, _) if !placed.iter().any(|p| p == n) => {
                        return Err(format!(
                            "{package} cannot run on {n}; it would run on {} (`vigil why {package}` says why)",
                            placed.join(", ")
                        ));
                    }
                    _ => {}
                }
                match node {
                    Some(n) => format!("starting {package} on {n}"),
                    None => format!("starting {package} on {}", placed.join(", ")),
                }
            }
            AdminOp::Enable | AdminOp::Disable => {
                if node.is_some() {
                    return Err("per-node switching (--node) is not supported yet; enable or disable the package".into());
                }
                let on = op == AdminOp::Enable;
                self.write(package, |u| u.switching = on)
                    .await
                    .map_err(store_err)?;
                format!(
                    "switching {} for {package}",
                    if on { "enabled" } else { "disabled" }
                )
            }
            AdminOp::Clear => {
                self.write(package, |u| {
                    match node {
                        Some(n) => {
                            u.failed_on.remove(n);
                        }
                        None => u.failed_on.clear(),
                    }
                    if u.state == PackageState::Failed && u.owners.is_empty() {
                        u.state = PackageState::Down;
                        u.reason = "failure cleared by operator".into();
                    }
                })
                .await
                .map_err(store_err)?;
                format!("cleared failures of {package}")
            }
        };
        self.step(hub).await;
        Ok(done)
    }

    /// `vigil node run|halt NAME` (this node only, for now).
    pub async fn node_admin(
        &mut self,
        halt: bool,
        node: &str,
        hub: &ResourceHub,
    ) -> Result<String, String> {
        if !self.cluster_nodes.iter().any(|n| n == node) {
            return Err(format!("node {node:?} is not in cluster.nodes"));
        }
        // Another node's record can be changed only while that node is there
        // to hold it: a record written for a dead node would outlive it.
        if node != self.node {
            let store = self.store.snapshot().await.map_err(|e| e.to_string())?;
            if !store.nodes.contains_key(node) {
                return Err(format!(
                    "node {node:?} is not running `vigil host`; start it there"
                ));
            }
        }
        let state = if halt {
            NodeState::Halted
        } else {
            NodeState::Up
        };
        self.store
            .put_node(NodeRecord {
                name: node.to_owned(),
                state,
                updated_ms: vigil_sdk::now_ms(),
            })
            .await
            .map_err(|e| e.to_string())?;
        self.step(hub).await;
        Ok(format!("node {node} is {}", state.as_str()))
    }
}

/// What placement is told about one required resource on one node: `Some(up)`
/// or `None` for no verdict (an `after_start` resource not judged yet does
/// not gate anything). `judged` is the resource's state there and how long
/// it has held, `None` when nothing is known (as pending).
///
/// * `up` and `down` are what they say.
/// * `pending` (no sample since the host or its monitor started) neither
///   starts nor halts: a package running there stays, one not running
///   there does not start (DESIGN §3, invariant 7).
/// * `unknown` never starts a package, and halts one running there only
///   after `unknown_timeout` (a monitor hiccup does not fail over a healthy
///   application; a dead monitor does in the end).
fn resource_verdict(
    requirement: &crate::config::package::ResourceRequirement,
    judged: Option<(ResourceState, std::time::Duration)>,
    runs_there: bool,
) -> Option<bool> {
    let gates = requirement.evaluate == placement::Evaluate::BeforeStart;
    match judged.unwrap_or((ResourceState::Pending, std::time::Duration::ZERO)) {
        (ResourceState::Up, _) => Some(true),
        (ResourceState::Down, _) => Some(false),
        (ResourceState::Pending, _) if runs_there => gates.then_some(true),
        (ResourceState::Unknown, held) if runs_there && held < requirement.unknown_timeout => {
            gates.then_some(true)
        }
        (ResourceState::Unknown, _) if runs_there => Some(false),
        (ResourceState::Pending | ResourceState::Unknown, _) => gates.then_some(false),
    }
}

/// The reason handed to control scripts for a placement action.
fn lifecycle_reason(reason: ActionReason) -> Reason {
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
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::package::ResourceRequirement;

    /// One row: the requirement's `evaluate`, the judged state and how long
    /// it held (seconds; `None` = not judged at all), whether the package
    /// runs on that node, and the verdict placement must get.
    fn check(
        evaluate: placement::Evaluate,
        judged: Option<(ResourceState, u64)>,
        runs_there: bool,
        expected: Option<bool>,
    ) {
        let requirement = ResourceRequirement {
            name: vigil_sdk::ResourceName::new("/system/memory/avail_percent").unwrap(),
            up: crate::criteria::Criteria::parse("> 5").unwrap(),
            evaluate,
            rise: 1,
            fall: 2,
            unknown_timeout: Duration::from_secs(30),
            line: 1,
        };
        let judged_at = judged.map(|(s, secs)| (s, Duration::from_secs(secs)));
        assert_eq!(
            resource_verdict(&requirement, judged_at, runs_there),
            expected,
            "{evaluate:?} {judged:?} runs_there={runs_there}"
        );
    }

    #[test]
    fn resource_verdicts() {
        use ResourceState::*;
        use placement::Evaluate::{AfterStart, BeforeStart};
        // Up and down are what they say, running or not.
        check(BeforeStart, Some((Up, 0)), false, Some(true));
        check(BeforeStart, Some((Down, 0)), true, Some(false));
        check(AfterStart, Some((Down, 0)), true, Some(false));
        // Unknown never starts a package.
        check(BeforeStart, Some((Unknown, 0)), false, Some(false));
        check(AfterStart, Some((Unknown, 0)), false, None);
        // Unknown halts a running package only after unknown_timeout.
        check(BeforeStart, Some((Unknown, 29)), true, Some(true));
        check(BeforeStart, Some((Unknown, 30)), true, Some(false));
        check(AfterStart, Some((Unknown, 29)), true, None);
        check(AfterStart, Some((Unknown, 30)), true, Some(false));
    }

    /// The README demo was halted 35 ms after a host restart re-adopted it,
    /// because `/system/memory/avail_percent` had no sample yet.
    #[test]
    fn re_adopted_package_is_not_halted_for_a_resource_not_sampled_yet() {
        use ResourceState::*;
        use placement::Evaluate::{AfterStart, BeforeStart};
        check(BeforeStart, Some((Pending, 0)), true, Some(true));
        check(BeforeStart, Some((Pending, 3_600)), true, Some(true));
        check(BeforeStart, None, true, Some(true));
        check(AfterStart, Some((Pending, 0)), true, None);
        // ... and pending never starts one either.
        check(BeforeStart, Some((Pending, 0)), false, Some(false));
        check(BeforeStart, None, false, Some(false));
        check(AfterStart, Some((Pending, 0)), false, None);
    }
}
