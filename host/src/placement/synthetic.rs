//! Synthetic clusters for benchmarks and scale tests of the placement engine,
//! and small random scenarios for its convergence property.
//!
//! Deterministic for a given seed (a tiny SplitMix64 generator, so no `rand`
//! dependency and no entropy source). [`synthetic_cluster`] builds a large
//! startup snapshot — every node up, nothing running, every requirement up —
//! and does not try to look like any particular real cluster beyond list
//! lengths and dependency mix. [`random_scenario`] builds small clusters in
//! any state, from a supplied sequence of choices (so a property test can
//! shrink it).

use super::model::{
    ClusterSnapshot, Dependency, DependencyCondition, DependencyLocation, Evaluate, FailbackPolicy,
    FailoverPolicy, NodeState, PackageKind, PackageSpec, ResourceRequirement,
};

/// SplitMix64: small, fast, and good enough to scatter node lists.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-enough in `0..bound` (`bound` > 0).
    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// The resource every synthetic package requires before start.
pub const SYNTHETIC_RESOURCE: &str = "/net/interfaces/eth0/status";

/// `nodes` nodes (`node001`…) and `packages` failover packages (`pkg00001`…),
/// each with an ordered list of 3 distinct nodes (fewer if the cluster is
/// smaller), a mix of both failover policies, some priorities, one
/// `before_start` resource, and about 10% of packages in same_node or
/// different_node dependency pairs.
pub fn synthetic_cluster(nodes: usize, packages: usize, seed: u64) -> ClusterSnapshot {
    let mut rng = SplitMix64(seed);
    let node_names: Vec<String> = (1..=nodes).map(|i| format!("node{i:03}")).collect();
    let mut snap = ClusterSnapshot {
        nodes: node_names.iter().map(|n| NodeState::up(n)).collect(),
        ..ClusterSnapshot::default()
    };
    let list_len = nodes.min(3);
    let mut i = 0;
    while i < packages {
        let mut spec = random_package(&mut rng, i, &node_names, list_len);
        // One package in ten starts a pair; pairs take two packages (~10%).
        let pair = i + 1 < packages && rng.below(20) == 0;
        if pair {
            let mut dependent = random_package(&mut rng, i + 1, &node_names, list_len);
            let location = if rng.below(2) == 0 {
                // Same lists, so the dependent can always join its predecessor.
                dependent.nodes = spec.nodes.clone();
                DependencyLocation::SameNode
            } else {
                DependencyLocation::DifferentNode
            };
            // The predecessor must be at least as important as its dependent,
            // or the dependent could not follow it.
            spec.priority = dependent.priority;
            dependent.dependencies.push(Dependency {
                package: spec.name.clone(),
                condition: DependencyCondition::Up,
                location,
            });
            snap.packages.push(spec);
            snap.packages.push(dependent);
            i += 2;
        } else {
            snap.packages.push(spec);
            i += 1;
        }
    }
    for spec in &snap.packages {
        for node in &spec.nodes {
            snap.resource_up
                .entry(spec.name.clone())
                .or_default()
                .entry(node.clone())
                .or_default()
                .insert(SYNTHETIC_RESOURCE.to_owned(), true);
        }
    }
    snap
}

fn random_package(
    rng: &mut SplitMix64,
    i: usize,
    node_names: &[String],
    list_len: usize,
) -> PackageSpec {
    let mut list: Vec<&str> = Vec::with_capacity(list_len);
    while list.len() < list_len {
        let n = node_names[rng.below(node_names.len())].as_str();
        if !list.contains(&n) {
            list.push(n);
        }
    }
    let mut spec = PackageSpec::failover(&format!("pkg{:05}", i + 1), &list);
    if rng.below(2) == 0 {
        spec.failover_policy = FailoverPolicy::MinPackageNode;
    }
    if rng.below(4) == 0 {
        spec.priority = Some(rng.below(100) as u32 + 1);
    }
    spec.resources.push(ResourceRequirement {
        name: SYNTHETIC_RESOURCE.to_owned(),
        evaluate: Evaluate::BeforeStart,
    });
    spec
}

/// The resource random scenarios require.
const SCENARIO_RESOURCE: &str = "/r";

