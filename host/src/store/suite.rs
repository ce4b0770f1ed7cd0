//! The backend-agnostic test suite of [`ClusterStore`]: every backend runs
//! these functions against a fresh, empty store of its own (the embedded
//! store in `tests.rs`, etcd in `etcd_tests.rs`), so that both mean the same
//! thing. Backend-specific behaviour (redb's file lock, etcd leases) is
//! tested next to each backend, not here.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::*;

pub(super) fn res(name: &str) -> ResourceName {
    ResourceName::new(name).unwrap()
}

pub(super) fn owned_by(node: &str, state: PackageState) -> PackageUpdate {
    PackageUpdate {
        state,
        owners: vec![node.to_owned()],
        ..PackageUpdate::down("test")
    }
}

/// One package's record read alone is the snapshot's, at its revision;
/// an absent one is `None`.
pub(super) async fn one_package_read_is_what_the_snapshot_holds(store: &dyn ClusterStore) {
    assert_eq!(store.package("web".into()).await.unwrap(), None);
    let created = store
        .update_package("web".into(), 0, PackageUpdate::down("configured"))
        .await
        .unwrap();
    let owned = store
        .update_package(
            "web".into(),
            created.mod_revision,
            owned_by("node1", PackageState::Up),
        )
        .await
        .unwrap();
    store
        .update_package("db".into(), 0, PackageUpdate::down("configured"))
        .await
        .unwrap();
    let read = store.package("web".into()).await.unwrap();
    assert_eq!(read.as_ref(), Some(&owned));
    assert_eq!(
        read.as_ref(),
        store.snapshot().await.unwrap().packages.get("web")
    );
}

/// Compare-and-swap and fence tokens: a stale writer loses, tokens bump
/// exactly when the owner set changes and survive deletion.
pub(super) async fn ownership_change_bumps_the_fence_token_strictly_and_stale_cas_fails(
    store: &dyn ClusterStore,
) {
    let created = store
        .update_package("ascs".into(), 0, PackageUpdate::down("configured"))
        .await
        .unwrap();
    assert_eq!(created.value.fence_token, FenceToken(0));
    assert!(created.mod_revision > 0);

    // Creating it again from "absent" is stale.
    let err = store
        .update_package("ascs".into(), 0, PackageUpdate::down("again"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { expected: 0, actual, .. } if actual == created.mod_revision),
        "{err}"
    );

    let starting = store
        .update_package(
            "ascs".into(),
            created.mod_revision,
            owned_by("node1", PackageState::Starting),
        )
        .await
        .unwrap();
    assert_eq!(starting.value.fence_token, FenceToken(1));
    // Same owners, new state: same ownership, same token.
    let up = store
        .update_package(
            "ascs".into(),
            starting.mod_revision,
            owned_by("node1", PackageState::Up),
        )
        .await
        .unwrap();
    assert_eq!(up.value.fence_token, FenceToken(1));
    assert!(up.mod_revision > starting.mod_revision);

    // Two writers raced from the same revision: only one wins.
    let moved = store
        .update_package(
            "ascs".into(),
            up.mod_revision,
            owned_by("node2", PackageState::Starting),
        )
        .await
        .unwrap();
    assert_eq!(moved.value.fence_token, FenceToken(2));
    let stale = store
        .update_package(
            "ascs".into(),
            up.mod_revision,
            owned_by("node3", PackageState::Starting),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&stale, StoreError::Conflict { package, expected, actual }
            if package == "ascs" && *expected == up.mod_revision && *actual == moved.mod_revision),
        "{stale}"
    );
    assert_eq!(
        store.snapshot().await.unwrap().packages["ascs"]
            .value
            .owners,
        vec!["node2".to_owned()]
    );

    // Deletion keeps the token: a re-created package continues above it.
    let err = store
        .delete_package("ascs".into(), up.mod_revision)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    store
        .delete_package("ascs".into(), moved.mod_revision)
        .await
        .unwrap();
    let again = store
        .update_package("ascs".into(), 0, owned_by("node3", PackageState::Starting))
        .await
        .unwrap();
    assert_eq!(again.value.fence_token, FenceToken(3));
}

