//! The partial order of a plan: which of its actions may be carried out now.
//!
//! The placement engine lists a plan's actions in an order that is safe to
//! carry out one at a time. Most of them do not depend on each other — a
//! hundred packages leaving a dead node can all start on the adoptive node
//! at once — so carrying them out one by one across the cluster made a mass
//! failover a hundred times slower than one (DESIGN §1). An action waits
//! only for the earlier actions it depends on:
//!
//! * an earlier action on the same failover package (its halt before its
//!   run elsewhere), or on the same multi-node package on the same node;
//! * an earlier action on a related package: a `[[dependency]]` either way
//!   (predecessors start before dependents and halt after them), `follow`
//!   or `avoid` either way (the steps of a handover);
//! * an earlier halt on the node where it runs (a displaced or yielding
//!   package leaves before the package that needs the node starts);
//!
//! and for a related package (or its own failover package) that is being
//! started or halted right now, anywhere: the engine planned as if that
//! were done.
//!
//! Pure: plan and facts in, the ready actions out; no I/O, no clock. Which
//! of them this node carries out, and how many at once, is the manager's.

use std::collections::{BTreeMap, BTreeSet};

use crate::placement::{Action, Op, PackageKind, PackageSpec};

/// The actions of `actions` (in plan order) that wait for nothing: no
/// earlier action they depend on, no related package in `busy` (being
/// started or halted).
pub fn ready<'a>(
    actions: &'a [Action],
    specs: &[PackageSpec],
    busy: &BTreeSet<String>,
) -> Vec<&'a Action> {
    let kinds: BTreeMap<&str, PackageKind> =
        specs.iter().map(|s| (s.name.as_str(), s.kind)).collect();
    let related = relations(specs);
    let is_related = |a: &str, b: &str| related.get(a).is_some_and(|set| set.contains(b));
    let failover = |p: &str| kinds.get(p).is_none_or(|k| *k == PackageKind::Failover);
    let mut out = Vec::new();
    for (i, action) in actions.iter().enumerate() {
        let p = action.package.as_str();
        let held_back = busy
            .iter()
            .any(|b| is_related(p, b) || (b == p && failover(p)));
        if held_back {
            continue;
        }
        let waits = actions[..i].iter().any(|earlier| {
            let q = earlier.package.as_str();
            (q == p && (failover(p) || earlier.node == action.node))
                || is_related(p, q)
                || (earlier.op == Op::Halt && action.op == Op::Run && earlier.node == action.node)
        });
        if !waits {
            out.push(action);
        }
    }
    out
}

