//! The placement algorithm: one [`ClusterSnapshot`] in, one [`Plan`] out.
//!
//! Packages are placed one at a time in *placement order* (predecessors and
//! leaders first, then by priority, then by name); each decision sees the
//! placement built so far, plus the current node of every package not placed
//! yet. Everything is indexed by node and package number, so a pass is
//! roughly linear in packages × list length. The follow/avoid handover is
//! found during a pass and pinned for the next one (see `docs/placement.md`);
//! there is at most one extra pass per handover.
//!
//! No I/O, no clock, no randomness: the same snapshot always gives the same
//! plan.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use super::model::{
    ClusterSnapshot, Dependency, DependencyCondition, DependencyLocation, Evaluate, FailbackPolicy,
    FailoverPolicy, NodeState, PackageKind, PackageSpec, PackageState,
};
use super::plan::{
    Action, ActionReason, Blocked, Choice, Explanation, NodeVerdict, Op, Plan, Rejection,
};

/// The state of a package without an entry in the snapshot.
static DEFAULT_STATE: PackageState = PackageState {
    running_on: Vec::new(),
    switching_enabled: true,
    failed_on: BTreeSet::new(),
    halted_by_admin: false,
    run_requested: false,
    requested_node: None,
};

/// Computes the target placement, the actions to reach it and an explanation
/// for every package.
pub fn plan(snapshot: &ClusterSnapshot) -> Plan {
    let ctx = Ctx::new(snapshot);
    let mut handovers: Vec<Handover> = Vec::new();
    loop {
        match Pass::new(&ctx, &handovers).run() {
            Ok(plan) => return plan,
            // Each handover pins a new follower, so this ends after at most
            // one extra pass per package.
            Err(h) => handovers.push(h),
        }
    }
}

/// A listed node: its name as written and its cluster index, if any.
struct Slot<'a> {
    name: &'a str,
    node: Option<usize>,
}

struct Pkg<'a> {
    spec: &'a PackageSpec,
    state: &'a PackageState,
    list: Vec<Slot<'a>>,
    /// Cluster nodes it runs on (down ones included).
    current: Vec<usize>,
    /// Names in `running_on` that are not cluster nodes.
    current_unknown: Vec<&'a str>,
    /// Current nodes that are up: where it really runs.
    current_live: Vec<usize>,
    /// Current nodes where it will probably stay (up, listed, resources up,
    /// not failed, not halted): other packages treat it as present there.
    sticky: Vec<usize>,
    priority: u64,
    deps: Vec<(&'a Dependency, Option<usize>)>,
    follow: Option<usize>,
    /// Packages it must not share a node with, and whether it is this package
    /// that avoids them (else they avoid it).
    peers: Vec<(usize, bool)>,
    requested: Option<usize>,
    verdicts: Option<&'a BTreeMap<String, BTreeMap<String, bool>>>,
}

struct Ctx<'a> {
    nodes: &'a [NodeState],
    pkgs: Vec<Pkg<'a>>,
    placement_order: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Handover {
    follower: usize,
    leader: usize,
    node: usize,
}

