//! The guard (`vigil guard`): a small process beside `vigil host` that halts
//! this node's packages when the host stops heartbeating — DESIGN §8's
//! invariant 1, "a node that cannot renew its lease halts its packages
//! before the lease can expire", for the case the host cannot do it itself
//! because it is frozen (SIGSTOP), hung, or dead. It plays the role of
//! Serviceguard's safety timer and Pacemaker's sbd.
//!
//! * `vigil host` starts it at startup in a session of its own, so a signal
//!   to the host's process group does not reach it and it outlives the
//!   host. One guard per node: it holds an exclusive `flock` on
//!   `<run_dir>/guard.lock` (`[paths]`, [`crate::config::Paths`]); a second one exits at once and leaves the
//!   node to the first.
//! * The host's main loop sends a datagram (`beat <pid>`) to
//!   `<run_dir>/guard.sock` (mode 0600) every margin / 4. The guard
//!   waits on that socket with a [`POLL`] timeout and measures silence on
//!   `CLOCK_BOOTTIME`, which keeps counting through a suspend and cannot be
//!   set. A frozen, hung or dead host all look the same: silence. The
//!   margin is 50 % of `[store] lease_ttl_seconds` ([`margin`]).
//! * When the silence exceeds the margin, the guard, for every run record
//!   in `<state_dir>/packages/`: first claims it (writes
//!   `<package>.guard.json`, then removes `<package>.json`), so that a
//!   host that wakes up sees the package is no longer its own; then sends
//!   SIGTERM to every recorded service's process group (only while the
//!   recorded pid and kernel start time still name the process, see
//!   [`RunRecord::check`]), SIGKILL after margin / 4; then runs each
//!   package's `halt` script with `VIGIL_REASON=guard_expired` and the
//!   record's fence token, under its halt timeout, all packages at once;
//!   and records the outcome in the claim. Until a host heartbeats again
//!   it halts any run record that appears (a `run` that was under way);
//!   the next heartbeat re-arms it.
//! * A restarted host (after a crash or SIGKILL) finds the running guard
//!   (its own new guard loses the lock and exits) and heartbeats it: the
//!   guard carries on with the new host. Within the margin, the new host
//!   re-adopts the packages; later, it finds them claimed. `beat <pid>`
//!   names the host, so the hand-over is logged. A guard that died is
//!   replaced by the host at its next heartbeat.
//! * A clean host shutdown sends `stop <pid>`: the guard exits without
//!   halting anything, since packages outlive a host restart by contract.
//! * It also exits when its configuration directory disappears.
//!
//! Every step goes to stderr and to `<log_dir>/guard.log`.
//!
//! The guard deliberately does not talk to the cluster store, restart
//! anything, or place packages: the host does that when it comes back
//! ([`Claim`] tells it what happened). It uses threads, no async runtime,
//! so that little can go wrong in it. It does not arm `/dev/watchdog`: if
//! the whole machine freezes, the guard freezes with it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::config::{self, package::PackageConfig};
use crate::package::agent::record_path;
use crate::package::lifecycle::{
    Liveness, Reason, RunRecord, RunnerContext, ServiceRecord, proc_stat, set_env,
};
use crate::store::FenceToken;

/// The heartbeat socket, in `[paths] run_dir`.
pub const SOCKET: &str = "guard.sock";
/// The lock that keeps one guard per node, in `[paths] run_dir`.
pub const LOCK: &str = "guard.lock";
/// The guard's log, in `[paths] log_dir`.
pub const LOG: &str = "guard.log";
/// How often the guard looks at the clock when no heartbeat comes.
pub const POLL: Duration = Duration::from_millis(100);
/// `VIGIL_REASON` of the halt scripts the guard runs.
pub const REASON: &str = "guard_expired";

/// The silence after which the guard halts the packages: 50 % of the lease
/// TTL. The timeline this fits, for a host that cannot renew its lease
/// (`daemon::join_etcd`): renewals every 10 % of the TTL; the host stops
/// beating once its last acknowledged renewal is 30 % of the TTL old; its
/// last beat was at most one beat interval (10 %) earlier; the guard fires
/// 50 % later — by 80 % of the TTL — and the services get margin / 4 to die.
/// A frozen host stops beating at once, so its guard fires by 50 %.
pub fn margin(lease_ttl: Duration) -> Duration {
    lease_ttl.mul_f64(0.5)
}

/// How often the host heartbeats: five beats per margin, so a late beat or
/// two does not fire the guard.
pub fn beat_interval(margin: Duration) -> Duration {
    margin / 5
}

