//! Running one package on this node: its `run` and `halt` control scripts
//! and its supervised `[[service]]` processes.
//!
//! * Control scripts run through [`crate::runtime::subprocess`]: their own
//!   process group, the package's timeout (the whole group is killed on
//!   timeout), bounded output, always reaped. Anything a script leaves behind
//!   in its group is killed when it exits — long-running processes belong in
//!   `[[service]]`, where they are supervised and stopped on halt. Scripts
//!   get `VIGIL_PACKAGE`, `VIGIL_NODE`, `VIGIL_REASON`, `VIGIL_FENCE_TOKEN`
//!   and `VIGIL_CONFIG_DIR`, and run in the config directory.
//! * Services start after `run` succeeds, each in its own process group with
//!   the same environment, output appended to a log file (never a pipe to
//!   the host: a service must survive a host restart to be re-adopted).
//!   When one exits it is restarted after a short backoff, up to its
//!   `restarts`; when those are spent, or at once with `fail_fast`, the
//!   runner reports [`LifecycleEvent::PackageFailed`]. Halting stops services
//!   first (SIGTERM to the group, SIGKILL after a grace period), then runs
//!   `halt`.
//! * [`RunRecord`] is what runs (pids, process groups, kernel start times,
//!   the fence token). A restarted host checks it with
//!   [`RunRecord::check`], which compares `/proc/<pid>/stat` start times so a
//!   reused pid is not mistaken for the service, and
//!   [`PackageRunner::adopt`] takes the services over without restarting
//!   them.
//! * The [guard](crate::guard) may take a package over while the host is
//!   frozen: it claims the package, kills its services and halts it. A
//!   service whose package the guard claimed (same fence token) is not
//!   restarted; the runner reports [`LifecycleEvent::GuardHalted`] instead.
//!
//! This module does not decide anything: whether to halt after a failed
//! `run`, where to fail over, or what to write to the cluster store is the
//! caller's business. It reports what happened.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::package::{PackageConfig, Restarts, ServiceConfig};
use crate::package::parts::{self, Part, PartContext, SystemParts};
use crate::runtime::subprocess::{self, Exit, RunOutput};
use crate::store::FenceToken;

/// Why a package is started or halted; handed to scripts as `VIGIL_REASON`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Startup,
    Failover,
    Failback,
    Manual,
    ResourceDown,
    ServiceFailed,
    /// A dependency stopped holding on its node.
    DependencyDown,
    /// Its node is being drained (`vigil node halt`).
    NodeHalt,
    Shutdown,
    /// It shares a node with a package it avoids, and yields.
    Avoid,
    /// A higher priority package took its node.
    Displaced,
    /// Its node was removed from its node list.
    Reconfigured,
    /// Found running on more than one node; this copy goes.
    Duplicate,
    /// This node could not renew its lease in time: it stops acting as owner.
    LeaseLost,
    /// Another node owns it now (this host was frozen or cut off).
    LostOwnership,
    /// Its `run` failed; the halt cleans up.
    RunFailed,
    /// Re-adopted after a host restart (services only, no script runs).
    Adopted,
    /// Halted by the guard of a host that stopped heartbeating.
    GuardExpired,
}

