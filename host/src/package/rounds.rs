//! The manager's store work, carried out on tasks of their own so that the
//! daemon's main loop never waits for the store: a step hands a *round* of
//! writes to a task and goes back to its queue; the round's results come
//! back as one event ([`Done`]), from which the manager updates its view
//! and hands on what follows (a run once its permit is granted).
//!
//! Two kinds of round, one at a time:
//!
//! * [`Bookkeeping`] — what this node learnt about its own copies: run
//!   permits to give back, outcomes to record (a run or halt done, a
//!   package re-adopted, the guard's halt), resource states for the other
//!   nodes, and permits still being waited for. The coordinator decides
//!   only once these are stored, from a view that includes them.
//! * [`Decisions`] — the coordinator's record writes, all at once, then
//!   the run permits of the failover packages among them, all at once.
//!
//! Every store call has the backend's deadline (shorter than the guard's
//! margin); a round that meets a hung store only delays the next decision,
//! never a heartbeat, a socket answer or a halt dispatched here.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::task::JoinSet;

use super::coordinator::{AfterWrite, Prepared};
use super::membership::{Pending, Permit, Permits};
use crate::criteria::ResourceState;
use crate::store::{ClusterStore, PackageRecord, PackageUpdate, StoreError, Versioned};

/// A change this node records about its own copy of a package, written
/// only while `holds` is true of the stored record (it still names this
/// node an owner): a decision taken on a view that was behind must not
/// land on the record of the node that took the package over.
pub struct OwnOutcome {
    pub package: String,
    pub holds: Box<dyn Fn(&PackageRecord) -> bool + Send + Sync>,
    pub change: Box<dyn Fn(&mut PackageUpdate) + Send + Sync>,
}

/// What this node learnt since its last round.
pub struct Bookkeeping {
    /// Permits given back first: nothing of these packages runs here.
    pub releases: Vec<(String, Pending<()>)>,
    /// Each with the record the view holds now (`None`: not in the view).
    pub outcomes: Vec<(OwnOutcome, Option<Versioned<PackageRecord>>)>,
    /// Resource states of this node the others have not seen.
    pub states: Option<(String, Vec<(vigil_sdk::ResourceName, ResourceState)>)>,
    /// Permits asked for again (the holder may have let go).
    pub claims: Vec<(String, Pending<Permit>)>,
}

/// The coordinator's writes, and the permits of the runs among them.
pub struct Decisions {
    pub writes: Vec<Prepared>,
    /// `None` on one node: nobody else could hold a permit.
    pub permits: Option<Permits>,
}

/// The answer to a permit claim; after a lost compare-and-swap (the record
/// moved on), the record as it is now.
#[derive(Debug)]
pub struct ClaimDone {
    pub package: String,
    pub outcome: Result<Permit, StoreError>,
    pub fresh: Option<Versioned<PackageRecord>>,
}

/// A round's results, handed back to the main loop.
#[derive(Debug)]
pub enum Done {
    Bookkeeping {
        /// Permits that could not be given back (the store was away): the
        /// node may keep its lease, and then the adoptive node would wait
        /// for them for ever.
        unreleased: Vec<String>,
        /// Records written or read: the view takes each.
        seen: Vec<Versioned<PackageRecord>>,
        /// Outcomes that could not be recorded, and why.
        unrecorded: Vec<(String, StoreError)>,
        /// The states sent, or why they could not be.
        published: Option<Result<Vec<(vigil_sdk::ResourceName, ResourceState)>, StoreError>>,
        claims: Vec<ClaimDone>,
    },
    Decisions {
        writes: Vec<Written>,
    },
}

/// A decision with its write's result and, for a failover run that was
/// recorded, its permit claim.
pub type Written = (
    Prepared,
    Result<Versioned<PackageRecord>, StoreError>,
    Option<ClaimDone>,
);

/// Carries `round` out on a task; `done` gets its results.
pub fn spawn_bookkeeping(
    store: Arc<dyn ClusterStore>,
    round: Bookkeeping,
    done: Arc<dyn Fn(Done) + Send + Sync>,
) {
    tokio::spawn(async move { done(bookkeeping(store, round).await) });
}

