//! Package configuration: `packages.d/*.toml` (DESIGN §5), loaded in the
//! same two phases as monitors — raw serde structs that refuse unknown keys,
//! then a validated [`PackageConfig`] — with every error at `file:line`.
//!
//! [`load_packages`] checks each file on its own (shapes, values, a package
//! naming itself, `follow` and `avoid` of the same package, keys that do not
//! apply to the package type) and drops a broken file, like a broken monitor.
//! [`check_packages`] then checks the packages against each other, the
//! cluster's nodes and the declared resources: unknown names, dependency and
//! follow cycles, contradictory combinations. Both only report; what to do
//! with a package that fails the cross-check is the caller's decision
//! (`vigil check` exits 1).
//!
//! Decisions: `run` and `halt` are required for every package type, as
//! Serviceguard requires a control script (`["/bin/true"]` is a fine halt
//! for a package that only has services). A relative program path with a `/`
//! is resolved against the config directory; a bare name is looked up in
//! `PATH` when run, as for monitors. `system_multi_node` packages run on
//! every node, so their `nodes` is `["*"]` or left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use vigil_sdk::ResourceName;

use super::{ClusterConfig, ConfigError, Seconds, SourceFile, valid_node_name};
use crate::criteria::Criteria;
use crate::package::parts::{AgentPart, Part, parse_agent_name};

