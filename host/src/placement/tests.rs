//! Scenario tests of the placement engine: each builds a snapshot, and
//! `check` renders the plan (placement + actions) against an expect-test
//! snapshot after checking the invariants every plan must keep.

use std::collections::{BTreeMap, BTreeSet};

use expect_test::{Expect, expect};

use super::state_file::{ResourceValue, StateFile, StateFileError};
use super::*;

const ETH0: &str = "/net/interfaces/eth0/status";

fn cluster(up: &[&str], down: &[&str]) -> ClusterSnapshot {
    let mut nodes: Vec<NodeState> = up.iter().map(|n| NodeState::up(n)).collect();
    nodes.extend(down.iter().map(|n| NodeState::down(n)));
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    ClusterSnapshot {
        nodes,
        ..ClusterSnapshot::default()
    }
}

fn run(snap: &mut ClusterSnapshot, package: &str, nodes: &[&str]) {
    snap.state_mut(package).running_on = nodes.iter().map(|n| (*n).to_owned()).collect();
}

fn needs(spec: &mut PackageSpec, resource: &str, evaluate: Evaluate) {
    spec.resources.push(ResourceRequirement {
        name: resource.to_owned(),
        evaluate,
    });
}

fn depends(
    spec: &mut PackageSpec,
    on: &str,
    condition: DependencyCondition,
    location: DependencyLocation,
) {
    spec.dependencies.push(Dependency {
        package: on.to_owned(),
        condition,
        location,
    });
}

/// Plans, checks the plan's invariants, and compares its rendering.
fn check(snap: &ClusterSnapshot, expect: Expect) -> Plan {
    let plan = plan(snap);
    check_invariants(snap, &plan);
    expect.assert_eq(&plan.to_string());
    plan
}

/// Compares `vigil why` output for one package.
fn check_why(plan: &Plan, package: &str, expect: Expect) {
    expect.assert_eq(&plan.explanations[package].to_string());
}

/// Replays the actions from the live current state: every halt stops a
/// running instance, every run starts a new one on an up node, a failover
/// package never runs twice at once, the end state is the placement, and the
/// placement keeps avoid, before_start resources, and dependencies.
fn check_invariants(snap: &ClusterSnapshot, plan: &Plan) {
    let up: BTreeSet<&str> = snap
        .nodes
        .iter()
        .filter(|n| n.up)
        .map(|n| n.name.as_str())
        .collect();
    let spec = |p: &str| {
        snap.packages
            .iter()
            .find(|s| s.name == p)
            .expect("action names a package")
    };
    let mut running: BTreeMap<String, BTreeSet<String>> = snap
        .packages
        .iter()
        .map(|s| {
            let on = snap
                .state_of(&s.name)
                .running_on
                .into_iter()
                .filter(|n| up.contains(n.as_str()));
            (s.name.clone(), on.collect())
        })
        .collect();
    for a in &plan.actions {
        let set = running.get_mut(&a.package).expect("action names a package");
        match a.op {
            Op::Halt => assert!(set.remove(&a.node), "{a}: not running there"),
            Op::Run => {
                assert!(up.contains(a.node.as_str()), "{a}: node is not up");
                assert!(set.insert(a.node.clone()), "{a}: already running there");
                if spec(&a.package).kind == PackageKind::Failover {
                    assert_eq!(set.len(), 1, "{a}: failover package on two nodes");
                }
                for r in &spec(&a.package).resources {
                    if r.evaluate == Evaluate::BeforeStart {
                        assert_eq!(
                            snap.resource(&a.package, &a.node, &r.name),
                            Some(true),
                            "{a}: {} not up",
                            r.name
                        );
                    }
                }
            }
        }
    }
    for (pkg, nodes) in &plan.placement {
        let expected: BTreeSet<String> = nodes.iter().cloned().collect();
        assert_eq!(
            running[pkg], expected,
            "actions do not reach the placement of {pkg}"
        );
        if spec(pkg).kind == PackageKind::Failover {
            assert!(nodes.len() <= 1, "{pkg} placed on {nodes:?}");
        }
        for avoided in &spec(pkg).avoid {
            if let Some(other) = plan.placement.get(avoided) {
                assert!(
                    nodes.iter().all(|n| !other.contains(n)),
                    "{pkg} shares a node with {avoided}"
                );
            }
        }
        for d in &spec(pkg).dependencies {
            let at = plan.placement.get(&d.package).cloned().unwrap_or_default();
            for n in nodes {
                let ok = match (d.condition, d.location) {
                    (DependencyCondition::Up, DependencyLocation::SameNode) => at.contains(n),
                    (DependencyCondition::Up, DependencyLocation::DifferentNode) => {
                        at.iter().any(|m| m != n)
                    }
                    (DependencyCondition::Up, _) => !at.is_empty(),
                    (DependencyCondition::Down, DependencyLocation::SameNode) => !at.contains(n),
                    (DependencyCondition::Down, DependencyLocation::DifferentNode) => {
                        at.iter().all(|m| m == n)
                    }
                    (DependencyCondition::Down, _) => at.is_empty(),
                };
                assert!(ok, "{pkg} on {n} breaks its dependency on {}", d.package);
            }
        }
    }
}

/// ascs follows ers, ers avoids ascs, both on node1..node3; ascs on node1,
/// ers on node2.
fn seed(down: &str) -> ClusterSnapshot {
    let all = ["node1", "node2", "node3"];
    let up: Vec<&str> = all.iter().copied().filter(|n| *n != down).collect();
    let downs: Vec<&str> = all.iter().copied().filter(|n| *n == down).collect();
    let mut snap = cluster(&up, &downs);
    let mut ascs = PackageSpec::failover("ascs", &all);
    ascs.follow = Some("ers".to_owned());
    let mut ers = PackageSpec::failover("ers", &all);
    ers.avoid = vec!["ascs".to_owned()];
    snap.packages = vec![ascs, ers];
    run(&mut snap, "ascs", &["node1"]);
    run(&mut snap, "ers", &["node2"]);
    snap
}