impl Reason {
    /// The word `VIGIL_REASON` carries.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Startup => "startup",
            Reason::Failover => "failover",
            Reason::Failback => "failback",
            Reason::Manual => "manual",
            Reason::ResourceDown => "resource_down",
            Reason::ServiceFailed => "service_failed",
            Reason::DependencyDown => "dependency_down",
            Reason::NodeHalt => "node_halt",
            Reason::Shutdown => "shutdown",
            Reason::Avoid => "avoid",
            Reason::Displaced => "displaced",
            Reason::Reconfigured => "reconfigured",
            Reason::Duplicate => "duplicate",
            Reason::LeaseLost => "lease_lost",
            Reason::LostOwnership => "lost_ownership",
            Reason::RunFailed => "run_failed",
            Reason::Adopted => "adopted",
            Reason::GuardExpired => crate::guard::REASON,
        }
    }

    /// True for a halt that does not mean the package failed where it ran
    /// (the operator's, a shutdown's): such a halt is no reason to call the
    /// next start elsewhere a failover.
    pub fn is_deliberate(&self) -> bool {
        matches!(self, Reason::Manual | Reason::Shutdown)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where and how packages run on this node.
#[derive(Debug, Clone)]
pub struct RunnerContext {
    /// This node's name (`VIGIL_NODE`).
    pub node: String,
    /// The config directory (`VIGIL_CONFIG_DIR`, and the scripts' cwd).
    pub config_dir: PathBuf,
    /// Service output goes to `<log_dir>/<package>.<service>.log`;
    /// `None` discards it.
    pub log_dir: Option<PathBuf>,
    /// First restart delay; doubled per restart up to [`MAX_BACKOFF`].
    pub restart_backoff: Duration,
    /// How long a service has after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
    /// Where the guard leaves its claims (the run record directory);
    /// `None` when no guard runs (unit tests).
    pub claims_dir: Option<PathBuf>,
    /// The nodes alive in the cluster, kept by the manager (volume group
    /// tags of dead nodes are taken over).
    pub live_nodes: parts::LiveNodes,
}

impl RunnerContext {
    pub fn new(node: impl Into<String>, config_dir: impl Into<PathBuf>) -> Self {
        Self {
            node: node.into(),
            config_dir: config_dir.into(),
            log_dir: None,
            restart_backoff: Duration::from_secs(1),
            stop_grace: Duration::from_secs(10),
            claims_dir: None,
            live_nodes: parts::LiveNodes::default(),
        }
    }
}

/// Longest delay between two restarts of a service.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often an adopted service (not our child) is checked for life.
const ADOPTED_POLL: Duration = Duration::from_millis(250);

/// How a service process ended, as far as we can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceExit {
    Code(i32),
    Signal(i32),
    /// An adopted process is not our child: its status cannot be read.
    Vanished,
}

impl fmt::Display for ServiceExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceExit::Code(c) => write!(f, "exited with status {c}"),
            ServiceExit::Signal(s) => write!(f, "killed by signal {s}"),
            ServiceExit::Vanished => f.write_str("exited (adopted process, status unknown)"),
        }
    }
}

/// What a runner reports while a package runs. A service that exits just
/// as a halt begins may still be reported; events for a package the caller
/// is halting can be ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// A service exited on its own (not stopped by a halt).
    ServiceExited {
        package: String,
        service: String,
        exit: ServiceExit,
        /// Restarts done before this exit.
        restarts: u32,
        /// Whether it will be restarted.
        restarting: bool,
    },
    /// A service was started again; the [`RunRecord`] changed.
    ServiceRestarted {
        package: String,
        service: String,
        pid: i32,
        restarts: u32,
    },
    /// The package can no longer run here: the caller halts it and marks
    /// the node failed for it.
    PackageFailed {
        package: String,
        service: String,
        reason: String,
    },
    /// A service exited because the guard took the package over (claimed
    /// it with this fence token): it was not restarted, and the runner's
    /// copy of the package is over.
    GuardHalted {
        package: String,
        service: String,
        fence: FenceToken,
    },
}

/// How a control script failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    #[error("{script} of package {package}: cannot start {detail}")]
    Spawn {
        package: String,
        script: &'static str,
        detail: String,
    },
    #[error("{script} of package {package} {detail}")]
    Failed {
        package: String,
        script: &'static str,
        /// How it ended and the last line of stderr.
        detail: String,
        exit: ScriptExit,
        /// The tail of its output, for the log.
        output: String,
    },
}

