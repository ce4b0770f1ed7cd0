//! Embedded-store tests: the shared suite, plus what only redb has.

use std::sync::Arc;

use super::embedded::EmbeddedStore;
use super::suite;
use super::*;

#[tokio::test]
async fn ownership_change_bumps_the_fence_token_strictly_and_stale_cas_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    suite::ownership_change_bumps_the_fence_token_strictly_and_stale_cas_fails(&store).await;
}

#[tokio::test]
async fn one_package_read_is_what_the_snapshot_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    suite::one_package_read_is_what_the_snapshot_holds(&store).await;
}

#[tokio::test]
async fn reopening_gives_back_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    suite::reopening_gives_back_the_same_state(|| {
        let path = path.clone();
        async move { Arc::new(EmbeddedStore::open(&path).unwrap()) as Arc<dyn ClusterStore> }
    })
    .await;
}

#[tokio::test]
async fn a_second_open_of_the_same_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _store = EmbeddedStore::open(dir.path()).unwrap();
    let err = EmbeddedStore::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("cluster.redb"), "{err}");
}

#[tokio::test]
async fn watch_sees_every_change_in_order_after_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    suite::watch_sees_every_change_in_order_after_its_snapshot(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_never_lose_an_update_and_watchers_miss_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    suite::concurrent_writers_never_lose_an_update_and_watchers_miss_nothing(store).await;
}

#[tokio::test]
async fn a_view_that_took_its_own_write_is_not_set_back_by_older_watch_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let mut watch = store.watch().await.unwrap();
    let mut view = watch.snapshot.clone();
    let first = store
        .update_package("web".into(), 0, PackageUpdate::down("configured"))
        .await
        .unwrap();
    let mut up = PackageUpdate::from(&first.value);
    up.state = PackageState::Up;
    up.owners = vec!["node1".into()];
    let second = store
        .update_package("web".into(), first.mod_revision, up)
        .await
        .unwrap();
    // The writer applies its own result before the watch delivers
    // anything; then both events arrive, the older first.
    view.seen(second.clone());
    for _ in 0..2 {
        let event = watch.events.recv().await.unwrap();
        view.apply(&event);
        assert_eq!(view.packages["web"], second, "after {event:?}");
    }
    // A stale read taken before the write does not set it back either.
    view.seen(first);
    assert_eq!(view.packages["web"], second);
    assert_eq!(view.packages, store.snapshot().await.unwrap().packages);
}

#[tokio::test]
async fn the_applied_package_set_is_compare_and_swapped_and_watched() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    suite::the_applied_package_set_is_compare_and_swapped_and_watched(&store).await;
}
