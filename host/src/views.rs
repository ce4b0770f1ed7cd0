//! The typed shapes of everything vigil shows: the `--json` output of
//! every command, the answers of the control socket, and what the HTTP side
//! serves (`/api/status`, the cluster page, `/metrics` read these).
//!
//! Architecture invariant: this module and the SDK's wire module are the
//! only places that know the JSON layout of vigil's outputs. Producers (the
//! daemon, the package manager, the registry listing) fill these structs;
//! consumers (the CLI, the HTTP side) read them. Nothing here talks to the
//! daemon or formats text for people.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::placement;
use crate::registry::{ListedResource, Listing, MonitorRecord, MonitorStatus};

/// `vigil status --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusOutput {
    pub cluster: String,
    pub node: String,
    pub nodes: Vec<NodeStatus>,
    pub packages: Vec<PackageStatus>,
    /// Configuration errors the host knows of (startup and last reload);
    /// the daemon fills this in, the package manager leaves it empty.
    #[serde(default)]
    pub config_errors: Vec<ConfigErrorRow>,
    /// This host's `[[hook]]`s and how their deliveries went; the daemon
    /// fills this in.
    #[serde(default)]
    pub hooks: Vec<HookRow>,
    /// The applied package set every host runs (`vigil apply`); `None`
    /// before any was applied.
    #[serde(default)]
    pub applied: Option<AppliedStatus>,
}

/// The applied package set, in `vigil status` and `vigil apply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedStatus {
    /// 1 for the first applied set, one more for each later one.
    pub revision: u64,
    /// FNV-1a 64 of the files, 16 hex digits.
    pub digest: String,
    /// `vigil apply on node1`, `reload on node1`, `first start of node1`.
    pub applied_by: String,
    /// RFC 3339.
    pub applied_at: String,
    /// The package files, by name.
    pub files: Vec<String>,
}

impl AppliedStatus {
    pub fn new(set: &crate::store::AppliedPackages) -> Self {
        Self {
            revision: set.revision,
            digest: set.digest.clone(),
            applied_by: set.applied_by.clone(),
            applied_at: crate::api::rfc3339(set.applied_ms),
            files: set.files.keys().cloned().collect(),
        }
    }
}

/// The socket's answer to `applied`: the set and its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedSetOutput {
    pub applied: Option<AppliedStatus>,
    pub files: std::collections::BTreeMap<String, String>,
}

/// `vigil apply --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyOutput {
    pub ok: bool,
    /// The set in force after the command (the old one when refused).
    pub applied: Option<AppliedStatus>,
    /// False when the files were the set in force already.
    pub changed: bool,
    pub added: Vec<String>,
    /// Changed in run, halt, services or parts: halted and run again.
    pub restarted: Vec<String>,
    /// Changed in placement keys only: not restarted.
    pub replanned: Vec<String>,
    pub removed: Vec<String>,
    /// Why it was refused (`file:line: message` each), empty when applied.
    pub errors: Vec<CheckError>,
}

