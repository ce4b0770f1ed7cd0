//! Membership: what only a cluster of many nodes needs, behind one
//! interface — this node's liveness lease and its keepalive, the heartbeats
//! peers judge it by (and the reaper that revokes a silent peer's lease),
//! rejoining after the lease expired, and the lease-bound run permits of
//! failover packages.
//!
//! [`Membership::Single`] is the one-node cluster on the embedded store:
//! its lease is never in doubt and every permit is granted (nobody else
//! could hold it). [`Membership::Etcd`] is the real thing. The manager
//! talks to this type only, never to the etcd backend itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use tracing::{info, warn};

use super::peers;
use crate::store::etcd::{ClaimOutcome, EtcdStore, KeepAlive, Lease, LeaseHealth};
use crate::store::{NodeRecord, NodeState, Revision, StoreError};

/// The answer to a run-permit claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permit {
    /// This node may run the package.
    Granted,
    /// `node` holds it: it must release it, or its lease must end, first.
    HeldBy { node: String },
    /// The package's record no longer lists this node as an owner.
    NotOwner { owners: Vec<String> },
}

/// Claims run permits for one node under its current lease.
#[derive(Clone)]
pub struct Permits {
    etcd: EtcdStore,
    node: String,
    lease: crate::store::etcd::LeaseId,
}

impl Permits {
    /// Claims the run permit of `package`, whose record (at `revision`)
    /// names this node its owner.
    pub fn claim(&self, package: &str, revision: Revision) -> Pending<Permit> {
        let (etcd, package, node, lease) = (
            self.etcd.clone(),
            package.to_owned(),
            self.node.clone(),
            self.lease,
        );
        Box::pin(async move {
            Ok(
                match etcd.claim_package(&package, revision, &node, lease).await? {
                    ClaimOutcome::Granted(_) => Permit::Granted,
                    ClaimOutcome::HeldBy(holder) => Permit::HeldBy {
                        node: holder.value.node,
                    },
                    ClaimOutcome::NotOwner { owners } => Permit::NotOwner { owners },
                },
            )
        })
    }
}

/// A claim or release under way, off the main loop.
pub type Pending<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

pub enum Membership {
    Single,
    Etcd(EtcdMembership),
}

/// This node's membership of an etcd cluster.
pub struct EtcdMembership {
    pub etcd: EtcdStore,
    pub lease: Lease,
    pub keepalive: KeepAlive,
    /// Stop acting this long before the lease could expire.
    pub margin: Duration,
    /// This node's heartbeats.
    pub beats: peers::BeatWriter,
    /// Watches the others' heartbeats and revokes a silent node's lease.
    pub reaper: tokio::task::JoinHandle<()>,
    /// What [`Membership::lease_in_doubt`] reads, shared with the task that
    /// beats the guard; switched to the new lease on a rejoin.
    probe: LeaseProbe,
    /// A rejoin is under way on a task.
    rejoining: bool,
}

impl EtcdMembership {
    pub fn new(
        etcd: EtcdStore,
        lease: Lease,
        keepalive: KeepAlive,
        margin: Duration,
        beats: peers::BeatWriter,
        reaper: tokio::task::JoinHandle<()>,
    ) -> Self {
        let probe = LeaseProbe(Some(Arc::new(Mutex::new(LeaseSources::of(
            &lease, &keepalive, &beats, margin,
        )))));
        Self {
            etcd,
            lease,
            keepalive,
            margin,
            beats,
            reaper,
            probe,
            rejoining: false,
        }
    }
}

/// Reads whether this node's lease is in doubt from the lease's own
/// keepalive and heartbeat tasks, not from the main loop: the task that
/// beats the guard asks it, so a main loop busy with store work never
/// delays a beat, while a lease that is really in doubt stops them at once
/// (a cached answer would go on vouching for a lease that runs out).
/// Without a lease (one node on the embedded store) it is never in doubt.
#[derive(Clone, Default)]
pub struct LeaseProbe(Option<Arc<Mutex<LeaseSources>>>);

struct LeaseSources {
    health: watch::Receiver<LeaseHealth>,
    last_beat: Arc<Mutex<Option<Instant>>>,
    granted_at: Instant,
    ttl: Duration,
    margin: Duration,
}

impl LeaseSources {
    fn of(
        lease: &Lease,
        keepalive: &KeepAlive,
        beats: &peers::BeatWriter,
        margin: Duration,
    ) -> Self {
        Self {
            health: keepalive.subscribe(),
            last_beat: beats.written(),
            granted_at: lease.granted_at,
            ttl: lease.ttl,
            margin,
        }
    }
}

impl LeaseProbe {
    /// From now on, judges by `lease` (and its keepalive and heartbeats).
    fn follow(
        &self,
        lease: &Lease,
        keepalive: &KeepAlive,
        beats: &peers::BeatWriter,
        margin: Duration,
    ) {
        let Some(shared) = &self.0 else { return };
        *shared.lock().unwrap_or_else(|p| p.into_inner()) =
            LeaseSources::of(lease, keepalive, beats, margin);
    }

