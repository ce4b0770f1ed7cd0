//! The one validation that `vigil check` prints and `vigil host` acts on, at
//! startup and on every reload, so that the two never disagree.
//!
//! [`validate`] reads the configuration directory off the caller's thread
//! (a blocking task with a deadline: a file on a hung file system must not
//! stop the host's main loop), probes every monitor once for its declared
//! patterns (each probe has its monitor's own deadline), checks that every
//! package and hook program is executable, and cross-checks the packages against the
//! nodes and the declared resources. Every error carries `file:line`.
//!
//! It decides nothing about a running host: what to keep, start or leave out
//! on a reload is `daemon`'s. It only says which packages are left out,
//! since that follows from the errors alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use vigil_sdk::ResourcePattern;

use crate::config::{self, Config, ConfigError};
use crate::runtime::{self, MonitorEvent, RuntimeContext};

/// How long reading the configuration directory may take. Files are opened
/// without blocking (see `config::SourceFile::read`), so only a stuck file
/// system gets near it.
pub const READ_DEADLINE: Duration = Duration::from_secs(10);

/// How long the host waits for one monitor's probe when it starts or
/// reloads. A host restart must stay well inside the guard's margin (half
/// the lease TTL) so the guard hands over instead of halting the packages;
/// a monitor that takes longer (an exec monitor that runs for seconds) is
/// not waited for, and since its declarations are not known then, the
/// host does not refuse packages for undeclared resources on that start.
/// `vigil check` waits each monitor's own timeout.
pub const HOST_PROBE_DEADLINE: Duration = Duration::from_millis(500);

/// The outcome of [`validate`] when `cluster.toml` is usable.
#[derive(Debug)]
pub struct Validated {
    /// What loaded, with every package that has an error left out.
    pub config: Config,
    /// Every error, in the order `vigil check` prints them: file errors,
    /// monitor probes, package programs, package cross-checks.
    pub errors: Vec<ConfigError>,
    /// Errors of packages that are left out only because a package they
    /// name was left out (not printed by `check`, which names the cause).
    pub consequences: Vec<ConfigError>,
    /// Monitors whose declarations overlap another's: a resource both can
    /// name has one publisher, the other's samples are refused. Printed by
    /// `check` (and so exit 1) and shown by `status` and `monitor list`,
    /// but neither monitor is left out or kept at an old version for it.
    pub duplicates: Vec<ConfigError>,
    /// How many monitors were probed.
    pub monitors: usize,
    /// Monitors whose probe did not finish within the probe deadline.
    pub unprobed: Vec<String>,
    /// The text of every package file that validated, by file name: what
    /// `vigil apply` (and a reload on one node) stores as the package set.
    pub package_texts: BTreeMap<String, String>,
}

impl Validated {
    /// The files that have an error.
    pub fn broken_files(&self) -> BTreeSet<&Path> {
        self.errors.iter().map(|e| e.file.as_path()).collect()
    }

    /// The package files (by file name) left out for an error of their own
    /// or of a package they name.
    pub fn broken_package_files(&self) -> BTreeSet<String> {
        let dir = self.config.cluster.dir.join("packages.d");
        self.errors
            .iter()
            .chain(&self.consequences)
            .filter(|e| e.file.parent() == Some(dir.as_path()))
            .map(|e| crate::package::applied::file_name(&e.file))
            .collect()
    }
}

/// The runtime context monitors of `config` are resolved in.
pub fn runtime_context(cluster: &config::ClusterConfig) -> RuntimeContext {
    RuntimeContext {
        config_dir: cluster.dir.clone(),
        plugin_search: runtime::dylib::search_path(&cluster.plugin_path),
    }
}