/// Carries `round` out on a task; `done` gets its results.
pub fn spawn_decisions(
    store: Arc<dyn ClusterStore>,
    round: Decisions,
    done: Arc<dyn Fn(Done) + Send + Sync>,
) {
    tokio::spawn(async move { done(decisions(store, round).await) });
}

/// Each step concurrently: a hundred packages halted or started together
/// cost a round trip, not a hundred. A package's later outcomes, and those
/// that lost their compare-and-swap, are written after, one by one and in
/// order, from fresh reads.
async fn bookkeeping(store: Arc<dyn ClusterStore>, round: Bookkeeping) -> Done {
    let Bookkeeping {
        releases,
        outcomes,
        states,
        claims,
    } = round;
    let mut pending = JoinSet::new();
    for (package, release) in releases {
        pending.spawn(async move { (package, release.await) });
    }
    let mut unreleased = Vec::new();
    while let Some(joined) = pending.join_next().await {
        if let Ok((package, Err(e))) = joined {
            tracing::warn!(%package, error = %e, "cannot release the run permit; retrying");
            unreleased.push(package);
        }
    }

    let mut seen = Vec::new();
    let mut unrecorded = Vec::new();
    let mut first: BTreeSet<String> = BTreeSet::new();
    let mut serial: Vec<usize> = Vec::new();
    let mut writes = JoinSet::new();
    for (i, (o, base)) in outcomes.iter().enumerate() {
        let Some(record) = base.as_ref().filter(|_| first.insert(o.package.clone())) else {
            serial.push(i);
            continue;
        };
        if !(o.holds)(&record.value) {
            tracing::info!(package = %o.package, owners = ?record.value.owners, "record moved on; not writing over it");
            continue;
        }
        let mut update = PackageUpdate::from(&record.value);
        (o.change)(&mut update);
        let (store, name, revision) = (Arc::clone(&store), o.package.clone(), record.mod_revision);
        writes.spawn(async move { (i, store.update_package(name, revision, update).await) });
    }
    while let Some(joined) = writes.join_next().await {
        match joined {
            Ok((_, Ok(written))) => seen.push(written),
            Ok((i, Err(StoreError::Conflict { .. }))) => serial.push(i),
            Ok((i, Err(e))) => unrecorded.push((outcomes[i].0.package.clone(), e)),
            Err(e) => tracing::warn!(error = %e, "a store write task failed"),
        }
    }
    serial.sort_unstable();
    for i in serial {
        let o = &outcomes[i].0;
        match write_if(&*store, &o.package, &*o.holds, &*o.change).await {
            Ok(Some(written)) => seen.push(written),
            Ok(None) => {}
            Err(e) => unrecorded.push((o.package.clone(), e)),
        }
    }

    let published = match states {
        Some((node, states)) => Some(
            store
                .set_resource_states(node, states.clone())
                .await
                .map(|_| states),
        ),
        None => None,
    };

    let mut asks = JoinSet::new();
    for (package, claim) in claims {
        let store = Arc::clone(&store);
        asks.spawn(async move { claimed(&*store, package, claim.await).await });
    }
    let mut claims = Vec::new();
    while let Some(joined) = asks.join_next().await {
        if let Ok(done) = joined {
            claims.push(done);
        }
    }
    Done::Bookkeeping {
        unreleased,
        seen,
        unrecorded,
        published,
        claims,
    }
}

