//! Follows the cluster for the HTTP side: from one `status` document to
//! the next, what changed (node states, package states and places) and
//! which changes were failovers, counted by package and reason.
//!
//! Pure: the caller polls the main loop and feeds each [`StatusOutput`] to
//! [`Watch::observe`]. It sees what one host sees between two polls, so two
//! changes within one poll interval are one event, and a host started
//! after a failover does not count it (Prometheus counters start at zero on
//! every restart anyway).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::views::{ClusterEvent, StatusOutput};

/// Events kept for the page.
pub const EVENTS_KEPT: usize = 50;

#[derive(Debug, Default)]
pub struct Watch {
    last: Option<StatusOutput>,
    /// Where each package last ran (its last non-empty `running_on`).
    located: BTreeMap<String, BTreeSet<String>>,
    /// Newest first.
    events: VecDeque<ClusterEvent>,
    /// Failovers by (package, reason).
    failovers: BTreeMap<(String, String), u64>,
}

/// The reason of a package record, as a label: the lifecycle reason the
/// manager writes in parentheses (`starting on node2 (failover)`), else
/// `other`. Free text would make one time series per message.
pub fn reason_label(reason: &str) -> String {
    let inner = reason
        .trim_end()
        .strip_suffix(')')
        .and_then(|r| r.rsplit_once('('))
        .map(|(_, word)| word);
    match inner {
        Some(word)
            if !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') =>
        {
            word.to_owned()
        }
        _ => "other".to_owned(),
    }
}

fn place(state: &str, on: &[String]) -> String {
    if on.is_empty() {
        state.to_owned()
    } else {
        format!("{state} on {}", on.join(","))
    }
}

impl Watch {
    /// Takes the next status document; returns the events it brought,
    /// oldest first.
    pub fn observe(&mut self, next: &StatusOutput, at: &str) -> Vec<ClusterEvent> {
        let mut out = Vec::new();
        let event = |kind: &str, subject: &str, text: String| ClusterEvent {
            at: at.to_owned(),
            kind: kind.to_owned(),
            subject: subject.to_owned(),
            text,
        };
        if let Some(prev) = &self.last {
            for node in &next.nodes {
                match prev.nodes.iter().find(|n| n.name == node.name) {
                    Some(was) if was.state != node.state => out.push(event(
                        "node",
                        &node.name,
                        format!("node {}: {} → {}", node.name, was.state, node.state),
                    )),
                    _ => {}
                }
            }
            for p in &next.packages {
                let Some(was) = prev.packages.iter().find(|w| w.name == p.name) else {
                    continue;
                };
                if was.state != p.state || was.running_on != p.running_on {
                    out.push(event(
                        "package",
                        &p.name,
                        format!(
                            "{}: {} → {} ({})",
                            p.name,
                            place(&was.state, &was.running_on),
                            place(&p.state, &p.running_on),
                            p.reason
                        ),
                    ));
                }
            }
        }
        for p in &next.packages {
            if p.running_on.is_empty() {
                continue;
            }
            let now: BTreeSet<String> = p.running_on.iter().cloned().collect();
            if let Some(before) = self.located.get(&p.name)
                && before.is_disjoint(&now)
            {
                let reason = reason_label(&p.reason);
                *self
                    .failovers
                    .entry((p.name.clone(), reason.clone()))
                    .or_default() += 1;
                out.push(event(
                    "failover",
                    &p.name,
                    format!(
                        "{} moved {} → {} ({reason}: {})",
                        p.name,
                        before.iter().cloned().collect::<Vec<_>>().join(","),
                        p.running_on.join(","),
                        p.reason
                    ),
                ));
            }
            self.located.insert(p.name.clone(), now);
        }
        for e in &out {
            self.events.push_front(e.clone());
        }
        self.events.truncate(EVENTS_KEPT);
        self.last = Some(next.clone());
        out
    }