/// Loads and validates everything under `dir`. `Err` when `cluster.toml`
/// itself is unusable (or the directory could not be read in time).
///
/// `probe_deadline` bounds each monitor's probe (the host's start and
/// reload pass [`HOST_PROBE_DEADLINE`]); `None` waits for the monitor's own
/// deadline, as `vigil check` does.
pub async fn validate(
    dir: &Path,
    probe_deadline: Option<Duration>,
) -> Result<Validated, Vec<ConfigError>> {
    let owned = dir.to_owned();
    let read = tokio::task::spawn_blocking(move || {
        let mut config = config::load(&owned)?;
        let mut programs = hook_program_errors(&mut config.cluster);
        programs.extend(program_errors(&config));
        Ok::<_, Vec<ConfigError>>((config, programs))
    });
    let (mut config, program_errors) = match tokio::time::timeout(READ_DEADLINE, read).await {
        Ok(Ok(result)) => result?,
        Ok(Err(e)) => {
            return Err(vec![ConfigError::file(
                dir,
                format!("reading the configuration failed: {e}"),
            )]);
        }
        Err(_) => {
            return Err(vec![ConfigError::file(
                dir,
                format!(
                    "reading the configuration did not finish within {}s",
                    READ_DEADLINE.as_secs()
                ),
            )]);
        }
    };
    let mut errors = std::mem::take(&mut config.errors);

    // Probes run at once; each has its monitor's own deadline.
    let ctx = runtime_context(&config.cluster);
    let probes: Vec<_> = config
        .monitors
        .iter()
        .map(|m| {
            let (m, ctx) = (m.clone(), ctx.clone());
            tokio::spawn(async move { runtime::probe(&m, &ctx, false).await })
        })
        .collect();
    let mut declared: Vec<ResourcePattern> = Vec::new();
    let mut by_monitor: Vec<(&config::MonitorConfig, Vec<ResourcePattern>)> = Vec::new();
    let mut unprobed = Vec::new();
    let started = tokio::time::Instant::now();
    for (monitor, mut probe) in config.monitors.iter().zip(probes) {
        let joined = match probe_deadline {
            None => probe.await,
            Some(deadline) => match tokio::time::timeout_at(started + deadline, &mut probe).await {
                Ok(joined) => joined,
                Err(_) => {
                    // Dropping the probe's run kills its process group.
                    probe.abort();
                    unprobed.push(monitor.name.clone());
                    continue;
                }
            },
        };
        let events = joined.unwrap_or_else(|e| {
            vec![MonitorEvent::Failed {
                monitor: monitor.name.clone(),
                reason: format!("probe task failed: {e}"),
            }]
        });
        for event in events {
            match event {
                MonitorEvent::Failed { reason, .. } => errors.push(ConfigError::at(
                    &monitor.source,
                    monitor.line,
                    format!("monitor {}: {reason}", monitor.name),
                )),
                MonitorEvent::Declared { patterns, .. } => {
                    declared.extend(patterns.iter().cloned());
                    by_monitor.push((monitor, patterns));
                }
                MonitorEvent::Samples { .. } => {}
            }
        }
    }
    errors.extend(program_errors);
    let duplicates = duplicate_publishers(&config.cluster.dir, &by_monitor);
    // A monitor not probed in time may declare anything.
    let is_declared = |name: &vigil_sdk::ResourceName| {
        !unprobed.is_empty() || declared.iter().any(|p| p.matches(name))
    };
    errors.extend(config::package::check_packages(
        &config.packages,
        &config.cluster.nodes,
        is_declared,
    ));

    // Leave out every package with an error, then again those that only
    // failed because of what was left out, until nothing changes.
    let mut consequences = Vec::new();
    let mut broken: BTreeSet<PathBuf> = errors.iter().map(|e| e.file.clone()).collect();
    loop {
        config.packages.retain(|p| !broken.contains(&p.source));
        let again =
            config::package::check_packages(&config.packages, &config.cluster.nodes, is_declared);
        if again.is_empty() {
            break;
        }
        broken.extend(again.iter().map(|e| e.file.clone()));
        consequences.extend(again);
    }
    // The texts of what validated, read off the caller's thread like the
    // rest (a file changed since is parsed again wherever it is applied).
    let sources: Vec<PathBuf> = config.packages.iter().map(|p| p.source.clone()).collect();
    let package_texts = match tokio::time::timeout(
        READ_DEADLINE,
        tokio::task::spawn_blocking(move || {
            sources
                .iter()
                .filter_map(|path| {
                    let file = config::SourceFile::read(path).ok()?;
                    Some((crate::package::applied::file_name(path), file.text))
                })
                .collect::<BTreeMap<_, _>>()
        }),
    )
    .await
    {
        Ok(Ok(texts)) => texts,
        _ => BTreeMap::new(),
    };
    Ok(Validated {
        duplicates,
        package_texts,
        unprobed,
        monitors: config.monitors.len(),
        config,
        errors,
        consequences,
    })
}

