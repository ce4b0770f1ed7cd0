//! The `vigil` command line: argument definitions and the commands that do
//! not need the daemon's main loop (they talk to it over the API, or run a
//! monitor once on their own).
//!
//! Exit codes (DESIGN §7): 0 done; 1 refused, failed or invalid; 2 a usage
//! error (clap's own, or a [`UsageError`] found after parsing); 3 the host
//! cannot be reached. [`exit_code`] maps an error to its code.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::api::{self, Request, ReslsOutput};
use crate::config::{self, DEFAULT_CONFIG_DIR, MonitorConfig};
use crate::daemon::{self, HostOptions};
use crate::package::manager::AdminOp;
use crate::runtime::{self, MonitorEvent, RuntimeContext};
use crate::validation;
use crate::views::{StatusOutput, WhyOutput};

/// Arguments that parse but cannot be used (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The exit code for an error of [`run`]: 2 for usage, 3 when the host
/// cannot be reached, 1 for everything that was refused or failed.
pub fn exit_code(error: &anyhow::Error) -> i32 {
    if error.downcast_ref::<UsageError>().is_some() {
        2
    } else if error
        .downcast_ref::<crate::package::fail_fast::NodeHalted>()
        .is_some()
    {
        crate::package::fail_fast::EXIT_STATUS
    } else if matches!(
        error.downcast_ref::<api::ApiError>(),
        Some(api::ApiError::Connect { .. })
    ) {
        3
    } else {
        1
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "vigil",
    version,
    about = "Keeps packages available on a cluster of Linux nodes"
)]
pub struct Cli {
    /// Configuration directory (cluster.toml, monitors.d/, packages.d/).
    #[arg(short = 'c', long = "config", global = true, env = "VIGIL_CONFIG_DIR", default_value = DEFAULT_CONFIG_DIR)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node daemon.
    Host {
        /// This node's name (default: the only node of a one-node cluster, else the hostname).
        #[arg(long)]
        node: Option<String>,
    },
    /// Validate the configuration; prints file:line: message per error and exits 1 if any.
    Check {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate packages.d/ (as check does) and make it the cluster's package set; every host runs it.
    Apply {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List resources: value, state, age, monitor, packages using them.
    Resls(ReslsArgs),
    /// Work with monitors.
    #[command(subcommand)]
    Monitor(MonitorCommand),
    /// Cluster, nodes, packages, and the resources of each package.
    Status {
        /// Print JSON (with --watch: one line per change).
        #[arg(long)]
        json: bool,
        /// Also services (pids, restarts, fail counts), policies, resource
        /// values and criteria, and where packages failed.
        #[arg(short, long)]
        verbose: bool,
        /// Keep showing the status, redrawn when it changes (Ctrl-C stops).
        #[arg(long)]
        watch: bool,
    },
    /// Operate a package: run, halt, move, enable, disable, clear, maintenance.
    Pkg {
        /// What to do.
        #[arg(value_parser = ["run", "halt", "move", "enable", "disable", "clear", "maintenance"])]
        action: String,
        /// The package.
        package: String,
        /// With maintenance: on or off.
        #[arg(value_parser = ["on", "off"])]
        setting: Option<String>,
        /// The node (required by move; for run, enable, disable: only that node).
        #[arg(long)]
        node: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Wait until it is done or failed: --wait (300 s) or --wait=SECONDS; exit 1 if not.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, require_equals = true, default_missing_value = "300")]
        wait: Option<u64>,
    },
    /// Join (run) or drain (halt) a node, or put it in maintenance.
    Node {
        /// run (join), halt (drain) or maintenance.
        #[arg(value_parser = ["run", "halt", "maintenance"])]
        action: String,
        /// The node.
        node: String,
        /// With maintenance: on or off.
        #[arg(value_parser = ["on", "off"])]
        setting: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Why a package runs where it does, or why it cannot run anywhere.
    Why {
        /// The package.
        package: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Place packages offline from a state file, as the daemon would; no daemon needed.
    Simulate(SimulateArgs),
    /// Print a commented template.
    Template {
        #[arg(value_parser = ["monitor", "package"])]
        kind: String,
        /// With `package`: add an [[agent]] part for this OCF agent
        /// (ocf:<provider>:<type>), its parameters read from its meta-data.
        #[arg(long, value_name = "AGENT")]
        agent: Option<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: crate::generate::Shell },
    /// Write man pages (vigil.1, vigil-COMMAND.1) into DIR; used by the package build.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
    /// The guard `vigil host` starts beside itself (not for people to run):
    /// halts this node's packages when the host stops heartbeating.
    #[command(hide = true)]
    Guard {
        #[arg(long)]
        node: String,
        /// Silence (ms) after which the packages are halted.
        #[arg(long)]
        margin_ms: u64,
        /// The host's `[paths]`, as it bound them.
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        run_dir: PathBuf,
        #[arg(long)]
        log_dir: PathBuf,
        /// `[logging] format = "json"`: JSON lines on stderr.
        #[arg(long)]
        log_json: bool,
    },
}

#[cfg(test)]
mod tests {
    #[test]
    fn display_value_rounds_for_people() {
        use serde_json::json;
        assert_eq!(
            super::display_value(&json!(94.96708891446002), Some("%")),
            "94.97%"
        );
        assert_eq!(super::display_value(&json!(3.0), None), "3");
        assert_eq!(super::display_value(&json!(0.5), Some("s")), "0.5s");
        assert_eq!(super::display_value(&json!("up"), None), "up");
        assert_eq!(super::display_value(&json!(null), None), "-");
    }
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// TOML with [nodes.NAME] state/resources and [packages.NAME] running_on.
    #[arg(long)]
    pub state: PathBuf,
    /// Take a node down before placing (repeatable).
    #[arg(long = "node-down", value_name = "NODE")]
    pub node_down: Vec<String>,
    /// Set a resource value on a node: NODE:RESOURCE=VALUE (repeatable).
    #[arg(long = "set", value_name = "NODE:RESOURCE=VALUE")]
    pub set: Vec<String>,
    /// Show why each package is placed where it is.
    #[arg(long)]
    pub explain: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReslsArgs {
    /// A resource or class path such as /net or /fs/data/used_percent.
    #[arg(default_value = "/")]
    pub path: String,
    /// List every resource below PATH, not just its immediate classes.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Print JSON (always every resource at or below PATH).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum MonitorCommand {
    /// Run one monitor once, without the daemon, and print its samples.
    Test {
        /// A monitor name from monitors.d, or a registration file.
        monitor: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the daemon's monitors and their health.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve one dylib plugin over the exec protocol on stdin/stdout; the
    /// host runs this for `isolation = "process"`. Not for people.
    #[command(hide = true)]
    ServeDylib {
        #[arg(long)]
        plugin: PathBuf,
        #[arg(long)]
        timeout_ms: u64,
    },
    /// Serve the monitor of a package's OCF agents over the exec protocol;
    /// the host runs this for `[[agent]]` parts. Not for people.
    #[command(hide = true)]
    ServeOcf,
}

/// The configuration directory as an absolute path, resolved once: every
/// relative path inside is joined to it, and package scripts run in it, so
/// a relative `-c` must not be resolved again from another directory.
pub fn absolute_config_dir(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir)
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.to_owned())
}

/// Runs a parsed command; returns the process exit code.
pub fn run(mut cli: Cli) -> anyhow::Result<i32> {
    cli.config = absolute_config_dir(&cli.config);
    match cli.command {
        Command::Host { node } => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(daemon::run(HostOptions {
                config_dir: cli.config,
                node,
            }))?;
            Ok(0)
        }
        Command::Guard {
            node,
            margin_ms,
            state_dir,
            run_dir,
            log_dir,
            log_json,
        } => crate::guard::run(crate::guard::GuardOptions {
            config_dir: cli.config,
            paths: config::Paths {
                state_dir,
                run_dir,
                log_dir,
            },
            log_format: if log_json {
                config::LogFormat::Json
            } else {
                config::LogFormat::Text
            },
            node,
            margin: std::time::Duration::from_millis(margin_ms),
        }),
        Command::Completions { shell } => {
            match crate::generate::completions(shell, &mut std::io::stdout()) {
                // `| head`: the reader has what it wanted.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(e).context("writing the completion script")
                }
                _ => Ok(0),
            }
        }
        Command::Manpages { dir } => crate::generate::manpages(&dir).map(|()| 0),
        Command::Check { json } => check(&cli.config, json),
        Command::Apply { json } => apply(&cli.config, json),
        Command::Resls(args) => resls(&cli.config, &args),
        Command::Monitor(MonitorCommand::Test { monitor, json }) => {
            monitor_test(&cli.config, &monitor, json)
        }
        Command::Monitor(MonitorCommand::List { json }) => monitor_list(&cli.config, json),
        Command::Monitor(MonitorCommand::ServeDylib { plugin, timeout_ms }) => Ok(
            runtime::isolated::serve(plugin, std::time::Duration::from_millis(timeout_ms)),
        ),
        Command::Monitor(MonitorCommand::ServeOcf) => Ok(vigil_sdk::proto::serve_stdio::<
            crate::package::parts::ocf::AgentMonitor,
        >()),
        Command::Simulate(args) => simulate(&cli.config, &args),
        Command::Status {
            json,
            verbose,
            watch,
        } => status(&cli.config, json, verbose, watch),
        Command::Pkg {
            action,
            package,
            setting,
            node,
            json,
            wait,
        } => {
            let on = maintenance_setting("pkg", &action, &package, setting.as_deref())?;
            let action = match action.as_str() {
                "run" => AdminOp::Run,
                "halt" => AdminOp::Halt,
                "move" => AdminOp::Move,
                "enable" => AdminOp::Enable,
                "disable" => AdminOp::Disable,
                "maintenance" if on == Some(true) => AdminOp::MaintenanceOn,
                "maintenance" => AdminOp::MaintenanceOff,
                _ => AdminOp::Clear,
            };
            if action == AdminOp::Move && node.is_none() {
                return Err(UsageError(format!(
                    "pkg move {package} needs --node NODE: the node to move it to"
                ))
                .into());
            }
            let code = admin(
                &cli.config,
                Request::Pkg {
                    action: action.clone(),
                    package: package.clone(),
                    node: node.clone(),
                },
                json,
            )?;
            match wait {
                Some(seconds) if code == 0 => {
                    wait_package(&cli.config, &action, &package, node.as_deref(), seconds)
                }
                _ => Ok(code),
            }
        }
        Command::Node {
            action,
            node,
            setting,
            json,
        } => {
            let request = match maintenance_setting("node", &action, &node, setting.as_deref())? {
                Some(on) => Request::NodeMaintenance { node, on },
                None => Request::Node {
                    halt: action == "halt",
                    node,
                },
            };
            admin(&cli.config, request, json)
        }
        Command::Why { package, json } => why(&cli.config, &package, json),
        Command::Template { kind, agent } => {
            print!(
                "{}",
                if kind == "monitor" {
                    MONITOR_TEMPLATE
                } else {
                    PACKAGE_TEMPLATE
                }
            );
            if let Some(agent) = agent {
                let xml = crate::package::parts::ocf::meta_data(
                    &crate::package::parts::ocf_root(),
                    &agent,
                )
                .map_err(|e| anyhow::anyhow!("agent {agent}: {e}"))?;
                print!(
                    "{}",
                    crate::package::parts::ocf::agent_template(&agent, &xml)
                );
            }
            Ok(0)
        }
    }
}

