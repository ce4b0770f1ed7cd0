//! vigil-volume: the bundled `volume` monitor. Each configured volume
//! publishes `/volume/<instance>/status` = `up`, `degraded` or `down`, with
//! a reason naming every check that was not up. A volume names any of:
//!
//! * `device` — a block device node; missing (or size 0, as a detached loop
//!   device or an empty drive reads) is down;
//! * `mount` — a mount point; not mounted is down, mounted read-only is
//!   degraded, mounted from another device than `device` is down;
//! * `md` — an md array; `inactive`/`broken` is down, missing members or
//!   `readonly` is degraded (see [`health::md_state`]);
//! * `vg`, and `lv` within it — LVM; a VG with a missing PV is degraded
//!   (EMS's `pv_summary`), an absent or exported VG is down; an LV that is
//!   not active is down, one with a health status (`partial`, `refresh
//!   needed`) is degraded.
//!
//! Device, mount and md state are pushed as they change: a thread started
//! in [`Monitor::start`] waits on `/proc/self/mountinfo` (`POLLPRI` on any
//! mount change) and on kernel uevents (a `NETLINK_KOBJECT_UEVENT` socket,
//! for device add/remove/change), and re-checks once a second as well
//! because uevents do not reach a process outside the initial network
//! namespace. LVM has no such event here; `vgs`/`lvs` run on polls, as
//! subprocesses bounded by the poll deadline, and the thread reuses their
//! last result.
//!
//! The monitor does not activate, mount, assemble or repair anything.

pub mod health;
pub mod lvm;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use serde::Deserialize;
use vigil_sdk::events::{EventThread, StopSignal, Watch};
use vigil_sdk::mountinfo::{self, MountEntry, MountWatch};
use vigil_sdk::{Monitor, MonitorError, ResourceName, ResourcePattern, Sample, SampleSink, Value};

use crate::health::Health;
use crate::lvm::{LvRecord, LvmError, VgRecord};

/// How often the event thread re-checks devices, mounts and md arrays
/// even without an event.
pub const RECHECK_PERIOD: Duration = Duration::from_secs(1);

/// Time kept back from the poll deadline for everything after `vgs`/`lvs`.
const LVM_MARGIN: Duration = Duration::from_millis(100);

/// Why the params were refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("params: {0}")]
    Shape(#[from] serde_json::Error),
    #[error("params.volumes is empty: name at least one volume (`[params.volumes.data]`)")]
    NoVolumes,
    #[error(
        "params.volumes: instance name {0:?} is not a valid resource name segment \
         (allowed: letters, digits and . _ : @ + -)"
    )]
    BadInstance(String),
    #[error("params.volumes.{0}: name at least one of device, mount, md or vg")]
    NothingToCheck(String),
    #[error("params.volumes.{instance}.{key}: {path:?} is not an absolute path")]
    NotAbsolute {
        instance: String,
        key: &'static str,
        path: String,
    },
    #[error("params.volumes.{instance}.md: {name:?} is not an md device name such as md0")]
    BadMd { instance: String, name: String },
    #[error(
        "params.volumes.{instance}.{key}: {name:?} is not a valid LVM name \
         (letters, digits and + _ . -, not starting with -)"
    )]
    BadLvmName {
        instance: String,
        key: &'static str,
        name: String,
    },
    #[error("params.volumes.{0}.lv needs vg, the volume group that holds the logical volume")]
    LvWithoutVg(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    volumes: BTreeMap<String, RawVolume>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    device: Option<String>,
    mount: Option<String>,
    md: Option<String>,
    vg: Option<String>,
    lv: Option<String>,
}

/// One configured volume.
#[derive(Debug, Clone)]
struct Volume {
    status: ResourceName,
    device: Option<PathBuf>,
    mount: Option<PathBuf>,
    md: Option<String>,
    vg: Option<String>,
    lv: Option<String>,
}

fn lvm_name_ok(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '_' | '.' | '-'))
}

