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
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::peers;
use crate::store::etcd::{ClaimOutcome, EtcdStore, KeepAlive, Lease};
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
        let Membership::Etcd(m) = self else {
            return false;
        };
        let health = m.keepalive.health();
        let now = Instant::now();
        // Peers judge this node by its heartbeats, so a node whose
        // heartbeats stopped getting written must stop vouching too.
        let beat = m.beats.last_written().unwrap_or(m.lease.granted_at);
        let stop_after = m.lease.ttl.saturating_sub(m.margin);
        health.expired
            || health.valid_until <= now + m.margin
            || now.duration_since(beat) > stop_after
    }

    /// Claims the run permit of `package`, whose record (at `revision`)
    /// names `node` its owner.
    pub fn claim(&self, package: &str, revision: Revision, node: &str) -> Pending<Permit> {
        let Membership::Etcd(m) = self else {
            return Box::pin(async { Ok(Permit::Granted) });
        };
        let (etcd, package, node, lease) = (
            m.etcd.clone(),
            package.to_owned(),
            node.to_owned(),
            m.lease.id,
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
    /// unreachable), takes a new one and records the node as up again.
    /// Until then [`Self::lease_in_doubt`] keeps this node from acting.
    pub async fn maintain(&mut self, node: &str) {
        let Membership::Etcd(m) = self else { return };
        if !m.keepalive.health().expired {
            return;
        }
        let ttl = m.lease.ttl;
        let result = async {
            let lease = m.etcd.grant_lease(ttl).await?;
            let keepalive = m.etcd.keep_alive(&lease);
            m.etcd
                .put_node_with_lease(
                    NodeRecord {
                        name: node.to_owned(),
                        state: NodeState::Up,
                        updated_ms: vigil_sdk::now_ms(),
                        maintenance: false,
                    },
                    lease.id,
                )
                .await?;
            Ok::<_, StoreError>((lease, keepalive))
        }
        .await;
        match result {
            Ok((lease, keepalive)) => {
                info!(%node, lease = %lease.id, "lease expired; rejoined with a new one");
                m.beats = peers::BeatWriter::spawn(
                    m.etcd.clone(),
                    node.to_owned(),
                    lease.id,
                    keepalive.subscribe(),
                    peers::beat_deadline(ttl),
                );
                m.lease = lease;
                m.keepalive = keepalive;
            }
            Err(e) => warn!(error = %e, "cannot rejoin the cluster yet"),
        }
    }
}