/// Package → the packages it is related to (both directions). Names that
/// are not packages of `specs` are left out.
fn relations(specs: &[PackageSpec]) -> BTreeMap<&str, BTreeSet<&str>> {
    let names: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let mut related: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for spec in specs {
        let a = spec.name.as_str();
        let others = spec
            .dependencies
            .iter()
            .map(|d| d.package.as_str())
            .chain(spec.follow.as_deref())
            .chain(spec.avoid.iter().map(String::as_str));
        for b in others {
            if let Some(&b) = names.get(b)
                && a != b
            {
                related.entry(a).or_default().insert(b);
                related.entry(b).or_default().insert(a);
            }
        }
    }
    related
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;
    use crate::placement::{ActionReason, Dependency, DependencyCondition, DependencyLocation};

    fn action(text: &str) -> Action {
        let f: Vec<&str> = text.split_whitespace().collect();
        let [op, package, node] = f[..] else {
            panic!("action is `op package node`: {text:?}")
        };
        Action {
            op: if op == "run" { Op::Run } else { Op::Halt },
            package: package.to_owned(),
            node: node.to_owned(),
            reason: ActionReason::Failover,
        }
    }

    /// `plan` is one action per `;`; `busy` the packages being started or
    /// halted; `expect` the ready actions, one per line.
    fn check(specs: &[PackageSpec], plan: &str, busy: &[&str], expect: Expect) {
        let actions: Vec<Action> = plan.split(';').map(action).collect();
        let busy: BTreeSet<String> = busy.iter().map(|b| (*b).to_owned()).collect();
        let got: Vec<String> = ready(&actions, specs, &busy)
            .iter()
            .map(|a| a.to_string())
            .collect();
        expect.assert_eq(&got.join("\n"));
    }

    fn failover(name: &str) -> PackageSpec {
        PackageSpec::failover(name, &["node1", "node2", "node3"])
    }

    #[test]
    fn independent_packages_leaving_a_dead_node_all_start_at_once() {
        let specs: Vec<_> = ["a", "b", "c"].into_iter().map(failover).collect();
        check(
            &specs,
            "run a node2; run b node2; run c node3",
            &[],
            expect![[r#"
                run a on node2 (failover)
                run b on node2 (failover)
                run c on node3 (failover)"#]],
        );
    }

    #[test]
    fn a_package_runs_elsewhere_only_after_its_halt() {
        let specs = vec![failover("a"), failover("b")];
        check(
            &specs,
            "halt a node1; run a node2; run b node3",
            &[],
            expect![[r#"
                halt a on node1 (failover)
                run b on node3 (failover)"#]],
        );
    }

    /// DESIGN §6: ascs runs on node2 before ers halts there, then ers runs
    /// on node3.
    #[test]
    fn seed_handover_keeps_its_order() {
        let mut ascs = failover("ascs");
        ascs.follow = Some("ers".into());
        let mut ers = failover("ers");
        ers.avoid = vec!["ascs".into()];
        let specs = vec![ascs, ers, failover("other")];
        check(
            &specs,
            "run ascs node2; halt ers node2; run ers node3; run other node3",
            &[],
            expect![[r#"
                run ascs on node2 (failover)
                run other on node3 (failover)"#]],
        );
        // While ascs is starting, the handover waits for it.
        check(
            &specs,
            "halt ers node2; run ers node3",
            &["ascs"],
            expect![""],
        );
        check(
            &specs,
            "halt ers node2; run ers node3",
            &[],
            expect!["halt ers on node2 (failover)"],
        );
    }

    #[test]
    fn dependents_wait_for_their_predecessors() {
        let db = failover("db");
        let mut app = failover("app");
        app.dependencies.push(Dependency {
            package: "db".into(),
            condition: DependencyCondition::Up,
            location: DependencyLocation::SameNode,
        });
        let specs = vec![db, app, failover("web")];
        check(
            &specs,
            "run db node2; run app node2; run web node2",
            &[],
            expect![[r#"
                run db on node2 (failover)
                run web on node2 (failover)"#]],
        );
        check(&specs, "run app node2", &["db"], expect![""]);
    }

    #[test]
    fn a_run_waits_for_an_earlier_halt_on_its_node() {
        let specs: Vec<_> = ["low", "high", "x"].into_iter().map(failover).collect();
        check(
            &specs,
            "halt low node1; run high node1; run x node2",
            &[],
            expect![[r#"
                halt low on node1 (failover)
                run x on node2 (failover)"#]],
        );
    }

    #[test]
    fn a_failover_package_being_halted_elsewhere_is_not_started() {
        let specs = vec![failover("a")];
        check(&specs, "run a node2", &["a"], expect![""]);
    }

    #[test]
    fn multi_node_packages_start_on_every_node_at_once() {
        let mut m = PackageSpec::failover("m", &["node1", "node2", "node3"]);
        m.kind = PackageKind::MultiNode;
        check(
            &[m.clone()],
            "run m node1; run m node2; run m node3",
            &[],
            expect![[r#"
                run m on node1 (failover)
                run m on node2 (failover)
                run m on node3 (failover)"#]],
        );
        check(
            &[m],
            "run m node3",
            &["m"],
            expect!["run m on node3 (failover)"],
        );
    }
}
