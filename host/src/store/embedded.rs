//! The embedded cluster store: one node, in-process, persisted with redb in
//! `<store path>/cluster.redb` (the `path` of `[store] type = "embedded"`
//! is a directory, `<[paths] state_dir>/store` by default).
//!
//! Every write is one redb write transaction, committed durably before its
//! events are sent, so what a watcher saw survives a crash and a reopened
//! store continues at the same revision. Writes are serialised by a mutex
//! that is held across the commit and the sending of its events: events
//! therefore arrive in commit order, and [`ClusterStore::watch`] takes its
//! snapshot and registers under the same mutex, so no change falls between
//! them. redb's file lock keeps a second process from opening the same
//! store.
//!
//! Records are JSON inside redb tables: easy to inspect and to extend with
//! defaulted fields. This backend has no leases and no election; a single
//! node needs neither.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use vigil_sdk::ResourceName;

use super::{
    APPLIED_KEY, AppliedPackages, Change, ClusterStore, FenceToken, NodeRecord, PackageRecord,
    PackageUpdate, Revision, Snapshot, StoreError, StoreEvent, StoreFuture, Versioned, Watch,
    now_ms,
};
use crate::criteria::ResourceState;

/// The database file inside the store directory.
pub const FILE_NAME: &str = "cluster.redb";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const PACKAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("packages");
/// Kept apart from `packages` so that deleting a package keeps its token.
const FENCES: TableDefinition<&str, u64> = TableDefinition::new("fences");
/// Key: `node` NUL `resource`; value: `up`, `down` or `unknown`.
const RESOURCES: TableDefinition<&str, &str> = TableDefinition::new("resources");
/// The applied package set, under [`APPLIED_KEY`].
const CONFIG: TableDefinition<&str, &[u8]> = TableDefinition::new("config");
const REVISION_KEY: &str = "revision";

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored<T> {
    mod_revision: Revision,
    value: T,
}

/// The redb-backed [`ClusterStore`]. Cheap to clone; clones share the
/// database and the watchers.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// Held for the whole of every write; the senders of live watches.
    watchers: Mutex<Vec<mpsc::UnboundedSender<StoreEvent>>>,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(FILE_NAME);
        let fail = |message: String| StoreError::Backend {
            path: path.display().to_string(),
            message,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(format!("cannot create directory {}: {e}", dir.display())))?;
        let db = Database::create(&path).map_err(|e| fail(e.to_string()))?;
        let inner = Inner {
            db,
            path,
            watchers: Mutex::new(Vec::new()),
        };
        // Tables exist from the start, so that readers never meet a missing one.
        let txn = inner.db.begin_write().map_err(|e| inner.backend(e))?;
        txn.open_table(META).map_err(|e| inner.backend(e))?;
        txn.open_table(NODES).map_err(|e| inner.backend(e))?;
        txn.open_table(PACKAGES).map_err(|e| inner.backend(e))?;
        txn.open_table(FENCES).map_err(|e| inner.backend(e))?;
        txn.open_table(RESOURCES).map_err(|e| inner.backend(e))?;
        txn.open_table(CONFIG).map_err(|e| inner.backend(e))?;
        txn.commit().map_err(|e| inner.backend(e))?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs blocking database work off the async runtime.
    fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let path = inner.path.display().to_string();
            tokio::task::spawn_blocking(move || work(&inner))
                .await
                .map_err(|e| StoreError::Backend {
                    path,
                    message: format!("store task failed: {e}"),
                })?
        })
    }
}

