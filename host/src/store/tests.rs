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