/// The time since boot, suspend included (`CLOCK_BOOTTIME`).
fn boottime() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the whole call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    // CLOCK_BOOTTIME exists since Linux 2.6.39; it cannot fail with a
    // valid pointer, so a zero reading only happens on a broken kernel.
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The guard's claims in a records directory, as the host last read them:
/// read again only when the directory changed (a claim written, renamed or
/// removed there changes its mtime), so that a step of the host costs one
/// `stat`, not a file read per package.
#[derive(Debug)]
pub struct Claims {
    dir: PathBuf,
    /// The directory's mtime at the last read, and when that read was.
    read: Option<(std::time::SystemTime, std::time::SystemTime)>,
    claims: BTreeMap<String, Claim>,
}

impl Claims {
    /// A directory's mtime comes from the kernel's coarse clock (a tick of
    /// 1–10 ms): a change within this long of a read may carry the mtime
    /// the read saw, so such a read is not trusted.
    const RACY: Duration = Duration::from_millis(20);

    pub fn new(records_dir: &Path) -> Self {
        Self {
            dir: records_dir.to_owned(),
            read: None,
            claims: BTreeMap::new(),
        }
    }

    /// Reads the claims again if the directory changed since the last read.
    pub fn refresh(&mut self) {
        let mtime = match std::fs::metadata(&self.dir).and_then(|m| m.modified()) {
            Ok(mtime) => mtime,
            Err(_) => {
                self.claims.clear();
                self.read = None;
                return;
            }
        };
        if let Some((seen, at)) = self.read
            && seen == mtime
            && at.duration_since(mtime).is_ok_and(|d| d > Self::RACY)
        {
            return;
        }
        let at = std::time::SystemTime::now();
        self.claims = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                let package = name.to_str()?.strip_suffix(".guard.json")?.to_owned();
                let claim = Claim::load(&self.dir, &package)?;
                Some((package, claim))
            })
            .collect();
        self.read = Some((mtime, at));
    }

    /// The claim on `package` at the last [`refresh`](Self::refresh).
    pub fn get(&self, package: &str) -> Option<&Claim> {
        self.claims.get(package)
    }
}

/// How far the guard got with a package it took over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimPhase {
    /// Services being stopped, `halt` not done yet.
    Halting,
    /// Services stopped and `halt` succeeded.
    Halted,
    /// `halt` failed or timed out: something may still hold the package's
    /// resources.
    HaltFailed,
}

/// `<package>.guard.json`: the guard took this package away from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The run record as the guard found it.
    pub record: RunRecord,
    pub phase: ClaimPhase,
    /// The guard that wrote it, to tell a guard that died mid-halt.
    pub guard_pid: i32,
    pub guard_start_time: u64,
    /// How long the host had been silent.
    pub silent_ms: u64,
    pub claimed_ms: u64,
    /// What the halt did, for the package's reason.
    pub detail: String,
}

impl Claim {
    pub fn path(records_dir: &Path, package: &str) -> PathBuf {
        records_dir.join(format!("{package}.guard.json"))
    }

    /// The claim on `package`, if there is a readable one.
    pub fn load(records_dir: &Path, package: &str) -> Option<Claim> {
        let bytes = std::fs::read(Self::path(records_dir, package)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn save(&self, records_dir: &Path) -> io::Result<()> {
        let path = Self::path(records_dir, &self.record.package);
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &path)
    }

    pub fn fence(&self) -> FenceToken {
        self.record.fence_token
    }

    /// True while the guard that wrote it is still halting the package:
    /// nothing of the package may start here until it is done.
    pub fn in_progress(&self) -> bool {
        self.phase == ClaimPhase::Halting
            && proc_stat(self.guard_pid).is_some_and(|s| {
                s.start_time == self.guard_start_time && s.state != 'Z' && s.state != 'X'
            })
    }

    /// The outcome in a sentence, for the package's reason.
    pub fn describe(&self, node: &str) -> String {
        let what = match self.phase {
            ClaimPhase::Halting if self.in_progress() => "is being halted",
            ClaimPhase::Halting => "was being halted (the guard died)",
            ClaimPhase::Halted => "was halted",
            ClaimPhase::HaltFailed => "could not be halted cleanly",
        };
        format!(
            "{what} by the guard on {node}: vigil host sent no heartbeat for {} ms{}",
            self.silent_ms,
            if self.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.detail)
            }
        )
    }
}

/// True when the guard claimed `package` as it ran with `fence`: a service
/// of it that exits must not be restarted.
pub fn claimed(records_dir: &Path, package: &str, fence: FenceToken) -> bool {
    Claim::load(records_dir, package).is_some_and(|c| c.fence() == fence)
}

