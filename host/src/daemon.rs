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
//! The configuration is read and validated ([`validation::validate`], the
//! same validation as `vigil check`) on a task, never on the loop: a reload
//! comes back as [`Event::Reloaded`], and [`plan_reload`] (pure) decides
//! what of it applies. A monitor whose file is now broken keeps its last good
//! version; a `cluster.toml` without this node is refused whole; keys that
//! cannot change on a running host (nodes, store, socket, ...) keep their old
//! values until a restart. Packages run from the applied package set in the
//! store ([`crate::package::applied`]): on one node a reload (and a start)
//! applies `packages.d/` to it, a broken file keeping its last good version;
//! on a cluster only `vigil apply` does. A change of the applied set, from
//! whichever node, reaches every host through the store's watch
//! ([`DaemonState::on_applied`]).
//!
//! At startup the host starts the [guard](crate::guard) and heartbeats it
//! from a task of its own while the node's lease is sure: no work of the
//! main loop can delay a beat (a busy host must not be halted by its own
//! guard), while a frozen or dead process, or a lease in doubt, stops
//! them. A main loop that is stuck is caught by systemd's watchdog, fed
//! from the loop. A clean shutdown stops the guard; an error exit does
//! not, and the guard halts what runs after its margin.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use vigil_sdk::now_ms;