impl ApplyOutput {
    /// Nothing changed: refused (`errors` says why) or already in force.
    pub fn unchanged(applied: Option<AppliedStatus>, errors: Vec<CheckError>) -> Self {
        Self {
            ok: errors.is_empty(),
            applied,
            changed: false,
            added: Vec::new(),
            restarted: Vec::new(),
            replanned: Vec::new(),
            removed: Vec::new(),
            errors,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    /// `up`, `down` or `halted`.
    pub state: String,
    /// `vigil node maintenance NAME on`: no action for its packages.
    #[serde(default)]
    pub maintenance: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageStatus {
    pub name: String,
    /// `up`, `down`, `starting`, `halting` or `failed`.
    pub state: String,
    pub running_on: Vec<String>,
    pub switching: bool,
    pub reason: String,
    pub fence_token: u64,
    pub failed_on: Vec<String>,
    /// This node's view of the package's resources.
    pub resources: Vec<ResourceStatus>,
    /// Its parts up on the node that answered (from its run record).
    #[serde(default)]
    pub parts_here: Vec<PartStatus>,
    /// `vigil pkg maintenance NAME on`: no action is taken for it.
    #[serde(default)]
    pub maintenance: bool,
    /// What maintenance (of the package or of its node) holds back, such
    /// as `would halt on node1: resource down`.
    #[serde(default)]
    pub withheld: Option<String>,
    /// Nodes where switching is disabled for it alone
    /// (`vigil pkg disable NAME --node N`).
    #[serde(default)]
    pub disabled_on: Vec<String>,
    /// Its services on the node that answered: pids, restarts, failures.
    #[serde(default)]
    pub services_here: Vec<ServiceStatus>,
    /// How it is placed (`switching` is beside it, above).
    #[serde(default)]
    pub policy: PackagePolicy,
}

/// A package's placement settings, as `packages.d/` gives them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PackagePolicy {
    /// `failover`, `multi_node` or `system_multi_node`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `configured_node` or `min_package_node`.
    pub failover_policy: String,
    /// `manual` or `automatic`.
    pub failback_policy: String,
    pub auto_run: bool,
    /// Lower is more important; null is least important.
    pub priority: Option<u32>,
    /// In priority order.
    pub nodes: Vec<String>,
}

/// A supervised `[[service]]` of a package on the node that answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// `running`, `exited` (waiting to be restarted, or the package is
    /// failing) or `stopped` (the package does not run here).
    pub state: String,
    /// The process it runs as now, while the package runs here.
    pub pid: Option<i32>,
    /// Restarts since the package started here.
    pub restarts: u32,
    /// `restarts` of its `[[service]]`; null means unlimited.
    pub restart_limit: Option<u32>,
    /// Times it exited on its own on this node since the host started or
    /// the last `vigil pkg clear`.
    pub fail_count: u32,
    /// How it last exited, with when (RFC 3339).
    pub last_failure: Option<String>,
}

/// A package part (`[[filesystem]]`, `[[ip]]`, …) up on a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartStatus {
    /// `volume_group`, `filesystem`, `ip` or `agent`.
    pub kind: String,
    /// The part as `vigil status` prints it.
    pub part: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceStatus {
    pub name: String,
    /// `up`, `down` or `unknown`, after the package's criteria and hysteresis.
    pub state: String,
    pub evaluate: String,
    /// The package's up-criteria for it, such as `< 80`.
    #[serde(default)]
    pub criterion: String,
}

/// `vigil why --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhyOutput {
    pub package: String,
    pub state: String,
    pub running_on: Vec<String>,
    pub explanation: placement::Explanation,
    /// How this node judges each resource the package requires.
    #[serde(default)]
    pub resources: Vec<WhyResource>,
    /// Each configured part and whether it is up on the node that answered.
    #[serde(default)]
    pub parts: Vec<WhyPart>,
    /// Why the last start of the package on the node that answered failed
    /// on a part (the part and the tool's or agent's words), if it did.
    #[serde(default)]
    pub part_failure: Option<String>,
    /// The same, as `vigil why` prints it.
    pub text: String,
}

/// One part of a package in `vigil why`, as the node that answered has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhyPart {
    /// `volume_group`, `filesystem`, `ip` or `agent`.
    pub kind: String,
    /// The part as configured (`ip 192.0.2.50/24`).
    pub part: String,
    /// `up` (started here, as started: `ip 192.0.2.50/24 on eth0`) or `down`.
    pub state: String,
    /// The part as started here, when up.
    pub started: Option<String>,
}

impl std::fmt::Display for WhyPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.started {
            Some(started) => write!(f, "part {started} is up here"),
            None => write!(f, "part {} is {} here", self.part, self.state),
        }
    }
}

/// One resource of a package in `vigil why`, as this node judges it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhyResource {
    pub name: String,
    /// `up`, `down`, `unknown` or `pending`.
    pub state: String,
    pub criterion: String,
    pub rise: u32,
    pub fall: u32,
    /// Good samples in a row, toward `rise`.
    pub good_run: u32,
    /// Bad or unknown samples in a row, toward `fall`.
    pub bad_run: u32,
    /// What explains the state: `90 does not meet < 80`, `no monitor
    /// declares it`, `monitor temp failed: ...`.
    pub detail: String,
    /// Set when the package did not write the requirement: the part that
    /// implies it (`ip 192.0.2.50/24` needs its subnet up).
    #[serde(default)]
    pub implied_by: Option<String>,
}

impl std::fmt::Display for WhyResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "resource {}{} is {}: {} ({} good in a row of rise {}, {} not good of fall {})",
            self.name,
            match &self.implied_by {
                Some(part) => format!(" (implied by {part})"),
                None => String::new(),
            },
            self.state,
            self.detail,
            self.good_run,
            self.rise,
            self.bad_run,
            self.fall
        )
    }
}

