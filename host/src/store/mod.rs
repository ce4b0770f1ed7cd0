//! The cluster store: the shared record of nodes, packages and the resource
//! states packages depend on, behind one trait ([`ClusterStore`]) with an
//! embedded backend ([`embedded::EmbeddedStore`], one node, persisted with
//! redb) and an etcd backend ([`etcd::EtcdStore`], many nodes). Code above
//! the trait does not know which backend it runs on.
//!
//! The model follows etcd so that both backends mean the same thing:
//!
//! * Every committed write gets the next store-wide [`Revision`]; each
//!   record carries the revision of its last change (`mod_revision`).
//! * Package changes are compare-and-swap on that revision
//!   ([`ClusterStore::update_package`]): `0` means "must not exist yet",
//!   exactly like an etcd `txn` comparing `mod_revision(key) == 0`. A stale
//!   writer gets [`StoreError::Conflict`] and must re-read.
//! * Every change of a package's owners bumps its [`FenceToken`] in the same
//!   transaction. Tokens are kept apart from package records, so they stay
//!   strictly increasing even across a package's deletion and re-creation.
//! * [`ClusterStore::watch`] returns a snapshot and the stream of every
//!   change committed after it, in commit order, with nothing missed and
//!   nothing repeated.
//!
//! Not in the trait: node liveness leases, lease-bound package claims and
//! the coordinator election, which only the etcd backend has (inherent
//! methods of [`etcd::EtcdStore`]; a single embedded node is always its own
//! coordinator). Not here at all: deciding what to write (the package
//! manager does).

pub mod embedded;
pub mod etcd;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use vigil_sdk::ResourceName;

use crate::criteria::ResourceState;

/// A store-wide counter, bumped once per committed write. `0` is "never
/// written".
pub type Revision = u64;

/// A future returned by the store; boxed so that `dyn ClusterStore` works.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A node's membership state (DESIGN §7: `vigil status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Up,
    Down,
    /// Taken out of the cluster by an operator (`vigil node halt`).
    Halted,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
            NodeState::Halted => "halted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub state: NodeState,
    /// Milliseconds since the Unix epoch of the writer's clock.
    pub updated_ms: u64,
    /// `vigil node maintenance NAME on`: vigil takes no action for the
    /// packages on this node (their services and monitors keep running).
    /// Lives as long as the record: a node that leaves the cluster (its
    /// lease ends) rejoins out of maintenance, as it rejoins up.
    #[serde(default)]
    pub maintenance: bool,
}

/// A package's cluster-wide state (DESIGN §7: `vigil status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PackageState {
    Up,
    Down,
    Starting,
    Halting,
    Failed,
}

impl PackageState {
    pub fn as_str(self) -> &'static str {
        match self {
            PackageState::Up => "up",
            PackageState::Down => "down",
            PackageState::Starting => "starting",
            PackageState::Halting => "halting",
            PackageState::Failed => "failed",
        }
    }
}

/// Identifies one ownership of a package: strictly increasing per package,
/// bumped by the store whenever the owners change. Control scripts get it as
/// `VIGIL_FENCE_TOKEN` so that shared resources can refuse a stale owner.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct FenceToken(pub u64);

impl fmt::Display for FenceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What the store keeps about a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRecord {
    pub name: String,
    pub state: PackageState,
    /// Nodes it runs on (or is starting/halting on); one for a failover
    /// package, several for a multi-node one.
    pub owners: Vec<String>,
    /// Set by the store; the token of the current ownership.
    pub fence_token: FenceToken,
    /// Package switching (`vigil pkg enable|disable`): may it be started or
    /// moved automatically at all?
    pub switching: bool,
    /// Nodes where switching is disabled for this package alone
    /// (`vigil pkg disable NAME --node N`).
    pub disabled_nodes: BTreeSet<String>,
    /// Nodes where it failed since the last `vigil pkg clear`.
    pub failed_on: BTreeSet<String>,
    /// Why it is in its state, for `vigil status` and `vigil why`.
    pub reason: String,
    pub updated_ms: u64,
    /// What an operator asked for, on whichever node (`vigil pkg …`).
    #[serde(default)]
    pub admin: AdminRequest,
    /// The node it last left for a reason other than an operator's halt
    /// (a resource went down, a service failed): its next start elsewhere
    /// is a failover. Cleared when it starts.
    #[serde(default)]
    pub left: Option<String>,
}

