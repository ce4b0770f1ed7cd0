//! Alert hooks (`[[hook]]` in cluster.toml): each cluster event a hook asks
//! for goes to its program as one JSON document on stdin (a
//! [`ClusterEvent`]) and as `VIGIL_EVENT_*` variables.
//!
//! Off the main loop by construction: [`Hooks::send`] only puts the event in
//! each matching hook's bounded queue (`queue_length`, `try_send`) and returns; a full queue
//! drops the event for that hook, counts it and logs once per burst. Each
//! hook has one worker task that takes its events in order (so a hook sees
//! the events in the order they happened), runs the program under the
//! hook's timeout (the whole process group is killed then, as for monitor
//! programs, see [`crate::runtime::subprocess`]) and tries a failed run
//! again `retries` times. A semaphore bounds how many hook programs run at
//! once across all hooks.
//!
//! It does not decide what an event is ([`crate::watch`] does) and never
//! tells the daemon anything: a hook cannot change what the cluster does.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tracing::{info, warn};

use crate::config::HookConfig;
use crate::runtime::subprocess::{self, Exit};
use crate::views::{ClusterEvent, HookRow};

/// Hook programs running at once on one host, all hooks together.
pub const MAX_RUNNING: usize = 4;
/// The pause before a failed run is tried again.
pub const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The hooks of this host; cheap to clone. Without hooks every call is a
/// no-op.
#[derive(Clone, Default)]
pub struct Hooks {
    hooks: Arc<[Hook]>,
}

struct Hook {
    config: HookConfig,
    queue: mpsc::Sender<Arc<ClusterEvent>>,
    queued: Arc<AtomicUsize>,
    stats: Arc<Mutex<HookRow>>,
    /// Drops since the queue last took an event: one log line per burst.
    dropping: AtomicBool,
    dropped_in_burst: AtomicU64,
}

