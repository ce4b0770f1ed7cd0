//! Configuration: `cluster.toml`, `monitors.d/*.toml` and `packages.d/*.toml`
//! (see [`package`]), loaded in two phases — raw serde structs that refuse
//! unknown keys, then a validated, resolved model. Every error carries
//! `file:line`; validation collects all errors instead of stopping at the
//! first.
//!
//! One broken monitor or package file disables that monitor or package only:
//! [`load`] returns those that validated beside the errors of the others. A broken
//! `cluster.toml` is fatal, since nothing can run without it.
//!
//! This module reads files and nothing else: it does not load plugins or
//! start processes (see [`crate::runtime`]).

pub mod package;
mod source;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use vigil_sdk::proto::Mode;

pub use source::{ConfigError, SourceFile};

/// Default configuration directory.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/vigil";
/// Where dylib plugins are looked for after `plugin_path` and the executable's directory.
pub const SYSTEM_PLUGIN_DIR: &str = "/usr/lib/vigil/plugins";
/// `[paths] state_dir` by default (the Linux layout).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vigil";
/// `[paths] run_dir` by default.
pub const DEFAULT_RUN_DIR: &str = "/run/vigil";
/// `[paths] log_dir` by default.
pub const DEFAULT_LOG_DIR: &str = "/var/log/vigil";

// ---------------------------------------------------------------- raw phase

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClusterFile {
    cluster: Spanned<RawCluster>,
    #[serde(default)]
    store: Option<Spanned<RawStore>>,
    #[serde(default)]
    api: Option<RawApi>,
    #[serde(default)]
    paths: Option<RawPaths>,
    #[serde(default)]
    logging: Option<RawLogging>,
    #[serde(default)]
    hook: Vec<RawHook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    name: Spanned<String>,
    command: Spanned<Vec<String>>,
    #[serde(default)]
    events: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    timeout_seconds: Option<Spanned<Seconds>>,
    #[serde(default)]
    retries: Option<Spanned<i64>>,
    #[serde(default)]
    queue_length: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    #[serde(default)]
    format: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    #[serde(default)]
    state_dir: Option<Spanned<String>>,
    #[serde(default)]
    run_dir: Option<Spanned<String>>,
    #[serde(default)]
    log_dir: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Spanned<String>,
    nodes: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    plugin_path: Vec<Spanned<String>>,
    #[serde(default)]
    fail_fast_action: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    #[serde(default)]
    endpoints: Vec<Spanned<String>>,
    #[serde(default)]
    lease_ttl_seconds: Option<Spanned<Seconds>>,
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    max_parallel_actions: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    #[serde(default)]
    socket: Option<Spanned<String>>,
    #[serde(default)]
    http_listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMonitor {
    name: Spanned<String>,
    #[serde(rename = "type")]
    kind: Spanned<String>,
    #[serde(default)]
    plugin: Option<Spanned<String>>,
    #[serde(default)]
    command: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    mode: Option<Spanned<String>>,
    #[serde(default)]
    isolation: Option<Spanned<String>>,
    #[serde(default)]
    interval_seconds: Option<Spanned<Seconds>>,
    #[serde(default)]
    timeout_seconds: Option<Spanned<Seconds>>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    params: Option<toml::Table>,
}

/// A duration in seconds written as an integer or a float.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
enum Seconds {
    Int(i64),
    Float(f64),
}

impl Seconds {
    /// The duration, if it is a finite number of seconds within `bounds`.
    fn to_duration(self, bounds: (f64, f64)) -> Result<Duration, String> {
        let secs = match self {
            Seconds::Int(i) => i as f64,
            Seconds::Float(f) => f,
        };
        let (min, max) = bounds;
        if !secs.is_finite() || secs < min || secs > max {
            // 1e-300 written out in full is three hundred zeros.
            let got = if secs != 0.0 && secs.is_finite() && !(1e-3..1e9).contains(&secs.abs()) {
                format!("{secs:e}")
            } else {
                format!("{secs}")
            };
            return Err(format!(
                "must be a number of seconds from {min} to {max}, got {got}"
            ));
        }
        Ok(Duration::from_secs_f64(secs))
    }
}

/// Bounds of monitor intervals and of every timeout: below 10 ms a poll
/// loop only burns CPU; above a day it is a typo.
pub(crate) const SECONDS_BOUNDS: (f64, f64) = (0.01, 86_400.0);
/// Bounds of `lease_ttl_seconds`: etcd leases are whole seconds, and a node
/// silent for more than an hour is not being watched.
const LEASE_TTL_BOUNDS: (f64, f64) = (1.0, 3_600.0);

/// `[api] http_listen` as an address: a bare port listens on loopback
/// (the HTTP side is read-only but unauthenticated, so reaching it from
/// other machines must be asked for by naming an address).
pub fn http_listen_addr(text: &str) -> Option<std::net::SocketAddr> {
    match text.parse::<u16>() {
        Ok(port) => Some(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
        Err(_) => text.parse().ok(),
    }
}

/// Why `endpoint` is not an etcd endpoint (`[http[s]://]host:port`).
fn endpoint_problem(endpoint: &str) -> Option<&'static str> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .unwrap_or(endpoint);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (host, port) = v6.split_once("]:")?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Some("the address in [] is not an IPv6 address");
            }
            (host, port)
        }
        None => match rest.rsplit_once(':') {
            Some(hp) => hp,
            None => return Some("it has no :port"),
        },
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if !host_ok {
        return Some("the host is not a name or an address");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => None,
        _ => Some("the port is not a number from 1 to 65535"),
    }
}

