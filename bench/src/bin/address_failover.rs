//! The two-node address failover of issue 12, several times per case, with
//! medians: each node's `vigil host` in a network namespace of its own on a
//! bridge (etcd listens on it), a package with `[[ip]]` and an HTTP server
//! bound to the address, a client in a third namespace polling it every
//! 50 ms; node1's host is killed (SIGKILL) or frozen (SIGSTOP past the
//! lease TTL). Every run is checked as `tests/parts_cluster.rs` checks it
//! (the scenario is `vigil_tests::address_failover`): the address answers
//! from node2 in the end and never from both.
//!
//! Prints, per case, each run's figures and the medians of: the client's
//! outage (its last answer from node1 to its first from node2), the time
//! from the loss to node2's first answer, and the time from node1's guard
//! releasing the address to node2 adding it.
//!
//! `cargo build --workspace && target/debug/address_failover [--runs N]`
//! (as root; default 5 runs per case; needs `etcd`, `ip`, `nsenter`,
//! `python3`).

use std::time::Duration;

use anyhow::{Context, bail};
use vigil_tests::address_failover::{Figures, Loss, TTL_SECONDS, address_moves_to_node2};

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut runs = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => {
                let n = args.next().context("--runs needs a number")?;
                runs = n.parse().with_context(|| format!("--runs {n}"))?;
            }
            other => bail!("unknown argument {other:?}; usage: address_failover [--runs N]"),
        }
    }
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    println!("address_failover: {runs} runs per case, lease TTL {TTL_SECONDS} s");
    for (tag, loss) in [("bk", Loss::Kill), ("bf", Loss::Freeze)] {
        let mut all: Vec<Figures> = Vec::new();
        for run in 0..runs {
            let figures = address_moves_to_node2(tag, 10 + (run % 40) as u32, loss);
            println!("  {figures}");
            all.push(figures);
        }
        let seconds = |d: Duration| d.as_secs_f64();
        println!(
            "{loss:?}: median client outage {:.2} s, loss to node2's first answer {:.2} s, guard release to node2's add {} ms (target: outage <= TTL + 1 s = {} s)",
            seconds(median(all.iter().map(|f| f.outage).collect())),
            seconds(median(all.iter().map(|f| f.from_loss).collect())),
            median(all.iter().map(|f| f.release_to_add).collect()).as_millis(),
            TTL_SECONDS + 1
        );
    }
    Ok(())
}
