//! vigil-shm: the bundled `shm` monitor. It tells whether shared-memory
//! segments that an application (a replication server, an enqueue table)
//! relies on exist:
//!
//! * `/shm/posix/<name>/present` — `yes` or `no`, for POSIX segments
//!   (`shm_open`), which glibc keeps as files in `/dev/shm`;
//! * `/shm/sysv/<key>/present` — `yes` or `no`, and
//!   `/shm/sysv/<key>/attached` — how many processes have it attached, for
//!   System V segments (`shmget`), read from `/proc/sysvipc/shm`. Keys are
//!   published as `0x` and eight lower-case hex digits.
//!
//! POSIX changes are pushed as they happen (inotify on `/dev/shm`). System V
//! IPC has no event source, so the event thread re-reads
//! `/proc/sysvipc/shm` every [`SYSV_PERIOD`] and pushes what changed;
//! polls read both afresh.
//!
//! The monitor never creates, attaches or removes a segment, and does not
//! look inside one.

pub mod sysvipc;

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use serde::Deserialize;
use vigil_sdk::events::{EventThread, StopSignal, Watch};
use vigil_sdk::{Monitor, MonitorError, ResourceName, ResourcePattern, Sample, SampleSink};

use crate::sysvipc::{SysvError, SysvTable};

/// Where glibc's `shm_open` keeps POSIX segments.
pub const POSIX_DIR: &str = "/dev/shm";

/// How often the event thread re-reads `/proc/sysvipc/shm`: System V IPC
/// has no change notification, and a fifth of a second keeps a vanished
/// segment from going unnoticed for a whole poll interval at a cost of one
/// small read.
pub const SYSV_PERIOD: Duration = Duration::from_millis(200);

/// Why the params were refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("params: {0}")]
    Shape(#[from] serde_json::Error),
    #[error("params: posix and sysv are both empty; name at least one segment to watch")]
    Nothing,
    #[error(
        "params.posix: segment name {0:?} must be one path component of letters, digits \
         and . _ : @ + - (an optional leading '/' is dropped)"
    )]
    BadPosixName(String),
    #[error("params.sysv: key {0:?} is not a number (write it as hex `0x00004a20` or as decimal)")]
    BadKey(String),
    #[error("params.sysv: key {0:?} does not fit in 32 bits")]
    KeyRange(String),
    #[error("params.sysv: key {0:?} is IPC_PRIVATE, which names no single segment")]
    PrivateKey(String),
}

/// A System V key as written in the params: `"0x00004a20"`, `"19000"` or
/// `19000`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawKey {
    Number(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default)]
    posix: Vec<String>,
    #[serde(default)]
    sysv: Vec<RawKey>,
}

/// Parses a System V key given as hex (`0x4a20`) or decimal (`19000`).
pub fn parse_key(raw: &str) -> Result<u32, ConfigError> {
    let trimmed = raw.trim();
    let parsed = match trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => trimmed.parse::<u64>(),
    };
    let value = parsed.map_err(|_| ConfigError::BadKey(raw.to_owned()))?;
    let key = u32::try_from(value).map_err(|_| ConfigError::KeyRange(raw.to_owned()))?;
    if key == 0 {
        return Err(ConfigError::PrivateKey(raw.to_owned()));
    }
    Ok(key)
}

/// The segment name used in resource names for a System V key.
pub fn key_segment(key: u32) -> String {
    format!("0x{key:08x}")
}

#[derive(Debug, Clone)]
struct PosixSegment {
    /// File name under [`POSIX_DIR`].
    file: String,
    present: ResourceName,
}

impl PosixSegment {
    fn new(raw: &str) -> Result<Self, ConfigError> {
        let file = raw.strip_prefix('/').unwrap_or(raw);
        let bad = || ConfigError::BadPosixName(raw.to_owned());
        if file.contains('/') || file == "." || file == ".." {
            return Err(bad());
        }
        let present = ResourceName::new(format!("/shm/posix/{file}/present")).map_err(|_| bad())?;
        Ok(Self {
            file: file.to_owned(),
            present,
        })
    }