/// `vigil resls --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReslsOutput {
    pub node: String,
    pub path: String,
    pub resources: Vec<ResourceRow>,
    /// Immediate child classes of `path`.
    pub classes: Vec<ClassRow>,
    /// Declared wildcard patterns at or below `path`.
    pub declared: Vec<DeclaredRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceRow {
    pub name: String,
    /// A number, a string, or null when unknown.
    pub value: serde_json::Value,
    pub unit: Option<String>,
    /// `known` or `unknown`.
    pub state: String,
    pub reason: Option<String>,
    pub monitor: String,
    /// RFC 3339; null for a declared resource never sampled.
    pub updated: Option<String>,
    pub age_seconds: Option<f64>,
    pub used_by: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassRow {
    pub name: String,
    pub resources: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeclaredRow {
    pub pattern: String,
    pub monitor: String,
}

/// One monitor in `vigil monitor list --json` and status output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorRow {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// `starting`, `ok` or `failed`.
    pub state: String,
    pub reason: Option<String>,
    pub declares: Vec<String>,
    pub samples_received: u64,
    pub last_report: Option<String>,
    /// Problems only the log showed before: refused samples, last error.
    #[serde(flatten)]
    pub problems: MonitorProblems,
}

/// What went wrong with a monitor's reports, kept by the daemon.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MonitorProblems {
    /// Samples refused (outside its declaration, or a resource another
    /// monitor publishes).
    #[serde(default)]
    pub refused_samples: u64,
    /// Why the last one was refused.
    #[serde(default)]
    pub last_refused: Option<String>,
    /// Its last failure (an exec monitor's `error` message, a timeout, ...),
    /// kept after it recovers.
    #[serde(default)]
    pub last_error: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    pub last_error_at: Option<String>,
    /// Other monitors whose declarations can name a resource this one's
    /// can: `monitor owner declares /dup/x too (this one: /dup/*)`.
    #[serde(default)]
    pub duplicate_publishers: Vec<String>,
}

impl MonitorRow {
    /// One line saying what is wrong, if anything.
    pub fn problem(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(reason) = &self.reason {
            parts.push(reason.clone());
        }
        if let Some(refused) = &self.problems.last_refused {
            parts.push(format!(
                "{} samples refused, last: {refused}",
                self.problems.refused_samples
            ));
        }
        for duplicate in &self.problems.duplicate_publishers {
            parts.push(format!("duplicate publisher: {duplicate}"));
        }
        if let (Some(error), None) = (&self.problems.last_error, &self.reason) {
            parts.push(format!(
                "last error {}: {error}",
                self.problems.last_error_at.as_deref().unwrap_or_default()
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// One configuration error in `vigil monitor list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigErrorRow {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
    /// The monitor that keeps running its last good version because of
    /// this error.
    pub kept_running: Option<String>,
    /// The package that keeps its last good (applied) version because of
    /// this error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_package: Option<String>,
}

impl ConfigErrorRow {
    pub fn new(error: &crate::config::ConfigError, kept_running: Option<String>) -> Self {
        Self {
            file: error.file.clone(),
            line: error.line,
            message: error.message.clone(),
            kept_running,
            kept_package: None,
        }
    }
}

impl std::fmt::Display for ConfigErrorRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.message)?,
            None => write!(f, "{}: {}", self.file.display(), self.message)?,
        }
        if let Some(monitor) = &self.kept_running {
            write!(
                f,
                " (monitor {monitor} keeps running its last good version)"
            )?;
        }
        if let Some(package) = &self.kept_package {
            write!(
                f,
                " (package {package} keeps its last good version, the one applied)"
            )?;
        }
        Ok(())
    }
}

/// Formats milliseconds since the epoch as RFC 3339 (UTC).
pub fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::UNIX_EPOCH + Duration::from_millis(ms);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn resource_row(r: &ListedResource, now_ms: u64, used_by: Vec<String>) -> ResourceRow {
    let s = &r.entry.sample;
    let (value, unit) = match &s.value {
        None => (serde_json::Value::Null, None),
        Some(vigil_sdk::Value::Text(t)) => (serde_json::Value::String(t.clone()), None),
        Some(vigil_sdk::Value::Number { value, unit }) => (
            serde_json::Number::from_f64(*value)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            unit.clone(),
        ),
    };
    ResourceRow {
        name: s.name.to_string(),
        value,
        unit,
        state: if s.is_known() { "known" } else { "unknown" }.to_owned(),
        reason: s.reason.clone(),
        monitor: r.entry.monitor.clone(),
        updated: r.sampled.then(|| rfc3339(s.timestamp_ms)),
        age_seconds: r
            .sampled
            .then(|| now_ms.saturating_sub(s.timestamp_ms) as f64 / 1000.0),
        used_by,
    }
}