/// The on|off of `vigil pkg|node maintenance NAME on|off`: required there,
/// refused after any other action.
fn maintenance_setting(
    command: &str,
    action: &str,
    name: &str,
    setting: Option<&str>,
) -> anyhow::Result<Option<bool>> {
    match (action, setting) {
        ("maintenance", Some(s)) => Ok(Some(s == "on")),
        ("maintenance", None) => {
            Err(UsageError(format!("{command} maintenance {name} needs on or off")).into())
        }
        (_, Some(s)) => Err(UsageError(format!(
            "{command} {action} {name} takes no {s:?}: only maintenance takes on or off"
        ))
        .into()),
        (_, None) => Ok(None),
    }
}

fn socket_path(config_dir: &Path) -> anyhow::Result<PathBuf> {
    Ok(cluster_config(config_dir)?.api.socket)
}

fn cluster_config(config_dir: &Path) -> anyhow::Result<config::ClusterConfig> {
    config::load_cluster(config_dir).map_err(|errors| {
        anyhow::anyhow!(
            "{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn runtime_context(config_dir: &Path) -> RuntimeContext {
    let plugin_path = config::load_cluster(config_dir)
        .map(|c| c.plugin_path)
        .unwrap_or_default();
    RuntimeContext {
        config_dir: config_dir.to_owned(),
        plugin_search: runtime::dylib::search_path(&plugin_path),
    }
}

/// `vigil check`: every error of [`validation::validate`], the same
/// validation `vigil host` runs at startup and on reload.
fn check(config_dir: &Path, json: bool) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Runtime::new()?;
    let (errors, monitors, local) = match runtime.block_on(validation::validate(config_dir, None)) {
        Err(errors) => (errors, 0, None),
        Ok(validated) => {
            let local = daemon::LocalPackages::of(&validated);
            let mut errors = validated.errors;
            errors.extend(validated.duplicates);
            (errors, validated.monitors, Some(local))
        }
    };
    let applied = local.and_then(|local| compare_with_applied(config_dir, &local));
    if json {
        let mut out = crate::views::CheckOutput::new(&errors);
        out.applied = applied;
        print_json(&out)?;
    } else {
        if errors.is_empty() {
            println!("configuration is valid ({monitors} monitors)");
        } else {
            for e in &errors {
                eprintln!("{e}");
            }
        }
        if let Some(a) = &applied {
            match &a.differences {
                None => println!(
                    "packages.d is the applied package set (revision {})",
                    a.revision
                ),
                Some(d) => println!(
                    "packages.d differs from the applied package set (revision {}, digest {}) that every host runs: {d}; `vigil apply` makes it the cluster's",
                    a.revision, a.digest
                ),
            }
        }
    }
    Ok(if errors.is_empty() { 0 } else { 1 })
}

/// How the local package files compare with the set the running host
/// runs; `None` when no host answers or none was applied.
fn compare_with_applied(
    config_dir: &Path,
    local: &daemon::LocalPackages,
) -> Option<crate::views::CheckApplied> {
    let result = api::call(&socket_path(config_dir).ok()?, &Request::Applied).ok()?;
    let set: crate::views::AppliedSetOutput = serde_json::from_value(result).ok()?;
    let status = set.applied?;
    Some(crate::views::CheckApplied {
        revision: status.revision,
        digest: status.digest,
        local_digest: crate::store::AppliedPackages::digest_of(&local.texts),
        differences: crate::package::applied::file_differences(&local.texts, &set.files),
    })
}

/// `vigil apply`: the validation of `vigil check`; any error refuses the
/// whole set (nothing changes). Then the host reads the same files, checks
/// that they are still what was validated (their digest), and stores them
/// as the next revision of the cluster's package set.
fn apply(config_dir: &Path, json: bool) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Runtime::new()?;
    let refused = |errors: &[config::ConfigError]| -> anyhow::Result<i32> {
        if json {
            print_json(&crate::views::ApplyOutput {
                ok: false,
                applied: None,
                changed: false,
                added: Vec::new(),
                restarted: Vec::new(),
                replanned: Vec::new(),
                removed: Vec::new(),
                errors: crate::views::CheckOutput::new(errors).errors,
            })?;
        } else {
            for e in errors {
                eprintln!("{e}");
            }
            eprintln!("vigil apply: refused; nothing applied");
        }
        Ok(1)
    };
    let validated = match runtime.block_on(validation::validate(config_dir, None)) {
        Err(errors) => return refused(&errors),
        Ok(v) if !v.errors.is_empty() => return refused(&v.errors),
        Ok(v) => v,
    };
    let local = daemon::LocalPackages::of(&validated);
    if let Some(file) = local.broken.first() {
        return refused(&[config::ConfigError::file(
            &config_dir.join("packages.d").join(file),
            "could not be read again after validation",
        )]);
    }
    let digest = crate::store::AppliedPackages::digest_of(&local.texts);
    let result = api::call(&socket_path(config_dir)?, &Request::Apply { digest })?;
    let out: crate::views::ApplyOutput =
        serde_json::from_value(result).context("decoding the apply answer")?;
    if json {
        print_json(&out)?;
    } else if !out.ok {
        for e in &out.errors {
            match e.line {
                Some(line) => eprintln!("{}:{line}: {}", e.file.display(), e.message),
                None => eprintln!("{}: {}", e.file.display(), e.message),
            }
        }
        eprintln!("vigil apply: refused by the host; nothing applied");
    } else {
        let revision = out.applied.as_ref().map_or(0, |a| a.revision);
        let digest = out.applied.as_ref().map_or("", |a| a.digest.as_str());
        if out.changed {
            println!("applied package set revision {revision} (digest {digest})");
            for (what, list) in [
                ("added", &out.added),
                ("changed, halted and run again", &out.restarted),
                ("changed, replanned without a restart", &out.replanned),
                ("removed", &out.removed),
            ] {
                if !list.is_empty() {
                    println!("  {what}: {}", list.join(", "));
                }
            }
        } else {
            println!(
                "packages.d is already the applied package set (revision {revision}, digest {digest}); nothing changed"
            );
        }
    }
    Ok(if out.ok { 0 } else { 1 })
}

/// How `vigil status` prints.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusStyle {
    /// `-v`: services, policies, resources with values and criteria, failed nodes.
    pub verbose: bool,
    /// ANSI colours (only on a terminal).
    pub colour: bool,
}

