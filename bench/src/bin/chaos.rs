//! The long chaos run, by hand: a real etcd, three real `vigil host`
//! processes and seven failover packages whose services write beats, under
//! randomized faults drawn from `--seed` (see `vigil_tests::chaos` for the
//! packages, the fault kinds and what counts as an overlap, a lost package,
//! a dead host or a stuck cluster). Prints one line per trial, then the
//! totals and, per fault kind, the median and maximum time to settle.
//! Exits 1 when any trial broke an invariant.
//!
//! `cargo build --workspace && cargo run -p vigil-bench --bin chaos --
//! --trials 200 --seed 7` (needs `etcd` from the Debian package
//! `etcd-server`; no root).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use vigil_tests::chaos::{Chaos, FaultKind, NODES, Options, Signal};
use vigil_tests::target_dir;

const USAGE: &str = "usage: chaos [--trials N] [--seed N] [--only kind,kind] [--out DIR] [--slack-ms N] [--stable-ms N] [--stuck-s N] [--guard-off] [--pause-ms N] [--stop-signal term|kill] [--slow-etcd NODE:MS] [--victim NODE] [--crowd NODE]";

fn parse() -> anyhow::Result<Options> {
    let beat_bin = target_dir().join("chaos_beat");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    let mut options = Options::new(200, seed, beat_bin);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value; {USAGE}"))
        };
        let number = |v: String| -> anyhow::Result<u64> {
            v.parse()
                .with_context(|| format!("{v:?} is not a number; {USAGE}"))
        };
        match arg.as_str() {
            "--trials" => options.trials = number(value()?)? as usize,
            "--seed" => options.seed = number(value()?)?,
            "--slack-ms" => options.lost_slack = Duration::from_millis(number(value()?)?),
            "--stable-ms" => options.stable_for = Duration::from_millis(number(value()?)?),
            "--stuck-s" => options.stuck_after = Duration::from_secs(number(value()?)?),
            "--out" => options.out_dir = Some(PathBuf::from(value()?)),
            "--guard-off" => options.guard = false,
            "--pause-ms" => options.pause = Some(Duration::from_millis(number(value()?)?)),
            "--stop-signal" => {
                options.stop_signal = Some(match value()?.as_str() {
                    "term" => Signal::SIGTERM,
                    "kill" => Signal::SIGKILL,
                    other => bail!("--stop-signal {other:?}: want term or kill"),
                });
            }
            "--victim" | "--crowd" => {
                let v = value()?;
                let node = NODES
                    .into_iter()
                    .find(|n| *n == v)
                    .with_context(|| format!("{arg}: unknown node {v:?}"))?;
                if arg == "--victim" {
                    options.victim = Some(node);
                } else {
                    options.crowd = Some(node);
                }
            }
            "--slow-etcd" => {
                let v = value()?;
                let (node, ms) = v
                    .split_once(':')
                    .with_context(|| format!("--slow-etcd {v:?}: want NODE:MS"))?;
                let node = NODES
                    .into_iter()
                    .find(|n| *n == node)
                    .with_context(|| format!("--slow-etcd: unknown node {node:?}"))?;
                options.slow_etcd = Some((node, Duration::from_millis(number(ms.to_owned())?)));
            }
            "--only" => {
                options.kinds = value()?
                    .split(',')
                    .map(|k| {
                        FaultKind::parse(k.trim()).with_context(|| {
                            let all: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                            format!(
                                "--only: unknown fault kind {k:?}; kinds: {}",
                                all.join(", ")
                            )
                        })
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    if options.kinds.is_empty() {
        bail!("--only needs at least one kind");
    }
    Ok(options)
}

fn main() -> anyhow::Result<()> {
    let options = parse()?;
    println!(
        "chaos: {} trials, seed {}, lost after TTL 2 s + start 0.1 s + slack {:?}, settled after {:?} unchanged{}{}",
        options.trials,
        options.seed,
        options.lost_slack,
        options.stable_for,
        options.slow_etcd.map_or(String::new(), |(n, d)| format!(
            ", {n} reaches etcd {d:?} late"
        )),
        if options.guard { "" } else { ", guard off" }
    );
    let started = std::time::Instant::now();
    let summary = {
        let mut chaos = Chaos::new(options);
        chaos.run(|report| {
            println!("{report}");
            if report.failed() && !report.diagnostics.is_empty() {
                // Without --out the logs go here; with it, into the file.
                let lines: Vec<&str> = report.diagnostics.lines().collect();
                if lines.len() < 400 {
                    println!("{}", report.diagnostics);
                }
            }
        })
    };
    println!("\n{}", summary.table());
    println!("run took {:.0} s", started.elapsed().as_secs_f64());
    if !summary.clean() {
        println!("failed trials: {:?}", summary.failed);
        std::process::exit(1);
    }
    Ok(())
}
