//! The placement algorithm: one [`ClusterSnapshot`] in, one [`Plan`] out.
//!
//! Packages are placed one at a time, in one pass, in *placement order*:
//! predecessors before dependents, the avoided package before its avoider
//! (unless the avoider is strictly more important, or frozen where it runs),
//! leaders before followers, then by priority, then packages that run (or
//! were halted to move) before those that do not, then by name. Each decision sees the
//! placement built so far; avoid and min_package_node look only at that, so a
//! decision does not change when a package that is placed later starts or
//! stops — which is what makes plans converge. Everything is indexed by node
//! and package number, so the pass is roughly linear in packages × list
//! length. Runs are carried out in the same order, halts in the reverse.
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
    disabled_nodes: BTreeSet::new(),
    halted_by_admin: false,
    run_requested: false,
    requested_node: None,
    left: None,
};

/// Computes the target placement, the actions to reach it and an explanation
/// for every package.
pub fn plan(snapshot: &ClusterSnapshot) -> Plan {
    let ctx = Ctx::new(snapshot);
    Pass::new(&ctx).run()
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
    /// not failed, not halted): a follower placed before its leader (the
    /// seed pattern) looks for the leader there.
    sticky: Vec<usize>,
    priority: u64,
    deps: Vec<(&'a Dependency, Option<usize>)>,
    follow: Option<usize>,
    /// Packages it must not share a node with, and whether it is this package
    /// that avoids them (else they avoid it). Which of two is placed first is
    /// decided by [`avoid_first`]; only the later one is constrained.
    peers: Vec<(usize, bool)>,
    requested: Option<usize>,
    verdicts: Option<&'a BTreeMap<String, BTreeMap<String, bool>>>,
}

struct Ctx<'a> {
    nodes: &'a [NodeState],
    pkgs: Vec<Pkg<'a>>,
    placement_order: Vec<usize>,
    /// (first, later) for every pair of packages in an avoid relation.
    avoid_order: BTreeSet<(usize, usize)>,
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

        // Record `avoid` on both sides; the direction decides who yields.
        for p in 0..pkgs.len() {
            let avoided: Vec<usize> = pkgs[p]
                .spec
                .avoid
                .iter()
                .filter_map(|n| pkg_idx.get(n.as_str()).copied())
                .collect();
            for q in avoided.into_iter().filter(|&q| q != p) {
                match pkgs[p].peers.iter_mut().find(|(x, _)| *x == q) {
                    // Already recorded from q's side: they avoid each other.
                    Some(entry) => entry.1 = true,
                    None => pkgs[p].peers.push((q, true)),
                }
                if !pkgs[q].peers.iter().any(|&(x, _)| x == p) {
                    pkgs[q].peers.push((p, false));
                }
            }
        }

        // Dependencies order first; an avoid or follow edge that would close
        // a cycle with the edges already there gives way (then whichever of
        // the two is placed first by the rest of the order wins the node).
        // Of follow and avoid, avoid goes first: in the seed pattern (a
        // leader that avoids its follower) the follower is placed first, takes
        // the leader's node, and the leader yields.
        let mut graph = OrderGraph::new(pkgs.len());
        for (p, pk) in pkgs.iter().enumerate() {
            for &(dep, d) in &pk.deps {
                if let (DependencyCondition::Up, Some(d)) = (dep.condition, d) {
                    graph.add(d, p);
                }
            }
        }
        // A `down` dependency is an exclusion, like avoid: the predecessor
        // goes first, and of two that exclude each other (as `vigil check`
        // requires) the more important one, then the first by name; the
        // one placed first ignores the other.
        for (p, pk) in pkgs.iter().enumerate() {
            for &(dep, d) in &pk.deps {
                let Some(d) = d.filter(|_| dep.condition == DependencyCondition::Down) else {
                    continue;
                };
                let mutual = pkgs[d]
                    .deps
                    .iter()
                    .any(|&(back, x)| x == Some(p) && back.condition == DependencyCondition::Down);
                let first = if mutual && (pkgs[p].priority, p) < (pkgs[d].priority, d) {
                    p
                } else {
                    d
                };
                graph.add_unless_cycle(first, p + d - first);
            }
        }
        // A pair with a package whose switching is disabled goes last: such
        // a package is frozen where it runs, a fact of the current state
        // that a plan can undo (a frozen package whose dependency fails is
        // halted), so its edge, whose direction depends on that state, must
        // not be the one that makes another avoid edge give way, or the
        // order would change once the plan is carried out. Switching itself
        // only an operator changes, so the insertion order stays put.
        let mut pairs: Vec<(usize, usize)> = pkgs
            .iter()
            .enumerate()
            .flat_map(|(p, pk)| pk.peers.iter().map(move |&(q, _)| (p, q)))
            .filter(|&(p, q)| p < q)
            .collect();
        pairs.sort_by_key(|&(p, q)| {
            !pkgs[p].state.switching_enabled || !pkgs[q].state.switching_enabled
        });
        let mut avoid_order = BTreeSet::new();
        for (p, q) in pairs {
            let first = avoid_first(&pkgs, p, q);
            let later = p + q - first;
            if graph.add_unless_cycle(first, later) {
                avoid_order.insert((first, later));
            }
        }
        for (p, pk) in pkgs.iter().enumerate() {
            if let Some(l) = pk.follow {
                graph.add_unless_cycle(l, p);
            }
        }
        let edges = graph.edges;
        let placement_order = topo_order(&pkgs, &edges);
        Ctx {
            nodes: &snap.nodes,
            pkgs,
            placement_order,
            avoid_order,
        }
    }

    /// Whether `p` avoids `q`.
    fn avoids(&self, p: usize, q: usize) -> bool {
        self.pkgs[p].peers.contains(&(q, true))
    }
}

