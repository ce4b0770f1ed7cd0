//! The monitor runtime: runs every configured monitor on its schedule and
//! reports what it learns as [`MonitorEvent`]s.
//!
//! One tokio task per monitor owns its schedule (interval, first-tick jitter,
//! timeout). Dylib monitors poll on a worker thread and may push events on
//! their own ([`dylib`]); exec and nagios monitors are subprocesses
//! ([`subprocess`]), one-shot per interval or, for streaming exec monitors,
//! long-running and restarted with backoff when they exit. A monitor that
//! fails, hangs or talks nonsense yields a [`MonitorEvent::Failed`], which
//! makes its resources unknown; no other monitor is affected.
//!
//! The runtime does not keep resource state or judge values: it only
//! reports. The registry ([`crate::registry`]) decides what a report means.

pub mod dylib;
pub mod exec;
pub mod subprocess;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use vigil_sdk::proto::{MAX_LINE_BYTES, Mode};
use vigil_sdk::{ResourcePattern, Sample, nagios};

use crate::config::{MonitorConfig, MonitorKind};
use exec::{ExecMessage, ExecParser};
use subprocess::{BoundedLines, Exit};

/// What a monitor reported.
#[derive(Debug, Clone, PartialEq)]
pub enum MonitorEvent {
    /// The monitor is configured and publishes these patterns.
    Declared {
        monitor: String,
        kind: &'static str,
        patterns: Vec<ResourcePattern>,
    },
    Samples {
        monitor: String,
        samples: Vec<Sample>,
    },
    /// The monitor could not be read; its resources are unknown for `reason`.
    Failed { monitor: String, reason: String },
}

/// Where monitor events go; called from tasks and plugin threads alike.
pub type Emit = Arc<dyn Fn(MonitorEvent) + Send + Sync>;

/// Paths monitors are resolved against.
#[derive(Debug, Clone)]
pub struct RuntimeContext {
    pub config_dir: PathBuf,
    pub plugin_search: Vec<PathBuf>,
}

/// A running monitor; dropping it stops the monitor (and kills its
/// subprocesses, and stops its plugin's event threads).
#[derive(Debug)]
pub struct RunningMonitor {
    pub name: String,
    task: JoinHandle<()>,
}

impl Drop for RunningMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts `config` on the current tokio runtime.
pub fn spawn(config: MonitorConfig, ctx: RuntimeContext, emit: Emit) -> RunningMonitor {
    let config = resolve_command(config, &ctx);
    let name = config.name.clone();
    let task = tokio::spawn(async move {
        match config.kind.clone() {
            MonitorKind::Dylib { plugin } => run_dylib(&config, &plugin, &ctx, &emit).await,
            MonitorKind::Exec {
                command,
                mode: Mode::Oneshot,
            } => run_periodic(&config, &emit, Periodic::Exec(&command)).await,
            MonitorKind::Exec {
                command,
                mode: Mode::Stream,
            } => run_stream(&config, &command, &emit).await,
            MonitorKind::Nagios { command } => {
                if let Some(patterns) = nagios_patterns(&config.name, &emit) {
                    emit(declared(&config, patterns));
                    run_periodic(&config, &emit, Periodic::Nagios(&command)).await;
                }
            }
        }
    });
    RunningMonitor { name, task }
}

/// Resolves a relative program path (one with a `/`) against the config
/// dir, so `plugins/examples/x.sh` works wherever the daemon was started.
fn resolve_command(mut config: MonitorConfig, ctx: &RuntimeContext) -> MonitorConfig {
    if let MonitorKind::Exec { command, .. } | MonitorKind::Nagios { command } = &mut config.kind
        && let Some(program) = command.first_mut()
        && program.contains('/')
        && !program.starts_with('/')
    {
        *program = ctx.config_dir.join(&*program).display().to_string();
    }
    config
}

fn declared(config: &MonitorConfig, patterns: Vec<ResourcePattern>) -> MonitorEvent {
    MonitorEvent::Declared {
        monitor: config.name.clone(),
        kind: config.kind.type_name(),
        patterns,
    }
}