impl<'a> Ctx<'a> {
    fn new(snap: &'a ClusterSnapshot) -> Self {
        let mut node_idx: HashMap<&str, usize> = HashMap::new();
        for (i, n) in snap.nodes.iter().enumerate() {
            node_idx.entry(n.name.as_str()).or_insert(i);
        }
        // Deterministic numbering by name; a duplicate name keeps its first spec.
        let mut specs: Vec<&PackageSpec> = snap.packages.iter().collect();
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        specs.dedup_by(|later, earlier| later.name == earlier.name);
        let pkg_idx: HashMap<&str, usize> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();

        let mut pkgs: Vec<Pkg<'a>> = specs
            .iter()
            .map(|spec| {
                let state = snap
                    .package_states
                    .get(&spec.name)
                    .unwrap_or(&DEFAULT_STATE);
                let list = resolve_list(spec, &snap.nodes, &node_idx);
                let mut current = Vec::new();
                let mut current_unknown = Vec::new();
                for name in &state.running_on {
                    match node_idx.get(name.as_str()) {
                        Some(&n) if !current.contains(&n) => current.push(n),
                        Some(_) => {}
                        None => current_unknown.push(name.as_str()),
                    }
                }
                let current_live: Vec<usize> = current
                    .iter()
                    .copied()
                    .filter(|&n| snap.nodes[n].up)
                    .collect();
                let verdicts = snap.resource_up.get(&spec.name);
                let sticky = current_live
                    .iter()
                    .copied()
                    .filter(|&n| {
                        let name = snap.nodes[n].name.as_str();
                        !state.halted_by_admin
                            && list.iter().any(|s| s.node == Some(n))
                            && !state.failed_on.contains(name)
                            && spec.resources.iter().all(|r| {
                                let v = verdicts
                                    .and_then(|m| m.get(name))
                                    .and_then(|m| m.get(&r.name))
                                    .copied();
                                match r.evaluate {
                                    Evaluate::BeforeStart => v == Some(true),
                                    Evaluate::AfterStart => v != Some(false),
                                }
                            })
                    })
                    .collect();
                let me = pkg_idx[spec.name.as_str()];
                let other = |name: &str| pkg_idx.get(name).copied().filter(|&q| q != me);
                Pkg {
                    spec,
                    state,
                    list,
                    current,
                    current_unknown,
                    current_live,
                    sticky,
                    priority: spec.priority.map_or(u64::MAX, u64::from),
                    deps: spec
                        .dependencies
                        .iter()
                        .map(|d| (d, other(&d.package)))
                        .collect(),
                    follow: spec.follow.as_deref().and_then(other),
                    peers: Vec::new(),
                    requested: state
                        .requested_node
                        .as_deref()
                        .and_then(|n| node_idx.get(n).copied()),
                    verdicts,
                }
            })
            .collect();

        // `avoid` is symmetric: record it on both sides.
        for p in 0..pkgs.len() {
            let avoided: Vec<usize> = pkgs[p]
                .spec
                .avoid
                .iter()
                .filter_map(|n| pkg_idx.get(n.as_str()).copied())
                .collect();
            for q in avoided.into_iter().filter(|&q| q != p) {
                if !pkgs[p].peers.iter().any(|&(x, _)| x == q) {
                    pkgs[p].peers.push((q, true));
                }
                if !pkgs[q].peers.iter().any(|&(x, _)| x == p) {
                    pkgs[q].peers.push((p, false));
                }
            }
        }

        let mut edges = Vec::new();
        for (p, pk) in pkgs.iter().enumerate() {
            edges.extend(pk.deps.iter().filter_map(|&(_, d)| d).map(|d| (d, p)));
            if let Some(l) = pk.follow {
                edges.push((l, p));
            }
        }
        let placement_order = topo_order(&pkgs, &edges);
        Ctx {
            nodes: &snap.nodes,
            pkgs,
            placement_order,
        }
    }

    fn avoids_each_other(&self, p: usize, q: usize) -> bool {
        self.pkgs[p].peers.iter().any(|&(x, _)| x == q)
    }
}

/// The node list of a package, `"*"` expanded, duplicates dropped.
fn resolve_list<'a>(
    spec: &'a PackageSpec,
    nodes: &'a [NodeState],
    node_idx: &HashMap<&str, usize>,
) -> Vec<Slot<'a>> {
    let mut seen = vec![false; nodes.len()];
    let mut list: Vec<Slot<'a>> = Vec::new();
    let push_all = |list: &mut Vec<Slot<'a>>, seen: &mut Vec<bool>| {
        for (i, n) in nodes.iter().enumerate() {
            if !seen[i] {
                seen[i] = true;
                list.push(Slot {
                    name: &n.name,
                    node: Some(i),
                });
            }
        }
    };
    if spec.kind == PackageKind::SystemMultiNode {
        push_all(&mut list, &mut seen);
        return list;
    }
    for name in &spec.nodes {
        if name == "*" {
            push_all(&mut list, &mut seen);
        } else if let Some(&i) = node_idx.get(name.as_str()) {
            if !seen[i] {
                seen[i] = true;
                list.push(Slot {
                    name: &nodes[i].name,
                    node: Some(i),
                });
            }
        } else if !list.iter().any(|s| s.name == name) {
            list.push(Slot { name, node: None });
        }
    }
    list
}

