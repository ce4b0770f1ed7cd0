//! Synthetic clusters for benchmarks and scale tests of the placement engine.
//!
//! Deterministic for a given seed (a tiny SplitMix64 generator, so no `rand`
//! dependency and no entropy source); it builds a startup snapshot — every
//! node up, nothing running, every requirement up — and does not try to look
//! like any particular real cluster beyond list lengths and dependency mix.

use super::model::{
    ClusterSnapshot, Dependency, DependencyCondition, DependencyLocation, Evaluate, FailoverPolicy,
    NodeState, PackageSpec, ResourceRequirement,
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
