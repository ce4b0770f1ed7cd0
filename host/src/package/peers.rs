//! Noticing a dead peer sooner than etcd does.
//!
//! etcd deletes an expired lease's keys only on its next lease check, which
//! comes every 500 ms, so a dead node's packages would wait up to half a
//! second past the lease TTL. Instead every node writes a heartbeat counter
//! (bound to its lease) after each acknowledged renewal, and every node
//! watches the others' counters: one that has not moved for a TTL plus a
//! small slack belongs to a lease that has certainly expired — its last
//! renewal was acknowledged before its last heartbeat was written, which was
//! before it was seen — so the watcher revokes that lease itself.
//!
//! This is safe for a node that is alive but cannot write its heartbeat:
//! such a node stops vouching for its lease (`lease_in_doubt`) once its last
//! written heartbeat is 30 % of the TTL old, so its guard has halted its
//! packages by 90 % of the TTL — before any peer can revoke.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::store::etcd::{EtcdStore, LeaseHealth, LeaseId};

/// How often a node reads its peers' heartbeats.
const POLL: Duration = Duration::from_millis(50);
/// Added to the TTL before a silent peer's lease is revoked.
const SLACK: Duration = Duration::from_millis(100);

/// Writes this node's heartbeats; stops when dropped.
#[derive(Debug)]
pub struct BeatWriter {
    task: JoinHandle<()>,
    last_ok: Arc<Mutex<Option<Instant>>>,
}

/// How long one heartbeat write may take: the renewal interval (10 % of
/// the TTL), at least 100 ms. The next renewal writes the next beat.
pub fn beat_deadline(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_millis(100))
}

impl BeatWriter {
    /// Writes a heartbeat after every acknowledged renewal of `lease`. A
    /// write that takes longer than `deadline` is given up, so that one
    /// request hung on a dead connection (etcd restarting) does not keep
    /// the next renewals from being written: this node stops vouching for
    /// its lease when its beats stop.
    pub fn spawn(
        etcd: EtcdStore,
        node: String,
        lease: LeaseId,
        mut health: watch::Receiver<LeaseHealth>,
        deadline: Duration,
    ) -> Self {
        let last_ok: Arc<Mutex<Option<Instant>>> = Arc::default();
        let written = Arc::clone(&last_ok);
        let task = tokio::spawn(async move {
            let mut seq = 0u64;
            let mut renewed = None;
            loop {
                let now_renewed = health.borrow_and_update().renewed_at;
                if now_renewed.is_some() && now_renewed != renewed {
                    renewed = now_renewed;
                    seq += 1;
                    match tokio::time::timeout(deadline, etcd.put_beat(&node, lease, seq)).await {
                        Ok(Ok(())) => {
                            *written.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(Instant::now())
                        }
                        Ok(Err(e)) => warn!(error = %e, "cannot write this node's heartbeat"),
                        Err(_) => warn!(?deadline, "this node's heartbeat was not written in time"),
                    }
                }
                if health.changed().await.is_err() {
                    break;
                }
            }
        });
        Self { task, last_ok }
    }

    /// When the last heartbeat was written, if ever, readable from any task.
    pub fn written(&self) -> Arc<Mutex<Option<Instant>>> {
        Arc::clone(&self.last_ok)
    }
}

impl Drop for BeatWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches the other nodes' heartbeats and revokes the lease of a node whose
/// counter has stood still for longer than `ttl` + slack. Stops when the
/// handle is dropped (abort it).
pub fn spawn_reaper(etcd: EtcdStore, me: String, ttl: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        // node → (counter, lease, when this counter was first seen)
        let mut seen: BTreeMap<String, (Option<u64>, LeaseId, Instant)> = BTreeMap::new();
        let mut ticks = tokio::time::interval(POLL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Ok(beats) = etcd.beats().await else {
                continue;
            };
            seen.retain(|node, _| beats.contains_key(node));
            for (node, (seq, lease)) in beats {
                let Some(lease) = lease.filter(|_| node != me) else {
                    continue;
                };
                let now = Instant::now();
                let entry = seen.entry(node.clone()).or_insert((seq, lease, now));
                if entry.0 != seq || entry.1 != lease {
                    *entry = (seq, lease, now);
                } else if now.duration_since(entry.2) > ttl + SLACK {
                    info!(%node, lease = %lease, silent_ms = now.duration_since(entry.2).as_millis() as u64, "peer's heartbeat stood still past its lease; revoking the lease");
                    if let Err(e) = etcd.revoke_lease(lease).await {
                        warn!(%node, error = %e, "cannot revoke a silent peer's lease (another node may have)");
                    }
                    seen.remove(&node);
                }
            }
        }
    })
}