impl Inner {
    fn backend(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn corrupt(&self, key: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: self.path.display().to_string(),
            key: key.to_owned(),
            message: e.to_string(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<mpsc::UnboundedSender<StoreEvent>>> {
        // A panic while holding the lock cannot leave the database half
        // written (the transaction aborts on drop), so the list is usable.
        self.watchers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn decode<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| self.corrupt(key, e))
    }

    fn encode<T: Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(value).map_err(|e| self.corrupt(key, e))
    }

    /// One write transaction at the next revision. `apply` records the
    /// changes it made; they are sent to watchers after the commit, while
    /// the lock still keeps other writers out.
    fn write<T>(
        &self,
        apply: impl FnOnce(
            &Inner,
            &WriteTransaction,
            Revision,
            &mut Vec<Change>,
        ) -> Result<T, StoreError>,
    ) -> Result<(T, Revision), StoreError> {
        let mut watchers = self.lock();
        let txn = self.db.begin_write().map_err(|e| self.backend(e))?;
        let result = (|| {
            let revision = {
                let meta = txn.open_table(META).map_err(|e| self.backend(e))?;
                meta.get(REVISION_KEY)
                    .map_err(|e| self.backend(e))?
                    .map_or(0, |g| g.value())
                    + 1
            };
            let mut changes = Vec::new();
            let out = apply(self, &txn, revision, &mut changes)?;
            txn.open_table(META)
                .and_then(|mut meta| {
                    meta.insert(REVISION_KEY, revision)
                        .map(drop)
                        .map_err(Into::into)
                })
                .map_err(|e| self.backend(e))?;
            Ok((out, revision, changes))
        })();
        let (out, revision, changes) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = txn.abort();
                return Err(e);
            }
        };
        txn.commit().map_err(|e| self.backend(e))?;
        // A watcher whose receiver is gone is dropped from the list.
        watchers.retain(|tx| {
            changes.iter().all(|change| {
                tx.send(StoreEvent {
                    revision,
                    change: change.clone(),
                })
                .is_ok()
            })
        });
        Ok((out, revision))
    }

    fn package(&self, name: &str) -> Result<Option<Versioned<PackageRecord>>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.backend(e))?;
        let packages = txn.open_table(PACKAGES).map_err(|e| self.backend(e))?;
        let Some(bytes) = packages.get(name).map_err(|e| self.backend(e))? else {
            return Ok(None);
        };
        let stored: Stored<PackageRecord> = self.decode(name, bytes.value())?;
        Ok(Some(Versioned {
            value: stored.value,
            mod_revision: stored.mod_revision,
        }))
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.backend(e))?;
        let mut snap = Snapshot {
            revision: txn
                .open_table(META)
                .and_then(|t| Ok(t.get(REVISION_KEY)?.map_or(0, |g| g.value())))
                .map_err(|e| self.backend(e))?,
            ..Snapshot::default()
        };
        let nodes = txn.open_table(NODES).map_err(|e| self.backend(e))?;
        for entry in nodes.iter().map_err(|e| self.backend(e))? {
            let (k, v) = entry.map_err(|e| self.backend(e))?;
            let stored: Stored<NodeRecord> = self.decode(k.value(), v.value())?;
            snap.nodes.insert(
                k.value().to_owned(),
                Versioned {
                    value: stored.value,
                    mod_revision: stored.mod_revision,
                },
            );
        }
        let packages = txn.open_table(PACKAGES).map_err(|e| self.backend(e))?;
        for entry in packages.iter().map_err(|e| self.backend(e))? {
            let (k, v) = entry.map_err(|e| self.backend(e))?;
            let stored: Stored<PackageRecord> = self.decode(k.value(), v.value())?;
            snap.packages.insert(
                k.value().to_owned(),
                Versioned {
                    value: stored.value,
                    mod_revision: stored.mod_revision,
                },
            );
        }
        let resources = txn.open_table(RESOURCES).map_err(|e| self.backend(e))?;
        for entry in resources.iter().map_err(|e| self.backend(e))? {
            let (k, v) = entry.map_err(|e| self.backend(e))?;
            let (node, resource) = split_resource_key(k.value())
                .ok_or_else(|| self.corrupt(k.value(), "not a node and a resource name"))?;
            let state = parse_state(v.value())
                .ok_or_else(|| self.corrupt(k.value(), format!("state {:?}", v.value())))?;
            snap.resources.insert((node, resource), state);
        }
        snap.applied = self.applied(&txn.open_table(CONFIG).map_err(|e| self.backend(e))?)?;
        Ok(snap)
    }

    /// The applied package set in `table`, if any.
    fn applied(
        &self,
        table: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> Result<Option<Versioned<AppliedPackages>>, StoreError> {
        table
            .get(APPLIED_KEY)
            .map_err(|e| self.backend(e))?
            .map(|g| {
                let stored: Stored<AppliedPackages> = self.decode(APPLIED_KEY, g.value())?;
                Ok(Versioned {
                    value: stored.value,
                    mod_revision: stored.mod_revision,
                })
            })
            .transpose()
    }
}