/// A watch's snapshot plus its events equal the store, in commit order.
pub(super) async fn watch_sees_every_change_in_order_after_its_snapshot(store: &dyn ClusterStore) {
    store
        .put_node(NodeRecord {
            name: "node1".into(),
            state: NodeState::Up,
            updated_ms: 1,
            maintenance: false,
        })
        .await
        .unwrap();
    let mut watch = store.watch().await.unwrap();
    assert_eq!(watch.snapshot.nodes.len(), 1);
    let start = watch.snapshot.revision;

    let eth0 = res("/net/interfaces/eth0/status");
    let created = store
        .update_package("ascs".into(), 0, PackageUpdate::down("configured"))
        .await
        .unwrap();
    store
        .set_resource_states("node1".into(), vec![(eth0.clone(), ResourceState::Up)])
        .await
        .unwrap();
    // Unchanged states make no event.
    store
        .set_resource_states("node1".into(), vec![(eth0.clone(), ResourceState::Up)])
        .await
        .unwrap();
    store
        .update_package(
            "ascs".into(),
            created.mod_revision,
            owned_by("node1", PackageState::Starting),
        )
        .await
        .unwrap();
    store
        .put_node(NodeRecord {
            name: "node1".into(),
            state: NodeState::Down,
            updated_ms: 2,
            maintenance: false,
        })
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut snapshot = watch.snapshot.clone();
    while seen.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.events.recv())
            .await
            .expect("an event within 10 s")
            .expect("store still open");
        snapshot.apply(&event);
        seen.push(event);
    }
    let revisions: Vec<Revision> = seen.iter().map(|e| e.revision).collect();
    assert_eq!(
        revisions,
        vec![start + 1, start + 2, start + 4, start + 5],
        "{seen:#?}"
    );
    assert!(matches!(&seen[0].change, Change::Package(p) if p.value.state == PackageState::Down));
    assert!(
        matches!(&seen[1].change, Change::Resource { node, resource, state: ResourceState::Up } if node == "node1" && *resource == eth0)
    );
    assert!(matches!(&seen[2].change, Change::Package(p) if p.value.fence_token == FenceToken(1)));
    assert!(matches!(&seen[3].change, Change::Node(n) if n.value.state == NodeState::Down));
    assert!(watch.events.try_recv().is_err());
    // Snapshot + events = the store now.
    let now = store.snapshot().await.unwrap();
    // `apply` leaves the revision at the last event's; the write that
    // changed nothing bumped it without one.
    assert_eq!(now.revision, snapshot.revision);
    assert_eq!(snapshot, now);
}

