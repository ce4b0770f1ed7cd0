//! vigil-fs: the bundled `fs` monitor. For every configured mount point it
//! publishes `/fs/<instance>/used_percent`, `/avail_mb`,
//! `/inodes_used_percent` (from `statvfs`) and `/status` (`up` when the path
//! is a mount point mounted read-write, else `down` with why).
//!
//! Mount, remount and umount are pushed as they happen: a thread started in
//! [`Monitor::start`] waits for `POLLPRI` on `/proc/self/mountinfo` (the
//! SDK's [`MountWatch`]), which the kernel raises on every change to the
//! mount table. Usage numbers are read on polls only; the kernel has no
//! event for "the disk filled up".
//!
//! This monitor does not judge thresholds (that is a package's `[[resource]]`
//! criterion) and does not mount or repair anything.
//!
//! A configured path that is not a mount point when the monitor is
//! configured is accepted as long as it is an existing directory: a
//! failover package's file system is legitimately unmounted on nodes where
//! the package does not run, so the monitor reports `down` (`not mounted`)
//! rather than refusing to start. A path that does not exist at all is
//! refused, since it is almost certainly a typo.

pub mod usage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use nix::errno::Errno;
use serde::Deserialize;
use vigil_sdk::events::{EventThread, StopSignal};
use vigil_sdk::mountinfo::{self, MountState, MountWatch};
use vigil_sdk::{Monitor, MonitorError, ResourceName, ResourcePattern, Sample, SampleSink};

use crate::usage::{FsStats, Usage};

/// Why the params were refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("params: {0}")]
    Shape(#[from] serde_json::Error),
    #[error("params.mounts is empty: name at least one mount point (`data = \"/srv/data\"`)")]
    NoMounts,
    #[error(
        "params.mounts: instance name {0:?} is not a valid resource name segment \
         (allowed: letters, digits and . _ : @ + -)"
    )]
    BadInstance(String),
    #[error("params.mounts.{instance}: mount point {path:?} is not an absolute path")]
    NotAbsolute { instance: String, path: String },
    #[error("params.mounts.{instance}: mount point {path} does not exist: {source}")]
    Missing {
        instance: String,
        path: String,
        source: std::io::Error,
    },
    #[error("params.mounts.{instance}: mount point {path} is not a directory")]
    NotDirectory { instance: String, path: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    mounts: BTreeMap<String, String>,
}

/// One configured mount point and the names it publishes.
#[derive(Debug, Clone)]
struct Instance {
    path: PathBuf,
    status: ResourceName,
    used_percent: ResourceName,
    avail_mb: ResourceName,
    inodes_used_percent: ResourceName,
}

impl Instance {
    fn new(instance: &str, raw_path: &str) -> Result<Self, ConfigError> {
        let name = |leaf: &str| {
            ResourceName::new(format!("/fs/{instance}/{leaf}"))
                .map_err(|_| ConfigError::BadInstance(instance.to_owned()))
        };
        let status = name("status")?;
        let used_percent = name("used_percent")?;
        let avail_mb = name("avail_mb")?;
        let inodes_used_percent = name("inodes_used_percent")?;
        // A segment with a slash would still parse as a longer valid name.
        if instance.contains('/') {
            return Err(ConfigError::BadInstance(instance.to_owned()));
        }
        let path = Path::new(raw_path);
        if !path.is_absolute() {
            return Err(ConfigError::NotAbsolute {
                instance: instance.to_owned(),
                path: raw_path.to_owned(),
            });
        }
        let metadata = std::fs::metadata(path).map_err(|source| ConfigError::Missing {
            instance: instance.to_owned(),
            path: raw_path.to_owned(),
            source,
        })?;
        if !metadata.is_dir() {
            return Err(ConfigError::NotDirectory {
                instance: instance.to_owned(),
                path: raw_path.to_owned(),
            });
        }
        // mountinfo lists resolved paths; a configured symlink or trailing
        // slash must still match.
        let path = std::fs::canonicalize(path).map_err(|source| ConfigError::Missing {
            instance: instance.to_owned(),
            path: raw_path.to_owned(),
            source,
        })?;
        Ok(Self {
            path,
            status,
            used_percent,
            avail_mb,
            inodes_used_percent,
        })
    }