// ---------------------------------------------------------------- raw phase

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackage {
    name: Spanned<String>,
    #[serde(rename = "type")]
    kind: Spanned<String>,
    #[serde(default)]
    nodes: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    failover_policy: Option<Spanned<String>>,
    #[serde(default)]
    failback_policy: Option<Spanned<String>>,
    #[serde(default)]
    auto_run: Option<bool>,
    #[serde(default)]
    node_fail_fast: Option<bool>,
    #[serde(default)]
    priority: Option<Spanned<i64>>,
    #[serde(default)]
    run: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    halt: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    run_timeout_seconds: Option<Spanned<Seconds>>,
    #[serde(default)]
    halt_timeout_seconds: Option<Spanned<Seconds>>,
    #[serde(default)]
    follow: Option<Spanned<String>>,
    #[serde(default)]
    avoid: Vec<Spanned<String>>,
    #[serde(default)]
    service: Vec<RawService>,
    #[serde(default)]
    resource: Vec<RawResource>,
    #[serde(default)]
    dependency: Vec<RawDependency>,
    #[serde(default)]
    volume_group: Vec<RawVolumeGroup>,
    #[serde(default)]
    filesystem: Vec<RawFilesystem>,
    #[serde(default)]
    ip: Vec<RawIp>,
    #[serde(default)]
    agent: Vec<RawAgent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolumeGroup {
    name: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilesystem {
    device: Spanned<String>,
    mount: Spanned<String>,
    #[serde(rename = "type")]
    fstype: Spanned<String>,
    #[serde(default)]
    options: Option<Spanned<String>>,
    #[serde(default)]
    fsck: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIp {
    address: Spanned<String>,
    #[serde(default)]
    interface: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: Spanned<String>,
    agent: Spanned<String>,
    #[serde(default)]
    params: Option<Spanned<BTreeMap<String, toml::Value>>>,
    #[serde(default)]
    monitor_interval_seconds: Option<Spanned<Seconds>>,
    #[serde(default)]
    start_timeout_seconds: Option<Spanned<Seconds>>,
    #[serde(default)]
    stop_timeout_seconds: Option<Spanned<Seconds>>,
    #[serde(default)]
    monitor_timeout_seconds: Option<Spanned<Seconds>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    command: Spanned<Vec<String>>,
    #[serde(default)]
    restarts: Option<Spanned<RawRestarts>>,
    #[serde(default)]
    fail_fast: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawRestarts {
    Count(i64),
    Word(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    name: Spanned<String>,
    #[serde(default)]
    up: Option<Spanned<OneOrMany>>,
    #[serde(default)]
    evaluate: Option<Spanned<String>>,
    #[serde(default)]
    rise: Option<Spanned<i64>>,
    #[serde(default)]
    fall: Option<Spanned<i64>>,
    #[serde(default)]
    unknown_timeout_seconds: Option<Spanned<Seconds>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDependency {
    package: Spanned<String>,
    #[serde(default)]
    condition: Option<Spanned<String>>,
    #[serde(default)]
    location: Option<Spanned<String>>,
}

// ---------------------------------------------------------- validated model

// The vocabulary shared with the placement engine is defined once, there.
pub use crate::placement::{
    DependencyCondition, DependencyLocation, Evaluate, FailbackPolicy, FailoverPolicy, PackageKind,
};

/// How often a service is restarted before the package fails on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restarts {
    Limited(u32),
    Unlimited,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    /// argv; a relative program path is already resolved.
    pub command: Vec<String>,
    pub restarts: Restarts,
    /// Fail the package as soon as the service exits, without restarts.
    pub fail_fast: bool,
    pub line: usize,
}

/// A `[[resource]]` the package needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceRequirement {
    pub name: ResourceName,
    pub up: Criteria,
    pub evaluate: Evaluate,
    pub rise: u32,
    pub fall: u32,
    /// How long the resource may stay unknown before a package running on
    /// it is halted (0: at once). A pending resource never halts it.
    pub unknown_timeout: Duration,
    /// Line of `name` (of the part, for an implied requirement).
    pub line: usize,
    /// Set when the package did not write it: the part that implies it
    /// (`ip 192.0.2.50/24` needs its subnet up, an agent its monitor).
    pub implied_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DependencyConfig {
    pub package: String,
    pub condition: DependencyCondition,
    pub location: DependencyLocation,
    /// Line of `package`.
    pub line: usize,
}

/// A `[[volume_group]]`, `[[filesystem]]`, `[[ip]]` or `[[agent]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PartConfig {
    pub part: Part,
    /// Line of its first key (`name`, `device`, `address`).
    pub line: usize,
}

/// Lines of keys that the cross-check may complain about.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PackageLines {
    pub name: usize,
    /// One per entry of [`PackageConfig::nodes`].
    pub nodes: Vec<usize>,
    pub failover_policy: Option<usize>,
    pub follow: Option<usize>,
    /// One per entry of [`PackageConfig::avoid`].
    pub avoid: Vec<usize>,
}

/// One validated package.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageConfig {
    pub name: String,
    pub kind: PackageKind,
    /// In priority order; `["*"]` is resolved to the cluster's nodes.
    pub nodes: Vec<String>,
    /// True when written as `["*"]`.
    pub all_nodes: bool,
    pub failover_policy: FailoverPolicy,
    pub failback_policy: FailbackPolicy,
    pub auto_run: bool,
    /// `node_fail_fast = true`: a failure of the package (a service out of
    /// restarts, a failed `run`) halts the node at once (DESIGN §5).
    pub node_fail_fast: bool,
    /// Lower number = more important; `None` = least important.
    pub priority: Option<u32>,
    /// argv of the control scripts; a relative program path is resolved.
    pub run: Vec<String>,
    pub halt: Vec<String>,
    pub run_timeout: Duration,
    pub halt_timeout: Duration,
    pub follow: Option<String>,
    pub avoid: Vec<String>,
    pub services: Vec<ServiceConfig>,
    pub resources: Vec<ResourceRequirement>,
    pub dependencies: Vec<DependencyConfig>,
    /// Volume groups, file systems, addresses and agents, in file order
    /// within each kind (the start order is [`crate::package::parts::start_order`]).
    pub parts: Vec<PartConfig>,
    /// The file it came from, for messages.
    pub source: PathBuf,
    pub lines: PackageLines,
}

pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a required resource may stay unknown before a running package
/// is halted for it (DESIGN §3).
pub const DEFAULT_UNKNOWN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_HALT_TIMEOUT: Duration = Duration::from_secs(60);

/// Loads every `*.toml` in `dir` (normally `<config>/packages.d`), sorted by
/// file name. A missing directory means no packages. A file with errors is
/// left out; a second package with a name already taken is left out too.
pub fn load_packages(
    dir: &Path,
    cluster: &ClusterConfig,
) -> (Vec<PackageConfig>, Vec<ConfigError>) {
    let mut packages: Vec<PackageConfig> = Vec::new();
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
    for path in paths {
        let loaded = SourceFile::read(&path)
            .map_err(|e| vec![e])
            .and_then(|file| load_package_text(&file, cluster));
        match loaded {
            Ok(package) => {
                if let Some(first) = packages.iter().find(|p| p.name == package.name) {
                    errors.push(ConfigError::at(
                        &path,
                        package.lines.name,
                        format!(
                            "package name {:?} is already used by {}",
                            package.name,
                            first.source.display()
                        ),
                    ));
                } else {
                    packages.push(package);
                }
            }
            Err(mut errs) => errors.append(&mut errs),
        }
    }
    (packages, errors)
}

/// Validates one package file's text on its own.
pub fn load_package_text(
    file: &SourceFile,
    cluster: &ClusterConfig,
) -> Result<PackageConfig, Vec<ConfigError>> {
    let raw: RawPackage = file.parse().map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let err = |errors: &mut Vec<ConfigError>, span: std::ops::Range<usize>, msg: String| {
        errors.push(file.error_at(span, msg));
    };
    let line = |span: std::ops::Range<usize>| file.line_of(span.start);

    let name = raw.name.get_ref().clone();
    if !valid_node_name(&name) {
        err(
            &mut errors,
            raw.name.span(),
            format!("package name {name:?} must be 1-63 characters of [A-Za-z0-9._-]"),
        );
    }

    let kind = match raw.kind.get_ref().as_str() {
        "failover" => PackageKind::Failover,
        "multi_node" => PackageKind::MultiNode,
        "system_multi_node" => PackageKind::SystemMultiNode,
        other => {
            err(
                &mut errors,
                raw.kind.span(),
                format!(
                    "type {other:?} is not one of \"failover\", \"multi_node\", \"system_multi_node\""
                ),
            );
            PackageKind::Failover
        }
    };

    // Nodes.
    let mut lines = PackageLines {
        name: line(raw.name.span()),
        ..PackageLines::default()
    };
    let mut nodes = Vec::new();
    let mut all_nodes = false;
    match &raw.nodes {
        None if kind == PackageKind::SystemMultiNode => {
            all_nodes = true;
            nodes = cluster.nodes.clone();
            lines.nodes = vec![lines.name; nodes.len()];
        }
        None => err(
            &mut errors,
            raw.kind.span(),
            "nodes is missing: list the nodes in priority order, or [\"*\"] for every node"
                .to_owned(),
        ),
        Some(list) if list.get_ref().is_empty() => err(
            &mut errors,
            list.span(),
            "nodes must list at least one node, or [\"*\"] for every node".to_owned(),
        ),
        Some(list) if list.get_ref().iter().any(|n| n.get_ref() == "*") => {
            if list.get_ref().len() > 1 {
                err(
                    &mut errors,
                    list.span(),
                    "nodes = [\"*\"] means every node and cannot be combined with names".to_owned(),
                );
            }
            all_nodes = true;
            nodes = cluster.nodes.clone();
            lines.nodes = vec![line(list.span()); nodes.len()];
        }
        Some(list) => {
            if kind == PackageKind::SystemMultiNode {
                err(
                    &mut errors,
                    list.span(),
                    "a system_multi_node package runs on every node: nodes must be [\"*\"] or left out"
                        .to_owned(),
                );
            }
            for node in list.get_ref() {
                let n = node.get_ref();
                if !valid_node_name(n) {
                    err(
                        &mut errors,
                        node.span(),
                        format!("node name {n:?} must be 1-63 characters of [A-Za-z0-9._-]"),
                    );
                } else if nodes.contains(n) {
                    err(
                        &mut errors,
                        node.span(),
                        format!("node {n:?} is listed twice"),
                    );
                } else {
                    nodes.push(n.clone());
                    lines.nodes.push(line(node.span()));
                }
            }
        }
    }

    // Policies: only a failover package moves between nodes.
    let moves = kind == PackageKind::Failover;
    let failover_policy = match &raw.failover_policy {
        None => FailoverPolicy::ConfiguredNode,
        Some(p) => {
            lines.failover_policy = Some(line(p.span()));
            if !moves {
                err(
                    &mut errors,
                    p.span(),
                    format!(
                        "failover_policy does not apply to type = {:?}: it runs on every eligible node",
                        kind.as_str()
                    ),
                );
            }
            match p.get_ref().as_str() {
                "configured_node" => FailoverPolicy::ConfiguredNode,
                "min_package_node" => FailoverPolicy::MinPackageNode,
                other => {
                    err(
                        &mut errors,
                        p.span(),
                        format!(
                            "failover_policy {other:?} is not one of \"configured_node\", \"min_package_node\""
                        ),
                    );
                    FailoverPolicy::ConfiguredNode
                }
            }
        }
    };
    let failback_policy = match &raw.failback_policy {
        None => FailbackPolicy::Manual,
        Some(p) => {
            if !moves {
                err(
                    &mut errors,
                    p.span(),
                    format!(
                        "failback_policy does not apply to type = {:?}: it runs on every eligible node",
                        kind.as_str()
                    ),
                );
            }
            match p.get_ref().as_str() {
                "manual" => FailbackPolicy::Manual,
                "automatic" => FailbackPolicy::Automatic,
                other => {
                    err(
                        &mut errors,
                        p.span(),
                        format!(
                            "failback_policy {other:?} is not one of \"manual\", \"automatic\""
                        ),
                    );
                    FailbackPolicy::Manual
                }
            }
        }
    };

    let priority = raw.priority.as_ref().and_then(|p| {
        u32::try_from(*p.get_ref()).ok().or_else(|| {
            err(
                &mut errors,
                p.span(),
                format!("priority must be 0 or more, got {}", p.get_ref()),
            );
            None
        })
    });

    // Control scripts.
    let mut script = |field: &Option<Spanned<Vec<String>>>, key: &str| -> Vec<String> {
        match field {
            Some(argv) if argv.get_ref().first().is_some_and(|p| !p.is_empty()) => {
                resolve_program(argv.get_ref().clone(), &cluster.dir)
            }
            Some(argv) => {
                err(
                    &mut errors,
                    argv.span(),
                    format!("{key} must name a program"),
                );
                Vec::new()
            }
            None => {
                err(
                    &mut errors,
                    raw.name.span(),
                    format!(
                        "{key} is missing: every package needs a {key} control script, e.g. {key} = [\"pkg/{name}/{key}.sh\"]"
                    ),
                );
                Vec::new()
            }
        }
    };
    let run = script(&raw.run, "run");
    let halt = script(&raw.halt, "halt");
    let mut timeout = |field: &Option<Spanned<Seconds>>, key: &str, default: Duration| match field {
        None => default,
        Some(s) => s
            .get_ref()
            .to_duration(super::SECONDS_BOUNDS)
            .unwrap_or_else(|e| {
                err(&mut errors, s.span(), format!("{key} {e}"));
                default
            }),
    };
    let run_timeout = timeout(
        &raw.run_timeout_seconds,
        "run_timeout_seconds",
        DEFAULT_RUN_TIMEOUT,
    );
    let halt_timeout = timeout(
        &raw.halt_timeout_seconds,
        "halt_timeout_seconds",
        DEFAULT_HALT_TIMEOUT,
    );

    // follow / avoid.
    let follow = raw.follow.as_ref().map(|f| {
        lines.follow = Some(line(f.span()));
        if !moves {
            err(
                &mut errors,
                f.span(),
                format!(
                    "follow does not apply to type = {:?}: it runs on every eligible node",
                    kind.as_str()
                ),
            );
        }
        if f.get_ref() == &name {
            err(
                &mut errors,
                f.span(),
                format!("package {name:?} cannot follow itself"),
            );
        }
        f.get_ref().clone()
    });
    let mut avoid: Vec<String> = Vec::new();
    for a in &raw.avoid {
        let other = a.get_ref();
        if other == &name {
            err(
                &mut errors,
                a.span(),
                format!("package {name:?} cannot avoid itself"),
            );
        } else if avoid.contains(other) {
            err(
                &mut errors,
                a.span(),
                format!("avoid lists {other:?} twice"),
            );
        } else if follow.as_ref() == Some(other) {
            err(
                &mut errors,
                a.span(),
                format!(
                    "package {name:?} both follows and avoids {other:?}: it cannot prefer and refuse the same node"
                ),
            );
        } else {
            avoid.push(other.clone());
            lines.avoid.push(line(a.span()));
        }
    }

    // Services.
    let mut services: Vec<ServiceConfig> = Vec::new();
    for s in &raw.service {
        let sname = s.name.get_ref().clone();
        if !valid_node_name(&sname) {
            err(
                &mut errors,
                s.name.span(),
                format!("service name {sname:?} must be 1-63 characters of [A-Za-z0-9._-]"),
            );
        } else if services.iter().any(|o| o.name == sname) {
            err(
                &mut errors,
                s.name.span(),
                format!("service {sname:?} is defined twice"),
            );
        }
        let command = if s.command.get_ref().first().is_some_and(|p| !p.is_empty()) {
            resolve_program(s.command.get_ref().clone(), &cluster.dir)
        } else {
            err(
                &mut errors,
                s.command.span(),
                format!("service {sname:?}: command must name a program"),
            );
            Vec::new()
        };
        let restarts = match s.restarts.as_ref() {
            None => Restarts::Limited(0),
            Some(r) => match r.get_ref() {
                RawRestarts::Count(n) => match u32::try_from(*n) {
                    Ok(n) => Restarts::Limited(n),
                    Err(_) => {
                        err(
                            &mut errors,
                            r.span(),
                            format!("restarts must be 0 or more, or \"unlimited\", got {n}"),
                        );
                        Restarts::Limited(0)
                    }
                },
                RawRestarts::Word(w) if w == "unlimited" => Restarts::Unlimited,
                RawRestarts::Word(w) => {
                    err(
                        &mut errors,
                        r.span(),
                        format!("restarts must be 0 or more, or \"unlimited\", got {w:?}"),
                    );
                    Restarts::Limited(0)
                }
            },
        };
        services.push(ServiceConfig {
            name: sname,
            command,
            restarts,
            fail_fast: s.fail_fast.unwrap_or(false),
            line: line(s.name.span()),
        });
    }

    // Resources.
    let mut resources: Vec<ResourceRequirement> = Vec::new();
    for r in &raw.resource {
        let rname = match ResourceName::new(r.name.get_ref().clone()) {
            Ok(n) => n,
            Err(e) => {
                err(
                    &mut errors,
                    r.name.span(),
                    format!("resource name {:?}: {e}", r.name.get_ref()),
                );
                continue;
            }
        };
        if resources.iter().any(|o| o.name == rname) {
            err(
                &mut errors,
                r.name.span(),
                format!("resource {rname} is listed twice"),
            );
        }
        let up = match &r.up {
            None => Criteria::default(),
            Some(up) => {
                let parsed = match up.get_ref() {
                    OneOrMany::One(e) => Criteria::parse(e),
                    OneOrMany::Many(list) => Criteria::parse_any(list),
                };
                parsed.unwrap_or_else(|e| {
                    err(&mut errors, up.span(), format!("resource {rname}: up {e}"));
                    Criteria::default()
                })
            }
        };
        let evaluate = match &r.evaluate {
            None => Evaluate::BeforeStart,
            Some(e) => match e.get_ref().as_str() {
                "before_start" => Evaluate::BeforeStart,
                "after_start" => Evaluate::AfterStart,
                other => {
                    err(
                        &mut errors,
                        e.span(),
                        format!(
                            "evaluate {other:?} is not one of \"before_start\", \"after_start\""
                        ),
                    );
                    Evaluate::BeforeStart
                }
            },
        };
        let mut count = |field: &Option<Spanned<i64>>, key: &str| match field {
            None => 1,
            Some(c) => match u32::try_from(*c.get_ref()) {
                Ok(n) if n >= 1 => n,
                _ => {
                    err(
                        &mut errors,
                        c.span(),
                        format!("{key} must be 1 or more samples, got {}", c.get_ref()),
                    );
                    1
                }
            },
        };
        let rise = count(&r.rise, "rise");
        let fall = count(&r.fall, "fall");
        // 0 is allowed: halt at once on unknown.
        let unknown_timeout = match &r.unknown_timeout_seconds {
            None => DEFAULT_UNKNOWN_TIMEOUT,
            Some(s) => s
                .get_ref()
                .to_duration((0.0, 86_400.0))
                .unwrap_or_else(|e| {
                    err(
                        &mut errors,
                        s.span(),
                        format!("unknown_timeout_seconds {e}"),
                    );
                    DEFAULT_UNKNOWN_TIMEOUT
                }),
        };
        resources.push(ResourceRequirement {
            name: rname,
            up,
            evaluate,
            rise,
            fall,
            unknown_timeout,
            line: line(r.name.span()),
            implied_by: None,
        });
    }

    // Dependencies.
    let mut dependencies: Vec<DependencyConfig> = Vec::new();
    for d in &raw.dependency {
        let other = d.package.get_ref().clone();
        if other == name {
            err(
                &mut errors,
                d.package.span(),
                format!("package {name:?} cannot depend on itself"),
            );
        } else if dependencies.iter().any(|o| o.package == other) {
            err(
                &mut errors,
                d.package.span(),
                format!("dependency on {other:?} is listed twice"),
            );
        }
        let condition = match &d.condition {
            None => DependencyCondition::Up,
            Some(c) => match c.get_ref().as_str() {
                "up" => DependencyCondition::Up,
                "down" => DependencyCondition::Down,
                o => {
                    err(
                        &mut errors,
                        c.span(),
                        format!("condition {o:?} is not one of \"up\", \"down\""),
                    );
                    DependencyCondition::Up
                }
            },
        };
        let location = match &d.location {
            None => DependencyLocation::SameNode,
            Some(l) => match l.get_ref().as_str() {
                "same_node" => DependencyLocation::SameNode,
                "different_node" => DependencyLocation::DifferentNode,
                "any_node" => DependencyLocation::AnyNode,
                "all_nodes" => DependencyLocation::AllNodes,
                o => {
                    err(
                        &mut errors,
                        l.span(),
                        format!(
                            "location {o:?} is not one of \"same_node\", \"different_node\", \"any_node\", \"all_nodes\""
                        ),
                    );
                    DependencyLocation::SameNode
                }
            },
        };
        dependencies.push(DependencyConfig {
            package: other,
            condition,
            location,
            line: line(d.package.span()),
        });
    }

    let parts = load_parts(&raw, file, &mut errors);
    // An agent with a monitor interval is a requirement of the package,
    // judged after the start like any deferred resource: its monitor says
    // `stopped` where the package does not run.
    for part in &parts {
        if let Part::Agent(agent) = &part.part
            && agent.monitor_interval_ms.is_some()
        {
            let resource = crate::package::parts::ocf::status_resource(&name, &agent.name);
            match (
                ResourceName::new(resource.clone()),
                Criteria::parse_any(&[
                    format!("== {}", crate::package::parts::ocf::UP),
                    format!("== {}", crate::package::parts::ocf::STOPPED),
                ]),
            ) {
                (Ok(rname), Ok(up)) if !resources.iter().any(|r| r.name == rname) => {
                    resources.push(ResourceRequirement {
                        name: rname,
                        up,
                        evaluate: Evaluate::AfterStart,
                        rise: 1,
                        fall: 1,
                        unknown_timeout: DEFAULT_UNKNOWN_TIMEOUT,
                        line: part.line,
                        implied_by: Some(part.part.to_string()),
                    });
                }
                (Ok(_), Ok(_)) => {}
                (Err(e), _) => errors.push(ConfigError::at(
                    &file.path,
                    part.line,
                    format!("agent {}: resource {resource}: {e}", agent.name),
                )),
                (_, Err(e)) => errors.push(ConfigError::at(
                    &file.path,
                    part.line,
                    format!("agent {}: {e}", agent.name),
                )),
            }
        }
    }

    // An address needs its subnet up on a node to be eligible there
    // (Serviceguard's SUBNET): implied, judged like a written requirement
    // that gates the start; the lan monitor publishes it (the host lists
    // the packages' subnets in its params).
    for part in &parts {
        let Part::Ip {
            address, prefix, ..
        } = &part.part
        else {
            continue;
        };
        let resource = subnet_resource(*address, *prefix);
        let Ok(rname) = ResourceName::new(resource.clone()) else {
            errors.push(ConfigError::at(
                &file.path,
                part.line,
                format!(
                    "{}: subnet resource {resource} is not a valid name",
                    part.part
                ),
            ));
            continue;
        };
        if resources.iter().any(|r| r.name == rname) {
            continue;
        }
        resources.push(ResourceRequirement {
            name: rname,
            up: Criteria::parse("== up").expect("a valid criterion"),
            evaluate: Evaluate::BeforeStart,
            rise: 1,
            fall: 2,
            unknown_timeout: DEFAULT_UNKNOWN_TIMEOUT,
            line: part.line,
            implied_by: Some(part.part.to_string()),
        });
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(PackageConfig {
        name,
        kind,
        nodes,
        all_nodes,
        failover_policy,
        failback_policy,
        auto_run: raw.auto_run.unwrap_or(true),
        node_fail_fast: raw.node_fail_fast.unwrap_or(false),
        priority,
        run,
        halt,
        run_timeout,
        halt_timeout,
        follow,
        avoid,
        services,
        resources,
        dependencies,
        parts,
        source: file.path.clone(),
        lines,
    })
}

/// The parts of a package file, checked on their own: shapes of names,
/// addresses, absolute mount points, the same part twice.
fn load_parts(
    raw: &RawPackage,
    file: &SourceFile,
    errors: &mut Vec<ConfigError>,
) -> Vec<PartConfig> {
    let mut parts: Vec<PartConfig> = Vec::new();
    let mut err = |span: std::ops::Range<usize>, msg: String| errors.push(file.error_at(span, msg));
    let line = |span: std::ops::Range<usize>| file.line_of(span.start);
    let push = |parts: &mut Vec<PartConfig>,
                part: Part,
                span: std::ops::Range<usize>,
                err: &mut dyn FnMut(std::ops::Range<usize>, String)| {
        if let Some(first) = parts.iter().find(|p| p.part.same_part(&part)) {
            err(
                span,
                format!("{part} is already listed at line {}", first.line),
            );
        } else {
            parts.push(PartConfig {
                part,
                line: line(span),
            });
        }
    };

    for v in &raw.volume_group {
        let name = v.name.get_ref();
        let valid = !name.is_empty()
            && !name.starts_with('-')
            && name.len() <= 127
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'));
        if !valid {
            err(
                v.name.span(),
                format!(
                    "volume group name {name:?} must be 1-127 characters of [A-Za-z0-9._+-], not starting with -"
                ),
            );
            continue;
        }
        push(
            &mut parts,
            Part::VolumeGroup { name: name.clone() },
            v.name.span(),
            &mut err,
        );
    }

    for f in &raw.filesystem {
        let device = f.device.get_ref();
        let device_ok =
            device.starts_with('/') || device.starts_with("UUID=") || device.starts_with("LABEL=");
        if !device_ok {
            err(
                f.device.span(),
                format!("device {device:?} must be an absolute path, UUID=... or LABEL=..."),
            );
        }
        let mount = f.mount.get_ref();
        let mount_ok = mount.starts_with('/')
            && mount != "/"
            && !mount.split('/').any(|c| c == ".." || c == ".");
        if !mount_ok {
            err(
                f.mount.span(),
                format!(
                    "mount point {mount:?} must be an absolute path other than / without . or .."
                ),
            );
        }
        let fstype = f.fstype.get_ref();
        if fstype.is_empty()
            || !fstype
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            err(
                f.fstype.span(),
                format!("type {fstype:?} is not a file system type"),
            );
        }
        let options = f.options.as_ref().map(|o| o.get_ref().clone());
        if let Some(o) = &f.options
            && (o.get_ref().is_empty() || o.get_ref().chars().any(char::is_whitespace))
        {
            err(
                o.span(),
                "options must be a comma-separated list without spaces".to_owned(),
            );
        }
        if device_ok && mount_ok {
            // Trailing slashes would make two spellings of one mount point.
            let mount = PathBuf::from(mount.trim_end_matches('/'));
            push(
                &mut parts,
                Part::Filesystem {
                    device: device.clone(),
                    mount,
                    fstype: fstype.clone(),
                    options,
                    fsck: f.fsck.unwrap_or(false),
                },
                f.mount.span(),
                &mut err,
            );
        }
    }

    for a in &raw.ip {
        let text = a.address.get_ref();
        let Some((address, prefix)) = parse_cidr(text) else {
            err(
                a.address.span(),
                format!(
                    "address {text:?} must be a unicast IPv4 or IPv6 address with a prefix length, e.g. \"192.0.2.50/24\""
                ),
            );
            continue;
        };
        let interface = a.interface.as_ref().map(|i| i.get_ref().clone());
        if let Some(i) = &a.interface {
            let name = i.get_ref();
            if name.is_empty()
                || name.len() > 15
                || name.contains('/')
                || name.chars().any(char::is_whitespace)
            {
                err(
                    i.span(),
                    format!(
                        "interface {name:?} is not an interface name (1-15 characters, no / or spaces)"
                    ),
                );
                continue;
            }
        }
        push(
            &mut parts,
            Part::Ip {
                address,
                prefix,
                interface,
            },
            a.address.span(),
            &mut err,
        );
    }

    for a in &raw.agent {
        let name = a.name.get_ref();
        if !valid_node_name(name) {
            err(
                a.name.span(),
                format!("agent name {name:?} must be 1-63 characters of [A-Za-z0-9._-]"),
            );
            continue;
        }
        if parse_agent_name(a.agent.get_ref()).is_none() {
            err(
                a.agent.span(),
                format!(
                    "agent {:?} must be ocf:<provider>:<type>, e.g. \"ocf:heartbeat:IPaddr2\"",
                    a.agent.get_ref()
                ),
            );
            continue;
        }
        let mut params = BTreeMap::new();
        if let Some(p) = &a.params {
            for (k, v) in p.get_ref() {
                if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    err(
                        p.span(),
                        format!("agent {name:?}: parameter name {k:?} must be of [A-Za-z0-9_]"),
                    );
                    continue;
                }
                let value = match v {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    _ => {
                        err(
                            p.span(),
                            format!(
                                "agent {name:?}: parameter {k:?} must be a string, number or boolean"
                            ),
                        );
                        continue;
                    }
                };
                params.insert(k.clone(), value);
            }
        }
        let mut secs = |field: &Option<Spanned<Seconds>>, key: &str| -> Option<u64> {
            let s = field.as_ref()?;
            match s.get_ref().to_duration(super::SECONDS_BOUNDS) {
                Ok(d) => Some(d.as_millis() as u64),
                Err(e) => {
                    err(s.span(), format!("{key} {e}"));
                    None
                }
            }
        };
        let monitor_interval_ms = secs(&a.monitor_interval_seconds, "monitor_interval_seconds");
        let mut timeouts_ms = BTreeMap::new();
        for (field, action) in [
            (&a.start_timeout_seconds, "start"),
            (&a.stop_timeout_seconds, "stop"),
            (&a.monitor_timeout_seconds, "monitor"),
        ] {
            if let Some(ms) = secs(field, &format!("{action}_timeout_seconds")) {
                timeouts_ms.insert(action.to_owned(), ms);
            }
        }
        push(
            &mut parts,
            Part::Agent(AgentPart {
                name: name.clone(),
                agent: a.agent.get_ref().clone(),
                params,
                monitor_interval_ms,
                timeouts_ms,
            }),
            a.name.span(),
            &mut err,
        );
    }
    parts
}

/// The monitor that publishes `/package/<pkg>/agent/<name>/status` for a
/// package's agents.
pub fn agent_monitor_name(package: &str) -> String {
    format!("vigil-ocf.{package}")
}

/// One streaming exec monitor (`vigil monitor serve-ocf`) per package with
/// an agent that has `monitor_interval_seconds`, polling at the shortest
/// such interval. `vigil` is the running executable; `records_dir` holds
/// the run records (`[paths] state_dir`).
pub fn agent_monitors(packages: &[PackageConfig], records_dir: &Path) -> Vec<super::MonitorConfig> {
    let vigil = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "vigil".to_owned());
    packages
        .iter()
        .filter_map(|p| {
            let agents: Vec<(&AgentPart, usize)> = p
                .parts
                .iter()
                .filter_map(|part| match &part.part {
                    Part::Agent(a) if a.monitor_interval_ms.is_some() => Some((a, part.line)),
                    _ => None,
                })
                .collect();
            let interval = agents
                .iter()
                .filter_map(|(a, _)| a.monitor_interval_ms)
                .min()?;
            let params = crate::package::parts::ocf::AgentMonitorParams {
                package: p.name.clone(),
                records_dir: records_dir.to_owned(),
                ocf_root: crate::package::parts::ocf_root(),
                agents: agents.iter().map(|(a, _)| (*a).clone()).collect(),
            };
            Some(super::MonitorConfig {
                name: agent_monitor_name(&p.name),
                kind: super::MonitorKind::Exec {
                    command: vec![vigil.clone(), "monitor".into(), "serve-ocf".into()],
                    mode: vigil_sdk::proto::Mode::Stream,
                },
                interval: Duration::from_millis(interval),
                timeout: Duration::from_secs(10),
                params: serde_json::to_value(&params).unwrap_or_default(),
                source: p.source.clone(),
                line: agents.first().map_or(p.lines.name, |(_, line)| *line),
            })
        })
        .collect()
}