/// A state word, coloured when `colour`: green up, yellow on its way,
/// red failed or down.
fn paint(word: &str, width: usize, colour: bool) -> String {
    let padded = format!("{word:<width$}");
    if !colour {
        return padded;
    }
    let code = match word {
        "up" | "ok" | "known" | "running" => "32",
        "starting" | "halting" | "halted" | "pending" => "33",
        "failed" | "down" | "unknown" | "exited" => "31",
        _ => return padded,
    };
    format!("\x1b[{code}m{padded}\x1b[0m")
}

/// `vigil status` for people; `resources` gives values for `-v`.
pub fn status_text(
    out: &StatusOutput,
    resources: Option<&ReslsOutput>,
    style: StatusStyle,
) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let errors = &out.config_errors;
    if !errors.is_empty() {
        let _ = writeln!(t, "configuration errors (`vigil check` shows them too):");
        for e in errors {
            let _ = writeln!(t, "  {e}");
        }
        let _ = writeln!(t);
    }
    let _ = writeln!(t, "cluster {} (this node: {})", out.cluster, out.node);
    if let Some(a) = &out.applied {
        let _ = writeln!(
            t,
            "package set: revision {} (digest {}, {} at {})",
            a.revision, a.digest, a.applied_by, a.applied_at
        );
    }
    let _ = writeln!(t, "\nNODE             STATE");
    for n in &out.nodes {
        let _ = writeln!(
            t,
            "{:<16} {}{}",
            n.name,
            paint(&n.state, 0, style.colour),
            if n.maintenance { " (maintenance)" } else { "" }
        );
    }
    let _ = writeln!(
        t,
        "\nPACKAGE          STATE     RUNNING ON       SWITCHING  TOKEN  REASON"
    );
    for p in &out.packages {
        let on = if p.running_on.is_empty() {
            "-".to_owned()
        } else {
            p.running_on.join(",")
        };
        let _ = writeln!(
            t,
            "{:<16} {} {:<16} {:<10} {:>5}  {}",
            p.name,
            paint(&p.state, 9, style.colour),
            on,
            if p.switching { "enabled" } else { "disabled" },
            p.fence_token,
            p.reason
        );
        if p.maintenance || p.withheld.is_some() {
            let _ = writeln!(
                t,
                "    maintenance{}: {}",
                if p.maintenance { "" } else { " (its node)" },
                p.withheld.as_deref().unwrap_or("nothing held back")
            );
        }
        if !p.disabled_on.is_empty() {
            let _ = writeln!(t, "    switching disabled on: {}", p.disabled_on.join(", "));
        }
        if style.verbose {
            let policy = &p.policy;
            let _ = writeln!(
                t,
                "    {} package, failover_policy {}, failback_policy {}, auto_run {}, priority {}, nodes {}",
                policy.kind,
                policy.failover_policy,
                policy.failback_policy,
                if policy.auto_run { "yes" } else { "no" },
                policy.priority.map_or("none".to_owned(), |n| n.to_string()),
                policy.nodes.join(",")
            );
        }
        if style.verbose && !p.failed_on.is_empty() {
            let _ = writeln!(t, "    failed on: {}", p.failed_on.join(", "));
        }
        for s in &p.services_here {
            // Not verbose: only what needs attention.
            if !style.verbose && s.fail_count == 0 {
                continue;
            }
            if s.state == "stopped" && s.fail_count == 0 {
                continue;
            }
            let pid = s.pid.map_or("-".to_owned(), |pid| pid.to_string());
            let limit = s
                .restart_limit
                .map_or("unlimited".to_owned(), |n| n.to_string());
            let _ = write!(
                t,
                "    service {:<36} {} pid {pid:<8} restarts {}/{limit}  fails {}",
                s.name,
                paint(&s.state, 8, style.colour),
                s.restarts,
                s.fail_count
            );
            if let Some(last) = &s.last_failure {
                let _ = write!(t, " (last {last})");
            }
            let _ = writeln!(t, " on {}", out.node);
        }
        for r in &p.resources {
            if style.verbose {
                let value = resources
                    .and_then(|l| l.resources.iter().find(|x| x.name == r.name))
                    .map_or("-".to_owned(), |x| {
                        display_value(&x.value, x.unit.as_deref())
                    });
                let _ = writeln!(
                    t,
                    "    {:<44} {} {:>12}  up when {}  ({})",
                    r.name,
                    paint(&r.state, 8, style.colour),
                    value,
                    r.criterion,
                    r.evaluate
                );
            } else {
                let _ = writeln!(
                    t,
                    "    {:<44} {} ({})",
                    r.name,
                    paint(&r.state, 8, style.colour),
                    r.evaluate
                );
            }
        }
        for part in &p.parts_here {
            let _ = writeln!(t, "    part {:<39} up on {}", part.part, out.node);
        }
    }
    if !out.hooks.is_empty() {
        let _ = writeln!(
            t,
            "\nHOOK             QUEUED  DELIVERED  FAILED RUNS  TIMED OUT  DROPPED  LAST ERROR"
        );
        for h in &out.hooks {
            let _ = writeln!(
                t,
                "{:<16} {:>6}  {:>9}  {:>11}  {:>9}  {:>7}  {}",
                h.name,
                h.queued,
                h.delivered,
                h.failed_runs,
                h.timed_out_runs,
                h.dropped,
                match (&h.last_error, &h.last_error_at) {
                    (Some(e), Some(at)) => format!("{at}: {e}"),
                    (Some(e), None) => e.clone(),
                    _ => "-".to_owned(),
                }
            );
        }
    }
    t
}