/// The placement order's edges (from before to), with the reachability check
/// that keeps an optional edge from closing a cycle.
struct OrderGraph {
    out: Vec<Vec<usize>>,
    edges: Vec<(usize, usize)>,
}

impl OrderGraph {
    fn new(n: usize) -> Self {
        OrderGraph {
            out: vec![Vec::new(); n],
            edges: Vec::new(),
        }
    }

    fn add(&mut self, from: usize, to: usize) {
        self.out[from].push(to);
        self.edges.push((from, to));
    }

    /// Adds the edge unless `from` is reachable from `to` already.
    fn add_unless_cycle(&mut self, from: usize, to: usize) -> bool {
        let mut seen = vec![false; self.out.len()];
        let mut stack = vec![to];
        while let Some(x) = stack.pop() {
            if x == from {
                return false;
            }
            if !std::mem::replace(&mut seen[x], true) {
                stack.extend(self.out[x].iter().copied());
            }
        }
        self.add(from, to);
        true
    }
}

/// Whether a package is frozen where it runs: package switching disabled,
/// no operator request that would add instances or move it, and a current
/// node where it may stay.
fn frozen(pkgs: &[Pkg<'_>], x: usize) -> bool {
    let state = pkgs[x].state;
    !state.switching_enabled
        && !state.run_requested
        && state.requested_node.is_none()
        && !pkgs[x].sticky.is_empty()
}

/// Which of two packages in an avoid relation is placed first (the other
/// may not use its node). A package frozen where it runs (package switching
/// disabled, no operator request that would add instances or move it) is
/// not moved for the
/// other; else the avoided package goes first,
/// as if its avoider did not exist, unless the avoider is strictly more
/// important; two that avoid each other go by priority, then name.
fn avoid_first(pkgs: &[Pkg<'_>], p: usize, q: usize) -> usize {
    match (frozen(pkgs, p), frozen(pkgs, q)) {
        (true, false) => return p,
        (false, true) => return q,
        _ => {}
    }
    let p_avoids_q = pkgs[p].peers.contains(&(q, true));
    let q_avoids_p = pkgs[q].peers.contains(&(p, true));
    let by_importance = if (pkgs[p].priority, p) <= (pkgs[q].priority, q) {
        p
    } else {
        q
    };
    match (p_avoids_q, q_avoids_p) {
        (true, true) => by_importance,
        (true, false) if pkgs[p].priority < pkgs[q].priority => p,
        (true, false) => q,
        (false, true) if pkgs[q].priority < pkgs[p].priority => q,
        _ => p,
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

/// Kahn's algorithm, most important ready package first: by priority, then
/// a package that runs on a live node (or was halted to move) before one
/// that does not (as Pacemaker assigns active resources first, so
/// min_package_node sees the packages that stay), then by name; a cycle is
/// broken at its most important member.
fn topo_order(pkgs: &[Pkg<'_>], edges: &[(usize, usize)]) -> Vec<usize> {
    let n = pkgs.len();
    let mut out_edges: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut indegree = vec![0usize; n];
    for &(from, to) in edges {
        out_edges[from].push(to);
        indegree[to] += 1;
    }
    // "Keeps its node" is judged so that it does not change while a plan is
    // carried out: running on a live node, or halted to move (`left`).
    let rank = |p: usize| {
        let pk = &pkgs[p];
        let placed_now = !pk.current_live.is_empty() || pk.state.left.is_some();
        (pk.priority, !placed_now, p)
    };
    let key = |p: usize| Reverse(rank(p));
    let mut ready: BinaryHeap<Reverse<(u64, bool, usize)>> =
        (0..n).filter(|&p| indegree[p] == 0).map(key).collect();
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let p = match ready.pop() {
            Some(Reverse((_, _, p))) => p,
            None => {
                // Only cycles (and what waits on them) are left: take the
                // most important package that is on a cycle. One that only
                // waits on a cycle must still come after it, or it would be
                // placed before its predecessor.
                let mut remaining: Vec<usize> = (0..n).filter(|&p| !done[p]).collect();
                remaining.sort_by_key(|&p| rank(p));
                let on_cycle = |p: usize| {
                    let mut seen = vec![false; n];
                    let mut stack: Vec<usize> = out_edges[p].clone();
                    while let Some(x) = stack.pop() {
                        if x == p {
                            return true;
                        }
                        if !done[x] && !std::mem::replace(&mut seen[x], true) {
                            stack.extend(out_edges[x].iter().copied());
                        }
                    }
                    false
                };
                match remaining.iter().copied().find(|&p| on_cycle(p)) {
                    Some(p) => p,
                    None => match remaining.first() {
                        Some(&p) => p,
                        None => break,
                    },
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
    placed: Vec<Option<Vec<usize>>>,
    /// Packages per node in the new placement so far (min_package_node):
    /// where packages not placed yet run now does not count, so the count a
    /// package sees does not change while the plan is carried out.
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
    fn new(ctx: &'c Ctx<'a>) -> Self {
        Pass {
            ctx,
            placed: vec![None; ctx.pkgs.len()],
            load: vec![0u32; ctx.nodes.len()],
            decisions: (0..ctx.pkgs.len()).map(|_| None).collect(),
        }
    }

    fn run(mut self) -> Plan {
        for &p in &self.ctx.placement_order {
            let decision = match self.ctx.pkgs[p].spec.kind {
                PackageKind::Failover => self.place_failover(p),
                PackageKind::MultiNode | PackageKind::SystemMultiNode => self.place_multi(p),
            };
            for &n in &decision.target {
                self.load[n] += 1;
            }
            self.placed[p] = Some(decision.target.clone());
            self.decisions[p] = Some(decision);
        }
        self.into_plan()
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
        if dep.condition == DependencyCondition::Down && self.placed[q].is_none() {
            // Placed later, it is the one that adapts (as for avoid), so
            // where it runs now does not matter.
            return true;
        }
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

    /// Every rule that rejects `node` for package `p`.
    fn rejections(
        &self,
        p: usize,
        node: Option<usize>,
        listed: bool,
        mode: Mode,
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
        if pk.state.disabled_nodes.contains(&ns.name) {
            out.push(Rejection::PackageDisabledOnNode);
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
            // Only a package placed earlier constrains this one: a package
            // placed later yields to it (see `avoid_first`).
            let Some(at) = &self.placed[q] else {
                continue;
            };
            if !at.contains(&n) {
                continue;
            }
            let qk = &self.ctx.pkgs[q];
            let package = qk.spec.name.clone();
            let newly_placed = mode == Mode::Stay && !qk.current_live.contains(&n);
            out.push(match (newly_placed, p_avoids_q) {
                (true, true) => Rejection::Yields { package },
                (true, false) => Rejection::DisplacedBy { package },
                (false, true) => Rejection::Avoids { package },
                (false, false) => Rejection::AvoidedBy { package },
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
                    self.rejections(p, s.node, true, mode(s.node)),
                )
            })
            .collect();
        let mut extra: Vec<Option<usize>> = pk.current.iter().map(|&n| Some(n)).collect();
        extra.extend(pk.requested.map(Some));
        for n in extra {
            if !out.iter().any(|(_, m, _)| *m == n) {
                let name = n.map_or("", |n| self.ctx.nodes[n].name.as_str());
                out.push((name, n, self.rejections(p, n, false, mode(n))));
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

    fn place_failover(&self, p: usize) -> Decision {
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
        // A package halted to move (it left a node, not by an operator's
        // halt) is still failing over: without this an `auto_run = false`
        // package would stay down once its halt is done.
        let was_running =
            !pk.current.is_empty() || !pk.current_unknown.is_empty() || state.left.is_some();
        // Current nodes where it may stay (a duplicate's too), for failback
        // only (left empty otherwise: no allocation in the common case).
        let stay: Vec<usize> = if pk.spec.failback_policy == FailbackPolicy::Automatic {
            pk.current
                .iter()
                .copied()
                .filter(|&n| eligible(n))
                .collect()
        } else {
            Vec::new()
        };
        // Keep the operator's requested node if it runs there, else the first
        // current node (in list order) where it may stay.
        let keep = pk
            .requested
            .into_iter()
            .chain(pk.list.iter().filter_map(|s| s.node))
            .chain(pk.current.iter().copied())
            .find(|&n| pk.current.contains(&n) && eligible(n));

        let mut blocked = None;
        let mut choice = None;
        let mut target = None;
        if state.halted_by_admin {
            blocked = Some(Blocked::HaltedByAdmin);
        } else if let Some(c) = keep {
            if let Some(r) = pk.requested.filter(|r| candidates.contains(r)) {
                target = Some(r);
                choice = Some(Choice::Requested);
            } else if let Some(f) = self.failback(p, c, &candidates, &stay) {
                target = Some(f);
                choice = Some(Choice::Failback);
            } else {
                target = Some(c);
                choice = Some(Choice::Sticky);
            }
        } else {
            // An operator's move (`requested_node`) that has halted the
            // package starts it, as `vigil pkg run` would: the halt is half
            // of the move, whatever auto_run and package switching say.
            let may_start = state.run_requested
                || state.requested_node.is_some()
                || (state.switching_enabled && (was_running || pk.spec.auto_run));
            if !may_start {
                blocked = Some(if was_running || pk.spec.auto_run {
                    Blocked::SwitchingDisabled
                } else {
                    Blocked::AutoRunOff
                });
            } else if let Some((n, c)) = self.choose(p, &candidates) {
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
        Decision {
            explanation: self.explanation(p, verdicts, &target, choice, blocked),
            target,
            leave,
            arrive,
        }
    }

    /// Where automatic failback moves a package that may stay on `current`:
    /// where a start would put it now (so that, once halted, it starts
    /// exactly there and is never planned back), if that is an earlier node
    /// of its list (`configured_node`) or its primary node, the first listed
    /// (`min_package_node`, as Serviceguard).
    fn failback(
        &self,
        p: usize,
        current: usize,
        candidates: &[usize],
        stay: &[usize],
    ) -> Option<usize> {
        let pk = &self.ctx.pkgs[p];
        if pk.spec.failback_policy != FailbackPolicy::Automatic || !pk.state.switching_enabled {
            return None;
        }
        let position = |n: usize| pk.list.iter().position(|s| s.node == Some(n));
        // Every node where it may run, its duplicates included: a plan made
        // once a duplicate is halted sees that node as a start candidate, so
        // failback must see it too or the two plans disagree.
        let mut all: Vec<usize> = candidates.to_vec();
        all.push(current);
        all.extend(stay.iter().copied().filter(|&n| n != current));
        all.sort_by_key(|&n| position(n));
        let (start, _) = self.choose(p, &all)?;
        let better = match pk.spec.failover_policy {
            FailoverPolicy::ConfiguredNode => position(start) < position(current),
            FailoverPolicy::MinPackageNode => position(start) == Some(0),
        };
        (start != current && better).then_some(start)
    }

    /// Picks a start node among `candidates` (eligible, in list order).
    fn choose(&self, p: usize, candidates: &[usize]) -> Option<(usize, Choice)> {
        let pk = &self.ctx.pkgs[p];
        if let Some(r) = pk.requested.filter(|r| candidates.contains(r)) {
            return Some((r, Choice::Requested));
        }
        if let Some(l) = pk.follow {
            let lk = &self.ctx.pkgs[l];
            // A leader placed later because it avoids this follower (the
            // seed pattern: the avoid rule itself ordered the two) is looked
            // for where it runs now and may stay: the follower takes that
            // node and the leader yields. A leader placed later for any other
            // reason (its avoid or follow edge would have closed a cycle) is
            // not followed: whether it runs must not change where the
            // follower goes, or the plan would change as it is carried out. Nor does a package with automatic
            // failback take its leader's node: it would fail back from there
            // and the two would swap nodes.
            let takes_over = self.ctx.avoid_order.contains(&(p, l))
                && self.ctx.avoids(l, p)
                && pk.spec.failback_policy == FailbackPolicy::Manual;
            let (at, handover) = match &self.placed[l] {
                Some(at) => (at.as_slice(), false),
                None if takes_over => (lk.sticky.as_slice(), true),
                None => (&[][..], false),
            };
            if let Some(&n) = candidates.iter().find(|n| at.contains(n)) {
                let leader = lk.spec.name.clone();
                let choice = if handover {
                    Choice::Handover { leader }
                } else {
                    Choice::Follows { leader }
                };
                return Some((n, choice));
            }
        }
        match pk.spec.failover_policy {
            FailoverPolicy::ConfiguredNode => {
                candidates.first().map(|&n| (n, Choice::FirstEligible))
            }
            FailoverPolicy::MinPackageNode => {
                // With automatic failback it would move to its primary at
                // once: start it there.
                let primary = pk.list.first().and_then(|s| s.node);
                if let Some(n) = primary.filter(|n| {
                    pk.spec.failback_policy == FailbackPolicy::Automatic && candidates.contains(n)
                }) {
                    return Some((n, Choice::PrimaryNode));
                }
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
        }
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
        // A handover (the seed pattern): follower F arrives on node T where
        // its leader L runs, and L, which avoids F, leaves T for it. F runs
        // on T before L halts there, so the leader's node is never empty.
        let mut handovers: Vec<(usize, usize, usize)> = Vec::new();
        for (f, fk) in ctx.pkgs.iter().enumerate() {
            let Some(l) = fk.follow else { continue };
            if !ctx.avoid_order.contains(&(f, l)) || !ctx.avoids(l, f) {
                continue;
            }
            for &t in &decisions[f].target {
                let arrives = !fk.current_live.contains(&t);
                let leader_leaves = decisions[l].leave.iter().any(|&(n, _)| n == t);
                if arrives && leader_leaves {
                    handovers.push((f, l, t));
                }
            }
        }

        // Run order: the placement order (predecessors before dependents,
        // the avoided package before its avoider, leaders before followers,
        // a follower taking over its leader's node first). Each package's
        // start then comes after those its placement looked at, so a plan
        // made half way sees the same placement (a separate order, with the
        // cycles broken elsewhere, could start a leader before the follower
        // placed ahead of it, and the running leader then drew the follower
        // into a handover).
        let run_order = &ctx.placement_order;
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
                if !handovers.iter().any(|&(_, l, t)| l == p && t == n) {
                    actions.push(action(Op::Halt, p, n, reason));
                }
            }
        }
        let mut handover_halted: Vec<(usize, usize)> = Vec::new();
        let mut handover_halt = |actions: &mut Vec<Action>, l: usize, n: usize| {
            if handover_halted.contains(&(l, n)) {
                return;
            }
            handover_halted.push((l, n));
            let reason = decisions[l]
                .leave
                .iter()
                .find(|&&(m, _)| m == n)
                .map_or(ActionReason::Avoid, |&(_, r)| r);
            actions.push(action(Op::Halt, l, n, reason));
        };
        for &p in run_order {
            let d = &decisions[p];
            for &n in &d.target {
                if ctx.pkgs[p].current_live.contains(&n) {
                    continue;
                }
                // A leader whose follower comes after it in the run order (an
                // order cycle broke the handover edge) halts before it runs
                // elsewhere: never on two nodes at once.
                for &(_, _, t) in handovers.iter().filter(|&&(_, l, _)| l == p) {
                    handover_halt(&mut actions, p, t);
                }
                actions.push(action(Op::Run, p, n, d.arrive));
                for &(_, l, _) in handovers.iter().filter(|&&(f, _, t)| f == p && t == n) {
                    handover_halt(&mut actions, l, n);
                }
            }
        }
        // A handover whose leader goes nowhere and whose follower did not
        // run (it cannot happen when the follower takes the node, but the
        // halt must not be lost).
        for &(_, l, t) in &handovers {
            handover_halt(&mut actions, l, t);
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
        Rejection::NodeSwitchingDisabled | Rejection::PackageDisabledOnNode => ActionReason::Admin,
        Rejection::ResourceNotUp { .. } | Rejection::ResourceDown { .. } => {
            ActionReason::ResourceDown
        }
        Rejection::DependencyNotMet { .. } => ActionReason::Dependency,
        Rejection::Avoids { .. } | Rejection::AvoidedBy { .. } | Rejection::Yields { .. } => {
            ActionReason::Avoid
        }
        Rejection::DisplacedBy { .. } => ActionReason::Displaced,
    }
}