/// Options of `vigil guard`.
#[derive(Debug, Clone)]
pub struct GuardOptions {
    pub config_dir: PathBuf,
    /// The host's `[paths]`, as bound at its startup (passed on the command
    /// line, so host and guard agree even if `cluster.toml` changed since).
    pub paths: config::Paths,
    /// The host's `[logging] format`, for the guard's lines on stderr.
    pub log_format: config::LogFormat,
    pub node: String,
    pub margin: Duration,
}

/// Writes each line to stderr and `guard.log`; never fails.
struct Log {
    file: Option<File>,
    prefix: String,
    node: String,
    /// `[logging] format = "json"`: stderr gets JSON lines (the file keeps text).
    json: bool,
    /// stderr is the journal: lines get a `<6>` priority.
    journal: bool,
}

impl Log {
    fn line(&self, message: impl fmt::Display) {
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let line = format!("{now} {}: {message}\n", self.prefix);
        let mut out = if self.journal {
            format!("<{}>", crate::logging::priority(&tracing::Level::INFO))
        } else {
            String::new()
        };
        if self.json {
            let fields = [
                ("node".to_owned(), self.node.clone().into()),
                ("pid".to_owned(), std::process::id().into()),
            ];
            out += &crate::logging::json_line(
                &now,
                &tracing::Level::INFO,
                "vigil_host::guard",
                &message.to_string(),
                fields.into_iter().collect(),
            );
            out.push('\n');
        } else {
            out += &line;
        }
        // Not eprintln!: it panics when stderr is a closed pipe.
        let _ = io::stderr().write_all(out.as_bytes());
        if let Some(mut file) = self.file.as_ref() {
            let _ = file.write_all(line.as_bytes());
        }
    }
}

/// What the guard heard on its socket.
#[derive(Debug, PartialEq, Eq)]
enum Message {
    Beat(i32),
    Stop(i32),
}

fn parse_message(bytes: &[u8]) -> Option<Message> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (verb, pid) = text.trim().split_once(' ')?;
    let pid = pid.parse().ok()?;
    match verb {
        "beat" => Some(Message::Beat(pid)),
        "stop" => Some(Message::Stop(pid)),
        _ => None,
    }
}

/// Runs the guard until the host stops it cleanly, the packages were
/// halted, or the configuration directory is gone. Returns the exit code.
pub fn run(options: GuardOptions) -> anyhow::Result<i32> {
    let run_dir = options.paths.run_dir.clone();
    let log_dir = &options.paths.log_dir;
    for dir in [&run_dir, log_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Append: logrotate's copytruncate then leaves no hole in the file.
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join(LOG))
        .ok();
    let log = Log {
        file: log_file,
        prefix: format!(
            "vigil guard [node {} pid {}]",
            options.node,
            std::process::id()
        ),
        node: options.node.clone(),
        json: options.log_format == config::LogFormat::Json,
        journal: crate::logging::stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref()),
    };
    let lock_path = run_dir.join(LOCK);
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let mut lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
            log.line(format_args!(
                "another guard (pid {}) guards this node; leaving it to that one",
                holder.trim()
            ));
            return Ok(0);
        }
        Err((_, e)) => {
            return Err(e).with_context(|| format!("locking {}", lock_path.display()));
        }
    };
    lock.set_len(0)?;
    write!(lock, "{}", std::process::id())?;

    let socket_path = run_dir.join(SOCKET);
    // Holding the lock, any socket file left is a dead guard's.
    let _ = std::fs::remove_file(&socket_path);
    let socket = UnixDatagram::bind(&socket_path)
        .with_context(|| format!("binding {}", socket_path.display()))?;
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", socket_path.display()))?;
    socket.set_read_timeout(Some(POLL))?;

    let guard = Guard::new(options, log);
    let code = guard.watch(&socket);
    // The socket goes before the lock (released on exit), so a new guard
    // never has its socket removed by an old one.
    let _ = std::fs::remove_file(&socket_path);
    drop(lock);
    Ok(code)
}

struct Guard {
    options: GuardOptions,
    log: Log,
    records: PathBuf,
    /// The packages as configured when the guard started, in case the
    /// configuration is unreadable when they must be halted.
    packages: BTreeMap<String, PackageConfig>,
}

/// A process group the guard signals.
struct Target {
    package: String,
    service: String,
    pgid: i32,
}