/// All writes at once, then the permits of the failover runs recorded.
async fn decisions(store: Arc<dyn ClusterStore>, round: Decisions) -> Done {
    let Decisions { writes, permits } = round;
    let mut pending = JoinSet::new();
    for (i, p) in writes.iter().enumerate() {
        let store = Arc::clone(&store);
        let (package, revision, update) = (p.package.clone(), p.revision, p.update.clone());
        pending.spawn(async move { (i, store.update_package(package, revision, update).await) });
    }
    let mut results: Vec<Option<Result<Versioned<PackageRecord>, StoreError>>> =
        (0..writes.len()).map(|_| None).collect();
    while let Some(joined) = pending.join_next().await {
        match joined {
            Ok((i, result)) => results[i] = Some(result),
            Err(e) => tracing::warn!(error = %e, "a store write task failed"),
        }
    }
    let mut asks = JoinSet::new();
    if let Some(permits) = &permits {
        for (i, (p, result)) in writes.iter().zip(&results).enumerate() {
            if let (AfterWrite::Run { failover: true, .. }, Some(Ok(written))) = (&p.then, result) {
                let (store, package) = (Arc::clone(&store), p.package.clone());
                let claim = permits.claim(&package, written.mod_revision);
                asks.spawn(async move { (i, claimed(&*store, package, claim.await).await) });
            }
        }
    }
    let mut claims: Vec<Option<ClaimDone>> = (0..writes.len()).map(|_| None).collect();
    while let Some(joined) = asks.join_next().await {
        if let Ok((i, done)) = joined {
            claims[i] = Some(done);
        }
    }
    Done::Decisions {
        writes: writes
            .into_iter()
            .zip(results)
            .zip(claims)
            .map(|((p, result), claim)| {
                let result = result.unwrap_or_else(|| {
                    Err(StoreError::Backend {
                        path: "store".into(),
                        message: format!("package {}: the write task failed", p.package),
                    })
                });
                (p, result, claim)
            })
            .collect(),
    }
}

/// A claim's answer; after a lost compare-and-swap, with the record now.
async fn claimed(
    store: &dyn ClusterStore,
    package: String,
    outcome: Result<Permit, StoreError>,
) -> ClaimDone {
    let fresh = match &outcome {
        Err(StoreError::Conflict { .. }) => fresh(store, &package).await.ok(),
        _ => None,
    };
    ClaimDone {
        package,
        outcome,
        fresh,
    }
}

/// The package's record read from the store itself (a write just lost a
/// compare-and-swap: the view is behind).
pub async fn fresh(
    store: &dyn ClusterStore,
    package: &str,
) -> Result<Versioned<PackageRecord>, StoreError> {
    store
        .package(package.to_owned())
        .await?
        .ok_or_else(|| StoreError::Backend {
            path: "store".into(),
            message: format!("package {package} has no record"),
        })
}

