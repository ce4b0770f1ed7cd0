//! The chaos test (DESIGN §8, invariants 1, 6 and 7): a real etcd with its
//! own data directory, three real `vigil host` processes (with their
//! guards), seven failover packages, and randomized faults drawn from a
//! seed. After each fault it waits for the cluster to settle and reports
//! overlaps, lost packages, dead hosts, stuck clusters and `panicked` in any
//! log. `tests/chaos.rs` runs a short variant in CI; `bench/src/bin/chaos.rs`
//! the long one by hand.
//!
//! Every package's service is the `chaos_beat` binary, which appends
//! timestamped beats to one file per package; [`beats`] finds overlaps from
//! those alone. "Running" here always means "beating", never what vigil
//! says; vigil's `status` must also agree before a trial counts as settled.
//!
//! The packages (`lease_ttl_seconds = 2`, guard margin 1 s, `run` takes
//! 0.1 s):
//!
//! | package | nodes | policy | failback | other |
//! |---|---|---|---|---|
//! | ascs | 1 2 3 | configured_node | manual | follows ers |
//! | ers | 2 3 1 | configured_node | manual | avoids ascs |
//! | db | 3 1 2 | configured_node | automatic | |
//! | web | 1 2 3 | min_package_node | manual | |
//! | app | 2 1 3 | min_package_node | automatic | |
//! | svc | 1 3 2 | configured_node | manual | service restarted up to 3 times |
//! | batch | 3 2 1 | configured_node | manual | |
//!
//! It does not inject network partitions (the `CuttableProxy` tests in
//! `cluster.rs` do), resource faults, or several faults at once other than
//! an operator command during a host fault.

pub mod beats;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub use nix::sys::signal::Signal;
use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::{ConfigDir, Etcd, SlowProxy, vigil_bin};
use beats::{Beat, Beats, Overlap};

pub const NODES: [&str; 3] = ["node1", "node2", "node3"];
const LEASE_TTL_MS: u64 = 2000;
/// The `run` script's own time (its `sleep`).
const START_MS: u64 = 100;
const BEAT_MS: u64 = 20;
/// A service counts as running when it beat this recently.
const FRESH_MS: u64 = 400;
const POLL: Duration = Duration::from_millis(100);
const CLI_TIMEOUT: Duration = Duration::from_secs(5);

struct Spec {
    name: &'static str,
    nodes: [&'static str; 3],
    policy: &'static str,
    failback: &'static str,
    extra: &'static str,
    restarts: u32,
}

const PACKAGES: [Spec; 7] = [
    Spec {
        name: "ascs",
        nodes: ["node1", "node2", "node3"],
        policy: "configured_node",
        failback: "manual",
        extra: "follow = \"ers\"\n",
        restarts: 0,
    },
    Spec {
        name: "ers",
        nodes: ["node2", "node3", "node1"],
        policy: "configured_node",
        failback: "manual",
        extra: "avoid = [\"ascs\"]\n",
        restarts: 0,
    },
    Spec {
        name: "db",
        nodes: ["node3", "node1", "node2"],
        policy: "configured_node",
        failback: "automatic",
        extra: "",
        restarts: 0,
    },
    Spec {
        name: "web",
        nodes: ["node1", "node2", "node3"],
        policy: "min_package_node",
        failback: "manual",
        extra: "",
        restarts: 0,
    },
    Spec {
        name: "app",
        nodes: ["node2", "node1", "node3"],
        policy: "min_package_node",
        failback: "automatic",
        extra: "",
        restarts: 0,
    },
    Spec {
        name: "svc",
        nodes: ["node1", "node3", "node2"],
        policy: "configured_node",
        failback: "manual",
        extra: "",
        restarts: 3,
    },
    Spec {
        name: "batch",
        nodes: ["node3", "node2", "node1"],
        policy: "configured_node",
        failback: "manual",
        extra: "",
        restarts: 0,
    },
];

/// The kinds of fault, each drawn with random parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGKILL a host, start it again 0.3–4 s later.
    HostKill,
    /// SIGSTOP a host for 0.1–0.6 s (shorter than the 1 s guard margin).
    StopShort,
    /// SIGSTOP for 1.2–1.8 s (between the margin and the TTL).
    StopMid,
    /// SIGSTOP for 2.5–4.5 s (longer than the TTL).
    StopLong,
    /// etcd killed, restarted on the same data dir 1–5 s later.
    EtcdKill,
    /// etcd frozen (SIGSTOP) for 1–5 s: requests hang rather than fail.
    EtcdFreeze,
    /// SIGTERM a host and start it again at once.
    HostRestart,
    /// SIGKILL a package's service process.
    ServiceKill,
    /// `pkg move`, or `pkg halt` then `pkg run`, asked on a live node while
    /// another host is killed or frozen.
    Operator,
    /// Every host stopped (SIGTERM or SIGKILL), then all started together.
    AllAtOnce,
}