impl Volume {
    fn new(instance: &str, raw: RawVolume) -> Result<Self, ConfigError> {
        let bad_instance = || ConfigError::BadInstance(instance.to_owned());
        if instance.contains('/') {
            return Err(bad_instance());
        }
        let status =
            ResourceName::new(format!("/volume/{instance}/status")).map_err(|_| bad_instance())?;
        if raw.device.is_none() && raw.mount.is_none() && raw.md.is_none() && raw.vg.is_none() {
            return Err(if raw.lv.is_some() {
                ConfigError::LvWithoutVg(instance.to_owned())
            } else {
                ConfigError::NothingToCheck(instance.to_owned())
            });
        }
        let absolute = |key: &'static str, path: Option<String>| -> Result<_, ConfigError> {
            match path {
                Some(path) if !Path::new(&path).is_absolute() => Err(ConfigError::NotAbsolute {
                    instance: instance.to_owned(),
                    key,
                    path,
                }),
                path => Ok(path.map(PathBuf::from)),
            }
        };
        let device = absolute("device", raw.device)?;
        // mountinfo lists resolved paths; resolve what can be resolved now
        // (a mount point may not exist yet on a node that never ran the
        // package, and is then compared as written).
        let mount = absolute("mount", raw.mount)?
            .map(|path| std::fs::canonicalize(&path).unwrap_or_else(|_| normalize(&path)));
        let md = match raw.md {
            Some(name) => {
                let short = name.strip_prefix("/dev/").unwrap_or(&name);
                if short.is_empty() || short.contains('/') || short.starts_with('.') {
                    return Err(ConfigError::BadMd {
                        instance: instance.to_owned(),
                        name,
                    });
                }
                Some(short.to_owned())
            }
            None => None,
        };
        for (key, name) in [("vg", &raw.vg), ("lv", &raw.lv)] {
            if let Some(name) = name.as_ref().filter(|n| !lvm_name_ok(n)) {
                return Err(ConfigError::BadLvmName {
                    instance: instance.to_owned(),
                    key,
                    name: name.clone(),
                });
            }
        }
        if raw.lv.is_some() && raw.vg.is_none() {
            return Err(ConfigError::LvWithoutVg(instance.to_owned()));
        }
        Ok(Self {
            status,
            device,
            mount,
            md,
            vg: raw.vg,
            lv: raw.lv,
        })
    }

    fn uses_lvm(&self) -> bool {
        self.vg.is_some()
    }

    /// Device, mount and md checks: cheap, no subprocess.
    fn local_checks(&self, table: &Result<Vec<MountEntry>, String>) -> Vec<Health> {
        let mut checks = Vec::new();
        let mut numbers = None;
        if let Some(device) = &self.device {
            let (health, found) = health::device(device);
            checks.push(health);
            numbers = found.map(|n| (device.as_path(), n));
        }
        if let Some(mount) = &self.mount {
            checks.push(match table {
                Ok(table) => health::mount(table, mount, numbers),
                Err(reason) => Health::Unknown(reason.clone()),
            });
        }
        if let Some(md) = &self.md {
            checks.push(health::md(md));
        }
        checks
    }

    fn lvm_checks(&self, reports: &LvmReports) -> Vec<Health> {
        let mut checks = Vec::new();
        if let Some(vg) = &self.vg {
            checks.push(match &reports.vgs {
                Some(Ok(vgs)) => lvm::vg_health(vgs, vg),
                Some(Err(error)) => Health::Unknown(error.to_string()),
                None => Health::Unknown("vgs was not run".to_owned()),
            });
            if let Some(lv) = &self.lv {
                checks.push(match &reports.lvs {
                    Some(Ok(lvs)) => lvm::lv_health(lvs, vg, lv),
                    Some(Err(error)) => Health::Unknown(error.to_string()),
                    None => Health::Unknown("lvs was not run".to_owned()),
                });
            }
        }
        checks
    }

    fn sample(&self, checks: &[Health]) -> Sample {
        let verdict = health::combine(checks);
        let sample = match verdict.status {
            Some(status) => Sample::text(self.status.clone(), status),
            None => Sample::unknown(self.status.clone(), ""),
        };
        Sample {
            reason: verdict.reason,
            ..sample
        }
    }
}