// ---------------------------------------------------------- validated model

/// The validated `cluster.toml`.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The configuration directory every relative path is resolved against.
    pub dir: PathBuf,
    pub name: String,
    pub nodes: Vec<String>,
    pub plugin_path: Vec<PathBuf>,
    pub store: StoreConfig,
    /// `[store] lease_ttl_seconds` (default 3 s), whatever the store type:
    /// the guard's margin is derived from it (see [`crate::guard`]).
    pub lease_ttl: Duration,
    /// `[store] max_parallel_actions` (default 32): how many runs and halts
    /// this node carries out at once.
    pub max_parallel_actions: usize,
    pub api: ApiConfig,
    pub paths: Paths,
    /// `[logging] format`: how `vigil host` writes its log to stderr.
    pub log_format: LogFormat,
    /// `[[hook]]`s that validated; those with an error are in `hook_errors`.
    pub hooks: Vec<HookConfig>,
    /// Errors of `[[hook]]`s: a broken hook is left out, it does not make
    /// `cluster.toml` unusable ([`load`] moves these to [`Config::errors`]).
    pub hook_errors: Vec<ConfigError>,
    /// `[cluster] fail_fast_action`: what a fail-fast failure does to the
    /// node once its packages are killed and its lease is revoked.
    pub fail_fast_action: FailFastAction,
}

/// `[cluster] fail_fast_action` (DESIGN §5, §7a).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailFastAction {
    /// The host ends (exit status 4, which systemd does not restart): the
    /// node stays out of the cluster until an operator starts it again.
    #[default]
    HaltNode,
    /// The kernel reboots the machine at once (reboot(2)).
    Reboot,
}

/// One `[[hook]]` (DESIGN §7a): a program given each cluster event it asks
/// for (see [`crate::hooks`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HookConfig {
    pub name: String,
    /// argv; a relative program path (with a `/`) is resolved against the
    /// config dir.
    pub command: Vec<String>,
    /// The kinds of event it gets (all when `events` is not set).
    pub events: Vec<crate::views::EventKind>,
    /// Default [`DEFAULT_HOOK_TIMEOUT`]; the process group is killed then.
    pub timeout: Duration,
    /// How many times a failed run is tried again (default 0).
    pub retries: u32,
    /// Events that may wait for it (default [`DEFAULT_HOOK_QUEUE`]); more
    /// are dropped and counted.
    pub queue_length: usize,
    /// `cluster.toml` and the line of the hook's `name`, for messages.
    pub source: PathBuf,
    pub line: usize,
}

/// `[[hook]] timeout_seconds` by default.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Most `retries` a hook may ask for: more only piles up its queue.
pub const MAX_HOOK_RETRIES: u32 = 10;
/// `[[hook]] queue_length` by default.
pub const DEFAULT_HOOK_QUEUE: usize = 256;
/// Most `queue_length` a hook may ask for (each event is a few hundred bytes).
pub const MAX_HOOK_QUEUE: usize = 100_000;

/// `[logging] format` (DESIGN §7a).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line (see [`crate::logging`]).
    Json,
}

