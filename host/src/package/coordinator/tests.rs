//! Decision tests: one scenario per row, named after what it proves; the
//! effects are compared as text, one per line. Several rows are the
//! defects outside testing found, kept as regressions.

use expect_test::{Expect, expect};

use super::*;
use crate::placement::{Evaluate, ResourceRequirement};
use crate::store::{AdminRequest, FenceToken, NodeRecord, PackageRecord, Versioned};

const NODES: [&str; 3] = ["node1", "node2", "node3"];

/// The facts of one decision, built up from a three-node cluster whose
/// nodes are all live and up, seen from `node`.
struct Scenario {
    node: &'static str,
    cluster_nodes: Vec<String>,
    specs: Vec<PackageSpec>,
    store: Snapshot,
    verdicts: ResourceVerdicts,
    in_flight: BTreeSet<String>,
    claiming: BTreeSet<String>,
    running_here: BTreeSet<String>,
    adopting: BTreeSet<String>,
    failures: BTreeMap<String, String>,
    deferred_down: BTreeMap<String, String>,
    guard_halting: BTreeSet<String>,
    redefined: BTreeSet<String>,
    retired: BTreeSet<String>,
    lease_in_doubt: bool,
    max_parallel: usize,
}

fn failover(name: &str) -> PackageSpec {
    PackageSpec::failover(name, &NODES)
}

fn requiring(mut spec: PackageSpec, resource: &str, evaluate: Evaluate) -> PackageSpec {
    spec.resources.push(ResourceRequirement {
        name: resource.to_owned(),
        evaluate,
    });
    spec
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|i| (*i).to_owned()).collect()
}

impl Scenario {
    fn seen_from(node: &'static str) -> Self {
        let mut store = Snapshot::default();
        for name in NODES {
            store.nodes.insert(
                name.to_owned(),
                Versioned {
                    value: NodeRecord {
                        name: name.to_owned(),
                        state: NodeState::Up,
                        updated_ms: 0,
                        maintenance: false,
                    },
                    mod_revision: 1,
                },
            );
        }
        Self {
            node,
            cluster_nodes: NODES.iter().map(|n| (*n).to_owned()).collect(),
            specs: Vec::new(),
            store,
            verdicts: ResourceVerdicts::default(),
            in_flight: BTreeSet::new(),
            claiming: BTreeSet::new(),
            running_here: BTreeSet::new(),
            adopting: BTreeSet::new(),
            failures: BTreeMap::new(),
            deferred_down: BTreeMap::new(),
            guard_halting: BTreeSet::new(),
            redefined: BTreeSet::new(),
            retired: BTreeSet::new(),
            lease_in_doubt: false,
            max_parallel: 32,
        }
    }

    /// A package, recorded down everywhere until [`Self::record`] says otherwise.
    fn package(mut self, spec: PackageSpec) -> Self {
        let name = spec.name.clone();
        self.specs.push(spec);
        self.record(&name, PackageState::Down, &[])
    }

    /// The package's record; each change gets a higher revision.
    fn record(self, package: &str, state: PackageState, owners: &[&str]) -> Self {
        self.edit(package, |r| {
            r.state = state;
            r.owners = owners.iter().map(|o| (*o).to_owned()).collect();
        })
    }

    fn edit(mut self, package: &str, change: impl FnOnce(&mut PackageRecord)) -> Self {
        let revision = self.store.revision + 1;
        let mut record = self.store.packages.get(package).map_or_else(
            || PackageRecord {
                name: package.to_owned(),
                state: PackageState::Down,
                owners: Vec::new(),
                fence_token: FenceToken(1),
                switching: true,
                disabled_nodes: BTreeSet::new(),
                failed_on: BTreeSet::new(),
                reason: "configured".into(),
                updated_ms: 0,
                admin: AdminRequest::default(),
                left: None,
            },
            |r| r.value.clone(),
        );
        change(&mut record);
        self.store.revision = revision;
        self.store.packages.insert(
            package.to_owned(),
            Versioned {
                value: record,
                mod_revision: revision,
            },
        );
        self
    }

    /// The node's lease expired: its record is gone from the store.
    fn gone(mut self, node: &str) -> Self {
        self.store.nodes.remove(node);
        self
    }