/// `/net/subnets/<subnet>/status`, the lan monitor's resource for the
/// subnet of `address/prefix` (DESIGN §3).
pub fn subnet_resource(address: std::net::IpAddr, prefix: u8) -> String {
    vigil_sdk::subnet::status_name(address, prefix).to_string()
}

/// The subnets (`192.0.2.0/24`) of every package's `[[ip]]`, for the lan
/// monitor's `params.subnets`.
pub fn package_subnets(packages: &[PackageConfig]) -> Vec<String> {
    let mut subnets: Vec<String> = Vec::new();
    for p in packages {
        for part in &p.parts {
            if let Part::Ip {
                address, prefix, ..
            } = &part.part
            {
                let network = vigil_sdk::subnet::network_of(*address, *prefix);
                let text = format!("{network}/{prefix}");
                if !subnets.contains(&text) {
                    subnets.push(text);
                }
            }
        }
    }
    subnets
}

/// `192.0.2.50/24` or `2001:db8::50/64`.
pub fn parse_cidr(text: &str) -> Option<(std::net::IpAddr, u8)> {
    let (address, prefix) = text.split_once('/')?;
    let address: std::net::IpAddr = address.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    (prefix <= max
        && !address.is_unspecified()
        && !address.is_loopback()
        && !address.is_multicast())
    .then_some((address, prefix))
}