use crate::api::{self, ApiCall, ConfigErrorRow, Request, Response};
use crate::config::{self, ClusterConfig, Config, ConfigError, MonitorConfig};
use crate::guard::{self, GuardLink, GuardOptions};
use crate::hub::ResourceHub;
use crate::package::agent::AgentReport;
use crate::package::applied;
use crate::package::fail_fast;
use crate::package::lifecycle::{LifecycleEvent, RunnerContext};
use crate::package::manager::{ManagerChannels, ManagerSetup, PackageManager};
use crate::package::membership::{EtcdMembership, Membership};
use crate::registry::Registry;
use crate::runtime::{self, MonitorEvent, RunningMonitor, RuntimeContext};
use crate::store::AppliedPackages;
use crate::store::ClusterStore;
use crate::validation::{self, Validated};

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
    /// A round of the package manager's store work came back.
    StoreDone(Box<crate::package::rounds::Done>),
    /// Something changed in the cluster store (another node, a package record).
    StoreChanged(crate::store::StoreEvent),
    /// The store's watch ended and was taken again: its snapshot replaces
    /// the manager's view.
    StoreResync(Box<crate::store::Snapshot>),
    /// Re-read the configuration directory (SIGHUP).
    Reload,
    /// The configuration a reload read and validated on its task.
    Reloaded(Box<Result<Validated, Vec<ConfigError>>>),
    /// `vigil apply`: the configuration read and validated on its task,
    /// to be applied if its package files are still `digest`.
    ApplyRead {
        digest: String,
        reply: tokio::sync::oneshot::Sender<Response>,
        result: Box<Result<Validated, Vec<ConfigError>>>,
    },
    /// The lease expired and a task took a new one (or failed to).
    Rejoined(Box<Result<crate::package::membership::Rejoined, crate::store::StoreError>>),
    /// A package set stored (`vigil apply`, or a reload on one node) by a
    /// task: taken into the view and run; `reply` answers `vigil apply`.
    AppliedStored {
        result: Box<Result<crate::store::Versioned<AppliedPackages>, crate::store::StoreError>>,
        reply: Option<tokio::sync::oneshot::Sender<Response>>,
    },
    /// An operator command's store work came back from its task.
    AdminDone {
        done: Box<crate::package::manager::AdminDone>,
        reply: tokio::sync::oneshot::Sender<Response>,
    },
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

    /// The configs the running monitors were started from, by name.
    pub fn running(&self) -> BTreeMap<String, MonitorConfig> {
        self.running
            .iter()
            .map(|(name, (cfg, _))| (name.clone(), cfg.clone()))
            .collect()
    }

    /// Where monitors started from now on are resolved (`plugin_path`
    /// applies on reload).
    pub fn set_context(&mut self, ctx: RuntimeContext) {
        self.ctx = ctx;
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
            let pending = 2 * (cfg.interval + cfg.timeout);
            registry.set_pending_limit(&cfg.name, pending.as_millis() as u64);
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
        let file = config.cluster.dir.join("cluster.toml");
        match requested {
            Some(_) => anyhow::bail!(
                "--node {node}: not in cluster.nodes ({}) of {}; add it there or pass one of those",
                nodes.join(", "),
                file.display()
            ),
            None => anyhow::bail!(
                "this machine's hostname {node:?} is not in cluster.nodes ({}) of {}; pass --node NAME",
                nodes.join(", "),
                file.display()
            ),
        }
    }
    Ok(node)
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(options: HostOptions) -> anyhow::Result<()> {
    let validated =
        validation::validate(&options.config_dir, Some(validation::HOST_PROBE_DEADLINE))
            .await
            .map_err(|errors| {
                anyhow::anyhow!(
                    "invalid configuration:\n{}",
                    errors
                        .iter()
                        .map(|e| format!("  {e}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            })?;
    log_config_errors(&validated, &BTreeSet::new());
    for monitor in &validated.unprobed {
        warn!(%monitor, deadline = ?validation::HOST_PROBE_DEADLINE, "monitor not probed in time at startup; packages are not checked against its declarations (vigil check does)");
    }
    let config_errors = validated
        .errors
        .iter()
        .chain(&validated.consequences)
        .chain(&validated.duplicates)
        .map(|e| ConfigErrorRow::new(e, None))
        .collect();
    let local = LocalPackages::of(&validated);
    let config = validated.config;
    let node = resolve_node(&config, options.node.as_deref())?;
    let (events, mut inbox) = mpsc::unbounded_channel::<Event>();

    let socket = config.cluster.api.socket.clone();
    let listener = api::bind(&socket)?;
    let (calls_tx, mut calls_rx) = mpsc::unbounded_channel::<ApiCall>();
    // Hooks only queue events; their programs run on their own tasks.
    let hooks = crate::hooks::Hooks::start(&config.cluster.hooks, &config.cluster.dir);
    let http = match &config.cluster.api.http_listen {
        Some(addr) => {
            let http = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding http_listen {addr}"))?;
            info!(addr = %addr, "http api listening");
            Some(http)
        }
        None => None,
    };
    let watch_nudge = std::sync::Arc::new(tokio::sync::Notify::new());
    if http.is_some() || !hooks.is_empty() {
        tokio::spawn(crate::http::serve(
            http,
            calls_tx.clone(),
            hooks.clone(),
            std::sync::Arc::clone(&watch_nudge),
        ));
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
    let guard = if std::env::var("VIGIL_GUARD").as_deref() == Ok("off") {
        warn!(
            "VIGIL_GUARD=off: no guard; a frozen host keeps its packages running after its lease expires"
        );
        None
    } else {
        Some(
            GuardLink::start(GuardOptions {
                config_dir: config.cluster.dir.clone(),
                paths: config.cluster.paths.clone(),
                log_format: config.cluster.log_format,
                node: node.clone(),
                margin: guard::margin(config.cluster.lease_ttl),
            })
            .context("starting the guard")?,
        )
    };
    let ctx = RuntimeContext {
        config_dir: config.cluster.dir.clone(),
        plugin_search: runtime::dylib::search_path(&config.cluster.plugin_path),
    };
    let mut hub = ResourceHub::default();
    let mut topology = Topology::new(ctx, events.clone());
    topology.reconcile(&config.monitors, &mut hub.registry);
    info!(node = %node, cluster = %config.cluster.name, monitors = config.monitors.len(), socket = %socket.display(), "vigil host running");

    let (manager, applied_errors) =
        start_packages(&config, &node, &local, &mut hub, &events).await?;
    // From its own task, so that no work of the main loop delays a beat; a
    // lease in doubt stops them, and the guard halts the packages before
    // the lease can expire.
    let guard = guard.map(|guard| {
        let probe = manager.lease_probe();
        let interval = guard::beat_interval(guard::margin(config.cluster.lease_ttl));
        guard.beat_while(interval, move || !probe.in_doubt())
    });
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
        config_errors,
        applied_errors,
        running_digest: None,
        last_changes: None,
        reload: ReloadState::Idle,
        events: events.clone(),
        config_dir: options.config_dir.clone(),
        refusal_logs: BTreeMap::new(),
        monitor_problems: BTreeMap::new(),
        hooks,
    };
    state.running_digest = state.manager.applied().map(|a| a.value.digest.clone());
    // The monitors of the packages' OCF agents follow the applied set.
    state.reconcile_monitors();
    state.manager.step(&state.hub);
    let mut notifier = crate::notify::Notifier::from_env();
    notifier.ready(&format!("node {} running", state.node));
    notifier.watchdog(std::time::Instant::now());
    let mut since_step = 0usize;
    loop {
        let Some(event) = inbox.recv().await else {
            break;
        };
        match event {
            Event::Monitor(e) => state.on_monitor_event(e),
            Event::Api(call) => match call.request {
                Request::Apply { digest } => state.start_apply(digest, call.reply),
                request @ (Request::Pkg { .. }
                | Request::Node { .. }
                | Request::NodeMaintenance { .. }) => state.start_admin(request, call.reply),
                request => {
                    let response = state.on_request(request);
                    let _ = call.reply.send(response);
                }
            },
            Event::ApplyRead {
                digest,
                reply,
                result,
            } => {
                state.finish_apply(&digest, *result, reply);
            }
            Event::Rejoined(result) => state.manager.rejoined(*result),
            Event::AppliedStored { result, reply } => state.applied_stored(*result, reply),
            Event::AdminDone { done, reply } => {
                let response = match state.manager.admin_done(*done, &state.hub) {
                    Ok(done) => Response::ok(crate::views::AdminOutput { done }),
                    Err(e) => Response::error(e),
                };
                let _ = reply.send(response);
            }
            Event::Agent(report) => state.manager.on_report(report, &mut state.hub),
            Event::Lifecycle(e) => state.manager.on_lifecycle(e),
            Event::Tick => {
                // The watchdog is fed from the loop itself: a loop that is
                // stuck trips systemd's WatchdogSec like a dead process.
                notifier.watchdog(std::time::Instant::now());
                for t in state.hub.expire_pending(now_ms()) {
                    info!(package = %t.package, resource = %t.resource, from = %t.from, to = %t.to, detail = %t.detail, "resource transition");
                    state.manager.on_transition(&t);
                }
                if let Some(work) = state.manager.rejoin() {
                    let events = state.events.clone();
                    tokio::spawn(async move {
                        let result = Box::new(work.await);
                        let _ = events.send(Event::Rejoined(result));
                    });
                }
                state.manager.check_guard();
                // Retries what a store error interrupted.
                state.manager.step(&state.hub);
            }
            Event::StoreDone(done) => state.manager.on_round_done(*done, &state.hub),
            Event::StoreChanged(change) => {
                state.manager.on_store_event(&change);
                watch_nudge.notify_one();
                if matches!(change.change, crate::store::Change::Applied(_)) {
                    state.on_applied();
                }
            }
            Event::StoreResync(snapshot) => {
                state.manager.resync(*snapshot);
                watch_nudge.notify_one();
                state.on_applied();
            }
            Event::Reload => state.start_reload(),
            Event::Reloaded(result) => state.finish_reload(*result),
            Event::Shutdown => break,
        }
        if let Some(why) = state.manager.take_fail_fast() {
            return fail_fast(state, guard, &socket, why).await;
        }
        // One step for a burst of events (a hundred reports, a hundred
        // watch events), taken once the queue is drained — or every
        // STEP_EVERY events, so a flood of samples cannot hold it back.
        since_step += 1;
        if state.manager.wants_step() && (inbox.is_empty() || since_step >= STEP_EVERY) {
            since_step = 0;
            state.manager.step(&state.hub);
        }
    }
    info!("vigil host stopping");
    notifier.stopping();
    if state.manager.on_cluster() {
        // On a cluster the node's lease runs out after this host stops and
        // other nodes take its packages over, so they must not keep running
        // here: the guard, left armed, halts them within its margin, before
        // the lease can expire.
        info!("leaving the guard armed: it halts this node's packages before the lease expires");
        if let Some(guard) = guard {
            guard.leave_armed();
        }
    } else if let Some(guard) = guard {
        guard.stop();
    }
    drop(state);
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// A fail-fast failure (DESIGN §5): every package here is killed without
/// its halt script and its parts released, the lease revoked so that the
/// others take over at once, the guard told to stop (it has nothing left to
/// halt); then the machine reboots (`fail_fast_action = "reboot"`) or the
/// host ends with [`fail_fast::NodeHalted`] (exit status 4).
async fn fail_fast(
    mut state: DaemonState,
    guard: Option<guard::Beating>,
    socket: &Path,
    why: String,
) -> anyhow::Result<()> {
    let node = state.node.clone();
    error!(%node, %why, "fail-fast: halting this node now: packages killed without halt scripts, parts released, lease revoked");
    for problem in state.manager.kill_packages().await {
        error!(%node, %problem, "fail-fast: not everything stopped");
    }
    match state.manager.leave_cluster().await {
        Ok(()) => {
            info!(%node, "fail-fast: lease revoked; the other nodes take the packages over now")
        }
        Err(e) => {
            error!(%node, error = %e, "fail-fast: cannot revoke the lease; the others take over when it expires")
        }
    }
    if let Some(guard) = guard {
        guard.stop();
    }
    if state.config.cluster.fail_fast_action == crate::config::FailFastAction::Reboot {
        error!(%node, "fail-fast: rebooting the machine (fail_fast_action = \"reboot\")");
        let e = fail_fast::reboot();
        error!(%node, error = %e, "fail-fast: the kernel refused to reboot; halting the node instead");
    }
    error!(%node, status = fail_fast::EXIT_STATUS, "fail-fast: node halted; vigil host exits and stays out of the cluster until it is started again");
    drop(state);
    let _ = std::fs::remove_file(socket);
    Err(fail_fast::NodeHalted { node, why }.into())
}

/// Joins an etcd cluster: connects, takes this node's liveness lease, keeps
/// it alive, and records the node as up bound to it.
async fn join_etcd(
    config: &Config,
    node: &str,
    endpoints: &[String],
    ttl: std::time::Duration,
) -> anyhow::Result<EtcdMembership> {
    use crate::store::etcd::EtcdStore;
    use crate::store::{NodeRecord, NodeState};
    // Every store call gives up well within the guard's margin: a hung
    // (not refused) request must not hold the host past the point where its
    // guard halts everything (the margin is half the TTL).
    let deadline = (guard::margin(ttl) / 2).clamp(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(5),
    );
    let etcd = EtcdStore::connect(endpoints, &config.cluster.name, deadline)
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
            maintenance: false,
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
        crate::package::peers::beat_deadline(ttl),
    );
    let reaper = crate::package::peers::spawn_reaper(etcd.clone(), node.to_owned(), ttl);
    Ok(EtcdMembership::new(
        etcd, lease, keepalive, margin, beats, reaper,
    ))
}

/// Opens the store and starts the package manager on it.
async fn start_packages(
    config: &Config,
    node: &str,
    local: &LocalPackages,
    hub: &mut ResourceHub,
    events: &mpsc::UnboundedSender<Event>,
) -> anyhow::Result<(PackageManager, Vec<ConfigErrorRow>)> {
    let (store, membership): (Arc<dyn ClusterStore>, Membership) = match &config.cluster.store {
        config::StoreConfig::Embedded { path } => (
            Arc::new(crate::store::embedded::EmbeddedStore::open(path)?),
            Membership::Single,
        ),
        config::StoreConfig::Etcd {
            endpoints,
            lease_ttl,
        } => {
            let joined = join_etcd(config, node, endpoints, *lease_ttl).await?;
            (Arc::new(joined.etcd.clone()), Membership::Etcd(joined))
        }
    };
    let paths = &config.cluster.paths;
    let mut ctx = RunnerContext::new(node, &config.cluster.dir);
    ctx.log_dir = Some(paths.log_dir.clone());
    ctx.claims_dir = Some(paths.records());
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
    let (packages, applied_errors) =
        packages_to_run(store.as_ref(), config, node, local, membership.shared()).await?;
    let watch = store.watch().await.context("watching the cluster store")?;
    tokio::spawn(forward_store_changes(
        Arc::clone(&store),
        watch,
        events.clone(),
    ));
    let setup = ManagerSetup {
        cluster: config.cluster.name.clone(),
        node: node.to_owned(),
        cluster_nodes: config.cluster.nodes.clone(),
        packages,
        store,
        ctx,
        run_dir: paths.records(),
        membership,
        max_parallel: config.cluster.max_parallel_actions,
    };
    let manager = PackageManager::start(
        setup,
        hub,
        ManagerChannels {
            reports,
            rounds: {
                let events = events.clone();
                Box::new(move |done| {
                    let _ = events.send(Event::StoreDone(Box::new(done)));
                })
            },
            lifecycle: lifecycle_tx,
        },
    )
    .await
    .context("starting the package manager")?;
    info!(
        packages = manager.packages().len(),
        "package manager running"
    );
    Ok((manager, applied_errors))
}

/// This host's valid package files and the ones left out for an error, by
/// file name: what a reload (or a start on one node) applies.
#[derive(Debug, Clone, Default)]
pub struct LocalPackages {
    pub texts: BTreeMap<String, String>,
    pub broken: BTreeSet<String>,
}

impl LocalPackages {
    pub fn of(validated: &Validated) -> Self {
        let texts = validated.package_texts.clone();
        let mut broken = validated.broken_package_files();
        // A valid file whose text could not be read again counts as broken:
        // it must not be dropped from the set.
        for p in &validated.config.packages {
            let name = applied::file_name(&p.source);
            if !texts.contains_key(&name) {
                broken.insert(name);
            }
        }
        Self { texts, broken }
    }
}

/// The package set this host runs at startup, and the errors of the
/// files of it that do not load here.
///
/// * One node (embedded store): startup is a reload from empty, so the
///   local `packages.d/` is applied (a broken file keeps the text applied
///   before) and then run.
/// * Many nodes (etcd): the applied set is run; if none was ever applied,
///   the first host to start applies its own valid files (a
///   compare-and-swap from "none": one host wins, the others run its set).
async fn packages_to_run(
    store: &dyn ClusterStore,
    config: &Config,
    node: &str,
    local: &LocalPackages,
    shared: bool,
) -> anyhow::Result<(Vec<config::package::PackageConfig>, Vec<ConfigErrorRow>)> {
    for _ in 0..5 {
        let current = store
            .snapshot()
            .await
            .context("reading the applied package set")?
            .applied;
        let files = match (&current, shared) {
            (Some(set), true) => {
                if let Some(d) = applied::file_differences(&local.texts, &set.value.files) {
                    warn!(revision = set.value.revision, differences = %d, "this node's packages.d differs from the applied package set; it runs the applied set (`vigil apply` makes local files the cluster's)");
                }
                set.value.files.clone()
            }
            _ => {
                let files = applied::compose_reload(
                    &local.texts,
                    &local.broken,
                    current.as_ref().map(|c| &c.value),
                );
                let digest = AppliedPackages::digest_of(&files);
                if current.as_ref().is_some_and(|c| c.value.digest == digest) {
                    files
                } else {
                    let set = AppliedPackages {
                        revision: current.as_ref().map_or(0, |c| c.value.revision) + 1,
                        digest,
                        files,
                        applied_by: if current.is_none() {
                            format!("first start of {node}")
                        } else {
                            format!("start of {node}")
                        },
                        applied_ms: now_ms(),
                    };
                    let expected = current.as_ref().map_or(0, |c| c.mod_revision);
                    match store.put_applied(expected, set).await {
                        Ok(written) => {
                            info!(revision = written.value.revision, digest = %written.value.digest, by = %written.value.applied_by, "applied this node's packages.d as the package set");
                            written.value.files
                        }
                        // Another host applied first: run what it applied.
                        Err(crate::store::StoreError::Conflict { .. }) => continue,
                        Err(e) => return Err(e).context("storing the applied package set"),
                    }
                }
            }
        };
        let (packages, errors) = applied::parse(&files, &config.cluster);
        for e in &errors {
            error!(error = %e, "applied package file does not load on this node; package left out");
        }
        return Ok((
            packages,
            errors
                .iter()
                .map(|e| ConfigErrorRow::new(e, None))
                .collect(),
        ));
    }
    anyhow::bail!("the applied package set kept changing while this host started; start it again")
}

/// Events handled between two package-manager steps at most.
const STEP_EVERY: usize = 64;

/// Hands every change the store's watch reports to the main loop. A watch
/// that ends while the daemon runs (etcd compacted the history it was to
/// resume from) is taken again, and its snapshot replaces the manager's
/// view, so the view never silently stops following the store.
async fn forward_store_changes(
    store: Arc<dyn ClusterStore>,
    mut watch: crate::store::Watch,
    events: mpsc::UnboundedSender<Event>,
) {
    loop {
        while let Some(change) = watch.events.recv().await {
            if events.send(Event::StoreChanged(change)).is_err() {
                return;
            }
        }
        loop {
            if events.is_closed() {
                return;
            }
            match store.watch().await {
                Ok(fresh) => {
                    watch = fresh;
                    let snapshot = Box::new(watch.snapshot.clone());
                    if events.send(Event::StoreResync(snapshot)).is_err() {
                        return;
                    }
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "cannot watch the cluster store again; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }
}

struct DaemonState {
    node: String,
    /// The configuration in force: monitors as running, packages as the
    /// package manager was started with, `cluster.toml` as bound.
    config: Config,
    hub: ResourceHub,
    topology: Topology,
    manager: PackageManager,
    /// Errors of the last startup or reload, for `monitor list`.
    config_errors: Vec<ConfigErrorRow>,
    /// Errors of applied package files that do not load on this node.
    applied_errors: Vec<ConfigErrorRow>,
    /// The digest of the applied set the manager runs by.
    running_digest: Option<String>,
    /// What the package set running now changed, by its digest: the answer
    /// of a `vigil apply` whose set the watch brought before its own write
    /// came back.
    last_changes: Option<(String, applied::SetChanges)>,
    reload: ReloadState,
    events: mpsc::UnboundedSender<Event>,
    config_dir: PathBuf,
    /// Per monitor, the log budget for its refused samples: a monitor that
    /// floods undeclared samples must not flood the log.
    refusal_logs: BTreeMap<String, runtime::output::MonitorLog>,
    /// Refused samples and last errors by monitor, for `monitor list`.
    monitor_problems: BTreeMap<String, crate::views::MonitorProblems>,
    /// The `[[hook]]`s, bound at startup; their counters go in `status`.
    hooks: crate::hooks::Hooks,
}

/// `why`'s text with this node's "resource X is not up" rejections
/// followed by what this node knows of the cause (`90C does not meet < 80`,
/// `no monitor declares it`); other nodes' lines are left as they are.
fn with_causes_here(text: &str, node: &str, resources: &[crate::views::WhyResource]) -> String {
    let here = format!("  {node}: ");
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if !line.starts_with(&here) {
            out.push_str(line);
            continue;
        }
        let mut line = line.to_owned();
        for r in resources.iter().filter(|r| r.state != "up") {
            let rejection = format!("resource {} is not up", r.name);
            line = line.replacen(&rejection, &format!("{rejection} ({})", r.detail), 1);
        }
        out.push_str(&line);
    }
    out
}

/// Whether a reload task runs; a SIGHUP during one queues one more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReloadState {
    Idle,
    Running,
    RunningThenAgain,
}

/// Logs every error of a validation, and what is left out for it (not the
/// monitor files in `kept`, whose last good version keeps running).
fn log_config_errors(validated: &Validated, kept: &BTreeSet<PathBuf>) {
    for e in &validated.errors {
        error!(error = %e, "configuration error");
    }
    for e in &validated.consequences {
        error!(error = %e, "package left out: a package it names was left out");
    }
    for e in &validated.duplicates {
        error!(error = %e, "configuration error");
    }
    let packages_d = validated.config.cluster.dir.join("packages.d");
    let monitors_d = validated.config.cluster.dir.join("monitors.d");
    let running: BTreeSet<&Path> = validated
        .config
        .monitors
        .iter()
        .map(|m| m.source.as_path())
        .collect();
    for file in validated.broken_files() {
        if file.starts_with(&packages_d) {
            warn!(file = %file.display(), "package file left out");
        } else if file.starts_with(&monitors_d) && !running.contains(file) && !kept.contains(file) {
            warn!(file = %file.display(), "monitor file left out");
        }
    }
}

/// What a reload applies, decided from the configuration in force, the
/// monitors running and what the reload read.
#[derive(Debug)]
pub struct ReloadPlan {
    /// Why nothing is applied, if nothing is.
    pub refused: Option<String>,
    /// `cluster.toml` as it applies: the new one with the old values of the
    /// keys that need a restart.
    pub cluster: Option<ClusterConfig>,
    /// One message per `cluster.toml` key that changed but needs a restart.
    pub needs_restart: Vec<String>,
    /// The monitors that should run.
    pub monitors: Vec<MonitorConfig>,
    /// Errors for `monitor list`, with the monitor kept because of each.
    pub errors: Vec<ConfigErrorRow>,
    /// What changed in packages.d (not applied), if anything.
    pub package_changes: Option<String>,
}

/// Decides what a reload applies (no I/O).
pub fn plan_reload(
    current: &Config,
    node: &str,
    running: &BTreeMap<String, MonitorConfig>,
    read: &Result<Validated, Vec<ConfigError>>,
) -> ReloadPlan {
    let refuse = |why: String, errors: Vec<ConfigErrorRow>| ReloadPlan {
        refused: Some(why),
        cluster: None,
        needs_restart: Vec::new(),
        monitors: Vec::new(),
        errors,
        package_changes: None,
    };
    let validated = match read {
        Err(errors) => {
            return refuse(
                "cluster.toml is invalid; nothing applied".to_owned(),
                errors
                    .iter()
                    .map(|e| ConfigErrorRow::new(e, None))
                    .collect(),
            );
        }
        Ok(v) => v,
    };
    let new = &validated.config;
    let cluster_file = new.cluster.dir.join("cluster.toml");
    if !new.cluster.nodes.iter().any(|n| n == node) {
        let error = ConfigError::file(
            &cluster_file,
            format!(
                "node {node:?} is not in cluster.nodes ({}); this host cannot apply it",
                new.cluster.nodes.join(", ")
            ),
        );
        return refuse(
            format!("{error}; nothing applied"),
            vec![ConfigErrorRow::new(&error, None)],
        );
    }

    // Keys bound at startup keep their old values.
    let old = &current.cluster;
    let mut cluster = new.cluster.clone();
    let mut needs_restart = Vec::new();
    let mut keep = |changed: bool, key: &str| {
        if changed {
            needs_restart.push(format!(
                "{key} changed in {}: this needs a restart of vigil host; keeping the old value",
                cluster_file.display()
            ));
        }
    };
    keep(old.name != cluster.name, "cluster.name");
    keep(old.nodes != cluster.nodes, "cluster.nodes");
    keep(
        old.store != cluster.store || old.lease_ttl != cluster.lease_ttl,
        "[store]",
    );
    keep(old.api.socket != cluster.api.socket, "api.socket");
    keep(old.paths != cluster.paths, "[paths]");
    keep(old.log_format != cluster.log_format, "logging.format");
    keep(
        old.api.http_listen != cluster.api.http_listen,
        "api.http_listen",
    );
    // A hook's line moves when lines above it change; that is no change.
    let without_lines = |hooks: &[config::HookConfig]| {
        hooks
            .iter()
            .map(|h| config::HookConfig {
                line: 0,
                ..h.clone()
            })
            .collect::<Vec<_>>()
    };
    keep(
        without_lines(&old.hooks) != without_lines(&cluster.hooks),
        "[[hook]]",
    );
    cluster.name = old.name.clone();
    cluster.nodes = old.nodes.clone();
    cluster.store = old.store.clone();
    cluster.lease_ttl = old.lease_ttl;
    cluster.api = old.api.clone();
    cluster.paths = old.paths.clone();
    cluster.log_format = old.log_format;
    cluster.hooks = old.hooks.clone();

    // A monitor whose file has an error keeps the version that runs.
    let broken = validated.broken_files();
    let mut monitors: Vec<MonitorConfig> = Vec::new();
    let mut kept: BTreeMap<PathBuf, String> = BTreeMap::new();
    for (name, cfg) in running {
        if !broken.contains(cfg.source.as_path()) {
            continue;
        }
        let same = new.monitors.iter().any(|m| m == cfg);
        if !same {
            kept.insert(cfg.source.clone(), name.clone());
        }
        monitors.push(cfg.clone());
    }
    for m in &new.monitors {
        let replaced = kept.contains_key(&m.source) || monitors.iter().any(|k| k.name == m.name);
        if !replaced {
            monitors.push(m.clone());
        }
    }
    let errors = validated
        .errors
        .iter()
        .chain(&validated.consequences)
        .map(|e| ConfigErrorRow::new(e, kept.get(&e.file).cloned()))
        .chain(
            validated
                .duplicates
                .iter()
                .map(|e| ConfigErrorRow::new(e, None)),
        )
        .collect();

    ReloadPlan {
        refused: None,
        cluster: Some(cluster),
        needs_restart,
        monitors,
        errors,
        package_changes: package_changes(&current.packages, &new.packages),
    }
}

/// Names of added, changed and removed packages, if any.
fn package_changes(
    old: &[config::package::PackageConfig],
    new: &[config::package::PackageConfig],
) -> Option<String> {
    let same = |a: &config::package::PackageConfig, b: &config::package::PackageConfig| {
        let (mut a, mut b) = (a.clone(), b.clone());
        a.lines = Default::default();
        b.lines = Default::default();
        a == b
    };
    let names = |list: Vec<&str>| list.join(", ");
    let added: Vec<&str> = new
        .iter()
        .filter(|n| !old.iter().any(|o| o.name == n.name))
        .map(|p| p.name.as_str())
        .collect();
    let removed: Vec<&str> = old
        .iter()
        .filter(|o| !new.iter().any(|n| n.name == o.name))
        .map(|p| p.name.as_str())
        .collect();
    let changed: Vec<&str> = new
        .iter()
        .filter(|n| old.iter().any(|o| o.name == n.name && !same(o, n)))
        .map(|p| p.name.as_str())
        .collect();
    let mut parts = Vec::new();
    for (what, list) in [("added", added), ("changed", changed), ("removed", removed)] {
        if !list.is_empty() {
            parts.push(format!("{what}: {}", names(list)));
        }
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

impl DaemonState {
    /// The configuration errors this host knows of: its own files' (last
    /// startup or reload) and the applied set's files that do not load here.
    fn all_errors(&self) -> Vec<ConfigErrorRow> {
        self.config_errors
            .iter()
            .chain(&self.applied_errors)
            .cloned()
            .collect()
    }

    /// Runs the configured monitors plus those of the OCF agents of the
    /// packages this host runs (the applied set, not the local files).
    fn reconcile_monitors(&mut self) {
        let packages = self.manager.packages();
        let mut wanted: Vec<MonitorConfig> = self
            .config
            .monitors
            .iter()
            .filter(|m| {
                !self
                    .config
                    .packages
                    .iter()
                    .chain(&packages)
                    .any(|p| config::package::agent_monitor_name(&p.name) == m.name)
            })
            .cloned()
            .collect();
        wanted.extend(config::package::agent_monitors(
            &packages,
            &self.config.cluster.paths.records(),
        ));
        self.topology.reconcile(&wanted, &mut self.hub.registry);
    }

    /// The applied package set in the store changed (or the view was
    /// re-taken): the manager takes the new set. A file of it that does not
    /// load on this node keeps the version of that package this node runs
    /// by (its last good one), with the error shown.
    fn on_applied(&mut self) -> Option<applied::SetChanges> {
        let set = self.manager.applied()?.value.clone();
        if self.running_digest.as_deref() == Some(set.digest.as_str()) {
            return None;
        }
        let (mut packages, errors) = applied::parse(&set.files, &self.config.cluster);
        let mut rows = Vec::new();
        for e in &errors {
            let name = applied::file_name(&e.file);
            let kept = self
                .manager
                .packages()
                .into_iter()
                .find(|p| applied::file_name(&p.source) == name)
                .filter(|p| !packages.iter().any(|q| q.name == p.name));
            let mut row = ConfigErrorRow::new(e, None);
            if let Some(p) = kept {
                warn!(package = %p.name, error = %e, "applied package file does not load on this node; keeping the last good version");
                row.kept_package = Some(p.name.clone());
                packages.push(p);
            } else {
                error!(error = %e, "applied package file does not load on this node; package left out");
            }
            rows.push(row);
        }
        self.applied_errors = rows;
        let changes = self.manager.set_packages(packages, &mut self.hub);
        info!(revision = set.revision, digest = %set.digest, by = %set.applied_by, %changes, "running the applied package set");
        self.last_changes = Some((set.digest.clone(), changes.clone()));
        self.running_digest = Some(set.digest);
        self.reconcile_monitors();
        Some(changes)
    }

    /// An operator command (`vigil pkg|node ...`): checked here, its store
    /// work sent to a task (the main loop never waits for the store), its
    /// answer given when [`Event::AdminDone`] brings the work back.
    fn start_admin(&mut self, request: Request, reply: tokio::sync::oneshot::Sender<Response>) {
        let started = match &request {
            Request::Pkg {
                action,
                package,
                node,
            } => self
                .manager
                .admin(action.clone(), package, node.as_deref())
                .map_err(|e| self.broken_package(package).unwrap_or(e)),
            Request::Node { halt, node } => self.manager.node_admin(*halt, node),
            Request::NodeMaintenance { node, on } => self.manager.node_maintenance(node, *on),
            _ => Err("not an operator command".to_owned()),
        };
        match started {
            Ok(work) => {
                let events = self.events.clone();
                tokio::spawn(async move {
                    let done = Box::new(work.await);
                    let _ = events.send(Event::AdminDone { done, reply });
                });
            }
            Err(e) => {
                let _ = reply.send(Response::error(e));
            }
        }
    }

    /// `vigil apply`: reads and validates the configuration on a task, as a
    /// reload does; [`Self::finish_apply`] answers.
    fn start_apply(&mut self, digest: String, reply: tokio::sync::oneshot::Sender<Response>) {
        let (dir, events) = (self.config_dir.clone(), self.events.clone());
        tokio::spawn(async move {
            let result = validation::validate(&dir, Some(validation::HOST_PROBE_DEADLINE)).await;
            let _ = events.send(Event::ApplyRead {
                digest,
                reply,
                result: Box::new(result),
            });
        });
    }

    /// Applies what `start_apply` read: refused whole when any file has an
    /// error or the package files are no longer what the CLI validated;
    /// else stored as the next revision of the package set, which every
    /// host (this one at once) then runs.
    fn finish_apply(
        &mut self,
        digest: &str,
        read: Result<Validated, Vec<ConfigError>>,
        reply: tokio::sync::oneshot::Sender<Response>,
    ) {
        let current = self
            .manager
            .applied()
            .map(|a| crate::views::AppliedStatus::new(&a.value));
        let refuse = |errors: &[ConfigError]| {
            Response::ok(crate::views::ApplyOutput::unchanged(
                current.clone(),
                crate::views::CheckOutput::new(errors).errors,
            ))
        };
        let validated = match read {
            Err(errors) => {
                let _ = reply.send(refuse(&errors));
                return;
            }
            Ok(v) => v,
        };
        if !validated.errors.is_empty() {
            let _ = reply.send(refuse(&validated.errors));
            return;
        }
        let local = LocalPackages::of(&validated);
        let files = local.texts;
        let read_digest = AppliedPackages::digest_of(&files);
        if !local.broken.is_empty() || read_digest != digest {
            let _ = reply.send(refuse(&[ConfigError::file(
                &self.config_dir.join("packages.d"),
                format!(
                    "changed since `vigil apply` validated it (digest {digest}, now {read_digest}), or the host reads another config dir; nothing applied, run vigil apply again"
                ),
            )]));
            return;
        }
        if current.as_ref().is_some_and(|c| c.digest == read_digest) {
            let _ = reply.send(Response::ok(crate::views::ApplyOutput::unchanged(
                current.clone(),
                Vec::new(),
            )));
            return;
        }
        let set = AppliedPackages {
            revision: current.as_ref().map_or(0, |c| c.revision) + 1,
            digest: read_digest,
            files,
            applied_by: format!("vigil apply on {}", self.node),
            applied_ms: now_ms(),
        };
        self.store_applied(set, Some(reply));
    }

    /// Stores `set` as the cluster's package set on a task (compare-and-swap
    /// against the set this node saw last); [`Event::AppliedStored`] brings
    /// the answer back.
    fn store_applied(
        &mut self,
        set: AppliedPackages,
        reply: Option<tokio::sync::oneshot::Sender<Response>>,
    ) {
        let (work, events) = (self.manager.put_applied(set), self.events.clone());
        tokio::spawn(async move {
            let result = Box::new(work.await);
            let _ = events.send(Event::AppliedStored { result, reply });
        });
    }

    /// A package set stored (or not): runs it here, and answers `vigil
    /// apply` with what changed.
    fn applied_stored(
        &mut self,
        result: Result<crate::store::Versioned<AppliedPackages>, crate::store::StoreError>,
        reply: Option<tokio::sync::oneshot::Sender<Response>>,
    ) {
        let changes = match result {
            Ok(written) => {
                let digest = written.value.digest.clone();
                self.manager.applied_stored(written);
                self.on_applied().unwrap_or_else(|| {
                    self.last_changes
                        .as_ref()
                        .filter(|(d, _)| *d == digest)
                        .map(|(_, c)| c.clone())
                        .unwrap_or_default()
                })
            }
            Err(e) => {
                match &reply {
                    Some(_) => {
                        warn!(error = %e, "storing the applied package set failed; nothing applied")
                    }
                    None => {
                        error!(error = %e, "cannot store the reloaded package set; packages unchanged")
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(Response::error(format!(
                        "storing the package set failed: {e}; nothing applied"
                    )));
                }
                return;
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(Response::ok(crate::views::ApplyOutput {
                ok: true,
                applied: self
                    .manager
                    .applied()
                    .map(|a| crate::views::AppliedStatus::new(&a.value)),
                changed: true,
                added: changes.added,
                restarted: changes.redefined,
                replanned: changes.replanned,
                removed: changes.removed,
                errors: Vec::new(),
            }));
        }
    }

    /// On one node (embedded store) a reload applies `packages.d/` as
    /// `vigil apply` does, except that a broken file keeps the version
    /// applied before (shown as an error) instead of refusing the whole
    /// set; on a cluster it only says how the local files differ from the
    /// applied set.
    fn reload_packages(&mut self, validated: &Validated) {
        let local = LocalPackages::of(validated);
        let current = self.manager.applied().map(|a| a.value.clone());
        if self.manager.on_cluster() {
            if let Some(d) = current
                .as_ref()
                .and_then(|c| applied::file_differences(&local.texts, &c.files))
            {
                warn!(differences = %d, "packages.d differs from the applied package set, which every host runs; `vigil apply` makes it the cluster's");
            }
            return;
        }
        let files = applied::compose_reload(&local.texts, &local.broken, current.as_ref());
        for row in &mut self.config_errors {
            let name = applied::file_name(&row.file);
            if local.broken.contains(&name)
                && row.file.parent() == Some(self.config_dir.join("packages.d").as_path())
                && let Some(p) =
                    self.manager.packages().into_iter().find(|p| {
                        applied::file_name(&p.source) == name && files.contains_key(&name)
                    })
            {
                warn!(package = %p.name, file = %row.file.display(), "keeping the last good version of the package");
                row.kept_package = Some(p.name);
            }
        }
        let digest = AppliedPackages::digest_of(&files);
        if current.as_ref().is_some_and(|c| c.digest == digest) {
            return;
        }
        let set = AppliedPackages {
            revision: current.as_ref().map_or(0, |c| c.revision) + 1,
            digest,
            files,
            applied_by: format!("reload on {}", self.node),
            applied_ms: now_ms(),
        };
        self.store_applied(set, None);
    }

    fn on_monitor_event(&mut self, event: MonitorEvent) {
        let monitor = match &event {
            MonitorEvent::Declared { monitor, .. }
            | MonitorEvent::Samples { monitor, .. }
            | MonitorEvent::Failed { monitor, .. } => monitor.clone(),
        };
        if let MonitorEvent::Failed { reason, .. } = &event {
            let problems = self.monitor_problems.entry(monitor.clone()).or_default();
            problems.last_error = Some(reason.clone());
            problems.last_error_at = Some(api::rfc3339(now_ms()));
        }
        let (applied, transitions) = self.hub.apply(event, now_ms());
        if let Some(last) = applied.refused.last() {
            let problems = self.monitor_problems.entry(monitor.clone()).or_default();
            problems.refused_samples += applied.refused.len() as u64;
            problems.last_refused = Some(last.clone());
        }
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
            self.manager.on_transition(t);
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
            Request::Status => match self.manager.status(&self.hub) {
                Ok(mut status) => {
                    status.config_errors = self.all_errors();
                    status.hooks = self.hooks.rows();
                    Response::ok(status)
                }
                Err(e) => Response::error(e.to_string()),
            },
            Request::Why { package } => match self.manager.why(&package, &self.hub) {
                Ok(mut why) => {
                    why.resources = self.why_resources(&package);
                    why.text = with_causes_here(&why.text, &self.node, &why.resources);
                    for r in &why.resources {
                        if !why.text.ends_with('\n') {
                            why.text.push('\n');
                        }
                        why.text.push_str(&format!("{r}\n"));
                    }
                    Response::ok(why)
                }
                Err(e) => Response::error(self.broken_package(&package).unwrap_or(e)),
            },
            Request::Pkg { .. } | Request::Node { .. } | Request::NodeMaintenance { .. } => {
                Response::error("operator command: not handled here")
            }
            Request::ConfigErrors => Response::ok(self.all_errors()),
            Request::Applied => Response::ok(crate::views::AppliedSetOutput {
                applied: self
                    .manager
                    .applied()
                    .map(|a| crate::views::AppliedStatus::new(&a.value)),
                files: self
                    .manager
                    .applied()
                    .map(|a| a.value.files.clone())
                    .unwrap_or_default(),
            }),
            // Answered by the main loop itself (the reply waits for a read).
            Request::Apply { .. } => Response::error("apply: not handled here"),
            Request::Health => Response::ok(crate::views::HealthOutput::new(
                &self.node,
                self.manager.on_cluster(),
                self.manager.lease_in_doubt(),
            )),
            Request::Monitors => Response::ok(self.monitor_rows()),
        }
    }

    /// Every monitor as `monitor list` shows it, with the problems the
    /// daemon kept and the duplicate publishers among the declarations
    /// the monitors actually made.
    fn monitor_rows(&self) -> Vec<crate::views::MonitorRow> {
        let monitors = self.hub.registry.monitors();
        let mut rows: BTreeMap<&str, crate::views::MonitorRow> = monitors
            .iter()
            .map(|(name, record)| {
                let mut row = api::monitor_row(name, record);
                if let Some(problems) = self.monitor_problems.get(name) {
                    row.problems = problems.clone();
                }
                (name.as_str(), row)
            })
            .collect();
        let duplicates = crate::registry::duplicate_publishers(
            monitors
                .iter()
                .map(|(name, record)| (name.as_str(), record.patterns.as_slice())),
        );
        for d in duplicates {
            let (a, b) = (&d.first, &d.second);
            for ((this, mine), (other, theirs)) in [(a, b), (b, a)] {
                if let Some(row) = rows.get_mut(this.as_str()) {
                    row.problems.duplicate_publishers.push(format!(
                        "monitor {other} declares {theirs} too (this one: {mine})"
                    ));
                }
            }
        }
        rows.into_values().collect()
    }

    /// How this node judges each resource `package` requires, with what
    /// explains it: the latest value against the criterion, a failed
    /// monitor, or no monitor at all.
    fn why_resources(&self, package: &str) -> Vec<crate::views::WhyResource> {
        let monitors = self.hub.registry.monitors();
        self.hub
            .states(package)
            .into_iter()
            .filter_map(|(name, _)| {
                let judged = self.hub.judged(package, &name)?;
                let entry = self.hub.registry.get(&name);
                let failed = entry
                    .and_then(|e| Some((e.monitor.as_str(), monitors.get(&e.monitor)?)))
                    .and_then(|(m, record)| match &record.status {
                        crate::registry::MonitorStatus::Failed(reason) => {
                            Some(format!("monitor {m} failed: {reason}"))
                        }
                        _ => None,
                    });
                let detail = if !self.hub.registry.is_declared(&name) {
                    "no monitor declares it".to_owned()
                } else if let Some(failed) = failed {
                    failed
                } else {
                    let detail = judged
                        .detail
                        .clone()
                        .unwrap_or_else(|| "no sample yet".to_owned());
                    // The monitor's own words on the value (the lan
                    // monitor: which interface has the subnet, or why none).
                    match entry.and_then(|e| e.sample.reason.as_deref()) {
                        Some(reason) if !detail.contains(reason) => {
                            format!("{detail} ({reason})")
                        }
                        _ => detail,
                    }
                };
                Some(crate::views::WhyResource {
                    name: name.to_string(),
                    state: judged.state.as_str().to_owned(),
                    criterion: judged.criteria,
                    rise: judged.rise,
                    fall: judged.fall,
                    good_run: judged.good_run,
                    bad_run: judged.not_good_run,
                    detail,
                    implied_by: self.manager.implied_by(package, name.as_str()),
                })
            })
            .collect()
    }

    /// "file packages.d/x.toml is broken: ..." when the package is unknown
    /// because its file did not load.
    fn broken_package(&self, package: &str) -> Option<String> {
        let file = self
            .config_dir
            .join("packages.d")
            .join(format!("{package}.toml"));
        let errors: Vec<String> = self
            .config_errors
            .iter()
            .filter(|e| e.file == file)
            .map(|e| match e.line {
                Some(line) => format!("line {line}: {}", e.message),
                None => e.message.clone(),
            })
            .collect();
        (!errors.is_empty()).then(|| {
            format!(
                "file packages.d/{package}.toml is broken: {} (`vigil check` lists every error)",
                errors.join("; ")
            )
        })
    }

    /// Reads and validates the configuration on a task; the result comes
    /// back as [`Event::Reloaded`], so a file that blocks or a slow probe
    /// never stops the loop (heartbeats, the socket, package work).
    fn start_reload(&mut self) {
        if self.reload != ReloadState::Idle {
            self.reload = ReloadState::RunningThenAgain;
            return;
        }
        self.reload = ReloadState::Running;
        let (dir, events) = (self.config_dir.clone(), self.events.clone());
        tokio::spawn(async move {
            let result = validation::validate(&dir, Some(validation::HOST_PROBE_DEADLINE)).await;
            let _ = events.send(Event::Reloaded(Box::new(result)));
        });
    }

    fn finish_reload(&mut self, read: Result<Validated, Vec<ConfigError>>) {
        let plan = plan_reload(&self.config, &self.node, &self.topology.running(), &read);
        self.config_errors = plan.errors;
        if let Some(why) = plan.refused {
            for e in &self.config_errors {
                error!(error = %e, "configuration error");
            }
            error!(reason = %why, "reload refused");
        } else if let (Some(cluster), Ok(validated)) = (plan.cluster, read) {
            let kept: BTreeSet<PathBuf> = self
                .config_errors
                .iter()
                .filter(|e| e.kept_running.is_some())
                .map(|e| e.file.clone())
                .collect();
            log_config_errors(&validated, &kept);
            for message in &plan.needs_restart {
                error!("{message}");
            }
            for e in &self.config_errors {
                if let Some(monitor) = &e.kept_running {
                    warn!(monitor = %monitor, file = %e.file.display(), "keeping the last good version of the monitor");
                }
            }
            if let Some(changes) = &plan.package_changes {
                info!(%changes, "packages.d changed");
            }
            self.topology
                .set_context(validation::runtime_context(&cluster));
            let monitors = plan.monitors.len();
            self.config.cluster = cluster;
            self.config.monitors = plan.monitors;
            self.config.packages = validated.config.packages.clone();
            self.reload_packages(&validated);
            self.reconcile_monitors();
            info!(
                monitors,
                errors = self.config_errors.len(),
                "configuration reloaded"
            );
        }
        let again = self.reload == ReloadState::RunningThenAgain;
        self.reload = ReloadState::Idle;
        if again {
            self.start_reload();
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

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;

    const CLUSTER: &str = "[cluster]\nname = \"t\"\nnodes = [\"node1\"]\n";

    fn write_all(dir: &Path, files: &[(&str, &str)]) {
        for sub in ["monitors.d", "packages.d"] {
            let _ = std::fs::remove_dir_all(dir.join(sub));
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    /// Loads `before` as the configuration in force (every monitor
    /// running), then plans a reload to `after`, and renders the plan.
    fn check(before: &[(&str, &str)], after: &[(&str, &str)], expect: Expect) {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path(), before);
        let current = config::load(dir.path()).expect("before loads");
        let running = current
            .monitors
            .iter()
            .map(|m| (m.name.clone(), m.clone()))
            .collect();
        write_all(dir.path(), after);
        let read = config::load(dir.path()).map(|mut config| Validated {
            package_texts: BTreeMap::new(),
            errors: std::mem::take(&mut config.errors),
            consequences: Vec::new(),
            duplicates: Vec::new(),
            unprobed: Vec::new(),
            monitors: config.monitors.len(),
            config,
        });
        let plan = plan_reload(&current, "node1", &running, &read);
        let mut out = String::new();
        if let Some(why) = &plan.refused {
            out += &format!("refused: {why}\n");
        }
        for m in &plan.needs_restart {
            out += &format!("needs restart: {m}\n");
        }
        for m in &plan.monitors {
            out += &format!("monitor {} every {:?}\n", m.name, m.interval);
        }
        for e in &plan.errors {
            out += &format!("error: {e}\n");
        }
        if let Some(changes) = &plan.package_changes {
            out += &format!("packages: {changes}\n");
        }
        expect.assert_eq(&out.replace(&dir.path().display().to_string(), "DIR"));
    }

    fn monitor(name: &str, interval: &str) -> String {
        format!(
            "name = \"{name}\"\ntype = \"exec\"\ncommand = [\"x\"]\ninterval_seconds = {interval}\n"
        )
    }

    fn package(name: &str, halt: &str) -> String {
        format!(
            "name = \"{name}\"\ntype = \"failover\"\nnodes = [\"node1\"]\nrun = [\"/bin/true\"]\nhalt = [\"{halt}\"]\n"
        )
    }

    #[test]
    fn a_broken_monitor_file_keeps_the_last_good_version() {
        let (a1, a2, b, c) = (
            monitor("a", "1"),
            monitor("a", "2"),
            monitor("b", "1"),
            monitor("c", "1"),
        );
        check(
            &[
                ("cluster.toml", CLUSTER),
                ("monitors.d/a.toml", &a1),
                ("monitors.d/b.toml", &b),
            ],
            &[
                ("cluster.toml", CLUSTER),
                (
                    "monitors.d/a.toml",
                    "name = \"a\"\ntype = \"exec\"\ninterval = 2\n",
                ),
                ("monitors.d/c.toml", &c),
            ],
            expect![[r#"
                monitor a every 1s
                monitor c every 1s
                error: DIR/monitors.d/a.toml:3: unknown field `interval`, expected one of `name`, `type`, `plugin`, `command`, `mode`, `isolation`, `interval_seconds`, `timeout_seconds`, `enabled`, `params` (monitor a keeps running its last good version)
            "#]],
        );
        // Fixed, the new version applies.
        check(
            &[("cluster.toml", CLUSTER), ("monitors.d/a.toml", &a1)],
            &[("cluster.toml", CLUSTER), ("monitors.d/a.toml", &a2)],
            expect![[r#"
                monitor a every 2s
            "#]],
        );
    }

    #[test]
    fn cluster_toml_without_this_node_or_invalid_is_refused_whole() {
        let a = monitor("a", "1");
        check(
            &[("cluster.toml", CLUSTER), ("monitors.d/a.toml", &a)],
            &[
                (
                    "cluster.toml",
                    "[cluster]\nname = \"t\"\nnodes = [\"node9\"]\n",
                ),
                ("monitors.d/a.toml", &a),
            ],
            expect![[r#"
                refused: DIR/cluster.toml: node "node1" is not in cluster.nodes (node9); this host cannot apply it; nothing applied
                error: DIR/cluster.toml: node "node1" is not in cluster.nodes (node9); this host cannot apply it
            "#]],
        );
        check(
            &[("cluster.toml", CLUSTER)],
            &[("cluster.toml", "[cluster]\nname = \"t\"\n")],
            expect![[r#"
                refused: cluster.toml is invalid; nothing applied
                error: DIR/cluster.toml:1: missing field `nodes`
            "#]],
        );
    }

    #[test]
    fn hooks_are_bound_at_startup_but_a_hook_that_only_moved_down_is_no_change() {
        let hook = "[[hook]]\nname = \"h\"\ncommand = [\"/bin/true\"]\n";
        let moved = format!("{CLUSTER}\n\n{hook}");
        let changed = format!("{CLUSTER}{hook}retries = 1\n");
        let before = format!("{CLUSTER}{hook}");
        check(
            &[("cluster.toml", &before)],
            &[("cluster.toml", &moved)],
            expect![[""]],
        );
        check(
            &[("cluster.toml", &before)],
            &[("cluster.toml", &changed)],
            expect![[r#"
                needs restart: [[hook]] changed in DIR/cluster.toml: this needs a restart of vigil host; keeping the old value
            "#]],
        );
    }

    #[test]
    fn keys_bound_at_startup_keep_their_values_and_package_changes_are_reported() {
        let a = monitor("a", "1");
        check(
            &[
                ("cluster.toml", CLUSTER),
                ("packages.d/p.toml", &package("p", "/bin/true")),
                ("packages.d/q.toml", &package("q", "/bin/true")),
            ],
            &[
                (
                    "cluster.toml",
                    "[cluster]\nname = \"t\"\nnodes = [\"node1\", \"node2\"]\n[store]\ntype = \"embedded\"\npath = \"other\"\n[api]\nsocket = \"x.sock\"\n[paths]\nlog_dir = \"logs\"\n",
                ),
                ("monitors.d/a.toml", &a),
                ("packages.d/p.toml", &package("p", "/bin/false")),
                ("packages.d/r.toml", &package("r", "/bin/true")),
            ],
            expect![[r#"
                needs restart: cluster.nodes changed in DIR/cluster.toml: this needs a restart of vigil host; keeping the old value
                needs restart: [store] changed in DIR/cluster.toml: this needs a restart of vigil host; keeping the old value
                needs restart: api.socket changed in DIR/cluster.toml: this needs a restart of vigil host; keeping the old value
                needs restart: [paths] changed in DIR/cluster.toml: this needs a restart of vigil host; keeping the old value
                monitor a every 1s
                packages: added: r; changed: p; removed: q
            "#]],
        );
    }
}