#[test]
fn seed_node1_dies_ascs_takes_over_ers_node_and_ers_moves_away() {
    let plan = check(
        &seed("node1"),
        expect![[r#"
            placement:
              ascs: node2
              ers: node3
            actions:
              run ascs on node2 (failover)
              halt ers on node2 (avoid)
              run ers on node3 (avoid)
        "#]],
    );
    check_why(
        &plan,
        "ascs",
        expect![[r#"
            ascs (failover, configured_node): running: node1; target: node2
              chosen: takes over the node of ers, which it follows; ers avoids it and moves away
              node1: not eligible: node is down
              node2: eligible (placed here)
              node3: eligible
        "#]],
    );
    check_why(
        &plan,
        "ers",
        expect![[r#"
            ers (failover, configured_node): running: node2; target: node3
              chosen: first eligible node in list order
              ers: moved from node2: avoids ascs, which needed node2
              node1: not eligible: node is down
              node2: not eligible: avoids ascs, which needed this node
              node3: eligible (placed here)
        "#]],
    );
}

#[test]
fn seed_node2_dies_only_ers_moves() {
    let plan = check(
        &seed("node2"),
        expect![[r#"
            placement:
              ascs: node1
              ers: node3
            actions:
              run ers on node3 (failover)
        "#]],
    );
    check_why(
        &plan,
        "ers",
        expect![[r#"
            ers (failover, configured_node): running: node2; target: node3
              chosen: first eligible node in list order
              node1: not eligible: avoids ascs, which runs there
              node2: not eligible: node is down
              node3: eligible (placed here)
        "#]],
    );
}

#[test]
fn seed_steady_state_moves_nothing() {
    check(
        &seed("none"),
        expect![[r#"
            placement:
              ascs: node1
              ers: node2
            actions:
              none
        "#]],
    );
}

#[test]
fn seed_node1_dies_with_no_third_node_ers_halts() {
    let mut snap = seed("node1");
    snap.set_node_up("node3", false);
    check(
        &snap,
        expect![[r#"
            placement:
              ascs: node2
              ers: nowhere
            actions:
              run ascs on node2 (failover)
              halt ers on node2 (avoid)
        "#]],
    );
}

#[test]
fn seed_handover_not_taken_from_a_more_important_leader() {
    let mut snap = seed("node1");
    snap.packages[1].priority = Some(1); // ers
    snap.packages[0].priority = Some(5); // ascs
    check(
        &snap,
        expect![[r#"
            placement:
              ascs: node3
              ers: node2
            actions:
              run ascs on node3 (failover)
        "#]],
    );
}

/// At startup ascs, the package ers avoids, is placed first (as if ers did
/// not exist) and ers yields the node: the seed's steady state.
#[test]
fn seed_startup_places_ascs_first_and_ers_beside_it() {
    let mut snap = seed("none");
    snap.package_states.clear();
    check(
        &snap,
        expect![[r#"
            placement:
              ascs: node1
              ers: node2
            actions:
              run ascs on node1 (startup)
              run ers on node2 (startup)
        "#]],
    );
}

#[test]
fn seed_handover_not_taken_from_a_leader_with_switching_disabled() {
    let mut snap = seed("node1");
    snap.state_mut("ers").switching_enabled = false;
    check(
        &snap,
        expect![[r#"
        placement:
          ascs: node3
          ers: node2
        actions:
          run ascs on node3 (failover)
    "#]],
    );
}

#[test]
fn seed_handover_skipped_when_the_follower_failed_on_the_leader_node() {
    let mut snap = seed("node1");
    snap.state_mut("ascs").failed_on.insert("node2".to_owned());
    let plan = check(
        &snap,
        expect![[r#"
        placement:
          ascs: node3
          ers: node2
        actions:
          run ascs on node3 (failover)
    "#]],
    );
    check_why(
        &plan,
        "ascs",
        expect![[r#"
            ascs (failover, configured_node): running: node1; target: node3
              chosen: first eligible node in list order
              node1: not eligible: node is down
              node2: not eligible: failed there since the last `vigil pkg clear`
              node3: eligible (placed here)
        "#]],
    );
}

#[test]
fn follow_places_follower_with_its_leader() {
    let mut snap = cluster(&["node1", "node2", "node3"], &[]);
    let mut web = PackageSpec::failover("web", &["node1", "node2", "node3"]);
    web.follow = Some("db".to_owned());
    let mut db = PackageSpec::failover("db", &["node3", "node2", "node1"]);
    db.priority = Some(50);
    snap.packages = vec![web, db];
    let plan = check(
        &snap,
        expect![[r#"
            placement:
              db: node3
              web: node3
            actions:
              run db on node3 (startup)
              run web on node3 (startup)
        "#]],
    );
    check_why(
        &plan,
        "web",
        expect![[r#"
            web (failover, configured_node): running: none; target: node3
              chosen: follows db, which runs there
              node1: eligible
              node2: eligible
              node3: eligible (placed here)
        "#]],
    );
}

/// Serviceguard rotating standby: three min_package_node packages on four
/// nodes; the idle node takes a failed package and the repaired node becomes
/// the new standby.
#[test]
fn rotating_standby_failed_package_goes_to_idle_node_and_stays() {
    let mut snap = cluster(&["node1", "node3", "node4"], &["node2"]);
    for (pkg, node) in [("pkgA", "node1"), ("pkgB", "node2"), ("pkgC", "node3")] {
        let mut spec = PackageSpec::failover(pkg, &["node1", "node2", "node3", "node4"]);
        spec.failover_policy = FailoverPolicy::MinPackageNode;
        snap.packages.push(spec);
        run(&mut snap, pkg, &[node]);
    }
    let plan = check(
        &snap,
        expect![[r#"
            placement:
              pkgA: node1
              pkgB: node4
              pkgC: node3
            actions:
              run pkgB on node4 (failover)
        "#]],
    );
    check_why(
        &plan,
        "pkgB",
        expect![[r#"
            pkgB (failover, min_package_node): running: node2; target: node4
              chosen: eligible node running the fewest packages (0)
              node1: eligible
              node2: not eligible: node is down
              node3: eligible
              node4: eligible (placed here)
        "#]],
    );

    // node2 is repaired; pkgB keeps running on node4, node2 is the standby.
    snap.set_node_up("node2", true);
    run(&mut snap, "pkgB", &["node4"]);
    check(
        &snap,
        expect![[r#"
        placement:
          pkgA: node1
          pkgB: node4
          pkgC: node3
        actions:
          none
    "#]],
    );
}

fn failback_snapshot(policy: FailbackPolicy) -> ClusterSnapshot {
    let mut snap = cluster(&["node1", "node2"], &[]);
    let mut spec = PackageSpec::failover("pkgA", &["node1", "node2"]);
    spec.failback_policy = policy;
    snap.packages.push(spec);
    // It failed over to node2 while node1 was down; node1 is back.
    run(&mut snap, "pkgA", &["node2"]);
    snap
}

#[test]
fn automatic_failback_returns_to_the_first_node() {
    let plan = check(
        &failback_snapshot(FailbackPolicy::Automatic),
        expect![[r#"
        placement:
          pkgA: node1
        actions:
          halt pkgA on node2 (failback)
          run pkgA on node1 (failback)
    "#]],
    );
    check_why(
        &plan,
        "pkgA",
        expect![[r#"
            pkgA (failover, configured_node): running: node2; target: node1
              chosen: failback to an earlier node of its list
              node1: eligible (placed here)
              node2: eligible
        "#]],
    );
}

#[test]
fn manual_failback_stays_put() {
    let plan = check(
        &failback_snapshot(FailbackPolicy::Manual),
        expect![[r#"
        placement:
          pkgA: node2
        actions:
          none
    "#]],
    );
    check_why(
        &plan,
        "pkgA",
        expect![[r#"
            pkgA (failover, configured_node): running: node2; target: node2
              chosen: already running there (sticky)
              node1: eligible
              node2: eligible (placed here)
        "#]],
    );
}

#[test]
fn before_start_resource_down_on_owner_moves_the_package() {
    let mut snap = cluster(&["node1", "node2"], &[]);
    let mut spec = PackageSpec::failover("pkgA", &["node1", "node2"]);
    needs(&mut spec, ETH0, Evaluate::BeforeStart);
    snap.packages.push(spec);
    run(&mut snap, "pkgA", &["node1"]);
    snap.set_resource("pkgA", "node1", ETH0, false);
    snap.set_resource("pkgA", "node2", ETH0, true);
    let plan = check(
        &snap,
        expect![[r#"
        placement:
          pkgA: node2
        actions:
          halt pkgA on node1 (resource_down)
          run pkgA on node2 (resource_down)
    "#]],
    );
    check_why(
        &plan,
        "pkgA",
        expect![[r#"
            pkgA (failover, configured_node): running: node1; target: node2
              chosen: first eligible node in list order
              node1: not eligible: resource /net/interfaces/eth0/status is not up
              node2: eligible (placed here)
        "#]],
    );
}

#[test]
fn after_start_resources_do_not_gate_placement_but_a_down_verdict_moves_it() {
    let mut snap = cluster(&["node1", "node2"], &[]);
    let mut spec = PackageSpec::failover("pkgA", &["node1", "node2"]);
    needs(
        &mut spec,
        "/shm/sysv/0x00004a20/present",
        Evaluate::AfterStart,
    );
    snap.packages.push(spec);
    // Nothing known about the resource anywhere: it still starts.
    check(
        &snap,
        expect![[r#"
        placement:
          pkgA: node1
        actions:
          run pkgA on node1 (startup)
    "#]],
    );

    run(&mut snap, "pkgA", &["node1"]);
    snap.set_resource("pkgA", "node1", "/shm/sysv/0x00004a20/present", false);
    let plan = check(
        &snap,
        expect![[r#"
        placement:
          pkgA: node2
        actions:
          halt pkgA on node1 (resource_down)
          run pkgA on node2 (resource_down)
    "#]],
    );
    check_why(
        &plan,
        "pkgA",
        expect![[r#"
            pkgA (failover, configured_node): running: node1; target: node2
              chosen: first eligible node in list order
              node1: not eligible: resource /shm/sysv/0x00004a20/present went down (after_start)
              node2: eligible (placed here)
        "#]],
    );
}

fn db_app(location: DependencyLocation) -> ClusterSnapshot {
    let mut snap = cluster(&["node1", "node2"], &[]);
    let mut db = PackageSpec::failover("db", &["node1", "node2"]);
    needs(&mut db, ETH0, Evaluate::BeforeStart);
    // Listed first by name so that only dependency ordering puts db first.
    let mut app = PackageSpec::failover("app", &["node1", "node2"]);
    depends(&mut app, "db", DependencyCondition::Up, location);
    snap.packages = vec![app, db];
    snap.set_all_resources_up();
    snap
}

#[test]
fn same_node_dependency_starts_predecessor_first() {
    let snap = db_app(DependencyLocation::SameNode);
    check(
        &snap,
        expect![[r#"
        placement:
          app: node1
          db: node1
        actions:
          run db on node1 (startup)
          run app on node1 (startup)
    "#]],
    );
}

#[test]
fn same_node_dependent_moves_with_its_predecessor_and_halts_first() {
    let mut snap = db_app(DependencyLocation::SameNode);
    run(&mut snap, "db", &["node1"]);
    run(&mut snap, "app", &["node1"]);
    snap.set_resource("db", "node1", ETH0, false);
    let plan = check(
        &snap,
        expect![[r#"
        placement:
          app: node2
          db: node2
        actions:
          halt app on node1 (dependency)
          halt db on node1 (resource_down)
          run db on node2 (resource_down)
          run app on node2 (dependency)
    "#]],
    );
    check_why(
        &plan,
        "app",
        expect![[r#"
            app (failover, configured_node): running: node1; target: node2
              chosen: first eligible node in list order
              node1: not eligible: dependency not met: db must be up on this node
              node2: eligible (placed here)
        "#]],
    );
}

#[test]
fn different_node_dependency_keeps_them_apart() {
    let mut snap = db_app(DependencyLocation::DifferentNode);
    check(
        &snap,
        expect![[r#"
        placement:
          app: node2
          db: node1
        actions:
          run db on node1 (startup)
          run app on node2 (startup)
    "#]],
    );
    // Without a second node the dependent cannot run.
    snap.set_node_up("node2", false);
    let plan = check(
        &snap,
        expect![[r#"
        placement:
          app: nowhere
          db: node1
        actions:
          run db on node1 (startup)
    "#]],
    );
    check_why(
        &plan,
        "app",
        expect![[r#"
            app (failover, configured_node): running: none; target: none
              not running: no eligible node
              node1: not eligible: dependency not met: db must be up on a different node
              node2: not eligible: node is down
        "#]],
    );
}

#[test]
fn down_dependency_runs_only_while_the_other_is_down() {
    let mut snap = cluster(&["node1", "node2"], &[]);
    let prod = PackageSpec::failover("prod", &["node1", "node2"]);
    let mut batch = PackageSpec::failover("batch", &["node1", "node2"]);
    depends(
        &mut batch,
        "prod",
        DependencyCondition::Down,
        DependencyLocation::SameNode,
    );
    snap.packages = vec![batch, prod];
    run(&mut snap, "prod", &["node1"]);
    check(
        &snap,
        expect![[r#"
        placement:
          batch: node2
          prod: node1
        actions:
          run batch on node2 (startup)
    "#]],
    );

    // prod fails over onto batch's node: batch halts before prod starts.
    run(&mut snap, "batch", &["node2"]);
    snap.state_mut("prod").failed_on.insert("node1".to_owned());
    let plan = check(
        &snap,
        expect![[r#"
            placement:
              batch: node1
              prod: node2
            actions:
              halt batch on node2 (dependency)
              halt prod on node1 (failover)
              run prod on node2 (failover)
              run batch on node1 (dependency)
        "#]],
    );
    check_why(
        &plan,
        "batch",
        expect![[r#"
            batch (failover, configured_node): running: node2; target: node1
              chosen: first eligible node in list order
              node1: eligible (placed here)
              node2: not eligible: dependency not met: prod must be down on this node
        "#]],
    );
}

fn priority_snapshot(high: Option<u32>, low: Option<u32>) -> ClusterSnapshot {
    let mut snap = cluster(&["node1", "node3"], &["node2"]);
    let mut important = PackageSpec::failover("important", &["node2", "node1"]);
    important.priority = high;
    important.avoid = vec!["batch".to_owned()];
    let mut batch = PackageSpec::failover("batch", &["node1", "node3"]);
    batch.priority = low;
    snap.packages = vec![batch, important];
    run(&mut snap, "important", &["node2"]);
    run(&mut snap, "batch", &["node1"]);
    snap
}

#[test]
fn higher_priority_package_displaces_a_lower_one() {
    let plan = check(
        &priority_snapshot(Some(1), Some(100)),
        expect![[r#"
        placement:
          batch: node3
          important: node1
        actions:
          halt batch on node1 (displaced)
          run important on node1 (failover)
          run batch on node3 (displaced)
    "#]],
    );
    check_why(
        &plan,
        "batch",
        expect![[r#"
            batch (failover, configured_node, priority 100): running: node1; target: node3
              chosen: first eligible node in list order
              node1: not eligible: displaced by higher priority package important
              node3: eligible (placed here)
        "#]],
    );
}

#[test]
fn equal_priority_package_does_not_displace() {
    let plan = check(
        &priority_snapshot(None, None),
        expect![[r#"
        placement:
          batch: node1
          important: nowhere
        actions:
          none
    "#]],
    );
    check_why(
        &plan,
        "important",
        expect![[r#"
            important (failover, configured_node): running: node2; target: none
              not running: no eligible node
              node2: not eligible: node is down
              node1: not eligible: avoids batch, which runs there
        "#]],
    );
}

#[test]
fn multi_node_runs_on_every_eligible_listed_node() {
    let mut snap = cluster(&["node1", "node2", "node3", "node4"], &[]);
    let mut nfs = PackageSpec::failover("nfs", &["node1", "node2", "node3"]);
    nfs.kind = PackageKind::MultiNode;
    needs(&mut nfs, ETH0, Evaluate::BeforeStart);
    snap.packages.push(nfs);
    snap.set_all_resources_up();
    run(&mut snap, "nfs", &["node1", "node2"]);
    snap.set_resource("nfs", "node2", ETH0, false);
    let plan = check(
        &snap,
        expect![[r#"
        placement:
          nfs: node1, node3
        actions:
          halt nfs on node2 (resource_down)
          run nfs on node3 (startup)
    "#]],
    );
    check_why(
        &plan,
        "nfs",
        expect![[r#"
            nfs (multi_node): running: node1, node2; target: node1, node3
              chosen: runs on every eligible node
              node1: eligible (placed here)
              node2: not eligible: resource /net/interfaces/eth0/status is not up
              node3: eligible (placed here)
        "#]],
    );
}

#[test]
fn system_multi_node_runs_on_every_up_cluster_node() {
    let mut snap = cluster(&["node1", "node2", "node3"], &["node4"]);
    let mut agent = PackageSpec::failover("agent", &[]);
    agent.kind = PackageKind::SystemMultiNode;
    snap.packages.push(agent);
    run(&mut snap, "agent", &["node1"]);
    check(
        &snap,
        expect![[r#"
        placement:
          agent: node1, node2, node3
        actions:
          run agent on node2 (startup)
          run agent on node3 (startup)
    "#]],
    );
}

#[test]
fn failed_marks_exclude_nodes_until_cleared() {
    let mut snap = cluster(&["node1", "node2"], &[]);
    snap.packages
        .push(PackageSpec::failover("pkgA", &["node1", "node2"]));
    snap.state_mut("pkgA").failed_on.insert("node1".to_owned());
    let plan = check(
        &snap,
        expect![[r#"
        placement:
          pkgA: node2
        actions:
          run pkgA on node2 (startup)
    "#]],
    );
    check_why(
        &plan,
        "pkgA",
        expect![[r#"
            pkgA (failover, configured_node): running: none; target: node2
              chosen: first eligible node in list order
              node1: not eligible: failed there since the last `vigil pkg clear`
              node2: eligible (placed here)
        "#]],
    );

    snap.state_mut("pkgA").failed_on.insert("node2".to_owned());
    check(
        &snap,
        expect![[r#"
        placement:
          pkgA: nowhere
        actions:
          none
    "#]],
    );
}

#[test]
fn node_switching_disabled_blocks_starts_but_not_running_packages() {
    let mut snap = cluster(&["node1", "node2"], &[]);
    snap.nodes[0].switching_enabled = false;
    snap.packages
        .push(PackageSpec::failover("pkgA", &["node1", "node2"]));
    snap.packages
        .push(PackageSpec::failover("pkgB", &["node1", "node2"]));
    run(&mut snap, "pkgB", &["node1"]);
    let plan = check(
        &snap,
        expect![[r#"
        placement:
          pkgA: node2
          pkgB: node1
        actions:
          run pkgA on node2 (startup)
    "#]],
    );
    check_why(
        &plan,
        "pkgA",
        expect![[r#"
            pkgA (failover, configured_node): running: none; target: node2
              chosen: first eligible node in list order
              node1: not eligible: switching is disabled on the node
              node2: eligible (placed here)
        "#]],
    );
}

#[test]
fn package_switching_disabled_neither_starts_nor_fails_over() {
    let mut snap = cluster(&["node1", "node2"], &["node3"]);
    for pkg in ["idle", "steady", "stranded"] {
        snap.packages
            .push(PackageSpec::failover(pkg, &["node3", "node1", "node2"]));
        snap.state_mut(pkg).switching_enabled = false;
    }
    run(&mut snap, "steady", &["node1"]);
    run(&mut snap, "stranded", &["node3"]);
    let plan = check(
        &snap,
        expect![[r#"
        placement:
          idle: nowhere
          steady: node1
          stranded: nowhere
        actions:
          none
    "#]],
    );
    check_why(
        &plan,
        "stranded",
        expect![[r#"
            stranded (failover, configured_node): running: node3; target: none
              not running: package switching is disabled
              node3: not eligible: node is down
              node1: eligible
              node2: eligible
        "#]],
    );
}

#[test]
fn package_disabled_on_a_node_moves_off_it_and_does_not_start_there() {
    let mut snap = cluster(&["node1", "node2", "node3"], &[]);
    snap.packages
        .push(PackageSpec::failover("pkgA", &["node1", "node2", "node3"]));
    snap.packages
        .push(PackageSpec::failover("pkgB", &["node1", "node2", "node3"]));
    run(&mut snap, "pkgA", &["node1"]);
    snap.state_mut("pkgA").disabled_nodes = BTreeSet::from(["node1".to_owned()]);
    snap.state_mut("pkgB").disabled_nodes = BTreeSet::from(["node1".to_owned()]);
    let plan = check(
        &snap,
        expect![[r#"
        placement:
          pkgA: node2
          pkgB: node2
        actions:
          halt pkgA on node1 (admin)
          run pkgA on node2 (admin)
          run pkgB on node2 (startup)
    "#]],
    );
    check_why(
        &plan,
        "pkgA",
        expect![[r#"
            pkgA (failover, configured_node): running: node1; target: node2
              chosen: first eligible node in list order
              node1: not eligible: switching is disabled for the package on this node (`vigil pkg enable NAME --node N`)
              node2: eligible (placed here)
              node3: eligible
        "#]],
    );
}

#[test]
fn package_enabled_again_on_a_node_fails_back_only_by_policy() {
    let mut snap = cluster(&["node1", "node2"], &[]);
    let manual = PackageSpec::failover("manual", &["node1", "node2"]);
    let mut automatic = PackageSpec::failover("automatic", &["node1", "node2"]);
    automatic.failback_policy = FailbackPolicy::Automatic;
    snap.packages.push(manual);
    snap.packages.push(automatic);
    run(&mut snap, "manual", &["node2"]);
    run(&mut snap, "automatic", &["node2"]);
    check(
        &snap,
        expect![[r#"
            placement:
              automatic: node1
              manual: node2
            actions:
              halt automatic on node2 (failback)
              run automatic on node1 (failback)
        "#]],
    );
}

#[test]
fn nothing_eligible_explains_every_node() {
    let mut snap = cluster(&["node1", "node2", "node3", "node4"], &["node5"]);
    snap.nodes[3].switching_enabled = false;
    let mut spec = PackageSpec::failover(
        "pkgA",
        &["node1", "node2", "node3", "node4", "node5", "node9"],
    );
    needs(&mut spec, ETH0, Evaluate::BeforeStart);
    depends(
        &mut spec,
        "db",
        DependencyCondition::Up,
        DependencyLocation::SameNode,
    );
    spec.avoid = vec!["other".to_owned()];
    snap.packages.push(spec);
    let mut db = PackageSpec::failover("db", &["node1"]);
    db.priority = Some(1);
    snap.packages.push(db);
    snap.packages
        .push(PackageSpec::failover("other", &["node3"]));
    snap.set_all_resources_up();
    snap.set_resource("pkgA", "node2", ETH0, false);
    snap.state_mut("pkgA").failed_on.insert("node1".to_owned());
    let plan = check(
        &snap,
        expect![[r#"
        placement:
          db: node1
          other: node3
          pkgA: nowhere
        actions:
          run db on node1 (startup)
          run other on node3 (startup)
    "#]],
    );
    check_why(
        &plan,
        "pkgA",
        expect![[r#"
            pkgA (failover, configured_node): running: none; target: none
              not running: no eligible node
              node1: not eligible: failed there since the last `vigil pkg clear`
              node2: not eligible: resource /net/interfaces/eth0/status is not up; dependency not met: db must be up on this node
              node3: not eligible: dependency not met: db must be up on this node; avoids other, which runs there
              node4: not eligible: switching is disabled on the node; dependency not met: db must be up on this node
              node5: not eligible: node is down
              node9: not eligible: not a cluster node
        "#]],
    );
}

#[test]
fn admin_halt_run_and_auto_run() {
    let mut snap = cluster(&["node1", "node2"], &[]);
    snap.packages
        .push(PackageSpec::failover("halted", &["node1", "node2"]));
    let mut manual = PackageSpec::failover("manual", &["node1", "node2"]);
    manual.auto_run = false;
    snap.packages.push(manual.clone());
    let mut requested = manual;
    requested.name = "requested".to_owned();
    snap.packages.push(requested);
    run(&mut snap, "halted", &["node1"]);
    snap.state_mut("halted").halted_by_admin = true;
    snap.state_mut("requested").run_requested = true;
    snap.state_mut("requested").requested_node = Some("node2".to_owned());
    let plan = check(
        &snap,
        expect![[r#"
        placement:
          halted: nowhere
          manual: nowhere
          requested: node2
        actions:
          halt halted on node1 (admin)
          run requested on node2 (admin)
    "#]],
    );
    check_why(
        &plan,
        "manual",
        expect![[r#"
            manual (failover, configured_node): running: none; target: none
              not running: auto_run is off and it is not running
              node1: eligible
              node2: eligible
        "#]],
    );
}

#[test]
fn admin_move_to_requested_node() {
    let mut snap = cluster(&["node1", "node2"], &[]);
    snap.packages
        .push(PackageSpec::failover("pkgA", &["node1", "node2"]));
    run(&mut snap, "pkgA", &["node1"]);
    snap.state_mut("pkgA").requested_node = Some("node2".to_owned());
    check(
        &snap,
        expect![[r#"
        placement:
          pkgA: node2
        actions:
          halt pkgA on node1 (admin)
          run pkgA on node2 (admin)
    "#]],
    );
}

#[test]
fn failover_package_found_on_two_nodes_keeps_one() {
    let mut snap = cluster(&["node1", "node2"], &[]);
    snap.packages
        .push(PackageSpec::failover("pkgA", &["node1", "node2"]));
    run(&mut snap, "pkgA", &["node2", "node1"]);
    check(
        &snap,
        expect![[r#"
        placement:
          pkgA: node1
        actions:
          halt pkgA on node2 (duplicate)
    "#]],
    );
}

#[test]
fn node_removed_from_list_moves_the_package() {
    let mut snap = cluster(&["node1", "node2"], &[]);
    snap.packages
        .push(PackageSpec::failover("pkgA", &["node2"]));
    run(&mut snap, "pkgA", &["node1"]);
    let plan = check(
        &snap,
        expect![[r#"
        placement:
          pkgA: node2
        actions:
          halt pkgA on node1 (reconfigured)
          run pkgA on node2 (reconfigured)
    "#]],
    );
    check_why(
        &plan,
        "pkgA",
        expect![[r#"
            pkgA (failover, configured_node): running: node1; target: node2
              chosen: first eligible node in list order
              node2: eligible (placed here)
              node1: not eligible: not in the package's node list
        "#]],
    );
}

#[test]
fn plan_is_deterministic_and_independent_of_package_order() {
    let snap = synthetic_cluster(20, 300, 7);
    let mut reversed = snap.clone();
    reversed.packages.reverse();
    assert_eq!(plan(&snap), plan(&reversed));
}

#[test]
fn synthetic_100_nodes_5000_packages_places_everything() {
    let snap = synthetic_cluster(100, 5000, 42);
    assert_eq!(snap.packages.len(), 5000);
    let pairs = snap
        .packages
        .iter()
        .filter(|p| !p.dependencies.is_empty())
        .count();
    assert!((150..=350).contains(&pairs), "{pairs} dependency pairs");
    let plan = plan(&snap);
    check_invariants(&snap, &plan);
    let unplaced: Vec<&String> = plan
        .placement
        .iter()
        .filter(|(_, n)| n.is_empty())
        .map(|(p, _)| p)
        .collect();
    assert!(unplaced.is_empty(), "not placed: {unplaced:?}");
    assert_eq!(plan.actions.len(), 5000);
    assert!(
        plan.actions
            .iter()
            .all(|a| a.op == Op::Run && a.reason == ActionReason::Startup)
    );
}

#[test]
fn synthetic_cluster_fails_over_a_dead_node() {
    let mut snap = synthetic_cluster(30, 600, 3);
    let first = plan(&snap);
    for (pkg, nodes) in &first.placement {
        run(
            &mut snap,
            pkg,
            &nodes.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    }
    snap.set_node_up("node007", false);
    let second = plan(&snap);
    check_invariants(&snap, &second);
    let moved = first
        .placement
        .values()
        .filter(|n| n.iter().any(|n| n == "node007"))
        .count();
    assert!(moved > 0);
    assert!(
        second
            .placement
            .values()
            .all(|n| !n.iter().any(|n| n == "node007"))
    );
    // Stickiness: only packages that ran on node007, and dependents of
    // those, act.
    let on_dead: BTreeSet<&String> = first
        .placement
        .iter()
        .filter(|(_, n)| n.iter().any(|n| n == "node007"))
        .map(|(p, _)| p)
        .collect();
    for a in &second.actions {
        let spec = snap
            .packages
            .iter()
            .find(|s| s.name == a.package)
            .expect("known package");
        assert!(
            on_dead.contains(&a.package)
                || spec
                    .dependencies
                    .iter()
                    .any(|d| on_dead.contains(&d.package)),
            "{a} acts on a package unrelated to node007"
        );
    }
    assert!(second.actions.len() >= moved);
}

const DESIGN_STATE: &str = r#"
[nodes.node1]
state = "up"                                   # up | down
resources = { "/net/interfaces/eth0/status" = "up", "/fs/data/used_percent" = 42.0 }
[nodes.node2]
state = "up"
resources = { "/net/interfaces/eth0/status" = "down", "/fs/data/used_percent" = 97 }
[nodes.node3]
state = "down"
[packages.ascs]
running_on = ["node1"]
"#;

fn state_specs() -> Vec<PackageSpec> {
    let mut ascs = PackageSpec::failover("ascs", &["node1", "node2", "node3"]);
    needs(&mut ascs, ETH0, Evaluate::BeforeStart);
    let mut fs = PackageSpec::failover("fs", &["*"]);
    needs(&mut fs, "/fs/data/used_percent", Evaluate::BeforeStart);
    vec![ascs, fs]
}

/// Stands in for the criteria engine: status words must be "up", numbers
/// below 90.
fn judge(_: &PackageSpec, _: &str, value: &ResourceValue) -> bool {
    match value {
        ResourceValue::Text(s) => s == "up",
        ResourceValue::Number(n) => *n < 90.0,
    }
}

fn nodes123() -> Vec<String> {
    vec!["node1".to_owned(), "node2".to_owned(), "node3".to_owned()]
}

#[test]
fn state_file_from_design_becomes_a_snapshot() {
    let state = StateFile::parse(DESIGN_STATE, "state.toml").expect("the DESIGN example parses");
    assert_eq!(
        state.nodes["node2"].resources["/fs/data/used_percent"],
        ResourceValue::Number(97.0)
    );
    let snap = state
        .to_snapshot(&nodes123(), state_specs(), judge)
        .expect("matches the config");
    assert_eq!(snap.resource("ascs", "node1", ETH0), Some(true));
    assert_eq!(snap.resource("ascs", "node2", ETH0), Some(false));
    assert_eq!(
        snap.resource("fs", "node2", "/fs/data/used_percent"),
        Some(false)
    );
    assert_eq!(snap.resource("fs", "node3", "/fs/data/used_percent"), None);
    assert_eq!(snap.resource("fs", "node1", ETH0), None);
    assert!(!snap.nodes[2].up);
    let plan = check(
        &snap,
        expect![[r#"
        placement:
          ascs: node1
          fs: node1
        actions:
          run fs on node1 (startup)
    "#]],
    );
    assert_eq!(
        plan.simulate_json(),
        serde_json::json!({
            "placement": { "ascs": "node1", "fs": "node1" },
            "actions": [{ "op": "run", "package": "fs", "node": "node1", "reason": "startup" }],
        })
    );
}

#[test]
fn state_file_cli_overrides_apply() {
    let mut state =
        StateFile::parse(DESIGN_STATE, "state.toml").expect("the DESIGN example parses");
    state.set_node_down("node1");
    state
        .apply_set("node2:/net/interfaces/eth0/status=up")
        .expect("well-formed --set");
    state
        .apply_set("node2:/fs/data/used_percent=12.5")
        .expect("well-formed --set");
    assert_eq!(
        state.nodes["node2"].resources["/fs/data/used_percent"],
        ResourceValue::Number(12.5)
    );
    let snap = state
        .to_snapshot(&nodes123(), state_specs(), judge)
        .expect("matches the config");
    check(
        &snap,
        expect![[r#"
        placement:
          ascs: node2
          fs: node2
        actions:
          run ascs on node2 (failover)
          run fs on node2 (startup)
    "#]],
    );
    assert!(matches!(
        state.apply_set("node2/fs=1"),
        Err(StateFileError::BadSet { .. })
    ));
}

#[test]
fn state_file_errors_name_the_culprit() {
    let err = |text: &str| match StateFile::parse(text, "state.toml") {
        Err(e) => e.to_string(),
        Ok(s) => s
            .to_snapshot(&nodes123(), state_specs(), judge)
            .map(|_| ())
            .expect_err("must fail")
            .to_string(),
    };
    expect!["state file: node node9 is not a cluster node"]
        .assert_eq(&err("[nodes.node9]\nstate = \"up\"\n"));
    expect!["state file: package nope is not configured"]
        .assert_eq(&err("[packages.nope]\nrunning_on = []\n"));
    expect!["state file: package ascs runs on node7, which is not a cluster node"]
        .assert_eq(&err("[packages.ascs]\nrunning_on = [\"node7\"]\n"));
    expect![[r#"
        state.toml: TOML parse error at line 2, column 9
          |
        2 | state = "sideways"
          |         ^^^^^^^^^^
        unknown variant `sideways`, expected `up` or `down`
    "#]]
    .assert_eq(&err("[nodes.node1]\nstate = \"sideways\"\n"));
    expect![[r#"
        state.toml: TOML parse error at line 3, column 1
          |
        3 | colour = 1
          | ^^^^^^
        unknown field `colour`, expected one of `state`, `resources`, `switching`
    "#]]
    .assert_eq(&err("[nodes.node1]\nstate = \"up\"\ncolour = 1\n"));
}
#[test]
fn any_node_and_all_nodes_dependencies_on_a_multi_node_package() {
    let mut snap = cluster(&["node1", "node2", "node3"], &[]);
    let mut storage = PackageSpec::failover("storage", &["*"]);
    storage.kind = PackageKind::MultiNode;
    needs(&mut storage, ETH0, Evaluate::BeforeStart);
    let mut anywhere = PackageSpec::failover("anywhere", &["node3"]);
    depends(
        &mut anywhere,
        "storage",
        DependencyCondition::Up,
        DependencyLocation::AnyNode,
    );
    let mut everywhere = PackageSpec::failover("everywhere", &["node3"]);
    depends(
        &mut everywhere,
        "storage",
        DependencyCondition::Up,
        DependencyLocation::AllNodes,
    );
    snap.packages = vec![anywhere, everywhere, storage];
    snap.set_all_resources_up();
    // storage cannot run on node3: any_node still holds there, all_nodes not.
    snap.set_resource("storage", "node3", ETH0, false);
    let plan = check(
        &snap,
        expect![[r#"
        placement:
          anywhere: node3
          everywhere: nowhere
          storage: node1, node2
        actions:
          run storage on node1 (startup)
          run storage on node2 (startup)
          run anywhere on node3 (startup)
    "#]],
    );
    check_why(
        &plan,
        "everywhere",
        expect![[r#"
            everywhere (failover, configured_node): running: none; target: none
              not running: no eligible node
              node3: not eligible: dependency not met: storage must be up on all nodes
        "#]],
    );

    // Once storage runs on every up node, all_nodes holds too.
    snap.set_resource("storage", "node3", ETH0, true);
    check(
        &snap,
        expect![[r#"
        placement:
          anywhere: node3
          everywhere: node3
          storage: node1, node2, node3
        actions:
          run storage on node1 (startup)
          run storage on node2 (startup)
          run storage on node3 (startup)
          run anywhere on node3 (startup)
          run everywhere on node3 (startup)
    "#]],
    );
}

#[test]
fn snapshot_and_plan_round_trip_through_json() {
    let mut snap = seed("node1");
    snap.set_resource("ascs", "node2", ETH0, true);
    let text = serde_json::to_string(&snap).expect("snapshot serializes");
    let back: ClusterSnapshot = serde_json::from_str(&text).expect("snapshot deserializes");
    assert_eq!(back, snap);
    let plan = plan(&snap);
    let text = serde_json::to_string(&plan).expect("plan serializes");
    let back: Plan = serde_json::from_str(&text).expect("plan deserializes");
    assert_eq!(back, plan);
}

/// The issue's example: `db` avoids `app`; app's node fails and only db's
/// node is left. The avoided package is placed as if its avoider did not
/// exist; the avoider yields (here it stops, having nowhere else to go).
#[test]
fn avoider_stops_when_the_avoided_package_needs_its_only_node() {
    let mut snap = cluster(&["node2"], &["node1"]);
    let app = PackageSpec::failover("app", &["node1", "node2"]);
    let mut db = PackageSpec::failover("db", &["node2"]);
    db.avoid = vec!["app".to_owned()];
    snap.packages = vec![app, db];
    run(&mut snap, "app", &["node1"]);
    run(&mut snap, "db", &["node2"]);
    let plan = check(
        &snap,
        expect![[r#"
            placement:
              app: node2
              db: nowhere
            actions:
              halt db on node2 (avoid)
              run app on node2 (failover)
        "#]],
    );
    check_why(
        &plan,
        "db",
        expect![[r#"
            db (failover, configured_node): running: node2; target: none
              not running: no eligible node
              db: stopped on node2: avoids app, which needed node2
              node2: not eligible: avoids app, which needed this node
        "#]],
    );
}

#[test]
fn avoider_moves_away_when_the_avoided_package_needs_its_node() {
    let mut snap = cluster(&["node2", "node3"], &["node1"]);
    let app = PackageSpec::failover("app", &["node1", "node2"]);
    let mut db = PackageSpec::failover("db", &["node2", "node3"]);
    db.avoid = vec!["app".to_owned()];
    snap.packages = vec![app, db];
    run(&mut snap, "app", &["node1"]);
    run(&mut snap, "db", &["node2"]);
    let plan = check(
        &snap,
        expect![[r#"
            placement:
              app: node2
              db: node3
            actions:
              halt db on node2 (avoid)
              run app on node2 (failover)
              run db on node3 (avoid)
        "#]],
    );
    check_why(
        &plan,
        "db",
        expect![[r#"
            db (failover, configured_node): running: node2; target: node3
              chosen: first eligible node in list order
              db: moved from node2: avoids app, which needed node2
              node2: not eligible: avoids app, which needed this node
              node3: eligible (placed here)
        "#]],
    );
}

/// At initial placement the avoided package wins, whatever the names (name
/// order used to decide).
#[test]
fn initial_placement_gives_the_node_to_the_avoided_package_not_the_first_name() {
    let mut snap = cluster(&["node1"], &[]);
    let mut aaa = PackageSpec::failover("aaa", &["node1"]);
    aaa.avoid = vec!["zzz".to_owned()];
    let zzz = PackageSpec::failover("zzz", &["node1"]);
    snap.packages = vec![aaa, zzz];
    let plan = check(
        &snap,
        expect![[r#"
            placement:
              aaa: nowhere
              zzz: node1
            actions:
              run zzz on node1 (startup)
        "#]],
    );
    check_why(
        &plan,
        "aaa",
        expect![[r#"
            aaa (failover, configured_node): running: none; target: none
              not running: no eligible node
              node1: not eligible: avoids zzz, which runs there
        "#]],
    );
}

/// An avoider strictly more important than the package it avoids is placed
/// first; the avoided package may not use its node.
#[test]
fn strictly_more_important_avoider_keeps_its_node() {
    let mut snap = cluster(&["node2"], &["node1"]);
    let mut app = PackageSpec::failover("app", &["node1", "node2"]);
    app.priority = Some(5);
    let mut db = PackageSpec::failover("db", &["node2"]);
    db.avoid = vec!["app".to_owned()];
    db.priority = Some(1);
    snap.packages = vec![app, db];
    run(&mut snap, "app", &["node1"]);
    run(&mut snap, "db", &["node2"]);
    let plan = check(
        &snap,
        expect![[r#"
            placement:
              app: nowhere
              db: node2
            actions:
              none
        "#]],
    );
    check_why(
        &plan,
        "app",
        expect![[r#"
            app (failover, configured_node, priority 5): running: node1; target: none
              not running: no eligible node
              node1: not eligible: node is down
              node2: not eligible: db runs there and avoids this package
        "#]],
    );
}

/// Two packages that avoid each other: the more important one is placed
/// first; at equal priority, the first by name.
#[test]
fn mutual_avoid_goes_by_priority_then_name() {
    let mut snap = cluster(&["node1"], &[]);
    let mut x = PackageSpec::failover("x", &["node1"]);
    x.avoid = vec!["y".to_owned()];
    let mut y = PackageSpec::failover("y", &["node1"]);
    y.avoid = vec!["x".to_owned()];
    snap.packages = vec![x, y];
    run(&mut snap, "y", &["node1"]);
    check(
        &snap,
        expect![[r#"
            placement:
              x: node1
              y: nowhere
            actions:
              halt y on node1 (avoid)
              run x on node1 (startup)
        "#]],
    );
    snap.packages[1].priority = Some(1);
    check(
        &snap,
        expect![[r#"
            placement:
              x: nowhere
              y: node1
            actions:
              none
        "#]],
    );
}

/// The live flapping (halt/start ~4 times a second): min_package_node with
/// automatic failback was halted to move to an earlier node of its list,
/// and once down min_package_node chose the old node again. Failback now
/// goes only to the primary node, and a plan made while it is down agrees.
fn min_package_failback_snapshot() -> ClusterSnapshot {
    let mut snap = cluster(&["node2", "node3"], &["node1"]);
    let mut app = PackageSpec::failover("app", &["node1", "node3", "node2"]);
    app.failover_policy = FailoverPolicy::MinPackageNode;
    app.failback_policy = FailbackPolicy::Automatic;
    snap.packages.push(app);
    for busy in ["busy1", "busy2"] {
        snap.packages.push(PackageSpec::failover(busy, &["node3"]));
        run(&mut snap, busy, &["node3"]);
    }
    run(&mut snap, "app", &["node2"]);
    snap
}

#[test]
fn min_package_node_failback_goes_only_to_the_primary_node() {
    let mut snap = min_package_failback_snapshot();
    check(
        &snap,
        expect![[r#"
            placement:
              app: node2
              busy1: node3
              busy2: node3
            actions:
              none
        "#]],
    );
    // The primary is back: failback moves it there, and a start goes there
    // too.
    snap.set_node_up("node1", true);
    let plan = check(
        &snap,
        expect![[r#"
            placement:
              app: node1
              busy1: node3
              busy2: node3
            actions:
              halt app on node2 (failback)
              run app on node1 (failback)
        "#]],
    );
    apply(&mut snap, &plan.actions[0]);
    check(
        &snap,
        expect![[r#"
            placement:
              app: node1
              busy1: node3
              busy2: node3
            actions:
              run app on node1 (failover)
        "#]],
    );
}

#[test]
fn min_package_node_failback_is_not_planned_back_once_halted() {
    let snap = min_package_failback_snapshot();
    let running = plan(&snap);
    let mut down = snap.clone();
    run(&mut down, "app", &[]);
    let restarted = plan(&down);
    assert_eq!(running.placement["app"], restarted.placement["app"]);
    check_convergence(&snap).expect("converges");
}

/// min_package_node counts the new placement as packages are placed: a
/// package that is leaving a node does not count there.
#[test]
fn min_package_node_does_not_count_a_package_that_is_leaving() {
    let mut snap = cluster(&["node2", "node3", "node4"], &["node1"]);
    for pkg in ["x", "y"] {
        let mut spec = PackageSpec::failover(pkg, &["node1", "node2", "node3"]);
        spec.failover_policy = FailoverPolicy::MinPackageNode;
        spec.priority = Some(1);
        snap.packages.push(spec);
        run(&mut snap, pkg, &["node1"]);
    }
    let mut leaving = PackageSpec::failover("leaving", &["node2", "node4"]);
    needs(&mut leaving, ETH0, Evaluate::BeforeStart);
    snap.packages.push(leaving);
    run(&mut snap, "leaving", &["node2"]);
    snap.set_all_resources_up();
    snap.set_resource("leaving", "node2", ETH0, false);
    let plan = check(
        &snap,
        expect![[r#"
            placement:
              leaving: node4
              x: node2
              y: node3
            actions:
              halt leaving on node2 (resource_down)
              run x on node2 (failover)
              run y on node3 (failover)
              run leaving on node4 (resource_down)
        "#]],
    );
    check_why(
        &plan,
        "y",
        expect![[r#"
            y (failover, min_package_node, priority 1): running: node1; target: node3
              chosen: eligible node running the fewest packages (0)
              node1: not eligible: node is down
              node2: eligible
              node3: eligible (placed here)
        "#]],
    );
}

/// DESIGN §6, "placement converges", on random scenarios: carrying out a
/// plan and planning again gives no action, and no package is halted and
/// planned back onto the same node (after any part of a plan, or along the
/// coordinator's one-action-at-a-time walk). A fixed seed and a case count
/// that keeps this to seconds in the dev profile; `bench/src/bin/convergence`
/// runs 100,000 and more in release.
#[test]
fn plans_converge_on_random_scenarios() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};

    let config = Config {
        cases: 1_500,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[8; 32]);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let choices = proptest::collection::vec(any::<u16>(), 0..300);
    let result = runner.run(&choices, |choices| {
        let mut next = choices.iter();
        let snap = random_scenario(&mut |n| next.next().map_or(0, |&c| usize::from(c) % n));
        check_convergence(&snap)
            .map_err(|e| TestCaseError::fail(format!("{e}\nscenario:\n{}", describe(&snap))))
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, choices)) => {
            panic!("{reason}\n(minimal choices: {choices:?})")
        }
        Err(e) => panic!("{e}"),
    }
}

/// A failover package `name` on `nodes` with the defaults, for the
/// convergence regression table.
fn pkg(name: &str, nodes: &[&str], tune: impl FnOnce(&mut PackageSpec)) -> PackageSpec {
    let mut spec = PackageSpec::failover(name, nodes);
    tune(&mut spec);
    spec
}

fn avoids(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// Plans, checks the plan's invariants and the convergence property, and
/// compares the plan's rendering; returns the failure instead of panicking,
/// so that one table run names every case that fails.
fn check_converges(name: &str, snap: &ClusterSnapshot, expect: Expect) -> Option<String> {
    let failure = check_convergence(snap)
        .err()
        .map(|e| format!("{name}: {e}\n{}", describe(snap)));
    let plan = plan(snap);
    check_invariants(snap, &plan);
    if failure.is_none() {
        expect.assert_eq(&plan.to_string());
    }
    failure
}

/// Scenarios the long convergence run (`bench/src/bin/convergence.rs`)
/// found failing, shrunk, one row per cause, named after what broke.
#[test]
fn plans_converge_on_shrunk_regressions() {
    let five = ["node1", "node2", "node3", "node4", "node5"];
    let cases: Vec<(&str, ClusterSnapshot, Expect)> = vec![
        (
            // seed 95200
            "move_of_an_auto_run_off_package_starts_it_after_its_halt",
            {
                let mut snap = cluster(&["node1", "node2", "node3"], &[]);
                let b = pkg("b", &["node1", "node2", "node3"], |s| s.auto_run = false);
                let c = pkg("c", &["node1", "node2", "node3"], |s| {
                    s.avoid = avoids(&["b"])
                });
                snap.packages = vec![b, c];
                run(&mut snap, "b", &["node2"]);
                snap.state_mut("b").requested_node = Some("node1".to_owned());
                run(&mut snap, "c", &["node1"]);
                snap
            },
            expect![[r#"
                placement:
                  b: node1
                  c: node2
                actions:
                  halt c on node1 (avoid)
                  halt b on node2 (admin)
                  run b on node1 (admin)
                  run c on node2 (avoid)
            "#]],
        ),
        (
            // seed 78798
            "move_of_a_package_with_switching_disabled_starts_it_after_its_halt",
            {
                let mut snap = cluster(&["node1", "node2"], &[]);
                let b = pkg("b", &["*"], |_| {});
                let mut f = pkg("f", &["node1"], |s| s.avoid = avoids(&["b"]));
                f.kind = PackageKind::MultiNode;
                snap.packages = vec![b, f];
                run(&mut snap, "b", &["node2"]);
                snap.state_mut("b").requested_node = Some("node1".to_owned());
                snap.state_mut("b").switching_enabled = false;
                run(&mut snap, "f", &["node1"]);
                snap
            },
            expect![[r#"
                placement:
                  b: node1
                  f: nowhere
                actions:
                  halt f on node1 (avoid)
                  halt b on node2 (admin)
                  run b on node1 (admin)
            "#]],
        ),
        (
            // seed 50953
            "move_of_a_more_important_avoider_starts_it_after_its_halt",
            {
                let mut snap = cluster(&["node1", "node2", "node3"], &[]);
                let b = pkg("b", &["node1"], |_| {});
                let f = pkg("f", &["node1", "node2", "node3"], |s| {
                    s.priority = Some(1);
                    s.auto_run = false;
                    s.avoid = avoids(&["b"]);
                });
                snap.packages = vec![b, f];
                run(&mut snap, "b", &["node1"]);
                run(&mut snap, "f", &["node2"]);
                snap.state_mut("f").requested_node = Some("node1".to_owned());
                snap
            },
            expect![[r#"
                placement:
                  b: nowhere
                  f: node1
                actions:
                  halt b on node1 (displaced)
                  halt f on node2 (admin)
                  run f on node1 (admin)
            "#]],
        ),
        (
            // seed 48860
            "follower_placed_before_the_leader_that_avoids_it_runs_first",
            {
                let mut snap = cluster(&["node1", "node2", "node3", "node4"], &[]);
                let four = ["node1", "node2", "node3", "node4"];
                let a = pkg("a", &four, |s| s.avoid = avoids(&["b"]));
                let b = pkg("b", &four, |s| {
                    s.follow = Some("a".to_owned());
                    s.avoid = avoids(&["d"]);
                });
                let d = pkg("d", &four, |s| s.follow = Some("a".to_owned()));
                snap.packages = vec![a, b, d];
                run(&mut snap, "d", &["node3"]);
                snap
            },
            expect![[r#"
                placement:
                  a: node2
                  b: node1
                  d: node3
                actions:
                  run b on node1 (startup)
                  run a on node2 (startup)
            "#]],
        ),
        (
            // seed 21912
            "leader_started_first_does_not_draw_its_follower_into_a_handover",
            {
                let mut snap = cluster(&five, &[]);
                let mut a = pkg("a", &["node1", "node2", "node3", "node5"], |s| {
                    s.failover_policy = FailoverPolicy::MinPackageNode;
                    s.avoid = avoids(&["b"]);
                });
                needs(&mut a, "/r", Evaluate::BeforeStart);
                let b = pkg("b", &["*"], |s| s.follow = Some("a".to_owned()));
                let e = pkg("e", &["node1"], |_| {});
                let mut f = pkg("f", &["*"], |_| {});
                depends(
                    &mut f,
                    "a",
                    DependencyCondition::Up,
                    DependencyLocation::SameNode,
                );
                snap.packages = vec![a, b, e, f];
                for n in five {
                    snap.set_resource("a", n, "/r", n != "node3");
                }
                run(&mut snap, "f", &["node5"]);
                snap
            },
            expect![[r#"
                placement:
                  a: node2
                  b: node1
                  e: node1
                  f: node2
                actions:
                  halt f on node5 (dependency)
                  run b on node1 (startup)
                  run a on node2 (startup)
                  run f on node2 (dependency)
                  run e on node1 (startup)
            "#]],
        ),
        (
            // seed 50708
            "avoid_order_kept_when_a_frozen_package_is_halted_for_its_dependency",
            {
                let mut snap = cluster(&five, &[]);
                let mut b = pkg("b", &["node3"], |s| {
                    s.priority = Some(1);
                    s.avoid = avoids(&["e"]);
                });
                let c = pkg("c", &five, |s| s.avoid = avoids(&["b"]));
                let mut e = pkg("e", &["node1", "node2", "node3"], |_| {});
                depends(
                    &mut e,
                    "c",
                    DependencyCondition::Up,
                    DependencyLocation::SameNode,
                );
                b.resources.clear();
                snap.packages = vec![b, c, e];
                snap.state_mut("c").requested_node = Some("node3".to_owned());
                run(&mut snap, "e", &["node1"]);
                snap.state_mut("e").switching_enabled = false;
                snap
            },
            expect![[r#"
                placement:
                  b: node3
                  c: node1
                  e: node1
                actions:
                  run b on node3 (startup)
                  run c on node1 (startup)
            "#]],
        ),
        (
            // seed 52501
            "failback_of_a_duplicate_sees_the_node_it_would_start_on",
            {
                let mut snap = cluster(&five, &[]);
                let b = pkg("b", &["node4"], |_| {});
                let e = pkg("e", &["*"], |s| {
                    s.failback_policy = FailbackPolicy::Automatic;
                    s.follow = Some("b".to_owned());
                });
                snap.packages = vec![b, e];
                run(&mut snap, "e", &["node2", "node4"]);
                snap
            },
            expect![[r#"
                placement:
                  b: node4
                  e: node2
                actions:
                  halt e on node4 (duplicate)
                  run b on node4 (startup)
            "#]],
        ),
        (
            // seed 133173
            "more_important_avoider_not_kept_out_by_a_frozen_package_that_leaves",
            {
                let mut snap = cluster(&five, &[]);
                let a = pkg("a", &["node5"], |s| {
                    s.priority = Some(1);
                    s.avoid = avoids(&["e", "d"]);
                });
                let mut d = pkg("d", &["node1", "node2", "node3", "node5"], |_| {});
                needs(&mut d, "/r", Evaluate::BeforeStart);
                let mut e = pkg("e", &five, |_| {});
                depends(
                    &mut e,
                    "d",
                    DependencyCondition::Up,
                    DependencyLocation::SameNode,
                );
                snap.packages = vec![a, d, e];
                for n in five {
                    snap.set_resource("d", n, "/r", n != "node2" && n != "node3");
                }
                run(&mut snap, "d", &["node1"]);
                snap.state_mut("d").failed_on.insert("node1".to_owned());
                run(&mut snap, "e", &["node1"]);
                snap.state_mut("e").switching_enabled = false;
                snap
            },
            expect![[r#"
                placement:
                  a: node5
                  d: nowhere
                  e: nowhere
                actions:
                  halt e on node1 (dependency)
                  halt d on node1 (failover)
                  run a on node5 (startup)
            "#]],
        ),
        (
            // seed 142746
            "follower_starts_before_its_avoiding_leader_when_the_leader_is_not_running",
            {
                let mut snap = cluster(&["node1", "node3"], &["node2"]);
                let c = pkg("c", &["node1"], |s| {
                    s.priority = Some(2);
                    s.avoid = avoids(&["d"]);
                });
                let d = pkg("d", &["node3", "node1"], |s| {
                    s.priority = Some(2);
                    s.follow = Some("c".to_owned());
                });
                let mut e = pkg("e", &["node1"], |_| {});
                depends(
                    &mut e,
                    "d",
                    DependencyCondition::Up,
                    DependencyLocation::SameNode,
                );
                snap.packages = vec![c, d, e];
                run(&mut snap, "e", &["node1"]);
                snap
            },
            expect![[r#"
                placement:
                  c: node1
                  d: node3
                  e: nowhere
                actions:
                  halt e on node1 (dependency)
                  run d on node3 (startup)
                  run c on node1 (startup)
            "#]],
        ),
        (
            // seed 152213
            "no_handover_when_a_cycle_put_the_follower_first",
            {
                let mut snap = cluster(&five, &[]);
                let a = pkg("a", &["node1"], |s| {
                    s.priority = Some(1);
                    s.avoid = avoids(&["d", "b"]);
                });
                let b = pkg("b", &["node2", "node1", "node3", "node4", "node5"], |s| {
                    s.follow = Some("a".to_owned());
                });
                let mut d = pkg("d", &["node1", "node2", "node3"], |s| s.priority = Some(1));
                depends(
                    &mut d,
                    "b",
                    DependencyCondition::Up,
                    DependencyLocation::SameNode,
                );
                snap.packages = vec![a, b, d];
                snap
            },
            expect![[r#"
                placement:
                  a: node1
                  b: node2
                  d: node2
                actions:
                  run b on node2 (startup)
                  run d on node2 (startup)
                  run a on node1 (startup)
            "#]],
        ),
        (
            // seed 171433
            "no_handover_when_a_cycle_dropped_the_avoid_edge",
            {
                let mut snap = cluster(&["node1", "node2", "node3"], &[]);
                let a = pkg("a", &["node1"], |s| s.avoid = avoids(&["c"]));
                let mut b = pkg("b", &["node1", "node2", "node3"], |s| {
                    s.priority = Some(1);
                    s.avoid = avoids(&["c", "a"]);
                });
                depends(
                    &mut b,
                    "a",
                    DependencyCondition::Up,
                    DependencyLocation::DifferentNode,
                );
                let c = pkg("c", &["node1", "node2", "node3"], |s| {
                    s.follow = Some("b".to_owned());
                });
                snap.packages = vec![a, b, c];
                run(&mut snap, "b", &["node2"]);
                snap
            },
            expect![[r#"
                placement:
                  a: nowhere
                  b: nowhere
                  c: node1
                actions:
                  halt b on node2 (dependency)
                  run c on node1 (startup)
            "#]],
        ),
        (
            // seed 48860 (a second cause, found once the first was fixed)
            "run_order_is_the_placement_order_when_a_stopped_follower_closes_a_cycle",
            {
                let mut snap = cluster(&["node1", "node2", "node3", "node4"], &[]);
                let four = ["node1", "node2", "node3", "node4"];
                let a = pkg("a", &four, |s| s.avoid = avoids(&["b"]));
                let b = pkg("b", &four, |s| {
                    s.follow = Some("a".to_owned());
                    s.avoid = avoids(&["d"]);
                });
                let d = pkg("d", &four, |s| {
                    s.follow = Some("a".to_owned());
                    s.auto_run = false;
                });
                snap.packages = vec![a, b, d];
                snap
            },
            expect![[r#"
                placement:
                  a: node2
                  b: node1
                  d: nowhere
                actions:
                  run b on node1 (startup)
                  run a on node2 (startup)
            "#]],
        ),
        (
            // seed 119818
            "avoid_order_kept_when_a_package_with_switching_disabled_leaves",
            {
                let mut snap = cluster(&["node1"], &[]);
                let a = pkg("a", &["node1"], |s| s.avoid = avoids(&["c"]));
                let mut b = pkg("b", &["node1"], |s| s.avoid = avoids(&["a"]));
                b.kind = PackageKind::MultiNode;
                let mut c = pkg("c", &["node1"], |_| {});
                depends(
                    &mut c,
                    "b",
                    DependencyCondition::Up,
                    DependencyLocation::SameNode,
                );
                snap.packages = vec![a, b, c];
                run(&mut snap, "c", &["node1"]);
                snap.state_mut("c").switching_enabled = false;
                snap
            },
            expect![[r#"
                placement:
                  a: node1
                  b: nowhere
                  c: nowhere
                actions:
                  halt c on node1 (dependency)
                  run a on node1 (startup)
            "#]],
        ),
    ];
    let failures: Vec<String> = cases
        .into_iter()
        .filter_map(|(name, snap, expect)| check_converges(name, &snap, expect))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