/// A control script's end, without the subprocess module's types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptExit {
    Code(i32),
    Signal(i32),
    TimedOut,
    OutputTooLarge,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("package {0} is already running on this node")]
    AlreadyRunning(String),
    /// A part failed to start; the parts started before it were released
    /// again (`detail` says if one could not be).
    #[error("package {package}: {detail}")]
    Parts { package: String, detail: String },
    /// `run` failed or timed out: the package failed to start here.
    #[error(transparent)]
    Run(ScriptError),
    /// A service could not be started; services already started were
    /// stopped again. `run` had succeeded, so the caller should halt.
    #[error("package {package}: service {service}: {detail}")]
    Service {
        package: String,
        service: String,
        detail: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HaltError {
    /// `halt` failed or timed out. Services are stopped regardless.
    #[error(transparent)]
    Halt(ScriptError),
    /// `halt` succeeded but a part could not be released.
    #[error("package {package}: {detail}")]
    Parts { package: String, detail: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdoptError {
    #[error("record of package {recorded} does not match package {package}")]
    WrongPackage { package: String, recorded: String },
    #[error("package {package}: service {service} is {liveness}; it cannot be adopted")]
    NotRunning {
        package: String,
        service: String,
        liveness: Liveness,
    },
    #[error("package {package}: recorded service {service} is no longer configured")]
    UnknownService { package: String, service: String },
    #[error("package {package}: configured service {service} was not running")]
    MissingService { package: String, service: String },
}

/// What is known about a process started for a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub name: String,
    pub pid: i32,
    /// Its process group (equal to `pid`: each service leads its group).
    pub pgid: i32,
    /// Kernel start time in clock ticks since boot (`/proc/<pid>/stat`
    /// field 22): with the pid, names the process uniquely.
    pub start_time: u64,
    pub started_ms: u64,
    pub restarts: u32,
}

/// What runs for a package on this node, to re-adopt it after a host
/// restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub package: String,
    pub node: String,
    pub fence_token: FenceToken,
    /// When `run` succeeded (or, while it runs, when the parts started).
    pub started_ms: u64,
    pub services: Vec<ServiceRecord>,
    /// The parts started for it, in start order, as started: what a halt,
    /// the guard or a restarted host releases.
    #[serde(default)]
    pub parts: Vec<Part>,
}

/// Whether a recorded process is still the one that was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// No such process.
    Gone,
    /// Exited and not reaped yet.
    Zombie,
    /// The pid belongs to another process now.
    Reused,
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Liveness::Alive => "alive",
            Liveness::Gone => "gone",
            Liveness::Zombie => "a zombie",
            Liveness::Reused => "gone (its pid was reused)",
        })
    }
}

/// The fields of `/proc/<pid>/stat` that identify a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub pgid: i32,
    pub start_time: u64,
}

/// Reads `/proc/<pid>/stat`; `None` when there is no such process.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat(&text)
}

/// The command name (field 2) is in parentheses and may itself contain
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field N is fields[N - 3].
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgid: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

impl ServiceRecord {
    pub fn liveness(&self) -> Liveness {
        match proc_stat(self.pid) {
            None => Liveness::Gone,
            Some(stat) if stat.start_time != self.start_time || stat.pgid != self.pgid => {
                Liveness::Reused
            }
            Some(stat) if stat.state == 'Z' || stat.state == 'X' => Liveness::Zombie,
            Some(_) => Liveness::Alive,
        }
    }
}

impl RunRecord {
    /// The liveness of every recorded service.
    pub fn check(&self) -> Vec<(String, Liveness)> {
        self.services
            .iter()
            .map(|s| (s.name.clone(), s.liveness()))
            .collect()
    }

    /// True when every recorded service is still the process we started.
    pub fn all_alive(&self) -> bool {
        self.check().iter().all(|(_, l)| *l == Liveness::Alive)
    }

    /// Writes the record atomically (temp file + rename) as JSON.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, path)
    }

    pub fn load(path: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }
}

/// Runs one package on this node. Not `Clone`: one runner per package.
pub struct PackageRunner {
    spec: Arc<PackageConfig>,
    ctx: Arc<RunnerContext>,
    events: mpsc::UnboundedSender<LifecycleEvent>,
    running: Option<Running>,
    /// The token of the last start or adoption, for a `halt` after a
    /// failed `run`.
    last_fence: FenceToken,
    /// The parts up for the package, in start order: released by `halt`
    /// also after a failed `run` (whose clean-up halt may still need them).
    parts_up: Vec<Part>,
    /// True while the package is in maintenance here: a service that exits
    /// is not restarted (nor the package failed) until it is false again.
    maintenance: watch::Receiver<bool>,
}

impl fmt::Debug for PackageRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackageRunner")
            .field("package", &self.spec.name)
            .field("running", &self.running.is_some())
            .finish()
    }
}

struct Running {
    record: Arc<Mutex<RunRecord>>,
    stop: watch::Sender<bool>,
    supervisors: Vec<JoinHandle<()>>,
}

impl PackageRunner {
    pub fn new(
        spec: PackageConfig,
        ctx: RunnerContext,
        events: mpsc::UnboundedSender<LifecycleEvent>,
    ) -> Self {
        Self {
            spec: Arc::new(spec),
            ctx: Arc::new(ctx),
            events,
            running: None,
            last_fence: FenceToken::default(),
            parts_up: Vec::new(),
            maintenance: watch::channel(false).1,
        }
    }