    /// `vigil node halt`.
    fn drained(mut self, node: &str) -> Self {
        if let Some(n) = self.store.nodes.get_mut(node) {
            n.value.state = NodeState::Halted;
        }
        self
    }

    /// `vigil pkg maintenance NAME on`.
    fn in_maintenance(self, package: &str) -> Self {
        self.edit(package, |r| r.admin.maintenance = true)
    }

    /// `vigil node maintenance NAME on`.
    fn node_in_maintenance(mut self, node: &str) -> Self {
        if let Some(n) = self.store.nodes.get_mut(node) {
            n.value.maintenance = true;
        }
        self
    }

    fn verdict(mut self, package: &str, node: &str, resource: &str, up: bool) -> Self {
        self.verdicts
            .entry(package.to_owned())
            .or_default()
            .entry(node.to_owned())
            .or_default()
            .insert(resource.to_owned(), up);
        self
    }

    fn facts(&self) -> Facts<'_> {
        Facts {
            node: self.node,
            cluster_nodes: &self.cluster_nodes,
            packages: &self.specs,
            store: &self.store,
            verdicts: &self.verdicts,
            in_flight: &self.in_flight,
            claiming: &self.claiming,
            running_here: &self.running_here,
            adopting: &self.adopting,
            failures: &self.failures,
            deferred_down: &self.deferred_down,
            guard_halting: &self.guard_halting,
            redefined: &self.redefined,
            retired: &self.retired,
            lease_in_doubt: self.lease_in_doubt,
            max_parallel: self.max_parallel,
        }
    }
}

/// Decides once from `scenario` and compares the effects, one per line
/// (empty: nothing to do).
fn check(scenario: &Scenario, expect: Expect) {
    let effects: Vec<String> = decide(&scenario.facts())
        .iter()
        .map(ToString::to_string)
        .collect();
    expect.assert_eq(&effects.join("\n"));
}

