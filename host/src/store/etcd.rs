//! The etcd cluster store: [`ClusterStore`] on an etcd v3 cluster, plus the
//! two things only a multi-node store has — liveness leases and the
//! coordinator election — and the lease-bound package claims that enforce
//! DESIGN §8 invariant 1.
//!
//! # Key layout
//!
//! Everything lives below `/vigil/<cluster>/`, values are JSON unless said:
//!
//! | key                          | value                         | lease            |
//! |------------------------------|-------------------------------|------------------|
//! | `nodes/<node>`               | [`NodeRecord`]                | the node's, if bound ([`EtcdStore::put_node_with_lease`]) |
//! | `packages/<pkg>`             | [`PackageRecord`]             | none             |
//! | `fences/<pkg>`               | last [`FenceToken`], decimal  | none             |
//! | `resources/<node><resource>` | `up`, `down` or `unknown`     | none             |
//! | `owners/<pkg>`               | [`OwnerClaim`]                | the claimant's   |
//! | `election/coordinator`       | the leader's node name, text  | the leader's     |
//!
//! A resource name starts with `/`, so `resources/node1/net/eth0/status`
//! splits at the first `/` after the node name.
//!
//! # How the trait maps onto etcd
//!
//! * [`Revision`] is etcd's revision: the header revision of a response and
//!   a key's `mod_revision`. Every write below is one etcd request (a `put`
//!   or a `txn`), so it gets exactly one new revision, as in the embedded
//!   store.
//! * `update_package` reads the package key and its fence key, then sends
//!   one `txn` that compares both keys' `mod_revision` with what it read
//!   (`0` = absent) and writes the record, plus the bumped fence key when
//!   the owner set changes. A lost package compare is a
//!   [`StoreError::Conflict`]; a lost fence compare alone (the fence key
//!   moved under an unchanged package, which takes a concurrent delete and
//!   re-create) is retried internally.
//! * `watch` is a prefix `get` (the snapshot, at revision R) followed by a
//!   prefix watch from R+1, so nothing falls between them; etcd delivers in
//!   revision order. A broken watch stream is re-opened from the next
//!   revision not yet delivered; if etcd compacted that revision away, the
//!   event channel is closed (logged as an error) rather than skipping
//!   changes silently.
//! * A deleted node key (its lease expired) is [`Change::NodeDeleted`].
//!   Fence, owner-claim and election keys produce no events: the fence is
//!   inside the package record, and claims and the election are read
//!   through their own methods.
//!
//! # Ownership: records and claims
//!
//! `PackageRecord.owners` stays what the trait says it is: where the
//! package manager has placed the package, changed only by compare-and-swap
//! and fenced. It is not lease-bound, so a dead node's packages stay listed
//! under it until the coordinator moves them (it sees the node's key
//! vanish). The right to *run* a failover package is a separate claim key,
//! `owners/<pkg>`, bound to the claimant's lease and created only by a
//! `txn` that compares its `create_revision == 0` and the package record's
//! `mod_revision` (the claimant must be a listed owner of that record).
//! Hence at most one node holds a package's claim at any time, a claim
//! outlives no lease, and a node that takes over must wait until the old
//! owner released its claim or died. Multi-node packages do not claim.
//!
//! # Leases and election
//!
//! Leases are granted and kept alive here ([`EtcdStore::grant_lease`],
//! [`EtcdStore::keep_alive`]); [`KeepAlive`] reports the instant up to
//! which the lease is certainly valid, measured from when the last
//! acknowledged keepalive was *sent*, so the host can halt its packages
//! before etcd can expire the lease. The coordinator election is a
//! lease-bound key created with `create_revision == 0`
//! ([`EtcdStore::campaign`]) rather than etcd's election API: it is one
//! request, never blocks, and a candidate simply campaigns again on a timer.
//! None of this is in the [`ClusterStore`] trait: the embedded store has no
//! meaningful lease, and a single node is always its own coordinator.
//!
//! Not here: choosing TTLs, when to campaign, and acting on a lapsed lease —
//! that is the daemon's (and the guard's) job.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, Event, EventType, GetOptions, KeyValue, PutOptions,
    Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{error, warn};
use vigil_sdk::ResourceName;

use super::{
    APPLIED_KEY, AppliedPackages, Change, ClusterStore, FenceToken, NodeRecord, PackageRecord,
    PackageUpdate, Revision, Snapshot, StoreError, StoreEvent, StoreFuture, Versioned, Watch,
    now_ms,
};
use crate::criteria::ResourceState;

const NODES: &str = "nodes/";
const PACKAGES: &str = "packages/";
const FENCES: &str = "fences/";
const RESOURCES: &str = "resources/";
const OWNERS: &str = "owners/";
const COORDINATOR: &str = "election/coordinator";
const BEATS: &str = "beats/";
/// `config/applied-packages`: the applied package set.
const CONFIG: &str = "config/";