fn failed(config: &MonitorConfig, reason: impl Into<String>) -> MonitorEvent {
    let reason = reason.into();
    warn!(monitor = %config.name, %reason, "monitor failed");
    MonitorEvent::Failed {
        monitor: config.name.clone(),
        reason,
    }
}

fn nagios_patterns(name: &str, emit: &Emit) -> Option<Vec<ResourcePattern>> {
    match nagios::declared_patterns(name) {
        Ok(p) => Some(p),
        Err(e) => {
            emit(MonitorEvent::Failed {
                monitor: name.to_owned(),
                reason: e.to_string(),
            });
            None
        }
    }
}

/// The delay before the second poll: the interval plus up to 10 % (at most
/// 1 s), so monitors started together drift apart instead of polling in step.
fn first_tick_jitter(interval: Duration) -> Duration {
    let max = (interval / 10).min(Duration::from_secs(1));
    let nanos = max.as_nanos() as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::random::<u64>() % nanos)
}

fn ticker(interval: Duration) -> tokio::time::Interval {
    let start = tokio::time::Instant::now() + interval + first_tick_jitter(interval);
    let mut ticks = tokio::time::interval_at(start, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

/// Polls at once, then every interval, emitting whatever each run reports.
/// A monitor run as a fresh process each interval.
enum Periodic<'a> {
    Exec(&'a [String]),
    Nagios(&'a [String]),
}

async fn run_periodic(config: &MonitorConfig, emit: &Emit, run: Periodic<'_>) {
    let mut ticks = ticker(config.interval);
    loop {
        let events = match run {
            Periodic::Exec(command) => exec_once(config, command).await,
            Periodic::Nagios(command) => nagios_once(config, command).await,
        };
        for event in events {
            emit(event);
        }
        ticks.tick().await;
    }
}

async fn run_dylib(config: &MonitorConfig, plugin: &str, ctx: &RuntimeContext, emit: &Emit) {
    let mut ticks = ticker(config.interval);
    // Retries until the plugin loads: it may be installed after the host starts.
    let worker = loop {
        match start_dylib(config, plugin, ctx, Some(emit.clone())).await {
            Ok((worker, patterns)) => {
                info!(monitor = %config.name, "dylib monitor started");
                emit(declared(config, patterns));
                break worker;
            }
            Err(reason) => emit(failed(config, reason)),
        }
        ticks.tick().await;
    };
    loop {
        match worker.poll(config.timeout).await {
            Ok(samples) => emit(MonitorEvent::Samples {
                monitor: config.name.clone(),
                samples,
            }),
            Err(reason) => emit(failed(config, reason)),
        }
        ticks.tick().await;
    }
}

async fn start_dylib(
    config: &MonitorConfig,
    plugin: &str,
    ctx: &RuntimeContext,
    events: Option<Emit>,
) -> Result<(dylib::DylibWorker, Vec<ResourcePattern>), String> {
    let path =
        dylib::resolve(plugin, &ctx.config_dir, &ctx.plugin_search).map_err(|e| e.to_string())?;
    let loaded = dylib::Plugin::load(&path).map_err(|e| e.to_string())?;
    let handler = events.map(|emit| {
        let name = config.name.clone();
        Box::new(
            move |batch: Result<Vec<Sample>, vigil_sdk::abi::AbiError>| {
                emit(match batch {
                    Ok(samples) => MonitorEvent::Samples {
                        monitor: name.clone(),
                        samples,
                    },
                    Err(e) => MonitorEvent::Failed {
                        monitor: name.clone(),
                        reason: e.to_string(),
                    },
                })
            },
        ) as vigil_sdk::abi::PushHandler
    });
    let started = dylib::DylibWorker::start(
        &config.name,
        loaded,
        &config.params,
        config.timeout,
        handler,
    )
    .await
    .map_err(|e| format!("plugin {}: {e}", path.display()))?;
    Ok((started.worker, started.declared))
}

/// One run of a one-shot exec monitor.
async fn exec_once(config: &MonitorConfig, command: &[String]) -> Vec<MonitorEvent> {
    let hello = exec::host_hello(&config.name, Mode::Oneshot, config.interval, &config.params);
    let out = match subprocess::run_once(command, Some(&hello), config.timeout).await {
        Ok(out) => out,
        Err(e) => return vec![failed(config, e.to_string())],
    };
    if out.exit != Exit::Code(0) {
        return vec![failed(config, out.describe_failure(config.timeout))];
    }
    let mut parser = ExecParser::new(Mode::Oneshot);
    let mut events = Vec::new();
    let mut samples = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        match parser.feed(line) {
            Ok(ExecMessage::Hello(patterns)) => events.push(declared(config, patterns)),
            Ok(ExecMessage::Samples(mut s)) => samples.append(&mut s),
            Ok(ExecMessage::Error(message)) => return vec![failed(config, message)],
            Ok(ExecMessage::Log { message, .. }) => {
                info!(monitor = %config.name, %message, "monitor log")
            }
            Ok(ExecMessage::Nothing) => {}
            Err(reason) => return vec![failed(config, reason)],
        }
    }
    if !parser.greeted() {
        return vec![failed(config, "exited without a hello line")];
    }
    events.push(MonitorEvent::Samples {
        monitor: config.name.clone(),
        samples,
    });
    events
}

/// One run of a Nagios check: exit code and output become samples.
async fn nagios_once(config: &MonitorConfig, command: &[String]) -> Vec<MonitorEvent> {
    let out = match subprocess::run_once(command, None, config.timeout).await {
        Ok(out) => out,
        Err(e) => return vec![failed(config, e.to_string())],
    };
    let code = match out.exit {
        Exit::Code(c) => Some(c),
        Exit::Signal(_) => None,
        Exit::TimedOut | Exit::OutputTooLarge => {
            return vec![failed(config, out.describe_failure(config.timeout))];
        }
    };
    let output = nagios::CheckOutput::parse(code, &String::from_utf8_lossy(&out.stdout));
    match nagios::samples(&config.name, &output) {
        Ok(result) => {
            for error in &result.errors {
                debug!(monitor = %config.name, %error, "perfdata item skipped");
            }
            vec![MonitorEvent::Samples {
                monitor: config.name.clone(),
                samples: result.samples,
            }]
        }
        Err(e) => vec![failed(config, e.to_string())],
    }
}

/// Longest a streaming monitor waits before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A stream that ran this long without failing resets its backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs a streaming exec monitor for ever, restarting it with exponential
/// backoff (1 s doubling to 60 s) whenever it exits or misbehaves.
async fn run_stream(config: &MonitorConfig, command: &[String], emit: &Emit) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = tokio::time::Instant::now();
        let reason = stream_once(config, command, emit, None).await;
        emit(failed(config, reason));
        if started.elapsed() >= HEALTHY_RUN {
            backoff = Duration::from_secs(1);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Runs a streaming monitor until it fails (returns why) or, with
/// `until_samples`, until its first batch of samples (returns "").
async fn stream_once(
    config: &MonitorConfig,
    command: &[String],
    emit: &Emit,
    until_samples: Option<()>,
) -> String {
    let mut child = match subprocess::spawn(command, true) {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    let group = subprocess::ProcessGroup::of(&child);
    let hello = exec::host_hello(&config.name, Mode::Stream, config.interval, &config.params);
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(&hello).await;
    }
    if let Some(stderr) = child.stderr.take() {
        let name = config.name.clone();
        tokio::spawn(async move {
            let mut lines = BoundedLines::new(stderr, 4096);
            while let Ok(Some(line)) = lines.next_line().await {
                info!(monitor = %name, line = %line, "monitor stderr");
            }
        });
    }
    // Piped in `spawn`, so present.
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BoundedLines::new(stdout, MAX_LINE_BYTES);
    let mut parser = ExecParser::new(Mode::Stream);
    let reason = loop {
        let next = if parser.greeted() {
            Ok(lines.next_line().await)
        } else {
            tokio::time::timeout(config.timeout, lines.next_line()).await
        };
        let line = match next {
            Err(_) => break format!("no hello within {:?}", config.timeout),
            Ok(Err(e)) => break format!("stdout: {e}"),
            Ok(Ok(None)) => {
                let status = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
                break match status {
                    Ok(Ok(s)) => format!("exited ({s})"),
                    _ => "closed stdout".to_owned(),
                };
            }
            Ok(Ok(Some(line))) => line,
        };
        match parser.feed(&line) {
            Ok(ExecMessage::Hello(patterns)) => emit(declared(config, patterns)),
            Ok(ExecMessage::Samples(samples)) => {
                emit(MonitorEvent::Samples {
                    monitor: config.name.clone(),
                    samples,
                });
                if until_samples.is_some() {
                    break String::new();
                }
            }
            Ok(ExecMessage::Error(message)) => emit(failed(config, message)),
            Ok(ExecMessage::Log { message, .. }) => {
                info!(monitor = %config.name, %message, "monitor log")
            }
            Ok(ExecMessage::Nothing) => {}
            // A bad line makes the resources unknown; the stream goes on, and
            // its next good samples bring them back.
            Err(reason) if parser.greeted() => emit(failed(config, reason)),
            Err(reason) => break reason,
        }
    };
    subprocess::kill_and_reap(&group, &mut child).await;
    reason
}

/// Runs a monitor once outside the daemon (for `vigil check` and
/// `vigil monitor test`) and returns its events in order. With `poll`
/// false only the declaration is asked for (exec monitors still run once,
/// since their hello comes from the program).
pub async fn probe(config: &MonitorConfig, ctx: &RuntimeContext, poll: bool) -> Vec<MonitorEvent> {
    let config = &resolve_command(config.clone(), ctx);
    let collected = Arc::new(std::sync::Mutex::new(Vec::new()));
    let emit: Emit = {
        let collected = Arc::clone(&collected);
        Arc::new(move |e| collected.lock().unwrap_or_else(|p| p.into_inner()).push(e))
    };
    match &config.kind {
        MonitorKind::Dylib { plugin } => match start_dylib(config, plugin, ctx, None).await {
            Ok((worker, patterns)) => {
                emit(declared(config, patterns));
                if poll {
                    match worker.poll(config.timeout).await {
                        Ok(samples) => emit(MonitorEvent::Samples {
                            monitor: config.name.clone(),
                            samples,
                        }),
                        Err(reason) => emit(failed(config, reason)),
                    }
                }
            }
            Err(reason) => emit(failed(config, reason)),
        },
        MonitorKind::Exec {
            command,
            mode: Mode::Oneshot,
        } => {
            for e in exec_once(config, command).await {
                emit(e);
            }
        }
        MonitorKind::Exec {
            command,
            mode: Mode::Stream,
        } => {
            let budget = config.timeout.max(config.interval) + config.timeout;
            match tokio::time::timeout(budget, stream_once(config, command, &emit, Some(()))).await
            {
                Ok(reason) if reason.is_empty() => {}
                Ok(reason) => emit(failed(config, reason)),
                Err(_) => emit(failed(config, format!("no samples within {budget:?}"))),
            }
        }
        MonitorKind::Nagios { command } => {
            if let Some(patterns) = nagios_patterns(&config.name, &emit) {
                emit(declared(config, patterns));
                if poll {
                    for e in nagios_once(config, command).await {
                        emit(e);
                    }
                } else if let Err(e) = check_executable(&command[0]) {
                    emit(failed(config, e));
                }
            }
        }
    }
    collected.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

pub(crate) fn check_executable(program: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let path = if program.contains('/') {
        Some(PathBuf::from(program))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
    };
    match path.map(|p| std::fs::metadata(&p).map(|m| (p, m))) {
        Some(Ok((_, m))) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Some(Ok((p, _))) => Err(format!("{} is not an executable file", p.display())),
        Some(Err(e)) => Err(format!("{program}: {e}")),
        None => Err(format!("{program}: not found in PATH")),
    }
}