    /// Follows the package's maintenance (see [`AgentCommand::Maintenance`](super::agent::AgentCommand::Maintenance)).
    pub fn watch_maintenance(&mut self, maintenance: watch::Receiver<bool>) {
        self.maintenance = maintenance;
    }

    /// Takes a new definition of the package (the applied package set
    /// changed). Only while nothing of it runs here, parts included: a
    /// running copy halts with the definition it was started with. Gives
    /// the definition back when it cannot be taken now.
    pub fn redefine(&mut self, spec: Box<PackageConfig>) -> Option<Box<PackageConfig>> {
        if self.running.is_some() || !self.parts_up.is_empty() {
            return Some(spec);
        }
        self.spec = Arc::new(*spec);
        None
    }

    /// The parts up now, in start order.
    pub fn parts_up(&self) -> &[Part] {
        &self.parts_up
    }

    fn part_context(&self) -> PartContext {
        PartContext {
            node: self.ctx.node.clone(),
            package: self.spec.name.clone(),
            stop_grace: self.ctx.stop_grace,
            ocf_root: parts::ocf_root(),
            live_nodes: self
                .ctx
                .live_nodes
                .read()
                .map(|l| l.clone())
                .unwrap_or_default(),
        }
    }

    /// Starts the configured parts on a blocking task, recording each one
    /// as it comes up (a run record with no services yet) so that a guard
    /// or a restarted host knows what to release if this host dies now.
    async fn start_parts(&mut self, fence: FenceToken) -> Result<(), StartError> {
        if self.spec.parts.is_empty() {
            return Ok(());
        }
        let configured: Vec<Part> = self.spec.parts.iter().map(|p| p.part.clone()).collect();
        let mut ops = SystemParts {
            ctx: self.part_context(),
        };
        let record_path = self
            .ctx
            .claims_dir
            .as_deref()
            .map(|dir| crate::package::agent::record_path(dir, &self.spec.name));
        let (package, node) = (self.spec.name.clone(), self.ctx.node.clone());
        let started = tokio::task::spawn_blocking(move || {
            parts::start_all(&configured, &mut ops, |up| {
                let Some(path) = &record_path else { return };
                let result = if up.is_empty() {
                    std::fs::remove_file(path).or_else(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => Ok(()),
                        _ => Err(e),
                    })
                } else {
                    RunRecord {
                        package: package.clone(),
                        node: node.clone(),
                        fence_token: fence,
                        started_ms: vigil_sdk::now_ms(),
                        services: Vec::new(),
                        parts: up.to_vec(),
                    }
                    .save(path)
                };
                if let Err(e) = result {
                    tracing::warn!(%package, error = %e, "cannot record the started parts");
                }
            })
        })
        .await
        .map_err(|e| StartError::Parts {
            package: self.spec.name.clone(),
            detail: format!("part task failed: {e}"),
        })?;
        match started {
            Ok(up) => {
                self.parts_up = up;
                Ok(())
            }
            Err(failure) => {
                // What could not be undone is still up: a halt tries again.
                self.parts_up = failure.still_up.clone();
                Err(StartError::Parts {
                    package: self.spec.name.clone(),
                    detail: failure.to_string(),
                })
            }
        }
    }

    /// Releases the parts that are up, in reverse, on a blocking task.
    async fn stop_parts(&mut self) -> Result<(), String> {
        if self.parts_up.is_empty() {
            return Ok(());
        }
        let up = std::mem::take(&mut self.parts_up);
        let mut ops = SystemParts {
            ctx: self.part_context(),
        };
        let (errors, up) =
            tokio::task::spawn_blocking(move || (parts::stop_all(&up, &mut ops), up))
                .await
                .map_err(|e| format!("part task failed: {e}"))?;
        if errors.is_empty() {
            return Ok(());
        }
        // Keep what failed to stop, so a later halt tries again.
        self.parts_up = up
            .into_iter()
            .filter(|p| errors.iter().any(|e| e.part == p.to_string()))
            .collect();
        Err(errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "))
    }

    pub fn package(&self) -> &str {
        &self.spec.name
    }

    /// True between a successful `start` (or `adopt`) and `halt`.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// What runs now, for persisting and later re-adoption.
    pub fn record(&self) -> Option<RunRecord> {
        self.running.as_ref().map(|r| lock(&r.record).clone())
    }

    /// Runs `run`, then starts the services. On `Err` nothing of the
    /// package is left running except what `run` itself set up: the caller
    /// decides whether to `halt`.
    pub async fn start(&mut self, reason: &Reason, fence: FenceToken) -> Result<(), StartError> {
        if self.running.is_some() {
            return Err(StartError::AlreadyRunning(self.spec.name.clone()));
        }
        self.last_fence = fence;
        self.start_parts(fence).await?;
        let output = self
            .script("run", &self.spec.run, self.spec.run_timeout, reason, fence)
            .await
            .map_err(StartError::Run)?;
        tracing::info!(package = %self.spec.name, %reason, %fence, output = %output_tail(&output), "run succeeded");

        let record = Arc::new(Mutex::new(RunRecord {
            package: self.spec.name.clone(),
            node: self.ctx.node.clone(),
            fence_token: fence,
            started_ms: vigil_sdk::now_ms(),
            services: Vec::new(),
            parts: self.parts_up.clone(),
        }));
        let (stop, stop_rx) = watch::channel(false);
        let mut supervisors = Vec::new();
        for service in &self.spec.services {
            let process = match spawn_service(&self.spec, &self.ctx, service, reason, fence) {
                Ok(p) => p,
                Err(detail) => {
                    let _ = stop.send(true);
                    for s in supervisors {
                        let _ = s.await;
                    }
                    return Err(StartError::Service {
                        package: self.spec.name.clone(),
                        service: service.name.clone(),
                        detail,
                    });
                }
            };
            lock(&record).services.push(process.record(service, 0));
            supervisors.push(self.supervise(service, process, 0, &record, reason, fence, &stop_rx));
        }
        self.running = Some(Running {
            record,
            stop,
            supervisors,
        });
        Ok(())
    }

    /// Takes over services recorded by an earlier host, without restarting
    /// them. Refused unless every configured service is recorded and alive.
    pub fn adopt(&mut self, record: RunRecord) -> Result<(), AdoptError> {
        let package = self.spec.name.clone();
        if record.package != package {
            return Err(AdoptError::WrongPackage {
                package,
                recorded: record.package,
            });
        }
        let mut by_name: BTreeMap<&str, &ServiceRecord> = BTreeMap::new();
        for s in &record.services {
            if !self.spec.services.iter().any(|c| c.name == s.name) {
                return Err(AdoptError::UnknownService {
                    package,
                    service: s.name.clone(),
                });
            }
            let liveness = s.liveness();
            if liveness != Liveness::Alive {
                return Err(AdoptError::NotRunning {
                    package,
                    service: s.name.clone(),
                    liveness,
                });
            }
            by_name.insert(&s.name, s);
        }
        if let Some(missing) = self
            .spec
            .services
            .iter()
            .find(|c| !by_name.contains_key(c.name.as_str()))
        {
            return Err(AdoptError::MissingService {
                package,
                service: missing.name.clone(),
            });
        }
        let fence = record.fence_token;
        self.last_fence = fence;
        self.parts_up = record.parts.clone();
        let shared = Arc::new(Mutex::new(record.clone()));
        let (stop, stop_rx) = watch::channel(false);
        let reason = Reason::Adopted;
        let supervisors = self
            .spec
            .services
            .iter()
            .map(|service| {
                let r = by_name[service.name.as_str()];
                let process = ServiceProcess::Adopted {
                    pid: r.pid,
                    start_time: r.start_time,
                };
                self.supervise(
                    service, process, r.restarts, &shared, &reason, fence, &stop_rx,
                )
            })
            .collect();
        tracing::info!(package = %self.spec.name, %fence, "adopted running services");
        self.running = Some(Running {
            record: shared,
            stop,
            supervisors,
        });
        Ok(())
    }

    /// Ends the runner's copy of a package the guard has halted: stops
    /// (and reaps) whatever of its services is left, without running
    /// `halt`, which the guard did.
    pub async fn abandon(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(true);
            for supervisor in running.supervisors {
                let _ = supervisor.await;
            }
            tracing::info!(package = %self.spec.name, "package halted by the guard; no longer supervised");
        }
        // The guard released them.
        self.parts_up.clear();
    }

    /// Stops every service (SIGTERM to its group, SIGKILL after the grace
    /// period, reaped), then runs `halt`. Runs `halt` even when nothing was
    /// running, so that it also cleans up after a failed `run`.
    pub async fn halt(&mut self, reason: &Reason) -> Result<(), HaltError> {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(true);
            for supervisor in running.supervisors {
                let _ = supervisor.await;
            }
        }
        let fence = self.last_fence;
        let halted = self
            .script(
                "halt",
                &self.spec.halt,
                self.spec.halt_timeout,
                reason,
                fence,
            )
            .await;
        // The parts go even when `halt` failed: an address or a mount left
        // behind would keep the package from running anywhere else.
        let parts = self.stop_parts().await;
        let output = halted.map_err(|e| {
            if let Err(detail) = &parts {
                tracing::error!(package = %self.spec.name, %detail, "parts not released");
            }
            HaltError::Halt(e)
        })?;
        tracing::info!(package = %self.spec.name, %reason, output = %output_tail(&output), "halt succeeded");
        parts.map_err(|detail| HaltError::Parts {
            package: self.spec.name.clone(),
            detail,
        })
    }

    async fn script(
        &self,
        script: &'static str,
        argv: &[String],
        timeout: Duration,
        reason: &Reason,
        fence: FenceToken,
    ) -> Result<RunOutput, ScriptError> {
        let package = self.spec.name.clone();
        let mut cmd = subprocess::command(argv, false);
        set_env(cmd.as_std_mut(), &self.spec, &self.ctx, reason, fence);
        let output = subprocess::run_command(cmd, None, timeout)
            .await
            .map_err(|e| ScriptError::Spawn {
                package: package.clone(),
                script,
                detail: format!("{}: {}", e.program, e.source),
            })?;
        let exit = match output.exit {
            Exit::Code(0) => return Ok(output),
            Exit::Code(c) => ScriptExit::Code(c),
            Exit::Signal(s) => ScriptExit::Signal(s),
            Exit::TimedOut => ScriptExit::TimedOut,
            Exit::OutputTooLarge => ScriptExit::OutputTooLarge,
        };
        Err(ScriptError::Failed {
            package,
            script,
            detail: output.describe_failure(timeout),
            exit,
            output: output_tail(&output),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn supervise(
        &self,
        service: &ServiceConfig,
        process: ServiceProcess,
        restarts: u32,
        record: &Arc<Mutex<RunRecord>>,
        reason: &Reason,
        fence: FenceToken,
        stop: &watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let supervisor = Supervisor {
            spec: Arc::clone(&self.spec),
            ctx: Arc::clone(&self.ctx),
            service: service.clone(),
            record: Arc::clone(record),
            events: self.events.clone(),
            reason: *reason,
            fence,
            stop: stop.clone(),
            maintenance: self.maintenance.clone(),
        };
        tokio::spawn(supervisor.run(process, restarts))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding these locks (plain field updates).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn output_tail(output: &RunOutput) -> String {
    const KEEP: usize = 2048;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.stderr.is_empty() {
        text.push_str(&output.stderr);
    }
    let text = text.trim();
    if text.len() <= KEEP {
        return text.to_owned();
    }
    let mut start = text.len() - KEEP;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

/// The control script environment (`VIGIL_*`) and working directory.
pub(crate) fn set_env(
    cmd: &mut std::process::Command,
    spec: &PackageConfig,
    ctx: &RunnerContext,
    reason: &Reason,
    fence: FenceToken,
) {
    cmd.env("VIGIL_PACKAGE", &spec.name)
        .env("VIGIL_NODE", &ctx.node)
        .env("VIGIL_REASON", reason.as_str())
        .env("VIGIL_FENCE_TOKEN", fence.0.to_string())
        .env("VIGIL_CONFIG_DIR", &ctx.config_dir)
        .current_dir(&ctx.config_dir);
}

/// A service's main process: our child, or adopted from an earlier host.
enum ServiceProcess {
    Child(Child),
    Adopted { pid: i32, start_time: u64 },
}

impl ServiceProcess {
    fn pid(&self) -> i32 {
        match self {
            // A child we have not waited for yet has an id.
            ServiceProcess::Child(c) => c.id().map_or(0, |id| id as i32),
            ServiceProcess::Adopted { pid, .. } => *pid,
        }
    }

    fn record(&self, service: &ServiceConfig, restarts: u32) -> ServiceRecord {
        let pid = self.pid();
        let start_time = match self {
            ServiceProcess::Adopted { start_time, .. } => *start_time,
            ServiceProcess::Child(_) => proc_stat(pid).map_or(0, |s| s.start_time),
        };
        ServiceRecord {
            name: service.name.clone(),
            pid,
            pgid: pid,
            start_time,
            started_ms: vigil_sdk::now_ms(),
            restarts,
        }
    }

    /// Waits until the main process has ended (and reaps it if ours).
    async fn wait(&mut self) -> ServiceExit {
        match self {
            ServiceProcess::Child(child) => match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    match (status.code(), status.signal()) {
                        (Some(c), _) => ServiceExit::Code(c),
                        (None, Some(s)) => ServiceExit::Signal(s),
                        (None, None) => ServiceExit::Vanished,
                    }
                }
                Err(_) => ServiceExit::Vanished,
            },
            ServiceProcess::Adopted { pid, start_time } => loop {
                match proc_stat(*pid) {
                    Some(s) if s.start_time == *start_time && s.state != 'Z' && s.state != 'X' => {
                        tokio::time::sleep(ADOPTED_POLL).await;
                    }
                    _ => break ServiceExit::Vanished,
                }
            },
        }
    }
}

/// Signals a process group; harmless when it is gone.
fn signal_group(pgid: i32, signal: Signal) {
    if pgid > 0 {
        let _ = killpg(Pid::from_raw(pgid), signal);
    }
}

/// Starts one service in its own process group, output to its log file.
/// Set once this node halts for a fail-fast failure
/// ([`super::fail_fast`]): from then on no service is started or
/// restarted, and a service that exits is left alone.
pub static NODE_HALTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn node_halting() -> bool {
    NODE_HALTING.load(std::sync::atomic::Ordering::SeqCst)
}

fn spawn_service(
    spec: &PackageConfig,
    ctx: &RunnerContext,
    service: &ServiceConfig,
    reason: &Reason,
    fence: FenceToken,
) -> Result<ServiceProcess, String> {
    if node_halting() {
        return Err("the node is halting (fail-fast)".into());
    }
    let program = service.command.first().cloned().unwrap_or_default();
    let (stdout, stderr) = match &ctx.log_dir {
        None => (std::process::Stdio::null(), std::process::Stdio::null()),
        Some(dir) => {
            let path = dir.join(format!("{}.{}.log", spec.name, service.name));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("cannot open log {}: {e}", path.display()))?;
            let copy = file
                .try_clone()
                .map_err(|e| format!("cannot open log {}: {e}", path.display()))?;
            (file.into(), copy.into())
        }
    };
    let mut cmd = Command::new(&program);
    cmd.args(service.command.get(1..).unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    // No kill_on_drop: services must outlive a host restart to be adopted.
    set_env(cmd.as_std_mut(), spec, ctx, reason, fence);
    cmd.env("VIGIL_SERVICE", &service.name);
    cmd.spawn()
        .map(ServiceProcess::Child)
        .map_err(|e| format!("cannot start {program}: {e}"))
}

enum Wake {
    Exited(ServiceExit),
    Stop,
    Detach,
}

struct Supervisor {
    spec: Arc<PackageConfig>,
    ctx: Arc<RunnerContext>,
    service: ServiceConfig,
    record: Arc<Mutex<RunRecord>>,
    events: mpsc::UnboundedSender<LifecycleEvent>,
    reason: Reason,
    fence: FenceToken,
    stop: watch::Receiver<bool>,
    maintenance: watch::Receiver<bool>,
}

impl Supervisor {
    /// In maintenance, an exited service waits, neither restarted nor
    /// failing its package, until maintenance is off; false when the
    /// package is halted meanwhile.
    async fn hold_in_maintenance(&mut self, exit: &ServiceExit, restarts: u32) -> bool {
        if !*self.maintenance.borrow_and_update() {
            return true;
        }
        tracing::warn!(package = %self.spec.name, service = %self.service.name, %exit, "service exited in maintenance; not restarted until maintenance is off");
        let _ = self.events.send(LifecycleEvent::ServiceExited {
            package: self.spec.name.clone(),
            service: self.service.name.clone(),
            exit: exit.clone(),
            restarts,
            restarting: false,
        });
        tokio::select! {
            // A closed channel (the agent is gone) ends maintenance too.
            _ = self.maintenance.wait_for(|on| !*on) => {}
            _ = self.stop.wait_for(|stop| *stop) => return false,
        }
        tracing::info!(package = %self.spec.name, service = %self.service.name, "maintenance off; the service's restart (or its package's failure) goes ahead");
        true
    }

    async fn run(mut self, mut process: ServiceProcess, mut restarts: u32) {
        loop {
            let pgid = process.pid();
            let wake = tokio::select! {
                exit = process.wait() => Wake::Exited(exit),
                stop = self.stop.wait_for(|stop| *stop) => match stop {
                    Ok(_) => Wake::Stop,
                    Err(_) => Wake::Detach,
                },
            };
            let exit = match wake {
                Wake::Exited(exit) => exit,
                Wake::Stop => {
                    self.stop_process(&mut process).await;
                    return;
                }
                // The runner was dropped without a halt (the host is going
                // away): leave the service running for the next host to adopt.
                Wake::Detach => return,
            };
            // The main process is gone; what it left in its group goes too.
            signal_group(pgid, Signal::SIGKILL);
            if node_halting() {
                return;
            }
            // The guard claims a package before it kills anything, so an
            // exit it caused always finds the claim here.
            if self
                .ctx
                .claims_dir
                .as_deref()
                .is_some_and(|dir| crate::guard::claimed(dir, &self.spec.name, self.fence))
            {
                tracing::warn!(package = %self.spec.name, service = %self.service.name, %exit, "service stopped by the guard; not restarted");
                let _ = self.events.send(LifecycleEvent::GuardHalted {
                    package: self.spec.name.clone(),
                    service: self.service.name.clone(),
                    fence: self.fence,
                });
                return;
            }
            if !self.hold_in_maintenance(&exit, restarts).await {
                return;
            }
            let can_restart = !self.service.fail_fast
                && match self.service.restarts {
                    Restarts::Unlimited => true,
                    Restarts::Limited(n) => restarts < n,
                };
            tracing::warn!(package = %self.spec.name, service = %self.service.name, %exit, restarts, restarting = can_restart, "service exited");
            let _ = self.events.send(LifecycleEvent::ServiceExited {
                package: self.spec.name.clone(),
                service: self.service.name.clone(),
                exit: exit.clone(),
                restarts,
                restarting: can_restart,
            });
            if !can_restart {
                self.fail(format!(
                    "service {} {exit}{}",
                    self.service.name,
                    if self.service.fail_fast {
                        " (fail_fast)".to_owned()
                    } else {
                        format!(" after {restarts} restarts")
                    }
                ));
                return;
            }
            let backoff = self
                .ctx
                .restart_backoff
                .saturating_mul(1 << restarts.min(16))
                .min(MAX_BACKOFF);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                // Stopped or detached: there is no process to stop now.
                _ = self.stop.wait_for(|stop| *stop) => return,
            }
            restarts += 1;
            process = match spawn_service(
                &self.spec,
                &self.ctx,
                &self.service,
                &self.reason,
                self.fence,
            ) {
                Ok(p) => p,
                Err(detail) => {
                    self.fail(format!(
                        "service {} cannot be restarted: {detail}",
                        self.service.name
                    ));
                    return;
                }
            };
            let new = process.record(&self.service, restarts);
            let pid = new.pid;
            {
                let mut record = lock(&self.record);
                match record.services.iter_mut().find(|s| s.name == new.name) {
                    Some(slot) => *slot = new,
                    None => record.services.push(new),
                }
            }
            let _ = self.events.send(LifecycleEvent::ServiceRestarted {
                package: self.spec.name.clone(),
                service: self.service.name.clone(),
                pid,
                restarts,
            });
        }
    }

    fn fail(&self, reason: String) {
        tracing::error!(package = %self.spec.name, service = %self.service.name, %reason, "package failed on this node");
        let _ = self.events.send(LifecycleEvent::PackageFailed {
            package: self.spec.name.clone(),
            service: self.service.name.clone(),
            reason,
        });
    }

    /// SIGTERM to the group, SIGKILL after the grace period, then reaped.
    async fn stop_process(&self, process: &mut ServiceProcess) {
        let pgid = process.pid();
        signal_group(pgid, Signal::SIGTERM);
        if tokio::time::timeout(self.ctx.stop_grace, process.wait())
            .await
            .is_err()
        {
            tracing::warn!(package = %self.spec.name, service = %self.service.name, grace = ?self.ctx.stop_grace, "service ignored SIGTERM; killing its group");
        }
        // Whatever the main process left behind in its group goes too.
        signal_group(pgid, Signal::SIGKILL);
        // Bounded: after SIGKILL the process is gone within moments.
        let _ = tokio::time::timeout(Duration::from_secs(10), process.wait()).await;
    }
}

#[cfg(test)]
mod tests;