impl Guard {
    fn new(options: GuardOptions, log: Log) -> Self {
        let records = options.paths.records();
        let mut guard = Self {
            options,
            log,
            records,
            packages: BTreeMap::new(),
        };
        guard.packages = guard.load_packages().unwrap_or_default();
        guard
    }

    fn load_packages(&self) -> Option<BTreeMap<String, PackageConfig>> {
        match config::load(&self.options.config_dir) {
            Ok(config) => Some(
                config
                    .packages
                    .into_iter()
                    .map(|p| (p.name.clone(), p))
                    .collect(),
            ),
            Err(errors) => {
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                self.log.line(format_args!(
                    "cannot read the configuration: {}",
                    errors.join("; ")
                ));
                None
            }
        }
    }

    /// The heartbeat loop; returns the exit code.
    fn watch(&self, socket: &UnixDatagram) -> i32 {
        let margin = self.options.margin;
        self.log.line(format_args!(
            "guarding {} with a margin of {} ms",
            self.options.config_dir.display(),
            margin.as_millis()
        ));
        let mut last_beat = boottime();
        let mut host: Option<i32> = None;
        let mut expired = false;
        let mut buf = [0u8; 64];
        loop {
            match socket.recv(&mut buf) {
                Ok(n) => match parse_message(&buf[..n]) {
                    Some(Message::Beat(pid)) => {
                        last_beat = boottime();
                        if expired {
                            self.log.line(format_args!(
                                "vigil host pid {pid} heartbeats again after the expiry; re-armed"
                            ));
                            expired = false;
                            host = Some(pid);
                        } else if host != Some(pid) {
                            match host {
                                None => self.log.line(format_args!("heartbeats from vigil host pid {pid}")),
                                Some(old) => self.log.line(format_args!(
                                    "vigil host pid {pid} took over the heartbeat from pid {old}; packages stay up"
                                )),
                            }
                            host = Some(pid);
                        }
                    }
                    Some(Message::Stop(pid)) => {
                        self.log.line(format_args!(
                            "vigil host pid {pid} stopped cleanly; exiting without halting packages"
                        ));
                        return 0;
                    }
                    None => self.log.line(format_args!(
                        "ignored a malformed message: {:?}",
                        String::from_utf8_lossy(&buf[..n])
                    )),
                },
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    self.log.line(format_args!("heartbeat socket: {e}"));
                    std::thread::sleep(POLL);
                }
            }
            if !self.options.config_dir.is_dir() {
                self.log
                    .line("the configuration directory is gone; exiting");
                return 0;
            }
            let silent = boottime().saturating_sub(last_beat);
            if expired {
                // Still no host: whatever starts now (a `run` that was under
                // way when the host froze) is unguarded too.
                let records = self.scan();
                if !records.is_empty() {
                    self.log
                        .line("a package was recorded as running while the host is still silent");
                    self.halt(records, silent);
                }
            } else if silent > margin {
                self.log.line(format_args!(
                    "no heartbeat from vigil host{} for {} ms (margin {} ms): halting this node's packages",
                    host.map(|p| format!(" pid {p}")).unwrap_or_default(),
                    silent.as_millis(),
                    margin.as_millis()
                ));
                self.halt(self.scan(), silent);
                expired = true;
            }
        }
    }

    /// The run records now in the records directory.
    fn scan(&self) -> Vec<RunRecord> {
        let Ok(entries) = std::fs::read_dir(&self.records) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                name.ends_with(".json") && !name.ends_with(".guard.json")
            })
            .collect();
        paths.sort();
        paths
            .iter()
            .filter_map(|path| match RunRecord::load(path) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.log.line(format_args!(
                        "unreadable run record {}: {e}",
                        path.display()
                    ));
                    None
                }
            })
            .collect()
    }

    /// Claims, stops and halts the packages of `records`.
    fn halt(&self, records: Vec<RunRecord>, silent: Duration) {
        let expired_at = Instant::now();
        let me = std::process::id() as i32;
        let my_start = proc_stat(me).map_or(0, |s| s.start_time);
        let mut claims = Vec::new();
        for record in records {
            let claim = Claim {
                phase: ClaimPhase::Halting,
                guard_pid: me,
                guard_start_time: my_start,
                silent_ms: silent.as_millis() as u64,
                claimed_ms: vigil_sdk::now_ms(),
                detail: String::new(),
                record,
            };
            let package = claim.record.package.clone();
            // The claim first, the record after: a host waking up in
            // between sees the claim either way.
            if let Err(e) = claim.save(&self.records) {
                self.log.line(format_args!(
                    "package {package}: cannot write its claim: {e}; halting it anyway"
                ));
            }
            if let Err(e) = std::fs::remove_file(record_path(&self.records, &package)) {
                self.log.line(format_args!(
                    "package {package}: cannot remove its run record: {e}"
                ));
            }
            self.log.line(format_args!(
                "package {package}: claimed (fence token {})",
                claim.fence()
            ));
            claims.push(claim);
        }
        if claims.is_empty() {
            self.log
                .line("no package runs on this node; nothing to halt");
            return;
        }
        self.stop_services(&claims);
        self.log.line(format_args!(
            "services stopped {} ms after the expiry",
            expired_at.elapsed().as_millis()
        ));
        let packages = self
            .load_packages()
            .unwrap_or_else(|| self.packages.clone());
        std::thread::scope(|scope| {
            for mut claim in claims {
                let spec = packages.get(&claim.record.package);
                scope.spawn(move || {
                    let package = claim.record.package.clone();
                    let (mut phase, mut detail) = match spec {
                        None => (
                            ClaimPhase::HaltFailed,
                            "package is not configured; halt not run".to_owned(),
                        ),
                        Some(spec) => match self.run_halt(spec, &claim.record) {
                            Ok(()) => (ClaimPhase::Halted, "halt succeeded".to_owned()),
                            Err(e) => (ClaimPhase::HaltFailed, e),
                        },
                    };
                    // The parts go whatever `halt` did, and even for a
                    // package no longer configured: the record says what
                    // is up, and an address or mount left here would be
                    // up twice once another node adopts the package.
                    if let Err(e) = self.release_parts(&claim.record) {
                        phase = ClaimPhase::HaltFailed;
                        detail = format!("{detail}; {e}");
                    }
                    self.log.line(format_args!("package {package}: {detail}"));
                    claim.phase = phase;
                    claim.detail = detail;
                    if let Err(e) = claim.save(&self.records) {
                        self.log.line(format_args!(
                            "package {package}: cannot update its claim: {e}"
                        ));
                    }
                });
            }
        });
        self.log.line(format_args!(
            "done {} ms after the expiry; waiting for a host to heartbeat again",
            expired_at.elapsed().as_millis()
        ));
    }

    /// SIGTERM to every recorded service group, SIGKILL to what is left
    /// after margin / 4, then waits (bounded) until nothing of them runs.
    fn stop_services(&self, claims: &[Claim]) {
        let mut targets = Vec::new();
        for claim in claims {
            for service in &claim.record.services {
                if let Some(t) = self.target(&claim.record.package, service) {
                    targets.push(t);
                }
            }
        }
        for t in &targets {
            self.log.line(format_args!(
                "package {}: SIGTERM to service {} (process group {})",
                t.package, t.service, t.pgid
            ));
            let _ = killpg(Pid::from_raw(t.pgid), Signal::SIGTERM);
        }
        let grace = self.options.margin / 4;
        if self.wait_groups(&targets, grace) {
            return;
        }
        let live = live_groups();
        for t in targets.iter().filter(|t| live.contains(&t.pgid)) {
            self.log.line(format_args!(
                "package {}: service {} outlived SIGTERM by {} ms; SIGKILL to its group",
                t.package,
                t.service,
                grace.as_millis()
            ));
            let _ = killpg(Pid::from_raw(t.pgid), Signal::SIGKILL);
        }
        if !self.wait_groups(&targets, Duration::from_secs(5)) {
            self.log
                .line("some service processes survived SIGKILL (uninterruptible sleep?)");
        }
    }

    /// Whether it is safe to signal the service's group, and if so the
    /// target.
    fn target(&self, package: &str, service: &ServiceRecord) -> Option<Target> {
        let liveness = service.liveness();
        let target = Target {
            package: package.to_owned(),
            service: service.name.clone(),
            pgid: service.pgid,
        };
        match liveness {
            // A zombie still holds its pid, so its group id cannot have
            // been handed out again.
            Liveness::Alive | Liveness::Zombie => Some(target),
            // The leader is gone and reaped; processes still in its group
            // are what it left behind (a new group with this id would need
            // a live process with this pid, and there is none).
            Liveness::Gone if live_groups().contains(&service.pgid) => Some(target),
            Liveness::Gone => {
                self.log.line(format_args!(
                    "package {package}: service {} (pid {}) already gone",
                    service.name, service.pid
                ));
                None
            }
            Liveness::Reused => {
                self.log.line(format_args!(
                    "package {package}: service {} (pid {}) is gone and its pid reused; not signalled",
                    service.name, service.pid
                ));
                None
            }
        }
    }

    /// Waits until no target group has a live member; false on timeout.
    fn wait_groups(&self, targets: &[Target], timeout: Duration) -> bool {
        let start = Instant::now();
        loop {
            let live = live_groups();
            if targets.iter().all(|t| !live.contains(&t.pgid)) {
                return true;
            }
            if start.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Releases the record's parts in reverse start order (users of file
    /// systems killed after a quarter of the margin).
    fn release_parts(&self, record: &RunRecord) -> Result<(), String> {
        if record.parts.is_empty() {
            return Ok(());
        }
        let mut ops = crate::package::parts::SystemParts {
            ctx: crate::package::parts::PartContext {
                node: record.node.clone(),
                package: record.package.clone(),
                stop_grace: self.options.margin / 4,
                ocf_root: crate::package::parts::ocf_root(),
                live_nodes: None,
            },
        };
        for part in record.parts.iter().rev() {
            self.log
                .line(format_args!("package {}: releasing {part}", record.package));
        }
        let errors = crate::package::parts::stop_all(&record.parts, &mut ops);
        if errors.is_empty() {
            self.log
                .line(format_args!("package {}: parts released", record.package));
            return Ok(());
        }
        let text = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        self.log.line(format_args!(
            "package {}: parts not released: {text}",
            record.package
        ));
        Err(format!("parts not released: {text}"))
    }

    /// Runs the package's `halt` as the host would, with `guard_expired`.
    fn run_halt(&self, spec: &PackageConfig, record: &RunRecord) -> Result<(), String> {
        let Some(program) = spec.halt.first() else {
            return Ok(());
        };
        self.log.line(format_args!(
            "package {}: running halt (reason {REASON}, fence token {}, timeout {} ms)",
            spec.name,
            record.fence_token,
            spec.halt_timeout.as_millis()
        ));
        let output = |file: &Option<File>| {
            file.as_ref()
                .and_then(|f| f.try_clone().ok())
                .map_or_else(Stdio::null, Stdio::from)
        };
        let mut cmd = Command::new(program);
        cmd.args(&spec.halt[1..])
            .stdin(Stdio::null())
            .stdout(output(&self.log.file))
            .stderr(output(&self.log.file))
            .process_group(0);
        let ctx = RunnerContext::new(&record.node, &self.options.config_dir);
        set_env(
            &mut cmd,
            spec,
            &ctx,
            &Reason::GuardExpired,
            record.fence_token,
        );
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("halt: cannot start {program}: {e}"))?;
        let pgid = Pid::from_raw(child.id() as i32);
        let deadline = Instant::now() + spec.halt_timeout;
        let result = loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => break Ok(()),
                Ok(Some(status)) => break Err(format!("halt failed: {status}")),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = killpg(pgid, Signal::SIGKILL);
                    let _ = child.wait();
                    break Err(format!(
                        "halt timed out after {} ms",
                        spec.halt_timeout.as_millis()
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => break Err(format!("halt: waiting for it: {e}")),
            }
        };
        // As for the host: what a script leaves in its group goes with it.
        let _ = killpg(pgid, Signal::SIGKILL);
        result
    }
}