/// Kahn's algorithm, most important (then first by name) ready package first;
/// a cycle is broken at its most important member.
fn topo_order(pkgs: &[Pkg<'_>], edges: &[(usize, usize)]) -> Vec<usize> {
    let n = pkgs.len();
    let mut out_edges: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut indegree = vec![0usize; n];
    for &(from, to) in edges {
        out_edges[from].push(to);
        indegree[to] += 1;
    }
    let key = |p: usize| Reverse((pkgs[p].priority, p));
    let mut ready: BinaryHeap<Reverse<(u64, usize)>> =
        (0..n).filter(|&p| indegree[p] == 0).map(key).collect();
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let p = match ready.pop() {
            Some(Reverse((_, p))) => p,
            None => {
                // Only cycles are left: take the most important remaining package.
                match (0..n)
                    .filter(|&p| !done[p])
                    .min_by_key(|&p| (pkgs[p].priority, p))
                {
                    Some(p) => p,
                    None => break,
                }
            }
        };
        if done[p] {
            continue;
        }
        done[p] = true;
        order.push(p);
        for &q in &out_edges[p] {
            indegree[q] = indegree[q].saturating_sub(1);
            if indegree[q] == 0 && !done[q] {
                ready.push(key(q));
            }
        }
    }
    order
}

/// What was decided for one package in a pass.
struct Decision {
    target: Vec<usize>,
    /// Live current nodes it leaves, with the reason.
    leave: Vec<(usize, ActionReason)>,
    arrive: ActionReason,
    explanation: Explanation,
}

struct Pass<'c, 'a> {
    ctx: &'c Ctx<'a>,
    handovers: &'c [Handover],
    placed: Vec<Option<Vec<usize>>>,
    /// Packages per node: the new placement for placed packages, the live
    /// current nodes for the others.
    load: Vec<u32>,
    decisions: Vec<Option<Decision>>,
}

/// Whether a node is checked for a package that already runs there (stay) or
/// for a start.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Stay,
    Start,
}

impl<'c, 'a> Pass<'c, 'a> {
    fn new(ctx: &'c Ctx<'a>, handovers: &'c [Handover]) -> Self {
        let mut load = vec![0u32; ctx.nodes.len()];
        for pk in &ctx.pkgs {
            for &n in &pk.current_live {
                load[n] += 1;
            }
        }
        Pass {
            ctx,
            handovers,
            placed: vec![None; ctx.pkgs.len()],
            load,
            decisions: (0..ctx.pkgs.len()).map(|_| None).collect(),
        }
    }

    fn run(mut self) -> Result<Plan, Handover> {
        for &p in &self.ctx.placement_order {
            for &n in &self.ctx.pkgs[p].current_live {
                self.load[n] -= 1;
            }
            let decision = match self.ctx.pkgs[p].spec.kind {
                PackageKind::Failover => self.place_failover(p)?,
                PackageKind::MultiNode | PackageKind::SystemMultiNode => self.place_multi(p),
            };
            for &n in &decision.target {
                self.load[n] += 1;
            }
            self.placed[p] = Some(decision.target.clone());
            self.decisions[p] = Some(decision);
        }
        Ok(self.into_plan())
    }

    /// Where a package runs as far as this pass knows: its new placement once
    /// placed, its live current nodes before.
    fn location(&self, q: usize) -> &[usize] {
        match &self.placed[q] {
            Some(nodes) => nodes,
            None => &self.ctx.pkgs[q].current_live,
        }
    }

    fn dependency_holds(&self, dep: &Dependency, target: Option<usize>, n: usize) -> bool {
        let Some(q) = target else {
            // An unknown package never runs.
            return dep.condition == DependencyCondition::Down;
        };
        let at = self.location(q);
        let here = at.contains(&n);
        let elsewhere = at.iter().any(|&m| m != n);
        let anywhere = !at.is_empty();
        match (dep.condition, dep.location) {
            (DependencyCondition::Up, DependencyLocation::SameNode) => here,
            (DependencyCondition::Up, DependencyLocation::DifferentNode) => elsewhere,
            (DependencyCondition::Up, DependencyLocation::AnyNode) => anywhere,
            (DependencyCondition::Up, DependencyLocation::AllNodes) => {
                anywhere
                    && self.ctx.pkgs[q]
                        .list
                        .iter()
                        .filter_map(|s| s.node)
                        .filter(|&m| self.ctx.nodes[m].up)
                        .all(|m| at.contains(&m))
            }
            (DependencyCondition::Down, DependencyLocation::SameNode) => !here,
            (DependencyCondition::Down, DependencyLocation::DifferentNode) => !elsewhere,
            (
                DependencyCondition::Down,
                DependencyLocation::AnyNode | DependencyLocation::AllNodes,
            ) => !anywhere,
        }
    }