    fn sample(&self) -> Sample {
        let path = Path::new(POSIX_DIR).join(&self.file);
        match std::fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.is_file() => Sample::text(self.present.clone(), "yes"),
            Ok(_) => Sample::text(self.present.clone(), "no")
                .with_reason(format!("{} is not a regular file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Sample::text(self.present.clone(), "no")
            }
            Err(e) => Sample::unknown(self.present.clone(), format!("{}: {e}", path.display())),
        }
    }
}

#[derive(Debug, Clone)]
struct SysvSegment {
    key: u32,
    present: ResourceName,
    attached: ResourceName,
}

impl SysvSegment {
    fn new(key: u32) -> Self {
        let segment = key_segment(key);
        // A "0x" plus hex digits segment is always a valid name.
        let name = |leaf: &str| ResourceName::new(format!("/shm/sysv/{segment}/{leaf}"));
        Self {
            key,
            present: name("present").expect("hex key segments are valid names"),
            attached: name("attached").expect("hex key segments are valid names"),
        }
    }

    fn samples(&self, table: &Result<SysvTable, SysvError>) -> [Sample; 2] {
        match table {
            Ok(table) => match table.get(self.key) {
                Some(nattch) => [
                    Sample::text(self.present.clone(), "yes"),
                    Sample::number(self.attached.clone(), nattch as f64, None),
                ],
                None => [
                    Sample::text(self.present.clone(), "no"),
                    Sample::number(self.attached.clone(), 0.0, None)
                        .with_reason("no segment with this key"),
                ],
            },
            Err(error) => [
                Sample::unknown(self.present.clone(), error.to_string()),
                Sample::unknown(self.attached.clone(), error.to_string()),
            ],
        }
    }
}

/// The `shm` monitor.
#[derive(Debug)]
pub struct ShmMonitor {
    posix: Vec<PosixSegment>,
    sysv: Vec<SysvSegment>,
    watcher: Option<EventThread>,
}

impl ShmMonitor {
    fn from_params(params: serde_json::Value) -> Result<Self, ConfigError> {
        let params: Params = serde_json::from_value(params)?;
        if params.posix.is_empty() && params.sysv.is_empty() {
            return Err(ConfigError::Nothing);
        }
        let posix = params
            .posix
            .iter()
            .map(|n| PosixSegment::new(n))
            .collect::<Result<_, _>>()?;
        let mut keys = Vec::new();
        for raw in &params.sysv {
            let key = match raw {
                RawKey::Text(text) => parse_key(text)?,
                RawKey::Number(n) => {
                    let key =
                        u32::try_from(*n).map_err(|_| ConfigError::KeyRange(n.to_string()))?;
                    if key == 0 {
                        return Err(ConfigError::PrivateKey(n.to_string()));
                    }
                    key
                }
            };
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        let sysv = keys.into_iter().map(SysvSegment::new).collect();
        Ok(Self {
            posix,
            sysv,
            watcher: None,
        })
    }

    fn snapshot(posix: &[PosixSegment], sysv: &[SysvSegment]) -> Vec<Sample> {
        let mut samples: Vec<Sample> = posix.iter().map(PosixSegment::sample).collect();
        if !sysv.is_empty() {
            let table = sysvipc::read();
            samples.extend(sysv.iter().flat_map(|s| s.samples(&table)));
        }
        samples
    }
}

impl Monitor for ShmMonitor {
    fn configure(params: serde_json::Value) -> Result<Self, MonitorError> {
        Self::from_params(params).map_err(|e| MonitorError::new(e.to_string()))
    }

    fn declare(&self) -> Vec<ResourcePattern> {
        let posix = self.posix.iter().map(|p| &p.present);
        let sysv = self.sysv.iter().flat_map(|s| [&s.present, &s.attached]);
        posix
            .chain(sysv)
            .filter_map(|name| ResourcePattern::new(name.as_str()).ok())
            .collect()
    }

    fn poll(&mut self, _deadline: Instant) -> Result<Vec<Sample>, MonitorError> {
        Ok(Self::snapshot(&self.posix, &self.sysv))
    }

