//! The package manager in the daemon: the imperative shell around the
//! [`coordinator`](super::coordinator). It keeps the facts — a view of the
//! store (read once, then kept current by the watch and by this node's own
//! writes), what runs and what is under way here, service failures, the
//! lease's health — asks the coordinator what to do, and carries the
//! effects out: record writes all at once (one round of concurrent
//! compare-and-swaps), run permits claimed together, runs and halts handed
//! to the [`agent`](super::agent). It steps again when something changes:
//! an agent report, a resource transition, a service failure, an operator
//! command, a store change — once per burst, when the daemon's queue is
//! drained.
//!
//! Every ownership change goes through the store's compare-and-swap, which
//! bumps the package's fence token; `run` gets the new token. A write
//! decided from a view that was behind loses its compare-and-swap and is
//! decided again; what this node records about its own copy is written
//! only while the record still names it an owner.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::agent::{self, AgentCommand, AgentReport};
use super::coordinator::{self, AfterWrite, Effect, Facts, Prepared};
use super::lifecycle::{LifecycleEvent, Reason, RunnerContext};
use super::membership::{Membership, Permit};
use crate::config::package::PackageConfig;
use crate::criteria::{ResourceState, Transition};
use crate::guard::{Claim, ClaimPhase};
use crate::hub::ResourceHub;
use crate::placement::{self, Plan, ResourceVerdicts};
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
    membership: Membership,
    /// Failover packages whose record is ours, waiting for their run permit.
    claiming: BTreeMap<String, Claiming>,
    /// At most this many runs and halts under way here at once.
    max_parallel: usize,
    /// Run records and the guard's claims.
    run_dir: PathBuf,
    /// The store as this node last saw it: read once at startup, then kept
    /// current from the watch and from this node's own writes, so that
    /// planning, `status` and `why` never wait for a read.
    view: Snapshot,
    /// What this node learnt about its own copies (a run or halt done, a
    /// package re-adopted) and has still to record; written all at once
    /// at the next step, permits first.
    outcomes: Vec<Outcome>,
    /// Run permits to give back: nothing of these packages runs here.
    releases: Vec<String>,
    /// Something changed since the last step (an event, a report, a
    /// request): the daemon steps once its queue is drained, so a burst of
    /// a hundred reports costs one plan, not a hundred.
    dirty: bool,
    /// Packages running here from a definition the applied set changed in
    /// what runs: halted and run again ([`Facts::redefined`]).
    redefined: BTreeSet<String>,
    /// Packages the applied set dropped, until their records are gone
    /// ([`Facts::retired`]).
    retired: BTreeSet<String>,
}

/// Events the manager needs delivered back into the main loop.
pub struct ManagerChannels {
    pub reports: Box<dyn Fn(AgentReport) + Send + Sync>,
    pub lifecycle: mpsc::UnboundedSender<LifecycleEvent>,
}

/// A change to the record of a package this node runs (or ran), written
/// only while the record still names this node an owner.
struct Outcome {
    package: String,
    change: Box<dyn Fn(&mut PackageUpdate) + Send>,
}