/// How often a `txn` whose fence compare lost is retried before giving up.
const FENCE_RETRIES: usize = 16;
/// Pause before re-opening a broken watch or keepalive stream.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

/// An etcd lease. Keys attached to it are deleted when it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A granted lease: its id, the TTL asked for, and when the grant was
/// sent — the start of its first validity window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub ttl: Duration,
    pub granted_at: Instant,
}

/// The lease-bound right to run a failover package (`owners/<pkg>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerClaim {
    pub node: String,
    /// The fence token of the package record the claim was taken under.
    pub fence_token: FenceToken,
    pub lease: i64,
}

/// What [`EtcdStore::claim_package`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The claim is ours (newly created, or already held by this node under
    /// the same lease and fence token).
    Granted(Versioned<OwnerClaim>),
    /// Another claim exists: its holder must release it or die first.
    HeldBy(Versioned<OwnerClaim>),
    /// The package record does not list the node as an owner.
    NotOwner { owners: Vec<String> },
}

/// The elected coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub node: String,
    pub lease: LeaseId,
    /// The revision at which it was elected.
    pub since: Revision,
}

/// What a [`KeepAlive`] knows about its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHealth {
    pub lease: LeaseId,
    /// When the last acknowledged keepalive was sent (`None` before the
    /// first one came back).
    pub renewed_at: Option<Instant>,
    /// Until when the lease is certainly valid: the send time of the last
    /// acknowledged keepalive (or of the grant) plus the TTL. etcd measures
    /// from when it *received* the request, which is later, so this errs on
    /// the safe side. A holder must stop acting on the lease before then.
    pub valid_until: Instant,
    /// etcd said the lease no longer exists; nothing can renew it.
    pub expired: bool,
    /// The latest failure to renew, cleared by the next success.
    pub last_error: Option<String>,
}

/// A background task that keeps a lease alive, renewing every tenth of its
/// TTL. Dropping it (or [`KeepAlive::stop`]) stops the renewals without
/// revoking the lease, which then expires one TTL later.
#[derive(Debug)]
pub struct KeepAlive {
    health: watch::Receiver<LeaseHealth>,
    task: tokio::task::JoinHandle<()>,
}

impl KeepAlive {
    /// The current state of the lease.
    pub fn health(&self) -> LeaseHealth {
        self.health.borrow().clone()
    }

    /// Changes whenever a renewal succeeds or fails.
    pub fn subscribe(&self) -> watch::Receiver<LeaseHealth> {
        self.health.clone()
    }

    /// Stops renewing; the lease runs out one TTL after the last renewal.
    pub fn stop(self) {
        // Drop aborts the task.
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The etcd-backed [`ClusterStore`]. Cheap to clone; clones share the
/// connection. Watches end when the last clone is dropped.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.endpoints)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

struct Inner {
    client: Client,
    /// The endpoints, comma-separated, for error messages.
    endpoints: String,
    /// `/vigil/<cluster>/`.
    prefix: String,
    /// Dropped with the last store handle; watch tasks end when it goes.
    /// `None` in the view a watch task holds.
    _open: Option<watch::Sender<()>>,
    open: watch::Receiver<()>,
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (`http://host:port`) and uses the
    /// keys of cluster `cluster`. Fails when no endpoint answers within
    /// `timeout`.
    pub async fn connect(
        endpoints: &[String],
        cluster: &str,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let joined = endpoints.join(",");
        let fail = |message: String| StoreError::Backend {
            path: joined.clone(),
            message,
        };
        if endpoints.is_empty() {
            return Err(fail("no etcd endpoints given".into()));
        }
        if cluster.is_empty() || cluster.contains('/') {
            return Err(fail(format!(
                "cluster name {cluster:?} must be non-empty and without '/'"
            )));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(2), timeout);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| fail(format!("cannot connect: {e}")))?;
        let (open_tx, open_rx) = watch::channel(());
        let store = Self {
            inner: Arc::new(Inner {
                client,
                endpoints: joined.clone(),
                prefix: format!("/vigil/{cluster}/"),
                _open: Some(open_tx),
                open: open_rx,
            }),
        };
        // The connection is lazy: ask once so that a dead endpoint is
        // reported here and not at the first write.
        store
            .kv()
            .get(
                store.key(NODES, ""),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .map_err(|e| store.backend(e))?;
        Ok(store)
    }

    /// `/vigil/<cluster>/`, below which every key lives.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    fn kv(&self) -> etcd_client::KvClient {
        self.inner.client.kv_client()
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}{name}", self.inner.prefix)
    }

    fn backend(&self, e: impl fmt::Display) -> StoreError {
        StoreError::Backend {
            path: self.inner.endpoints.clone(),
            message: e.to_string(),
        }
    }