    /// Every rule that rejects `node` for package `p`; `ignore` skips avoid
    /// conflicts with one package (to test a handover).
    fn rejections(
        &self,
        p: usize,
        node: Option<usize>,
        listed: bool,
        mode: Mode,
        ignore: Option<usize>,
    ) -> Vec<Rejection> {
        let Some(n) = node else {
            return vec![Rejection::UnknownNode];
        };
        let ns = &self.ctx.nodes[n];
        if !ns.up {
            return vec![Rejection::NodeDown];
        }
        let pk = &self.ctx.pkgs[p];
        let mut out = Vec::new();
        if !listed {
            out.push(Rejection::NotListed);
        }
        if mode == Mode::Start && !ns.switching_enabled {
            out.push(Rejection::NodeSwitchingDisabled);
        }
        if pk.state.failed_on.contains(&ns.name) {
            out.push(Rejection::FailedHere);
        }
        let here = pk.verdicts.and_then(|m| m.get(&ns.name));
        for r in &pk.spec.resources {
            let up = here.and_then(|m| m.get(&r.name)).copied();
            match r.evaluate {
                Evaluate::BeforeStart if up != Some(true) => {
                    out.push(Rejection::ResourceNotUp {
                        resource: r.name.clone(),
                    });
                }
                Evaluate::AfterStart if mode == Mode::Stay && up == Some(false) => {
                    out.push(Rejection::ResourceDown {
                        resource: r.name.clone(),
                    });
                }
                _ => {}
            }
        }
        for h in self.handovers {
            if h.leader == p && h.node == n {
                let follower = self.ctx.pkgs[h.follower].spec.name.clone();
                out.push(Rejection::HandedOver { follower });
            }
        }
        for &(dep, target) in &pk.deps {
            if !self.dependency_holds(dep, target, n) {
                out.push(Rejection::DependencyNotMet {
                    package: dep.package.clone(),
                    condition: dep.condition,
                    location: dep.location,
                });
            }
        }
        for &(q, p_avoids_q) in &pk.peers {
            if Some(q) == ignore {
                continue;
            }
            let qk = &self.ctx.pkgs[q];
            let conflict = match &self.placed[q] {
                Some(nodes) => nodes.contains(&n),
                // Not placed yet: it counts where it will probably stay,
                // unless it is less important than this package (then it
                // gets displaced). A package that already runs here does not
                // yield to one placed later; the later one moves.
                None => mode == Mode::Start && qk.sticky.contains(&n) && qk.priority <= pk.priority,
            };
            if !conflict {
                continue;
            }
            let package = qk.spec.name.clone();
            let newly_placed = self.placed[q].is_some() && !qk.current_live.contains(&n);
            out.push(if mode == Mode::Stay && newly_placed {
                Rejection::DisplacedBy { package }
            } else if p_avoids_q {
                Rejection::Avoids { package }
            } else {
                Rejection::AvoidedBy { package }
            });
        }
        out
    }