impl FaultKind {
    pub const ALL: [FaultKind; 10] = [
        FaultKind::HostKill,
        FaultKind::StopShort,
        FaultKind::StopMid,
        FaultKind::StopLong,
        FaultKind::EtcdKill,
        FaultKind::EtcdFreeze,
        FaultKind::HostRestart,
        FaultKind::ServiceKill,
        FaultKind::Operator,
        FaultKind::AllAtOnce,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::HostKill => "host_kill",
            FaultKind::StopShort => "stop_short",
            FaultKind::StopMid => "stop_mid",
            FaultKind::StopLong => "stop_long",
            FaultKind::EtcdKill => "etcd_kill",
            FaultKind::EtcdFreeze => "etcd_freeze",
            FaultKind::HostRestart => "host_restart",
            FaultKind::ServiceKill => "service_kill",
            FaultKind::Operator => "operator",
            FaultKind::AllAtOnce => "all_at_once",
        }
    }

    pub fn parse(name: &str) -> Option<FaultKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// splitmix64: the fault sequence is a function of the seed alone.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.next_u64() as usize % items.len()]
    }

    pub fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct Options {
    pub trials: usize,
    pub seed: u64,
    /// The kinds drawn from; each round of `kinds.len()` trials uses each once.
    pub kinds: Vec<FaultKind>,
    /// How long an unchanged, agreed placement must hold to count as settled.
    pub stable_for: Duration,
    /// Added to TTL + start time before a package that is not running is lost.
    pub lost_slack: Duration,
    /// No settle within this after a fault ends: stuck.
    pub stuck_after: Duration,
    /// The `chaos_beat` binary.
    pub beat_bin: PathBuf,
    /// Where to write the logs of failed trials (else they go in the report).
    pub out_dir: Option<PathBuf>,
    /// False runs the hosts with `VIGIL_GUARD=off`, to show that the
    /// detector finds the overlaps the guard prevents.
    pub guard: bool,
    /// Every fault's pause (how long a host or etcd stays down or frozen)
    /// instead of a drawn one, to reproduce one finding.
    pub pause: Option<Duration>,
    /// The signal of every `all_at_once` fault instead of a drawn one.
    pub stop_signal: Option<Signal>,
    /// A node whose requests reach etcd this much late (a [`SlowProxy`]).
    pub slow_etcd: Option<(&'static str, Duration)>,
    /// The node every host fault hits instead of a drawn one.
    pub victim: Option<&'static str>,
    /// Before each trial, drain the other nodes (`node halt`, then `node
    /// run`) so that the packages with manual failback gather on this one.
    pub crowd: Option<&'static str>,
    /// End the run after the first failed trial.
    pub stop_at_first_failure: bool,
}

impl Options {
    pub fn new(trials: usize, seed: u64, beat_bin: PathBuf) -> Self {
        Self {
            trials,
            seed,
            kinds: FaultKind::ALL.to_vec(),
            stable_for: Duration::from_millis(1500),
            lost_slack: Duration::from_secs(3),
            stuck_after: Duration::from_secs(60),
            beat_bin,
            out_dir: None,
            guard: true,
            pause: None,
            stop_signal: None,
            slow_etcd: None,
            victim: None,
            crowd: None,
            stop_at_first_failure: false,
        }
    }

    fn lost_after(&self) -> Duration {
        Duration::from_millis(LEASE_TTL_MS + START_MS) + self.lost_slack
    }
}

/// One trial's outcome.
#[derive(Debug, Clone)]
pub struct TrialReport {
    pub index: usize,
    pub kind: FaultKind,
    /// What was done (victim, durations, operator commands).
    pub detail: String,
    /// From the end of the fault to the first moment of the placement that
    /// then held for `stable_for`; `None` when stuck.
    pub settle: Option<Duration>,
    pub overlaps: Vec<String>,
    pub lost: Vec<String>,
    pub dead: Vec<String>,
    pub stuck: bool,
    pub panics: Vec<String>,
    /// Packages started afresh on a node whose host was stopped with SIGTERM
    /// and started again (invariant 7: it should re-adopt them); reported,
    /// not counted as a failure: a host that takes longer than the guard
    /// margin to come back finds them halted by its guard, by design.
    pub restarted: Vec<String>,
    /// Log lines and observations for a failed trial.
    pub diagnostics: String,
}

impl TrialReport {
    pub fn failed(&self) -> bool {
        !self.overlaps.is_empty()
            || !self.lost.is_empty()
            || !self.dead.is_empty()
            || self.stuck
            || !self.panics.is_empty()
    }
}

impl std::fmt::Display for TrialReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let settle = self
            .settle
            .map_or("stuck".to_owned(), |d| format!("{:.2}s", d.as_secs_f64()));
        write!(
            f,
            "trial {:>3} {:<12} settle {:>6}  overlaps {} lost {} dead {} panics {} restarted {}  {}",
            self.index,
            self.kind.name(),
            settle,
            self.overlaps.len(),
            self.lost.len(),
            self.dead.len(),
            self.panics.len(),
            self.restarted.len(),
            self.detail
        )?;
        for line in self
            .overlaps
            .iter()
            .map(|o| format!("overlap: {o}"))
            .chain(self.lost.iter().map(|l| format!("lost: {l}")))
            .chain(self.dead.iter().map(|d| format!("dead: {d}")))
            .chain(self.panics.iter().map(|p| format!("panic: {p}")))
            .chain(self.restarted.iter().map(|r| format!("restarted: {r}")))
        {
            write!(f, "\n      {line}")?;
        }
        Ok(())
    }
}