    /// True when the lease might expire within the safety margin.
    pub fn in_doubt(&self) -> bool {
        let Some(shared) = &self.0 else { return false };
        let s = shared.lock().unwrap_or_else(|p| p.into_inner());
        let health = s.health.borrow().clone();
        let now = Instant::now();
        // Peers judge this node by its heartbeats, so a node whose
        // heartbeats stopped getting written must stop vouching too.
        let beat = s
            .last_beat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(s.granted_at);
        let stop_after = s.ttl.saturating_sub(s.margin);
        health.expired
            || health.valid_until <= now + s.margin
            || now.duration_since(beat) > stop_after
    }
}

impl Drop for EtcdMembership {
    fn drop(&mut self) {
        self.reaper.abort();
    }
}

impl Membership {
    /// True on a cluster of many nodes: failover packages need a run permit,
    /// and resource states are published for the other nodes.
    pub fn shared(&self) -> bool {
        matches!(self, Membership::Etcd(_))
    }

    /// True when this node's lease might expire within the safety margin:
    /// it must not act as an owner (and stops vouching to its guard).
    pub fn lease_in_doubt(&self) -> bool {
        self.probe().in_doubt()
    }

    /// A handle that answers [`Self::lease_in_doubt`] from any task.
    pub fn probe(&self) -> LeaseProbe {
        match self {
            Membership::Single => LeaseProbe::default(),
            Membership::Etcd(m) => m.probe.clone(),
        }
    }

    /// Claims the run permit of `package`, whose record (at `revision`)
    /// names `node` its owner.
    pub fn claim(&self, package: &str, revision: Revision, node: &str) -> Pending<Permit> {
        match self.permits(node) {
            Some(permits) => permits.claim(package, revision),
            None => Box::pin(async { Ok(Permit::Granted) }),
        }
    }

    /// A handle that claims permits for `node` from a task; `None` on one
    /// node, where every permit is granted.
    pub fn permits(&self, node: &str) -> Option<Permits> {
        let Membership::Etcd(m) = self else {
            return None;
        };
        Some(Permits {
            etcd: m.etcd.clone(),
            node: node.to_owned(),
            lease: m.lease.id,
        })
    }

    /// Gives the run permit of `package` back: nothing of it runs here.
    pub fn release(&self, package: &str, node: &str) -> Pending<()> {
        let Membership::Etcd(m) = self else {
            return Box::pin(async { Ok(()) });
        };
        let (etcd, package, node) = (m.etcd.clone(), package.to_owned(), node.to_owned());
        Box::pin(async move { etcd.release_package(&package, &node).await.map(drop) })
    }

    /// Revokes this node's lease now (fail-fast): its node record,
    /// heartbeats and run permits are deleted with it, so the other nodes
    /// take its packages over at once instead of after the TTL. The node
    /// does not rejoin: the host ends after this.
    pub async fn revoke(&mut self) -> Result<(), StoreError> {
        let Membership::Etcd(m) = self else {
            return Ok(());
        };
        m.reaper.abort();
        m.etcd.revoke_lease(m.lease.id).await
    }

    /// When etcd says this node's lease is gone (it expired while etcd was
    /// unreachable): the work of taking a new one and recording the node
    /// as up again, to run on a task; [`Self::rejoined`] takes its answer.
    /// `None` while the lease is good or a rejoin is under way. Until the
    /// node has rejoined, [`Self::lease_in_doubt`] keeps it from acting.
    pub fn rejoin(&mut self, node: &str) -> Option<Rejoin> {
        let Membership::Etcd(m) = self else {
            return None;
        };
        if m.rejoining || !m.keepalive.health().expired {
            return None;
        }
        m.rejoining = true;
        let (etcd, ttl, node) = (m.etcd.clone(), m.lease.ttl, node.to_owned());
        Some(Box::pin(async move {
            let lease = etcd.grant_lease(ttl).await?;
            let keepalive = etcd.keep_alive(&lease);
            etcd.put_node_with_lease(
                NodeRecord {
                    name: node,
                    state: NodeState::Up,
                    updated_ms: vigil_sdk::now_ms(),
                    maintenance: false,
                },
                lease.id,
            )
            .await?;
            Ok(Rejoined { lease, keepalive })
        }))
    }

    /// A rejoin came back: on success this node beats and acts under its
    /// new lease.
    pub fn rejoined(&mut self, node: &str, result: Result<Rejoined, StoreError>) {
        let Membership::Etcd(m) = self else { return };
        m.rejoining = false;
        match result {
            Ok(Rejoined { lease, keepalive }) => {
                info!(%node, lease = %lease.id, "lease expired; rejoined with a new one");
                m.beats = peers::BeatWriter::spawn(
                    m.etcd.clone(),
                    node.to_owned(),
                    lease.id,
                    keepalive.subscribe(),
                    peers::beat_deadline(lease.ttl),
                );
                m.probe.follow(&lease, &keepalive, &m.beats, m.margin);
                m.lease = lease;
                m.keepalive = keepalive;
            }
            Err(e) => warn!(error = %e, "cannot rejoin the cluster yet"),
        }
    }
}

/// A new lease taken after the old one expired, its renewals running.
#[derive(Debug)]
pub struct Rejoined {
    lease: Lease,
    keepalive: KeepAlive,
}

/// A rejoin under way, off the main loop.
pub type Rejoin = Pending<Rejoined>;