/// `[paths]` (DESIGN §7a): where the host keeps what it writes. Relative
/// paths in the file are resolved against the config dir (the demo's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// Kept across reboots: the embedded store, run records and claims.
    pub state_dir: PathBuf,
    /// Gone at reboot: the API socket (by default), the guard's socket and lock.
    pub run_dir: PathBuf,
    /// Package service output and `guard.log` (rotated by logrotate's
    /// `copytruncate`: every writer opens its file with `O_APPEND`).
    pub log_dir: PathBuf,
}

impl Paths {
    /// The Linux layout: `/var/lib/vigil`, `/run/vigil`, `/var/log/vigil`.
    pub fn linux() -> Self {
        Self {
            state_dir: DEFAULT_STATE_DIR.into(),
            run_dir: DEFAULT_RUN_DIR.into(),
            log_dir: DEFAULT_LOG_DIR.into(),
        }
    }

    /// The embedded store's directory unless `[store] path` says otherwise.
    pub fn store(&self) -> PathBuf {
        self.state_dir.join("store")
    }

    /// Run records (`<pkg>.json`) and the guard's claims (`<pkg>.guard.json`).
    pub fn records(&self) -> PathBuf {
        self.state_dir.join("packages")
    }

    /// The API socket unless `[api] socket` says otherwise.
    pub fn api_socket(&self) -> PathBuf {
        self.run_dir.join("vigil.sock")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    /// Single node, in-process, persisted at `path`.
    Embedded { path: PathBuf },
    Etcd {
        endpoints: Vec<String>,
        lease_ttl: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub socket: PathBuf,
    pub http_listen: Option<String>,
}

/// Where a dylib monitor runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// In the host process, on its own thread (the default).
    #[default]
    InProcess,
    /// In a child process of its own (`vigil monitor serve-dylib`), so a
    /// crash costs only that monitor.
    Process,
}

/// How a monitor is run.
#[derive(Debug, Clone, PartialEq)]
pub enum MonitorKind {
    /// `plugin` as written: a path (contains `/`) or a name to search.
    Dylib {
        plugin: String,
        isolation: Isolation,
    },
    Exec {
        command: Vec<String>,
        mode: Mode,
    },
    Nagios {
        command: Vec<String>,
    },
}

impl MonitorKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            MonitorKind::Dylib { .. } => "dylib",
            MonitorKind::Exec { .. } => "exec",
            MonitorKind::Nagios { .. } => "nagios",
        }
    }
}

/// One validated monitor registration.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorConfig {
    pub name: String,
    pub kind: MonitorKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub params: serde_json::Value,
    /// The file it came from, for messages.
    pub source: PathBuf,
    /// The line of `plugin` or `command` (what runs), for messages.
    pub line: usize,
}

/// Everything under a configuration directory.
#[derive(Debug, Clone)]
pub struct Config {
    pub cluster: ClusterConfig,
    pub monitors: Vec<MonitorConfig>,
    /// `packages.d/*.toml` that validated on their own; the cross-check
    /// ([`package::check_packages`]) needs the declared resources and is the
    /// caller's.
    pub packages: Vec<package::PackageConfig>,
    /// Errors of monitor and package files that were left out.
    pub errors: Vec<ConfigError>,
}

impl MonitorConfig {
    /// Whether it runs the bundled `lan` plugin (`vigil_lan`, or a path to
    /// `libvigil_lan.so`).
    pub fn is_lan(&self) -> bool {
        match &self.kind {
            MonitorKind::Dylib { plugin, .. } => {
                let file = plugin.rsplit('/').next().unwrap_or(plugin);
                let stem = file.strip_suffix(".so").unwrap_or(file);
                stem.strip_prefix("lib").unwrap_or(stem) == "vigil_lan"
            }
            _ => false,
        }
    }
}

impl Config {
    pub fn monitor(&self, name: &str) -> Option<&MonitorConfig> {
        self.monitors.iter().find(|m| m.name == name)
    }
}

const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// DESIGN §8's default node liveness lease.
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);
/// Runs and halts one node carries out at once (DESIGN §7a).
const DEFAULT_MAX_PARALLEL_ACTIONS: usize = 32;

/// Loads `cluster.toml`, every `monitors.d/*.toml` and every
/// `packages.d/*.toml` below `dir`.
/// `Err` when `cluster.toml` itself is unusable.
pub fn load(dir: &Path) -> Result<Config, Vec<ConfigError>> {
    let mut cluster = load_cluster(dir)?;
    // cluster.toml's own (hook) errors first, as `vigil check` prints them.
    let mut errors = std::mem::take(&mut cluster.hook_errors);
    let (mut monitors, mut monitor_errors) = load_monitors(&dir.join("monitors.d"));
    errors.append(&mut monitor_errors);
    let (packages, mut package_errors) = package::load_packages(&dir.join("packages.d"), &cluster);
    errors.append(&mut package_errors);
    // The monitors of packages' OCF agents (package parts).
    monitors.extend(package::agent_monitors(&packages, &cluster.paths.records()));
    add_package_subnets(&mut monitors, &packages);
    Ok(Config {
        cluster,
        monitors,
        packages,
        errors,
    })
}