    fn start(&mut self, sink: SampleSink) -> Result<(), MonitorError> {
        if self.watcher.is_some() {
            return Ok(());
        }
        // Watch before the first snapshot so no change slips in between.
        let inotify = if self.posix.is_empty() {
            None
        } else {
            watch_posix_dir()
        };
        let posix = self.posix.clone();
        let sysv = self.sysv.clone();
        let thread = EventThread::spawn("vigil-shm-events", move |stop: &StopSignal| {
            watch(&posix, &sysv, inotify.as_ref(), stop, &sink);
        })
        .map_err(|e| MonitorError::new(format!("cannot start shm watcher: {e}")))?;
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

/// An inotify watch on [`POSIX_DIR`], or `None` when it cannot be had (no
/// `/dev/shm`, inotify limits reached): the event thread then re-checks
/// POSIX names on its [`SYSV_PERIOD`] tick instead.
fn watch_posix_dir() -> Option<Inotify> {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
    let flags = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ONLYDIR;
    inotify.add_watch(POSIX_DIR, flags).ok()?;
    Some(inotify)
}

/// Pushes every sample once, then each one whose value changed, on inotify
/// events and on the [`SYSV_PERIOD`] tick; returns when `stop` is signalled.
fn watch(
    posix: &[PosixSegment],
    sysv: &[SysvSegment],
    inotify: Option<&Inotify>,
    stop: &StopSignal,
    sink: &SampleSink,
) {
    let mut last: BTreeMap<ResourceName, (Option<vigil_sdk::Value>, Option<String>)> =
        BTreeMap::new();
    let mut push_changes = |samples: Vec<Sample>| {
        let changed: Vec<Sample> = samples
            .into_iter()
            .filter(|s| {
                let now = (s.value.clone(), s.reason.clone());
                last.insert(s.name.clone(), now.clone()) != Some(now)
            })
            .collect();
        sink.push(&changed);
    };
    push_changes(ShmMonitor::snapshot(posix, sysv));
    let tick = !sysv.is_empty() || (inotify.is_none() && !posix.is_empty());
    let timeout = tick.then_some(SYSV_PERIOD);
    loop {
        let watches: Vec<Watch> = inotify
            .iter()
            .map(|inotify| Watch::readable(inotify.as_fd()))
            .collect();
        let ready = match stop.wait(&watches, timeout) {
            Ok(None) => return,
            Ok(Some(ready)) => ready,
            Err(e) => {
                let reason = format!("shm event watch failed: {e}");
                let names = posix.iter().map(|p| &p.present);
                let names = names.chain(sysv.iter().flat_map(|s| [&s.present, &s.attached]));
                sink.push(
                    &names
                        .map(|n| Sample::unknown(n.clone(), &reason))
                        .collect::<Vec<_>>(),
                );
                return;
            }
        };
        let posix_event = ready.first().copied().unwrap_or(false);
        if posix_event && let Some(inotify) = inotify {
            // The names in the events are not needed: every watched name is
            // re-checked, which also covers a queue overflow.
            while inotify.read_events().is_ok_and(|events| !events.is_empty()) {}
        }
        if posix_event || inotify.is_none() {
            push_changes(posix.iter().map(PosixSegment::sample).collect());
        }
        if !sysv.is_empty() {
            let table = sysvipc::read();
            push_changes(sysv.iter().flat_map(|s| s.samples(&table)).collect());
        }
    }
}

vigil_sdk::export_monitor!(ShmMonitor);

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, expect: Result<&str, &str>) {
        let got = parse_key(raw).map(key_segment).map_err(|e| e.to_string());
        match expect {
            Ok(segment) => assert_eq!(got.as_deref(), Ok(segment), "{raw}"),
            Err(part) => {
                let error = got.expect_err(raw);
                assert!(error.contains(part), "{raw}: {error:?} lacks {part:?}");
            }
        }
    }

    #[test]
    fn keys_normalize_to_eight_hex_digits() {
        check("0x00004a20", Ok("0x00004a20"));
        check("0x4A20", Ok("0x00004a20"));
        check("0X4a20", Ok("0x00004a20"));
        check("18976", Ok("0x00004a20"));
        check("0xffffffff", Ok("0xffffffff"));
        check("4294967295", Ok("0xffffffff"));
        check("0x100000000", Err("does not fit in 32 bits"));
        check("0", Err("IPC_PRIVATE"));
        check("0x0", Err("IPC_PRIVATE"));
        check("4a20", Err("is not a number"));
        check("-5", Err("is not a number"));
        check("", Err("is not a number"));
    }
}