/// A relative program path with a `/` is relative to the config directory.
fn resolve_program(mut argv: Vec<String>, dir: &Path) -> Vec<String> {
    if let Some(program) = argv.first_mut()
        && program.contains('/')
        && !program.starts_with('/')
    {
        *program = dir.join(&*program).display().to_string();
    }
    argv
}

/// Checks packages against each other, the cluster's nodes and the declared
/// resources (`declared` answers whether some monitor declares a name).
/// Errors come package by package, in the order given.
impl PackageConfig {
    /// What the placement engine needs of this package.
    pub fn to_spec(&self) -> crate::placement::PackageSpec {
        crate::placement::PackageSpec {
            name: self.name.clone(),
            kind: self.kind,
            nodes: if self.all_nodes {
                vec!["*".to_owned()]
            } else {
                self.nodes.clone()
            },
            failover_policy: self.failover_policy,
            failback_policy: self.failback_policy,
            auto_run: self.auto_run,
            priority: self.priority,
            resources: self
                .resources
                .iter()
                .map(|r| crate::placement::ResourceRequirement {
                    name: r.name.to_string(),
                    evaluate: r.evaluate,
                })
                .collect(),
            dependencies: self
                .dependencies
                .iter()
                .map(|d| crate::placement::Dependency {
                    package: d.package.clone(),
                    condition: d.condition,
                    location: d.location,
                })
                .collect(),
            follow: self.follow.clone(),
            avoid: self.avoid.clone(),
        }
    }