impl Hooks {
    /// Starts one worker per hook (on the current tokio runtime); commands
    /// run with `dir` (the config dir) as their working directory.
    pub fn start(configs: &[HookConfig], dir: &std::path::Path) -> Self {
        let running = Arc::new(Semaphore::new(MAX_RUNNING));
        let hooks = configs
            .iter()
            .map(|config| {
                let (tx, rx) = mpsc::channel(config.queue_length.max(1));
                let stats = Arc::new(Mutex::new(HookRow {
                    name: config.name.clone(),
                    events: config.events.clone(),
                    ..HookRow::default()
                }));
                let queued = Arc::new(AtomicUsize::new(0));
                tokio::spawn(work(
                    config.clone(),
                    dir.to_owned(),
                    rx,
                    Arc::clone(&running),
                    Arc::clone(&stats),
                    Arc::clone(&queued),
                ));
                Hook {
                    config: config.clone(),
                    queue: tx,
                    queued,
                    stats,
                    dropping: AtomicBool::new(false),
                    dropped_in_burst: AtomicU64::new(0),
                }
            })
            .collect();
        Self { hooks }
    }

    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// Queues `event` for every hook that asks for its kind; never waits.
    pub fn send(&self, event: &ClusterEvent) {
        let mut shared: Option<Arc<ClusterEvent>> = None;
        for hook in self.hooks.iter() {
            if !hook.config.events.contains(&event.kind) {
                continue;
            }
            let event = Arc::clone(shared.get_or_insert_with(|| Arc::new(event.clone())));
            match hook.queue.try_send(event) {
                Ok(()) => {
                    hook.queued.fetch_add(1, Ordering::Relaxed);
                    if hook.dropping.swap(false, Ordering::Relaxed) {
                        let dropped = hook.dropped_in_burst.swap(0, Ordering::Relaxed);
                        info!(hook = %hook.config.name, dropped, "hook queue takes events again");
                    }
                }
                Err(mpsc::error::TrySendError::Full(event)) => {
                    lock(&hook.stats).dropped += 1;
                    hook.dropped_in_burst.fetch_add(1, Ordering::Relaxed);
                    if !hook.dropping.swap(true, Ordering::Relaxed) {
                        warn!(
                            hook = %hook.config.name,
                            seq = event.seq,
                            queue = hook.queue.max_capacity(),
                            "hook queue full: dropping its events until it drains (counted in vigil_hook_dropped_total)"
                        );
                    }
                }
                // The worker is gone only when the runtime shuts down.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }

    /// Each hook with its counters, for `vigil status` and `/metrics`.
    pub fn rows(&self) -> Vec<HookRow> {
        self.hooks
            .iter()
            .map(|h| {
                let mut row = lock(&h.stats).clone();
                row.queued = h.queued.load(Ordering::Relaxed);
                row
            })
            .collect()
    }
}

fn lock(stats: &Mutex<HookRow>) -> std::sync::MutexGuard<'_, HookRow> {
    // Plain counters: a panic while holding it leaves them usable.
    stats.lock().unwrap_or_else(|p| p.into_inner())
}

/// One hook's worker: its events one after the other, each tried
/// `1 + retries` times at most.
async fn work(
    config: HookConfig,
    dir: std::path::PathBuf,
    mut queue: mpsc::Receiver<Arc<ClusterEvent>>,
    running: Arc<Semaphore>,
    stats: Arc<Mutex<HookRow>>,
    queued: Arc<AtomicUsize>,
) {
    while let Some(event) = queue.recv().await {
        let input = match serde_json::to_vec(&*event) {
            Ok(mut json) => {
                json.push(b'\n');
                json
            }
            // A struct of strings and numbers always serializes.
            Err(_) => continue,
        };
        let mut delivered = false;
        for attempt in 1..=config.retries + 1 {
            let outcome = {
                // Closed only if the runtime goes away.
                let Ok(_permit) = running.acquire().await else {
                    return;
                };
                let mut cmd = subprocess::command(&config.command, true);
                cmd.current_dir(&dir)
                    .envs(event.env())
                    .env("VIGIL_HOOK", &config.name)
                    .env("VIGIL_HOOK_ATTEMPT", attempt.to_string());
                subprocess::run_command(cmd, Some(&input), config.timeout).await
            };
            let failure = match outcome {
                Ok(out) if out.exit == Exit::Code(0) => None,
                Ok(out) => Some((
                    out.exit == Exit::TimedOut,
                    out.describe_failure(config.timeout),
                )),
                Err(e) => Some((false, e.to_string())),
            };
            let Some((timed_out, why)) = failure else {
                delivered = true;
                break;
            };
            warn!(
                hook = %config.name,
                seq = event.seq,
                kind = %event.kind,
                attempt,
                attempts = config.retries + 1,
                status = %why,
                "hook failed"
            );
            {
                let mut s = lock(&stats);
                s.failed_runs += 1;
                s.timed_out_runs += u64::from(timed_out);
                s.last_error = Some(why);
                s.last_error_at = Some(crate::views::rfc3339(vigil_sdk::now_ms()));
            }
            if attempt <= config.retries {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
        {
            let mut s = lock(&stats);
            if delivered {
                s.delivered += 1;
            } else {
                s.given_up += 1;
            }
        }
        queued.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::EventKind;

    fn event(seq: u64, kind: EventKind) -> ClusterEvent {
        ClusterEvent {
            seq,
            at: "2026-01-01T00:00:00Z".into(),
            at_ms: 1_767_225_600_000,
            kind,
            subject: "db".into(),
            text: "db: up on node1 → down".into(),
            observed_by: "node2".into(),
            node: Some("node1".into()),
            package: Some("db".into()),
            resource: None,
            old_state: "up".into(),
            new_state: "down".into(),
            old_nodes: vec!["node1".into()],
            new_nodes: vec![],
            reason: "its node node1 is gone".into(),
            reason_label: "other".into(),
            fence_token: Some(4),
        }
    }

    fn hook(dir: &std::path::Path, name: &str, script: &str, events: &[EventKind]) -> HookConfig {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(format!("{name}.sh"));
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        HookConfig {
            name: name.into(),
            command: vec![path.display().to_string()],
            events: events.to_vec(),
            timeout: Duration::from_secs(5),
            retries: 1,
            queue_length: 256,
            source: dir.join("cluster.toml"),
            line: 1,
        }
    }

    async fn settle(hooks: &Hooks, done: impl Fn(&[HookRow]) -> bool) -> Vec<HookRow> {
        for _ in 0..200 {
            let rows = hooks.rows();
            if done(&rows) {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("hooks did not settle: {:?}", hooks.rows());
    }

    #[tokio::test]
    async fn events_reach_matching_hooks_in_order_with_stdin_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let script = format!(
            "#!/bin/sh\nread -r json\necho \"$VIGIL_EVENT_SEQ $VIGIL_EVENT_KIND $VIGIL_EVENT_PACKAGE $VIGIL_EVENT_FENCE_TOKEN $VIGIL_HOOK $json\" >> {}\n",
            log.display()
        );
        let nodes = hook(dir.path(), "nodes", &script, &[EventKind::Node]);
        let all = hook(dir.path(), "all", &script, &EventKind::ALL);
        let hooks = Hooks::start(&[nodes, all], dir.path());
        for seq in 1..=5 {
            let kind = if seq == 3 {
                EventKind::Node
            } else {
                EventKind::Package
            };
            hooks.send(&event(seq, kind));
        }
        let rows = settle(&hooks, |r| r.iter().map(|h| h.delivered).sum::<u64>() == 6).await;
        assert_eq!(rows[0].delivered, 1, "{rows:?}");
        let text = std::fs::read_to_string(&log).unwrap();
        let of_all: Vec<u64> = text
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some("all"))
            .map(|l| l.split(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(of_all, [1, 2, 3, 4, 5], "{text}");
        let line = text.lines().next().unwrap();
        assert!(line.contains(" db 4 "), "{line}");
        let json = line.splitn(6, ' ').nth(5).unwrap();
        let back: ClusterEvent = serde_json::from_str(json).unwrap();
        assert_eq!(back.fence_token, Some(4));
    }

    #[tokio::test]
    async fn a_failing_hook_is_retried_then_given_up_and_a_hanging_one_killed() {
        let dir = tempfile::tempdir().unwrap();
        let fails = hook(dir.path(), "fails", "#!/bin/sh\nexit 3\n", &EventKind::ALL);
        let mut hangs = hook(
            dir.path(),
            "hangs",
            "#!/bin/sh\nsleep 30\n",
            &EventKind::ALL,
        );
        hangs.timeout = Duration::from_millis(200);
        hangs.retries = 0;
        let hooks = Hooks::start(&[fails, hangs], dir.path());
        let sent = std::time::Instant::now();
        hooks.send(&event(1, EventKind::Package));
        // Sending never waits for a hook.
        assert!(sent.elapsed() < Duration::from_secs(1));
        let rows = settle(&hooks, |r| r.iter().all(|h| h.given_up == 1)).await;
        assert_eq!(rows[0].failed_runs, 2, "one try and one retry: {rows:?}");
        assert!(
            rows[0].last_error.as_deref() == Some("exited with status 3"),
            "{rows:?}"
        );
        assert_eq!(rows[1].timed_out_runs, 1, "{rows:?}");
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let mut slow = hook(dir.path(), "slow", "#!/bin/sh\nsleep 1\n", &EventKind::ALL);
        slow.retries = 0;
        slow.queue_length = 2;
        let hooks = Hooks::start(&[slow], dir.path());
        for seq in 1..=10 {
            hooks.send(&event(seq, EventKind::Package));
        }
        let rows = hooks.rows();
        // One taken by the worker at most, two queued: the rest dropped.
        assert!(rows[0].dropped >= 7, "{rows:?}");
        assert!(rows[0].queued <= 3, "{rows:?}");
    }
}