/// Writes `change` when `holds` is true of the record it would replace,
/// checked again on every attempt against what is really stored. `None`:
/// the record moved on, nothing written.
pub async fn write_if(
    store: &dyn ClusterStore,
    package: &str,
    holds: &(dyn Fn(&PackageRecord) -> bool + Send + Sync),
    change: &(dyn Fn(&mut PackageUpdate) + Send + Sync),
) -> Result<Option<Versioned<PackageRecord>>, StoreError> {
    for _ in 0..5 {
        let record = fresh(store, package).await?;
        if !holds(&record.value) {
            tracing::info!(%package, state = record.value.state.as_str(), owners = ?record.value.owners, "record moved on; not writing over it");
            return Ok(None);
        }
        let mut update = PackageUpdate::from(&record.value);
        change(&mut update);
        match store
            .update_package(package.to_owned(), record.mod_revision, update)
            .await
        {
            Ok(written) => return Ok(Some(written)),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Backend {
        path: "store".into(),
        message: format!("package {package}: too many conflicts"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PackageState;
    use crate::store::embedded::EmbeddedStore;

    /// A store with `web` owned by `owner` (Up), and its record.
    async fn store_with_web(owner: &str) -> (Arc<dyn ClusterStore>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let created = store
            .update_package("web".into(), 0, PackageUpdate::down("configured"))
            .await
            .unwrap();
        let mut up = PackageUpdate::from(&created.value);
        up.state = PackageState::Up;
        up.owners = vec![owner.to_owned()];
        store
            .update_package("web".into(), created.mod_revision, up)
            .await
            .unwrap();
        (store, dir)
    }

    fn halted_on(node: &'static str) -> OwnOutcome {
        OwnOutcome {
            package: "web".into(),
            holds: Box::new(move |r| r.owners.iter().any(|o| o == node)),
            change: Box::new(move |u| {
                u.owners.retain(|o| o != node);
                u.state = PackageState::Down;
                u.reason = format!("halted on {node}");
            }),
        }
    }

    fn nothing_else() -> Bookkeeping {
        Bookkeeping {
            releases: Vec::new(),
            outcomes: Vec::new(),
            states: None,
            claims: Vec::new(),
        }
    }

    #[tokio::test]
    async fn an_outcome_decided_on_a_stale_view_is_written_again_from_a_fresh_read() {
        let (store, _dir) = store_with_web("node1").await;
        let stale = fresh(&*store, "web").await.unwrap();
        // The record moves on (node1 touched it) after the view was taken.
        let mut touched = PackageUpdate::from(&stale.value);
        touched.reason = "touched".into();
        store
            .update_package("web".into(), stale.mod_revision, touched)
            .await
            .unwrap();
        let round = Bookkeeping {
            outcomes: vec![(halted_on("node1"), Some(stale))],
            ..nothing_else()
        };
        let Done::Bookkeeping {
            seen, unrecorded, ..
        } = bookkeeping(Arc::clone(&store), round).await
        else {
            panic!("a bookkeeping round");
        };
        assert!(unrecorded.is_empty(), "{unrecorded:?}");
        assert_eq!(seen.len(), 1);
        let now = fresh(&*store, "web").await.unwrap();
        assert_eq!(now.value.state, PackageState::Down);
        assert_eq!(now.value.reason, "halted on node1");
        assert_eq!(seen[0], now);
    }

    #[tokio::test]
    async fn an_outcome_never_lands_on_a_record_that_names_another_owner() {
        let (store, _dir) = store_with_web("node2").await;
        let view = fresh(&*store, "web").await.unwrap();
        let round = Bookkeeping {
            outcomes: vec![(halted_on("node1"), Some(view.clone()))],
            ..nothing_else()
        };
        let Done::Bookkeeping {
            seen, unrecorded, ..
        } = bookkeeping(Arc::clone(&store), round).await
        else {
            panic!("a bookkeeping round");
        };
        assert!(seen.is_empty() && unrecorded.is_empty());
        assert_eq!(fresh(&*store, "web").await.unwrap(), view);
    }

    #[tokio::test]
    async fn a_failed_release_comes_back_to_be_retried() {
        let (store, _dir) = store_with_web("node1").await;
        let failing: Pending<()> = Box::pin(async {
            Err(StoreError::Backend {
                path: "store".into(),
                message: "unreachable".into(),
            })
        });
        let round = Bookkeeping {
            releases: vec![
                ("web".into(), failing),
                ("db".into(), Box::pin(async { Ok(()) })),
            ],
            ..nothing_else()
        };
        let Done::Bookkeeping { unreleased, .. } = bookkeeping(store, round).await else {
            panic!("a bookkeeping round");
        };
        assert_eq!(unreleased, vec!["web".to_owned()]);
    }

    #[tokio::test]
    async fn decisions_are_written_together_and_a_stale_one_reports_its_conflict() {
        let (store, _dir) = store_with_web("node1").await;
        let web = fresh(&*store, "web").await.unwrap();
        let db = store
            .update_package("db".into(), 0, PackageUpdate::down("configured"))
            .await
            .unwrap();
        let mut halting = PackageUpdate::from(&web.value);
        halting.state = PackageState::Halting;
        let mut starting = PackageUpdate::from(&db.value);
        starting.state = PackageState::Starting;
        starting.owners = vec!["node1".into()];
        let round = Decisions {
            writes: vec![
                Prepared {
                    package: "web".into(),
                    revision: web.mod_revision,
                    update: halting,
                    then: AfterWrite::Nothing,
                },
                Prepared {
                    package: "db".into(),
                    // Stale: db has moved on since.
                    revision: db.mod_revision - 1,
                    update: starting,
                    then: AfterWrite::Run {
                        reason: crate::package::lifecycle::Reason::Startup,
                        failover: true,
                    },
                },
            ],
            permits: None,
        };
        let Done::Decisions { writes } = decisions(Arc::clone(&store), round).await else {
            panic!("a decisions round");
        };
        assert_eq!(writes.len(), 2);
        assert_eq!(writes[0].0.package, "web");
        assert_eq!(
            writes[0].1.as_ref().unwrap().value.state,
            PackageState::Halting
        );
        assert_eq!(writes[1].0.package, "db");
        assert!(
            matches!(writes[1].1, Err(StoreError::Conflict { .. })),
            "{:?}",
            writes[1].1
        );
        assert!(
            writes[1].2.is_none(),
            "no permit asked for an unrecorded run"
        );
    }
}
