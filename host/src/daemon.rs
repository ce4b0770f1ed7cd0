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
//!
//! At startup the host starts the [guard](crate::guard) and heartbeats it
//! from the main loop itself (a timer only asks), so a loop that is stuck,
//! not just a process that is frozen or dead, lets the guard halt the
//! packages. A clean shutdown stops the guard; an error exit does not, and
//! the guard halts what runs after its margin.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use vigil_sdk::now_ms;

use crate::api::{self, ApiCall, Request, Response};
use crate::config::{self, Config, MonitorConfig};
use crate::guard::{self, GuardLink, GuardOptions};
use crate::hub::ResourceHub;
use crate::package::agent::AgentReport;
use crate::package::lifecycle::{LifecycleEvent, RunnerContext};
use crate::package::manager::{ClusterLink, ManagerChannels, ManagerSetup, PackageManager};
use crate::registry::Registry;
use crate::runtime::{self, MonitorEvent, RunningMonitor, RuntimeContext};
use crate::store::ClusterStore;

/// Everything the main loop reacts to.
#[derive(Debug)]
pub enum Event {
    Monitor(MonitorEvent),
    Api(ApiCall),
    /// The node agent finished a run, halt or adoption.
    Agent(AgentReport),
    /// A package's service exited, restarted or failed.
    Lifecycle(LifecycleEvent),
    /// Once a second: retry package work that a store error interrupted.
    Tick,
    /// Time to heartbeat the guard.
    GuardBeat,
    /// Something changed in the cluster store (another node, a package record).
    StoreChanged,
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
    if let Some(addr) = &config.cluster.api.http_listen {
        let http = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding http_listen {addr}"))?;
        info!(addr = %addr, "http api listening");
        tokio::spawn(crate::http::serve(http, calls_tx.clone()));
    }
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

    // Before any package is adopted or started, so that all of them are
    // guarded; after the API socket, so a second host on this node fails
    // before it gets here.
    // VIGIL_GUARD=off exists to show what the guard protects against (the
    // split-brain tests run once without it); never set it in production.
    let mut guard = if std::env::var("VIGIL_GUARD").as_deref() == Ok("off") {
        warn!(
            "VIGIL_GUARD=off: no guard; a frozen host keeps its packages running after its lease expires"
        );
        None
    } else {
        Some(
            GuardLink::start(GuardOptions {
                config_dir: config.cluster.dir.clone(),
                node: node.clone(),
                margin: guard::margin(config.cluster.lease_ttl),
            })
            .context("starting the guard")?,
        )
    };
    {
        let events = events.clone();
        let interval = guard::beat_interval(guard::margin(config.cluster.lease_ttl));
        tokio::spawn(async move {
            let mut beats = tokio::time::interval(interval);
            loop {
                beats.tick().await;
                if events.send(Event::GuardBeat).is_err() {
                    break;
                }
            }
        });
    }

    let ctx = RuntimeContext {
        config_dir: config.cluster.dir.clone(),
        plugin_search: runtime::dylib::search_path(&config.cluster.plugin_path),
    };
    let mut hub = ResourceHub::default();
    let mut topology = Topology::new(ctx, events.clone());
    topology.reconcile(&config.monitors, &mut hub.registry);
    info!(node = %node, cluster = %config.cluster.name, monitors = config.monitors.len(), socket = %socket.display(), "vigil host running");