    /// The requirement on `resource`, if the package has one.
    pub fn requirement(&self, resource: &str) -> Option<&ResourceRequirement> {
        self.resources.iter().find(|r| r.name.as_str() == resource)
    }
}

pub fn check_packages(
    packages: &[PackageConfig],
    cluster_nodes: &[String],
    declared: impl Fn(&ResourceName) -> bool,
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let by_name: BTreeMap<&str, &PackageConfig> =
        packages.iter().map(|p| (p.name.as_str(), p)).collect();
    let at = |p: &PackageConfig, line: usize, msg: String| ConfigError::at(&p.source, line, msg);

    for (i, p) in packages.iter().enumerate() {
        // `load_packages` already drops a second package of the same name;
        // this catches lists put together some other way.
        if let Some(first) = packages[..i].iter().find(|o| o.name == p.name) {
            errors.push(at(
                p,
                p.lines.name,
                format!(
                    "package name {:?} is already used by {}",
                    p.name,
                    first.source.display()
                ),
            ));
            continue;
        }
        for (node, line) in p.nodes.iter().zip(&p.lines.nodes) {
            if !cluster_nodes.contains(node) {
                errors.push(at(
                    p,
                    *line,
                    format!("node {node:?} is not a node of the cluster"),
                ));
            }
        }
        for r in &p.resources {
            if !declared(&r.name) {
                let msg = match &r.implied_by {
                    Some(part) if r.name.as_str().starts_with("/net/subnets/") => format!(
                        "{part} needs resource {} (its subnet up), which no monitor declares: configure the lan monitor (monitors.d, plugin = \"vigil_lan\"), which publishes the subnets of packages' addresses",
                        r.name
                    ),
                    Some(part) => format!(
                        "resource {} (implied by {part}) is not declared by any monitor",
                        r.name
                    ),
                    None => format!("resource {} is not declared by any monitor", r.name),
                };
                errors.push(at(p, r.line, msg));
            }
        }
        if let (Some(follow), Some(line)) = (&p.follow, p.lines.follow)
            && !by_name.contains_key(follow.as_str())
        {
            errors.push(at(
                p,
                line,
                format!("follow names unknown package {follow:?}"),
            ));
        }
        for (other, line) in p.avoid.iter().zip(&p.lines.avoid) {
            if !by_name.contains_key(other.as_str()) {
                errors.push(at(
                    p,
                    *line,
                    format!("avoid names unknown package {other:?}"),
                ));
            }
        }
        for d in &p.dependencies {
            let Some(other) = by_name.get(d.package.as_str()) else {
                errors.push(at(
                    p,
                    d.line,
                    format!("dependency on unknown package {:?}", d.package),
                ));
                continue;
            };
            match d.condition {
                DependencyCondition::Down => {
                    // Exclusion only works when both sides know about it:
                    // otherwise the other package could start onto this one.
                    let mutual = other.dependencies.iter().any(|o| {
                        o.package == p.name
                            && o.condition == DependencyCondition::Down
                            && o.location == d.location
                    });
                    if !mutual {
                        errors.push(at(
                            p,
                            d.line,
                            format!(
                                "down dependency on {:?} must be mutual: {:?} needs a dependency on {:?} with condition = \"down\" and location = {:?}",
                                d.package,
                                d.package,
                                p.name,
                                d.location.as_str()
                            ),
                        ));
                    }
                    if p.failover_policy == FailoverPolicy::MinPackageNode {
                        errors.push(at(
                            p,
                            p.lines.failover_policy.unwrap_or(d.line),
                            format!(
                                "failover_policy = \"min_package_node\" cannot be combined with a down dependency (on {:?}); use \"configured_node\"",
                                d.package
                            ),
                        ));
                    }
                }
                DependencyCondition::Up if d.location == DependencyLocation::SameNode => {
                    if !p.nodes.iter().any(|n| other.nodes.contains(n)) {
                        errors.push(at(
                            p,
                            d.line,
                            format!(
                                "same_node dependency on {:?} can never hold: the two packages share no node",
                                d.package
                            ),
                        ));
                    }
                }
                DependencyCondition::Up => {}
            }
        }
    }

    // Two packages with one address or mount point would fight over it
    // wherever both run.
    let mut claimed: BTreeMap<String, (&PackageConfig, usize)> = BTreeMap::new();
    for p in packages {
        for part in &p.parts {
            let key = match &part.part {
                Part::Ip { address, .. } => format!("address {address}"),
                Part::Filesystem { mount, .. } => format!("mount point {}", mount.display()),
                Part::VolumeGroup { name } => format!("volume group {name}"),
                Part::Agent(_) => continue,
            };
            match claimed.get(&key) {
                Some((first, line)) if first.name != p.name => errors.push(at(
                    p,
                    part.line,
                    format!(
                        "{key} is already claimed by package {:?} ({}:{line})",
                        first.name,
                        first.source.display()
                    ),
                )),
                Some(_) => {}
                None => {
                    claimed.insert(key, (p, part.line));
                }
            }
        }
    }

    // Cycles: up dependencies must form a DAG so predecessors can start
    // first; follow chains must end so leaders can be placed first. Mutual
    // down dependencies are symmetric by design and not an order.
    let deps = |p: &PackageConfig| -> Vec<(String, usize)> {
        p.dependencies
            .iter()
            .filter(|d| d.condition == DependencyCondition::Up)
            .map(|d| (d.package.clone(), d.line))
            .collect()
    };
    find_cycles(packages, &by_name, deps, "dependency cycle", &mut errors);
    let follows = |p: &PackageConfig| -> Vec<(String, usize)> {
        p.follow
            .iter()
            .map(|f| (f.clone(), p.lines.follow.unwrap_or(p.lines.name)))
            .collect()
    };
    find_cycles(packages, &by_name, follows, "follow cycle", &mut errors);
    errors
}