/// A small random cluster and state for the convergence property: 1–5 nodes
/// (some down or with switching off), 1–6 packages of every kind with both
/// policies, priorities, resources with random verdicts, dependencies,
/// follow and avoid, and a random state (running or not, on a live or dead
/// node or twice, halted while moving, failed marks, operator requests — a
/// move only for
/// packages with manual failback).
///
/// `pick(n)` supplies every choice, in `0..n`; 0 is always the plainest
/// option (node up, no dependency, not running…), so a sequence of choices
/// that shrinks towards zeros shrinks the scenario. The configuration keeps
/// what `vigil check` enforces: up dependencies and follow chains without
/// cycles, down dependencies mutual and never with min_package_node, no
/// package following one it avoids, same_node dependencies that can hold.
pub fn random_scenario(pick: &mut dyn FnMut(usize) -> usize) -> ClusterSnapshot {
    let node_count = 1 + pick(5);
    let node_names: Vec<String> = (1..=node_count).map(|i| format!("node{i}")).collect();
    let mut snap = ClusterSnapshot::default();
    for name in &node_names {
        let mut node = NodeState::up(name);
        node.up = pick(5) != 1;
        node.switching_enabled = pick(8) != 1;
        snap.nodes.push(node);
    }
    let package_count = 1 + pick(6);
    let names: Vec<String> = (0..package_count)
        .map(|i| ((b'a' + i as u8) as char).to_string())
        .collect();
    for name in &names {
        let kind = match pick(10) {
            8 => PackageKind::MultiNode,
            9 => PackageKind::SystemMultiNode,
            _ => PackageKind::Failover,
        };
        let mut spec = PackageSpec::failover(name, &[]);
        spec.kind = kind;
        if kind == PackageKind::SystemMultiNode || pick(12) == 1 {
            spec.nodes = vec!["*".to_owned()];
        } else {
            let mut pool = node_names.clone();
            let len = 1 + pick(node_count);
            for _ in 0..len {
                spec.nodes.push(pool.remove(pick(pool.len())));
            }
        }
        if pick(2) == 1 {
            spec.failover_policy = FailoverPolicy::MinPackageNode;
        }
        if pick(2) == 1 {
            spec.failback_policy = FailbackPolicy::Automatic;
        }
        spec.auto_run = pick(8) != 1;
        if pick(3) != 0 {
            spec.priority = Some(1 + pick(3) as u32);
        }
        if pick(3) == 1 {
            let evaluate = if pick(3) == 1 {
                Evaluate::AfterStart
            } else {
                Evaluate::BeforeStart
            };
            spec.resources.push(ResourceRequirement {
                name: SCENARIO_RESOURCE.to_owned(),
                evaluate,
            });
            for node in &node_names {
                match pick(4) {
                    1 => snap.set_resource(name, node, SCENARIO_RESOURCE, false),
                    2 => {}
                    _ => snap.set_resource(name, node, SCENARIO_RESOURCE, true),
                }
            }
        }
        snap.packages.push(spec);
    }
    for i in 1..package_count {
        // Up dependencies and follow point to earlier packages: no cycles.
        if pick(4) == 1 {
            let j = pick(i);
            let location = match pick(4) {
                0 => DependencyLocation::SameNode,
                1 => DependencyLocation::DifferentNode,
                2 => DependencyLocation::AnyNode,
                _ => DependencyLocation::AllNodes,
            };
            let shares_node = {
                let expand = |p: &PackageSpec| -> Vec<String> {
                    if p.nodes.iter().any(|n| n == "*") {
                        node_names.clone()
                    } else {
                        p.nodes.clone()
                    }
                };
                let other = expand(&snap.packages[j]);
                expand(&snap.packages[i]).iter().any(|n| other.contains(n))
            };
            let down = pick(4) == 1
                && matches!(
                    location,
                    DependencyLocation::SameNode | DependencyLocation::DifferentNode
                );
            if down {
                for (from, to) in [(i, j), (j, i)] {
                    snap.packages[from].failover_policy = FailoverPolicy::ConfiguredNode;
                    snap.packages[from].dependencies.push(Dependency {
                        package: names[to].clone(),
                        condition: DependencyCondition::Down,
                        location,
                    });
                }
            } else if location != DependencyLocation::SameNode || shares_node {
                snap.packages[i].dependencies.push(Dependency {
                    package: names[j].clone(),
                    condition: DependencyCondition::Up,
                    location,
                });
            }
        }
        if snap.packages[i].kind == PackageKind::Failover && pick(4) == 1 {
            snap.packages[i].follow = Some(names[pick(i)].clone());
        }
    }
    for i in 0..package_count {
        for _ in 0..[0, 1, 0, 2][pick(4)] {
            let j = pick(package_count);
            let other = &names[j];
            let spec = &snap.packages[i];
            if j != i && !spec.avoid.contains(other) && spec.follow.as_ref() != Some(other) {
                snap.packages[i].avoid.push(other.clone());
            }
        }
    }
    for (i, name) in names.iter().enumerate() {
        let failover = snap.packages[i].kind == PackageKind::Failover;
        let failback = snap.packages[i].failback_policy == FailbackPolicy::Automatic;
        let state = snap.state_mut(name);
        if pick(2) == 1 {
            state.running_on.push(node_names[pick(node_count)].clone());
            let extra = if failover {
                pick(10) == 1
            } else {
                pick(2) == 1
            };
            if extra {
                let n = node_names[pick(node_count)].clone();
                if !state.running_on.contains(&n) {
                    state.running_on.push(n);
                }
            }
        }
        state.switching_enabled = pick(10) != 1;
        if pick(8) == 1 {
            state.failed_on.insert(node_names[pick(node_count)].clone());
        }
        if state.running_on.is_empty() && pick(8) == 1 {
            state.left = Some(node_names[pick(node_count)].clone());
        }
        state.halted_by_admin = pick(15) == 1;
        state.run_requested = pick(10) == 1;
        // An operator's move of a package with automatic failback to a node
        // failback would leave is undone by failback once the request is
        // consumed: a new input, not a plan that fails to converge.
        if pick(12) == 1 && !failback {
            state.requested_node = Some(node_names[pick(node_count)].clone());
        }
    }
    snap
}

/// [`random_scenario`] with its choices drawn from a seed.
pub fn random_scenario_from_seed(seed: u64) -> ClusterSnapshot {
    let mut rng = SplitMix64(seed);
    random_scenario(&mut |n| rng.below(n))
}

/// The choices [`random_scenario_from_seed`] makes for `seed`, in order:
/// replayed through [`random_scenario`] they give the same scenario, and a
/// shrinker may lower them (see `bench/src/bin/convergence.rs --shrink`).
pub fn random_scenario_choices(seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64(seed);
    let mut choices = Vec::new();
    random_scenario(&mut |n| {
        let c = rng.below(n);
        choices.push(c);
        c
    });
    choices
}