    let manager = start_packages(&config, &node, &mut hub, &events).await?;
    if let Some(guard) = &mut guard {
        guard.beat();
    }
    {
        let events = events.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                ticks.tick().await;
                if events.send(Event::Tick).is_err() {
                    break;
                }
            }
        });
    }

    let mut state = DaemonState {
        node,
        config,
        hub,
        topology,
        manager,
        refusal_logs: BTreeMap::new(),
    };
    state.manager.step(&state.hub).await;
    while let Some(event) = inbox.recv().await {
        match event {
            Event::Monitor(e) => state.on_monitor_event(e).await,
            Event::Api(call) => {
                let response = state.on_request(call.request).await;
                let _ = call.reply.send(response);
            }
            Event::Agent(report) => state.manager.on_report(report, &mut state.hub).await,
            Event::Lifecycle(e) => state.manager.on_lifecycle(e, &state.hub).await,
            Event::Tick => {
                state.manager.maintain_link().await;
                state.manager.check_guard().await;
                state.manager.step(&state.hub).await;
            }
            // A host that cannot renew its lease stops vouching for its
            // packages: the guard then halts them before the lease expires.
            Event::GuardBeat => {
                if let (Some(guard), false) = (&mut guard, state.manager.lease_in_doubt()) {
                    guard.beat();
                }
            }
            Event::StoreChanged => state.manager.step(&state.hub).await,
            Event::Reload => state.reload(&options),
            Event::Shutdown => break,
        }
    }
    info!("vigil host stopping");
    if state.manager.on_cluster() {
        // On a cluster the node's lease runs out after this host stops and
        // other nodes take its packages over, so they must not keep running
        // here: the guard, left armed, halts them within its margin, before
        // the lease can expire.
        info!("leaving the guard armed: it halts this node's packages before the lease expires");
    } else if let Some(guard) = &guard {
        guard.stop();
    }
    drop(state);
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// Joins an etcd cluster: connects, takes this node's liveness lease, keeps
/// it alive, and records the node as up bound to it.
async fn join_etcd(
    config: &Config,
    node: &str,
    endpoints: &[String],
    ttl: std::time::Duration,
) -> anyhow::Result<ClusterLink> {
    use crate::store::etcd::EtcdStore;
    use crate::store::{NodeRecord, NodeState};
    let etcd = EtcdStore::connect(
        endpoints,
        &config.cluster.name,
        std::time::Duration::from_secs(5),
    )
    .await
    .context("connecting to etcd")?;
    let lease = etcd
        .grant_lease(ttl)
        .await
        .context("taking the node lease")?;
    let keepalive = etcd.keep_alive(&lease);
    etcd.put_node_with_lease(
        NodeRecord {
            name: node.to_owned(),
            state: NodeState::Up,
            updated_ms: vigil_sdk::now_ms(),
        },
        lease.id,
    )
    .await
    .context("recording this node in etcd")?;
    info!(node, lease = %lease.id, ttl = ?ttl, "joined the cluster on etcd");
    // Stop vouching for the lease (and so stop beating the guard) once the
    // last acknowledged renewal is 30 % of the TTL old: the guard then fires
    // within its margin (50 %) plus a beat interval (10 %), by 90 % of the
    // TTL, before the lease can expire and another node take over.
    let margin = ttl.saturating_sub(ttl.mul_f64(0.3));
    let beats = crate::package::peers::BeatWriter::spawn(
        etcd.clone(),
        node.to_owned(),
        lease.id,
        keepalive.subscribe(),
    );
    let reaper = crate::package::peers::spawn_reaper(etcd.clone(), node.to_owned(), ttl);
    Ok(ClusterLink {
        etcd,
        lease,
        keepalive,
        margin,
        beats,
        reaper,
    })
}

/// Opens the store and starts the package manager on it.
async fn start_packages(
    config: &Config,
    node: &str,
    hub: &mut ResourceHub,
    events: &mpsc::UnboundedSender<Event>,
) -> anyhow::Result<PackageManager> {
    let (store, link): (Arc<dyn ClusterStore>, Option<ClusterLink>) = match &config.cluster.store {
        config::StoreConfig::Embedded { path } => (
            Arc::new(crate::store::embedded::EmbeddedStore::open(path)?),
            None,
        ),
        config::StoreConfig::Etcd {
            endpoints,
            lease_ttl,
        } => {
            let link = join_etcd(config, node, endpoints, *lease_ttl).await?;
            (Arc::new(link.etcd.clone()), Some(link))
        }
    };
    let run = config.cluster.dir.join("run");
    let mut ctx = RunnerContext::new(node, &config.cluster.dir);
    ctx.log_dir = Some(run.join("logs"));
    ctx.claims_dir = Some(guard::records_dir(&config.cluster.dir));
    if let Some(dir) = &ctx.log_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let (lifecycle_tx, mut lifecycle_rx) = mpsc::unbounded_channel::<LifecycleEvent>();
    {
        let events = events.clone();
        tokio::spawn(async move {
            while let Some(e) = lifecycle_rx.recv().await {
                if events.send(Event::Lifecycle(e)).is_err() {
                    break;
                }
            }
        });
    }
    let reports = {
        let events = events.clone();
        Box::new(move |r| {
            let _ = events.send(Event::Agent(r));
        })
    };
    let mut watch = store.watch().await.context("watching the cluster store")?;
    {
        let events = events.clone();
        tokio::spawn(async move {
            while watch.events.recv().await.is_some() {
                if events.send(Event::StoreChanged).is_err() {
                    break;
                }
            }
        });
    }
    let setup = ManagerSetup {
        cluster: config.cluster.name.clone(),
        node: node.to_owned(),
        cluster_nodes: config.cluster.nodes.clone(),
        packages: config.packages.clone(),
        store,
        ctx,
        run_dir: run.join("packages"),
        link,
    };
    let manager = PackageManager::start(
        setup,
        hub,
        ManagerChannels {
            reports,
            lifecycle: lifecycle_tx,
        },
    )
    .await
    .context("starting the package manager")?;
    info!(packages = config.packages.len(), "package manager running");
    Ok(manager)
}