/// Two writers moving one package with CAS retries: every move gets its own
/// token and a watcher sees them all, in order.
pub(super) async fn concurrent_writers_never_lose_an_update_and_watchers_miss_nothing(
    store: Arc<dyn ClusterStore>,
) {
    store
        .update_package("pkg".into(), 0, PackageUpdate::down("configured"))
        .await
        .unwrap();
    let mut watch = store.watch().await.unwrap();

    // Two tasks take turns moving the package to their node with CAS
    // retries; every successful move must get its own fence token.
    const MOVES: usize = 25;
    let mut tasks = Vec::new();
    for node in ["node1", "node2"] {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut tokens = Vec::new();
            while tokens.len() < MOVES {
                let snap = store.snapshot().await.unwrap();
                let current = &snap.packages["pkg"];
                if current.value.owners == [node] {
                    tokio::task::yield_now().await;
                    continue;
                }
                match store
                    .update_package(
                        "pkg".into(),
                        current.mod_revision,
                        owned_by(node, PackageState::Up),
                    )
                    .await
                {
                    Ok(record) => tokens.push(record.value.fence_token),
                    Err(StoreError::Conflict { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            tokens
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let unique: BTreeSet<FenceToken> = all.iter().copied().collect();
    assert_eq!(unique.len(), 2 * MOVES, "a token was handed out twice");
    assert_eq!(
        *unique.last().unwrap(),
        FenceToken(2 * MOVES as u64),
        "tokens are dense and strictly increasing"
    );

    let mut last_token = FenceToken(0);
    let mut last_revision = watch.snapshot.revision;
    for _ in 0..2 * MOVES {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.events.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(event.revision > last_revision);
        last_revision = event.revision;
        let Change::Package(p) = event.change else {
            panic!("unexpected {event:?}")
        };
        assert_eq!(p.value.fence_token.0, last_token.0 + 1);
        last_token = p.value.fence_token;
    }
}

/// Records written through one handle read back identically through a new
/// one (`open` is called twice; the first handle is dropped in between),
/// and revisions and tokens go on from where they were.
pub(super) async fn reopening_gives_back_the_same_state<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn ClusterStore>>,
{
    let before = {
        let store = open().await;
        store
            .put_node(NodeRecord {
                name: "node1".into(),
                state: NodeState::Up,
                updated_ms: 7,
                maintenance: false,
            })
            .await
            .unwrap();
        store
            .put_node(NodeRecord {
                name: "node2".into(),
                state: NodeState::Halted,
                updated_ms: 8,
                maintenance: false,
            })
            .await
            .unwrap();
        let created = store
            .update_package("db".into(), 0, PackageUpdate::down("configured"))
            .await
            .unwrap();
        let mut update = owned_by("node1", PackageState::Up);
        update.failed_on = BTreeSet::from(["node2".to_owned()]);
        update.disabled_nodes = BTreeSet::from(["node3".to_owned()]);
        update.switching = false;
        store
            .update_package("db".into(), created.mod_revision, update)
            .await
            .unwrap();
        store
            .set_resource_states(
                "node1".into(),
                vec![
                    (res("/net/interfaces/eth0/status"), ResourceState::Up),
                    (res("/fs/data/used_percent"), ResourceState::Down),
                ],
            )
            .await
            .unwrap();
        store.snapshot().await.unwrap()
        // The store is dropped here (for the embedded store, closing the
        // database).
    };
    assert_eq!(before.nodes.len(), 2);
    assert_eq!(before.resources.len(), 2);

    let store = open().await;
    let after = store.snapshot().await.unwrap();
    assert_eq!(after, before);
    let db = &after.packages["db"].value;
    assert_eq!(db.fence_token, FenceToken(1));
    assert!(!db.switching);
    // The revision goes on from where it was, and so does the token.
    let next = store
        .update_package(
            "db".into(),
            after.packages["db"].mod_revision,
            owned_by("node2", PackageState::Starting),
        )
        .await
        .unwrap();
    assert_eq!(next.mod_revision, after.revision + 1);
    assert_eq!(next.value.fence_token, FenceToken(2));
}

/// The applied package set: created only from "none yet", replaced only by
/// a writer that saw the current one, in the snapshot, and seen by a watch.
pub(super) async fn the_applied_package_set_is_compare_and_swapped_and_watched(
    store: &dyn ClusterStore,
) {
    let set = |revision: u64, text: &str| {
        let files: BTreeMap<String, String> = [("web.toml".to_owned(), text.to_owned())]
            .into_iter()
            .collect();
        AppliedPackages {
            revision,
            digest: AppliedPackages::digest_of(&files),
            files,
            applied_by: "test".into(),
            applied_ms: 1,
        }
    };
    let mut watch = store.watch().await.unwrap();
    assert_eq!(watch.snapshot.applied, None);
    let first = store
        .put_applied(0, set(1, "name = \"web\""))
        .await
        .unwrap();
    assert!(first.mod_revision > 0);
    let err = store.put_applied(0, set(1, "stale")).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { expected: 0, actual, .. } if actual == first.mod_revision),
        "{err}"
    );
    let second = store
        .put_applied(first.mod_revision, set(2, "name = \"web\"\n"))
        .await
        .unwrap();
    assert_ne!(first.value.digest, second.value.digest);
    assert_eq!(
        store.snapshot().await.unwrap().applied,
        Some(second.clone())
    );
    for expected in [&first, &second] {
        let event = tokio::time::timeout(Duration::from_secs(5), watch.events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.change, Change::Applied(expected.clone()));
        watch.snapshot.apply(&event);
    }
    assert_eq!(watch.snapshot.applied, Some(second));
}
