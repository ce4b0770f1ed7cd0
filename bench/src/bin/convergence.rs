//! Convergence of the placement engine on many random scenarios: the long
//! run of the property test in `host/src/placement/tests.rs`.
//!
//! For each seed `0..N` it builds `random_scenario_from_seed(seed)` (1–5
//! nodes, 1–6 packages, every kind, policy, priority, dependency, follow and
//! avoid, any state) and checks `check_convergence`: carrying out a plan and
//! planning again gives no action, no partial plan leads to a package being
//! started back on a node it was halted on, and the coordinator's walk
//! (first action, plan again) ends. It prints how many held, and the first
//! few that did not, each with its seed and a description.
//!
//! `cargo build --release -p vigil-bench && target/release/convergence [N] [--first SEED]`

use std::collections::BTreeMap;
use std::time::Instant;

use vigil_host::placement::{
    ConvergenceError, check_convergence, describe, random_scenario_from_seed,
};

const DEFAULT_SCENARIOS: u64 = 100_000;
const SHOWN: usize = 3;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut count = DEFAULT_SCENARIOS;
    let mut first = 0u64;
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
    for seed in first..first + count {
        let snapshot = random_scenario_from_seed(seed);
        match check_convergence(&snapshot) {
            Ok(()) => held += 1,
            Err(e) => {
                let kind = match e {
                    ConvergenceError::NotAFixpoint { .. } => "not a fixpoint",
                    ConvergenceError::PlannedBack { .. } => "planned back",
                    ConvergenceError::NoEnd { .. } => "walk does not end",
                };
                *kinds.entry(kind).or_default() += 1;
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
    if held != count {
        std::process::exit(1);
    }
}

fn usage(msg: &str) -> ! {
    eprintln!("error: {msg}\nusage: convergence [N] [--first SEED]");
    std::process::exit(2);
}
