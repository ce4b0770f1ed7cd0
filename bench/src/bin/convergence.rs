//! Convergence of the placement engine on many random scenarios: the long
//! run of the property test in `host/src/placement/tests.rs`.
//!
//! For each seed `0..N` it builds `random_scenario_from_seed(seed)` (1–5
//! nodes, 1–6 packages, every kind, policy, priority, dependency, follow and
//! avoid, any state) and checks `check_convergence`: carrying out a plan and
//! planning again gives no action, no partial plan leads to a package being
//! started back on a node it was halted on, and the coordinator's walk
//! (first action, plan again) ends. It prints how many held, and the first
//! few that did not, each with its seed and a description; `--seeds` also
//! lists every failing seed with its kind of failure. `--shrink SEED` shrinks
//! a failing seed's scenario (lowers the generator's choices one at a time
//! while the same kind of failure remains) and prints the smallest found.
//!
//! `cargo build --release -p vigil-bench && target/release/convergence [N] [--first SEED] [--seeds] [--shrink SEED]`

use std::collections::BTreeMap;
use std::time::Instant;

use vigil_host::placement::{
    ClusterSnapshot, ConvergenceError, check_convergence, describe, random_scenario,
    random_scenario_choices, random_scenario_from_seed,
};

const DEFAULT_SCENARIOS: u64 = 100_000;
const SHOWN: usize = 3;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut count = DEFAULT_SCENARIOS;
    let mut first = 0u64;
    let mut list_seeds = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--first" => {
                i += 1;
                first = args
                    .get(i)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| usage("--first needs a seed"));
            }
            "--seeds" => list_seeds = true,
            "--shrink" => {
                i += 1;
                let seed = args
                    .get(i)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| usage("--shrink needs a seed"));
                shrink(seed);
                return;
            }
            n => {
                count = n
                    .replace(',', "")
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("not a count: {n:?}")))
            }
        }
        i += 1;
    }

    let start = Instant::now();
    let mut held = 0u64;
    let mut kinds: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut shown = 0;
    let mut failed: Vec<(u64, &'static str)> = Vec::new();
    for seed in first..first + count {
        let snapshot = random_scenario_from_seed(seed);
        match check_convergence(&snapshot) {
            Ok(()) => held += 1,
            Err(e) => {
                let kind = kind_of(&e);
                *kinds.entry(kind).or_default() += 1;
                failed.push((seed, kind));
                if shown < SHOWN {
                    shown += 1;
                    println!("seed {seed}: {e}\n{}", describe(&snapshot));
                }
            }
        }
    }
    let elapsed = start.elapsed();
    println!(
        "convergence: {held}/{count} scenarios held (seeds {first}..{}), {:.1} s",
        first + count,
        elapsed.as_secs_f64()
    );
    for (kind, n) in kinds {
        println!("  {n} failed: {kind}");
    }
    if list_seeds {
        for (seed, kind) in &failed {
            println!("  seed {seed}: {kind}");
        }
    }
    if held != count {
        std::process::exit(1);
    }
}

fn kind_of(e: &ConvergenceError) -> &'static str {
    match e {
        ConvergenceError::NotAFixpoint { .. } => "not a fixpoint",
        ConvergenceError::PlannedBack { .. } => "planned back",
        ConvergenceError::NoEnd { .. } => "walk does not end",
    }
}

/// The scenario that `choices` make (a missing choice is 0, one out of range
/// the largest allowed).
fn replay(choices: &[usize]) -> ClusterSnapshot {
    let mut next = choices.iter();
    random_scenario(&mut |n| next.next().map_or(0, |&c| c.min(n - 1)))
}

/// Greedy shrinking: drop a choice, or lower it, while the scenario still
/// fails the same way; repeat until nothing helps.
fn shrink(seed: u64) {
    let mut best = random_scenario_choices(seed);
    let Err(e) = check_convergence(&random_scenario_from_seed(seed)) else {
        println!("seed {seed} holds: nothing to shrink");
        return;
    };
    let kind = kind_of(&e);
    let fails = |c: &[usize]| {
        check_convergence(&replay(c))
            .err()
            .is_some_and(|e| kind_of(&e) == kind)
    };
    let mut improved = true;
    while improved {
        improved = false;
        let mut i = 0;
        while i < best.len() {
            let mut removed = best.clone();
            removed.remove(i);
            if fails(&removed) {
                best = removed;
                improved = true;
                continue;
            }
            for v in 0..best[i] {
                let mut lower = best.clone();
                lower[i] = v;
                if fails(&lower) {
                    best = lower;
                    improved = true;
                    break;
                }
            }
            i += 1;
        }
        while best.last() == Some(&0) {
            best.pop();
        }
    }
    let snap = shrink_snapshot(replay(&best), &|s: &ClusterSnapshot| {
        check_convergence(s)
            .err()
            .is_some_and(|e| kind_of(&e) == kind)
    });
    let e = check_convergence(&snap).err();
    println!("seed {seed} shrunk to choices {best:?}, then by package");
    if let Some(e) = e {
        println!("{e}");
    }
    println!("{}", describe(&snap));
}

/// Second stage of shrinking, on the snapshot itself: drop whole packages
/// (and every mention of them), then one setting at a time, while it fails.
fn shrink_snapshot(
    mut snap: ClusterSnapshot,
    fails: &dyn Fn(&ClusterSnapshot) -> bool,
) -> ClusterSnapshot {
    let mut improved = true;
    while improved {
        improved = false;
        let names: Vec<String> = snap.packages.iter().map(|p| p.name.clone()).collect();
        for name in &names {
            let mut smaller = snap.clone();
            smaller.packages.retain(|p| &p.name != name);
            smaller.package_states.remove(name);
            smaller.resource_up.remove(name);
            for p in &mut smaller.packages {
                p.avoid.retain(|a| a != name);
                p.dependencies.retain(|d| &d.package != name);
                if p.follow.as_ref() == Some(name) {
                    p.follow = None;
                }
            }
            if fails(&smaller) {
                snap = smaller;
                improved = true;
            }
        }
        for i in 0..snap.packages.len() {
            let simpler: [fn(&mut ClusterSnapshot, usize); 9] = [
                |s, i| s.packages[i].priority = None,
                |s, i| s.packages[i].avoid.clear(),
                |s, i| s.packages[i].follow = None,
                |s, i| s.packages[i].dependencies.clear(),
                |s, i| s.packages[i].resources.clear(),
                |s, i| s.packages[i].auto_run = true,
                |s, i| s.packages[i].failback_policy = Default::default(),
                |s, i| s.packages[i].failover_policy = Default::default(),
                |s, i| {
                    let name = s.packages[i].name.clone();
                    s.package_states.remove(&name);
                },
            ];
            for change in simpler {
                let mut smaller = snap.clone();
                change(&mut smaller, i);
                if smaller != snap && fails(&smaller) {
                    snap = smaller;
                    improved = true;
                }
            }
        }
    }
    snap
}

fn usage(msg: &str) -> ! {
    eprintln!("error: {msg}\nusage: convergence [N] [--first SEED] [--seeds] [--shrink SEED]");
    std::process::exit(2);
}