fn resource_key(node: &str, resource: &ResourceName) -> String {
    format!("{node}\0{resource}")
}

fn split_resource_key(key: &str) -> Option<(String, ResourceName)> {
    let (node, resource) = key.split_once('\0')?;
    Some((node.to_owned(), ResourceName::new(resource).ok()?))
}

fn parse_state(s: &str) -> Option<ResourceState> {
    ResourceState::parse(s)
}

impl ClusterStore for EmbeddedStore {
    fn snapshot(&self) -> StoreFuture<'_, Snapshot> {
        self.blocking(|inner| inner.snapshot())
    }

    fn package(&self, name: String) -> StoreFuture<'_, Option<Versioned<PackageRecord>>> {
        self.blocking(move |inner| inner.package(&name))
    }

    fn put_node(&self, node: NodeRecord) -> StoreFuture<'_, Revision> {
        self.blocking(move |inner| {
            inner
                .write(|inner, txn, revision, changes| {
                    let mut table = txn.open_table(NODES).map_err(|e| inner.backend(e))?;
                    let stored = Stored {
                        mod_revision: revision,
                        value: node,
                    };
                    let bytes = inner.encode(&stored.value.name, &stored)?;
                    table
                        .insert(stored.value.name.as_str(), bytes.as_slice())
                        .map_err(|e| inner.backend(e))?;
                    changes.push(Change::Node(Versioned {
                        value: stored.value,
                        mod_revision: revision,
                    }));
                    Ok(())
                })
                .map(|((), revision)| revision)
        })
    }

    fn set_resource_states(
        &self,
        node: String,
        states: Vec<(ResourceName, ResourceState)>,
    ) -> StoreFuture<'_, Revision> {
        self.blocking(move |inner| {
            inner
                .write(|inner, txn, _revision, changes| {
                    let mut table = txn.open_table(RESOURCES).map_err(|e| inner.backend(e))?;
                    for (resource, state) in states {
                        let key = resource_key(&node, &resource);
                        let old = table
                            .get(key.as_str())
                            .map_err(|e| inner.backend(e))?
                            .and_then(|g| parse_state(g.value()));
                        if old == Some(state) {
                            continue;
                        }
                        table
                            .insert(key.as_str(), state.as_str())
                            .map_err(|e| inner.backend(e))?;
                        changes.push(Change::Resource {
                            node: node.clone(),
                            resource,
                            state,
                        });
                    }
                    Ok(())
                })
                .map(|((), revision)| revision)
        })
    }

    fn update_package(
        &self,
        name: String,
        expected: Revision,
        update: PackageUpdate,
    ) -> StoreFuture<'_, Versioned<PackageRecord>> {
        self.blocking(move |inner| {
            inner
                .write(|inner, txn, revision, changes| {
                    let mut packages = txn.open_table(PACKAGES).map_err(|e| inner.backend(e))?;
                    let current: Option<Stored<PackageRecord>> = packages
                        .get(name.as_str())
                        .map_err(|e| inner.backend(e))?
                        .map(|g| inner.decode(&name, g.value()))
                        .transpose()?;
                    let actual = current.as_ref().map_or(0, |c| c.mod_revision);
                    if actual != expected {
                        return Err(StoreError::Conflict {
                            package: name.clone(),
                            expected,
                            actual,
                        });
                    }
                    let mut fences = txn.open_table(FENCES).map_err(|e| inner.backend(e))?;
                    let mut fence = fences
                        .get(name.as_str())
                        .map_err(|e| inner.backend(e))?
                        .map_or(0, |g| g.value());
                    let old_owners: std::collections::BTreeSet<&String> = current
                        .as_ref()
                        .map(|c| c.value.owners.iter().collect())
                        .unwrap_or_default();
                    let new_owners: std::collections::BTreeSet<&String> =
                        update.owners.iter().collect();
                    if old_owners != new_owners {
                        fence += 1;
                        fences
                            .insert(name.as_str(), fence)
                            .map_err(|e| inner.backend(e))?;
                    }
                    let record = PackageRecord {
                        name: name.clone(),
                        state: update.state,
                        owners: update.owners,
                        fence_token: FenceToken(fence),
                        switching: update.switching,
                        disabled_nodes: update.disabled_nodes,
                        failed_on: update.failed_on,
                        reason: update.reason,
                        updated_ms: now_ms(),
                        admin: update.admin,
                        left: update.left,
                    };
                    let stored = Stored {
                        mod_revision: revision,
                        value: record,
                    };
                    let bytes = inner.encode(&name, &stored)?;
                    packages
                        .insert(name.as_str(), bytes.as_slice())
                        .map_err(|e| inner.backend(e))?;
                    let versioned = Versioned {
                        value: stored.value,
                        mod_revision: revision,
                    };
                    changes.push(Change::Package(versioned.clone()));
                    Ok(versioned)
                })
                .map(|(record, _)| record)
        })
    }

    fn delete_package(&self, name: String, expected: Revision) -> StoreFuture<'_, Revision> {
        self.blocking(move |inner| {
            inner
                .write(|inner, txn, _revision, changes| {
                    let mut packages = txn.open_table(PACKAGES).map_err(|e| inner.backend(e))?;
                    let actual = packages
                        .get(name.as_str())
                        .map_err(|e| inner.backend(e))?
                        .map(|g| inner.decode::<Stored<PackageRecord>>(&name, g.value()))
                        .transpose()?
                        .map_or(0, |c| c.mod_revision);
                    if actual == 0 || actual != expected {
                        return Err(StoreError::Conflict {
                            package: name.clone(),
                            expected,
                            actual,
                        });
                    }
                    packages
                        .remove(name.as_str())
                        .map_err(|e| inner.backend(e))?;
                    changes.push(Change::PackageDeleted { name: name.clone() });
                    Ok(())
                })
                .map(|((), revision)| revision)
        })
    }

    fn put_applied(
        &self,
        expected: Revision,
        set: AppliedPackages,
    ) -> StoreFuture<'_, Versioned<AppliedPackages>> {
        self.blocking(move |inner| {
            inner
                .write(|inner, txn, revision, changes| {
                    let mut table = txn.open_table(CONFIG).map_err(|e| inner.backend(e))?;
                    let actual = inner.applied(&table)?.map_or(0, |a| a.mod_revision);
                    if actual != expected {
                        return Err(StoreError::Conflict {
                            package: APPLIED_KEY.to_owned(),
                            expected,
                            actual,
                        });
                    }
                    let stored = Stored {
                        mod_revision: revision,
                        value: set,
                    };
                    let bytes = inner.encode(APPLIED_KEY, &stored)?;
                    table
                        .insert(APPLIED_KEY, bytes.as_slice())
                        .map_err(|e| inner.backend(e))?;
                    let versioned = Versioned {
                        value: stored.value,
                        mod_revision: revision,
                    };
                    changes.push(Change::Applied(versioned.clone()));
                    Ok(versioned)
                })
                .map(|(set, _)| set)
        })
    }

    fn watch(&self) -> StoreFuture<'_, Watch> {
        self.blocking(|inner| {
            // Under the writers' lock: no commit can fall between the
            // snapshot and the registration.
            let mut watchers = inner.lock();
            let snapshot = inner.snapshot()?;
            let (tx, events) = mpsc::unbounded_channel();
            watchers.push(tx);
            Ok(Watch { snapshot, events })
        })
    }
}
