//! Package parts (DESIGN §5): the volume groups, file systems, relocatable
//! IP addresses and OCF resource agents a package takes with it when it
//! moves.
//!
//! * [`Part`] is one configured part; the same value, with what was chosen
//!   at start filled in (the interface of an address), is what a run record
//!   keeps of a started part, so that whoever releases it — the runner's
//!   halt, the [guard](crate::guard) of a frozen host, a restarted host —
//!   needs nothing but the record.
//! * [`start_order`], [`start_all`] and [`stop_all`] are the pure ordering
//!   and undo rules: volume groups → file systems → IP addresses → agents
//!   (each kind in file order); halt in reverse; a part that fails to start
//!   undoes the parts already started, in reverse. They drive any
//!   [`PartOps`]; [`SystemParts`] is the real one.
//! * The real operations are blocking (they run tools and wait for
//!   processes) so that the guard, which has no async runtime, uses the
//!   same code as the host; the host runs them on a blocking task.
//!
//! This module does not decide anything about the package: whether a
//! failed part fails it over is the caller's business.

pub mod arp;
pub mod fs;
pub mod ip;
pub mod ocf;
pub mod vg;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One part of a package, as configured or (in a run record) as started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Part {
    /// An LVM volume group, activated with this node's tag.
    VolumeGroup { name: String },
    /// A file system mounted for the package.
    Filesystem {
        /// A device path, or `UUID=...` / `LABEL=...` as mount(8) takes it.
        device: String,
        mount: PathBuf,
        fstype: String,
        options: Option<String>,
        fsck: bool,
    },
    /// A relocatable address.
    Ip {
        address: IpAddr,
        prefix: u8,
        /// Configured, or (once started) the interface it was added to.
        interface: Option<String>,
    },
    /// An OCF resource agent.
    Agent(AgentPart),
}

/// An OCF resource agent part (`[[agent]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPart {
    /// The part's name: `OCF_RESOURCE_INSTANCE` and the resource
    /// `/package/<pkg>/agent/<name>/status`.
    pub name: String,
    /// `ocf:<provider>:<type>`.
    pub agent: String,
    /// `OCF_RESKEY_<key>`.
    pub params: BTreeMap<String, String>,
    pub monitor_interval_ms: Option<u64>,
    /// Per-action timeouts given in the package; the agent's meta-data
    /// decides the others.
    pub timeouts_ms: BTreeMap<String, u64>,
}

impl AgentPart {
    /// `(provider, type)` of `ocf:<provider>:<type>`.
    pub fn provider_and_type(&self) -> Option<(&str, &str)> {
        parse_agent_name(&self.agent)
    }
}

/// `(provider, type)` of `ocf:<provider>:<type>`; `None` when it is not
/// that shape or a component could leave `resource.d`.
pub fn parse_agent_name(agent: &str) -> Option<(&str, &str)> {
    let rest = agent.strip_prefix("ocf:")?;
    let (provider, kind) = rest.split_once(':')?;
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (ok(provider) && ok(kind)).then_some((provider, kind))
}

impl Part {
    /// Start order: lower first.
    fn rank(&self) -> u8 {
        match self {
            Part::VolumeGroup { .. } => 0,
            Part::Filesystem { .. } => 1,
            Part::Ip { .. } => 2,
            Part::Agent(_) => 3,
        }
    }

    /// What kind of part, as the config file names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Part::VolumeGroup { .. } => "volume_group",
            Part::Filesystem { .. } => "filesystem",
            Part::Ip { .. } => "ip",
            Part::Agent(_) => "agent",
        }
    }

    /// Whether `other` is the same configured part (a started part has its
    /// interface filled in).
    pub fn same_part(&self, other: &Part) -> bool {
        match (self, other) {
            (
                Part::Ip {
                    address: a,
                    prefix: p,
                    ..
                },
                Part::Ip {
                    address: b,
                    prefix: q,
                    ..
                },
            ) => a == b && p == q,
            (Part::Agent(a), Part::Agent(b)) => a.name == b.name,
            _ => self == other,
        }
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::VolumeGroup { name } => write!(f, "volume group {name}"),
            Part::Filesystem { device, mount, .. } => {
                write!(f, "filesystem {} ({device})", mount.display())
            }
            Part::Ip {
                address,
                prefix,
                interface,
            } => {
                write!(f, "ip {address}/{prefix}")?;
                match interface {
                    Some(i) => write!(f, " on {i}"),
                    None => Ok(()),
                }
            }
            Part::Agent(a) => write!(f, "agent {} ({})", a.name, a.agent),
        }
    }
}