struct DaemonState {
    node: String,
    config: Config,
    hub: ResourceHub,
    topology: Topology,
    manager: PackageManager,
    /// Per monitor, the log budget for its refused samples: a monitor that
    /// floods undeclared samples must not flood the log.
    refusal_logs: BTreeMap<String, runtime::output::MonitorLog>,
}

impl DaemonState {
    async fn on_monitor_event(&mut self, event: MonitorEvent) {
        let monitor = match &event {
            MonitorEvent::Declared { monitor, .. }
            | MonitorEvent::Samples { monitor, .. }
            | MonitorEvent::Failed { monitor, .. } => monitor.clone(),
        };
        let (applied, transitions) = self.hub.apply(event, now_ms());
        // One line per recorded sample: its log timestamp is when the host
        // knew the value, which `bench/detection_latency` measures against.
        for sample in &applied.recorded {
            debug!(resource = %sample.name, value = %sample.value.as_ref().map_or_else(|| "unknown".to_owned(), ToString::to_string), "sample recorded");
        }
        if !applied.refused.is_empty() {
            let log = self
                .refusal_logs
                .entry(monitor.clone())
                .or_insert_with(|| runtime::output::MonitorLog::new(&monitor));
            for refusal in &applied.refused {
                log.refused(refusal);
            }
        }
        for t in &transitions {
            info!(package = %t.package, resource = %t.resource, from = %t.from, to = %t.to, detail = %t.detail, "resource transition");
        }
        for t in &transitions {
            self.manager.on_transition(t, &self.hub).await;
        }
    }

    async fn on_request(&mut self, request: Request) -> Response {
        match request {
            Request::Ping => Response::ok(serde_json::json!({"node": self.node})),
            Request::Resls { path } => {
                let listing = self.hub.registry.listing(&path);
                Response::ok(api::resls_output(&self.node, &listing, now_ms(), |r| {
                    self.hub.used_by(r)
                }))
            }
            Request::Status => match self.manager.status(&self.hub).await {
                Ok(status) => Response::ok(status),
                Err(e) => Response::error(e.to_string()),
            },
            Request::Why { package } => match self.manager.why(&package, &self.hub).await {
                Ok(why) => Response::ok(why),
                Err(e) => Response::error(e),
            },
            Request::Pkg {
                action,
                package,
                node,
            } => {
                match self
                    .manager
                    .admin(action, &package, node.as_deref(), &self.hub)
                    .await
                {
                    Ok(done) => Response::ok(serde_json::json!({ "done": done })),
                    Err(e) => Response::error(e),
                }
            }
            Request::Node { halt, node } => {
                match self.manager.node_admin(halt, &node, &self.hub).await {
                    Ok(done) => Response::ok(serde_json::json!({ "done": done })),
                    Err(e) => Response::error(e),
                }
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
                if config.packages != self.config.packages {
                    warn!(
                        "package configuration changed: restart `vigil host` to apply it (packages keep running and are re-adopted)"
                    );
                }
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