#[test]
fn a_fresh_cluster_starts_every_package_on_its_first_node_at_once() {
    let s = Scenario::seen_from("node1")
        .package(failover("a"))
        .package(failover("b"));
    check(
        &s,
        expect![[r#"
            write a: starting on [node1] "starting on node1 (startup)"; then claim and run (startup)
            write b: starting on [node1] "starting on node1 (startup)"; then claim and run (startup)"#]],
    );
    // The other nodes have nothing to do.
    let mut s = s;
    s.node = "node2";
    check(&s, expect![[""]]);
}

#[test]
fn the_first_live_node_records_that_a_gone_owner_runs_nothing() {
    let s = Scenario::seen_from("node2")
        .package(failover("a"))
        .package(failover("b"))
        .record("a", PackageState::Up, &["node1"])
        .record("b", PackageState::Starting, &["node1"])
        .gone("node1");
    check(
        &s,
        expect![[r#"
            write a: down on [], left node1 "its node node1 is gone"
            write b: down on [], left node1 "its node node1 is gone""#]],
    );
    // One node writes them: node3 waits for node2's records.
    let mut s = s;
    s.node = "node3";
    check(&s, expect![[""]]);
}

#[test]
fn packages_that_left_a_gone_node_all_fail_over_at_once() {
    let mut s = Scenario::seen_from("node2").gone("node1");
    for p in ["a", "b", "c"] {
        s = s
            .package(failover(p))
            .edit(p, |r| r.left = Some("node1".into()));
    }
    check(
        &s,
        expect![[r#"
            write a: starting on [node2] "starting on node2 (failover)"; then claim and run (failover)
            write b: starting on [node2] "starting on node2 (failover)"; then claim and run (failover)
            write c: starting on [node2] "starting on node2 (failover)"; then claim and run (failover)"#]],
    );
}

#[test]
fn no_more_than_max_parallel_actions_are_under_way_here() {
    let mut s = Scenario::seen_from("node1");
    for p in ["a", "b", "c", "d"] {
        s = s.package(failover(p));
    }
    s.max_parallel = 3;
    s.claiming = set(&["a"]);
    s = s.record("a", PackageState::Starting, &["node1"]);
    check(
        &s,
        expect![[r#"
            write b: starting on [node1] "starting on node1 (startup)"; then claim and run (startup)
            write c: starting on [node1] "starting on node1 (startup)"; then claim and run (startup)"#]],
    );
}

/// Seen live: a host frozen past its lease, thawed, still runs its copy
/// while the package runs on node2 under a newer fence token.
#[test]
fn a_copy_whose_ownership_moved_is_halted_without_touching_its_record() {
    let mut s = Scenario::seen_from("node1")
        .package(failover("web"))
        .record("web", PackageState::Up, &["node2"]);
    s.running_here = set(&["web"]);
    check(
        &s,
        expect![[r#"halt web here (lost_ownership), record untouched"#]],
    );
}

#[test]
fn a_start_abandoned_after_a_store_error_is_set_straight() {
    let s = Scenario::seen_from("node1")
        .package(failover("web"))
        .record("web", PackageState::Starting, &["node1"]);
    check(
        &s,
        expect![[r#"write web: down on [] "start or halt on node1 abandoned""#]],
    );
}

/// Was a defect: a package recorded as starting here and waiting for its
/// run permit (held by a node that has not released it yet) was taken for
/// an abandoned start, set to down, and planned again, in a loop.
#[test]
fn a_start_waiting_for_its_run_permit_is_not_taken_for_abandoned() {
    let mut s = Scenario::seen_from("node1")
        .package(failover("web"))
        .record("web", PackageState::Starting, &["node1"]);
    s.claiming = set(&["web"]);
    check(&s, expect![[""]]);
}

#[test]
fn a_node_whose_lease_is_in_doubt_halts_everything_and_starts_nothing() {
    let mut s = Scenario::seen_from("node1")
        .package(failover("web"))
        .package(failover("db"))
        .record("web", PackageState::Up, &["node1"]);
    s.running_here = set(&["web"]);
    s.lease_in_doubt = true;
    check(
        &s,
        expect![[
            r#"write web: halting on [node1] "halting on node1 (lease_lost)"; then halt (lease_lost)"#
        ]],
    );
}

#[test]
fn a_failed_service_halts_its_package_and_fails_it_here_before_anything_is_planned() {
    let mut s = Scenario::seen_from("node1")
        .package(failover("web"))
        .package(failover("db"))
        .record("web", PackageState::Up, &["node1"]);
    s.running_here = set(&["web"]);
    s.failures
        .insert("web".into(), "service server failed on node1".into());
    check(
        &s,
        expect![[
            r#"write web: halting on [node1] "halting on node1 (service_failed)"; then halt (service_failed) and fail: service server failed on node1"#
        ]],
    );
}

#[test]
fn a_drained_node_halts_every_package_it_runs() {
    let mut s = Scenario::seen_from("node1")
        .package(failover("web"))
        .package(failover("db"))
        .package(failover("idle"))
        .record("web", PackageState::Up, &["node1"])
        .record("db", PackageState::Up, &["node1"])
        .drained("node1");
    s.running_here = set(&["web", "db"]);
    check(
        &s,
        expect![[r#"
            write web: halting on [node1] "halting on node1 (node_halt)"; then halt (node_halt)
            write db: halting on [node1] "halting on node1 (node_halt)"; then halt (node_halt)"#]],
    );
}

/// The local fast path: a required resource down here halts the package
/// even when every slot of max_parallel_actions is taken.
#[test]
fn a_required_resource_down_here_halts_at_once_even_with_no_room_left() {
    const LINK: &str = "/net/interfaces/eth0/status";
    let mut s = Scenario::seen_from("node1")
        .package(requiring(failover("web"), LINK, Evaluate::BeforeStart))
        .package(failover("a"))
        .record("web", PackageState::Up, &["node1"])
        .record("a", PackageState::Starting, &["node1"])
        .verdict("web", "node1", LINK, false)
        .verdict("web", "node2", LINK, true)
        .verdict("web", "node3", LINK, true);
    s.running_here = set(&["web"]);
    s.in_flight = set(&["a"]);
    s.max_parallel = 1;
    check(
        &s,
        expect![[
            r#"write web: halting on [node1] "halting on node1 (resource_down)"; then halt (resource_down)"#
        ]],
    );
}

#[test]
fn a_failover_package_is_taken_over_only_once_its_live_owner_has_halted_it() {
    const LINK: &str = "/net/interfaces/eth0/status";
    let s = Scenario::seen_from("node2")
        .package(requiring(failover("web"), LINK, Evaluate::BeforeStart))
        .record("web", PackageState::Up, &["node1"])
        .verdict("web", "node1", LINK, false)
        .verdict("web", "node2", LINK, true)
        .verdict("web", "node3", LINK, true);
    // node2 waits: node1 is live and halts it first.
    check(&s, expect![[""]]);
    // node1 halts it; once its halt is recorded, node2 starts it.
    let mut s = s;
    s.node = "node1";
    s.running_here = set(&["web"]);
    check(
        &s,
        expect![[
            r#"write web: halting on [node1] "halting on node1 (resource_down)"; then halt (resource_down)"#
        ]],
    );
    let mut s = s.record("web", PackageState::Down, &[]).edit("web", |r| {
        r.left = Some("node1".into());
    });
    s.node = "node2";
    s.running_here = BTreeSet::new();
    check(
        &s,
        expect![[
            r#"write web: starting on [node2] "starting on node2 (failover)"; then claim and run (failover)"#
        ]],
    );
}

#[test]
fn a_start_waits_while_the_guard_still_halts_the_old_copy_here() {
    let mut s = Scenario::seen_from("node1").package(failover("web"));
    s.guard_halting = set(&["web"]);
    check(&s, expect![[""]]);
}

/// Serviceguard's deferred resources: an `after_start` resource that goes
/// down fails the package where it ran, so it is not started there again
/// until an operator clears it.
#[test]
fn an_after_start_resource_down_fails_the_package_here() {
    const APP: &str = "/app/web/health";
    let mut s = Scenario::seen_from("node1")
        .package(requiring(failover("web"), APP, Evaluate::AfterStart))
        .record("web", PackageState::Up, &["node1"])
        .verdict("web", "node1", APP, false);
    s.running_here = set(&["web"]);
    s.deferred_down.insert(
        "web".into(),
        "after_start resource /app/web/health went down on node1".into(),
    );
    check(
        &s,
        expect![[
            r#"write web: halting on [node1] "halting on node1 (resource_down)"; then halt (resource_down) and fail: after_start resource /app/web/health went down on node1"#
        ]],
    );
}

#[test]
fn a_multi_node_package_gains_this_node_and_keeps_its_other_owners() {
    let mut spec = failover("mon");
    spec.kind = PackageKind::MultiNode;
    let s = Scenario::seen_from("node1").package(spec).record(
        "mon",
        PackageState::Up,
        &["node2", "node3"],
    );
    check(
        &s,
        expect![[
            r#"write mon: starting on [node2, node3, node1] "starting on node1 (startup)"; then run (startup)"#
        ]],
    );
}

#[test]
fn an_operator_move_starts_the_package_on_the_node_asked_for() {
    let s = Scenario::seen_from("node3")
        .package(failover("web"))
        .edit("web", |r| {
            r.admin.run = true;
            r.admin.node = Some("node3".into());
        });
    check(
        &s,
        expect![[
            r#"write web: starting on [node3] "starting on node3 (manual)"; then claim and run (manual)"#
        ]],
    );
}

/// Seen in the chaos test after an etcd freeze past the TTL: a node halted
/// its packages for its lost lease, could not record the halts (etcd was
/// frozen), rejoined, and its records said for ever that it ran them; the
/// other nodes waited for it to halt what it did not run.
#[test]
fn a_record_saying_this_node_runs_a_package_it_does_not_is_set_straight() {
    let s = Scenario::seen_from("node2")
        .package(failover("ascs"))
        .record("ascs", PackageState::Up, &["node2"]);
    check(
        &s,
        expect![[
            r#"write ascs: down on [] "not running on node2 (its start or halt was not recorded)""#
        ]],
    );
}

#[test]
fn a_multi_node_package_not_running_here_any_more_keeps_its_other_owners() {
    let mut spec = failover("mon");
    spec.kind = PackageKind::MultiNode;
    let mut s = Scenario::seen_from("node1").package(spec).record(
        "mon",
        PackageState::Up,
        &["node1", "node2"],
    );
    s.adopting = BTreeSet::new();
    check(
        &s,
        expect![[
            r#"write mon: up on [node2] "not running on node1 (its start or halt was not recorded)""#
        ]],
    );
}

/// A package being re-adopted after a host restart is not running here
/// yet as far as the manager knows: its record is left alone meanwhile.
#[test]
fn a_package_being_re_adopted_is_not_taken_for_one_that_does_not_run() {
    let mut s = Scenario::seen_from("node1")
        .package(failover("web"))
        .record("web", PackageState::Up, &["node1"]);
    s.adopting = set(&["web"]);
    check(&s, expect![[""]]);
}

// ---- maintenance (DESIGN §5) ----------------------------------------------

const ETH0: &str = "/net/interfaces/eth0/status";

#[test]
fn a_package_in_maintenance_is_not_halted_when_its_resource_goes_down() {
    let mut s = Scenario::seen_from("node1")
        .package(requiring(failover("web"), ETH0, Evaluate::BeforeStart))
        .record("web", PackageState::Up, &["node1"])
        .in_maintenance("web")
        .verdict("web", "node1", ETH0, false)
        .verdict("web", "node2", ETH0, true)
        .verdict("web", "node3", ETH0, true);
    s.running_here = set(&["web"]);
    check(
        &s,
        expect!["withhold web (maintenance): would halt on node1: resource down"],
    );
    // What status and why show, from any node.
    expect![[r#"
        {
            "web": "would halt on node1: resource down",
        }
    "#]]
    .assert_debug_eq(&withheld(&s.facts()));
    // The node it would fail over to holds back its part too.
    s.node = "node2";
    s.running_here = set(&[]);
    check(
        &s,
        expect!["withhold web (maintenance): would run on node2: resource down"],
    );
}

#[test]
fn leaving_maintenance_takes_the_pending_halt_at_once() {
    let mut s = Scenario::seen_from("node1")
        .package(requiring(failover("web"), ETH0, Evaluate::BeforeStart))
        .record("web", PackageState::Up, &["node1"])
        .in_maintenance("web")
        .edit("web", |r| r.admin.maintenance = false)
        .verdict("web", "node1", ETH0, false)
        .verdict("web", "node2", ETH0, true)
        .verdict("web", "node3", ETH0, true);
    s.running_here = set(&["web"]);
    check(
        &s,
        expect![[
            r#"write web: halting on [node1] "halting on node1 (resource_down)"; then halt (resource_down)"#
        ]],
    );
}

#[test]
fn a_failed_service_in_maintenance_is_held_and_other_packages_are_still_planned() {
    let mut s = Scenario::seen_from("node1")
        .package(failover("web"))
        .package(failover("db"))
        .record("web", PackageState::Up, &["node1"])
        .in_maintenance("web");
    s.running_here = set(&["web"]);
    s.failures
        .insert("web".into(), "service server failed on node1".into());
    check(
        &s,
        expect![[r#"
        withhold web (maintenance): would halt on node1: service failed
        write db: starting on [node1] "starting on node1 (startup)"; then claim and run (startup)"#]],
    );
}

#[test]
fn a_package_in_maintenance_is_not_failed_over_from_a_gone_node() {
    let s = Scenario::seen_from("node2")
        .package(failover("web"))
        .record("web", PackageState::Down, &[])
        .edit("web", |r| r.left = Some("node1".into()))
        .in_maintenance("web")
        .gone("node1");
    check(
        &s,
        expect!["withhold web (maintenance): would run on node2: failover"],
    );
}

#[test]
fn a_node_in_maintenance_halts_nothing_and_gets_no_new_package() {
    let mut s = Scenario::seen_from("node1")
        .package(requiring(failover("web"), ETH0, Evaluate::BeforeStart))
        .package(failover("db"))
        .record("web", PackageState::Up, &["node1"])
        .node_in_maintenance("node1")
        .verdict("web", "node1", ETH0, false)
        .verdict("web", "node2", ETH0, true)
        .verdict("web", "node3", ETH0, true);
    s.running_here = set(&["web"]);
    check(
        &s,
        expect!["withhold web (maintenance): would halt on node1: resource down"],
    );
    // db is placed on node2, which starts it.
    s.node = "node2";
    s.running_here = set(&[]);
    check(
        &s,
        expect![[
            r#"write db: starting on [node2] "starting on node2 (startup)"; then claim and run (startup)"#
        ]],
    );
}

#[test]
fn maintenance_never_holds_back_the_halt_of_a_lease_in_doubt() {
    let mut s = Scenario::seen_from("node1")
        .package(failover("web"))
        .record("web", PackageState::Up, &["node1"])
        .in_maintenance("web");
    s.running_here = set(&["web"]);
    s.lease_in_doubt = true;
    check(
        &s,
        expect![[
            r#"write web: halting on [node1] "halting on node1 (lease_lost)"; then halt (lease_lost)"#
        ]],
    );
}

// ---- per-node switching (DESIGN §7: `vigil pkg disable NAME --node N`) -----

#[test]
fn a_package_disabled_on_its_node_is_halted_there_to_move() {
    let mut s = Scenario::seen_from("node1")
        .package(failover("web"))
        .record("web", PackageState::Up, &["node1"])
        .edit("web", |r| r.disabled_nodes = set(&["node1"]));
    s.running_here = set(&["web"]);
    check(
        &s,
        expect![[
            r#"write web: halting on [node1] "halting on node1 (manual)"; then halt (manual)"#
        ]],
    );
}

#[test]
fn a_package_disabled_on_a_node_starts_on_the_next_one() {
    let s = Scenario::seen_from("node2")
        .package(failover("web"))
        .edit("web", |r| r.disabled_nodes = set(&["node1"]));
    check(
        &s,
        expect![[
            r#"write web: starting on [node2] "starting on node2 (startup)"; then claim and run (startup)"#
        ]],
    );
}

// ---- the applied package set (`vigil apply`) ----------------------------

#[test]
fn a_package_whose_run_definition_changed_is_halted_here_to_come_back_here() {
    let mut s = Scenario::seen_from("node2")
        .package(failover("web"))
        .record("web", PackageState::Up, &["node2"]);
    s.running_here = set(&["web"]);
    s.redefined = set(&["web"]);
    let effects = decide(&s.facts());
    check(
        &s,
        expect![[
            r#"write web: halting on [node2] "halting on node2 (reconfigured)"; then halt (reconfigured)"#
        ]],
    );
    // It asks to run again on this node, not wherever placement would
    // start it from scratch (node1 is first in its list).
    let Effect::Write(halt) = &effects[0] else {
        panic!("{effects:?}")
    };
    assert!(halt.update.admin.run);
    assert_eq!(halt.update.admin.node.as_deref(), Some("node2"));
    // Under way already: nothing more.
    s.in_flight = set(&["web"]);
    check(&s, expect![[""]]);
}

#[test]
fn a_redefined_package_not_running_here_is_left_alone() {
    let mut s = Scenario::seen_from("node1")
        .package(failover("web"))
        .record("web", PackageState::Up, &["node2"]);
    s.redefined = set(&["web"]);
    check(&s, expect![[""]]);
}

#[test]
fn a_package_removed_from_the_applied_set_is_halted_where_it_runs() {
    // Not among the specs any more, but running here.
    let mut s = Scenario::seen_from("node2")
        .package(failover("web"))
        .record("old", PackageState::Up, &["node2"])
        .record("web", PackageState::Up, &["node2"]);
    s.running_here = set(&["old", "web"]);
    s.retired = set(&["old"]);
    check(
        &s,
        expect![[
            r#"write old: halting on [node2] "halting on node2 (reconfigured)"; then halt (reconfigured)"#
        ]],
    );
}

#[test]
fn the_record_of_a_removed_package_that_runs_nowhere_is_deleted_by_the_first_live_node() {
    let mut s = Scenario::seen_from("node1")
        .package(failover("web"))
        .record("old", PackageState::Down, &[])
        .record("web", PackageState::Up, &["node1"]);
    s.running_here = set(&["web"]);
    s.retired = set(&["old"]);
    check(&s, expect![[r#"delete the record of old"#]]);
    // Only one node deletes it.
    s.node = "node2";
    s.running_here = BTreeSet::new();
    check(&s, expect![[""]]);
    // A failed halt keeps its owner, and the record stays.
    let mut s = Scenario::seen_from("node1").record("old", PackageState::Failed, &["node3"]);
    s.retired = set(&["old"]);
    check(&s, expect![[""]]);
}