/// `/srv/data/` and `/srv//data` name the same mount point as `/srv/data`.
fn normalize(path: &Path) -> PathBuf {
    path.components().collect()
}

/// One poll's `vgs` and `lvs` results (`None`: not needed, not run).
#[derive(Debug, Default)]
struct LvmReports {
    vgs: Option<Result<Vec<VgRecord>, LvmError>>,
    lvs: Option<Result<Vec<LvRecord>, LvmError>>,
}

impl LvmReports {
    /// Runs `vgs` and `lvs` side by side, each bounded by `deadline`.
    fn collect(need_vgs: bool, need_lvs: bool, deadline: Instant) -> Self {
        let vgs = need_vgs.then(|| lvm::Report::spawn("vgs", lvm::VGS_ARGS));
        let lvs = need_lvs.then(|| lvm::Report::spawn("lvs", lvm::LVS_ARGS));
        Self {
            vgs: vgs.map(|r| {
                r.and_then(|r| r.finish(deadline))
                    .and_then(|t| lvm::parse_vgs(&t))
            }),
            lvs: lvs.map(|r| {
                r.and_then(|r| r.finish(deadline))
                    .and_then(|t| lvm::parse_lvs(&t))
            }),
        }
    }
}

fn read_mounts() -> Result<Vec<MountEntry>, String> {
    mountinfo::read().map_err(|e| format!("cannot read {}: {e}", mountinfo::MOUNTINFO))
}

/// The last LVM verdicts per volume, written by polls and read by the event
/// thread (`None` until the first poll).
type LvmCache = Arc<Mutex<Vec<Option<Vec<Health>>>>>;

/// The `volume` monitor.
#[derive(Debug)]
pub struct VolumeMonitor {
    volumes: Arc<Vec<Volume>>,
    lvm_cache: LvmCache,
    watcher: Option<EventThread>,
}

impl VolumeMonitor {
    fn from_params(params: serde_json::Value) -> Result<Self, ConfigError> {
        let params: Params = serde_json::from_value(params)?;
        if params.volumes.is_empty() {
            return Err(ConfigError::NoVolumes);
        }
        let volumes = params
            .volumes
            .into_iter()
            .map(|(instance, raw)| Volume::new(&instance, raw))
            .collect::<Result<Vec<_>, _>>()?;
        let lvm_cache = Arc::new(Mutex::new(vec![None; volumes.len()]));
        Ok(Self {
            volumes: Arc::new(volumes),
            lvm_cache,
            watcher: None,
        })
    }
}

impl Monitor for VolumeMonitor {
    fn configure(params: serde_json::Value) -> Result<Self, MonitorError> {
        Self::from_params(params).map_err(|e| MonitorError::new(e.to_string()))
    }

    fn declare(&self) -> Vec<ResourcePattern> {
        self.volumes
            .iter()
            .filter_map(|v| ResourcePattern::new(v.status.as_str()).ok())
            .collect()
    }

    fn poll(&mut self, deadline: Instant) -> Result<Vec<Sample>, MonitorError> {
        let need_vgs = self.volumes.iter().any(Volume::uses_lvm);
        let need_lvs = self.volumes.iter().any(|v| v.lv.is_some());
        let lvm_deadline = deadline.checked_sub(LVM_MARGIN).unwrap_or(deadline);
        let reports = LvmReports::collect(need_vgs, need_lvs, lvm_deadline);
        let table = read_mounts();
        let mut cache = self.lvm_cache.lock().unwrap_or_else(|p| p.into_inner());
        let mut samples = Vec::with_capacity(self.volumes.len());
        for (volume, cached) in self.volumes.iter().zip(cache.iter_mut()) {
            let lvm = volume.lvm_checks(&reports);
            let mut checks = volume.local_checks(&table);
            checks.extend(lvm.iter().cloned());
            if volume.uses_lvm() {
                *cached = Some(lvm);
            }
            samples.push(volume.sample(&checks));
        }
        Ok(samples)
    }