/// Totals and settle times per fault kind.
#[derive(Debug, Default)]
pub struct Summary {
    pub trials: usize,
    pub overlaps: usize,
    pub lost: usize,
    pub dead: usize,
    pub stuck: usize,
    pub panics: usize,
    pub restarted: usize,
    /// Trials that failed, by index.
    pub failed: Vec<usize>,
    settles: BTreeMap<FaultKind, Vec<Duration>>,
    counts: BTreeMap<FaultKind, usize>,
}

impl Summary {
    pub fn add(&mut self, r: &TrialReport) {
        self.trials += 1;
        self.overlaps += r.overlaps.len();
        self.lost += r.lost.len();
        self.dead += r.dead.len();
        self.stuck += usize::from(r.stuck);
        self.panics += r.panics.len();
        self.restarted += r.restarted.len();
        if r.failed() {
            self.failed.push(r.index);
        }
        *self.counts.entry(r.kind).or_default() += 1;
        if let Some(d) = r.settle {
            self.settles.entry(r.kind).or_default().push(d);
        }
    }

    /// Nothing that breaks an invariant.
    pub fn clean(&self) -> bool {
        self.overlaps == 0
            && self.lost == 0
            && self.dead == 0
            && self.stuck == 0
            && self.panics == 0
    }

    /// Kinds that ran.
    pub fn kinds(&self) -> Vec<FaultKind> {
        self.counts.keys().copied().collect()
    }

    /// The totals line and a table of settle times per kind.
    pub fn table(&self) -> String {
        let mut out = format!(
            "trials {}  overlaps {}  lost {}  dead {}  stuck {}  panics {}  restarted {}\n",
            self.trials,
            self.overlaps,
            self.lost,
            self.dead,
            self.stuck,
            self.panics,
            self.restarted
        );
        let _ = writeln!(
            out,
            "{:<13} {:>6} {:>9} {:>9}",
            "fault", "trials", "median s", "max s"
        );
        for (kind, n) in &self.counts {
            let mut d = self.settles.get(kind).cloned().unwrap_or_default();
            d.sort();
            let (median, max) = match (d.get(d.len() / 2), d.last()) {
                (Some(m), Some(x)) => (
                    format!("{:.2}", m.as_secs_f64()),
                    format!("{:.2}", x.as_secs_f64()),
                ),
                _ => ("-".to_owned(), "-".to_owned()),
            };
            let _ = writeln!(out, "{:<13} {:>6} {:>9} {:>9}", kind.name(), n, median, max);
        }
        out
    }
}

/// `CLOCK_MONOTONIC` in ns, the clock of the beats.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

/// Runs `vigil -c DIR ARGS`, killing it after `CLI_TIMEOUT` (a host that
/// hangs must not hang the driver).
fn cli(dir: &Path, args: &[&str]) -> Result<Output, String> {
    let child = Command::new(vigil_bin())
        .arg("-c")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn vigil: {e}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(CLI_TIMEOUT) {
        Ok(out) => out.map_err(|e| e.to_string()),
        Err(_) => {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = rx.recv();
            Err(format!("vigil {args:?} gave no answer in {CLI_TIMEOUT:?}"))
        }
    }
}

/// A CLI command's outcome in a few words, for the trial detail.
fn outcome(r: &Result<Output, String>) -> String {
    match r {
        Ok(o) if o.status.success() => "ok".to_owned(),
        Ok(o) => format!(
            "failed: {}",
            String::from_utf8_lossy(&o.stderr).trim().replace('\n', " ")
        ),
        Err(e) => format!("failed: {e}"),
    }
}

/// Package → (node, pid) of its one running service process.
type Placement = BTreeMap<&'static str, (String, u32)>;

/// One package in `vigil status --json`.
#[derive(Debug, Clone, PartialEq)]
struct PkgStatus {
    state: String,
    running_on: Vec<String>,
    failed_on: Vec<String>,
}

/// A node: its config dir and its `vigil host`, if started.
struct Node {
    name: &'static str,
    cfg: ConfigDir,
    child: Option<Child>,
    guard: bool,
    /// How far `host.log` and `run/guard.log` were scanned for panics.
    scanned: [u64; 2],
}