/// Shapes a registry listing; `used_by` names the packages using a resource.
pub fn resls_output(
    node: &str,
    listing: &Listing,
    now_ms: u64,
    used_by: impl Fn(&str) -> Vec<String>,
) -> ReslsOutput {
    ReslsOutput {
        node: node.to_owned(),
        path: listing.path.clone(),
        resources: listing
            .resources
            .iter()
            .map(|r| resource_row(r, now_ms, used_by(r.entry.sample.name.as_str())))
            .collect(),
        classes: listing
            .classes
            .iter()
            .map(|(name, n)| ClassRow {
                name: name.clone(),
                resources: *n,
            })
            .collect(),
        declared: listing
            .declared
            .iter()
            .map(|(p, m)| DeclaredRow {
                pattern: p.to_string(),
                monitor: m.clone(),
            })
            .collect(),
    }
}

pub fn monitor_row(name: &str, record: &MonitorRecord) -> MonitorRow {
    let (state, reason) = match &record.status {
        MonitorStatus::Starting => ("starting", None),
        MonitorStatus::Ok => ("ok", None),
        MonitorStatus::Failed(r) => ("failed", Some(r.clone())),
    };
    MonitorRow {
        name: name.to_owned(),
        kind: record.kind.to_owned(),
        state: state.to_owned(),
        reason,
        declares: record.patterns.iter().map(|p| p.to_string()).collect(),
        samples_received: record.samples_received,
        last_report: record.last_report_ms.map(rfc3339),
        problems: MonitorProblems::default(),
    }
}

/// `vigil check --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckOutput {
    pub ok: bool,
    pub errors: Vec<CheckError>,
    /// How the local package files compare with the applied set of the
    /// running host, when one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<CheckApplied>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckApplied {
    pub revision: u64,
    pub digest: String,
    /// The digest of the local files that validated.
    pub local_digest: String,
    /// `None` when the local files are the applied set.
    pub differences: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl CheckOutput {
    pub fn new(errors: &[crate::config::ConfigError]) -> Self {
        Self {
            ok: errors.is_empty(),
            errors: errors
                .iter()
                .map(|e| CheckError {
                    file: e.file.clone(),
                    line: e.line,
                    message: e.message.clone(),
                })
                .collect(),
            applied: None,
        }
    }
}

/// `vigil monitor list --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorListOutput {
    pub monitors: Vec<MonitorRow>,
    pub config_errors: Vec<ConfigErrorRow>,
}

/// `vigil pkg …` and `vigil node …` with `--json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminOutput {
    /// What the host did, in words.
    pub done: String,
}

/// Whether this host vouches for itself: `/healthz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthOutput {
    pub node: String,
    /// True when the host runs and, on a cluster, its lease is sure.
    pub healthy: bool,
    /// `sure`, `in_doubt` (it may expire within the safety margin) or
    /// `none` (a one-node cluster on the embedded store has no lease).
    pub lease: String,
}

impl HealthOutput {
    pub fn new(node: &str, on_cluster: bool, lease_in_doubt: bool) -> Self {
        let lease = match (on_cluster, lease_in_doubt) {
            (false, _) => "none",
            (true, false) => "sure",
            (true, true) => "in_doubt",
        };
        Self {
            node: node.to_owned(),
            healthy: !lease_in_doubt,
            lease: lease.to_owned(),
        }
    }
}

/// Everything the cluster page and `/metrics` show, gathered in one round
/// of requests to the main loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    pub status: StatusOutput,
    pub resources: ReslsOutput,
    pub monitors: Vec<MonitorRow>,
    pub health: HealthOutput,
    /// Newest first.
    pub events: Vec<ClusterEvent>,
}