/// Adds the subnets of packages' `[[ip]]` addresses to `params.subnets` of
/// every `lan` monitor, which then publishes `/net/subnets/<subnet>/status`
/// for them (the requirement each address implies).
pub fn add_package_subnets(monitors: &mut [MonitorConfig], packages: &[package::PackageConfig]) {
    let subnets = package::package_subnets(packages);
    if subnets.is_empty() {
        return;
    }
    for m in monitors.iter_mut().filter(|m| m.is_lan()) {
        if m.params.is_null() {
            m.params = serde_json::json!({});
        }
        let Some(params) = m.params.as_object_mut() else {
            // The monitor refuses params that are not a table itself.
            continue;
        };
        let list = params
            .entry("subnets")
            .or_insert_with(|| serde_json::json!([]));
        if let Some(list) = list.as_array_mut() {
            for s in &subnets {
                if !list.iter().any(|v| v.as_str() == Some(s)) {
                    list.push(serde_json::Value::String(s.clone()));
                }
            }
        }
    }
}

pub fn load_cluster(dir: &Path) -> Result<ClusterConfig, Vec<ConfigError>> {
    let path = dir.join("cluster.toml");
    let file = SourceFile::read(&path).map_err(|e| vec![e])?;
    load_cluster_text(dir, &file)
}