    fn status_sample(&self, state: MountState) -> Sample {
        let path = self.path.display();
        match state {
            MountState::ReadWrite => Sample::up(self.status.clone()),
            MountState::ReadOnly => Sample::down(
                self.status.clone(),
                format!("read-only: {path} is mounted ro"),
            ),
            MountState::NotMounted => {
                Sample::down(self.status.clone(), format!("not mounted: {path}"))
            }
        }
    }

    fn usage_unknown(&self, reason: &str) -> [Sample; 3] {
        [
            Sample::unknown(self.used_percent.clone(), reason),
            Sample::unknown(self.avail_mb.clone(), reason),
            Sample::unknown(self.inodes_used_percent.clone(), reason),
        ]
    }

    fn usage_samples(&self, usage: &Usage) -> [Sample; 3] {
        let inodes = match usage.inodes_used_percent {
            Some(percent) => Sample::number(self.inodes_used_percent.clone(), percent, Some("%")),
            None => Sample::unknown(
                self.inodes_used_percent.clone(),
                "file system reports no inode counts",
            ),
        };
        [
            Sample::number(self.used_percent.clone(), usage.used_percent, Some("%")),
            Sample::number(self.avail_mb.clone(), usage.avail_mb, Some("MB")),
            inodes,
        ]
    }
}

type StatResult = Result<FsStats, Errno>;

/// The `fs` monitor.
#[derive(Debug)]
pub struct FsMonitor {
    instances: Vec<Instance>,
    /// A `statvfs` still running from an earlier poll (a hung NFS server
    /// can block it for minutes); no second one is started for that mount
    /// until it returns.
    pending: BTreeMap<usize, mpsc::Receiver<StatResult>>,
    watcher: Option<EventThread>,
}

impl FsMonitor {
    fn from_params(params: serde_json::Value) -> Result<Self, ConfigError> {
        let params: Params = serde_json::from_value(params)?;
        if params.mounts.is_empty() {
            return Err(ConfigError::NoMounts);
        }
        let instances = params
            .mounts
            .iter()
            .map(|(instance, path)| Instance::new(instance, path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            instances,
            pending: BTreeMap::new(),
            watcher: None,
        })
    }

    fn statvfs(&mut self, index: usize, deadline: Instant) -> Result<FsStats, String> {
        let earlier = self.pending.remove(&index).filter(|receiver| {
            // One that has finished meanwhile holds a stale answer: ask again.
            matches!(receiver.try_recv(), Err(mpsc::TryRecvError::Empty))
        });
        let receiver = match earlier {
            Some(receiver) => receiver,
            None => {
                let (sender, receiver) = mpsc::channel();
                let path = self.instances[index].path.clone();
                std::thread::Builder::new()
                    .name("vigil-fs-statvfs".into())
                    .spawn(move || {
                        let result = nix::sys::statvfs::statvfs(&path).map(|s| FsStats::from(&s));
                        let _ = sender.send(result);
                    })
                    .map_err(|e| format!("cannot start statvfs thread: {e}"))?;
                receiver
            }
        };
        match receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(stats)) => Ok(stats),
            Ok(Err(errno)) => Err(format!("statvfs failed: {errno}")),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.pending.insert(index, receiver);
                Err("statvfs did not return before the poll deadline".to_owned())
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err("statvfs thread died".to_owned()),
        }
    }
}

impl Monitor for FsMonitor {
    fn configure(params: serde_json::Value) -> Result<Self, MonitorError> {
        Self::from_params(params).map_err(|e| MonitorError::new(e.to_string()))
    }

