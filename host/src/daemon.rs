//! The node daemon (`vigil host`): one main loop driven by one closed event
//! enum.
//!
//! Monitor tasks, plugin threads, the API server and signal handlers only
//! send [`Event`]s; the loop owns all state (registry, running monitors) and
//! is the only place that changes it, so no locks guard it and every event is
//! handled in arrival order. Channels are unbounded so that no sample is
//! dropped between a monitor and the registry.
//!
//! Startup is a reload from empty: [`Topology::reconcile`] diffs the wanted
//! monitors against the running ones and starts, stops or restarts them; a
//! SIGHUP reload goes through the same path.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use vigil_sdk::now_ms;

use crate::api::{self, ApiCall, Request, Response};
use crate::config::{self, Config, MonitorConfig};
use crate::hub::ResourceHub;
use crate::registry::Registry;
use crate::runtime::{self, MonitorEvent, RunningMonitor, RuntimeContext};

/// Everything the main loop reacts to.
#[derive(Debug)]
pub enum Event {
    Monitor(MonitorEvent),
    Api(ApiCall),
    /// Re-read the configuration directory (SIGHUP).
    Reload,
    /// Stop (SIGTERM, SIGINT).
    Shutdown,
}

/// The running monitors and the configs they were started from.
pub struct Topology {
    running: BTreeMap<String, (MonitorConfig, RunningMonitor)>,
    ctx: RuntimeContext,
    events: mpsc::UnboundedSender<Event>,
}

impl Topology {
    pub fn new(ctx: RuntimeContext, events: mpsc::UnboundedSender<Event>) -> Self {
        Self {
            running: BTreeMap::new(),
            ctx,
            events,
        }
    }

    /// Makes the running monitors match `wanted`: removed and changed ones
    /// stop (their resources leave the registry), new and changed ones start.
    pub fn reconcile(&mut self, wanted: &[MonitorConfig], registry: &mut Registry) {
        let keep: BTreeMap<&str, &MonitorConfig> =
            wanted.iter().map(|m| (m.name.as_str(), m)).collect();
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(name, (cfg, _))| keep.get(name.as_str()) != Some(&cfg))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            info!(monitor = %name, "stopping monitor");
            self.running.remove(&name);
            registry.remove_monitor(&name);
        }
        for cfg in wanted {
            if self.running.contains_key(&cfg.name) {
                continue;
            }
            info!(monitor = %cfg.name, kind = cfg.kind.type_name(), "starting monitor");
            registry.register_monitor(&cfg.name, cfg.kind.type_name());
            let events = self.events.clone();
            let emit: runtime::Emit = Arc::new(move |e| {
                let _ = events.send(Event::Monitor(e));
            });
            let handle = runtime::spawn(cfg.clone(), self.ctx.clone(), emit);
            self.running.insert(cfg.name.clone(), (cfg.clone(), handle));
        }
    }
}

/// Options of `vigil host`.
#[derive(Debug, Clone)]
pub struct HostOptions {
    pub config_dir: PathBuf,
    pub node: Option<String>,
}