/// Validates the text of `dir`'s `cluster.toml` (read by the caller).
pub fn load_cluster_text(dir: &Path, file: &SourceFile) -> Result<ClusterConfig, Vec<ConfigError>> {
    let raw: RawClusterFile = file.parse().map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let cluster = raw.cluster.into_inner();

    let name = cluster.name.get_ref().trim().to_owned();
    if name.is_empty() {
        errors.push(file.error_at(cluster.name.span(), "cluster.name must not be empty"));
    }
    let mut nodes = Vec::new();
    if cluster.nodes.get_ref().is_empty() {
        errors.push(file.error_at(
            cluster.nodes.span(),
            "cluster.nodes must list at least one node",
        ));
    }
    for node in cluster.nodes.get_ref() {
        let n = node.get_ref();
        if !valid_node_name(n) {
            errors.push(file.error_at(
                node.span(),
                format!("node name {n:?} must be 1-63 characters of [A-Za-z0-9._-]"),
            ));
        } else if nodes.contains(n) {
            errors.push(file.error_at(node.span(), format!("node {n:?} is listed twice")));
        } else {
            nodes.push(n.clone());
        }
    }
    let plugin_path = cluster
        .plugin_path
        .iter()
        .map(|p| dir.join(p.get_ref()))
        .collect();
    let fail_fast_action = match cluster.fail_fast_action.as_ref() {
        None => FailFastAction::HaltNode,
        Some(a) => match a.get_ref().as_str() {
            "halt_node" => FailFastAction::HaltNode,
            "reboot" => FailFastAction::Reboot,
            other => {
                errors.push(file.error_at(
                    a.span(),
                    format!(
                        "cluster.fail_fast_action {other:?} is not one of \"halt_node\", \"reboot\""
                    ),
                ));
                FailFastAction::HaltNode
            }
        },
    };

    let paths = resolve_paths(dir, file, raw.paths.as_ref(), &mut errors);
    let log_format = match raw.logging.as_ref().and_then(|l| l.format.as_ref()) {
        None => LogFormat::Text,
        Some(f) => match f.get_ref().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                errors.push(file.error_at(
                    f.span(),
                    format!("logging.format {other:?} is not one of \"text\", \"json\""),
                ));
                LogFormat::Text
            }
        },
    };

    let mut lease_ttl = DEFAULT_LEASE_TTL;
    let mut max_parallel_actions = DEFAULT_MAX_PARALLEL_ACTIONS;
    let store = match raw.store {
        None => StoreConfig::Embedded {
            path: paths.store(),
        },
        Some(store) => {
            let span = store.span();
            let store = store.into_inner();
            let ttl = match store.lease_ttl_seconds {
                None => DEFAULT_LEASE_TTL,
                Some(s) => s
                    .get_ref()
                    .to_duration(LEASE_TTL_BOUNDS)
                    .unwrap_or_else(|e| {
                        errors
                            .push(file.error_at(s.span(), format!("store.lease_ttl_seconds {e}")));
                        DEFAULT_LEASE_TTL
                    }),
            };
            lease_ttl = ttl;
            if let Some(n) = &store.max_parallel_actions {
                match usize::try_from(*n.get_ref()) {
                    Ok(n @ 1..=10_000) => max_parallel_actions = n,
                    _ => errors.push(file.error_at(
                        n.span(),
                        format!(
                            "store.max_parallel_actions must be from 1 to 10000, got {}",
                            n.get_ref()
                        ),
                    )),
                }
            }
            match store.kind.get_ref().as_str() {
                "embedded" => {
                    if let Some(p) = store.path.as_ref().filter(|p| p.get_ref().is_empty()) {
                        errors.push(file.error_at(p.span(), "store.path must not be empty"));
                    }
                    StoreConfig::Embedded {
                        path: store
                            .path
                            .as_ref()
                            .map_or_else(|| paths.store(), |p| dir.join(p.get_ref())),
                    }
                }
                "etcd" => {
                    if store.endpoints.is_empty() {
                        errors.push(
                            file.error_at(span, "store.type = \"etcd\" needs store.endpoints"),
                        );
                    }
                    for e in &store.endpoints {
                        if let Some(problem) = endpoint_problem(e.get_ref()) {
                            errors.push(file.error_at(
                                e.span(),
                                format!(
                                    "store.endpoints: {:?} is not an etcd endpoint such as \"http://127.0.0.1:2379\": {problem}",
                                    e.get_ref()
                                ),
                            ));
                        }
                    }
                    StoreConfig::Etcd {
                        endpoints: store
                            .endpoints
                            .iter()
                            .map(|e| e.get_ref().clone())
                            .collect(),
                        lease_ttl: ttl,
                    }
                }
                other => {
                    errors.push(file.error_at(
                        store.kind.span(),
                        format!("store.type {other:?} is not one of \"embedded\", \"etcd\""),
                    ));
                    StoreConfig::Embedded {
                        path: paths.store(),
                    }
                }
            }
        }
    };

    let api = raw.api.unwrap_or(RawApi {
        socket: None,
        http_listen: None,
    });
    let socket = match &api.socket {
        None => paths.api_socket(),
        Some(s) => {
            let path = dir.join(s.get_ref());
            if s.get_ref().is_empty() {
                errors.push(file.error_at(s.span(), "api.socket must not be empty"));
            } else if let Some(problem) = crate::api::socket_path_problem(&path) {
                errors.push(file.error_at(s.span(), format!("api.socket: {problem}")));
            }
            path
        }
    };
    if let Some(h) = &api.http_listen
        && http_listen_addr(h.get_ref()).is_none()
    {
        errors.push(file.error_at(
            h.span(),
            format!(
                "api.http_listen {:?} is not a port (\"7878\", on loopback) or an IP address and port such as \"127.0.0.1:7878\"",
                h.get_ref()
            ),
        ));
    }
    let api = ApiConfig {
        socket,
        http_listen: api
            .http_listen
            .map(|h| http_listen_addr(h.get_ref()).map_or(h.into_inner(), |a| a.to_string())),
    };

    let (hooks, hook_errors) = load_hooks(dir, file, &raw.hook);

    // Keys are checked table by table; report them in file order.
    errors.sort_by_key(|e| e.line);
    if errors.is_empty() {
        Ok(ClusterConfig {
            dir: dir.to_owned(),
            name,
            nodes,
            plugin_path,
            store,
            lease_ttl,
            max_parallel_actions,
            api,
            paths,
            log_format,
            hooks,
            hook_errors,
            fail_fast_action,
        })
    } else {
        Err(errors)
    }
}

