//! The node agent: owns this node's [`PackageRunner`]s, one worker task per
//! package carrying out that package's commands in order, and reports each
//! result back.
//!
//! The main loop never waits on a control script: it sends an
//! [`AgentCommand`] and goes on handling events; the [`AgentReport`] comes
//! back as an event. Run records are saved to `<run_dir>/<package>.json`
//! after every start, restart and adoption, and removed after a halt, so a
//! restarted host can re-adopt what still runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::lifecycle::{LifecycleEvent, PackageRunner, Reason, RunRecord, RunnerContext};
use crate::config::package::PackageConfig;
use crate::store::FenceToken;

#[derive(Debug)]
pub enum AgentCommand {
    Run {
        package: String,
        reason: Reason,
        fence: FenceToken,
    },
    Halt {
        package: String,
        reason: Reason,
    },
    /// Take over what an earlier host left running, from its run record.
    Adopt {
        package: String,
    },
    /// Save the package's run record again (a service was restarted).
    SaveRecord {
        package: String,
    },
    /// The guard halted the package as it ran with `fence`: end the
    /// runner's copy if it is that one (without `halt`, the guard ran it)
    /// and remove the guard's claim, which has been dealt with.
    GuardHalted {
        package: String,
        fence: FenceToken,
    },
    /// The package is in maintenance here (or no longer): its services
    /// that exit are not restarted meanwhile. Taken at once, not behind a
    /// `run` or `halt` under way.
    Maintenance {
        package: String,
        on: bool,
    },
    /// The package's definition in the applied package set (new or
    /// changed): a new package gets a worker; a known one takes the new
    /// definition at once when nothing of it runs here, else once its
    /// running copy is halted (it halts with the definition it ran with).
    Configure {
        config: Box<PackageConfig>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum AgentReport {
    Ran {
        package: String,
        fence: FenceToken,
        result: Result<(), String>,
    },
    Halted {
        package: String,
        result: Result<(), String>,
    },
    /// Re-adopted after a host restart: the fence token it runs under.
    Adopted {
        package: String,
        result: Result<FenceToken, String>,
    },
}

/// Where a package's run record is kept.
pub fn record_path(run_dir: &Path, package: &str) -> PathBuf {
    run_dir.join(format!("{package}.json"))
}

/// Where the last start's part failure here is kept for `vigil why`
/// (absent when the last start did not fail on a part).
pub fn part_failure_path(run_dir: &Path, package: &str) -> PathBuf {
    run_dir.join(format!("{package}.part-failure.txt"))
}

/// Keeps the reason a part blocked the start, or forgets an older one.
fn note_part_failure<T>(
    run_dir: &Path,
    package: &str,
    result: &Result<T, super::lifecycle::StartError>,
) {
    let path = part_failure_path(run_dir, package);
    let kept = match result {
        Err(super::lifecycle::StartError::Parts { detail, .. }) => {
            std::fs::write(&path, format!("{} {detail}\n", vigil_sdk::now_ms()))
        }
        _ => std::fs::remove_file(&path).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        }),
    };
    if let Err(e) = kept {
        warn!(%package, path = %path.display(), error = %e, "cannot keep the part failure for why");
    }
}

/// The reason a part blocked the last start here and when (ms), if it did.
pub fn part_failure(run_dir: &Path, package: &str) -> Option<(u64, String)> {
    let text = std::fs::read_to_string(part_failure_path(run_dir, package)).ok()?;
    let (ms, detail) = text.trim_end().split_once(' ')?;
    Some((ms.parse().ok()?, detail.to_owned()))
}