    fn declare(&self) -> Vec<ResourcePattern> {
        self.instances
            .iter()
            .flat_map(|i| {
                [
                    &i.status,
                    &i.used_percent,
                    &i.avail_mb,
                    &i.inodes_used_percent,
                ]
            })
            .filter_map(|name| ResourcePattern::new(name.as_str()).ok())
            .collect()
    }

    fn poll(&mut self, deadline: Instant) -> Result<Vec<Sample>, MonitorError> {
        let table = mountinfo::read()
            .map_err(|e| MonitorError::new(format!("cannot read {}: {e}", mountinfo::MOUNTINFO)))?;
        let mut samples = Vec::with_capacity(self.instances.len() * 4);
        for index in 0..self.instances.len() {
            let state = mountinfo::state(&table, &self.instances[index].path);
            let instance = &self.instances[index];
            samples.push(instance.status_sample(state));
            if state == MountState::NotMounted {
                // statvfs would describe the parent file system instead.
                samples.extend(instance.usage_unknown("not mounted"));
                continue;
            }
            let instance = instance.clone();
            match self.statvfs(index, deadline) {
                Ok(stats) => samples.extend(instance.usage_samples(&Usage::from(&stats))),
                Err(reason) => samples.extend(instance.usage_unknown(&reason)),
            }
        }
        Ok(samples)
    }

    fn start(&mut self, sink: SampleSink) -> Result<(), MonitorError> {
        if self.watcher.is_some() {
            return Ok(());
        }
        // Opened here, before start returns, so that no change made after
        // start is missed: the kernel compares against the table's event
        // counter as of this open.
        let mounts = MountWatch::open()
            .map_err(|e| MonitorError::new(format!("cannot open {}: {e}", mountinfo::MOUNTINFO)))?;
        let instances = self.instances.clone();
        let thread = EventThread::spawn("vigil-fs-mounts", move |stop: &StopSignal| {
            watch_mounts(&instances, &mounts, stop, &sink);
        })
        .map_err(|e| MonitorError::new(format!("cannot start mount watcher: {e}")))?;
        self.watcher = Some(thread);
        Ok(())
    }

    fn stop(&mut self) {
        // Dropping the event thread (here or with the monitor) stops and
        // joins it.
        if let Some(thread) = self.watcher.take() {
            thread.stop();
        }
    }
}

/// Pushes the status of every instance once, then again for each instance
/// whose state changed, whenever the mount table changes; returns when
/// `stop` is signalled.
fn watch_mounts(instances: &[Instance], mounts: &MountWatch, stop: &StopSignal, sink: &SampleSink) {
    let mut last: Vec<Option<MountState>> = vec![None; instances.len()];
    let push_changes = |last: &mut [Option<MountState>]| match mountinfo::read() {
        Ok(table) => {
            let mut changed = Vec::new();
            for (instance, last) in instances.iter().zip(last.iter_mut()) {
                let state = mountinfo::state(&table, &instance.path);
                if *last != Some(state) {
                    *last = Some(state);
                    changed.push(instance.status_sample(state));
                }
            }
            sink.push(&changed);
        }
        Err(e) => {
            last.iter_mut().for_each(|l| *l = None);
            let reason = format!("cannot read {}: {e}", mountinfo::MOUNTINFO);
            let unknown: Vec<_> = instances
                .iter()
                .map(|i| Sample::unknown(i.status.clone(), &reason))
                .collect();
            sink.push(&unknown);
        }
    };
    push_changes(&mut last);
    loop {
        match stop.wait(&[mounts.watch()], None) {
            Ok(None) => return,
            Ok(Some(ready)) => {
                if ready[0] {
                    push_changes(&mut last);
                }
            }
            Err(e) => {
                let reason = format!("mount event watch failed: {e}");
                let unknown: Vec<_> = instances
                    .iter()
                    .map(|i| Sample::unknown(i.status.clone(), &reason))
                    .collect();
                sink.push(&unknown);
                return;
            }
        }
    }
}

vigil_sdk::export_monitor!(FsMonitor);