/// Validates the `[[hook]]`s: each with an error is left out, with every
/// error it has. Whether the program is executable is checked by
/// [`crate::validation`], beside the package programs.
fn load_hooks(
    dir: &Path,
    file: &SourceFile,
    raw: &[RawHook],
) -> (Vec<HookConfig>, Vec<ConfigError>) {
    let mut hooks: Vec<HookConfig> = Vec::new();
    let mut errors = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for h in raw {
        let mut bad = Vec::new();
        let name = h.name.get_ref().trim().to_owned();
        let line = file.line_of(h.name.span().start);
        if name.is_empty() {
            bad.push(file.error_at(h.name.span(), "hook.name must not be empty"));
        } else if let Some(first) = seen.get(&name) {
            bad.push(file.error_at(
                h.name.span(),
                format!("hook name {name:?} is already used on line {first}"),
            ));
        } else {
            seen.insert(name.clone(), line);
        }
        let what = format!("hook {name}");
        let mut command = h.command.get_ref().clone();
        match command.first_mut() {
            None => bad.push(file.error_at(
                h.command.span(),
                format!("{what}: command must name a program"),
            )),
            Some(program) if program.trim().is_empty() => bad.push(file.error_at(
                h.command.span(),
                format!("{what}: command must name a program, not \"\""),
            )),
            Some(program) => {
                if program.contains('/') && !Path::new(program).is_absolute() {
                    *program = dir.join(&*program).display().to_string();
                }
            }
        }
        let events = match &h.events {
            None => crate::views::EventKind::ALL.to_vec(),
            Some(list) => {
                if list.get_ref().is_empty() {
                    bad.push(file.error_at(
                        list.span(),
                        format!("{what}: events is empty, so it would never run; leave it out for every event"),
                    ));
                }
                let mut kinds = Vec::new();
                for e in list.get_ref() {
                    match crate::views::EventKind::from_name(e.get_ref()) {
                        Some(k) if !kinds.contains(&k) => kinds.push(k),
                        Some(_) => {}
                        None => bad.push(file.error_at(
                            e.span(),
                            format!(
                                "{what}: event kind {:?} is not one of {}",
                                e.get_ref(),
                                crate::views::EventKind::ALL
                                    .map(|k| format!("\"{k}\""))
                                    .join(", ")
                            ),
                        )),
                    }
                }
                kinds
            }
        };
        let timeout = match &h.timeout_seconds {
            None => DEFAULT_HOOK_TIMEOUT,
            Some(t) => t.get_ref().to_duration(SECONDS_BOUNDS).unwrap_or_else(|e| {
                bad.push(file.error_at(t.span(), format!("{what}: timeout_seconds {e}")));
                DEFAULT_HOOK_TIMEOUT
            }),
        };
        let retries = match &h.retries {
            None => 0,
            Some(r) => match u32::try_from(*r.get_ref()) {
                Ok(n) if n <= MAX_HOOK_RETRIES => n,
                _ => {
                    bad.push(file.error_at(
                        r.span(),
                        format!(
                            "{what}: retries must be from 0 to {MAX_HOOK_RETRIES}, got {}",
                            r.get_ref()
                        ),
                    ));
                    0
                }
            },
        };
        let queue_length = match &h.queue_length {
            None => DEFAULT_HOOK_QUEUE,
            Some(q) => match usize::try_from(*q.get_ref()) {
                Ok(n @ 1..=MAX_HOOK_QUEUE) => n,
                _ => {
                    bad.push(file.error_at(
                        q.span(),
                        format!(
                            "{what}: queue_length must be from 1 to {MAX_HOOK_QUEUE}, got {}",
                            q.get_ref()
                        ),
                    ));
                    DEFAULT_HOOK_QUEUE
                }
            },
        };
        if bad.is_empty() {
            hooks.push(HookConfig {
                name,
                command,
                events,
                timeout,
                retries,
                queue_length,
                source: file.path.clone(),
                line,
            });
        } else {
            errors.append(&mut bad);
        }
    }
    (hooks, errors)
}

/// `[paths]` resolved against `dir`, the Linux layout for what is not set.
/// A path that exists must be a directory (the host creates missing ones),
/// and `run_dir` must leave room for the sockets in it.
fn resolve_paths(
    dir: &Path,
    file: &SourceFile,
    raw: Option<&RawPaths>,
    errors: &mut Vec<ConfigError>,
) -> Paths {
    let defaults = Paths::linux();
    let mut one = |key: &str, value: Option<&Spanned<String>>, default: PathBuf| {
        let Some(value) = value else {
            return default;
        };
        let text = value.get_ref();
        if text.is_empty() {
            errors.push(file.error_at(value.span(), format!("paths.{key} must not be empty")));
            return default;
        }
        let path = dir.join(text);
        match std::fs::metadata(&path) {
            Ok(meta) if !meta.is_dir() => errors.push(file.error_at(
                value.span(),
                format!(
                    "paths.{key}: {} exists and is not a directory",
                    path.display()
                ),
            )),
            _ => {}
        }
        if key == "run_dir"
            && let Some(problem) = crate::api::socket_path_problem(&path.join(crate::guard::SOCKET))
        {
            errors.push(file.error_at(value.span(), format!("paths.run_dir: {problem}")));
        }
        path
    };
    Paths {
        state_dir: one(
            "state_dir",
            raw.and_then(|r| r.state_dir.as_ref()),
            defaults.state_dir,
        ),
        run_dir: one(
            "run_dir",
            raw.and_then(|r| r.run_dir.as_ref()),
            defaults.run_dir,
        ),
        log_dir: one(
            "log_dir",
            raw.and_then(|r| r.log_dir.as_ref()),
            defaults.log_dir,
        ),
    }
}