/// A part that could not be started or stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{part}: {detail}")]
pub struct PartError {
    /// The part, as [`Part`] displays it.
    pub part: String,
    pub detail: String,
}

impl PartError {
    pub fn new(part: &Part, detail: impl Into<String>) -> Self {
        Self {
            part: part.to_string(),
            detail: detail.into(),
        }
    }
}

/// A start that failed: the failing part's error, and any part that could
/// not be undone (those are still up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    pub error: PartError,
    pub undo_errors: Vec<PartError>,
    /// The started parts whose undo failed, in start order.
    pub still_up: Vec<Part>,
}

impl fmt::Display for StartFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)?;
        for e in &self.undo_errors {
            write!(f, "; and while undoing: {e}")?;
        }
        Ok(())
    }
}

/// Starts and stops single parts. [`SystemParts`] does it for real.
pub trait PartOps {
    /// Starts `part`; returns it as started (choices filled in).
    fn start(&mut self, part: &Part) -> Result<Part, PartError>;
    /// Stops a started part; stopping one that is already gone succeeds.
    fn stop(&mut self, part: &Part) -> Result<(), PartError>;
}

/// The parts in the order they start: by kind, then file order.
pub fn start_order(parts: &[Part]) -> Vec<Part> {
    let mut ordered = parts.to_vec();
    // A stable sort keeps the file order within a kind.
    ordered.sort_by_key(Part::rank);
    ordered
}

/// Starts `parts` in [`start_order`]. After each part starts, `progress`
/// gets every part started so far (to be recorded before the next one, so
/// that a crash leaves nothing unknown). When one fails, those already
/// started are stopped in reverse, `progress` gets what is still up (none,
/// unless an undo failed) and the failure is returned.
pub fn start_all(
    parts: &[Part],
    ops: &mut impl PartOps,
    mut progress: impl FnMut(&[Part]),
) -> Result<Vec<Part>, StartFailure> {
    let mut started: Vec<Part> = Vec::new();
    for part in start_order(parts) {
        match ops.start(&part) {
            Ok(as_started) => {
                started.push(as_started);
                progress(&started);
            }
            Err(error) => {
                let undo_errors = stop_all(&started, ops);
                let still_up: Vec<Part> = started
                    .into_iter()
                    .filter(|p| undo_errors.iter().any(|e| e.part == p.to_string()))
                    .collect();
                progress(&still_up);
                return Err(StartFailure {
                    error,
                    undo_errors,
                    still_up,
                });
            }
        }
    }
    Ok(started)
}

/// Stops started parts in reverse order. Every part is tried even when an
/// earlier one fails (an address must go even if a disk is stuck); the
/// errors are returned.
pub fn stop_all(started: &[Part], ops: &mut impl PartOps) -> Vec<PartError> {
    started
        .iter()
        .rev()
        .filter_map(|part| ops.stop(part).err())
        .collect()
}

/// Where and how the real parts run on this node.
#[derive(Debug, Clone)]
pub struct PartContext {
    /// This node's name: the volume group tag.
    pub node: String,
    /// The package, for the agents' environment and logs.
    pub package: String,
    /// How long users of a file system have after SIGTERM.
    pub stop_grace: Duration,
    /// `$OCF_ROOT`.
    pub ocf_root: PathBuf,
    /// Which nodes of the cluster are alive (their liveness lease held)
    /// when the start began; `None` when not known. A volume group tagged
    /// by a member that is not alive is taken over.
    pub live_nodes: Option<ClusterLiveness>,
}

/// The cluster's nodes and those of them alive, as the manager last saw
/// its store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterLiveness {
    /// `cluster.nodes`.
    pub members: std::collections::BTreeSet<String>,
    /// Members whose node record (with etcd: liveness lease) is there.
    pub alive: std::collections::BTreeSet<String>,
}

/// [`ClusterLiveness`] shared by the manager with the package runners
/// (`None` until known).
pub type LiveNodes = std::sync::Arc<std::sync::RwLock<Option<ClusterLiveness>>>;

/// The default `$OCF_ROOT`, where Debian's resource-agents installs.
pub const DEFAULT_OCF_ROOT: &str = "/usr/lib/ocf";

/// `$OCF_ROOT` of this process, else [`DEFAULT_OCF_ROOT`].
pub fn ocf_root() -> PathBuf {
    std::env::var_os("OCF_ROOT")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_OCF_ROOT), PathBuf::from)
}