/// What a [`ClusterEvent`] is about. `[[hook]] events` names these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A node's state changed (`up`, `down`, `halted`).
    Node,
    /// A package's state or place changed.
    Package,
    /// A resource a package requires changed state, as this node judges it.
    Resource,
    /// A package now runs on none of the nodes it ran on before.
    Failover,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::Node,
        EventKind::Package,
        EventKind::Resource,
        EventKind::Failover,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::Node => "node",
            EventKind::Package => "package",
            EventKind::Resource => "resource",
            EventKind::Failover => "failover",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Something that changed in the cluster, as one host saw it happen: what
/// the cluster page lists and what each `[[hook]]` gets on stdin (and, flat,
/// as `VIGIL_EVENT_*` variables; see [`ClusterEvent::env`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterEvent {
    /// Numbers the events one host saw, from 1, in the order it saw them
    /// (a host restart starts again at 1).
    pub seq: u64,
    /// RFC 3339.
    pub at: String,
    /// The same, in milliseconds since the epoch.
    pub at_ms: u64,
    pub kind: EventKind,
    /// The package or node.
    pub subject: String,
    /// The event in words, as the page shows it.
    pub text: String,
    /// The node whose host saw the event (and runs the hooks).
    pub observed_by: String,
    /// The node the event is about: the node of a node event, where the
    /// package runs now (else where it ran) for package and failover events,
    /// the node judging a resource for resource events.
    pub node: Option<String>,
    pub package: Option<String>,
    /// The resource of a resource event.
    pub resource: Option<String>,
    /// The state before (`up`, `down`, `starting`, ...).
    pub old_state: String,
    pub new_state: String,
    /// Where the package ran before and runs now (package and failover events).
    pub old_nodes: Vec<String>,
    pub new_nodes: Vec<String>,
    /// The package's reason as `vigil status` shows it; for a resource
    /// event, the package's criterion for it (`< 80`).
    pub reason: String,
    /// The lifecycle word of `reason` (`failover`, `manual`, ...), else `other`.
    pub reason_label: String,
    /// The package's fence token after the change.
    pub fence_token: Option<u64>,
}

impl ClusterEvent {
    /// The event as `VIGIL_EVENT_*` variables: lists joined with `,`,
    /// what is absent as the empty string.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        vec![
            ("VIGIL_EVENT_SEQ", self.seq.to_string()),
            ("VIGIL_EVENT_AT", self.at.clone()),
            ("VIGIL_EVENT_AT_MS", self.at_ms.to_string()),
            ("VIGIL_EVENT_KIND", self.kind.name().to_owned()),
            ("VIGIL_EVENT_SUBJECT", self.subject.clone()),
            ("VIGIL_EVENT_TEXT", self.text.clone()),
            ("VIGIL_EVENT_OBSERVED_BY", self.observed_by.clone()),
            ("VIGIL_EVENT_NODE", opt(&self.node)),
            ("VIGIL_EVENT_PACKAGE", opt(&self.package)),
            ("VIGIL_EVENT_RESOURCE", opt(&self.resource)),
            ("VIGIL_EVENT_OLD_STATE", self.old_state.clone()),
            ("VIGIL_EVENT_NEW_STATE", self.new_state.clone()),
            ("VIGIL_EVENT_OLD_NODES", self.old_nodes.join(",")),
            ("VIGIL_EVENT_NEW_NODES", self.new_nodes.join(",")),
            ("VIGIL_EVENT_REASON", self.reason.clone()),
            ("VIGIL_EVENT_REASON_LABEL", self.reason_label.clone()),
            (
                "VIGIL_EVENT_FENCE_TOKEN",
                self.fence_token.map(|t| t.to_string()).unwrap_or_default(),
            ),
        ]
    }
}

/// One `[[hook]]` in `vigil status`, and its counters in `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HookRow {
    pub name: String,
    pub events: Vec<EventKind>,
    /// Events waiting for it now.
    pub queued: usize,
    /// Events it was given that ended with status 0 (after retries).
    pub delivered: u64,
    /// Runs that failed (each attempt counts), timeouts included.
    pub failed_runs: u64,
    /// Runs killed at `timeout_seconds`.
    pub timed_out_runs: u64,
    /// Events given up on after every attempt failed.
    pub given_up: u64,
    /// Events dropped because its queue was full.
    pub dropped: u64,
    /// How its last failed run ended.
    pub last_error: Option<String>,
    /// RFC 3339.
    pub last_error_at: Option<String>,
}