    /// Verdicts on the package's list, then on current and requested nodes
    /// outside it, each as (node, cluster index, listed, rejections).
    fn verdicts(&self, p: usize) -> Vec<(&'a str, Option<usize>, Vec<Rejection>)> {
        let pk = &self.ctx.pkgs[p];
        let mode = |n: Option<usize>| match n {
            Some(n) if pk.current.contains(&n) => Mode::Stay,
            _ => Mode::Start,
        };
        let mut out: Vec<(&'a str, Option<usize>, Vec<Rejection>)> = pk
            .list
            .iter()
            .map(|s| {
                (
                    s.name,
                    s.node,
                    self.rejections(p, s.node, true, mode(s.node), None),
                )
            })
            .collect();
        let mut extra: Vec<Option<usize>> = pk.current.iter().map(|&n| Some(n)).collect();
        extra.extend(pk.requested.map(Some));
        for n in extra {
            if !out.iter().any(|(_, m, _)| *m == n) {
                let name = n.map_or("", |n| self.ctx.nodes[n].name.as_str());
                out.push((name, n, self.rejections(p, n, false, mode(n), None)));
            }
        }
        for &name in &pk.current_unknown {
            if !out.iter().any(|(m, _, _)| *m == name) {
                out.push((name, None, vec![Rejection::UnknownNode]));
            }
        }
        let unknown_request = match (pk.state.requested_node.as_deref(), pk.requested) {
            (Some(name), None) => Some(name),
            _ => None,
        };
        if let Some(name) = unknown_request.filter(|&n| !out.iter().any(|(m, _, _)| *m == n)) {
            out.push((name, None, vec![Rejection::UnknownNode]));
        }
        out
    }

    fn place_failover(&self, p: usize) -> Result<Decision, Handover> {
        let pk = &self.ctx.pkgs[p];
        let state = pk.state;
        let verdicts = self.verdicts(p);
        let eligible = |n: usize| {
            verdicts
                .iter()
                .any(|(_, m, r)| *m == Some(n) && r.is_empty())
        };
        let rejection_at = |n: usize| {
            verdicts
                .iter()
                .find(|(_, m, _)| *m == Some(n))
                .and_then(|(_, _, r)| r.first())
        };
        // Start candidates in list order.
        let candidates: Vec<usize> = pk
            .list
            .iter()
            .filter_map(|s| s.node)
            .filter(|&n| !pk.current.contains(&n) && eligible(n))
            .collect();
        let was_running = !pk.current.is_empty() || !pk.current_unknown.is_empty();
        // Keep the first current node (in list order) where it may stay.
        let keep = pk
            .list
            .iter()
            .filter_map(|s| s.node)
            .chain(pk.current.iter().copied())
            .find(|&n| pk.current.contains(&n) && eligible(n));

        let mut blocked = None;
        let mut choice = None;
        let mut target = None;
        if state.halted_by_admin {
            blocked = Some(Blocked::HaltedByAdmin);
        } else if let Some(c) = keep {
            let position = |n: usize| pk.list.iter().position(|s| s.node == Some(n));
            let earlier = candidates
                .iter()
                .copied()
                .find(|&n| position(n) < position(c));
            if let Some(r) = pk.requested.filter(|r| candidates.contains(r)) {
                target = Some(r);
                choice = Some(Choice::Requested);
            } else if let (FailbackPolicy::Automatic, true, Some(e)) =
                (pk.spec.failback_policy, state.switching_enabled, earlier)
            {
                target = Some(e);
                choice = Some(Choice::Failback);
            } else {
                target = Some(c);
                choice = Some(Choice::Sticky);
            }
        } else {
            let may_start = state.run_requested
                || (state.switching_enabled && (was_running || pk.spec.auto_run));
            if !may_start {
                blocked = Some(if was_running || pk.spec.auto_run {
                    Blocked::SwitchingDisabled
                } else {
                    Blocked::AutoRunOff
                });
            } else if let Some((n, c)) = self.choose(p, &candidates)? {
                target = Some(n);
                choice = Some(c);
            } else {
                blocked = Some(Blocked::NoEligibleNode);
            }
        }

        let target: Vec<usize> = target.into_iter().collect();
        let leave_reason = |n: usize| -> ActionReason {
            if state.halted_by_admin {
                return ActionReason::Admin;
            }
            match rejection_at(n) {
                Some(r) => reason_for(r),
                None => match choice {
                    Some(Choice::Failback) => ActionReason::Failback,
                    Some(Choice::Requested) => ActionReason::Admin,
                    _ => ActionReason::Duplicate,
                },
            }
        };
        let leave: Vec<(usize, ActionReason)> = pk
            .current_live
            .iter()
            .copied()
            .filter(|n| !target.contains(n))
            .map(|n| (n, leave_reason(n)))
            .collect();
        let arrive = match choice {
            Some(Choice::Requested) => ActionReason::Admin,
            Some(Choice::Failback) => ActionReason::Failback,
            _ => match pk.current.first() {
                Some(&c) => leave_reason(c),
                None if was_running => ActionReason::Failover,
                None if state.run_requested => ActionReason::Admin,
                None => ActionReason::Startup,
            },
        };
        Ok(Decision {
            explanation: self.explanation(p, verdicts, &target, choice, blocked),
            target,
            leave,
            arrive,
        })
    }

    /// Picks a start node among `candidates` (eligible, in list order), or
    /// asks for a new pass with a handover pinned.
    fn choose(&self, p: usize, candidates: &[usize]) -> Result<Option<(usize, Choice)>, Handover> {
        let pk = &self.ctx.pkgs[p];
        if let Some(r) = pk.requested.filter(|r| candidates.contains(r)) {
            return Ok(Some((r, Choice::Requested)));
        }
        let pinned = self.handovers.iter().find(|h| h.follower == p);
        if let Some(h) = pinned.filter(|h| candidates.contains(&h.node)) {
            let leader = self.ctx.pkgs[h.leader].spec.name.clone();
            return Ok(Some((h.node, Choice::Handover { leader })));
        }
        if let Some(l) = pk.follow {
            let lk = &self.ctx.pkgs[l];
            if let Some(at) = &self.placed[l] {
                if let (None, [t]) = (pinned, at.as_slice()) {
                    let t = *t;
                    let handover = !candidates.contains(&t)
                        && lk.spec.kind == PackageKind::Failover
                        && lk.current_live.contains(&t)
                        // A leader an operator froze is not evicted.
                        && lk.state.switching_enabled
                        && self.ctx.avoids_each_other(p, l)
                        && lk.priority >= pk.priority
                        && pk.list.iter().any(|s| s.node == Some(t))
                        && self
                            .rejections(p, Some(t), true, Mode::Start, Some(l))
                            .is_empty();
                    if handover {
                        return Err(Handover {
                            follower: p,
                            leader: l,
                            node: t,
                        });
                    }
                }
                if let Some(&n) = candidates.iter().find(|n| at.contains(n)) {
                    return Ok(Some((
                        n,
                        Choice::Follows {
                            leader: lk.spec.name.clone(),
                        },
                    )));
                }
            }
        }
        Ok(match pk.spec.failover_policy {
            FailoverPolicy::ConfiguredNode => {
                candidates.first().map(|&n| (n, Choice::FirstEligible))
            }
            FailoverPolicy::MinPackageNode => {
                let mut best: Option<usize> = None;
                for &n in candidates {
                    if best.is_none_or(|b| self.load[n] < self.load[b]) {
                        best = Some(n);
                    }
                }
                best.map(|n| {
                    (
                        n,
                        Choice::FewestPackages {
                            count: self.load[n],
                        },
                    )
                })
            }
        })
    }

    fn place_multi(&self, p: usize) -> Decision {
        let pk = &self.ctx.pkgs[p];
        let state = pk.state;
        let verdicts = self.verdicts(p);
        let may_start_new = !state.halted_by_admin
            && (state.run_requested || (pk.spec.auto_run && state.switching_enabled));
        let target: Vec<usize> = if state.halted_by_admin {
            Vec::new()
        } else {
            pk.list
                .iter()
                .filter_map(|s| s.node)
                .filter(|&n| {
                    (may_start_new || pk.current.contains(&n))
                        && verdicts
                            .iter()
                            .any(|(_, m, r)| *m == Some(n) && r.is_empty())
                })
                .collect()
        };
        let leave = pk
            .current_live
            .iter()
            .copied()
            .filter(|n| !target.contains(n))
            .map(|n| {
                let reason = if state.halted_by_admin {
                    ActionReason::Admin
                } else {
                    verdicts
                        .iter()
                        .find(|(_, m, _)| *m == Some(n))
                        .and_then(|(_, _, r)| r.first())
                        .map_or(ActionReason::Admin, reason_for)
                };
                (n, reason)
            })
            .collect();
        let (choice, blocked) = if !target.is_empty() {
            (Some(Choice::EveryEligibleNode), None)
        } else if state.halted_by_admin {
            (None, Some(Blocked::HaltedByAdmin))
        } else if !may_start_new && pk.current.is_empty() {
            let b = if pk.spec.auto_run {
                Blocked::SwitchingDisabled
            } else {
                Blocked::AutoRunOff
            };
            (None, Some(b))
        } else {
            (None, Some(Blocked::NoEligibleNode))
        };
        let arrive = if state.run_requested {
            ActionReason::Admin
        } else {
            ActionReason::Startup
        };
        Decision {
            explanation: self.explanation(p, verdicts, &target, choice, blocked),
            target,
            leave,
            arrive,
        }
    }

    fn explanation(
        &self,
        p: usize,
        verdicts: Vec<(&str, Option<usize>, Vec<Rejection>)>,
        target: &[usize],
        choice: Option<Choice>,
        blocked: Option<Blocked>,
    ) -> Explanation {
        let pk = &self.ctx.pkgs[p];
        Explanation {
            package: pk.spec.name.clone(),
            kind: pk.spec.kind,
            failover_policy: pk.spec.failover_policy,
            priority: pk.spec.priority,
            running_on: pk.state.running_on.clone(),
            placed_on: target
                .iter()
                .map(|&n| self.ctx.nodes[n].name.clone())
                .collect(),
            nodes: verdicts
                .into_iter()
                .map(|(node, _, rejections)| NodeVerdict {
                    node: node.to_owned(),
                    rejections,
                })
                .collect(),
            choice,
            blocked,
        }
    }

    fn into_plan(self) -> Plan {
        let ctx = self.ctx;
        let decisions: Vec<Decision> = self
            .decisions
            .into_iter()
            // Every package is in the placement order, so each has a decision.
            .map(|d| d.expect("every package is placed once per pass"))
            .collect();
        // A handover happened when the follower arrives on the leader's node
        // and the leader leaves it.
        let handovers: Vec<Handover> = self
            .handovers
            .iter()
            .copied()
            .filter(|h| {
                decisions[h.follower].target.contains(&h.node)
                    && !ctx.pkgs[h.follower].current_live.contains(&h.node)
                    && decisions[h.leader].leave.iter().any(|&(n, _)| n == h.node)
            })
            .collect();

        // Run order: predecessors before dependents, leaders before followers,
        // except that a follower taking over its leader's node runs first.
        let mut edges = Vec::new();
        for (p, pk) in ctx.pkgs.iter().enumerate() {
            for &(dep, target) in &pk.deps {
                if let (DependencyCondition::Up, Some(d)) = (dep.condition, target) {
                    edges.push((d, p));
                }
            }
            if let Some(l) = pk.follow {
                if handovers.iter().any(|h| h.follower == p && h.leader == l) {
                    edges.push((p, l));
                } else {
                    edges.push((l, p));
                }
            }
        }
        let run_order = topo_order(&ctx.pkgs, &edges);
        let name = |n: usize| ctx.nodes[n].name.clone();
        let action = |op, p: usize, n: usize, reason| Action {
            op,
            package: ctx.pkgs[p].spec.name.clone(),
            node: name(n),
            reason,
        };

        let mut actions = Vec::new();
        // Halts first, dependents before their predecessors.
        for &p in run_order.iter().rev() {
            let mut leave = decisions[p].leave.clone();
            leave.sort_by_key(|&(n, _)| n);
            for (n, reason) in leave {
                if !handovers.iter().any(|h| h.leader == p && h.node == n) {
                    actions.push(action(Op::Halt, p, n, reason));
                }
            }
        }
        for &p in &run_order {
            let d = &decisions[p];
            for &n in &d.target {
                if ctx.pkgs[p].current_live.contains(&n) {
                    continue;
                }
                actions.push(action(Op::Run, p, n, d.arrive));
                for h in handovers.iter().filter(|h| h.follower == p && h.node == n) {
                    let reason = decisions[h.leader]
                        .leave
                        .iter()
                        .find(|&&(m, _)| m == n)
                        .map_or(ActionReason::Avoid, |&(_, r)| r);
                    actions.push(action(Op::Halt, h.leader, n, reason));
                }
            }
        }

        let mut placement = BTreeMap::new();
        let mut explanations = BTreeMap::new();
        for (p, d) in decisions.into_iter().enumerate() {
            let name = ctx.pkgs[p].spec.name.clone();
            placement.insert(name.clone(), d.explanation.placed_on.clone());
            explanations.insert(name, d.explanation);
        }
        Plan {
            placement,
            actions,
            explanations,
        }
    }
}

/// The action reason behind the first rule that rejects a node a package runs on.
fn reason_for(rejection: &Rejection) -> ActionReason {
    match rejection {
        Rejection::UnknownNode | Rejection::NodeDown | Rejection::FailedHere => {
            ActionReason::Failover
        }
        Rejection::NotListed => ActionReason::Reconfigured,
        Rejection::NodeSwitchingDisabled => ActionReason::Admin,
        Rejection::ResourceNotUp { .. } | Rejection::ResourceDown { .. } => {
            ActionReason::ResourceDown
        }
        Rejection::DependencyNotMet { .. } => ActionReason::Dependency,
        Rejection::Avoids { .. } | Rejection::AvoidedBy { .. } | Rejection::HandedOver { .. } => {
            ActionReason::Avoid
        }
        Rejection::DisplacedBy { .. } => ActionReason::Displaced,
    }
}