/// Process groups that have a member that is not a zombie.
fn live_groups() -> BTreeSet<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_stat)
        .filter(|s| s.state != 'Z' && s.state != 'X')
        .map(|s| s.pgid)
        .collect()
}

/// The host's end: starts the guard and heartbeats it.
pub struct GuardLink {
    options: GuardOptions,
    socket: UnixDatagram,
    path: PathBuf,
    last_spawn: Option<Instant>,
}

impl GuardLink {
    /// Starts a guard (which leaves the node to a running one, if any) and
    /// sends the first beat.
    pub fn start(options: GuardOptions) -> io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        // A busy guard (halting) must never block the host's main loop.
        socket.set_nonblocking(true)?;
        let path = options.paths.run_dir.join(SOCKET);
        let mut link = Self {
            options,
            socket,
            path,
            last_spawn: None,
        };
        // A guard left by a host that died (hand-over) gets its beat before
        // the new one has even started.
        let _ = link.send("beat");
        link.spawn();
        Ok(link)
    }

    pub fn margin(&self) -> Duration {
        self.options.margin
    }

    fn spawn(&mut self) {
        self.last_spawn = Some(Instant::now());
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                tracing::error!(error = %e, "cannot find the vigil binary to start the guard");
                return;
            }
        };
        let mut cmd = Command::new(exe);
        cmd.arg("-c")
            .arg(&self.options.config_dir)
            .arg("guard")
            .arg("--node")
            .arg(&self.options.node)
            .arg("--margin-ms")
            .arg(self.options.margin.as_millis().to_string())
            .arg("--state-dir")
            .arg(&self.options.paths.state_dir)
            .arg("--run-dir")
            .arg(&self.options.paths.run_dir)
            .arg("--log-dir")
            .arg(&self.options.paths.log_dir)
            .args((self.options.log_format == config::LogFormat::Json).then_some("--log-json"))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: setsid is async-signal-safe and touches no memory shared
        // with the parent; it is all that runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
        }
        match cmd.spawn() {
            Ok(mut child) => {
                tracing::info!(
                    pid = child.id(),
                    margin_ms = self.options.margin.as_millis() as u64,
                    "guard started"
                );
                // Reaped when it exits, so it never lingers as a zombie
                // while this host lives.
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot start the guard"),
        }
    }

    fn send(&self, verb: &str) -> io::Result<usize> {
        let message = format!("{verb} {}", std::process::id());
        self.socket.send_to(message.as_bytes(), &self.path)
    }

    /// One heartbeat. When no guard listens (it died or was killed), a new
    /// one is started, at most once per margin.
    pub fn beat(&mut self) {
        match self.send("beat") {
            Ok(_) => {}
            // Its queue is full: it is alive but busy halting.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tracing::warn!("guard is not reading heartbeats (busy halting packages?)");
            }
            Err(e) => {
                let recent = self
                    .last_spawn
                    .is_some_and(|t| t.elapsed() < self.options.margin);
                if !recent {
                    tracing::warn!(error = %e, socket = %self.path.display(), "no guard listens; starting one");
                    self.spawn();
                }
            }
        }
    }

    /// Clean shutdown: the guard exits without halting anything.
    pub fn stop(&self) {
        if let Err(e) = self.send("stop") {
            tracing::warn!(error = %e, "cannot tell the guard to stop");
        }
    }

    /// Beats the guard every `interval` from a task of its own, as long as
    /// `vouch` says this node may keep running its packages (its lease is
    /// sure). Nothing the host's main loop waits for can delay a beat; a
    /// frozen or dead process stops them, and so does a lease in doubt.
    pub fn beat_while(
        mut self,
        interval: Duration,
        vouch: impl Fn() -> bool + Send + 'static,
    ) -> Beating {
        if vouch() {
            self.beat();
        }
        let link = std::sync::Arc::new(std::sync::Mutex::new(self));
        let task = {
            let link = std::sync::Arc::clone(&link);
            tokio::spawn(async move {
                let mut beats = tokio::time::interval(interval);
                beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    beats.tick().await;
                    if vouch() {
                        link.lock().unwrap_or_else(|p| p.into_inner()).beat();
                    }
                }
            })
        };
        Beating { link, task }
    }
}