    /// Newest first.
    pub fn events(&self) -> Vec<ClusterEvent> {
        self.events.iter().cloned().collect()
    }

    /// Failovers seen, by (package, reason).
    pub fn failovers(&self) -> &BTreeMap<(String, String), u64> {
        &self.failovers
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;
    use crate::views::{NodeStatus, PackageStatus};

    fn status(nodes: &[(&str, &str)], packages: &[(&str, &str, &[&str], &str)]) -> StatusOutput {
        StatusOutput {
            applied: None,
            cluster: "c".into(),
            node: "node1".into(),
            nodes: nodes
                .iter()
                .map(|(n, s)| NodeStatus {
                    name: (*n).into(),
                    state: (*s).into(),
                })
                .collect(),
            packages: packages
                .iter()
                .map(|(name, state, on, reason)| PackageStatus {
                    name: (*name).into(),
                    state: (*state).into(),
                    running_on: on.iter().map(|s| (*s).to_owned()).collect(),
                    switching: true,
                    reason: (*reason).into(),
                    fence_token: 1,
                    failed_on: vec![],
                    resources: vec![],
                    parts_here: vec![],
                })
                .collect(),
            config_errors: vec![],
        }
    }

    fn check(steps: &[StatusOutput], expect: Expect) {
        let mut watch = Watch::default();
        let mut out = String::new();
        for (i, s) in steps.iter().enumerate() {
            for e in watch.observe(s, &format!("t{i}")) {
                out.push_str(&format!("{} {} [{}] {}\n", e.at, e.kind, e.subject, e.text));
            }
        }
        out.push_str(&format!("{:?}\n", watch.failovers()));
        expect.assert_eq(&out);
    }

    #[test]
    fn failovers_are_moves_to_other_nodes_counted_by_reason() {
        let up = [("node1", "up"), ("node2", "up")];
        let down = [("node1", "down"), ("node2", "up")];
        check(
            &[
                status(&up, &[("a", "up", &["node1"], "up on node1 (startup)")]),
                status(&down, &[("a", "down", &[], "its node node1 is gone")]),
                status(
                    &down,
                    &[("a", "starting", &["node2"], "starting on node2 (failover)")],
                ),
                status(&down, &[("a", "up", &["node2"], "up on node2 (failover)")]),
                // An operator's move counts too, under its own reason.
                status(&up, &[("a", "up", &["node1"], "up on node1 (manual)")]),
            ],
            expect![[r#"
                t1 node [node1] node node1: up → down
                t1 package [a] a: up on node1 → down (its node node1 is gone)
                t2 package [a] a: down → starting on node2 (starting on node2 (failover))
                t2 failover [a] a moved node1 → node2 (failover: starting on node2 (failover))
                t3 package [a] a: starting on node2 → up on node2 (up on node2 (failover))
                t4 node [node1] node node1: down → up
                t4 package [a] a: up on node2 → up on node1 (up on node1 (manual))
                t4 failover [a] a moved node2 → node1 (manual: up on node1 (manual))
                {("a", "failover"): 1, ("a", "manual"): 1}
            "#]],
        );
        // A multi-node package losing one of its nodes did not move.
        check(
            &[
                status(&up, &[("m", "up", &["node1", "node2"], "")]),
                status(&down, &[("m", "up", &["node2"], "")]),
            ],
            expect![[r#"
                t1 node [node1] node node1: up → down
                t1 package [m] m: up on node1,node2 → up on node2 ()
                {}
            "#]],
        );
    }

    #[test]
    fn reasons_become_labels_only_when_they_are_one_word() {
        assert_eq!(reason_label("up on node2 (failover)"), "failover");
        assert_eq!(
            reason_label("starting on n (resource_down)"),
            "resource_down"
        );
        assert_eq!(reason_label("halted by operator"), "other");
        assert_eq!(reason_label("x (two words)"), "other");
        assert_eq!(reason_label(""), "other");
    }
}
