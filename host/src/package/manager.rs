//! The package manager in the daemon: the imperative shell around the
//! [`coordinator`](super::coordinator). It keeps the facts — a view of the
//! store (read once, then kept current by the watch and by this node's own
//! writes), what runs and what is under way here, service failures, the
//! lease's health — asks the coordinator what to do, and carries the
//! effects out without waiting for the store: record writes go out as one
//! [round](super::rounds) of concurrent compare-and-swaps on a task, run
//! permits are claimed together, runs and halts are handed to the
//! [`agent`](super::agent) (a halt of a copy running here at once, before
//! its record is written). It steps again when something changes:
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
use tracing::{debug, info, warn};

use super::agent::{self, AgentCommand, AgentReport};
use super::coordinator::{self, AfterWrite, Effect, Facts, Prepared};
use super::lifecycle::{LifecycleEvent, Reason, RunnerContext};
use super::membership::{Membership, Permit};
use super::releases::{InUse, Releases};
use super::rounds::{self, OwnOutcome};
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
    /// `vigil pkg maintenance NAME on`.
    MaintenanceOn,
    /// `vigil pkg maintenance NAME off`.
    MaintenanceOff,
}

/// An operator command's store work, to run on a task.
pub type AdminWork = std::pin::Pin<Box<dyn std::future::Future<Output = AdminDone> + Send>>;

/// An operator command's store work, done: what finishes the command on
/// the main loop ([`PackageManager::admin_done`]).
pub struct AdminDone(Box<Finish>);

/// Finishes an operator command on the main loop.
type Finish = dyn FnOnce(&mut PackageManager, &ResourceHub) -> Answer + Send;

impl std::fmt::Debug for AdminDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminDone")
    }
}

/// What an operator command did, or why it could not.
type Answer = Result<String, String>;

/// The package record as `vigil pkg` found it, and as it wrote it (`None`:
/// nothing to write, or the record moved on).
struct PkgWritten {
    before: Versioned<PackageRecord>,
    written: Option<Versioned<PackageRecord>>,
}

/// A change to a package record, sent to a task.
type Change = Box<dyn Fn(&mut PackageUpdate) + Send + Sync>;

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
    /// Per package and service, how often it exited on its own here and
    /// how it last did (for `status -v`; cleared by `pkg clear`).
    service_exits: BTreeMap<String, BTreeMap<String, ServiceExits>>,
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
    outcomes: Vec<OwnOutcome>,
    /// Run permits to give back: nothing of these packages runs here.
    releases: Releases,
    /// The store round under way, if any (one at a time).
    round: Option<Round>,
    /// Where rounds report back.
    rounds: Arc<dyn Fn(rounds::Done) + Send + Sync>,
    /// Decided writes waiting for the next round of decisions (a round was
    /// out, or a run failed and its halt was dispatched at once).
    queued: Vec<Prepared>,
    /// Packages whose halt was handed to the agent before its record was
    /// written (a copy running here): not to be halted again after.
    halted_early: BTreeSet<String>,
    /// The guard's claims in the run directory.
    claims: crate::guard::Claims,
    /// The fence token of the copy that runs here, or is being started or
    /// halted here, by package: a guard's claim of another token is of an
    /// earlier copy.
    fences: BTreeMap<String, crate::store::FenceToken>,
    /// The guard's claims already dealt with, by package: their fence.
    guard_handled: BTreeMap<String, crate::store::FenceToken>,
    /// Something changed since the last step (an event, a report, a
    /// request): the daemon steps once its queue is drained, so a burst of
    /// a hundred reports costs one plan, not a hundred.
    dirty: bool,
    /// The nodes alive as the view says, shared with the runners.
    live_nodes: crate::package::parts::LiveNodes,
    /// What maintenance holds back here, as last logged.
    withheld: BTreeMap<String, String>,
    /// Maintenance as last told to the agent (its services are not
    /// restarted meanwhile), by package.
    maintenance_told: BTreeMap<String, bool>,
    /// A fail-fast failure (DESIGN §5): the node must halt at once; the
    /// daemon takes it with [`Self::take_fail_fast`].
    fail_fast: Option<String>,
    /// Packages running here from a definition the applied set changed in
    /// what runs: halted and run again ([`Facts::redefined`]).
    redefined: BTreeSet<String>,
    /// Packages the applied set dropped, until their records are gone
    /// ([`Facts::retired`]).
    retired: BTreeSet<String>,
    /// Retired packages whose record is being deleted (on a task), since
    /// when: asked again after a second if the record is still there.
    deleting: BTreeMap<String, std::time::Instant>,
    /// Packages of the applied set that have no record yet: created on a
    /// task (the watch brings the record into the view), by package: when
    /// it was last asked.
    creating: BTreeMap<String, Option<std::time::Instant>>,
}

/// How often a service exited on its own here, and how it last did.
#[derive(Debug, Clone, Default)]
struct ServiceExits {
    count: u32,
    /// `exited with status 1 at <RFC 3339>`.
    last: String,
}

/// Events the manager needs delivered back into the main loop.
pub struct ManagerChannels {
    pub reports: Box<dyn Fn(AgentReport) + Send + Sync>,
    /// A store round's results.
    pub rounds: Box<dyn Fn(rounds::Done) + Send + Sync>,
    pub lifecycle: mpsc::UnboundedSender<LifecycleEvent>,
}

