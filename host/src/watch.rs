//! Follows the cluster for the HTTP side and the hooks: from one `status`
//! document to the next, what changed (node states, package states and
//! places, the states of the resources packages require as this node
//! judges them) and which changes were failovers, counted by package and
//! reason. The events it returns are what the cluster page lists and what
//! each `[[hook]]` gets ([`crate::hooks`]).
//!
//! Pure: the caller polls the main loop and feeds each [`StatusOutput`] to
//! [`Watch::observe`]. It sees what one host sees between two polls, so two
//! changes within one poll interval are one event, and a host started
//! after a failover does not count it (Prometheus counters start at zero on
//! every restart anyway).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::views::{ClusterEvent, EventKind, PackageStatus, StatusOutput};

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
    /// The last event's number.
    seq: u64,
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
    /// Takes the next status document, seen at `at_ms`; returns the events
    /// it brought, oldest first.
    pub fn observe(&mut self, next: &StatusOutput, at_ms: u64) -> Vec<ClusterEvent> {
        let mut out = Vec::new();
        let at = crate::views::rfc3339(at_ms);
        let blank = |kind: EventKind, subject: &str, text: String| ClusterEvent {
            seq: 0,
            at: at.clone(),
            at_ms,
            kind,
            subject: subject.to_owned(),
            text,
            observed_by: next.node.clone(),
            node: None,
            package: None,
            resource: None,
            old_state: String::new(),
            new_state: String::new(),
            old_nodes: Vec::new(),
            new_nodes: Vec::new(),
            reason: String::new(),
            reason_label: String::new(),
            fence_token: None,
        };
        let package_event = |kind: EventKind,
                             text: String,
                             was: Option<&PackageStatus>,
                             p: &PackageStatus,
                             old_nodes: Vec<String>| {
            ClusterEvent {
                node: p.running_on.first().or(old_nodes.first()).cloned(),
                package: Some(p.name.clone()),
                old_state: was.map(|w| w.state.clone()).unwrap_or_default(),
                new_state: p.state.clone(),
                old_nodes,
                new_nodes: p.running_on.clone(),
                reason: p.reason.clone(),
                reason_label: reason_label(&p.reason),
                fence_token: Some(p.fence_token),
                ..blank(kind, &p.name, text)
            }
        };
        let prev = self.last.as_ref();
        if let Some(prev) = prev {
            for node in &next.nodes {
                match prev.nodes.iter().find(|n| n.name == node.name) {
                    Some(was) if was.state != node.state => out.push(ClusterEvent {
                        node: Some(node.name.clone()),
                        old_state: was.state.clone(),
                        new_state: node.state.clone(),
                        ..blank(
                            EventKind::Node,
                            &node.name,
                            format!("node {}: {} → {}", node.name, was.state, node.state),
                        )
                    }),
                    _ => {}
                }
            }
            for p in &next.packages {
                let Some(was) = prev.packages.iter().find(|w| w.name == p.name) else {
                    continue;
                };
                if was.state != p.state || was.running_on != p.running_on {
                    let text = format!(
                        "{}: {} → {} ({})",
                        p.name,
                        place(&was.state, &was.running_on),
                        place(&p.state, &p.running_on),
                        p.reason
                    );
                    out.push(package_event(
                        EventKind::Package,
                        text,
                        Some(was),
                        p,
                        was.running_on.clone(),
                    ));
                }
                for r in &p.resources {
                    let Some(before) = was.resources.iter().find(|b| b.name == r.name) else {
                        continue;
                    };
                    if before.state != r.state {
                        out.push(ClusterEvent {
                            node: Some(next.node.clone()),
                            package: Some(p.name.clone()),
                            resource: Some(r.name.clone()),
                            old_state: before.state.clone(),
                            new_state: r.state.clone(),
                            reason: r.criterion.clone(),
                            reason_label: "other".to_owned(),
                            fence_token: Some(p.fence_token),
                            ..blank(
                                EventKind::Resource,
                                &p.name,
                                format!(
                                    "{}: resource {} on {}: {} → {}",
                                    p.name, r.name, next.node, before.state, r.state
                                ),
                            )
                        });
                    }
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
                let text = format!(
                    "{} moved {} → {} ({reason}: {})",
                    p.name,
                    before.iter().cloned().collect::<Vec<_>>().join(","),
                    p.running_on.join(","),
                    p.reason
                );
                let was = prev.and_then(|prev| prev.packages.iter().find(|w| w.name == p.name));
                let moved = package_event(
                    EventKind::Failover,
                    text,
                    was,
                    p,
                    before.iter().cloned().collect(),
                );
                // The move comes before the state it led to, also when one
                // poll saw both (a start quicker than the poll).
                let at = out
                    .iter()
                    .position(|e| {
                        e.kind == EventKind::Package && e.package.as_deref() == Some(&p.name)
                    })
                    .unwrap_or(out.len());
                out.insert(at, moved);
            }
            self.located.insert(p.name.clone(), now);
        }
        for e in &mut out {
            self.seq += 1;
            e.seq = self.seq;
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
                    maintenance: false,
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
                    maintenance: false,
                    withheld: None,
                    disabled_on: vec![],
                    services_here: vec![],
                    policy: Default::default(),
                })
                .collect(),
            config_errors: vec![],
            hooks: vec![],
        }
    }

    fn check(steps: &[StatusOutput], expect: Expect) {
        let mut watch = Watch::default();
        let mut out = String::new();
        for (i, s) in steps.iter().enumerate() {
            for e in watch.observe(s, i as u64) {
                out.push_str(&format!(
                    "t{} #{} {} [{}] {}\n",
                    e.at_ms, e.seq, e.kind, e.subject, e.text
                ));
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
                t1 #1 node [node1] node node1: up → down
                t1 #2 package [a] a: up on node1 → down (its node node1 is gone)
                t2 #3 failover [a] a moved node1 → node2 (failover: starting on node2 (failover))
                t2 #4 package [a] a: down → starting on node2 (starting on node2 (failover))
                t3 #5 package [a] a: starting on node2 → up on node2 (up on node2 (failover))
                t4 #6 node [node1] node node1: down → up
                t4 #7 failover [a] a moved node2 → node1 (manual: up on node1 (manual))
                t4 #8 package [a] a: up on node2 → up on node1 (up on node1 (manual))
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
                t1 #1 node [node1] node node1: up → down
                t1 #2 package [m] m: up on node1,node2 → up on node2 ()
                {}
            "#]],
        );
    }

    /// What a hook gets on stdin, field by field: the JSON shape documented
    /// in docs/reference/hooks.md.
    #[test]
    fn event_json_carries_node_package_states_reason_token_and_time() {
        let up = [("node1", "up"), ("node2", "up")];
        let down = [("node1", "down"), ("node2", "up")];
        let mut watch = Watch::default();
        watch.observe(
            &status(&up, &[("a", "up", &["node1"], "up on node1 (startup)")]),
            1_000,
        );
        let mut next = status(
            &down,
            &[("a", "starting", &["node2"], "starting on node2 (failover)")],
        );
        next.packages[0].fence_token = 2;
        let events = watch.observe(&next, 1_767_225_600_500);
        let json: Vec<String> = events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        expect![[r#"
            {"seq":1,"at":"2026-01-01T00:00:00.5Z","at_ms":1767225600500,"kind":"node","subject":"node1","text":"node node1: up → down","observed_by":"node1","node":"node1","package":null,"resource":null,"old_state":"up","new_state":"down","old_nodes":[],"new_nodes":[],"reason":"","reason_label":"","fence_token":null}
            {"seq":2,"at":"2026-01-01T00:00:00.5Z","at_ms":1767225600500,"kind":"failover","subject":"a","text":"a moved node1 → node2 (failover: starting on node2 (failover))","observed_by":"node1","node":"node2","package":"a","resource":null,"old_state":"up","new_state":"starting","old_nodes":["node1"],"new_nodes":["node2"],"reason":"starting on node2 (failover)","reason_label":"failover","fence_token":2}
            {"seq":3,"at":"2026-01-01T00:00:00.5Z","at_ms":1767225600500,"kind":"package","subject":"a","text":"a: up on node1 → starting on node2 (starting on node2 (failover))","observed_by":"node1","node":"node2","package":"a","resource":null,"old_state":"up","new_state":"starting","old_nodes":["node1"],"new_nodes":["node2"],"reason":"starting on node2 (failover)","reason_label":"failover","fence_token":2}"#]]
        .assert_eq(&json.join("\n"));
        let env = events[1].env();
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("VIGIL_EVENT_KIND"), Some("failover"));
        assert_eq!(get("VIGIL_EVENT_OLD_NODES"), Some("node1"));
        assert_eq!(get("VIGIL_EVENT_FENCE_TOKEN"), Some("2"));
        assert_eq!(get("VIGIL_EVENT_RESOURCE"), Some(""));
        assert_eq!(get("VIGIL_EVENT_SEQ"), Some("2"));
    }

    #[test]
    fn resource_state_changes_are_events_of_the_package_that_requires_them() {
        let up = [("node1", "up")];
        let with = |state: &str| {
            let mut s = status(&up, &[("a", "up", &["node1"], "")]);
            s.packages[0].resources = vec![crate::views::ResourceStatus {
                name: "/fs/d/used_percent".into(),
                state: state.into(),
                evaluate: "always".into(),
                criterion: "< 90".into(),
            }];
            s
        };
        let mut watch = Watch::default();
        watch.observe(&with("up"), 0);
        assert!(watch.observe(&with("up"), 1).is_empty());
        let events = watch.observe(&with("down"), 2);
        assert_eq!(events.len(), 1, "{events:?}");
        let e = &events[0];
        assert_eq!(e.kind, EventKind::Resource);
        assert_eq!(e.text, "a: resource /fs/d/used_percent on node1: up → down");
        assert_eq!(
            (
                e.resource.as_deref(),
                e.package.as_deref(),
                e.node.as_deref()
            ),
            (Some("/fs/d/used_percent"), Some("a"), Some("node1"))
        );
        assert_eq!((e.reason.as_str(), e.fence_token), ("< 90", Some(1)));
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
