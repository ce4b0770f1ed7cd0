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
pub mod isolated;
pub mod output;
pub mod subprocess;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::info;
use vigil_sdk::proto::{MAX_LINE_BYTES, Mode};
use vigil_sdk::{ResourcePattern, Sample, nagios};

use crate::config::{Isolation, MonitorConfig, MonitorKind};
use exec::{ExecMessage, ExecParser};
use output::{MAX_TEXT_LEN, MonitorLog, Source, cap_text};
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
    let log = MonitorLog::new(&name);
    // Every failure, from the task or from a plugin's event thread, is
    // logged through the monitor's gate: a failing monitor repeats itself
    // every interval, and that must not fill the log.
    let emit: Emit = {
        let log = log.clone();
        Arc::new(move |event: MonitorEvent| {
            if let MonitorEvent::Failed { reason, .. } = &event {
                log.failure(reason);
            }
            emit(event)
        })
    };
    let task = tokio::spawn(async move {
        match config.kind.clone() {
            MonitorKind::Dylib {
                plugin,
                isolation: Isolation::Process,
            } => run_isolated(&config, &plugin, &ctx, &emit, &log).await,
            MonitorKind::Dylib {
                plugin,
                isolation: Isolation::InProcess,
            } => run_dylib(&config, &plugin, &ctx, &emit).await,
            MonitorKind::Exec {
                command,
                mode: Mode::Oneshot,
            } => run_periodic(&config, &emit, &log, Periodic::Exec(&command)).await,
            MonitorKind::Exec {
                command,
                mode: Mode::Stream,
            } => run_stream(&config, &command, &emit, &log).await,
            MonitorKind::Nagios { command } => {
                if let Some(patterns) = nagios_patterns(&config.name, &emit) {
                    emit(declared(&config, patterns));
                    run_periodic(&config, &emit, &log, Periodic::Nagios(&command)).await;
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

/// A failure, its reason cut to [`MAX_TEXT_LEN`] like a sample's: a monitor
/// that says 900 kB of why must not have them kept, shown and logged.
/// Logging is the caller's emit's job (see [`spawn`]).
fn failed(config: &MonitorConfig, reason: impl AsRef<str>) -> MonitorEvent {
    MonitorEvent::Failed {
        monitor: config.name.clone(),
        reason: cap_text(reason.as_ref(), MAX_TEXT_LEN),
    }
}

fn nagios_patterns(name: &str, emit: &Emit) -> Option<Vec<ResourcePattern>> {
    match nagios::declared_patterns(name) {
        Ok(p) => Some(p),
        Err(e) => {
            emit(MonitorEvent::Failed {
                monitor: name.to_owned(),
                reason: cap_text(&e.to_string(), MAX_TEXT_LEN),
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

async fn run_periodic(config: &MonitorConfig, emit: &Emit, log: &MonitorLog, run: Periodic<'_>) {
    let mut ticks = ticker(config.interval);
    loop {
        let started = std::time::Instant::now();
        let events = match run {
            Periodic::Exec(command) => exec_once(config, command, log).await,
            Periodic::Nagios(command) => {
                let run = nagios_once(config, command).await;
                for dropped in &run.dropped {
                    log.warning(dropped);
                }
                run.events
            }
        };
        crate::metrics::observe_poll(&config.name, started.elapsed());
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
        let started = std::time::Instant::now();
        let polled = worker.poll(config.timeout).await;
        crate::metrics::observe_poll(&config.name, started.elapsed());
        match polled {
            Ok(samples) => emit(MonitorEvent::Samples {
                monitor: config.name.clone(),
                samples,
            }),
            Err(reason) => emit(failed(config, reason)),
        }
        ticks.tick().await;
    }
}

/// The command that serves `plugin` in a child process (see [`isolated`]).
fn isolated_command(
    config: &MonitorConfig,
    plugin: &str,
    ctx: &RuntimeContext,
) -> Result<Vec<String>, String> {
    let path =
        dylib::resolve(plugin, &ctx.config_dir, &ctx.plugin_search).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find the vigil executable to serve the plugin: {e}"))?;
    Ok(isolated::command(&exe, &path, config.timeout))
}

/// Runs a dylib monitor in a child process as a streaming exec monitor: a
/// crash ends the stream, and the stream runner makes the resources unknown
/// and restarts it with backoff.
async fn run_isolated(
    config: &MonitorConfig,
    plugin: &str,
    ctx: &RuntimeContext,
    emit: &Emit,
    log: &MonitorLog,
) {
    let mut ticks = ticker(config.interval);
    // Retries until the plugin is found: it may be installed after the host starts.
    let command = loop {
        match isolated_command(config, plugin, ctx) {
            Ok(command) => break command,
            Err(reason) => emit(failed(config, reason)),
        }
        ticks.tick().await;
    };
    info!(monitor = %config.name, "dylib monitor starting in its own process");
    run_stream(config, &command, emit, log).await;
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
                        reason: cap_text(&e.to_string(), MAX_TEXT_LEN),
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
async fn exec_once(
    config: &MonitorConfig,
    command: &[String],
    log: &MonitorLog,
) -> Vec<MonitorEvent> {
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
    let stdout = out.stdout.strip_suffix(b"\n").unwrap_or(&out.stdout);
    for bytes in stdout.split(|b| *b == b'\n') {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        match parser.feed_bytes(bytes) {
            Ok(ExecMessage::Hello(patterns)) => events.push(declared(config, patterns)),
            Ok(ExecMessage::Samples(mut s)) => samples.append(&mut s),
            Ok(ExecMessage::Error(message)) => return vec![failed(config, message)],
            Ok(ExecMessage::Log { level, message }) => {
                log.line(Source::LogMessage, level.as_deref(), &message)
            }
            Ok(ExecMessage::Nothing) => {}
            Err(reason) => return vec![failed(config, reason)],
        }
    }
    log.flush();
    if !parser.greeted() {
        return vec![failed(config, "exited without a hello line")];
    }
    events.push(MonitorEvent::Samples {
        monitor: config.name.clone(),
        samples,
    });
    events
}

/// One run of a Nagios check: exit code and output become samples, and
/// what of the output had to be dropped (each perfdata item, by label)
/// becomes a warning.
struct NagiosRun {
    events: Vec<MonitorEvent>,
    dropped: Vec<String>,
}

async fn nagios_once(config: &MonitorConfig, command: &[String]) -> NagiosRun {
    let only = |event| NagiosRun {
        events: vec![event],
        dropped: Vec::new(),
    };
    let out = match subprocess::run_once(command, None, config.timeout).await {
        Ok(out) => out,
        Err(e) => return only(failed(config, e.to_string())),
    };
    let code = match out.exit {
        Exit::Code(c) => c,
        // A check killed half way may have printed perfdata from before it
        // broke, or nonsense: none of it is trusted.
        Exit::Signal(_) | Exit::TimedOut | Exit::OutputTooLarge => {
            return only(failed(config, out.describe_failure(config.timeout)));
        }
    };
    let output = nagios::CheckOutput::parse(Some(code), &String::from_utf8_lossy(&out.stdout));
    match nagios::samples(&config.name, &output) {
        Ok(result) => NagiosRun {
            events: vec![MonitorEvent::Samples {
                monitor: config.name.clone(),
                samples: result.samples,
            }],
            dropped: result
                .errors
                .iter()
                .map(|e| cap_text(&e.to_string(), MAX_TEXT_LEN))
                .collect(),
        },
        Err(e) => only(failed(config, e.to_string())),
    }
}

/// Longest stderr line of a streaming monitor read whole (and then cut to
/// [`MAX_TEXT_LEN`] in the log); a longer one is logged as a note.
const MAX_STDERR_LINE: usize = 4096;

/// Longest a streaming monitor waits before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A stream that ran this long without failing resets its backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs a streaming exec monitor for ever, restarting it with exponential
/// backoff (1 s doubling to 60 s) whenever it exits or misbehaves.
async fn run_stream(config: &MonitorConfig, command: &[String], emit: &Emit, log: &MonitorLog) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = tokio::time::Instant::now();
        let reason = stream_once(config, command, emit, log, None).await;
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
    log: &MonitorLog,
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
    let stderr_task = child.stderr.take().map(|stderr| {
        let log = log.clone();
        tokio::spawn(async move {
            // Read all of it, whatever is logged: a child blocked on a full
            // stderr pipe would stop sending samples.
            let mut lines = BoundedLines::new(stderr, MAX_STDERR_LINE);
            loop {
                // A quiet second reports what a flood that stopped dropped.
                let next =
                    match tokio::time::timeout(Duration::from_secs(1), lines.next_line()).await {
                        Ok(next) => next,
                        Err(_) => {
                            log.flush();
                            continue;
                        }
                    };
                match next {
                    Ok(Some(line)) => log.line(Source::Stderr, None, &line),
                    Err(subprocess::LineError::TooLong(max)) => log.line(
                        Source::Stderr,
                        None,
                        &format!("(a line longer than {max} bytes, not shown)"),
                    ),
                    Ok(None) | Err(subprocess::LineError::Io(_)) => break,
                }
            }
            log.flush();
        })
    });
    // Piped in `spawn`, so present.
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BoundedLines::new(stdout, MAX_LINE_BYTES);
    let mut parser = ExecParser::new(Mode::Stream);
    // What the monitor last said was wrong: a monitor that explains itself
    // and exits is reported with its explanation, not only its exit status.
    let mut last_error: Option<String> = None;
    let reason = loop {
        let next = if parser.greeted() {
            Ok(lines.next_line_bytes().await)
        } else {
            tokio::time::timeout(config.timeout, lines.next_line_bytes()).await
        };
        let bytes = match next {
            Err(_) => break format!("no hello within {:?}", config.timeout),
            Ok(Err(e)) => break format!("stdout: {e}"),
            Ok(Ok(None)) => {
                let status = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
                break match status {
                    Ok(Ok(s)) => match &last_error {
                        Some(said) => format!("{said} (then exited: {s})"),
                        None => format!("exited ({s})"),
                    },
                    _ => "closed stdout".to_owned(),
                };
            }
            Ok(Ok(Some(bytes))) => bytes,
        };
        match parser.feed_bytes(&bytes) {
            Ok(ExecMessage::Hello(patterns)) => emit(declared(config, patterns)),
            Ok(ExecMessage::Samples(samples)) => {
                last_error = None;
                emit(MonitorEvent::Samples {
                    monitor: config.name.clone(),
                    samples,
                });
                if until_samples.is_some() {
                    break String::new();
                }
            }
            Ok(ExecMessage::Error(message)) => {
                emit(failed(config, &message));
                last_error = Some(message);
            }
            Ok(ExecMessage::Log { level, message }) => {
                log.line(Source::LogMessage, level.as_deref(), &message)
            }
            Ok(ExecMessage::Nothing) => {}
            // A bad line makes the resources unknown; the stream goes on, and
            // its next good samples bring them back.
            Err(reason) if parser.greeted() => emit(failed(config, reason)),
            Err(reason) => break reason,
        }
    };
    subprocess::kill_and_reap(&group, &mut child).await;
    if let Some(task) = stderr_task {
        // The group is dead, so stderr is at its end or nearly.
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
    log.flush();
    reason
}

/// Runs a monitor once outside the daemon (for `vigil check` and
/// `vigil monitor test`) and returns its events in order. With `poll`
/// false only the declaration is asked for (exec monitors still run once,
/// since their hello comes from the program).
pub async fn probe(config: &MonitorConfig, ctx: &RuntimeContext, poll: bool) -> Vec<MonitorEvent> {
    let config = &resolve_command(config.clone(), ctx);
    let log = MonitorLog::new(&config.name);
    let collected = Arc::new(std::sync::Mutex::new(Vec::new()));
    let emit: Emit = {
        let collected = Arc::clone(&collected);
        Arc::new(move |e| collected.lock().unwrap_or_else(|p| p.into_inner()).push(e))
    };
    match &config.kind {
        MonitorKind::Dylib {
            plugin,
            isolation: Isolation::Process,
        } => match isolated_command(config, plugin, ctx) {
            Ok(command) => {
                let budget = config.timeout.max(config.interval) + config.timeout;
                match tokio::time::timeout(
                    budget,
                    stream_once(config, &command, &emit, &log, Some(())),
                )
                .await
                {
                    Ok(reason) if reason.is_empty() => {}
                    Ok(reason) => emit(failed(config, reason)),
                    Err(_) => emit(failed(config, format!("no samples within {budget:?}"))),
                }
            }
            Err(reason) => emit(failed(config, reason)),
        },
        MonitorKind::Dylib {
            plugin,
            isolation: Isolation::InProcess,
        } => match start_dylib(config, plugin, ctx, None).await {
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
            for e in exec_once(config, command, &log).await {
                emit(e);
            }
        }
        MonitorKind::Exec {
            command,
            mode: Mode::Stream,
        } => {
            let budget = config.timeout.max(config.interval) + config.timeout;
            match tokio::time::timeout(budget, stream_once(config, command, &emit, &log, Some(())))
                .await
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
                    let run = nagios_once(config, command).await;
                    for e in run.events {
                        emit(e);
                    }
                    // For `monitor test`, every dropped item is an error.
                    for reason in run.dropped {
                        emit(failed(config, reason));
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