fn valid_node_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Loads every `*.toml` in `dir`, sorted by file name. A missing directory
/// means no monitors.
pub fn load_monitors(dir: &Path) -> (Vec<MonitorConfig>, Vec<ConfigError>) {
    let mut monitors: Vec<MonitorConfig> = Vec::new();
    let mut errors = Vec::new();
    let mut paths = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            errors.push(ConfigError::file(
                dir,
                format!("cannot read directory: {e}"),
            ));
            Vec::new()
        }
    };
    paths.sort();
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for path in paths {
        match load_monitor_file(&path) {
            Ok(None) => {}
            Ok(Some((monitor, name_line))) => {
                if let Some(first) = seen.get(&monitor.name) {
                    errors.push(ConfigError::at(
                        &path,
                        name_line,
                        format!(
                            "monitor name {:?} is already used by {}",
                            monitor.name,
                            first.display()
                        ),
                    ));
                } else {
                    seen.insert(monitor.name.clone(), path.clone());
                    monitors.push(monitor);
                }
            }
            Err(mut errs) => errors.append(&mut errs),
        }
    }
    (monitors, errors)
}

/// Loads one monitor registration; `Ok(None)` when it says `enabled = false`.
/// Also returns the line of its `name`, for duplicate-name messages.
pub fn load_monitor_file(path: &Path) -> Result<Option<(MonitorConfig, usize)>, Vec<ConfigError>> {
    let file = SourceFile::read(path).map_err(|e| vec![e])?;
    load_monitor_text(&file)
}