/// An operator's standing request for a package, kept in its record so that
/// every node's planner honours it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRequest {
    /// `vigil pkg halt`: halt it and keep it down.
    #[serde(default)]
    pub halted: bool,
    /// `vigil pkg run|move`: start it now, even if `auto_run` is off.
    #[serde(default)]
    pub run: bool,
    /// `--node`: where to run (or move) it.
    #[serde(default)]
    pub node: Option<String>,
    /// `vigil pkg maintenance NAME on`: vigil takes no action for the
    /// package anywhere (no halt, restart, failover or failback); its
    /// services, parts and monitors keep running and being watched.
    #[serde(default)]
    pub maintenance: bool,
}

/// The part of a package record a writer chooses; the store sets the name,
/// the fence token and the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageUpdate {
    pub state: PackageState,
    pub owners: Vec<String>,
    pub switching: bool,
    pub disabled_nodes: BTreeSet<String>,
    pub failed_on: BTreeSet<String>,
    pub reason: String,
    pub admin: AdminRequest,
    pub left: Option<String>,
}

impl PackageUpdate {
    /// A package that runs nowhere, switching enabled: the starting point.
    pub fn down(reason: impl Into<String>) -> Self {
        Self {
            state: PackageState::Down,
            owners: Vec::new(),
            switching: true,
            disabled_nodes: BTreeSet::new(),
            failed_on: BTreeSet::new(),
            reason: reason.into(),
            admin: AdminRequest::default(),
            left: None,
        }
    }
}

impl From<&PackageRecord> for PackageUpdate {
    /// Starts an update from the current record, to change a field or two.
    fn from(r: &PackageRecord) -> Self {
        Self {
            state: r.state,
            owners: r.owners.clone(),
            switching: r.switching,
            disabled_nodes: r.disabled_nodes.clone(),
            failed_on: r.failed_on.clone(),
            reason: r.reason.clone(),
            admin: r.admin.clone(),
            left: r.left.clone(),
        }
    }
}

/// The cluster's package set, as `vigil apply` (or, on one node, a
/// reload) stored it: the text of every `packages.d/*.toml` file, by file
/// name. Every host runs these packages, not its own files (DESIGN §7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedPackages {
    /// 1 for the first applied set, one more for every later one.
    pub revision: u64,
    /// [`AppliedPackages::digest_of`] of `files`.
    pub digest: String,
    /// File name (`web.toml`) → its text.
    pub files: BTreeMap<String, String>,
    /// Where it was applied: `vigil apply on node1`, `reload on node1`,
    /// `first start of node1`.
    pub applied_by: String,
    pub applied_ms: u64,
}

impl AppliedPackages {
    /// A digest of a package set: FNV-1a (64 bits) over every file name and
    /// text in name order, as 16 hex digits. It identifies a set; it is not
    /// a signature.
    pub fn digest_of(files: &BTreeMap<String, String>) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for (name, text) in files {
            for byte in name.bytes().chain([0]).chain(text.bytes()).chain([0]) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        format!("{hash:016x}")
    }
}

/// A record with the revision of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub mod_revision: Revision,
}

/// Everything in the store at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub revision: Revision,
    pub nodes: BTreeMap<String, Versioned<NodeRecord>>,
    pub packages: BTreeMap<String, Versioned<PackageRecord>>,
    /// (node, resource) → the state packages judged it to be in.
    pub resources: BTreeMap<(String, ResourceName), ResourceState>,
    /// The applied package set, if one was ever applied.
    pub applied: Option<Versioned<AppliedPackages>>,
}

impl Snapshot {
    /// Applies an event in order, so a watcher's snapshot stays current.
    /// A record is never replaced by an older version of itself: a writer
    /// that applies its own write results at once (see [`Self::seen`]) may
    /// then receive the watch's events of earlier revisions.
    pub fn apply(&mut self, event: &StoreEvent) {
        self.revision = self.revision.max(event.revision);
        match &event.change {
            Change::Node(n) => {
                if self
                    .nodes
                    .get(&n.value.name)
                    .is_none_or(|old| old.mod_revision <= n.mod_revision)
                {
                    self.nodes.insert(n.value.name.clone(), n.clone());
                }
            }
            Change::Package(p) => self.seen(p.clone()),
            Change::PackageDeleted { name } => {
                if self
                    .packages
                    .get(name)
                    .is_some_and(|old| old.mod_revision <= event.revision)
                {
                    self.packages.remove(name);
                }
            }
            Change::NodeDeleted { name } => {
                if self
                    .nodes
                    .get(name)
                    .is_some_and(|old| old.mod_revision <= event.revision)
                {
                    self.nodes.remove(name);
                }
            }
            Change::Resource {
                node,
                resource,
                state,
            } => {
                self.resources
                    .insert((node.clone(), resource.clone()), *state);
            }
            Change::Applied(set) => {
                if self
                    .applied
                    .as_ref()
                    .is_none_or(|old| old.mod_revision <= set.mod_revision)
                {
                    self.applied = Some(set.clone());
                }
            }
        }
    }