/// The facts of a decision that the manager does not keep as fields.
struct Inputs {
    specs: Vec<placement::PackageSpec>,
    verdicts: ResourceVerdicts,
    in_flight: BTreeSet<String>,
    claiming: BTreeSet<String>,
    deferred_down: BTreeMap<String, String>,
    guard_halting: BTreeSet<String>,
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
    /// Leases, heartbeats and run permits (many nodes), or none (one).
    pub membership: Membership,
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
            membership,
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
        let mut view = store.snapshot().await?;
        let snapshot = view.clone();
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
                        Ok(created) => view.seen(created),
                        // The watch brings the other host's record.
                        Err(StoreError::Conflict { .. }) => {}
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
            membership,
            claiming: BTreeMap::new(),
            max_parallel,
            run_dir,
            view,
            outcomes: Vec::new(),
            releases: Vec::new(),
            dirty: true,
            redefined: BTreeSet::new(),
            retired: BTreeSet::new(),
        })
    }

    /// The packages this node runs by, in name order.
    pub fn packages(&self) -> Vec<PackageConfig> {
        self.packages.values().cloned().collect()
    }

    /// Takes a new package set (the applied set changed): new packages get
    /// a record, their resources watched and a worker; changed ones their
    /// new definition (a copy running here from an old definition of what
    /// runs is halted and run again; a placement change is only planned
    /// with); removed ones are halted where they run and their records
    /// deleted. Nothing that runs is touched otherwise.
    pub async fn set_packages(
        &mut self,
        packages: Vec<PackageConfig>,
        hub: &mut ResourceHub,
    ) -> super::applied::SetChanges {
        let old: Vec<PackageConfig> = self.packages.values().cloned().collect();
        let changes = super::applied::SetChanges::between(&old, &packages);
        let now = vigil_sdk::now_ms();
        for p in &packages {
            let before = self.packages.get(&p.name).cloned();
            let before = before.as_ref();
            if before.is_some_and(|b| super::applied::same(b, p)) {
                continue;
            }
            if before.is_none_or(|b| b.resources != p.resources) {
                hub.unwatch_package(&p.name);
                for r in &p.resources {
                    if let Some(t) =
                        hub.watch(&p.name, r.name.clone(), r.up.clone(), r.rise, r.fall, now)
                    {
                        self.on_transition(&t);
                    }
                }
            }
            let _ = self.agent.send(AgentCommand::Configure {
                config: Box::new(p.clone()),
            });
            let runs_here = self.running_here.contains(&p.name)
                || self.in_flight.contains_key(&p.name)
                || self.adopting.contains(&p.name);
            if before.is_some_and(|b| super::applied::redefines(b, p)) && runs_here {
                self.redefined.insert(p.name.clone());
            }
            self.retired.remove(&p.name);
            if !self.view.packages.contains_key(&p.name) {
                match self
                    .store
                    .update_package(p.name.clone(), 0, PackageUpdate::down("applied"))
                    .await
                {
                    Ok(created) => self.view.seen(created),
                    Err(StoreError::Conflict { .. }) => {}
                    Err(e) => {
                        warn!(package = %p.name, error = %e, "cannot create the record of an applied package")
                    }
                }
            }
        }
        for name in &changes.removed {
            hub.unwatch_package(name);
            self.redefined.remove(name);
            self.retired.insert(name.clone());
        }
        self.packages = packages.into_iter().map(|p| (p.name.clone(), p)).collect();
        self.dirty = true;
        changes
    }

    /// The applied package set as this node last saw it.
    pub fn applied(&self) -> Option<&Versioned<crate::store::AppliedPackages>> {
        self.view.applied.as_ref()
    }

    /// Stores `set` as the cluster's package set, if the one this node
    /// saw last is still the current one (compare-and-swap).
    pub async fn put_applied(
        &mut self,
        set: crate::store::AppliedPackages,
    ) -> Result<Versioned<crate::store::AppliedPackages>, StoreError> {
        let expected = self.view.applied.as_ref().map_or(0, |a| a.mod_revision);
        let written = self.store.put_applied(expected, set).await?;
        self.view.apply(&crate::store::StoreEvent {
            revision: written.mod_revision,
            change: crate::store::Change::Applied(written.clone()),
        });
        Ok(written)
    }

    /// A change the store's watch reported.
    pub fn on_store_event(&mut self, event: &crate::store::StoreEvent) {
        self.view.apply(event);
        self.dirty = true;
    }

    /// The watch was lost and taken again: its snapshot replaces the view.
    pub fn resync(&mut self, snapshot: Snapshot) {
        info!(revision = snapshot.revision, "store view resynchronised");
        self.view = snapshot;
        self.dirty = true;
    }

    /// Whether something happened that the next step must look at.
    pub fn wants_step(&self) -> bool {
        self.dirty
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
        let store = self.view.clone();
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
                    .write_if(
                        &package,
                        |r| r.owners.contains(&node) && r.fence_token == fence,
                        |u| {
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
                        },
                    )
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
                && let Err(e) = self.membership.release(&package, &node).await
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

    /// What the coordinator decides from, owned: the facts that are not
    /// fields of the manager already.
    fn inputs(&self, hub: &ResourceHub) -> Inputs {
        let now = vigil_sdk::now_ms();
        let mut verdicts = ResourceVerdicts::default();
        let mut deferred_down = BTreeMap::new();
        for (name, p) in &self.packages {
            let running_on: &[String] = self
                .view
                .packages
                .get(name)
                .filter(|r| {
                    matches!(
                        r.value.state,
                        PackageState::Up | PackageState::Starting | PackageState::Halting
                    )
                })
                .map_or(&[], |r| &r.value.owners);
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
                        self.view
                            .resources
                            .get(&(node.clone(), r.name.clone()))
                            .map(|&state| (state, std::time::Duration::ZERO))
                    };
                    let runs_there = running_on.contains(node);
                    if let Some(up) = resource_verdict(r, judged, runs_there) {
                        verdicts
                            .entry(name.clone())
                            .or_default()
                            .entry(node.clone())
                            .or_default()
                            .insert(r.name.to_string(), up);
                    }
                }
                if r.evaluate == placement::Evaluate::AfterStart
                    && hub.state(name, &r.name) == Some(ResourceState::Down)
                    && !deferred_down.contains_key(name)
                {
                    deferred_down.insert(
                        name.clone(),
                        format!("after_start resource {} went down on {}", r.name, self.node),
                    );
                }
            }
        }
        // The guard may still be halting an old copy here (after a freeze):
        // only a package not running here can be started, so only those.
        let guard_halting = self
            .packages
            .keys()
            .filter(|p| !self.running_here.contains(*p) && !self.in_flight.contains_key(*p))
            .filter(|p| Claim::load(&self.run_dir, p).is_some_and(|c| c.in_progress()))
            .cloned()
            .collect();
        Inputs {
            specs: self.packages.values().map(PackageConfig::to_spec).collect(),
            verdicts,
            in_flight: self.in_flight.keys().cloned().collect(),
            claiming: self.claiming.keys().cloned().collect(),
            deferred_down,
            guard_halting,
        }
    }

    fn facts<'a>(&'a self, inputs: &'a Inputs) -> Facts<'a> {
        Facts {
            node: &self.node,
            cluster_nodes: &self.cluster_nodes,
            packages: &inputs.specs,
            store: &self.view,
            verdicts: &inputs.verdicts,
            in_flight: &inputs.in_flight,
            claiming: &inputs.claiming,
            running_here: &self.running_here,
            adopting: &self.adopting,
            failures: &self.failures,
            deferred_down: &inputs.deferred_down,
            guard_halting: &inputs.guard_halting,
            redefined: &self.redefined,
            retired: &self.retired,
            lease_in_doubt: self.lease_in_doubt(),
            max_parallel: self.max_parallel,
        }
    }

    fn plan(&self, hub: &ResourceHub) -> Plan {
        let inputs = self.inputs(hub);
        placement::plan(&coordinator::placement_input(&self.facts(&inputs)))
    }

    /// Dispatches what can be dispatched now: the plan's next action when
    /// nothing is under way, and at any time the halts that must not wait
    /// (a resource down here, a failed service, lost ownership).
    pub async fn step(&mut self, hub: &ResourceHub) {
        self.dirty = false;
        // Another node deleted the record of a retired package.
        let view = &self.view;
        self.retired.retain(|p| view.packages.contains_key(p));
        self.record_outcomes().await;
        self.publish_resource_states().await;
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
        self.decide_and_act(hub).await;
    }

    /// One decision of the coordinator, carried out.
    async fn decide_and_act(&mut self, hub: &ResourceHub) {
        let inputs = self.inputs(hub);
        let effects = coordinator::decide(&self.facts(&inputs));
        let mut writes = Vec::new();
        for effect in effects {
            match effect {
                Effect::HaltUnrecorded { package, reason } => {
                    warn!(%package, node = %self.node, %reason, "ownership went to another node; halting the copy here");
                    self.in_flight.insert(
                        package.clone(),
                        InFlight {
                            reason,
                            then_fail: None,
                            record: false,
                        },
                    );
                    let _ = self.agent.send(AgentCommand::Halt { package, reason });
                }
                Effect::Write(prepared) => writes.push(prepared),
                Effect::DeleteRecord { package, revision } => {
                    match self.store.delete_package(package.clone(), revision).await {
                        Ok(_) => {
                            info!(%package, "record deleted: no longer in the applied package set");
                            self.view.packages.remove(&package);
                            self.retired.remove(&package);
                        }
                        Err(e) => {
                            warn!(%package, error = %e, "cannot delete the record of a removed package; retrying")
                        }
                    }
                }
            }
        }
        self.carry_out(writes).await;
        // A failure whose halt is under way is handled; one whose record
        // write failed stays for the next step.
        let in_flight = &self.in_flight;
        self.failures.retain(|p, _| !in_flight.contains_key(p));
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
                Some(Ok(updated)) => {
                    self.view.seen(updated.clone());
                    updated
                }
                Some(Err(e)) => {
                    warn!(package = %p.package, error = %e, "cannot record the action; replanning");
                    continue;
                }
                None => continue,
            };
            match p.then {
                AfterWrite::Nothing => {
                    info!(package = %p.package, state = p.update.state.as_str(), reason = %p.update.reason, "recorded");
                }
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
                    if failover && self.membership.shared() {
                        self.claiming.insert(claim.package.clone(), claim.clone());
                        claims.push(claim);
                    } else {
                        self.launch(claim);
                    }
                }
            }
        }
        let mut asks = tokio::task::JoinSet::new();
        for claim in claims {
            let ask = self
                .membership
                .claim(&claim.package, claim.revision, &self.node);
            asks.spawn(async move { (claim, ask.await) });
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

    /// Asks for the package's run permit; launches when granted, keeps
    /// waiting while another node holds it.
    async fn try_claim(&mut self, claim: Claiming) -> Result<(), StoreError> {
        let outcome = self
            .membership
            .claim(&claim.package, claim.revision, &self.node)
            .await;
        self.on_claim_outcome(claim, outcome).await
    }

    /// Acts on the answer to a permit claim: launch when granted, keep
    /// waiting while another node holds it, give up when the record moved.
    async fn on_claim_outcome(
        &mut self,
        claim: Claiming,
        outcome: Result<Permit, StoreError>,
    ) -> Result<(), StoreError> {
        match outcome {
            Ok(Permit::Granted) => {
                self.claiming.remove(&claim.package);
                self.launch(claim);
            }
            Ok(Permit::HeldBy { node: holder }) => {
                info!(package = %claim.package, %holder, "run permit still held; waiting");
            }
            Ok(Permit::NotOwner { owners }) => {
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

    /// On a cluster: rejoins with a new lease once the old one expired.
    pub async fn maintain_link(&mut self) {
        self.membership.maintain(&self.node).await;
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
        self.membership.shared()
    }

    /// True when this node's lease might expire within the safety margin.
    pub fn lease_in_doubt(&self) -> bool {
        self.membership.lease_in_doubt()
    }

    /// The package's record read from the store itself (the view may be
    /// behind: a write just lost a compare-and-swap), taken into the view.
    async fn record(&mut self, package: &str) -> Result<Versioned<PackageRecord>, StoreError> {
        let store = self.store.snapshot().await?;
        let record = store
            .packages
            .get(package)
            .cloned()
            .ok_or_else(|| StoreError::Backend {
                path: "store".into(),
                message: format!("package {package} has no record"),
            })?;
        self.view.seen(record.clone());
        Ok(record)
    }

    /// Keeps `change` for the next step, which records it.
    fn outcome(&mut self, package: &str, change: impl Fn(&mut PackageUpdate) + Send + 'static) {
        self.outcomes.push(Outcome {
            package: package.to_owned(),
            change: Box::new(change),
        });
        self.dirty = true;
    }

    /// Gives back the permits and writes the outcomes gathered since the
    /// last step, each round concurrently: a hundred packages halted or
    /// started together cost one round trip, not a hundred on the main
    /// loop. A package's later outcomes, and those that lost their
    /// compare-and-swap, are written after, one by one and in order, from
    /// fresh reads.
    async fn record_outcomes(&mut self) {
        let mut releases = tokio::task::JoinSet::new();
        for package in std::mem::take(&mut self.releases) {
            let release = self.membership.release(&package, &self.node);
            releases.spawn(async move { (package, release.await) });
        }
        while let Some(joined) = releases.join_next().await {
            if let Ok((package, Err(e))) = joined {
                warn!(%package, error = %e, "cannot release the run permit; it goes with the lease");
            }
        }
        let outcomes = std::mem::take(&mut self.outcomes);
        if outcomes.is_empty() {
            return;
        }
        let mut first: BTreeSet<&str> = BTreeSet::new();
        let mut serial: Vec<usize> = Vec::new();
        let mut writes = tokio::task::JoinSet::new();
        for (i, o) in outcomes.iter().enumerate() {
            if !first.insert(o.package.as_str()) {
                serial.push(i);
                continue;
            }
            let Some(record) = self.view.packages.get(&o.package) else {
                serial.push(i);
                continue;
            };
            if !record.value.owners.contains(&self.node) {
                info!(package = %o.package, owners = ?record.value.owners, "record moved on; not writing over it");
                continue;
            }
            let mut update = PackageUpdate::from(&record.value);
            (o.change)(&mut update);
            let (store, name, revision) = (
                Arc::clone(&self.store),
                o.package.clone(),
                record.mod_revision,
            );
            writes.spawn(async move { (i, store.update_package(name, revision, update).await) });
        }
        while let Some(joined) = writes.join_next().await {
            match joined {
                Ok((_, Ok(written))) => self.view.seen(written),
                Ok((i, Err(StoreError::Conflict { .. }))) => serial.push(i),
                Ok((i, Err(e))) => {
                    warn!(package = %outcomes[i].package, error = %e, "cannot record an action's outcome in the store")
                }
                Err(e) => warn!(error = %e, "a store write task failed"),
            }
        }
        serial.sort_unstable();
        for i in serial {
            let o = &outcomes[i];
            if let Err(e) = self.write_owned(&o.package, &*o.change).await {
                warn!(package = %o.package, error = %e, "cannot record an action's outcome in the store");
            }
        }
    }

    /// Writes `change` to the package's record: from the view first, from a
    /// fresh read after a lost compare-and-swap.
    async fn write(
        &mut self,
        package: &str,
        change: impl Fn(&mut PackageUpdate),
    ) -> Result<(), StoreError> {
        self.write_if(package, |_| true, change).await
    }

    /// [`write`](Self::write) of what this node records about its own copy
    /// (its outcome, its halt): only while the record still names this node
    /// as an owner. A decision taken on a view that was behind (a host
    /// frozen for seconds) must not land on the record of the node that
    /// took the package over.
    async fn write_owned(
        &mut self,
        package: &str,
        change: impl Fn(&mut PackageUpdate),
    ) -> Result<(), StoreError> {
        let node = self.node.clone();
        self.write_if(package, |r| r.owners.contains(&node), change)
            .await
    }

    /// Writes `change` when `holds` is true of the record it would replace
    /// — checked again on every attempt, against what is really stored.
    async fn write_if(
        &mut self,
        package: &str,
        holds: impl Fn(&PackageRecord) -> bool,
        change: impl Fn(&mut PackageUpdate),
    ) -> Result<(), StoreError> {
        for attempt in 0..5 {
            let record = match self.view.packages.get(package) {
                Some(record) if attempt == 0 => record.clone(),
                _ => self.record(package).await?,
            };
            if !holds(&record.value) {
                info!(%package, state = record.value.state.as_str(), owners = ?record.value.owners, "record moved on; not writing over it");
                return Ok(());
            }
            let mut update = PackageUpdate::from(&record.value);
            change(&mut update);
            match self
                .store
                .update_package(package.to_owned(), record.mod_revision, update)
                .await
            {
                Ok(written) => {
                    self.view.seen(written);
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
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
        match report {
            AgentReport::Adopted { package, result } => {
                self.adopting.remove(&package);
                match result {
                    Ok(()) => {
                        info!(%package, "re-adopted: still running, not restarted");
                        self.running_here.insert(package.clone());
                        self.outcome(&package, move |u| {
                            u.state = PackageState::Up;
                            u.reason = format!("re-adopted on {node} after a host restart");
                        });
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
                        } else {
                            warn!(%package, error = %e, "cannot re-adopt; it is not running here");
                            self.outcome(&package, move |u| {
                                u.state = PackageState::Down;
                                u.owners.retain(|o| *o != node);
                                u.reason = format!("not running after a host restart: {e}");
                            });
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
                        self.outcome(&package, move |u| {
                            u.state = PackageState::Up;
                            u.reason = format!("up on {node} ({why})");
                        });
                    }
                    Err(e) => {
                        warn!(%package, %node, error = %e, "run failed; halting to clean up");
                        let halt = coordinator::prepare_halt(
                            &self.view,
                            &node,
                            &package,
                            Reason::RunFailed,
                            Some(format!("run failed on {node}: {e}")),
                        );
                        self.carry_out(halt.into_iter().collect()).await;
                    }
                }
            }
            AgentReport::Halted { package, result } => {
                let flight = self.in_flight.remove(&package);
                self.running_here.remove(&package);
                // Halted: its next run takes the new definition.
                self.redefined.remove(&package);
                if flight.as_ref().is_some_and(|f| !f.record) {
                    info!(%package, %node, ok = result.is_ok(), "stale copy halted");
                    self.dirty = true;
                    return;
                }
                if result.is_ok() {
                    self.releases.push(package.clone());
                }
                let then_fail = flight.as_ref().and_then(|f| f.then_fail.clone());
                let reason = flight.map(|f| f.reason);
                let why = reason.map_or("unrecorded", |r| r.as_str());
                match (result, then_fail) {
                    (Ok(()), None) => {
                        info!(%package, %node, "package halted");
                        let failing = !reason.is_some_and(|r| r.is_deliberate());
                        self.outcome(&package, move |u| {
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
                        });
                    }
                    (Ok(()), Some(failure)) => {
                        warn!(%package, %node, %failure, "package failed here");
                        self.outcome(&package, move |u| {
                            u.state = PackageState::Failed;
                            u.owners.retain(|o| *o != node);
                            u.failed_on.insert(node.clone());
                            u.reason = failure.clone();
                            u.left = Some(node.clone());
                        });
                    }
                    // The halt script failed: something may still run, so the
                    // package keeps this node as owner and no other node may
                    // start it until an operator clears it.
                    (Err(e), _) => {
                        warn!(%package, %node, error = %e, "halt failed");
                        self.outcome(&package, move |u| {
                            u.state = PackageState::Failed;
                            u.failed_on.insert(node.clone());
                            u.reason = format!("halt failed on {node}: {e}");
                        });
                    }
                }
            }
        }
        self.dirty = true;
    }

    /// A service exited, restarted, or used up its restarts.
    pub async fn on_lifecycle(&mut self, event: LifecycleEvent) {
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
                self.dirty = true;
            }
            LifecycleEvent::GuardHalted {
                package, service, ..
            } => {
                warn!(%package, %service, "service stopped by the guard");
                self.check_guard().await;
                self.dirty = true;
            }
        }
    }

    /// A package's view of a resource changed: plan again at once, so a
    /// required resource going down halts the package here without waiting.
    pub fn on_transition(&mut self, transition: &Transition) {
        // Other nodes place packages on what this node reports.
        if self.membership.shared() {
            self.unpublished
                .insert(transition.resource.clone(), transition.to);
            self.dirty = true;
        }
        if self.packages.contains_key(&transition.package) {
            self.dirty = true;
        }
    }

    pub async fn status(&self, hub: &ResourceHub) -> Result<StatusOutput, StoreError> {
        let store = &self.view;
        Ok(StatusOutput {
            config_errors: Vec::new(),
            applied: store
                .applied
                .as_ref()
                .map(|a| crate::views::AppliedStatus::new(&a.value)),
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
                        parts_here: self.parts_here(&p.name),
                    }
                })
                .collect(),
        })
    }

    /// The parts of `package` up here, from its run record (they are
    /// node-local: each node answers for its own).
    fn parts_here(&self, package: &str) -> Vec<crate::views::PartStatus> {
        super::lifecycle::RunRecord::load(&agent::record_path(&self.run_dir, package))
            .map(|r| r.parts)
            .unwrap_or_default()
            .iter()
            .map(|part| crate::views::PartStatus {
                kind: part.kind().to_owned(),
                part: part.to_string(),
            })
            .collect()
    }

    pub async fn why(&self, package: &str, hub: &ResourceHub) -> Result<WhyOutput, String> {
        if !self.packages.contains_key(package) {
            return Err(format!("no package named {package:?}"));
        }
        let plan = self.plan(hub);
        let store = &self.view;
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
                // Up but asked to halt (its owner has not halted it yet: it
                // may be frozen) is not running for good: the run request
                // must cancel the halt.
                let running = before.state == PackageState::Up
                    && !before.owners.is_empty()
                    && !before.admin.halted;
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
                let plan = self.plan(hub);
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
        self.dirty = true;
        Ok(done)
    }

    /// `vigil node run|halt NAME` (this node only, for now).
    pub async fn node_admin(&mut self, halt: bool, node: &str) -> Result<String, String> {
        if !self.cluster_nodes.iter().any(|n| n == node) {
            return Err(format!("node {node:?} is not in cluster.nodes"));
        }
        // Another node's record can be changed only while that node is there
        // to hold it: a record written for a dead node would outlive it.
        if node != self.node && !self.view.nodes.contains_key(node) {
            return Err(format!(
                "node {node:?} is not running `vigil host`; start it there"
            ));
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
        self.dirty = true;
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