    fn corrupt(&self, key: &str, e: impl fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: self.inner.endpoints.clone(),
            key: key.to_owned(),
            message: e.to_string(),
        }
    }

    fn decode<T: DeserializeOwned>(&self, kv: &KeyValue) -> Result<T, StoreError> {
        serde_json::from_slice(kv.value())
            .map_err(|e| self.corrupt(&String::from_utf8_lossy(kv.key()), e))
    }

    fn encode<T: Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(value).map_err(|e| self.corrupt(key, e))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.kv().txn(txn).await.map_err(|e| self.backend(e))
    }

    /// Reads several keys at one revision.
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<KeyValue>>, StoreError> {
        let ops: Vec<TxnOp> = keys.iter().map(|k| TxnOp::get(*k, None)).collect();
        let resp = self.txn(Txn::new().and_then(ops)).await?;
        Ok(first_kvs(&resp))
    }

    // ---- leases -------------------------------------------------------

    /// Grants a lease of `ttl` (rounded up to whole seconds; etcd enforces
    /// its own minimum, about 1.5 s with default timing).
    pub async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        let seconds = i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
            .unwrap_or(i64::MAX)
            .max(1);
        let granted_at = Instant::now();
        let resp = self
            .inner
            .client
            .lease_client()
            .grant(seconds, None)
            .await
            .map_err(|e| self.backend(format!("cannot grant a lease of {seconds} s: {e}")))?;
        Ok(Lease {
            id: LeaseId(resp.id()),
            // What was asked for, not what etcd granted (whole seconds, at
            // least its minimum): never longer than the real lease.
            ttl,
            granted_at,
        })
    }

    /// Revokes a lease now, deleting every key attached to it.
    pub async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner
            .client
            .lease_client()
            .revoke(lease.0)
            .await
            .map_err(|e| self.backend(format!("cannot revoke lease {lease}: {e}")))?;
        Ok(())
    }

    /// Starts renewing `lease` every tenth of its TTL (so that a host can
    /// tell early, and act, when renewals stop getting through).
    pub fn keep_alive(&self, lease: &Lease) -> KeepAlive {
        let (tx, rx) = watch::channel(LeaseHealth {
            lease: lease.id,
            renewed_at: None,
            valid_until: lease.granted_at + lease.ttl,
            expired: false,
            last_error: None,
        });
        let client = self.inner.client.clone();
        let endpoints = self.inner.endpoints.clone();
        let task = tokio::spawn(keep_alive_loop(client, endpoints, lease.id, lease.ttl, tx));
        KeepAlive { health: rx, task }
    }

    /// Writes a node's record bound to `lease`: the key disappears when the
    /// lease expires (a [`Change::NodeDeleted`] for watchers).
    pub async fn put_node_with_lease(
        &self,
        node: NodeRecord,
        lease: LeaseId,
    ) -> Result<Revision, StoreError> {
        let key = self.key(NODES, &node.name);
        let bytes = self.encode(&key, &node)?;
        let resp = self
            .kv()
            .put(key, bytes, Some(PutOptions::new().with_lease(lease.0)))
            .await
            .map_err(|e| self.backend(format!("node {}: {e}", node.name)))?;
        Ok(header_revision(resp.header()))
    }

    // ---- node heartbeats ------------------------------------------------

    /// Writes `node`'s heartbeat counter, bound to its lease. A node writes
    /// one after each acknowledged renewal, so a peer that sees the counter
    /// stand still for a TTL knows the lease has expired (see
    /// `package::peers`).
    pub async fn put_beat(&self, node: &str, lease: LeaseId, seq: u64) -> Result<(), StoreError> {
        let key = self.key(BEATS, node);
        self.kv()
            .put(
                key,
                seq.to_string(),
                Some(PutOptions::new().with_lease(lease.0)),
            )
            .await
            .map_err(|e| self.backend(format!("heartbeat of {node}: {e}")))?;
        Ok(())
    }

    /// Every node with a record: its heartbeat counter (if any) and the
    /// lease its record is bound to (if any).
    pub async fn beats(
        &self,
    ) -> Result<BTreeMap<String, (Option<u64>, Option<LeaseId>)>, StoreError> {
        let mut out: BTreeMap<String, (Option<u64>, Option<LeaseId>)> = BTreeMap::new();
        let nodes = self
            .kv()
            .get(self.key(NODES, ""), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.backend(format!("reading nodes: {e}")))?;
        let node_prefix = self.key(NODES, "");
        for kv in nodes.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            if let Some(name) = key.strip_prefix(node_prefix.as_str()) {
                let lease = (kv.lease() != 0).then(|| LeaseId(kv.lease()));
                out.insert(name.to_owned(), (None, lease));
            }
        }
        let beats = self
            .kv()
            .get(self.key(BEATS, ""), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.backend(format!("reading heartbeats: {e}")))?;
        let beat_prefix = self.key(BEATS, "");
        for kv in beats.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            if let (Some(name), Ok(seq)) = (
                key.strip_prefix(beat_prefix.as_str()),
                String::from_utf8_lossy(kv.value()).parse::<u64>(),
            ) && let Some(entry) = out.get_mut(name)
            {
                entry.0 = Some(seq);
            }
        }
        Ok(out)
    }

    // ---- package claims -------------------------------------------------

    /// Claims the right to run failover package `package` on `node`, bound
    /// to `lease`. The package record must still be at `expected` and list
    /// `node` as an owner ([`StoreError::Conflict`] otherwise), and no other
    /// claim may exist ([`ClaimOutcome::HeldBy`]).
    pub async fn claim_package(
        &self,
        package: &str,
        expected: Revision,
        node: &str,
        lease: LeaseId,
    ) -> Result<ClaimOutcome, StoreError> {
        let pkey = self.key(PACKAGES, package);
        let okey = self.key(OWNERS, package);
        for _ in 0..FENCE_RETRIES {
            let read = self.get_many(&[&pkey, &okey]).await?;
            let record = read[0]
                .as_ref()
                .map(|kv| {
                    self.decode::<PackageRecord>(kv)
                        .map(|r| (r, kv.mod_revision()))
                })
                .transpose()?;
            let actual = record.as_ref().map_or(0, |(_, rev)| to_revision(*rev));
            let Some((record, _)) = record.filter(|_| actual == expected && expected != 0) else {
                return Err(StoreError::Conflict {
                    package: package.to_owned(),
                    expected,
                    actual,
                });
            };
            if !record.owners.iter().any(|o| o == node) {
                return Ok(ClaimOutcome::NotOwner {
                    owners: record.owners,
                });
            }
            let existing = read[1]
                .as_ref()
                .map(|kv| {
                    self.decode::<OwnerClaim>(kv).map(|c| Versioned {
                        value: c,
                        mod_revision: to_revision(kv.mod_revision()),
                    })
                })
                .transpose()?;
            let claim = OwnerClaim {
                node: node.to_owned(),
                fence_token: record.fence_token,
                lease: lease.0,
            };
            let claim_compare = match &existing {
                Some(c) if c.value == claim => return Ok(ClaimOutcome::Granted(c.clone())),
                // Our own older claim (another lease or an older fence token)
                // is replaced in place.
                Some(c) if c.value.node == node => {
                    Compare::mod_revision(okey.as_str(), CompareOp::Equal, to_etcd(c.mod_revision))
                }
                Some(c) => return Ok(ClaimOutcome::HeldBy(c.clone())),
                None => Compare::create_revision(okey.as_str(), CompareOp::Equal, 0),
            };
            let bytes = self.encode(&okey, &claim)?;
            let resp = self
                .txn(
                    Txn::new()
                        .when([
                            Compare::mod_revision(
                                pkey.as_str(),
                                CompareOp::Equal,
                                to_etcd(expected),
                            ),
                            claim_compare,
                        ])
                        .and_then([TxnOp::put(
                            okey.as_str(),
                            bytes,
                            Some(PutOptions::new().with_lease(lease.0)),
                        )]),
                )
                .await?;
            if resp.succeeded() {
                return Ok(ClaimOutcome::Granted(Versioned {
                    value: claim,
                    mod_revision: header_revision(resp.header()),
                }));
            }
            // Lost a race: read again and report what won.
        }
        Err(self.backend(format!("claim of package {package} kept changing")))
    }

    /// Deletes `node`'s claim on `package`; `false` when it held none.
    pub async fn release_package(&self, package: &str, node: &str) -> Result<bool, StoreError> {
        let okey = self.key(OWNERS, package);
        for _ in 0..FENCE_RETRIES {
            let Some(current) = self.package_claim(package).await? else {
                return Ok(false);
            };
            if current.value.node != node {
                return Ok(false);
            }
            let resp = self
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(
                            okey.as_str(),
                            CompareOp::Equal,
                            to_etcd(current.mod_revision),
                        )])
                        .and_then([TxnOp::delete(okey.as_str(), None)]),
                )
                .await?;
            if resp.succeeded() {
                return Ok(true);
            }
        }
        Err(self.backend(format!("claim of package {package} kept changing")))
    }

    /// The current claim on `package`, if any.
    pub async fn package_claim(
        &self,
        package: &str,
    ) -> Result<Option<Versioned<OwnerClaim>>, StoreError> {
        let okey = self.key(OWNERS, package);
        let resp = self
            .kv()
            .get(okey.as_str(), None)
            .await
            .map_err(|e| self.backend(e))?;
        resp.kvs()
            .first()
            .map(|kv| {
                self.decode::<OwnerClaim>(kv).map(|c| Versioned {
                    value: c,
                    mod_revision: to_revision(kv.mod_revision()),
                })
            })
            .transpose()
    }

    // ---- election ------------------------------------------------------

    /// Tries to become the coordinator: creates the election key bound to
    /// `lease` if nobody holds it. `true` when `node` is the coordinator
    /// (also when it already was, under the same lease). Never waits: a
    /// candidate campaigns again later.
    pub async fn campaign(&self, node: &str, lease: LeaseId) -> Result<bool, StoreError> {
        let key = self.key(COORDINATOR, "");
        let resp = self
            .txn(
                Txn::new()
                    .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.as_str(),
                        node,
                        Some(PutOptions::new().with_lease(lease.0)),
                    )])
                    .or_else([TxnOp::get(key.as_str(), None)]),
            )
            .await?;
        if resp.succeeded() {
            return Ok(true);
        }
        Ok(first_kvs(&resp)
            .into_iter()
            .flatten()
            .next()
            .is_some_and(|kv| kv.value() == node.as_bytes() && kv.lease() == lease.0))
    }

    /// The current coordinator, if one is elected.
    pub async fn leader(&self) -> Result<Option<Leader>, StoreError> {
        let key = self.key(COORDINATOR, "");
        let resp = self
            .kv()
            .get(key.as_str(), None)
            .await
            .map_err(|e| self.backend(e))?;
        resp.kvs()
            .first()
            .map(|kv| {
                let node = kv
                    .value_str()
                    .map_err(|e| self.corrupt(&key, e))?
                    .to_owned();
                Ok(Leader {
                    node,
                    lease: LeaseId(kv.lease()),
                    since: to_revision(kv.create_revision()),
                })
            })
            .transpose()
    }

    /// Steps down if `node` is the coordinator; `false` when it was not.
    pub async fn resign(&self, node: &str) -> Result<bool, StoreError> {
        let key = self.key(COORDINATOR, "");
        let resp = self
            .txn(
                Txn::new()
                    .when([Compare::value(key.as_str(), CompareOp::Equal, node)])
                    .and_then([TxnOp::delete(key.as_str(), None)]),
            )
            .await?;
        Ok(resp.succeeded())
    }

    // ---- reading records ----------------------------------------------

    /// Adds one key of a prefix read to a snapshot; keys that are not part
    /// of the snapshot (fences, claims, election) are skipped.
    fn absorb(&self, snap: &mut Snapshot, kv: &KeyValue) -> Result<(), StoreError> {
        let key = String::from_utf8_lossy(kv.key());
        let Some(rest) = key.strip_prefix(self.inner.prefix.as_str()) else {
            return Ok(());
        };
        let mod_revision = to_revision(kv.mod_revision());
        if let Some(name) = rest.strip_prefix(NODES) {
            let value: NodeRecord = self.decode(kv)?;
            snap.nodes.insert(
                name.to_owned(),
                Versioned {
                    value,
                    mod_revision,
                },
            );
        } else if let Some(name) = rest.strip_prefix(PACKAGES) {
            let value: PackageRecord = self.decode(kv)?;
            snap.packages.insert(
                name.to_owned(),
                Versioned {
                    value,
                    mod_revision,
                },
            );
        } else if let Some(rest) = rest.strip_prefix(RESOURCES) {
            let (node, resource, state) = self.resource(&key, rest, kv.value())?;
            snap.resources.insert((node, resource), state);
        } else if rest.strip_prefix(CONFIG) == Some(APPLIED_KEY) {
            snap.applied = Some(Versioned {
                value: self.decode(kv)?,
                mod_revision,
            });
        }
        Ok(())
    }

    fn resource(
        &self,
        key: &str,
        rest: &str,
        value: &[u8],
    ) -> Result<(String, ResourceName, ResourceState), StoreError> {
        let (node, resource) = rest
            .find('/')
            .map(|i| rest.split_at(i))
            .ok_or_else(|| self.corrupt(key, "not a node and a resource name"))?;
        let resource = ResourceName::new(resource).map_err(|e| self.corrupt(key, e))?;
        let state = std::str::from_utf8(value)
            .ok()
            .and_then(parse_state)
            .ok_or_else(|| {
                self.corrupt(key, format!("state {:?}", String::from_utf8_lossy(value)))
            })?;
        Ok((node.to_owned(), resource, state))
    }

    /// Turns one etcd event into a store event, or `None` for keys and
    /// changes the trait does not report.
    fn translate(&self, event: &Event) -> Result<Option<StoreEvent>, StoreError> {
        let Some(kv) = event.kv() else {
            return Ok(None);
        };
        let key = String::from_utf8_lossy(kv.key());
        let Some(rest) = key.strip_prefix(self.inner.prefix.as_str()) else {
            return Ok(None);
        };
        let revision = to_revision(kv.mod_revision());
        let put = event.event_type() == EventType::Put;
        let change = if let Some(name) = rest.strip_prefix(NODES) {
            if put {
                Change::Node(Versioned {
                    value: self.decode(kv)?,
                    mod_revision: revision,
                })
            } else {
                Change::NodeDeleted {
                    name: name.to_owned(),
                }
            }
        } else if let Some(name) = rest.strip_prefix(PACKAGES) {
            if put {
                Change::Package(Versioned {
                    value: self.decode(kv)?,
                    mod_revision: revision,
                })
            } else {
                Change::PackageDeleted {
                    name: name.to_owned(),
                }
            }
        } else if let Some(rest) = rest.strip_prefix(RESOURCES) {
            // Rewriting an unchanged state bumps the revision but is no
            // change, as in the embedded store.
            if !put
                || event
                    .prev_kv()
                    .is_some_and(|prev| prev.value() == kv.value())
            {
                return Ok(None);
            }
            let (node, resource, state) = self.resource(&key, rest, kv.value())?;
            Change::Resource {
                node,
                resource,
                state,
            }
        } else if put && rest.strip_prefix(CONFIG) == Some(APPLIED_KEY) {
            Change::Applied(Versioned {
                value: self.decode(kv)?,
                mod_revision: revision,
            })
        } else {
            return Ok(None);
        };
        Ok(Some(StoreEvent { revision, change }))
    }

    async fn read_snapshot(&self) -> Result<Snapshot, StoreError> {
        let resp = self
            .kv()
            .get(
                self.inner.prefix.as_str(),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(|e| self.backend(e))?;
        let mut snap = Snapshot {
            revision: header_revision(resp.header()),
            ..Snapshot::default()
        };
        for kv in resp.kvs() {
            self.absorb(&mut snap, kv)?;
        }
        Ok(snap)
    }

    async fn watch_from(&self, start: Revision, tx: mpsc::UnboundedSender<StoreEvent>) {
        let mut next = start;
        let mut open = self.inner.open.clone();
        loop {
            let options = WatchOptions::new()
                .with_prefix()
                .with_prev_key()
                .with_start_revision(to_etcd(next));
            let mut client = self.inner.client.watch_client();
            let opened = tokio::select! {
                _ = open.changed() => return,
                _ = tx.closed() => return,
                opened = client.watch(self.inner.prefix.as_str(), Some(options)) => opened,
            };
            let mut stream = match opened {
                Ok(stream) => stream,
                Err(e) => {
                    warn!(endpoints = %self.inner.endpoints, error = %e, "cannot open the store watch; retrying");
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            };
            loop {
                let message = tokio::select! {
                    _ = open.changed() => return,
                    _ = tx.closed() => return,
                    message = stream.message() => message,
                };
                let resp = match message {
                    Ok(Some(resp)) => resp,
                    Ok(None) => break,
                    Err(e) => {
                        warn!(endpoints = %self.inner.endpoints, error = %e, "store watch broke; re-opening");
                        break;
                    }
                };
                if resp.canceled() {
                    if resp.compact_revision() > 0 {
                        error!(endpoints = %self.inner.endpoints, from = next, compacted = resp.compact_revision(),
                            "store watch cannot resume: etcd compacted the history; closing it");
                        return;
                    }
                    warn!(endpoints = %self.inner.endpoints, reason = resp.cancel_reason(), "store watch cancelled; re-opening");
                    break;
                }
                for event in resp.events() {
                    if let Some(kv) = event.kv() {
                        next = next.max(to_revision(kv.mod_revision()) + 1);
                    }
                    match self.translate(event) {
                        Ok(Some(event)) => {
                            if tx.send(event).is_err() {
                                return;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            error!(error = %e, "skipping a store change that cannot be read")
                        }
                    }
                }
            }
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    }
}

async fn keep_alive_loop(
    client: Client,
    endpoints: String,
    lease: LeaseId,
    ttl: Duration,
    health: watch::Sender<LeaseHealth>,
) {
    let interval = (ttl / 10).max(Duration::from_millis(100));
    let fail = |message: String| {
        warn!(%endpoints, %lease, error = %message, "lease keepalive failed");
        health.send_modify(|h| h.last_error = Some(message));
    };
    let renewed = |sent: Instant| {
        health.send_modify(|h| {
            h.renewed_at = Some(sent);
            h.valid_until = sent + ttl;
            h.last_error = None;
        });
    };
    let expired = || {
        error!(%endpoints, %lease, "lease expired");
        health.send_modify(|h| {
            h.expired = true;
            h.last_error = Some("lease expired".into());
        });
    };
    loop {
        let sent = Instant::now();
        // Opening the stream sends the first keepalive and waits for its
        // answer.
        let opened =
            tokio::time::timeout(interval, client.lease_client().keep_alive(lease.0)).await;
        let (mut keeper, mut stream) = match opened {
            Ok(Ok(pair)) => {
                renewed(sent);
                pair
            }
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(m))) if m.contains("not found") => {
                expired();
                return;
            }
            Ok(Err(e)) => {
                fail(e.to_string());
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
            Err(_) => {
                fail(format!("no answer within {interval:?}"));
                continue;
            }
        };
        loop {
            tokio::time::sleep(interval).await;
            let sent = Instant::now();
            if let Err(e) = keeper.keep_alive().await {
                fail(e.to_string());
                break;
            }
            match tokio::time::timeout(interval, stream.message()).await {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => renewed(sent),
                Ok(Ok(Some(_))) => {
                    expired();
                    return;
                }
                Ok(Ok(None)) => {
                    fail("keepalive stream ended".into());
                    break;
                }
                Ok(Err(e)) => {
                    fail(e.to_string());
                    break;
                }
                Err(_) => {
                    fail(format!("no answer within {interval:?}"));
                    break;
                }
            }
        }
    }
}

impl ClusterStore for EtcdStore {
    fn snapshot(&self) -> StoreFuture<'_, Snapshot> {
        Box::pin(self.read_snapshot())
    }

    fn put_node(&self, node: NodeRecord) -> StoreFuture<'_, Revision> {
        Box::pin(async move {
            let key = self.key(NODES, &node.name);
            let bytes = self.encode(&key, &node)?;
            // An existing key keeps its lease: a state change must not
            // unbind the node record from the node's liveness.
            let resp = self
                .txn(
                    Txn::new()
                        .when([Compare::version(key.as_str(), CompareOp::Greater, 0)])
                        .and_then([TxnOp::put(
                            key.as_str(),
                            bytes.clone(),
                            Some(PutOptions::new().with_ignore_lease()),
                        )])
                        .or_else([TxnOp::put(key.as_str(), bytes, None)]),
                )
                .await
                .map_err(|e| match e {
                    StoreError::Backend { path, message } => StoreError::Backend {
                        path,
                        message: format!("node {}: {message}", node.name),
                    },
                    other => other,
                })?;
            Ok(header_revision(resp.header()))
        })
    }

    fn set_resource_states(
        &self,
        node: String,
        states: Vec<(ResourceName, ResourceState)>,
    ) -> StoreFuture<'_, Revision> {
        Box::pin(async move {
            if node.is_empty() || node.contains('/') {
                return Err(self.backend(format!(
                    "node name {node:?} must be non-empty and without '/'"
                )));
            }
            if states.is_empty() {
                // etcd does not bump the revision for an empty txn.
                let resp = self
                    .kv()
                    .get(
                        self.key(NODES, ""),
                        Some(GetOptions::new().with_count_only()),
                    )
                    .await
                    .map_err(|e| self.backend(e))?;
                return Ok(header_revision(resp.header()));
            }
            // Every state is written, so the revision is bumped even when
            // none changed; the watch drops the unchanged ones.
            let ops: Vec<TxnOp> = states
                .iter()
                .map(|(resource, state)| {
                    TxnOp::put(
                        self.key(RESOURCES, &format!("{node}{resource}")),
                        state.as_str(),
                        None,
                    )
                })
                .collect();
            let resp = self.txn(Txn::new().and_then(ops)).await?;
            Ok(header_revision(resp.header()))
        })
    }

    fn package(&self, name: String) -> StoreFuture<'_, Option<Versioned<PackageRecord>>> {
        Box::pin(async move {
            let key = self.key(PACKAGES, &name);
            let read = self.get_many(&[&key]).await?;
            read[0]
                .as_ref()
                .map(|kv| {
                    Ok(Versioned {
                        value: self.decode::<PackageRecord>(kv)?,
                        mod_revision: to_revision(kv.mod_revision()),
                    })
                })
                .transpose()
        })
    }

    fn update_package(
        &self,
        name: String,
        expected: Revision,
        update: PackageUpdate,
    ) -> StoreFuture<'_, Versioned<PackageRecord>> {
        Box::pin(async move {
            let pkey = self.key(PACKAGES, &name);
            let fkey = self.key(FENCES, &name);
            let conflict = |actual| StoreError::Conflict {
                package: name.clone(),
                expected,
                actual,
            };
            for _ in 0..FENCE_RETRIES {
                let read = self.get_many(&[&pkey, &fkey]).await?;
                let current = read[0]
                    .as_ref()
                    .map(|kv| self.decode::<PackageRecord>(kv))
                    .transpose()?;
                let actual = read[0]
                    .as_ref()
                    .map_or(0, |kv| to_revision(kv.mod_revision()));
                if actual != expected {
                    return Err(conflict(actual));
                }
                let (mut fence, fence_revision) = match &read[1] {
                    Some(kv) => {
                        let value = std::str::from_utf8(kv.value())
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok())
                            .ok_or_else(|| self.corrupt(&fkey, "not a decimal fence token"))?;
                        (value, kv.mod_revision())
                    }
                    None => (0, 0),
                };
                let old_owners: BTreeSet<&String> = current
                    .as_ref()
                    .map(|c| c.owners.iter().collect())
                    .unwrap_or_default();
                let new_owners: BTreeSet<&String> = update.owners.iter().collect();
                let bump = old_owners != new_owners;
                if bump {
                    fence += 1;
                }
                let record = PackageRecord {
                    name: name.clone(),
                    state: update.state,
                    owners: update.owners.clone(),
                    fence_token: FenceToken(fence),
                    switching: update.switching,
                    disabled_nodes: update.disabled_nodes.clone(),
                    failed_on: update.failed_on.clone(),
                    reason: update.reason.clone(),
                    updated_ms: now_ms(),
                    admin: update.admin.clone(),
                    left: update.left.clone(),
                };
                let mut ops = vec![TxnOp::put(
                    pkey.as_str(),
                    self.encode(&pkey, &record)?,
                    None,
                )];
                if bump {
                    ops.push(TxnOp::put(fkey.as_str(), fence.to_string(), None));
                }
                let resp = self
                    .txn(
                        Txn::new()
                            .when([
                                Compare::mod_revision(
                                    pkey.as_str(),
                                    CompareOp::Equal,
                                    to_etcd(expected),
                                ),
                                Compare::mod_revision(
                                    fkey.as_str(),
                                    CompareOp::Equal,
                                    fence_revision,
                                ),
                            ])
                            .and_then(ops)
                            .or_else([TxnOp::get(pkey.as_str(), None)]),
                    )
                    .await?;
                match swapped(&resp) {
                    Ok(mod_revision) => {
                        return Ok(Versioned {
                            value: record,
                            mod_revision,
                        });
                    }
                    Err(actual) if actual != expected => return Err(conflict(actual)),
                    Err(_) => {}
                }
                // Only the fence key moved: read it again.
            }
            Err(self.backend(format!("fence token of package {name} kept changing")))
        })
    }

    fn delete_package(&self, name: String, expected: Revision) -> StoreFuture<'_, Revision> {
        Box::pin(async move {
            let pkey = self.key(PACKAGES, &name);
            let conflict = |actual| StoreError::Conflict {
                package: name.clone(),
                expected,
                actual,
            };
            if expected == 0 {
                let read = self.get_many(&[&pkey]).await?;
                let actual = read[0]
                    .as_ref()
                    .map_or(0, |kv| to_revision(kv.mod_revision()));
                return Err(conflict(actual));
            }
            let resp = self
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(
                            pkey.as_str(),
                            CompareOp::Equal,
                            to_etcd(expected),
                        )])
                        .and_then([TxnOp::delete(pkey.as_str(), None)])
                        .or_else([TxnOp::get(pkey.as_str(), None)]),
                )
                .await?;
            swapped(&resp).map_err(conflict)
        })
    }

    fn put_applied(
        &self,
        expected: Revision,
        set: AppliedPackages,
    ) -> StoreFuture<'_, Versioned<AppliedPackages>> {
        Box::pin(async move {
            let key = self.key(CONFIG, APPLIED_KEY);
            let bytes = self.encode(&key, &set)?;
            let resp = self
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(
                            key.as_str(),
                            CompareOp::Equal,
                            to_etcd(expected),
                        )])
                        .and_then([TxnOp::put(key.as_str(), bytes, None)])
                        .or_else([TxnOp::get(key.as_str(), None)]),
                )
                .await?;
            swapped(&resp)
                .map(|mod_revision| Versioned {
                    value: set,
                    mod_revision,
                })
                .map_err(|actual| StoreError::Conflict {
                    package: APPLIED_KEY.to_owned(),
                    expected,
                    actual,
                })
        })
    }

    fn watch(&self) -> StoreFuture<'_, Watch> {
        Box::pin(async move {
            let snapshot = self.read_snapshot().await?;
            let (tx, events) = mpsc::unbounded_channel();
            // The task gets a view that shares the connection but not the
            // store's `open` sender, so dropping the store ends the watch.
            let view = EtcdStore {
                inner: Arc::new(Inner {
                    client: self.inner.client.clone(),
                    endpoints: self.inner.endpoints.clone(),
                    prefix: self.inner.prefix.clone(),
                    _open: None,
                    open: self.inner.open.clone(),
                }),
            };
            let start = snapshot.revision + 1;
            tokio::spawn(async move { view.watch_from(start, tx).await });
            Ok(Watch { snapshot, events })
        })
    }
}

/// The key-values of the first `get` in a txn response (success or failure
/// branch), one entry per `get` op, `None` for absent keys.
fn first_kvs(resp: &TxnResponse) -> Vec<Option<KeyValue>> {
    resp.op_responses()
        .into_iter()
        .filter_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get.kvs().first().cloned()),
            _ => None,
        })
        .collect()
}

/// A compare-and-swap's answer: the revision it wrote at, or else (its
/// `or_else` read the key) the revision the key has instead, 0 for none.
fn swapped(resp: &TxnResponse) -> Result<Revision, Revision> {
    if resp.succeeded() {
        return Ok(header_revision(resp.header()));
    }
    Err(first_kvs(resp)
        .into_iter()
        .flatten()
        .next()
        .map_or(0, |kv| to_revision(kv.mod_revision())))
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| to_revision(h.revision()))
}

fn to_revision(revision: i64) -> Revision {
    // etcd revisions are never negative.
    u64::try_from(revision).unwrap_or(0)
}

fn to_etcd(revision: Revision) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}

fn parse_state(s: &str) -> Option<ResourceState> {
    ResourceState::parse(s)
}