/// A store round under way.
#[derive(Debug)]
enum Round {
    Bookkeeping,
    /// The coordinator's writes for these packages.
    Decisions(BTreeSet<String>),
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
        let live_nodes = ctx.live_nodes.clone();
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
                maintenance: false,
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
            service_exits: BTreeMap::new(),
            running_here: BTreeSet::new(),
            unpublished: BTreeMap::new(),
            membership,
            claiming: BTreeMap::new(),
            max_parallel,
            claims: crate::guard::Claims::new(&run_dir),
            fences: BTreeMap::new(),
            run_dir,
            view,
            outcomes: Vec::new(),
            releases: Releases::default(),
            round: None,
            rounds: Arc::from(channels.rounds),
            queued: Vec::new(),
            halted_early: BTreeSet::new(),
            guard_handled: BTreeMap::new(),
            dirty: true,
            live_nodes,
            withheld: BTreeMap::new(),
            maintenance_told: BTreeMap::new(),
            fail_fast: None,
            redefined: BTreeSet::new(),
            retired: BTreeSet::new(),
            deleting: BTreeMap::new(),
            creating: BTreeMap::new(),
        }
        .with_live_nodes())
    }

    /// Shares the nodes whose records the view holds (with etcd, those
    /// whose liveness lease is held) with the package runners.
    fn with_live_nodes(self) -> Self {
        self.share_live_nodes();
        self
    }

    fn share_live_nodes(&self) {
        let live = crate::package::parts::ClusterLiveness {
            members: self.cluster_nodes.iter().cloned().collect(),
            alive: self.view.nodes.keys().cloned().collect(),
        };
        if let Ok(mut shared) = self.live_nodes.write()
            && shared.as_ref() != Some(&live)
        {
            *shared = Some(live);
        }
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
    pub fn set_packages(
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
                self.creating.entry(p.name.clone()).or_insert(None);
            }
        }
        for name in &changes.removed {
            hub.unwatch_package(name);
            self.creating.remove(name);
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
    /// saw last is still the current one (compare-and-swap): the work, to
    /// run on a task; [`Self::applied_stored`] takes its answer.
    pub fn put_applied(
        &self,
        set: crate::store::AppliedPackages,
    ) -> super::membership::Pending<Versioned<crate::store::AppliedPackages>> {
        let expected = self.view.applied.as_ref().map_or(0, |a| a.mod_revision);
        let store = Arc::clone(&self.store);
        Box::pin(async move { store.put_applied(expected, set).await })
    }

    /// The package set this node stored, into the view.
    pub fn applied_stored(&mut self, written: Versioned<crate::store::AppliedPackages>) {
        self.view.apply(&crate::store::StoreEvent {
            revision: written.mod_revision,
            change: crate::store::Change::Applied(written),
        });
    }

    /// A change the store's watch reported.
    pub fn on_store_event(&mut self, event: &crate::store::StoreEvent) {
        self.view.apply(event);
        if matches!(
            event.change,
            crate::store::Change::Node(_) | crate::store::Change::NodeDeleted { .. }
        ) {
            self.share_live_nodes();
        }
        self.dirty = true;
    }

    /// The watch was lost and taken again: its snapshot replaces the view.
    pub fn resync(&mut self, snapshot: Snapshot) {
        info!(revision = snapshot.revision, "store view resynchronised");
        self.view = snapshot;
        self.share_live_nodes();
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
    /// The record is written by the next bookkeeping round (if it still
    /// names this node under the claim's fence token); a record that round
    /// cannot write is corrected by the coordinator, since nothing of the
    /// package runs here any more.
    pub fn check_guard(&mut self) {
        self.claims.refresh();
        let claims: Vec<Claim> = self
            .packages
            .keys()
            .filter_map(|p| self.claims.get(p).cloned())
            .filter(|c| !c.in_progress())
            .filter(|c| self.guard_handled.get(&c.record.package) != Some(&c.fence()))
            .collect();
        let node = self.node.clone();
        for claim in claims {
            let package = claim.record.package.clone();
            let fence = claim.fence();
            self.guard_handled.insert(package.clone(), fence);
            let record = self.view.packages.get(&package).map(|r| &r.value);
            let ours = match judge_claim(fence, self.fences.get(&package).copied(), record, &node) {
                ClaimOf::EarlierCopy => {
                    // The guard halted a copy the host has started again
                    // since: the new copy, its record and its permit are
                    // not the claim's. The agent only clears the claim.
                    info!(%package, claimed = %fence, "the guard halted an earlier copy; the copy started here since runs on");
                    let _ = self
                        .agent
                        .send(AgentCommand::GuardHalted { package, fence });
                    continue;
                }
                ClaimOf::Recorded => true,
                ClaimOf::Unrecorded => false,
            };
            let halted = claim.phase == ClaimPhase::Halted;
            if ours {
                let why = claim.describe(&node);
                warn!(%package, %fence, reason = %why, "the guard halted this package");
                let owner = node.clone();
                let node = node.clone();
                self.outcome_if(
                    &package,
                    move |r| r.owners.contains(&owner) && r.fence_token == fence,
                    move |u| {
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
                );
            }
            // Nothing of it runs here any more: the permit goes too, or the
            // adoptive node would wait for it as long as this node keeps its
            // lease. (After a failed halt something may still run, and the
            // package stays failed here, permit and all.)
            if halted {
                self.releases.ended(&package);
            }
            self.running_here.remove(&package);
            self.fences.remove(&package);
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
            .filter(|p| self.claims.get(p).is_some_and(Claim::in_progress))
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

    /// Dispatches what can be dispatched now, without waiting for the
    /// store: first a bookkeeping round (what this node learnt), then, once
    /// it is back, the coordinator's decisions as a round of writes. While
    /// a round is out, only the halts that must not wait are dispatched (a
    /// resource down here, a failed service, lost ownership); their records
    /// follow in the next round.
    pub fn step(&mut self, hub: &ResourceHub) {
        let started = std::time::Instant::now();
        self.step_once(hub);
        // What a step costs (bench/mass_failover reads these lines): it
        // reads no store, so it should not grow much with the packages.
        debug!(
            took_us = started.elapsed().as_micros() as u64,
            packages = self.packages.len(),
            "stepped"
        );
    }

    fn step_once(&mut self, hub: &ResourceHub) {
        self.dirty = false;
        self.claims.refresh();
        self.tell_maintenance();
        // Another node deleted the record of a retired package.
        let view = &self.view;
        self.retired.retain(|p| view.packages.contains_key(p));
        self.deleting.retain(|p, _| view.packages.contains_key(p));
        self.create_records();
        if self.round.is_some() {
            self.decide_and_act(hub, true);
            return;
        }
        if !self.start_bookkeeping() {
            self.decide(hub);
        }
    }

    /// Creates, on tasks, the records of applied packages that have none;
    /// again a second after a failed attempt. Another node creating the
    /// same record first is no error: the watch brings its record.
    fn create_records(&mut self) {
        let view = &self.view;
        self.creating.retain(|p, _| !view.packages.contains_key(p));
        for (package, asked) in &mut self.creating {
            if asked.is_some_and(|t| t.elapsed().as_secs() < 1) {
                continue;
            }
            *asked = Some(std::time::Instant::now());
            let (store, package) = (Arc::clone(&self.store), package.clone());
            tokio::spawn(async move {
                match store
                    .update_package(package.clone(), 0, PackageUpdate::down("applied"))
                    .await
                {
                    Ok(_) | Err(StoreError::Conflict { .. }) => {}
                    Err(e) => {
                        warn!(%package, error = %e, "cannot create the record of an applied package; retrying")
                    }
                }
            });
        }
    }

    /// The coordinator's decision on the view as it is, unless packages
    /// are still being re-adopted.
    fn decide(&mut self, hub: &ResourceHub) {
        if self.adopting.is_empty() {
            self.decide_and_act(hub, false);
        }
    }

    /// One decision of the coordinator, carried out: halts of copies that
    /// run here are handed to the agent at once, before their records are
    /// written (halting this node's own copy is always safe, and a halt
    /// must not wait for a store round trip); the writes go out as one
    /// round. `urgent_only`: a round is out, so only those halts.
    fn decide_and_act(&mut self, hub: &ResourceHub, urgent_only: bool) {
        let inputs = self.inputs(hub);
        let effects = coordinator::decide(&self.facts(&inputs));
        let mut writes = Vec::new();
        let mut withheld = BTreeMap::new();
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
                Effect::Write(prepared) => {
                    let halts_a_copy_here = matches!(prepared.then, AfterWrite::Halt { .. })
                        && self.running_here.contains(&prepared.package);
                    let in_round = matches!(&self.round, Some(Round::Decisions(p)) if p.contains(&prepared.package));
                    if urgent_only && (!halts_a_copy_here || in_round) {
                        continue;
                    }
                    if halts_a_copy_here {
                        self.halt_now(&prepared);
                        self.halted_early.insert(prepared.package.clone());
                    }
                    writes.push(prepared);
                }
                Effect::Withheld { package, would } => {
                    withheld.insert(package, would);
                }
                Effect::DeleteRecord { package, revision } => {
                    // On a task: the watch brings the deletion into the view.
                    let asked = self.deleting.get(&package);
                    if urgent_only || asked.is_some_and(|t| t.elapsed().as_secs() < 1) {
                        continue;
                    }
                    self.deleting
                        .insert(package.clone(), std::time::Instant::now());
                    let store = Arc::clone(&self.store);
                    tokio::spawn(async move {
                        match store.delete_package(package.clone(), revision).await {
                            Ok(_) => {
                                info!(%package, "record deleted: no longer in the applied package set")
                            }
                            Err(e) => {
                                warn!(%package, error = %e, "cannot delete the record of a removed package; retrying")
                            }
                        }
                    });
                }
            }
        }
        self.log_withheld(withheld);
        // A failure whose halt is under way is handled; one whose record
        // write failed stays for the next step.
        let in_flight = &self.in_flight;
        self.failures.retain(|p, _| !in_flight.contains_key(p));
        self.queued.extend(writes);
        if !urgent_only {
            self.start_decisions();
        }
    }

    /// Hands the halt `prepared` leads to to the agent now.
    fn halt_now(&mut self, prepared: &Prepared) {
        let AfterWrite::Halt { reason, then_fail } = &prepared.then else {
            return;
        };
        info!(package = %prepared.package, node = %self.node, %reason, "halting package");
        self.in_flight.insert(
            prepared.package.clone(),
            InFlight {
                reason: *reason,
                then_fail: then_fail.clone(),
                record: true,
            },
        );
        let _ = self.agent.send(AgentCommand::Halt {
            package: prepared.package.clone(),
            reason: *reason,
        });
    }

    /// What this node does with `package` now, for its run permit.
    fn in_use(&self, package: &str) -> InUse {
        if self.running_here.contains(package) || self.in_flight.contains_key(package) {
            InUse::Runs
        } else if self.claiming.contains_key(package) {
            InUse::Claimed
        } else {
            InUse::Free
        }
    }

    /// Sends what this node learnt (permits to give back, outcomes,
    /// resource states, permits still waited for) as one round; false when
    /// there is nothing to send.
    fn start_bookkeeping(&mut self) -> bool {
        if self.releases.is_empty()
            && self.outcomes.is_empty()
            && self.unpublished.is_empty()
            && self.claiming.is_empty()
        {
            return false;
        }
        let node = self.node.clone();
        let mut owed = std::mem::take(&mut self.releases);
        let send = owed.take(|p| self.in_use(p));
        self.releases = owed;
        let releases = send
            .into_iter()
            .map(|p| {
                let release = self.membership.release(&p, &node);
                (p, release)
            })
            .collect();
        let outcomes = std::mem::take(&mut self.outcomes)
            .into_iter()
            .map(|o| {
                let base = self.view.packages.get(&o.package).cloned();
                (o, base)
            })
            .collect();
        let states = (!self.unpublished.is_empty()).then(|| {
            let states = self
                .unpublished
                .iter()
                .map(|(r, s)| (r.clone(), *s))
                .collect();
            (node.clone(), states)
        });
        let claims = self
            .claiming
            .values()
            .map(|c| {
                let claim = self.membership.claim(&c.package, c.revision, &node);
                (c.package.clone(), claim)
            })
            .collect();
        self.round = Some(Round::Bookkeeping);
        rounds::spawn_bookkeeping(
            Arc::clone(&self.store),
            rounds::Bookkeeping {
                releases,
                outcomes,
                states,
                claims,
            },
            Arc::clone(&self.rounds),
        );
        true
    }

    /// Sends the queued decisions as one round of writes.
    fn start_decisions(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        let writes = std::mem::take(&mut self.queued);
        self.round = Some(Round::Decisions(
            writes.iter().map(|p| p.package.clone()).collect(),
        ));
        rounds::spawn_decisions(
            Arc::clone(&self.store),
            rounds::Decisions {
                writes,
                permits: self.membership.permits(&self.node),
            },
            Arc::clone(&self.rounds),
        );
    }

    /// A round came back: its records go into the view, and what follows
    /// them is handed on. After bookkeeping the coordinator decides at
    /// once, on a view that includes it.
    pub fn on_round_done(&mut self, done: rounds::Done, hub: &ResourceHub) {
        self.round = None;
        self.dirty = true;
        match done {
            rounds::Done::Bookkeeping {
                unreleased,
                seen,
                unrecorded,
                published,
                claims,
            } => {
                // Given back at the next round — unless the package runs
                // here again by then: its new permit must stay.
                for package in unreleased {
                    self.releases.failed(&package);
                }
                for record in seen {
                    self.view.seen(record);
                }
                for (package, e) in unrecorded {
                    warn!(%package, error = %e, "cannot record an action's outcome in the store");
                }
                match published {
                    Some(Ok(sent)) => {
                        for (resource, state) in sent {
                            if self.unpublished.get(&resource) == Some(&state) {
                                self.unpublished.remove(&resource);
                            }
                        }
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, pending = self.unpublished.len(), "cannot publish resource states; retrying every second")
                    }
                    None => {}
                }
                for claim in claims {
                    self.on_claim_outcome(claim);
                }
                self.dirty = false;
                self.decide(hub);
            }
            rounds::Done::Decisions { writes } => {
                for (p, result, claim) in writes {
                    self.on_written(p, result, claim);
                }
            }
        }
    }

    /// One decision's write came back.
    fn on_written(
        &mut self,
        p: Prepared,
        result: Result<Versioned<PackageRecord>, StoreError>,
        claim: Option<rounds::ClaimDone>,
    ) {
        let halted_early = self.halted_early.remove(&p.package);
        let updated = match result {
            Ok(updated) => {
                self.view.seen(updated.clone());
                updated
            }
            Err(e) => {
                // A halt already under way goes on: the copy here is halted
                // and its outcome recorded when it is done.
                warn!(package = %p.package, error = %e, "cannot record the action; replanning");
                return;
            }
        };
        match p.then {
            AfterWrite::Nothing => {
                info!(package = %p.package, state = p.update.state.as_str(), reason = %p.update.reason, "recorded");
            }
            AfterWrite::Halt { reason, then_fail } => {
                if !halted_early {
                    let prepared = Prepared {
                        then: AfterWrite::Halt { reason, then_fail },
                        ..p
                    };
                    self.halt_now(&prepared);
                }
            }
            AfterWrite::Run { reason, failover } => {
                let start = Claiming {
                    package: p.package.clone(),
                    reason,
                    fence: updated.value.fence_token,
                    revision: updated.mod_revision,
                };
                match claim {
                    Some(claim) if failover => {
                        self.claiming.insert(start.package.clone(), start);
                        self.on_claim_outcome(claim);
                    }
                    _ => self.launch(start),
                }
            }
        }
    }

    /// Hands a start to the agent.
    fn launch(&mut self, claim: Claiming) {
        info!(package = %claim.package, node = %self.node, reason = %claim.reason, fence = %claim.fence, "starting package");
        self.fences.insert(claim.package.clone(), claim.fence);
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

    /// Acts on the answer to a permit claim: launch when granted, keep
    /// waiting while another node holds it, give up when the record moved.
    fn on_claim_outcome(&mut self, done: rounds::ClaimDone) {
        let Some(claim) = self.claiming.get(&done.package).cloned() else {
            return;
        };
        match done.outcome {
            Ok(Permit::Granted) => {
                self.claiming.remove(&claim.package);
                self.releases.granted(&claim.package);
                self.launch(claim);
            }
            Ok(Permit::HeldBy { node: holder }) => {
                info!(package = %claim.package, %holder, "run permit still held; waiting");
            }
            Ok(Permit::NotOwner { owners }) => {
                warn!(package = %claim.package, ?owners, "ownership moved while claiming; replanning");
                self.give_up_claim(&claim.package);
            }
            Err(StoreError::Conflict { .. }) => {
                // The record moved on (the old owner recorded its halt, say).
                // Still ours alone: claim again under its new revision.
                // Otherwise give up and replan; a record left saying it
                // starts here with nothing running would never be corrected.
                match done.fresh {
                    Some(record)
                        if record.value.owners == [self.node.clone()]
                            && record.value.state == PackageState::Starting =>
                    {
                        if let Some(c) = self.claiming.get_mut(&claim.package) {
                            c.revision = record.mod_revision;
                            c.fence = record.value.fence_token;
                        }
                        self.view.seen(record);
                    }
                    Some(record) => {
                        self.view.seen(record);
                        self.give_up_claim(&claim.package);
                    }
                    None => self.give_up_claim(&claim.package),
                }
            }
            Err(e) => {
                warn!(package = %claim.package, error = %e, "claiming a package failed; replanning");
                self.give_up_claim(&claim.package);
            }
        }
    }

    /// Stops claiming `package`'s permit; a permit the claim may have got
    /// all the same is given back.
    fn give_up_claim(&mut self, package: &str) {
        self.claiming.remove(package);
        self.releases.claim_given_up(package);
    }

    /// On a cluster, once the lease expired: the work of rejoining with a
    /// new one, to run on a task ([`Membership::rejoin`]).
    pub fn rejoin(&mut self) -> Option<super::membership::Rejoin> {
        self.membership.rejoin(&self.node)
    }

    /// A rejoin came back.
    pub fn rejoined(&mut self, result: Result<super::membership::Rejoined, StoreError>) {
        self.membership.rejoined(&self.node, result);
        self.dirty = true;
    }

    /// True on a multi-node (etcd) cluster.
    pub fn on_cluster(&self) -> bool {
        self.membership.shared()
    }

    /// True when this node's lease might expire within the safety margin.
    pub fn lease_in_doubt(&self) -> bool {
        self.membership.lease_in_doubt()
    }

    /// Answers [`Self::lease_in_doubt`] from another task (the guard's beats).
    pub fn lease_probe(&self) -> super::membership::LeaseProbe {
        self.membership.probe()
    }

    /// Keeps `change` for the next bookkeeping round, which records it
    /// while the record still names this node an owner.
    fn outcome(
        &mut self,
        package: &str,
        change: impl Fn(&mut PackageUpdate) + Send + Sync + 'static,
    ) {
        let node = self.node.clone();
        self.outcome_if(package, move |r| r.owners.contains(&node), change);
    }

    /// [`outcome`](Self::outcome), written only while `holds`.
    fn outcome_if(
        &mut self,
        package: &str,
        holds: impl Fn(&PackageRecord) -> bool + Send + Sync + 'static,
        change: impl Fn(&mut PackageUpdate) + Send + Sync + 'static,
    ) {
        self.outcomes.push(OwnOutcome {
            package: package.to_owned(),
            holds: Box::new(holds),
            change: Box::new(change),
        });
        self.dirty = true;
    }

    /// The agent finished a command.
    pub fn on_report(&mut self, report: AgentReport, hub: &mut ResourceHub) {
        let node = self.node.clone();
        match report {
            AgentReport::Adopted { package, result } => {
                self.adopting.remove(&package);
                match result {
                    Ok(fence) => {
                        info!(%package, "re-adopted: still running, not restarted");
                        self.running_here.insert(package.clone());
                        self.fences.insert(package.clone(), fence);
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
                            self.view.packages.get(&package),
                        ) {
                            (Some(claim), Some(record)) => {
                                claim.fence() == record.value.fence_token
                            }
                            _ => false,
                        };
                        if claimed {
                            info!(%package, "not re-adopted: the guard halted it while no host ran");
                            self.check_guard();
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
                        if self.is_fail_fast(&package, None) {
                            self.fail_fast.get_or_insert_with(|| {
                                format!("package {package}: run failed on {node}: {e}")
                            });
                            self.dirty = true;
                            return;
                        }
                        warn!(%package, %node, error = %e, "run failed; halting to clean up");
                        let halt = coordinator::prepare_halt(
                            &self.view,
                            &node,
                            &package,
                            Reason::RunFailed,
                            Some(format!("run failed on {node}: {e}")),
                        );
                        if let Some(p) = halt {
                            self.halt_now(&p);
                            self.halted_early.insert(p.package.clone());
                            self.queued.push(p);
                        }
                    }
                }
            }
            AgentReport::Halted { package, result } => {
                let flight = self.in_flight.remove(&package);
                self.running_here.remove(&package);
                if result.is_ok() {
                    self.fences.remove(&package);
                }
                // Halted: its next run takes the new definition.
                self.redefined.remove(&package);
                // Nothing of it runs here any more: its permit goes back,
                // whether its halt is recorded here or not. (After a failed
                // halt something may still run: the permit stays.)
                if result.is_ok() {
                    self.releases.ended(&package);
                }
                if flight.as_ref().is_some_and(|f| !f.record) {
                    info!(%package, %node, ok = result.is_ok(), "stale copy halted");
                    self.dirty = true;
                    return;
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
    pub fn on_lifecycle(&mut self, event: LifecycleEvent) {
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
                let exits = self
                    .service_exits
                    .entry(package)
                    .or_default()
                    .entry(service)
                    .or_default();
                exits.count += 1;
                exits.last = format!("{exit} at {}", crate::views::rfc3339(vigil_sdk::now_ms()));
            }
            LifecycleEvent::PackageFailed {
                package,
                service,
                reason,
            } => {
                let why = format!("service {service} failed on {}: {reason}", self.node);
                warn!(%package, %why, "package failed");
                if self.is_fail_fast(&package, Some(&service)) {
                    self.fail_fast
                        .get_or_insert_with(|| format!("package {package}: {why}"));
                }
                self.failures.insert(package, why);
                self.dirty = true;
            }
            LifecycleEvent::GuardHalted {
                package, service, ..
            } => {
                warn!(%package, %service, "service stopped by the guard");
                self.check_guard();
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

    pub fn status(&self, hub: &ResourceHub) -> Result<StatusOutput, StoreError> {
        let store = &self.view;
        let withheld = self.withheld_now(hub);
        Ok(StatusOutput {
            config_errors: Vec::new(),
            hooks: Vec::new(),
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
                    maintenance: coordinator::node_in_maintenance(store, n),
                })
                .collect(),
            packages: self
                .packages
                .values()
                .map(|p| {
                    let record = store.packages.get(&p.name).map(|r| &r.value);
                    let state = record.map_or(PackageState::Down, |r| r.state);
                    // Parts and services are node-local: each node answers
                    // for its own, from its run record.
                    let record_here = super::lifecycle::RunRecord::load(&agent::record_path(
                        &self.run_dir,
                        &p.name,
                    ))
                    .ok();
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
                        parts_here: Self::parts_here(record_here.as_ref()),
                        services_here: self.services_here(p, record_here.as_ref()),
                        policy: crate::views::PackagePolicy {
                            kind: p.kind.as_str().to_owned(),
                            failover_policy: match p.failover_policy {
                                placement::FailoverPolicy::ConfiguredNode => "configured_node",
                                placement::FailoverPolicy::MinPackageNode => "min_package_node",
                            }
                            .to_owned(),
                            failback_policy: match p.failback_policy {
                                placement::FailbackPolicy::Manual => "manual",
                                placement::FailbackPolicy::Automatic => "automatic",
                            }
                            .to_owned(),
                            auto_run: p.auto_run,
                            priority: p.priority,
                            nodes: p.nodes.clone(),
                        },
                        maintenance: record.is_some_and(|r| r.admin.maintenance),
                        withheld: withheld.get(&p.name).cloned(),
                        disabled_on: record
                            .map(|r| r.disabled_nodes.iter().cloned().collect())
                            .unwrap_or_default(),
                    }
                })
                .collect(),
        })
    }

    /// The parts of a package up here, from its run record.
    fn parts_here(record: Option<&super::lifecycle::RunRecord>) -> Vec<crate::views::PartStatus> {
        record
            .map(|r| r.parts.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|part| crate::views::PartStatus {
                kind: part.kind().to_owned(),
                part: part.to_string(),
            })
            .collect()
    }

    /// Each configured part of `package`, up here or not (from the run
    /// record, which holds the parts as started).
    fn why_parts(&self, package: &str) -> Vec<crate::views::WhyPart> {
        let Some(config) = self.packages.get(package) else {
            return Vec::new();
        };
        let up = super::lifecycle::RunRecord::load(&agent::record_path(&self.run_dir, package))
            .map(|r| r.parts)
            .unwrap_or_default();
        super::parts::start_order(
            &config
                .parts
                .iter()
                .map(|p| p.part.clone())
                .collect::<Vec<_>>(),
        )
        .iter()
        .map(|part| {
            let started = up.iter().find(|u| u.same_part(part));
            crate::views::WhyPart {
                kind: part.kind().to_owned(),
                part: part.to_string(),
                state: if started.is_some() { "up" } else { "down" }.to_owned(),
                started: started.map(ToString::to_string),
            }
        })
        .collect()
    }

    /// The part that implies `package`'s requirement on `resource`, if the
    /// package did not write it.
    pub fn implied_by(&self, package: &str, resource: &str) -> Option<String> {
        self.packages
            .get(package)?
            .requirement(resource)?
            .implied_by
            .clone()
    }

    /// Every `[[service]]` of `package` as it is here: the process of its
    /// run record if that is still the one started, restarts, and the
    /// exits this manager saw.
    fn services_here(
        &self,
        package: &PackageConfig,
        record: Option<&super::lifecycle::RunRecord>,
    ) -> Vec<crate::views::ServiceStatus> {
        let exits = self.service_exits.get(&package.name);
        package
            .services
            .iter()
            .map(|service| {
                let recorded =
                    record.and_then(|r| r.services.iter().find(|s| s.name == service.name));
                let seen = exits.and_then(|e| e.get(&service.name));
                let (state, pid) = match recorded {
                    None => ("stopped", None),
                    Some(s) if s.liveness() == super::lifecycle::Liveness::Alive => {
                        ("running", Some(s.pid))
                    }
                    Some(_) => ("exited", None),
                };
                crate::views::ServiceStatus {
                    name: service.name.clone(),
                    state: state.to_owned(),
                    pid,
                    restarts: recorded.map_or(0, |s| s.restarts),
                    restart_limit: match service.restarts {
                        crate::config::package::Restarts::Limited(n) => Some(n),
                        crate::config::package::Restarts::Unlimited => None,
                    },
                    fail_count: seen.map_or(0, |e| e.count),
                    last_failure: seen.map(|e| e.last.clone()),
                }
            })
            .collect()
    }

    pub fn why(&self, package: &str, hub: &ResourceHub) -> Result<WhyOutput, String> {
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
        let parts = self.why_parts(package);
        let part_failure = agent::part_failure(&self.run_dir, package)
            .map(|(ms, detail)| format!("{detail} (at {})", crate::views::rfc3339(ms)));
        for part in &parts {
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!("{part}\n"));
        }
        if let Some(failure) = &part_failure {
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!(
                "the last start here failed on a part: {failure}\n"
            ));
        }
        if let Some(would) = self.withheld_now(hub).get(package) {
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!("maintenance holds back: {would}\n"));
        }
        Ok(WhyOutput {
            package: package.to_owned(),
            state: record.map_or("down", |r| r.state.as_str()).to_owned(),
            running_on: record.map(|r| r.owners.clone()).unwrap_or_default(),
            explanation,
            resources: Vec::new(),
            parts,
            part_failure,
            text,
        })
    }

    /// Starts `vigil pkg OP NAME [--node N]`: checked against the view
    /// here, its store work handed back to run on a task (the main loop
    /// never waits for the store), finished by [`Self::admin_done`].
    pub fn admin(
        &mut self,
        op: AdminOp,
        package: &str,
        node: Option<&str>,
    ) -> Result<AdminWork, String> {
        if !self.packages.contains_key(package) {
            return Err(format!("no package named {package:?}"));
        }
        if let Some(n) = node.filter(|n| !self.cluster_nodes.iter().any(|c| c == n)) {
            return Err(format!("node {n:?} is not in cluster.nodes"));
        }
        let change: Change = match op {
            AdminOp::Halt => Box::new(|u| {
                u.switching = false;
                u.admin.halted = true;
                u.admin.run = false;
                u.admin.node = None;
                u.reason = "halted by operator".into();
            }),
            AdminOp::Run | AdminOp::Move => {
                if op == AdminOp::Move && node.is_none() {
                    return Err("pkg move needs --node".into());
                }
                let target = node.map(str::to_owned);
                Box::new(move |u| {
                    u.switching = true;
                    u.admin.halted = false;
                    u.admin.run = true;
                    u.admin.node = target.clone();
                })
            }
            AdminOp::Enable | AdminOp::Disable if node.is_some() => {
                let n = node.unwrap_or_default().to_owned();
                let listed = self.packages[package]
                    .nodes
                    .iter()
                    .any(|l| l == &n || l == "*");
                if !listed {
                    return Err(format!("{package} does not list node {n:?} in its nodes"));
                }
                let on = op == AdminOp::Enable;
                Box::new(move |u| {
                    if on {
                        u.disabled_nodes.remove(&n);
                    } else {
                        u.disabled_nodes.insert(n.clone());
                    }
                })
            }
            AdminOp::MaintenanceOn | AdminOp::MaintenanceOff => {
                if let Some(n) = node {
                    return Err(format!(
                        "pkg maintenance takes no --node (got {n:?}): use `vigil node maintenance {n} on|off` for a node"
                    ));
                }
                let on = op == AdminOp::MaintenanceOn;
                Box::new(move |u| u.admin.maintenance = on)
            }
            AdminOp::Enable | AdminOp::Disable => {
                let on = op == AdminOp::Enable;
                Box::new(move |u| u.switching = on)
            }
            AdminOp::Clear => {
                let node = node.map(str::to_owned);
                Box::new(move |u| {
                    match &node {
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
            }
        };
        let (store, package, node) = (
            Arc::clone(&self.store),
            package.to_owned(),
            node.map(str::to_owned),
        );
        Ok(Box::pin(async move {
            let result = async {
                let before = rounds::fresh(&*store, &package).await?;
                // Asked to run where it already runs: nothing to write. Up
                // but asked to halt (its owner has not halted it yet: it may
                // be frozen) is not running for good: the request must
                // cancel the halt.
                let b = &before.value;
                let running =
                    b.state == PackageState::Up && !b.owners.is_empty() && !b.admin.halted;
                if matches!(op, AdminOp::Run | AdminOp::Move)
                    && running
                    && node.as_ref().is_none_or(|n| b.owners.contains(n))
                {
                    return Ok(PkgWritten {
                        before,
                        written: None,
                    });
                }
                let written = rounds::write_if(&*store, &package, &|_| true, &*change).await?;
                Ok(PkgWritten { before, written })
            }
            .await;
            AdminDone(Box::new(
                move |m: &mut PackageManager, hub: &ResourceHub| {
                    m.pkg_done(op, &package, node.as_deref(), result, hub)
                },
            ))
        }))
    }

    /// `vigil node run|halt NAME` (this node only, for now); see
    /// [`Self::admin`].
    pub fn node_admin(&mut self, halt: bool, node: &str) -> Result<AdminWork, String> {
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
        let record = NodeRecord {
            name: node.to_owned(),
            state,
            updated_ms: vigil_sdk::now_ms(),
            maintenance: coordinator::node_in_maintenance(&self.view, node),
        };
        let state = state.as_str();
        Ok(self.put_node(record, format!("node {node} is {state}")))
    }

    /// `vigil node maintenance NAME on|off`: kept in the node's record,
    /// which lives while the node is in the cluster; see [`Self::admin`].
    pub fn node_maintenance(&mut self, node: &str, on: bool) -> Result<AdminWork, String> {
        if !self.cluster_nodes.iter().any(|n| n == node) {
            return Err(format!("node {node:?} is not in cluster.nodes"));
        }
        let Some(record) = self.view.nodes.get(node) else {
            return Err(format!(
                "node {node:?} is not running `vigil host`; start it there"
            ));
        };
        let mut record = record.value.clone();
        record.maintenance = on;
        record.updated_ms = vigil_sdk::now_ms();
        let done = if on {
            format!(
                "node {node} is in maintenance: vigil takes no action for its packages until `vigil node maintenance {node} off`"
            )
        } else {
            format!("node {node} is out of maintenance; what was held back happens now")
        };
        Ok(self.put_node(record, done))
    }

    /// The store work of a node command: the node's record written (the
    /// watch brings it into the view); `done` says so.
    fn put_node(&self, record: NodeRecord, done: String) -> AdminWork {
        let store = Arc::clone(&self.store);
        Box::pin(async move {
            let node = record.name.clone();
            let result = store.put_node(record).await;
            AdminDone(Box::new(move |m: &mut PackageManager, _: &ResourceHub| {
                m.dirty = true;
                result
                    .map(|_| done)
                    .map_err(|e| format!("node {node}: {e}"))
            }))
        })
    }

    /// Finishes an operator command once its store work is back.
    pub fn admin_done(&mut self, done: AdminDone, hub: &ResourceHub) -> Answer {
        (done.0)(self, hub)
    }

    /// Finishes `vigil pkg OP NAME`: what it read and wrote goes into the
    /// view, and the answer says what was done.
    fn pkg_done(
        &mut self,
        op: AdminOp,
        package: &str,
        node: Option<&str>,
        result: Result<PkgWritten, StoreError>,
        hub: &ResourceHub,
    ) -> Answer {
        let written = result.map_err(|e| format!("package {package}: {e}"))?;
        self.view.seen(written.before.clone());
        let wrote = written.written.is_some();
        if let Some(record) = written.written {
            self.view.seen(record);
        }
        self.dirty = true;
        let before = written.before.value;
        Ok(match op {
            AdminOp::Halt => {
                let running = !before.owners.is_empty()
                    || matches!(before.state, PackageState::Starting | PackageState::Up);
                if running {
                    format!("halting {package}; switching disabled until `vigil pkg run {package}`")
                } else {
                    format!(
                        "{package} is not running ({}): nothing to halt; switching disabled until `vigil pkg run {package}`",
                        before.state.as_str()
                    )
                }
            }
            AdminOp::Run | AdminOp::Move if !wrote => {
                format!(
                    "{package} already runs on {}: nothing to do",
                    before.owners.join(", ")
                )
            }
            AdminOp::Run | AdminOp::Move => {
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
                    (Some(n), _, _) => format!("starting {package} on {n}"),
                    (None, _, _) => format!("starting {package} on {}", placed.join(", ")),
                }
            }
            AdminOp::Enable | AdminOp::Disable if node.is_some() => format!(
                "switching {} for {package} on {}",
                if op == AdminOp::Enable {
                    "enabled"
                } else {
                    "disabled"
                },
                node.unwrap_or_default()
            ),
            AdminOp::MaintenanceOn => format!(
                "{package} is in maintenance: vigil takes no action for it until `vigil pkg maintenance {package} off`"
            ),
            AdminOp::MaintenanceOff => {
                format!("{package} is out of maintenance; what was held back happens now")
            }
            AdminOp::Enable | AdminOp::Disable => format!(
                "switching {} for {package}",
                if op == AdminOp::Enable {
                    "enabled"
                } else {
                    "disabled"
                }
            ),
            AdminOp::Clear => {
                if node.is_none_or(|n| n == self.node) {
                    self.service_exits.remove(package);
                }
                format!("cleared failures of {package}")
            }
        })
    }

    /// What maintenance holds back now, for `status` and `why`; nothing
    /// to compute while nothing is in maintenance.
    fn withheld_now(&self, hub: &ResourceHub) -> BTreeMap<String, String> {
        if !coordinator::any_maintenance(&self.view) {
            return BTreeMap::new();
        }
        let inputs = self.inputs(hub);
        coordinator::withheld(&self.facts(&inputs))
    }

    /// Logs what maintenance holds back here, when it changes.
    fn log_withheld(&mut self, withheld: BTreeMap<String, String>) {
        for (package, would) in &withheld {
            if self.withheld.get(package) != Some(would) {
                info!(%package, %would, "maintenance: no action taken");
            }
        }
        self.withheld = withheld;
    }

    /// Tells the agent which packages are in maintenance here (the package,
    /// or this node), so that their exited services are not restarted.
    fn tell_maintenance(&mut self) {
        for package in self.packages.keys() {
            let on = coordinator::in_maintenance(&self.view, package, &self.node);
            if self.maintenance_told.get(package).copied().unwrap_or(false) != on {
                self.maintenance_told.insert(package.clone(), on);
                let _ = self.agent.send(AgentCommand::Maintenance {
                    package: package.clone(),
                    on,
                });
            }
        }
    }

    /// Does a failure of `package` (of `service`, or of its run) halt the
    /// node? A `fail_fast` service, or a `node_fail_fast` package, outside
    /// maintenance.
    fn is_fail_fast(&self, package: &str, service: Option<&str>) -> bool {
        let Some(p) = self.packages.get(package) else {
            return false;
        };
        let service_fail_fast =
            service.is_some_and(|name| p.services.iter().any(|s| s.name == name && s.fail_fast));
        (p.node_fail_fast || service_fail_fast)
            && !coordinator::in_maintenance(&self.view, package, &self.node)
    }

    /// A fail-fast failure that must halt this node now, once.
    pub fn take_fail_fast(&mut self) -> Option<String> {
        self.fail_fast.take()
    }

    /// Fail-fast: stops every package here without halt scripts
    /// ([`super::fail_fast::kill_packages`]); returns what could not be done.
    pub async fn kill_packages(&mut self) -> Vec<String> {
        let run_dir = self.run_dir.clone();
        let node = self.node.clone();
        let packages: Vec<String> = self.packages.keys().cloned().collect();
        tokio::task::spawn_blocking(move || {
            super::fail_fast::kill_packages(&run_dir, &node, packages.iter().map(String::as_str))
        })
        .await
        .unwrap_or_else(|e| vec![format!("the kill task failed: {e}")])
    }

    /// Fail-fast (DESIGN §5): gives this node's lease back at once so that
    /// the others take its packages over now, not after the TTL. Its
    /// record, heartbeats and run permits go with it.
    pub async fn leave_cluster(&mut self) -> Result<(), StoreError> {
        self.membership.revoke().await
    }
}

/// Whose copy a guard's claim (of fence token `claimed`) is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimOf {
    /// The copy that runs here, as the package's record says: its halt is
    /// recorded for it.
    Recorded,
    /// A copy the record no longer names (another node took the package
    /// over meanwhile): it is gone, nothing to record.
    Unrecorded,
    /// An earlier copy than the one this node runs or starts now
    /// (`running`, under another token): that one is not the claim's.
    EarlierCopy,
}

/// Judges a guard's claim of token `claimed` on this `node`, where the
/// copy that runs or starts here has token `running` (if any) and the
/// package's record is `record`.
fn judge_claim(
    claimed: crate::store::FenceToken,
    running: Option<crate::store::FenceToken>,
    record: Option<&PackageRecord>,
    node: &str,
) -> ClaimOf {
    if running.is_some_and(|r| r != claimed) {
        return ClaimOf::EarlierCopy;
    }
    match record {
        Some(r) if r.owners.iter().any(|o| o == node) && r.fence_token == claimed => {
            ClaimOf::Recorded
        }
        _ => ClaimOf::Unrecorded,
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
            implied_by: None,
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

    /// One row: the claim's token, the token of the copy running or
    /// starting here (`None`: none), the record's owners and token (`None`:
    /// no record), and whose copy the claim is about.
    fn claim_row(
        claimed: u64,
        running: Option<u64>,
        record: Option<(&[&str], u64)>,
        expected: ClaimOf,
    ) {
        use crate::store::FenceToken;
        let record = record.map(|(owners, fence)| PackageRecord {
            name: "ascs".into(),
            state: PackageState::Up,
            owners: owners.iter().map(|o| (*o).to_owned()).collect(),
            fence_token: FenceToken(fence),
            switching: true,
            disabled_nodes: BTreeSet::new(),
            failed_on: BTreeSet::new(),
            reason: String::new(),
            updated_ms: 0,
            admin: Default::default(),
            left: None,
        });
        assert_eq!(
            judge_claim(
                FenceToken(claimed),
                running.map(FenceToken),
                record.as_ref(),
                "node1"
            ),
            expected,
            "claim {claimed}, running {running:?}, record {record:?}"
        );
    }

    /// Chaos trial 110 (seed 14, etcd killed for 1.25 s): node1's lease was
    /// in doubt, so its host and its guard both halted ascs (token 87);
    /// etcd came back, node1 started ascs again (token 89), and the next
    /// tick took the guard's claim of token 87 for the new copy: node1
    /// forgot it ran ascs and recorded it down, node2 started it, and the
    /// two copies overlapped.
    #[test]
    fn a_guard_claim_of_an_earlier_copy_leaves_the_copy_started_since_alone() {
        claim_row(87, Some(89), Some((&["node1"], 89)), ClaimOf::EarlierCopy);
        claim_row(87, Some(89), Some((&["node1"], 87)), ClaimOf::EarlierCopy);
        claim_row(87, Some(89), None, ClaimOf::EarlierCopy);
    }

    #[test]
    fn a_guard_claim_of_the_copy_here_is_recorded_while_the_record_names_it() {
        // The guard halted the copy that runs here (the host froze).
        claim_row(87, Some(87), Some((&["node1"], 87)), ClaimOf::Recorded);
        // The host's own halt of it came back first.
        claim_row(87, None, Some((&["node1"], 87)), ClaimOf::Recorded);
        // Another node took the package over meanwhile: nothing to record.
        claim_row(87, Some(87), Some((&["node2"], 88)), ClaimOf::Unrecorded);
        claim_row(87, None, Some((&["node2"], 88)), ClaimOf::Unrecorded);
        claim_row(87, None, None, ClaimOf::Unrecorded);
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