impl Node {
    fn logs(&self) -> [PathBuf; 2] {
        [
            self.cfg.path().join("host.log"),
            self.cfg.path().join("run/guard.log"),
        ]
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} already runs", self.name);
        // Appended, not truncated: a restart must not hide an earlier panic.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.cfg.path().join("host.log"))
            .expect("open host.log");
        let mut command = Command::new(vigil_bin());
        if !self.guard {
            command.env("VIGIL_GUARD", "off");
        }
        let child = command
            .arg("-c")
            .arg(self.cfg.path())
            .args(["host", "--node", self.name])
            .env("VIGIL_LOG", "info,vigil_host=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn vigil host");
        self.child = Some(child);
    }

    fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, signal);
        }
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` and waits for the exit (SIGKILL after 10 s); says how
    /// it went.
    fn stop_with(&mut self, signal: Signal) -> String {
        let Some(mut child) = self.child.take() else {
            return "not running".to_owned();
        };
        let _ = kill(Pid::from_raw(child.id() as i32), signal);
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = child.try_wait() {
                return format!("exited {status}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        format!("did not exit on {signal} in 10 s; killed")
    }

    /// The exit status if the host exited when nobody asked it to.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    /// New lines of both logs containing `panicked`.
    fn new_panics(&mut self) -> Vec<String> {
        let mut found = Vec::new();
        for (i, path) in self.logs().iter().enumerate() {
            let (text, end) = read_from(path, self.scanned[i]);
            self.scanned[i] = end;
            found.extend(
                text.lines()
                    .filter(|l| l.contains("panicked"))
                    .map(|l| format!("{} {}: {l}", self.name, path.display())),
            );
        }
        found
    }

    fn log_sizes(&self) -> [u64; 2] {
        self.logs()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
    }
}

/// The text of `path` from byte `offset`, and the new end.
fn read_from(path: &Path, offset: u64) -> (String, u64) {
    let Ok(mut file) = std::fs::File::open(path) else {
        return (String::new(), offset);
    };
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(offset)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return (String::new(), offset);
    }
    let end = offset + bytes.len() as u64;
    (String::from_utf8_lossy(&bytes).into_owned(), end)
}

/// One package's beat file and how far it was read.
#[derive(Default)]
struct Reader {
    offset: u64,
    partial: String,
}

/// The running cluster and the detector; everything is killed and removed
/// when it is dropped.
pub struct Chaos {
    options: Options,
    rng: Rng,
    etcd: Etcd,
    etcd_frozen: bool,
    nodes: Vec<Node>,
    beat_dir: tempfile::TempDir,
    readers: BTreeMap<&'static str, Reader>,
    beats: Beats,
}

impl Chaos {
    /// Writes the three config dirs and starts etcd (not the hosts).
    pub fn new(options: Options) -> Self {
        assert!(
            options.beat_bin.is_file(),
            "{} is missing: run `cargo build --workspace` first",
            options.beat_bin.display()
        );
        let etcd = Etcd::start();
        let beat_dir = tempfile::Builder::new()
            .prefix("vigil-chaos-beats-")
            .tempdir()
            .expect("tempdir");
        let name = format!("chaos{}", std::process::id());
        let slow = options.slow_etcd.map(|(node, delay)| {
            let proxy = SlowProxy::start(etcd.endpoint.trim_start_matches("http://"), delay);
            (node, proxy.url())
        });
        let nodes: Vec<Node> = NODES
            .iter()
            .map(|node| {
                let cfg = ConfigDir::new();
                let endpoint = match &slow {
                    Some((slow, url)) if slow == node => url.clone(),
                    _ => etcd.endpoint.clone(),
                };
                write_config(
                    &cfg,
                    &name,
                    &endpoint,
                    &options.beat_bin,
                    beat_dir.path(),
                    node,
                );
                Node {
                    name: node,
                    cfg,
                    child: None,
                    guard: options.guard,
                    scanned: [0, 0],
                }
            })
            .collect();
        let check = cli(nodes[0].cfg.path(), &["check"]).expect("vigil check");
        assert!(
            check.status.success(),
            "the chaos config does not pass `vigil check`: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        Self {
            rng: Rng::new(options.seed),
            options,
            etcd,
            etcd_frozen: false,
            nodes,
            beat_dir,
            readers: BTreeMap::new(),
            beats: Beats::new(BEAT_MS * 1_000_000),
        }
    }

    /// Starts all hosts, waits for the first settle, then runs the trials,
    /// handing each report to `each` as it ends.
    pub fn run(&mut self, mut each: impl FnMut(&TrialReport)) -> Summary {
        let mut summary = Summary::default();
        if let Some(startup) = self.start() {
            each(&startup);
            summary.add(&startup);
            return summary;
        }
        let mut round: Vec<FaultKind> = Vec::new();
        for index in 1..=self.options.trials {
            if round.is_empty() {
                round = self.options.kinds.clone();
                // Fisher-Yates, from the seed.
                for i in (1..round.len()).rev() {
                    let j = self.rng.range(0, i as u64) as usize;
                    round.swap(i, j);
                }
            }
            let kind = round.remove(0);
            let report = self.trial(index, kind);
            each(&report);
            summary.add(&report);
            if report.failed() && self.options.stop_at_first_failure {
                break;
            }
        }
        summary
    }

    /// Starts all hosts together and waits for the first settle; the
    /// report of that start when it failed.
    fn start(&mut self) -> Option<TrialReport> {
        let mut startup = self.report(0, FaultKind::AllAtOnce, "startup".to_owned());
        let marks = self.marks();
        for node in &mut self.nodes {
            node.spawn();
        }
        startup.settle = self.settle(mono_ns(), false, &mut startup);
        self.finish(&mut startup, &marks, &BTreeMap::new(), &[]);
        startup.failed().then_some(startup)
    }

    fn report(&self, index: usize, kind: FaultKind, detail: String) -> TrialReport {
        TrialReport {
            index,
            kind,
            detail,
            settle: None,
            overlaps: Vec::new(),
            lost: Vec::new(),
            dead: Vec::new(),
            stuck: false,
            panics: Vec::new(),
            restarted: Vec::new(),
            diagnostics: String::new(),
        }
    }

    fn marks(&self) -> Vec<[u64; 2]> {
        self.nodes.iter().map(Node::log_sizes).collect()
    }

    /// One trial of `kind` on a settled cluster.
    fn trial(&mut self, index: usize, kind: FaultKind) -> TrialReport {
        let mut report = self.report(index, kind, String::new());
        if let Some(node) = self.options.crowd
            && !self.crowd_onto(node)
        {
            report.detail = format!("packages not gathered on {node}: the cluster did not settle");
            report.stuck = true;
            return report;
        }
        let marks = self.marks();
        let _ = self.read_beats();
        let before = self.placement();
        let mut restarted_nodes = Vec::new();
        report.detail = self.inject(kind, &mut report, &mut restarted_nodes);
        let fault_end = mono_ns();
        report.settle = self.settle(fault_end, true, &mut report);
        self.finish(&mut report, &marks, &before, &restarted_nodes);
        report
    }

    /// After a trial: restarts, panics, diagnostics of a failure, and a
    /// tidy cluster for the next trial (failed marks cleared, halted
    /// packages run).
    fn finish(
        &mut self,
        report: &mut TrialReport,
        marks: &[[u64; 2]],
        before: &Placement,
        restarted_nodes: &[&'static str],
    ) {
        if report.settle.is_some() {
            let after = self.placement();
            for (package, (node, pid)) in before {
                if restarted_nodes.contains(&node.as_str())
                    && after
                        .get(package)
                        .is_some_and(|(n, p)| n == node && p != pid)
                {
                    report
                        .restarted
                        .push(format!("{package} on {node}: pid {pid} replaced"));
                }
            }
        }
        self.tidy(report);
        for node in &mut self.nodes {
            report.panics.extend(node.new_panics());
        }
        if report.failed() {
            let logs = self.diagnostics(marks);
            report.diagnostics.push_str(&logs);
            if let Some(dir) = &self.options.out_dir {
                let path = dir.join(format!(
                    "trial-{:03}-{}.log",
                    report.index,
                    report.kind.name()
                ));
                let _ = std::fs::create_dir_all(dir);
                let _ = std::fs::write(&path, format!("{report}\n\n{}", report.diagnostics));
            }
        }
    }

    /// Brings every package back to running after a trial without
    /// measuring: `pkg clear` where a package failed on a node, `pkg run`
    /// where it is down.
    fn tidy(&mut self, report: &mut TrialReport) {
        let mut acted = true;
        if let Some(status) = self.status() {
            acted = false;
            for (package, s) in &status {
                if !s.failed_on.is_empty() {
                    let _ = self.any_cli(&["pkg", "clear", package]);
                    acted = true;
                }
                if s.state == "down" || s.state == "failed" {
                    let _ = self.any_cli(&["pkg", "run", package]);
                    acted = true;
                }
            }
        }
        if (!acted && report.settle.is_some()) || self.settle_quietly(report) {
            return;
        }
        // Still not settled: every host afresh, so that the next trial
        // begins from a running cluster.
        report.diagnostics.push_str(
            "tidy: not settled after pkg clear/run; every host killed and started again\n",
        );
        for node in &mut self.nodes {
            node.kill();
        }
        std::thread::sleep(Duration::from_millis(LEASE_TTL_MS + 500));
        for node in &mut self.nodes {
            node.spawn();
        }
        if !self.settle_quietly(report) {
            report
                .diagnostics
                .push_str("tidy: still not settled after every host started again\n");
        }
    }

    /// Waits for a settle without timing it or looking for lost packages;
    /// dead hosts and overlaps still count.
    fn settle_quietly(&mut self, report: &mut TrialReport) -> bool {
        let mut scratch = self.report(report.index, report.kind, String::new());
        let settled = self.settle(mono_ns(), false, &mut scratch).is_some();
        report.dead.extend(scratch.dead);
        report.overlaps.extend(scratch.overlaps);
        settled
    }

    /// Runs a CLI command on the first node whose host answers it.
    fn any_cli(&self, args: &[&str]) -> Result<Output, String> {
        let mut last = Err("no host runs".to_owned());
        for node in &self.nodes {
            if node.child.is_none() {
                continue;
            }
            last = cli(node.cfg.path(), args);
            if last.as_ref().is_ok_and(|o| o.status.success()) {
                return last;
            }
        }
        last
    }

    /// `vigil status --json` from the first host that answers.
    fn status(&self) -> Option<BTreeMap<String, PkgStatus>> {
        for node in &self.nodes {
            if node.child.is_none() {
                continue;
            }
            let Ok(out) = cli(node.cfg.path(), &["status", "--json"]) else {
                continue;
            };
            if !out.status.success() {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                continue;
            };
            let strings = |v: &serde_json::Value| -> Vec<String> {
                v.as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let packages = v["packages"].as_array()?;
            return Some(
                packages
                    .iter()
                    .filter_map(|p| {
                        Some((
                            p["name"].as_str()?.to_owned(),
                            PkgStatus {
                                state: p["state"].as_str()?.to_owned(),
                                running_on: strings(&p["running_on"]),
                                failed_on: strings(&p["failed_on"]),
                            },
                        ))
                    })
                    .collect(),
            );
        }
        None
    }

    /// Reads new beats; returns new overlaps.
    fn read_beats(&mut self) -> Vec<Overlap> {
        for spec in &PACKAGES {
            let path = self.beat_dir.path().join(format!("{}.beats", spec.name));
            let reader = self.readers.entry(spec.name).or_default();
            let (text, end) = read_from(&path, reader.offset);
            reader.offset = end;
            reader.partial.push_str(&text);
            // A line still being written stays for the next read.
            let complete = reader.partial.rfind('\n').map_or(0, |i| i + 1);
            let lines: String = reader.partial.drain(..complete).collect();
            for line in lines.lines() {
                if let Some(beat) = Beat::parse(line) {
                    self.beats.add(beat);
                }
            }
        }
        self.beats.new_overlaps()
    }

    /// Each package that beats on exactly one node: (node, pid).
    fn placement(&self) -> Placement {
        let since = mono_ns().saturating_sub(FRESH_MS * 1_000_000);
        PACKAGES
            .iter()
            .filter_map(
                |spec| match self.beats.alive_since(spec.name, since).as_slice() {
                    [one] => Some((spec.name, (one.node.clone(), one.pid))),
                    _ => None,
                },
            )
            .collect()
    }

    /// The placement when every package beats on one node and `status`
    /// says the same; else `None`.
    fn agreed(&self) -> Option<Placement> {
        let placement = self.placement();
        if placement.len() != PACKAGES.len() {
            return None;
        }
        let status = self.status()?;
        for (package, (node, _)) in &placement {
            let s = status.get(*package)?;
            if s.state != "up" || s.running_on != [node.clone()] {
                return None;
            }
        }
        Some(placement)
    }

    /// Hosts that exited on their own are reported and started again.
    fn check_hosts(&mut self, report: &mut TrialReport) {
        for node in &mut self.nodes {
            if let Some(status) = node.exited() {
                let (log, _) = read_from(&node.cfg.path().join("host.log"), 0);
                let tail: Vec<&str> = log
                    .lines()
                    .filter(|l| !l.contains(" DEBUG ") && !l.contains(" TRACE "))
                    .rev()
                    .take(5)
                    .collect();
                report.dead.push(format!(
                    "{} exited {status}; last lines: {}",
                    node.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ));
                node.spawn();
            }
        }
    }

    /// Waits until the placement agreed between beats and `status` holds
    /// for `stable_for`; the time from `fault_end` to its first moment.
    /// With `check_lost`, a package not beating by TTL + start + slack
    /// after `fault_end` (and not in the 1.5 s before) is lost.
    fn settle(
        &mut self,
        fault_end: u64,
        check_lost: bool,
        report: &mut TrialReport,
    ) -> Option<Duration> {
        let lost_at = fault_end + self.options.lost_after().as_nanos() as u64;
        let give_up = fault_end + self.options.stuck_after.as_nanos() as u64;
        let stable_ns = self.options.stable_for.as_nanos() as u64;
        let mut lost_checked = !check_lost;
        let mut current: Option<(Placement, u64)> = None;
        loop {
            self.check_hosts(report);
            report
                .overlaps
                .extend(self.read_beats().iter().map(Overlap::to_string));
            let now = mono_ns();
            if !lost_checked && now >= lost_at {
                lost_checked = true;
                let recent = lost_at.saturating_sub(1_500_000_000);
                for spec in &PACKAGES {
                    if self.beats.alive_since(spec.name, recent).is_empty() {
                        let last =
                            self.beats
                                .last_beat(spec.name)
                                .map_or("never".to_owned(), |t| {
                                    format!(
                                        "{} ms before the fault ended",
                                        ms(fault_end.saturating_sub(t))
                                    )
                                });
                        let why = self
                            .any_cli(&["why", spec.name])
                            .map(|o| {
                                String::from_utf8_lossy(&o.stdout)
                                    .trim()
                                    .replace('\n', " | ")
                            })
                            .unwrap_or_else(|e| e);
                        report.lost.push(format!(
                            "{} not running {} ms after the fault ended (last beat: {last}); why: {why}",
                            spec.name,
                            ms(now - fault_end)
                        ));
                    }
                }
            }
            let agreed = self.agreed();
            // Stamped after `status` answered: a settle time includes the
            // status call that saw it (resolution: one poll).
            let seen = mono_ns();
            match (agreed, &mut current) {
                (Some(p), Some((held, since))) if p == *held => {
                    if seen - *since >= stable_ns {
                        return Some(Duration::from_nanos(since.saturating_sub(fault_end)));
                    }
                }
                (Some(p), _) => current = Some((p, seen)),
                (None, _) => current = None,
            }
            if now >= give_up {
                report.stuck = true;
                let status = self
                    .any_cli(&["status"])
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_else(|e| e);
                let _ = write!(
                    report.diagnostics,
                    "not settled after {} s; beats: {:?}\nstatus:\n{status}\n",
                    self.options.stuck_after.as_secs(),
                    self.placement()
                );
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// The host log lines (info and above) and guard log lines written
    /// since `marks`, per node.
    fn diagnostics(&self, marks: &[[u64; 2]]) -> String {
        let mut out = String::new();
        for (node, mark) in self.nodes.iter().zip(marks) {
            for (path, offset) in node.logs().iter().zip(mark) {
                let (text, _) = read_from(path, *offset);
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.contains(" DEBUG ") && !l.contains(" TRACE "))
                    .collect();
                let _ = writeln!(
                    out,
                    "--- {} {} ({} lines)",
                    node.name,
                    path.display(),
                    lines.len()
                );
                for line in lines.iter().rev().take(200).rev() {
                    let _ = writeln!(out, "{line}");
                }
            }
        }
        out
    }

    /// A pause drawn in `lo..=hi` ms, or the fixed one of the options (the
    /// draw happens anyway, so the rest of the sequence stays the same).
    fn pause(&mut self, lo: u64, hi: u64) -> Duration {
        let drawn = self.rng.ms(lo, hi);
        self.options.pause.unwrap_or(drawn)
    }

    fn random_node(&mut self) -> usize {
        let drawn = self.rng.range(0, NODES.len() as u64 - 1) as usize;
        self.options
            .victim
            .and_then(|v| NODES.iter().position(|n| *n == v))
            .unwrap_or(drawn)
    }

    /// Drains every node but `node` in turn, so that the packages with
    /// manual failback end up there; false if the cluster did not settle.
    fn crowd_onto(&mut self, node: &str) -> bool {
        for other in NODES.into_iter().filter(|n| *n != node) {
            for verb in ["halt", "run"] {
                let _ = self.any_cli(&["node", verb, other]);
                if !self.settle_quietly(&mut self.report(0, FaultKind::Operator, String::new())) {
                    return false;
                }
            }
        }
        true
    }

    /// Injects one fault and undoes it; returns what was done. Hosts that
    /// were restarted go to `restarted`.
    fn inject(
        &mut self,
        kind: FaultKind,
        report: &mut TrialReport,
        restarted: &mut Vec<&'static str>,
    ) -> String {
        match kind {
            FaultKind::HostKill => {
                let v = self.random_node();
                let pause = self.pause(300, 4000);
                self.nodes[v].kill();
                std::thread::sleep(pause);
                self.nodes[v].spawn();
                format!(
                    "{} SIGKILL, started again after {pause:?}",
                    self.nodes[v].name
                )
            }
            FaultKind::StopShort | FaultKind::StopMid | FaultKind::StopLong => {
                let v = self.random_node();
                let pause = match kind {
                    FaultKind::StopShort => self.pause(100, 600),
                    FaultKind::StopMid => self.pause(1200, 1800),
                    _ => self.pause(2500, 4500),
                };
                self.nodes[v].signal(Signal::SIGSTOP);
                std::thread::sleep(pause);
                self.nodes[v].signal(Signal::SIGCONT);
                format!("{} SIGSTOP for {pause:?}", self.nodes[v].name)
            }
            FaultKind::EtcdKill => {
                let pause = self.pause(1000, 5000);
                self.etcd.stop();
                std::thread::sleep(pause);
                self.etcd_back(report);
                format!("etcd killed, restarted after {pause:?}")
            }
            FaultKind::EtcdFreeze => {
                let pause = self.pause(1000, 5000);
                let pid = self.etcd.pid().map(|p| Pid::from_raw(p as i32));
                if let Some(pid) = pid {
                    let _ = kill(pid, Signal::SIGSTOP);
                    self.etcd_frozen = true;
                    std::thread::sleep(pause);
                    let _ = kill(pid, Signal::SIGCONT);
                    self.etcd_frozen = false;
                }
                format!("etcd SIGSTOP for {pause:?}")
            }
            FaultKind::HostRestart => {
                let v = self.random_node();
                let how = self.nodes[v].stop_with(Signal::SIGTERM);
                self.nodes[v].spawn();
                restarted.push(self.nodes[v].name);
                format!("{} SIGTERM ({how}), started again", self.nodes[v].name)
            }
            FaultKind::ServiceKill => {
                let _ = self.read_beats();
                let spec = &PACKAGES[self.rng.range(0, PACKAGES.len() as u64 - 1) as usize];
                match self.placement().get(spec.name) {
                    Some((node, pid)) => {
                        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
                        format!(
                            "{}'s service (pid {pid}) on {node} SIGKILL (restarts {})",
                            spec.name, spec.restarts
                        )
                    }
                    None => format!("{}'s service not running alone; nothing killed", spec.name),
                }
            }
            FaultKind::Operator => self.operator(),
            FaultKind::AllAtOnce => {
                let signal = self.rng.pick(&[Signal::SIGTERM, Signal::SIGKILL]);
                let signal = self.options.stop_signal.unwrap_or(signal);
                let pause = self.pause(0, 1500);
                for node in &self.nodes {
                    node.signal(signal);
                }
                for node in &mut self.nodes {
                    node.stop_with(signal);
                }
                std::thread::sleep(pause);
                for node in &mut self.nodes {
                    node.spawn();
                    // A clean stop leaves the guard armed: started again
                    // within the margin, the hosts should re-adopt.
                    if signal == Signal::SIGTERM {
                        restarted.push(node.name);
                    }
                }
                format!("all hosts {signal}, all started together after {pause:?}")
            }
        }
    }

    fn etcd_back(&mut self, report: &mut TrialReport) {
        for _ in 0..3 {
            if self.etcd.try_restart() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!(
            "trial {}: etcd did not restart on its data dir; log:\n{}",
            report.index,
            self.etcd.log()
        );
    }

    /// An operator command on a live node while another host is killed or
    /// frozen.
    fn operator(&mut self) -> String {
        let v = self.random_node();
        let victim = self.nodes[v].name;
        let frozen = self.rng.pick(&[true, false]);
        let total = if frozen {
            self.pause(1200, 4500)
        } else {
            self.pause(300, 4000)
        };
        let first = self.rng.ms(100, 600).min(total);
        let spec = &PACKAGES[self.rng.range(0, PACKAGES.len() as u64 - 1) as usize];
        let target = self.rng.pick(&NODES);
        let halt_run = self.rng.pick(&[true, false]);
        let asked = (v + 1 + self.rng.range(0, 1) as usize) % NODES.len();
        let dir = self.nodes[asked].cfg.path().to_owned();
        let started = std::time::Instant::now();
        if frozen {
            self.nodes[v].signal(Signal::SIGSTOP);
        } else {
            self.nodes[v].kill();
        }
        std::thread::sleep(first);
        let mut detail = format!(
            "{victim} {} for {total:?}; on {} after {first:?}: ",
            if frozen { "SIGSTOP" } else { "SIGKILL" },
            NODES[asked]
        );
        let mut run_ok = true;
        if halt_run {
            let halt = cli(&dir, &["pkg", "halt", spec.name]);
            std::thread::sleep(self.rng.ms(300, 800));
            let run = cli(&dir, &["pkg", "run", spec.name]);
            run_ok = run.as_ref().is_ok_and(|o| o.status.success());
            let _ = write!(
                detail,
                "pkg halt {} ({}), pkg run ({})",
                spec.name,
                outcome(&halt),
                outcome(&run)
            );
        } else {
            let moved = cli(&dir, &["pkg", "move", spec.name, "--node", target]);
            let _ = write!(
                detail,
                "pkg move {} --node {target} ({})",
                spec.name,
                outcome(&moved)
            );
        }
        std::thread::sleep(total.saturating_sub(started.elapsed()));
        if frozen {
            self.nodes[v].signal(Signal::SIGCONT);
        } else {
            self.nodes[v].spawn();
        }
        if !run_ok {
            // The operator tries again once the fault is over.
            let again = self.any_cli(&["pkg", "run", spec.name]);
            let _ = write!(detail, "; pkg run again ({})", outcome(&again));
        }
        detail
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        if self.etcd_frozen
            && let Some(pid) = self.etcd.pid()
        {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
        }
        for node in &mut self.nodes {
            node.signal(Signal::SIGCONT);
            node.kill();
        }
        // The config dirs' own drop kills guards and services (their
        // command lines name the dir), then etcd and the beat files go.
    }
}

fn write_config(
    cfg: &ConfigDir,
    cluster: &str,
    endpoint: &str,
    beat_bin: &Path,
    beat_dir: &Path,
    node: &str,
) {
    cfg.write(
        "cluster.toml",
        &format!(
            "[cluster]\nname = \"{cluster}\"\nnodes = [\"node1\", \"node2\", \"node3\"]\n[store]\ntype = \"etcd\"\nendpoints = [\"{endpoint}\"]\nlease_ttl_seconds = {}\n",
            LEASE_TTL_MS / 1000
        ),
    );
    cfg.script(
        "pkg/run.sh",
        &format!("#!/bin/sh\nsleep {}\n", START_MS as f64 / 1000.0),
    );
    cfg.script("pkg/halt.sh", "#!/bin/sh\nexit 0\n");
    // Every host runs the applied package set, so the package files must
    // be the same on every node: what differs per node (its name, its
    // config dir as the mark its processes are found by) is in this
    // node's own wrapper, which the relative program path resolves to.
    cfg.script(
        "pkg/beat.sh",
        &format!(
            "#!/bin/sh\nexec \"{bin}\" \"{dir}/$1.beats\" \"{node}\" \"$1\" \"{BEAT_MS}\" \"{mark}\"\n",
            bin = beat_bin.display(),
            dir = beat_dir.display(),
            mark = cfg.path().display(),
        ),
    );
    for spec in &PACKAGES {
        let nodes: Vec<String> = spec.nodes.iter().map(|n| format!("\"{n}\"")).collect();
        cfg.write(
            &format!("packages.d/{}.toml", spec.name),
            &format!(
                "name = \"{name}\"\ntype = \"failover\"\nnodes = [{nodes}]\nfailover_policy = \"{policy}\"\nfailback_policy = \"{failback}\"\nrun = [\"pkg/run.sh\"]\nhalt = [\"pkg/halt.sh\"]\n{extra}\n[[service]]\nname = \"beat\"\ncommand = [\"pkg/beat.sh\", \"{name}\"]\nrestarts = {restarts}\n",
                name = spec.name,
                nodes = nodes.join(", "),
                policy = spec.policy,
                failback = spec.failback,
                extra = spec.extra,
                restarts = spec.restarts,
            ),
        );
    }
}