/// Validates one monitor registration's text (read by the caller).
pub fn load_monitor_text(
    file: &SourceFile,
) -> Result<Option<(MonitorConfig, usize)>, Vec<ConfigError>> {
    let path = file.path.as_path();
    let raw: RawMonitor = file.parse().map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let name = raw.name.get_ref().clone();
    let name_line = file.line_of(raw.name.span().start);
    if vigil_sdk::ResourceName::new(format!("/x/{name}")).is_err() || name.contains('/') {
        errors.push(file.error_at(
            raw.name.span(),
            format!("monitor name {name:?} must be 1 segment of [A-Za-z0-9._:@+-]"),
        ));
    }
    let duration = |field: &Option<Spanned<Seconds>>,
                    key: &str,
                    default: Duration,
                    errors: &mut Vec<ConfigError>| {
        match field {
            None => default,
            Some(s) => s.get_ref().to_duration(SECONDS_BOUNDS).unwrap_or_else(|e| {
                errors.push(file.error_at(s.span(), format!("{key} {e}")));
                default
            }),
        }
    };
    let interval = duration(
        &raw.interval_seconds,
        "interval_seconds",
        DEFAULT_INTERVAL,
        &mut errors,
    );
    let timeout = duration(
        &raw.timeout_seconds,
        "timeout_seconds",
        DEFAULT_TIMEOUT,
        &mut errors,
    );

    let command = |errors: &mut Vec<ConfigError>| -> Vec<String> {
        match &raw.command {
            Some(c) if !c.get_ref().is_empty() && !c.get_ref()[0].is_empty() => c.get_ref().clone(),
            Some(c) => {
                errors.push(file.error_at(c.span(), "command must name a program"));
                Vec::new()
            }
            None => {
                errors.push(file.error_at(
                    raw.kind.span(),
                    format!(
                        "type = {:?} needs command = [\"program\", \"arg\", ...]",
                        raw.kind.get_ref()
                    ),
                ));
                Vec::new()
            }
        }
    };
    let refuse =
        |field: bool, key: &str, errors: &mut Vec<ConfigError>, span: std::ops::Range<usize>| {
            if field {
                errors.push(file.error_at(
                    span,
                    format!("{key} does not apply to type = {:?}", raw.kind.get_ref()),
                ));
            }
        };
    let kind = match raw.kind.get_ref().as_str() {
        "dylib" => {
            refuse(
                raw.command.is_some(),
                "command",
                &mut errors,
                span_of(&raw.command, &raw.kind),
            );
            refuse(
                raw.mode.is_some(),
                "mode",
                &mut errors,
                span_of(&raw.mode, &raw.kind),
            );
            let isolation = match raw.isolation.as_ref().map(|i| (i, i.get_ref().as_str())) {
                None | Some((_, "in_process")) => Isolation::InProcess,
                Some((_, "process")) => Isolation::Process,
                Some((i, other)) => {
                    errors.push(file.error_at(
                        i.span(),
                        format!("isolation {other:?} is not one of \"in_process\", \"process\""),
                    ));
                    Isolation::InProcess
                }
            };
            match &raw.plugin {
                Some(p) if !p.get_ref().trim().is_empty() => MonitorKind::Dylib {
                    plugin: p.get_ref().clone(),
                    isolation,
                },
                Some(p) => {
                    errors.push(file.error_at(p.span(), "plugin must not be empty"));
                    MonitorKind::Dylib {
                        plugin: String::new(),
                        isolation: Isolation::InProcess,
                    }
                }
                None => {
                    errors.push(file.error_at(
                        raw.kind.span(),
                        "type = \"dylib\" needs plugin = \"name or path\"",
                    ));
                    MonitorKind::Dylib {
                        plugin: String::new(),
                        isolation: Isolation::InProcess,
                    }
                }
            }
        }
        "exec" => {
            refuse(
                raw.plugin.is_some(),
                "plugin",
                &mut errors,
                span_of(&raw.plugin, &raw.kind),
            );
            refuse(
                raw.isolation.is_some(),
                "isolation",
                &mut errors,
                span_of(&raw.isolation, &raw.kind),
            );
            let mode = match &raw.mode {
                None => Mode::Oneshot,
                Some(m) => match m.get_ref().as_str() {
                    "oneshot" => Mode::Oneshot,
                    "stream" => Mode::Stream,
                    other => {
                        errors.push(file.error_at(
                            m.span(),
                            format!("mode {other:?} is not one of \"oneshot\", \"stream\""),
                        ));
                        Mode::Oneshot
                    }
                },
            };
            MonitorKind::Exec {
                command: command(&mut errors),
                mode,
            }
        }
        "nagios" => {
            refuse(
                raw.plugin.is_some(),
                "plugin",
                &mut errors,
                span_of(&raw.plugin, &raw.kind),
            );
            refuse(
                raw.isolation.is_some(),
                "isolation",
                &mut errors,
                span_of(&raw.isolation, &raw.kind),
            );
            refuse(
                raw.mode.is_some(),
                "mode",
                &mut errors,
                span_of(&raw.mode, &raw.kind),
            );
            MonitorKind::Nagios {
                command: command(&mut errors),
            }
        }
        other => {
            errors.push(file.error_at(
                raw.kind.span(),
                format!("type {other:?} is not one of \"dylib\", \"exec\", \"nagios\""),
            ));
            MonitorKind::Dylib {
                plugin: String::new(),
                isolation: Isolation::InProcess,
            }
        }
    };
    let params = match raw.params {
        None => serde_json::Value::Object(Default::default()),
        Some(table) => serde_json::to_value(table).unwrap_or_else(|e| {
            errors.push(ConfigError::file(
                path,
                format!("params cannot be converted to JSON: {e}"),
            ));
            serde_json::Value::Null
        }),
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    if raw.enabled == Some(false) {
        return Ok(None);
    }
    let line = raw
        .plugin
        .as_ref()
        .map(|p| file.line_of(p.span().start))
        .or_else(|| raw.command.as_ref().map(|c| file.line_of(c.span().start)))
        .unwrap_or(name_line);
    Ok(Some((
        MonitorConfig {
            name,
            kind,
            interval,
            timeout,
            params,
            source: path.to_owned(),
            line,
        },
        name_line,
    )))
}

fn span_of<T, U>(field: &Option<Spanned<T>>, fallback: &Spanned<U>) -> std::ops::Range<usize> {
    field.as_ref().map_or_else(|| fallback.span(), |f| f.span())
}

#[cfg(test)]
mod tests;