    fn start(&mut self, sink: SampleSink) -> Result<(), MonitorError> {
        if self.watcher.is_some() {
            return Ok(());
        }
        // Opened before start returns so that no later mount change is
        // missed (the kernel compares against the table as of this open).
        let mounts = MountWatch::open()
            .map_err(|e| MonitorError::new(format!("cannot open {}: {e}", mountinfo::MOUNTINFO)))?;
        let uevents = uevent_socket();
        let volumes = Arc::clone(&self.volumes);
        let cache = Arc::clone(&self.lvm_cache);
        let thread = EventThread::spawn("vigil-volume-events", move |stop: &StopSignal| {
            watch(&volumes, &cache, &mounts, uevents.as_ref(), stop, &sink);
        })
        .map_err(|e| MonitorError::new(format!("cannot start volume watcher: {e}")))?;
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

/// A socket on the kernel's uevent multicast group, or `None` where it
/// cannot be had (not root, or a network namespace that sees no uevents);
/// the once-a-second re-check covers that case.
fn uevent_socket() -> Option<OwnedFd> {
    use nix::sys::socket::{
        AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, socket,
    };
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkKObjectUEvent,
    )
    .ok()?;
    // Group 1 is the kernel's uevent broadcast.
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 1)).ok()?;
    Some(fd)
}

/// Reads every queued uevent. Their content is not needed: any event leads
/// to a re-check of every volume, which is a handful of `stat` calls.
fn drain_uevents(fd: &OwnedFd) {
    let mut buffer = [0u8; 8192];
    loop {
        match nix::sys::socket::recv(
            fd.as_raw_fd(),
            &mut buffer,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) | Err(Errno::EAGAIN) => return,
            // ENOBUFS: events were dropped; the re-check covers them.
            Ok(_) | Err(Errno::ENOBUFS) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Pushes each volume's status once, then whenever it changes; returns when
/// `stop` is signalled. Volumes with LVM checks are pushed only once a poll has
/// produced an LVM verdict for them.
fn watch(
    volumes: &[Volume],
    cache: &Mutex<Vec<Option<Vec<Health>>>>,
    mounts: &MountWatch,
    uevents: Option<&OwnedFd>,
    stop: &StopSignal,
    sink: &SampleSink,
) {
    let mut last: Vec<Option<(Option<Value>, Option<String>)>> = vec![None; volumes.len()];
    let recheck = |last: &mut [Option<(Option<Value>, Option<String>)>]| {
        let table = read_mounts();
        let cache = cache.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut changed = Vec::new();
        for ((volume, cached), last) in volumes.iter().zip(cache).zip(last.iter_mut()) {
            let mut checks = volume.local_checks(&table);
            match cached {
                Some(lvm) => checks.extend(lvm),
                None if volume.uses_lvm() => continue,
                None => {}
            }
            let sample = volume.sample(&checks);
            let now = Some((sample.value.clone(), sample.reason.clone()));
            if *last != now {
                *last = now;
                changed.push(sample);
            }
        }
        sink.push(&changed);
    };
    recheck(&mut last);
    loop {
        let mut watches = vec![mounts.watch()];
        if let Some(uevents) = uevents {
            watches.push(Watch::readable(uevents.as_fd()));
        }
        let ready = match stop.wait(&watches, Some(RECHECK_PERIOD)) {
            Ok(None) => return,
            Ok(Some(ready)) => ready,
            Err(e) => {
                let reason = format!("volume event watch failed: {e}");
                let unknown: Vec<_> = volumes
                    .iter()
                    .map(|v| Sample::unknown(v.status.clone(), &reason))
                    .collect();
                sink.push(&unknown);
                return;
            }
        };
        if let Some(uevents) = uevents
            && ready.get(1).copied().unwrap_or(false)
        {
            drain_uevents(uevents);
        }
        recheck(&mut last);
    }
}

vigil_sdk::export_monitor!(VolumeMonitor);