/// The monitors with a problem, for `vigil status`.
fn monitor_problems(rows: &[api::MonitorRow]) -> String {
    let lines: Vec<String> = rows
        .iter()
        .filter_map(|r| Some(format!("{:<16} {:<9} {}\n", r.name, r.state, r.problem()?)))
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "\nMONITOR PROBLEMS (`vigil monitor list`)\n{}",
        lines.concat()
    )
}

/// How often `status --watch` asks the host.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

fn status(config_dir: &Path, json: bool, verbose: bool, watch: bool) -> anyhow::Result<i32> {
    use std::io::IsTerminal;
    let socket = socket_path(config_dir)?;
    let tty = std::io::stdout().is_terminal();
    let style = StatusStyle {
        verbose,
        colour: tty && std::env::var_os("NO_COLOR").is_none(),
    };
    let mut shown = String::new();
    loop {
        let result = api::call(&socket, &Request::Status)?;
        let out: StatusOutput =
            serde_json::from_value(result).context("decoding the status answer")?;
        if json && !watch {
            print_json(&out)?;
            return Ok(0);
        }
        let text = if json {
            serde_json::to_string(&out)? + "\n"
        } else if !verbose {
            let rows = api::call(&socket, &Request::Monitors)?;
            let rows: Vec<api::MonitorRow> =
                serde_json::from_value(rows).context("decoding the monitors")?;
            status_text(&out, None, style) + &monitor_problems(&rows)
        } else {
            let resources = if verbose {
                let listing = api::call(&socket, &Request::Resls { path: "/".into() })?;
                Some(serde_json::from_value::<ReslsOutput>(listing).context("decoding resls")?)
            } else {
                None
            };
            let rows = api::call(&socket, &Request::Monitors)?;
            let rows: Vec<api::MonitorRow> =
                serde_json::from_value(rows).context("decoding the monitors")?;
            status_text(&out, resources.as_ref(), style) + &monitor_problems(&rows)
        };
        if !watch {
            print!("{text}");
            return Ok(0);
        }
        // Redraw only on change; a pipe gets each new state appended.
        if text != shown {
            let mut stdout = std::io::stdout().lock();
            if tty && !json {
                write!(stdout, "\x1b[H\x1b[2J")?;
            } else if !shown.is_empty() && !json {
                writeln!(stdout, "---")?;
            }
            write!(stdout, "{text}")?;
            stdout.flush()?;
            shown = text;
        }
        std::thread::sleep(WATCH_EVERY);
    }
}