/// The node name: `--node`, else the only node of a one-node cluster, else
/// the hostname; it must be listed in cluster.nodes.
pub fn resolve_node(config: &Config, requested: Option<&str>) -> anyhow::Result<String> {
    let nodes = &config.cluster.nodes;
    let node = match requested {
        Some(n) => n.to_owned(),
        None if nodes.len() == 1 => nodes[0].clone(),
        None => nix::unistd::gethostname()
            .context("reading the hostname")?
            .to_string_lossy()
            .into_owned(),
    };
    if !nodes.contains(&node) {
        anyhow::bail!(
            "node {node:?} is not in cluster.nodes ({}) of {}; pass --node",
            nodes.join(", "),
            config.cluster.dir.join("cluster.toml").display()
        );
    }
    Ok(node)
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(options: HostOptions) -> anyhow::Result<()> {
    let config = config::load(&options.config_dir).map_err(|errors| {
        anyhow::anyhow!(
            "invalid configuration:\n{}",
            errors
                .iter()
                .map(|e| format!("  {e}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    for e in &config.errors {
        error!(error = %e, "monitor left out");
    }
    let node = resolve_node(&config, options.node.as_deref())?;
    let (events, mut inbox) = mpsc::unbounded_channel::<Event>();

    let socket = config.cluster.api.socket.clone();
    let listener = api::bind(&socket)?;
    let (calls_tx, mut calls_rx) = mpsc::unbounded_channel::<ApiCall>();
    tokio::spawn(api::serve(listener, calls_tx));
    {
        let events = events.clone();
        tokio::spawn(async move {
            while let Some(call) = calls_rx.recv().await {
                if events.send(Event::Api(call)).is_err() {
                    break;
                }
            }
        });
    }
    spawn_signal_handlers(events.clone())?;

    let ctx = RuntimeContext {
        config_dir: config.cluster.dir.clone(),
        plugin_search: runtime::dylib::search_path(&config.cluster.plugin_path),
    };
    let mut hub = ResourceHub::default();
    let mut topology = Topology::new(ctx, events.clone());
    topology.reconcile(&config.monitors, &mut hub.registry);
    info!(node = %node, cluster = %config.cluster.name, monitors = config.monitors.len(), socket = %socket.display(), "vigil host running");

    let mut state = DaemonState {
        node,
        config,
        hub,
        topology,
    };
    while let Some(event) = inbox.recv().await {
        match event {
            Event::Monitor(e) => state.on_monitor_event(e),
            Event::Api(call) => {
                let response = state.on_request(call.request);
                let _ = call.reply.send(response);
            }
            Event::Reload => state.reload(&options),
            Event::Shutdown => break,
        }
    }
    info!("vigil host stopping");
    drop(state);
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

struct DaemonState {
    node: String,
    config: Config,
    hub: ResourceHub,
    topology: Topology,
}

impl DaemonState {
    fn on_monitor_event(&mut self, event: MonitorEvent) {
        let (applied, transitions) = self.hub.apply(event, now_ms());
        // One line per recorded sample: its log timestamp is when the host
        // knew the value, which `bench/detection_latency` measures against.
        for sample in &applied.recorded {
            debug!(resource = %sample.name, value = %sample.value.as_ref().map_or_else(|| "unknown".to_owned(), ToString::to_string), "sample recorded");
        }
        for refusal in applied.refused {
            warn!(%refusal, "sample refused");
        }
        for t in transitions {
            info!(package = %t.package, resource = %t.resource, from = %t.from, to = %t.to, detail = %t.detail, "resource transition");
        }
    }

    fn on_request(&mut self, request: Request) -> Response {
        match request {
            Request::Ping => Response::ok(serde_json::json!({"node": self.node})),
            Request::Resls { path } => {
                let listing = self.hub.registry.listing(&path);
                Response::ok(api::resls_output(&self.node, &listing, now_ms(), |r| {
                    self.hub.used_by(r)
                }))
            }
            Request::Monitors => Response::ok(
                self.hub
                    .registry
                    .monitors()
                    .iter()
                    .map(|(name, record)| api::monitor_row(name, record))
                    .collect::<Vec<_>>(),
            ),
        }
    }

    fn reload(&mut self, options: &HostOptions) {
        match config::load(&options.config_dir) {
            Err(errors) => {
                for e in errors {
                    error!(error = %e, "reload refused: cluster.toml is invalid");
                }
            }
            Ok(config) => {
                for e in &config.errors {
                    error!(error = %e, "monitor left out");
                }
                self.topology
                    .reconcile(&config.monitors, &mut self.hub.registry);
                info!(monitors = config.monitors.len(), "configuration reloaded");
                self.config = config;
            }
        }
    }
}

fn spawn_signal_handlers(events: mpsc::UnboundedSender<Event>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = term.recv() => Event::Shutdown,
                _ = int.recv() => Event::Shutdown,
                _ = hup.recv() => Event::Reload,
            };
            if events.send(event).is_err() {
                break;
            }
        }
    });
    Ok(())
}