/// How long a tool (`ip`, `mount`, `vgchange`, ...) may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// The real parts on this machine.
#[derive(Debug, Clone)]
pub struct SystemParts {
    pub ctx: PartContext,
}

impl PartOps for SystemParts {
    fn start(&mut self, part: &Part) -> Result<Part, PartError> {
        let started = match part {
            Part::VolumeGroup { name } => {
                vg::activate(name, &self.ctx.node, self.ctx.live_nodes.as_ref())
                    .map(|()| part.clone())
            }
            Part::Filesystem {
                device,
                mount,
                fstype,
                options,
                fsck,
            } => fs::mount(device, mount, fstype, options.as_deref(), *fsck).map(|()| part.clone()),
            Part::Ip {
                address,
                prefix,
                interface,
            } => ip::add(*address, *prefix, interface.as_deref()).map(|interface| Part::Ip {
                address: *address,
                prefix: *prefix,
                interface: Some(interface),
            }),
            Part::Agent(agent) => ocf::start(agent, &self.ctx).map(|()| part.clone()),
        };
        match &started {
            Ok(p) => tracing::info!(package = %self.ctx.package, part = %p, "part started"),
            Err(e) => {
                tracing::warn!(package = %self.ctx.package, part = %part, error = %e, "part failed to start")
            }
        }
        started.map_err(|detail| PartError::new(part, detail))
    }

    fn stop(&mut self, part: &Part) -> Result<(), PartError> {
        let stopped = match part {
            Part::VolumeGroup { name } => vg::deactivate(name, &self.ctx.node),
            Part::Filesystem { mount, .. } => fs::unmount(mount, self.ctx.stop_grace),
            Part::Ip {
                address,
                prefix,
                interface,
            } => ip::remove(*address, *prefix, interface.as_deref()),
            Part::Agent(agent) => ocf::stop(agent, &self.ctx),
        };
        match &stopped {
            Ok(()) => tracing::info!(package = %self.ctx.package, %part, "part stopped"),
            Err(e) => {
                tracing::warn!(package = %self.ctx.package, %part, error = %e, "part failed to stop")
            }
        }
        stopped.map_err(|detail| PartError::new(part, detail))
    }
}

/// What a tool run by a part printed and how it ended.
#[derive(Debug)]
pub(crate) struct ToolOutput {
    /// `None` when killed by a signal or the timeout.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl ToolOutput {
    /// The last line of stderr (or stdout), for messages.
    pub fn last_line(&self) -> String {
        self.last_lines(1)
    }

    /// The last `n` non-empty lines of stderr (or stdout), joined by ` | `.
    pub fn last_lines(&self, n: usize) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        lines[lines.len().saturating_sub(n)..].join(" | ")
    }

    pub fn describe(&self, program: &str) -> String {
        let how = match self.code {
            Some(c) => format!("{program} exited with status {c}"),
            None => format!("{program} was killed (timeout or signal)"),
        };
        // Tools such as fsck give the cause a line or two before the end.
        let line = self.last_lines(3);
        if line.is_empty() {
            how
        } else {
            format!("{how}: {line}")
        }
    }
}

/// Largest output kept from a tool.
const TOOL_OUTPUT_CAP: u64 = 64 * 1024;

/// Runs a tool without a shell in its own process group, with extra
/// environment, killed with its group at `timeout`, always reaped.
pub(crate) fn tool(
    program: &str,
    args: &[&str],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<ToolOutput, String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        // LVM complains about every inherited descriptor otherwise.
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    // Readers on threads, so a chatty tool never blocks on a full pipe.
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(pipe) = pipe {
                let _ = pipe.take(TOOL_OUTPUT_CAP).read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                tracing::warn!(program, ?timeout, "tool timed out; killing its group");
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for {program}: {e}")),
        }
    };
    // Whatever it left in its group would hold the pipes open.
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    Ok(ToolOutput {
        code: status.and_then(|s| s.code()),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Runs a tool that must succeed; its failure described.
pub(crate) fn tool_ok(program: &str, args: &[&str]) -> Result<ToolOutput, String> {
    let out = tool(program, args, &[], TOOL_TIMEOUT)?;
    if out.code == Some(0) {
        Ok(out)
    } else {
        Err(out.describe(&format!("{program} {}", args.join(" "))))
    }
}

#[cfg(test)]
mod tests;