/// `--wait`: polls the package until `action` is done (0) or failed, or
/// `seconds` pass (1).
fn wait_package(
    config_dir: &Path,
    action: &AdminOp,
    package: &str,
    node: Option<&str>,
    seconds: u64,
) -> anyhow::Result<i32> {
    let socket = socket_path(config_dir)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let result = api::call(&socket, &Request::Status)?;
        let out: StatusOutput =
            serde_json::from_value(result).context("decoding the status answer")?;
        let p = out
            .packages
            .iter()
            .find(|p| p.name == package)
            .with_context(|| format!("{package} is no longer in the cluster's packages"))?;
        let done = match action {
            AdminOp::Run | AdminOp::Move => {
                p.state == "up" && node.is_none_or(|n| p.running_on.iter().any(|o| o == n))
            }
            AdminOp::Halt => p.running_on.is_empty() && p.state != "halting",
            AdminOp::Enable
            | AdminOp::Disable
            | AdminOp::Clear
            | AdminOp::MaintenanceOn
            | AdminOp::MaintenanceOff => true,
        };
        if done {
            match p.running_on.is_empty() {
                true => println!("{package} is {}", p.state),
                false => println!("{package} is {} on {}", p.state, p.running_on.join(",")),
            }
            return Ok(0);
        }
        if p.state == "failed" {
            eprintln!(
                "vigil: {package} failed: {} (`vigil why {package}`; `vigil pkg clear {package}` after fixing it)",
                p.reason
            );
            return Ok(1);
        }
        if std::time::Instant::now() >= deadline {
            eprintln!(
                "vigil: {package} is still {} after {seconds} s: {} (`vigil why {package}`)",
                p.state, p.reason
            );
            return Ok(1);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn admin(config_dir: &Path, request: Request, json: bool) -> anyhow::Result<i32> {
    let result = api::call(&socket_path(config_dir)?, &request)?;
    let out: crate::views::AdminOutput =
        serde_json::from_value(result).context("decoding the answer")?;
    if json {
        print_json(&out)?;
    } else {
        println!("{}", out.done);
    }
    Ok(0)
}

fn why(config_dir: &Path, package: &str, json: bool) -> anyhow::Result<i32> {
    let result = api::call(
        &socket_path(config_dir)?,
        &Request::Why {
            package: package.to_owned(),
        },
    )?;
    let out: WhyOutput = serde_json::from_value(result).context("decoding the why answer")?;
    if json {
        print_json(&out)?;
    } else {
        print!("{}", out.text);
        if !out.text.ends_with('\n') {
            println!();
        }
    }
    Ok(0)
}

/// `vigil simulate`: the placement engine on a state file, offline.
fn simulate(config_dir: &Path, args: &SimulateArgs) -> anyhow::Result<i32> {
    use crate::placement::state_file::{ResourceValue, StateFile};
    let config = config::load(config_dir).map_err(|errors| {
        anyhow::anyhow!(
            "{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    if let Some(e) = config
        .errors
        .iter()
        .find(|e| e.file.starts_with(config_dir.join("packages.d")))
    {
        bail!("{e} (fix packages.d before simulating)");
    }
    let text = std::fs::read_to_string(&args.state)
        .with_context(|| format!("reading {}", args.state.display()))?;
    let mut state = StateFile::parse(&text, &args.state.display().to_string())?;
    for node in &args.node_down {
        if !config.cluster.nodes.contains(node) {
            bail!(
                "--node-down {node}: not in cluster.nodes ({})",
                config.cluster.nodes.join(", ")
            );
        }
        state.set_node_down(node);
    }
    for set in &args.set {
        state.apply_set(set)?;
    }
    let specs = config.packages.iter().map(|p| p.to_spec()).collect();
    let judge = |spec: &crate::placement::PackageSpec, resource: &str, value: &ResourceValue| {
        let value = match value {
            ResourceValue::Number(n) => vigil_sdk::Value::number(*n, None),
            ResourceValue::Text(t) => vigil_sdk::Value::text(t.clone()),
        };
        config
            .packages
            .iter()
            .find(|p| p.name == spec.name)
            .and_then(|p| p.requirement(resource))
            .is_some_and(|r| r.up.is_satisfied_by(Some(&value)))
    };
    let snapshot = state.to_snapshot(&config.cluster.nodes, specs, judge)?;
    let plan = crate::placement::plan(&snapshot);
    if args.json {
        let mut out = plan.simulate_json();
        if args.explain {
            out["explanations"] = serde_json::to_value(&plan.explanations)?;
        }
        print_json(&out)?;
    } else {
        print!("{plan}");
        if args.explain {
            for explanation in plan.explanations.values() {
                println!("\n{explanation}");
            }
        }
    }
    Ok(0)
}

fn resls(config_dir: &Path, args: &ReslsArgs) -> anyhow::Result<i32> {
    if let Some(problem) = api::resls_path_problem(&args.path) {
        return Err(UsageError(format!("resls PATH: {problem}")).into());
    }
    let socket = socket_path(config_dir)?;
    let result = api::call(
        &socket,
        &Request::Resls {
            path: args.path.clone(),
        },
    )?;
    let out: ReslsOutput = serde_json::from_value(result).context("decoding the resls answer")?;
    // Nothing below a path asked for is an error; nothing at all (no
    // monitors yet) is an answer.
    let nothing = out.resources.is_empty() && out.declared.is_empty() && out.path != "/";
    if args.json {
        print_json(&out)?;
        return Ok(if nothing { 1 } else { 0 });
    }
    let mut stdout = std::io::stdout().lock();
    let exact = out.resources.len() == 1 && out.resources[0].name == out.path;
    if !args.recursive && !exact {
        for class in &out.classes {
            let plural = if class.resources == 1 { "" } else { "s" };
            writeln!(
                stdout,
                "{}/  ({} resource{plural})",
                class.name, class.resources
            )?;
        }
    }
    let depth = out.path.split('/').filter(|s| !s.is_empty()).count();
    let rows: Vec<_> = out
        .resources
        .iter()
        .filter(|r| {
            args.recursive
                || exact
                || r.name.split('/').filter(|s| !s.is_empty()).count() == depth + 1
        })
        .collect();
    if !rows.is_empty() {
        writeln!(
            stdout,
            "{:<44} {:>12} {:<8} {:>7} {:<10} USED BY",
            "NAME", "VALUE", "STATE", "AGE", "MONITOR"
        )?;
        for r in rows {
            let value = display_value(&r.value, r.unit.as_deref());
            let age = r.age_seconds.map_or("-".to_owned(), |a| format!("{a:.1}s"));
            let used = if r.used_by.is_empty() {
                "-".to_owned()
            } else {
                r.used_by.join(",")
            };
            writeln!(
                stdout,
                "{:<44} {:>12} {:<8} {:>7} {:<10} {}",
                r.name, value, r.state, age, r.monitor, used
            )?;
            if let (Some(reason), true) = (&r.reason, r.state == "unknown" || exact) {
                writeln!(stdout, "    {reason}")?;
            }
        }
    }
    if args.recursive || exact {
        for d in &out.declared {
            writeln!(
                stdout,
                "{:<44} (declared by {}, nothing sampled yet)",
                d.pattern, d.monitor
            )?;
        }
    }
    if out.resources.is_empty() && out.declared.is_empty() && !nothing {
        writeln!(stdout, "no resources on {} yet", out.node)?;
    }
    if nothing {
        drop(stdout);
        eprintln!(
            "vigil: no resource at or below {} on {} (`vigil resls /` lists them all)",
            out.path, out.node
        );
        return Ok(1);
    }
    Ok(0)
}

/// A value for people: numbers with at most two decimals, then the unit.
fn display_value(value: &serde_json::Value, unit: Option<&str>) -> String {
    match value {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            let mut text = format!("{f:.2}");
            while text.contains('.') && (text.ends_with('0') || text.ends_with('.')) {
                text.pop();
            }
            format!("{text}{}", unit.unwrap_or_default())
        }
        other => other.to_string(),
    }
}

fn monitor_list(config_dir: &Path, json: bool) -> anyhow::Result<i32> {
    let socket = socket_path(config_dir)?;
    let result = api::call(&socket, &Request::Monitors)?;
    let rows: Vec<api::MonitorRow> =
        serde_json::from_value(result).context("decoding the answer")?;
    let result = api::call(&socket, &Request::ConfigErrors)?;
    let errors: Vec<api::ConfigErrorRow> =
        serde_json::from_value(result).context("decoding the answer")?;
    if json {
        print_json(&crate::views::MonitorListOutput {
            monitors: rows,
            config_errors: errors,
        })?;
    } else {
        println!(
            "{:<16} {:<7} {:<9} {:>8} REASON",
            "NAME", "TYPE", "STATE", "SAMPLES"
        );
        for r in &rows {
            println!(
                "{:<16} {:<7} {:<9} {:>8} {}",
                r.name,
                r.kind,
                r.state,
                r.samples_received,
                r.problem().unwrap_or_default()
            );
        }
        // A monitor file that did not load is a row too, not only a line
        // at the bottom: otherwise the monitor is simply absent.
        let monitors_d = config_dir.join("monitors.d");
        for e in errors.iter().filter(|e| e.file.starts_with(&monitors_d)) {
            let name = e
                .kept_running
                .clone()
                .or_else(|| Some(e.file.file_stem()?.to_string_lossy().into_owned()))
                .unwrap_or_default();
            if rows
                .iter()
                .any(|r| r.name == name && e.kept_running.is_none())
            {
                continue;
            }
            println!(
                "{:<16} {:<7} {:<9} {:>8} file {} is broken: {}",
                name,
                "-",
                "broken",
                "-",
                e.file.strip_prefix(config_dir).unwrap_or(&e.file).display(),
                match e.line {
                    Some(line) => format!("line {line}: {}", e.message),
                    None => e.message.clone(),
                }
            );
        }
        if !errors.is_empty() {
            println!("\nconfiguration errors (`vigil check` shows them too):");
            for e in errors {
                println!("  {e}");
            }
        }
    }
    Ok(0)
}

fn load_one_monitor(config_dir: &Path, monitor: &str) -> anyhow::Result<MonitorConfig> {
    let as_file = Path::new(monitor);
    let loaded = if monitor.contains('/') || monitor.ends_with(".toml") {
        config::load_monitor_file(as_file)
    } else {
        let path = config_dir
            .join("monitors.d")
            .join(format!("{monitor}.toml"));
        if path.exists() {
            config::load_monitor_file(&path)
        } else {
            let (monitors, _) = config::load_monitors(&config_dir.join("monitors.d"));
            return monitors
                .into_iter()
                .find(|m| m.name == monitor)
                .with_context(|| {
                    format!(
                        "no monitor named {monitor:?} in {}",
                        config_dir.join("monitors.d").display()
                    )
                });
        }
    };
    match loaded {
        Ok(Some((m, _))) => Ok(m),
        Ok(None) => bail!("{monitor}: the registration says enabled = false"),
        Err(errors) => bail!(
            "{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

fn monitor_test(config_dir: &Path, monitor: &str, json: bool) -> anyhow::Result<i32> {
    let config = match load_one_monitor(config_dir, monitor) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e:#}");
            return Ok(1);
        }
    };
    let ctx = runtime_context(config_dir);
    let runtime = tokio::runtime::Runtime::new()?;
    let events = runtime.block_on(runtime::probe(&config, &ctx, true));
    let mut declared = Vec::new();
    let mut samples = Vec::new();
    let mut failures = Vec::new();
    for e in events {
        match e {
            MonitorEvent::Declared { patterns, .. } => declared = patterns,
            MonitorEvent::Samples { samples: mut s, .. } => samples.append(&mut s),
            MonitorEvent::Failed { reason, .. } => failures.push(reason),
        }
    }
    let undeclared: Vec<String> = samples
        .iter()
        .filter(|s| !declared.iter().any(|p| p.matches(&s.name)))
        .map(|s| format!("sample {} matches none of the declared patterns", s.name))
        .collect();
    failures.extend(undeclared);
    if json {
        print_json(&serde_json::json!({
            "monitor": config.name,
            "type": config.kind.type_name(),
            "declared": declared.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "samples": samples.iter().map(vigil_sdk::wire::WireSample::from).collect::<Vec<_>>(),
            "errors": failures,
        }))?;
    } else {
        println!("monitor {} ({})", config.name, config.kind.type_name());
        println!(
            "declares: {}",
            declared
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for s in &samples {
            let value = s
                .value
                .as_ref()
                .map_or("unknown".to_owned(), ToString::to_string);
            match &s.reason {
                Some(r) => println!("  {:<44} {value}  ({r})", s.name.as_str()),
                None => println!("  {:<44} {value}", s.name.as_str()),
            }
        }
        for f in &failures {
            eprintln!("error: {f}");
        }
    }
    Ok(if failures.is_empty() { 0 } else { 1 })
}

const MONITOR_TEMPLATE: &str = r#"# monitors.d/<name>.toml — one monitor registration.
# The file name does not matter; `name` must be unique and is the monitor's
# name in `vigil resls` and in logs.

name = "example"

# dylib  — a shared library built on the vigil SDK (C ABI v1)
# exec   — any program speaking the vigil line protocol on stdout
# nagios — any Nagios / monitoring-plugins check, unmodified
type = "dylib"

# dylib: a path (relative to the config dir) or a name searched as
# lib<name>.so in cluster.toml's plugin_path, beside the `vigil` executable,
# then /usr/lib/vigil/plugins. The file must not be group/world-writable and
# must be owned by root or the daemon's user.
plugin = "vigil_load"

# dylib only: "in_process" (default) or "process" (a child process of its
# own: a crash costs only this monitor's resources; restarted with backoff).
# isolation = "in_process"

# exec / nagios: the program and its arguments (no shell).
# command = ["/usr/lib/nagios/plugins/check_disk", "-w", "10%", "-c", "5%", "-p", "/"]

# exec only: "oneshot" (run each interval; default) or "stream" (run once,
# send samples whenever; restarted with backoff if it exits).
# mode = "oneshot"

# Seconds between polls (int or float) and the deadline of each poll.
interval_seconds = 5
timeout_seconds = 2

# Set to false to keep the file but not run the monitor.
# enabled = true

# Handed to the monitor as JSON; see docs/monitors/<plugin>.md.
[params]
"#;

pub(crate) const PACKAGE_TEMPLATE: &str = r#"# packages.d/<name>.toml — one package.

name = "app"
type = "failover"                   # failover | multi_node | system_multi_node
nodes = ["node1", "node2"]          # by priority; ["*"] = every node
failover_policy = "configured_node" # | min_package_node
failback_policy = "manual"          # | automatic
auto_run = true
# node_fail_fast = false            # true: a failure of the package halts the node
# priority = 10                     # lower number = more important
run = ["pkg/app/run.sh"]            # relative to the config dir
halt = ["pkg/app/halt.sh"]
run_timeout_seconds = 60
halt_timeout_seconds = 60
# follow = "other"                  # prefer the node where `other` runs
# avoid = []                        # never share a node with these

# [[service]]
# name = "server"
# command = ["/opt/app/server"]
# restarts = 3                      # 0, N or "unlimited"
# fail_fast = false                 # true: its failure halts the node at once

# [[resource]]
# name = "/net/interfaces/eth0/status"
# up = "== up"                      # ==, !=, <, <=, >, >=; "> 5 and < 10"; a list is OR'd
# evaluate = "before_start"         # | after_start
# rise = 1
# fall = 2

# [[dependency]]
# package = "db"
# condition = "up"                  # | down
# location = "same_node"            # | different_node | any_node | all_nodes

# Parts: started before run (volume groups, file systems, addresses, agents),
# released after halt in reverse.
# [[volume_group]]
# name = "vgdata"                   # vgchange -ay with tag vigil-<node>
# [[filesystem]]
# device = "/dev/vgdata/lvdata"     # or "UUID=..." / "LABEL=..."
# mount = "/srv/data"
# type = "ext4"
# options = "noatime"
# fsck = false
# [[ip]]
# address = "192.0.2.50/24"         # interface: the up one in that subnet
# [[agent]]                         # vigil template package --agent ocf:heartbeat:Dummy
# name = "dummy"
# agent = "ocf:heartbeat:Dummy"
# params = { state = "/run/app-dummy.state" }
# monitor_interval_seconds = 10
"#;
