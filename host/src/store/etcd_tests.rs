//! etcd-store tests against a real etcd: each test starts its own
//! single-member etcd on free loopback ports with a temporary data
//! directory, and a Drop guard kills it. They fail loudly when no `etcd`
//! binary is found (set `VIGIL_ETCD` to pick one), unless
//! `VIGIL_SKIP_PRIVILEGED=1`.
//!
//! Timings are printed, never asserted beyond generous "eventually" bounds.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::etcd::{ClaimOutcome, EtcdStore};
use super::suite::{self, owned_by};
use super::*;

/// Generous bound for anything that should happen "about a TTL" later.
const EVENTUALLY: Duration = Duration::from_secs(20);
const TTL: Duration = Duration::from_secs(2);

/// A running etcd, killed (and its data directory removed) on drop.
struct EtcdServer {
    child: Option<Child>,
    binary: PathBuf,
    name: String,
    endpoint: String,
    peer_url: String,
    dir: tempfile::TempDir,
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn etcd_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("VIGIL_ETCD") {
        return Some(PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
}

fn free_ports() -> (u16, u16) {
    // Both listeners are open at once, so the two ports differ; etcd binds
    // them right after they are closed (a rare collision is retried).
    let a = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    (
        a.local_addr().expect("bound").port(),
        b.local_addr().expect("bound").port(),
    )
}

impl EtcdServer {
    /// Starts etcd, or returns `None` when it is missing and privileged
    /// tests are skipped.
    async fn start() -> Option<Self> {
        let Some(binary) = etcd_binary() else {
            if std::env::var("VIGIL_SKIP_PRIVILEGED").as_deref() == Ok("1") {
                eprintln!("skipped: no etcd binary (VIGIL_SKIP_PRIVILEGED=1)");
                return None;
            }
            panic!(
                "no etcd binary on PATH (install etcd-server, or set VIGIL_ETCD); \
                 set VIGIL_SKIP_PRIVILEGED=1 to skip"
            );
        };
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let mut last_log = String::new();
        for _ in 0..3 {
            let name = format!(
                "vigil-test-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            );
            let dir = tempfile::Builder::new()
                .prefix(&name)
                .tempdir()
                .expect("temp dir");
            let (client, peer) = free_ports();
            let mut server = EtcdServer {
                child: None,
                binary: binary.clone(),
                name,
                endpoint: format!("http://127.0.0.1:{client}"),
                peer_url: format!("http://127.0.0.1:{peer}"),
                dir,
            };
            if server.spawn_and_wait().await {
                return Some(server);
            }
            last_log = server.log();
        }
        panic!("etcd did not come up; its log:\n{last_log}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Runs etcd on this server's ports and data directory (a restart keeps
    /// both) and waits until it answers; `false` if it exited instead.
    async fn spawn_and_wait(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log file");
        let child = Command::new(&self.binary)
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&self.endpoint)
            .arg("--advertise-client-urls")
            .arg(&self.endpoint)
            .arg("--listen-peer-urls")
            .arg(&self.peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&self.peer_url)
            .arg("--initial-cluster")
            .arg(format!("{}={}", self.name, self.peer_url))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(&self.name)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        let child = self.child.insert(child);
        let deadline = Instant::now() + EVENTUALLY;
        while Instant::now() < deadline {
            if child.try_wait().expect("etcd status").is_some() {
                return false;
            }
            if EtcdStore::connect(
                std::slice::from_ref(&self.endpoint),
                "probe",
                Duration::from_millis(500),
            )
            .await
            .is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn_and_wait().await,
            "etcd did not come back; its log:\n{}",
            self.log()
        );
    }

    async fn store(&self, cluster: &str) -> EtcdStore {
        EtcdStore::connect(
            std::slice::from_ref(&self.endpoint),
            cluster,
            Duration::from_secs(5),
        )
        .await
        .expect("connect to the test etcd")
    }
}

macro_rules! etcd_or_skip {
    () => {
        match EtcdServer::start().await {
            Some(server) => server,
            None => return,
        }
    };
}

fn node(name: &str, state: NodeState) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        state,
        updated_ms: now_ms(),
        maintenance: false,
    }
}

async fn next_event(watch: &mut Watch) -> StoreEvent {
    tokio::time::timeout(EVENTUALLY, watch.events.recv())
        .await
        .expect("a store event in time")
        .expect("watch still open")
}

// ---- the shared suite ------------------------------------------------------

#[tokio::test]
async fn etcd_one_package_read_is_what_the_snapshot_holds() {
    let etcd = etcd_or_skip!();
    let store = etcd.store("one").await;
    suite::one_package_read_is_what_the_snapshot_holds(&store).await;
}

#[tokio::test]
async fn etcd_ownership_change_bumps_the_fence_token_strictly_and_stale_cas_fails() {
    let etcd = etcd_or_skip!();
    let store = etcd.store("suite").await;
    suite::ownership_change_bumps_the_fence_token_strictly_and_stale_cas_fails(&store).await;
}

#[tokio::test]
async fn etcd_the_applied_package_set_is_compare_and_swapped_and_watched() {
    let etcd = etcd_or_skip!();
    let store = etcd.store("suite").await;
    suite::the_applied_package_set_is_compare_and_swapped_and_watched(&store).await;
}

#[tokio::test]
async fn etcd_watch_sees_every_change_in_order_after_its_snapshot() {
    let etcd = etcd_or_skip!();
    let store = etcd.store("suite").await;
    suite::watch_sees_every_change_in_order_after_its_snapshot(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_concurrent_writers_never_lose_an_update_and_watchers_miss_nothing() {
    let etcd = etcd_or_skip!();
    let store: Arc<dyn ClusterStore> = Arc::new(etcd.store("suite").await);
    suite::concurrent_writers_never_lose_an_update_and_watchers_miss_nothing(store).await;
}

#[tokio::test]
async fn etcd_reopening_gives_back_the_same_state() {
    let etcd = etcd_or_skip!();
    let etcd = &etcd;
    suite::reopening_gives_back_the_same_state(|| async move {
        Arc::new(etcd.store("suite").await) as Arc<dyn ClusterStore>
    })
    .await;
}

// ---- etcd only ---------------------------------------------------------------

#[tokio::test]
async fn clusters_sharing_an_etcd_do_not_see_each_other() {
    let etcd = etcd_or_skip!();
    let a = etcd.store("alpha").await;
    let b = etcd.store("alphabet").await;
    a.put_node(node("node1", NodeState::Up)).await.unwrap();
    a.update_package("db".into(), 0, PackageUpdate::down("configured"))
        .await
        .unwrap();
    let seen_by_b = b.snapshot().await.unwrap();
    assert!(seen_by_b.nodes.is_empty() && seen_by_b.packages.is_empty());
    // Same name, other cluster: its own record, its own fence.
    let other = b
        .update_package("db".into(), 0, owned_by("node9", PackageState::Up))
        .await
        .unwrap();
    assert_eq!(other.value.fence_token, FenceToken(1));
    assert_eq!(
        a.snapshot().await.unwrap().packages["db"].value.owners,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn an_unreachable_etcd_is_a_backend_error_naming_the_endpoint() {
    // A port nobody listens on: bound and released.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let err = EtcdStore::connect(
        std::slice::from_ref(&endpoint),
        "demo",
        Duration::from_millis(500),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, StoreError::Backend { path, .. } if *path == endpoint),
        "{err}"
    );
    assert!(err.to_string().contains(&endpoint), "{err}");
}

#[tokio::test]
async fn put_node_keeps_a_node_record_bound_to_its_lease() {
    let etcd = etcd_or_skip!();
    let store = etcd.store("demo").await;
    let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap();
    store
        .put_node_with_lease(node("node1", NodeState::Up), lease.id)
        .await
        .unwrap();
    // A state change through the trait must not unbind it.
    store
        .put_node(node("node1", NodeState::Halted))
        .await
        .unwrap();
    store.put_node(node("node2", NodeState::Up)).await.unwrap();
    let mut watch = store.watch().await.unwrap();
    assert_eq!(watch.snapshot.nodes["node1"].value.state, NodeState::Halted);

    store.revoke_lease(lease.id).await.unwrap();
    let event = next_event(&mut watch).await;
    assert_eq!(
        event.change,
        Change::NodeDeleted {
            name: "node1".into()
        }
    );
    let mut mirrored = watch.snapshot.clone();
    mirrored.apply(&event);
    let now = store.snapshot().await.unwrap();
    assert_eq!(mirrored, now);
    assert_eq!(now.nodes.keys().collect::<Vec<_>>(), ["node2"]);

    // The watch ends with the store.
    drop(store);
    let end = tokio::time::timeout(EVENTUALLY, watch.events.recv())
        .await
        .expect("the watch ends in time");
    assert_eq!(end, None);
}

#[tokio::test]
async fn the_watch_and_the_keepalive_ride_out_an_etcd_restart() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let mut etcd = etcd_or_skip!();
    let store = etcd.store("demo").await;
    let lease = store.grant_lease(Duration::from_secs(3)).await.unwrap();
    let keepalive = store.keep_alive(&lease);
    let mut health = keepalive.subscribe();
    store
        .put_node_with_lease(node("node1", NodeState::Up), lease.id)
        .await
        .unwrap();
    let mut watch = store.watch().await.unwrap();

    // Idle for longer than the client's request timeout (5 s): the
    // long-lived watch and keepalive streams must not be cut by it.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(keepalive.health().last_error, None);
    let before = store
        .put_node(node("node1", NodeState::Down))
        .await
        .unwrap();
    assert_eq!(next_event(&mut watch).await.revision, before);

    etcd.kill();
    let killed = Instant::now();
    tokio::time::timeout(EVENTUALLY, health.wait_for(|h| h.last_error.is_some()))
        .await
        .expect("the keepalive reports the lapse in time")
        .unwrap();
    let lapsed = keepalive.health();
    eprintln!(
        "keepalive reported a failure {:?} after etcd was killed: {:?}",
        killed.elapsed(),
        lapsed.last_error
    );

    etcd.restart().await;
    tokio::time::timeout(
        EVENTUALLY,
        health.wait_for(|h| h.last_error.is_none() && h.renewed_at > lapsed.renewed_at),
    )
    .await
    .expect("the keepalive recovers in time")
    .unwrap();
    assert!(!keepalive.health().expired);

    // Writes go through again once the client has reconnected, and the
    // watch resumes right after the last change it delivered.
    let deadline = Instant::now() + EVENTUALLY;
    let after = loop {
        match store.put_node(node("node1", NodeState::Up)).await {
            Ok(revision) => break revision,
            Err(e) => assert!(Instant::now() < deadline, "no write after the restart: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let event = next_event(&mut watch).await;
    assert_eq!(event.revision, after);
    assert!(matches!(&event.change, Change::Node(n) if n.value.state == NodeState::Up));
    assert!(watch.events.try_recv().is_err());
    // etcd renews every lease when it restarts, so the node is still there.
    assert!(store.snapshot().await.unwrap().nodes.contains_key("node1"));
}

#[tokio::test]
async fn lease_bound_keys_vanish_about_a_ttl_after_keepalives_stop() {
    let etcd = etcd_or_skip!();
    let store = etcd.store("demo").await;
    let lease = store.grant_lease(TTL).await.unwrap();
    let keepalive = store.keep_alive(&lease);
    store
        .put_node_with_lease(node("node1", NodeState::Up), lease.id)
        .await
        .unwrap();
    let created = store
        .update_package("ascs".into(), 0, owned_by("node1", PackageState::Starting))
        .await
        .unwrap();
    let claim = store
        .claim_package("ascs", created.mod_revision, "node1", lease.id)
        .await
        .unwrap();
    assert!(matches!(claim, ClaimOutcome::Granted(_)), "{claim:?}");

    // Renewed, the lease outlives several TTLs.
    tokio::time::sleep(TTL * 2).await;
    let health = keepalive.health();
    assert!(health.renewed_at.is_some() && !health.expired, "{health:?}");
    assert!(store.snapshot().await.unwrap().nodes.contains_key("node1"));
    assert!(store.package_claim("ascs").await.unwrap().is_some());

    let mut watch = store.watch().await.unwrap();
    let last = keepalive.health();
    keepalive.stop();
    let event = next_event(&mut watch).await;
    let seen = Instant::now();
    assert_eq!(
        event.change,
        Change::NodeDeleted {
            name: "node1".into()
        }
    );
    let renewed_at = last.renewed_at.expect("renewed at least once");
    let delay = seen - renewed_at;
    eprintln!(
        "lease {} (ttl {TTL:?}): node key deleted {delay:?} after the last acknowledged \
         keepalive was sent; reported valid_until was {:?} before the deletion was seen",
        lease.id,
        seen.saturating_duration_since(last.valid_until)
    );
    assert!(delay < EVENTUALLY, "{delay:?}");
    // The safety margin the host relies on: the lease was never gone
    // before the instant the keepalive task called it certainly valid.
    assert!(seen >= last.valid_until, "deleted before valid_until");
    // The claim went with the lease; the package record stays, listing
    // node1 until the coordinator moves it.
    assert_eq!(store.package_claim("ascs").await.unwrap(), None);
    let snap = store.snapshot().await.unwrap();
    assert_eq!(snap.packages["ascs"].value.owners, ["node1"]);
    // Claim keys make no events: nothing else arrived.
    assert!(watch.events.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_for_a_package_exactly_one_wins() {
    let etcd = etcd_or_skip!();
    let coordinator = etcd.store("demo").await;
    let mut nodes = Vec::new();
    for name in ["node1", "node2"] {
        let store = etcd.store("demo").await;
        let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap();
        store
            .put_node_with_lease(node(name, NodeState::Up), lease.id)
            .await
            .unwrap();
        nodes.push((name, store, lease.id));
    }

    // Both take the package from the same revision: one CAS wins.
    let created = coordinator
        .update_package("ascs".into(), 0, PackageUpdate::down("configured"))
        .await
        .unwrap();
    let take = |i: usize| {
        let (name, store, _) = &nodes[i];
        store.update_package(
            "ascs".into(),
            created.mod_revision,
            owned_by(name, PackageState::Starting),
        )
    };
    let (a, b) = tokio::join!(take(0), take(1));
    let (winner, loser_err) = match (a, b) {
        (Ok(w), Err(e)) | (Err(e), Ok(w)) => (w, e),
        other => panic!("exactly one must win: {other:?}"),
    };
    assert!(
        matches!(loser_err, StoreError::Conflict { actual, .. } if actual == winner.mod_revision),
        "{loser_err}"
    );
    assert_eq!(winner.value.fence_token, FenceToken(1));

    // Claims race too, even when a (bad) record lists both: the claim key
    // admits one node at a time. Several rounds, releasing in between.
    let both = coordinator
        .update_package(
            "shared".into(),
            0,
            PackageUpdate {
                state: PackageState::Starting,
                owners: vec!["node1".into(), "node2".into()],
                ..PackageUpdate::down("test")
            },
        )
        .await
        .unwrap();
    let mut wins = [0usize; 2];
    for _ in 0..10 {
        let claim = |i: usize| {
            let (name, store, lease) = &nodes[i];
            store.claim_package("shared", both.mod_revision, name, *lease)
        };
        let (a, b) = tokio::join!(claim(0), claim(1));
        let (a, b) = (a.unwrap(), b.unwrap());
        let winner = match (&a, &b) {
            (ClaimOutcome::Granted(g), ClaimOutcome::HeldBy(h)) if g == h => 0,
            (ClaimOutcome::HeldBy(h), ClaimOutcome::Granted(g)) if g == h => 1,
            other => panic!("exactly one claim must win: {other:?}"),
        };
        wins[winner] += 1;
        let (name, store, _) = &nodes[winner];
        assert!(store.release_package("shared", name).await.unwrap());
        // The loser cannot release what it does not hold.
        let (name, store, _) = &nodes[1 - winner];
        assert!(!store.release_package("shared", name).await.unwrap());
    }
    eprintln!(
        "claim race winners over 10 rounds: node1 {}, node2 {}",
        wins[0], wins[1]
    );
}

#[tokio::test]
async fn a_claim_passes_to_the_new_owner_only_once_the_old_one_is_gone() {
    let etcd = etcd_or_skip!();
    let coordinator = etcd.store("demo").await;
    let node1 = etcd.store("demo").await;
    let node2 = etcd.store("demo").await;
    let lease1 = node1.grant_lease(TTL).await.unwrap();
    let keepalive1 = node1.keep_alive(&lease1);
    let lease2 = node2.grant_lease(Duration::from_secs(30)).await.unwrap();

    let created = coordinator
        .update_package("ascs".into(), 0, owned_by("node1", PackageState::Starting))
        .await
        .unwrap();
    let ClaimOutcome::Granted(held) = node1
        .claim_package("ascs", created.mod_revision, "node1", lease1.id)
        .await
        .unwrap()
    else {
        panic!("node1 owns the package and nobody claimed it")
    };
    assert_eq!(held.value.fence_token, FenceToken(1));
    // Claiming again is idempotent.
    assert_eq!(
        node1
            .claim_package("ascs", created.mod_revision, "node1", lease1.id)
            .await
            .unwrap(),
        ClaimOutcome::Granted(held.clone())
    );

    // The coordinator moves the package while node1 still holds the claim.
    let moved = coordinator
        .update_package(
            "ascs".into(),
            created.mod_revision,
            owned_by("node2", PackageState::Starting),
        )
        .await
        .unwrap();
    assert_eq!(moved.value.fence_token, FenceToken(2));
    assert_eq!(
        node2
            .claim_package("ascs", moved.mod_revision, "node3", lease2.id)
            .await
            .unwrap(),
        ClaimOutcome::NotOwner {
            owners: vec!["node2".into()]
        }
    );
    let stale = node1
        .claim_package("ascs", created.mod_revision, "node1", lease1.id)
        .await
        .unwrap_err();
    assert!(matches!(stale, StoreError::Conflict { .. }), "{stale}");
    assert_eq!(
        node2
            .claim_package("ascs", moved.mod_revision, "node2", lease2.id)
            .await
            .unwrap(),
        ClaimOutcome::HeldBy(held)
    );

    // node1 freezes: no more keepalives. node2 keeps asking.
    keepalive1.stop();
    let stopped = Instant::now();
    let granted = loop {
        match node2
            .claim_package("ascs", moved.mod_revision, "node2", lease2.id)
            .await
            .unwrap()
        {
            ClaimOutcome::Granted(g) => break g,
            ClaimOutcome::HeldBy(h) => assert_eq!(h.value.node, "node1"),
            other => panic!("{other:?}"),
        }
        assert!(
            stopped.elapsed() < EVENTUALLY,
            "node1's claim never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "claim handed over {:?} after node1's keepalives stopped (ttl {TTL:?})",
        stopped.elapsed()
    );
    assert_eq!(granted.value.node, "node2");
    assert_eq!(granted.value.fence_token, FenceToken(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_has_one_leader_and_the_other_takes_over_when_its_lease_expires() {
    let etcd = etcd_or_skip!();
    let mut candidates = Vec::new();
    let mut keepalives = Vec::new();
    for name in ["node1", "node2"] {
        let store = etcd.store("demo").await;
        let lease = store.grant_lease(TTL).await.unwrap();
        let keepalive = store.keep_alive(&lease);
        candidates.push((name, store, lease.id));
        keepalives.push(Some(keepalive));
    }
    assert_eq!(candidates[0].1.leader().await.unwrap(), None);
    let campaign = |i: usize| {
        let (name, store, lease) = &candidates[i];
        store.campaign(name, *lease)
    };
    let (a, b) = tokio::join!(campaign(0), campaign(1));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a != b, "exactly one leader: {a} {b}");
    let (leader, follower) = if a { (0, 1) } else { (1, 0) };
    let elected = candidates[follower].1.leader().await.unwrap().unwrap();
    assert_eq!(elected.node, candidates[leader].0);
    assert_eq!(elected.lease, candidates[leader].2);
    // Campaigning again changes nothing.
    assert!(campaign(leader).await.unwrap());
    assert!(!campaign(follower).await.unwrap());
    // Only the leader can resign.
    let (name, store, _) = &candidates[follower];
    assert!(!store.resign(name).await.unwrap());

    // The leader freezes; the follower campaigns on a timer and takes over.
    keepalives[leader].take().expect("keepalive running").stop();
    let stopped = Instant::now();
    while !campaign(follower).await.unwrap() {
        assert!(
            stopped.elapsed() < EVENTUALLY,
            "the leader's lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "coordinator handed over {:?} after the leader's keepalives stopped (ttl {TTL:?})",
        stopped.elapsed()
    );
    let (name, store, lease) = &candidates[follower];
    let now = store.leader().await.unwrap().unwrap();
    assert_eq!((now.node.as_str(), now.lease), (*name, *lease));
    assert!(now.since > elected.since);
    assert!(store.resign(name).await.unwrap());
    assert_eq!(store.leader().await.unwrap(), None);
}

#[tokio::test]
async fn put_and_txn_latency_is_reported() {
    let etcd = etcd_or_skip!();
    let store = etcd.store("demo").await;
    const N: usize = 200;
    let mut puts = Vec::with_capacity(N);
    let mut last = 0;
    for _ in 0..N {
        let t = Instant::now();
        let revision = store.put_node(node("node1", NodeState::Up)).await.unwrap();
        puts.push(t.elapsed());
        assert!(revision > last);
        last = revision;
    }
    let mut txns = Vec::with_capacity(N);
    let mut expected = 0;
    for i in 0..N {
        let owner = if i % 2 == 0 { "node1" } else { "node2" };
        let t = Instant::now();
        let record = store
            .update_package("pkg".into(), expected, owned_by(owner, PackageState::Up))
            .await
            .unwrap();
        txns.push(t.elapsed());
        assert_eq!(record.value.fence_token, FenceToken(i as u64 + 1));
        expected = record.mod_revision;
    }
    let summary = |mut v: Vec<Duration>| {
        v.sort();
        format!(
            "median {:?}, p99 {:?}, max {:?}",
            v[v.len() / 2],
            v[v.len() * 99 / 100],
            v[v.len() - 1]
        )
    };
    eprintln!("put_node over {N}: {}", summary(puts));
    eprintln!(
        "update_package (read + CAS txn with fence bump) over {N}: {}",
        summary(txns)
    );
}