/// The guard being beaten by [`GuardLink::beat_while`].
pub struct Beating {
    link: std::sync::Arc<std::sync::Mutex<GuardLink>>,
    task: tokio::task::JoinHandle<()>,
}

impl Beating {
    /// Stops beating and tells the guard to stop: nothing is left to guard.
    pub fn stop(self) {
        self.task.abort();
        self.link.lock().unwrap_or_else(|p| p.into_inner()).stop();
    }

    /// Stops beating and leaves the guard armed: it halts this node's
    /// packages once its margin has passed.
    pub fn leave_armed(self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse() {
        assert_eq!(parse_message(b"beat 42"), Some(Message::Beat(42)));
        assert_eq!(parse_message(b"stop 7\n"), Some(Message::Stop(7)));
        assert_eq!(parse_message(b"beat x"), None);
        assert_eq!(parse_message(b"reboot 1"), None);
        assert_eq!(parse_message(b"\xff"), None);
    }

    #[test]
    fn margin_is_half_the_lease_with_five_beats_in_it() {
        assert_eq!(margin(Duration::from_secs(3)), Duration::from_millis(1500));
        assert_eq!(
            beat_interval(Duration::from_millis(1500)),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn boottime_advances() {
        let a = boottime();
        std::thread::sleep(Duration::from_millis(5));
        assert!(boottime() > a);
    }

    #[test]
    fn claims_are_found_by_fence_token() {
        let dir = tempfile::tempdir().unwrap();
        let claim = Claim {
            record: RunRecord {
                package: "web".into(),
                node: "node1".into(),
                fence_token: FenceToken(4),
                started_ms: 1,
                services: Vec::new(),
                parts: Vec::new(),
            },
            phase: ClaimPhase::Halted,
            guard_pid: 1,
            guard_start_time: 0,
            silent_ms: 2000,
            claimed_ms: 2,
            detail: "halt succeeded".into(),
        };
        claim.save(dir.path()).unwrap();
        assert!(claimed(dir.path(), "web", FenceToken(4)));
        assert!(!claimed(dir.path(), "web", FenceToken(5)));
        assert!(!claimed(dir.path(), "db", FenceToken(4)));
        assert_eq!(Claim::load(dir.path(), "web"), Some(claim.clone()));
        assert!(!claim.in_progress());
        assert!(
            claim
                .describe("node1")
                .contains("was halted by the guard on node1")
        );
    }

    fn claim_on(package: &str, phase: ClaimPhase) -> Claim {
        Claim {
            record: RunRecord {
                package: package.into(),
                node: "node1".into(),
                fence_token: FenceToken(4),
                started_ms: 1,
                services: Vec::new(),
                parts: Vec::new(),
            },
            phase,
            guard_pid: 1,
            guard_start_time: 0,
            silent_ms: 2000,
            claimed_ms: 2,
            detail: String::new(),
        }
    }

    /// Each change right after a read (within one tick of the kernel's
    /// coarse clock, so possibly with the same directory mtime) is seen by
    /// the next refresh: a claim written, its phase moved on, a claim gone.
    #[test]
    fn cached_claims_follow_every_change_of_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut claims = Claims::new(dir.path());
        claims.refresh();
        assert_eq!(claims.get("web"), None);
        claim_on("web", ClaimPhase::Halting)
            .save(dir.path())
            .unwrap();
        claims.refresh();
        assert_eq!(
            claims.get("web").map(|c| c.phase),
            Some(ClaimPhase::Halting)
        );
        claim_on("web", ClaimPhase::Halted)
            .save(dir.path())
            .unwrap();
        claims.refresh();
        assert_eq!(claims.get("web").map(|c| c.phase), Some(ClaimPhase::Halted));
        // Run records next to the claims are not claims.
        std::fs::write(dir.path().join("db.json"), "{}").unwrap();
        std::fs::remove_file(Claim::path(dir.path(), "web")).unwrap();
        claims.refresh();
        assert_eq!(claims.get("web"), None);
        assert_eq!(claims.get("db"), None);
        // Long after a read, an unchanged directory is not read again.
        claim_on("db", ClaimPhase::Halted).save(dir.path()).unwrap();
        std::thread::sleep(Claims::RACY * 2);
        claims.refresh();
        assert!(claims.get("db").is_some());
        let read = claims.read;
        claims.refresh();
        assert_eq!(claims.read, read, "read again though nothing changed");
    }

    /// A link to a datagram socket the test reads, with a guard "just
    /// started" so that no real guard process is spawned.
    fn link_to_test_socket(dir: &Path) -> (GuardLink, UnixDatagram) {
        let path = dir.join(SOCKET);
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let socket = UnixDatagram::unbound().unwrap();
        socket.set_nonblocking(true).unwrap();
        let link = GuardLink {
            options: GuardOptions {
                config_dir: dir.to_owned(),
                paths: config::Paths::linux(),
                log_format: config::LogFormat::default(),
                node: "node1".into(),
                margin: Duration::from_secs(3600),
            },
            socket,
            path,
            last_spawn: Some(Instant::now()),
        };
        (link, listener)
    }

    fn received(listener: &UnixDatagram) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n) = listener.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    /// A host whose main loop is busy (a hundred packages halting, a store
    /// call waiting for its deadline) was halted by its own guard: its
    /// beats queued behind that work.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn beats_go_on_while_the_main_loop_is_blocked_and_stop_when_the_lease_is_in_doubt() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let (link, listener) = link_to_test_socket(dir.path());
        let sure = Arc::new(AtomicBool::new(true));
        let beating = {
            let sure = Arc::clone(&sure);
            link.beat_while(Duration::from_millis(20), move || {
                sure.load(Ordering::SeqCst)
            })
        };
        // The main loop (this thread) blocked for half a second.
        std::thread::sleep(Duration::from_millis(500));
        let beats = received(&listener);
        assert!(
            beats.len() >= 5 && beats.iter().all(|b| b.starts_with("beat ")),
            "{beats:?}"
        );
        sure.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        received(&listener);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(received(&listener), Vec::<String>::new());
        beating.stop();
        let stopped = received(&listener);
        assert_eq!(stopped.len(), 1, "{stopped:?}");
        assert!(stopped[0].starts_with("stop "), "{stopped:?}");
    }
}