/// Starts the agent for `packages`; lifecycle events go to `lifecycle`,
/// command results to `reports`. Each package has a worker task of its own,
/// so a long `run` of one package never delays the halt of another; the
/// commands of one package are carried out in order.
pub fn spawn(
    packages: &[PackageConfig],
    ctx: RunnerContext,
    run_dir: PathBuf,
    lifecycle: mpsc::UnboundedSender<LifecycleEvent>,
    reports: impl Fn(AgentReport) + Send + Sync + 'static,
) -> mpsc::UnboundedSender<AgentCommand> {
    if let Err(e) = std::fs::create_dir_all(&run_dir) {
        warn!(dir = %run_dir.display(), error = %e, "cannot create run record directory");
    }
    let reports: Arc<dyn Fn(AgentReport) + Send + Sync> = Arc::new(reports);
    let mut maintenance: BTreeMap<String, watch::Sender<bool>> = BTreeMap::new();
    let new_worker = move |config: PackageConfig| {
        let mut runner = PackageRunner::new(config, ctx.clone(), lifecycle.clone());
        let (held, rx) = watch::channel(false);
        runner.watch_maintenance(rx);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(work(runner, rx, run_dir.clone(), Arc::clone(&reports)));
        (tx, held)
    };
    let mut workers: BTreeMap<String, mpsc::UnboundedSender<AgentCommand>> = packages
        .iter()
        .map(|p| {
            let (tx, held) = new_worker(p.clone());
            maintenance.insert(p.name.clone(), held);
            (p.name.clone(), tx)
        })
        .collect();
    let (tx, mut rx) = mpsc::unbounded_channel::<AgentCommand>();
    tokio::spawn(async move {
        while let Some(command) = rx.recv().await {
            if let AgentCommand::Maintenance { package, on } = &command {
                if let Some(held) = maintenance.get(package) {
                    held.send_replace(*on);
                }
                continue;
            }
            let package = match &command {
                AgentCommand::Run { package, .. }
                | AgentCommand::Halt { package, .. }
                | AgentCommand::Adopt { package }
                | AgentCommand::SaveRecord { package }
                | AgentCommand::GuardHalted { package, .. }
                | AgentCommand::Maintenance { package, .. } => package.clone(),
                AgentCommand::Configure { config } => {
                    if !workers.contains_key(&config.name) {
                        let name = config.name.clone();
                        let (tx, held) = new_worker((**config).clone());
                        workers.insert(name.clone(), tx);
                        maintenance.insert(name, held);
                        continue;
                    }
                    config.name.clone()
                }
            };
            match workers.get(&package) {
                Some(worker) => {
                    let _ = worker.send(command);
                }
                None => warn!(%package, "agent: no such package"),
            }
        }
    });
    tx
}

/// One package's worker: its runner, its commands in order.
async fn work(
    mut runner: PackageRunner,
    mut commands: mpsc::UnboundedReceiver<AgentCommand>,
    run_dir: PathBuf,
    reports: Arc<dyn Fn(AgentReport) + Send + Sync>,
) {
    let package = runner.package().to_owned();
    let path = record_path(&run_dir, &package);
    // A new definition that waits for the running copy to be halted.
    let mut next: Option<Box<PackageConfig>> = None;
    while let Some(command) = commands.recv().await {
        let runner = &mut runner;
        match command {
            AgentCommand::Run { reason, fence, .. } => {
                let result = runner.start(&reason, fence).await;
                note_part_failure(&run_dir, &package, &result);
                let result = result.map_err(|e| e.to_string());
                save(runner, &path);
                reports(AgentReport::Ran {
                    package: package.clone(),
                    fence,
                    result,
                });
            }
            AgentCommand::Halt { reason, .. } => {
                let result = runner.halt(&reason).await.map_err(|e| e.to_string());
                let _ = std::fs::remove_file(&path);
                reports(AgentReport::Halted {
                    package: package.clone(),
                    result,
                });
            }
            AgentCommand::Adopt { .. } => {
                let result = RunRecord::load(&path)
                    .map_err(|e| format!("no run record {}: {e}", path.display()))
                    .and_then(|record| {
                        let fence = record.fence_token;
                        runner
                            .adopt(record)
                            .map(|()| fence)
                            .map_err(|e| e.to_string())
                    });
                if result.is_ok() {
                    save(runner, &path);
                }
                reports(AgentReport::Adopted {
                    package: package.clone(),
                    result,
                });
            }
            AgentCommand::SaveRecord { .. } => save(runner, &path),
            AgentCommand::Maintenance { .. } => {}
            AgentCommand::Configure { config } => next = Some(config),
            AgentCommand::GuardHalted { fence, .. } => {
                if runner.record().is_some_and(|r| r.fence_token == fence) {
                    runner.abandon().await;
                }
                // A record saved after the claim is as stale as the claim.
                if RunRecord::load(&path).is_ok_and(|r| r.fence_token == fence) {
                    let _ = std::fs::remove_file(&path);
                }
                if crate::guard::claimed(&run_dir, &package, fence) {
                    let claim = crate::guard::Claim::path(&run_dir, &package);
                    if let Err(e) = std::fs::remove_file(&claim) {
                        warn!(%package, claim = %claim.display(), error = %e, "cannot remove the guard's claim");
                    }
                }
            }
        }
        // Taken at once, or as soon as the copy that ran with the old one
        // is halted (or abandoned to the guard).
        if let Some(config) = next.take() {
            next = runner.redefine(config);
        }
    }
}

fn save(runner: &PackageRunner, path: &Path) {
    if let Some(Err(e)) = runner.record().map(|record| record.save(path)) {
        warn!(package = runner.package(), error = %e, "cannot save run record");
    }
}