/// Every `[[hook]]` whose program is not an executable file, left out of
/// `cluster` (the host runs without it; `vigil check` fails on it).
fn hook_program_errors(cluster: &mut config::ClusterConfig) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    cluster.hooks.retain(|h| {
        let program = h.command.first().map(String::as_str).unwrap_or_default();
        match runtime::check_executable(program) {
            Ok(()) => true,
            Err(e) => {
                errors.push(ConfigError::at(
                    &h.source,
                    h.line,
                    format!("hook {}: command: {e}", h.name),
                ));
                false
            }
        }
    });
    errors
}

/// One error per pair of monitors whose declarations overlap, at the one
/// listed later, naming both files.
fn duplicate_publishers(
    dir: &Path,
    monitors: &[(&config::MonitorConfig, Vec<ResourcePattern>)],
) -> Vec<ConfigError> {
    let shown = |m: &config::MonitorConfig| {
        let file = m.source.strip_prefix(dir).unwrap_or(&m.source);
        format!("{}:{}", file.display(), m.line)
    };
    crate::registry::duplicate_publishers(
        monitors
            .iter()
            .map(|(m, patterns)| (m.name.as_str(), patterns.as_slice())),
    )
    .into_iter()
    .filter_map(|d| {
        let find = |name: &str| {
            monitors
                .iter()
                .find(|(m, _)| m.name == name)
                .map(|(m, _)| *m)
        };
        let (first, second) = (find(&d.first.0)?, find(&d.second.0)?);
        Some(ConfigError::at(
            &second.source,
            second.line,
            format!(
                "duplicate publisher: monitor {} declares {}, and monitor {} ({}) declares {}: \
                 a resource has one publisher, the samples of the other are refused; \
                 declare each resource in one monitor only",
                second.name,
                d.second.1,
                first.name,
                shown(first),
                d.first.1,
            ),
        ))
    })
    .collect()
}

/// Every package program that is not an executable file.
fn program_errors(config: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for p in &config.packages {
        let programs = [("run", &p.run), ("halt", &p.halt)]
            .into_iter()
            .map(|(what, argv)| (what.to_owned(), argv))
            .chain(
                p.services
                    .iter()
                    .map(|s| (format!("service {}", s.name), &s.command)),
            );
        for part in &p.parts {
            if let crate::package::parts::Part::Agent(agent) = &part.part {
                let root = crate::package::parts::ocf_root();
                let checked = crate::package::parts::ocf::agent_path(&root, &agent.agent)
                    .ok_or_else(|| "not of the form ocf:<provider>:<type>".to_owned())
                    .and_then(|path| {
                        runtime::check_executable(&path.display().to_string())
                            .map_err(|e| e.to_string())
                    });
                if let Err(e) = checked {
                    errors.push(ConfigError::at(
                        &p.source,
                        part.line,
                        format!(
                            "package {}: agent {} ({}): {e}",
                            p.name, agent.name, agent.agent
                        ),
                    ));
                }
            }
        }
        for (what, argv) in programs {
            let Some(program) = argv.first() else {
                continue;
            };
            if let Err(e) = runtime::check_executable(program) {
                errors.push(ConfigError::at(
                    &p.source,
                    p.lines.name,
                    format!("package {}: {what}: {e}", p.name),
                ));
            }
        }
    }
    errors
}