/// An edge of the package graph: the target package and the line that says so.
type Edge = (String, usize);

/// Reports the cycles a depth-first search meets (at least one in every
/// group of packages that reach each other), each at the line of the edge
/// that closes it, named from where the search entered it.
fn find_cycles(
    packages: &[PackageConfig],
    by_name: &BTreeMap<&str, &PackageConfig>,
    edges: impl Fn(&PackageConfig) -> Vec<(String, usize)>,
    what: &str,
    errors: &mut Vec<ConfigError>,
) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = by_name.keys().map(|k| (*k, Mark::New)).collect();
    let mut reported: BTreeSet<Vec<String>> = BTreeSet::new();

    // Iterative depth-first search keeping the current path, so that the
    // cycle can be named from the path when a back edge is found.
    for start in packages {
        if marks.get(start.name.as_str()) != Some(&Mark::New) {
            continue;
        }
        let mut path: Vec<(&PackageConfig, Vec<Edge>, usize)> = vec![(start, edges(start), 0)];
        marks.insert(start.name.as_str(), Mark::OnPath);
        while let Some(top) = path.len().checked_sub(1) {
            let (node, edge) = {
                let (node, out, next) = &mut path[top];
                let edge = out.get(*next).cloned();
                *next += 1;
                (*node, edge)
            };
            let Some((target, line)) = edge else {
                marks.insert(node.name.as_str(), Mark::Done);
                path.pop();
                continue;
            };
            let Some(target_pkg) = by_name.get(target.as_str()).copied() else {
                continue;
            };
            match marks.get(target.as_str()) {
                Some(Mark::New) => {
                    marks.insert(target_pkg.name.as_str(), Mark::OnPath);
                    path.push((target_pkg, edges(target_pkg), 0));
                }
                Some(Mark::OnPath) => {
                    let from = path
                        .iter()
                        .position(|(p, _, _)| p.name == target)
                        .unwrap_or(0);
                    let mut names: Vec<String> = path[from..]
                        .iter()
                        .map(|(p, _, _)| p.name.clone())
                        .collect();
                    let mut key = names.clone();
                    key.sort();
                    names.push(target.clone());
                    if reported.insert(key) {
                        errors.push(ConfigError::at(
                            &node.source,
                            line,
                            format!("{what}: {}", names.join(" -> ")),
                        ));
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