    /// Takes a package record read or written by this process, unless the
    /// snapshot already holds a newer version of it.
    pub fn seen(&mut self, record: Versioned<PackageRecord>) {
        if self
            .packages
            .get(&record.value.name)
            .is_none_or(|old| old.mod_revision <= record.mod_revision)
        {
            self.revision = self.revision.max(record.mod_revision);
            self.packages.insert(record.value.name.clone(), record);
        }
    }
}

/// One committed change. A write that changes several records yields one
/// event per record, all with the write's revision.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreEvent {
    pub revision: Revision,
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Node(Versioned<NodeRecord>),
    /// The node's record is gone: with etcd, its liveness lease expired or
    /// was revoked. The embedded store never deletes nodes.
    NodeDeleted {
        name: String,
    },
    Package(Versioned<PackageRecord>),
    PackageDeleted {
        name: String,
    },
    Resource {
        node: String,
        resource: ResourceName,
        state: ResourceState,
    },
    /// A new package set was applied.
    Applied(Versioned<AppliedPackages>),
}

/// A snapshot and every change committed after it, in commit order.
#[derive(Debug)]
pub struct Watch {
    pub snapshot: Snapshot,
    /// Ends when the store is dropped. Unbounded so that a slow watcher
    /// never loses a change; the daemon's main loop drains it promptly.
    pub events: mpsc::UnboundedReceiver<StoreEvent>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A compare-and-swap lost: someone else wrote the package first.
    #[error(
        "package {package}: expected revision {expected}, found {actual} (changed by another writer)"
    )]
    Conflict {
        package: String,
        expected: Revision,
        /// `0` when the package does not exist.
        actual: Revision,
    },
    #[error("store {path}: {message}")]
    Backend { path: String, message: String },
    #[error("store {path}: record {key} cannot be read: {message}")]
    Corrupt {
        path: String,
        key: String,
        message: String,
    },
}

/// The cluster store. Implementations are shared (`Arc<dyn ClusterStore>`)
/// between the daemon's tasks; every method is one atomic write or one
/// consistent read.
pub trait ClusterStore: Send + Sync {
    /// Everything at the latest revision.
    fn snapshot(&self) -> StoreFuture<'_, Snapshot>;

    /// One package's record at the latest revision (`None`: no record).
    fn package(&self, name: String) -> StoreFuture<'_, Option<Versioned<PackageRecord>>>;

    /// Creates or replaces a node's membership record.
    fn put_node(&self, node: NodeRecord) -> StoreFuture<'_, Revision>;

    /// Records the states of resources on `node`, all in one write. Only
    /// states that differ from the stored ones produce events; the revision
    /// is bumped even if none differ.
    fn set_resource_states(
        &self,
        node: String,
        states: Vec<(ResourceName, ResourceState)>,
    ) -> StoreFuture<'_, Revision>;

    /// Compare-and-swap of a package record: succeeds only when the stored
    /// record's `mod_revision` is `expected` (`0`: it must not exist). When
    /// the owners change (as a set), the fence token is bumped in the same
    /// write. Returns the new record.
    fn update_package(
        &self,
        name: String,
        expected: Revision,
        update: PackageUpdate,
    ) -> StoreFuture<'_, Versioned<PackageRecord>>;

    /// Compare-and-swap deletion of a package record (its fence token is
    /// kept, so a re-created package continues above it).
    fn delete_package(&self, name: String, expected: Revision) -> StoreFuture<'_, Revision>;

    /// Compare-and-swap of the applied package set: succeeds only when the
    /// stored set's `mod_revision` is `expected` (`0`: none applied yet).
    /// A lost race is [`StoreError::Conflict`] with package
    /// [`APPLIED_KEY`].
    fn put_applied(
        &self,
        expected: Revision,
        set: AppliedPackages,
    ) -> StoreFuture<'_, Versioned<AppliedPackages>>;

    /// A snapshot plus the stream of later changes, taken atomically.
    fn watch(&self) -> StoreFuture<'_, Watch>;
}

/// The name the applied package set goes by in a
/// [`StoreError::Conflict`] (and its key in both backends).
pub const APPLIED_KEY: &str = "applied-packages";

/// Milliseconds since the Unix epoch, for `updated_ms`.
pub(crate) fn now_ms() -> u64 {
    vigil_sdk::now_ms()
}

#[cfg(test)]
mod etcd_tests;
#[cfg(test)]
mod suite;
#[cfg(test)]
mod tests;
