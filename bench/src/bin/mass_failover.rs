//! Mass failover on a real three-node cluster: how long K failover packages
//! take to start, all at once, compared with one. Three real `vigil host`
//! processes (`node1`..`node3`, `lease_ttl_seconds = 2`) on a throwaway etcd
//! on loopback, and K failover packages `p001`.. (nodes `[node1, node2,
//! node3]`, `configured_node`, manual failback) whose `run` script sleeps
//! S ms and then appends `<epoch ms> run <pkg> <node> <reason> <fence>` to a
//! shared log. Three cases, each for every K (`--k`) and S (`--start-ms`),
//! `--trials N` times (default 3):
//!
//! * **cold**: a fresh etcd and fresh config dirs each trial; node1's host is
//!   spawned, and once it answers node2's and node3's. Timed from just
//!   before node1's spawn to the last package's run line. Ideal: the K = 1
//!   figure with the same S.
//! * **kill**: all K up on one node (the owner); SIGKILL to the owner's
//!   `vigil host`; timed from just before `kill(2)` to the last run line on
//!   another node. Ideal: TTL + S. The host is restarted (its guard has
//!   halted its copies meanwhile) and the cluster settles.
//! * **fault**: each package also requires `/example/file/flag/present ==
//!   yes` (the example file monitor, polled every 100 ms), each node
//!   watching a flag file of its own; the owner's flag is unlinked; timed
//!   from just before `unlink(2)` to the last run line elsewhere. Ideal: the
//!   K = 1 figure with the same S. The flag is recreated and the cluster
//!   settles.
//!
//! With manual failback the packages stay where they went, so the owner
//! alternates between node1 and node2 from one trial to the next (node3,
//! last in every list, takes nothing while node1 or node2 is eligible).
//! Besides the times, each row reports from the hosts' logs when the
//! adoptive host logged its first and last `starting package` line, the
//! peak number of packages starting at once (from `starting package` to the
//! run line), and how many `run permit still held` waits, warnings and
//! errors the hosts logged during the row (restores included).
//!
//! It measures nothing but these paths, with trivial control scripts: no
//! services, no real application start time.
//!
//! `cargo build --release --workspace && target/release/mass_failover`
//! (as root; needs `etcd` from the Debian package `etcd-server`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use vigil_tests::cluster::{ScriptEntry as Entry, ScriptLog, Stamp, etcd_cluster_toml};
use vigil_tests::{ConfigDir, Etcd, Host, processes_matching, require_tool, wait_for};

const NODES: [&str; 3] = ["node1", "node2", "node3"];
const LEASE_TTL_MS: f64 = 2000.0;
/// How long a cluster may take to settle, or K packages to start.
const SETTLE: Duration = Duration::from_secs(120);
const FLAG: &str = "/example/file/flag/present";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Case {
    Cold,
    Kill,
    Fault,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Cold => "cold",
            Case::Kill => "kill",
            Case::Fault => "fault",
        }
    }
}

struct Options {
    ks: Vec<usize>,
    start_ms: Vec<u64>,
    trials: usize,
    cases: Vec<Case>,
    max_parallel: Option<usize>,
}

fn list<T: std::str::FromStr>(flag: &str, text: &str) -> anyhow::Result<Vec<T>> {
    text.split(',')
        .map(|v| {
            v.trim()
                .parse::<T>()
                .map_err(|_| anyhow::anyhow!("{flag} {text:?}: {v:?} is not a number"))
        })
        .collect()
}

impl Options {
    fn parse() -> anyhow::Result<Self> {
        const USAGE: &str = "usage: mass_failover [--k 1,10,50,100] [--start-ms 0,200] [--trials N] [--only cold|kill|fault] [--max-parallel N]";
        let mut options = Self {
            ks: vec![1, 10, 50, 100],
            start_ms: vec![0, 200],
            trials: 3,
            cases: vec![Case::Cold, Case::Kill, Case::Fault],
            max_parallel: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .with_context(|| format!("{arg} needs a value; {USAGE}"))
            };
            match arg.as_str() {
                "--k" => options.ks = list("--k", &value()?)?,
                "--start-ms" => options.start_ms = list("--start-ms", &value()?)?,
                "--trials" => {
                    let n = value()?;
                    options.trials = n.parse().with_context(|| format!("--trials {n}"))?;
                }
                "--max-parallel" => {
                    let n = value()?;
                    options.max_parallel =
                        Some(n.parse().with_context(|| format!("--max-parallel {n}"))?);
                }
                "--only" => {
                    let mut cases = Vec::new();
                    for case in value()?.split(',') {
                        cases.push(match case {
                            "cold" => Case::Cold,
                            "kill" => Case::Kill,
                            "fault" => Case::Fault,
                            other => bail!("--only {other:?}: want cold, kill or fault"),
                        });
                    }
                    options.cases = cases;
                }
                other => bail!("unknown argument {other:?}; {USAGE}"),
            }
        }
        if options.trials == 0 {
            bail!("--trials must be at least 1");
        }
        if options.ks.contains(&0) || options.ks.iter().any(|&k| k > 999) {
            bail!("--k: each K must be between 1 and 999");
        }
        options.ks.sort_unstable();
        options.ks.dedup();
        options.start_ms.sort_unstable();
        options.start_ms.dedup();
        options.cases.sort();
        options.cases.dedup();
        Ok(options)
    }
}

/// Milliseconds since the epoch on the realtime clock, as `date +%s%3N`.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

fn package_name(i: usize) -> String {
    format!("p{:03}", i + 1)
}

/// What a guard logs when its host went silent (`guard::run`).
const GUARD_FIRED: &str = "halting this node's packages";
/// vigil's own debug lines (the step lines) without the gRPC stack's, which
/// cost the hosts CPU at K = 100 that a host logging at info never spends.
const HOST_ENV: &[(&str, &str)] = &[("VIGIL_LOG", "info,vigil_host=debug")];
/// The manager's debug line after each step, with its duration in µs.
const STEPPED: &str = "stepped took_us=";

/// What the hosts logged during a row, beyond the figures.
#[derive(Default)]
struct Oddities {
    permit_waits: usize,
    /// A guard that found its host silent and halted the node's packages:
    /// expected after a kill, a defect anywhere else (the host was busy).
    guard_fired: usize,
    warnings: usize,
    errors: usize,
    /// The first few warning and error lines, shortened.
    samples: Vec<String>,
    /// How long each of the hosts' manager steps took (µs), from their
    /// `stepped took_us=` debug lines.
    steps_us: Vec<f64>,
    /// What the benchmark itself noticed (a restore that left the packages
    /// split over several nodes).
    notes: Vec<String>,
}

impl Oddities {
    fn relevant(line: &str) -> bool {
        line.contains(" WARN ")
            || line.contains(" ERROR ")
            || line.contains("run permit still held")
            || line.contains("starting package")
            || line.contains(GUARD_FIRED)
            || line.contains(STEPPED)
    }

    fn add(&mut self, line: &str) {
        let level = line.split_whitespace().nth(1).unwrap_or("");
        if line.contains("run permit still held") {
            self.permit_waits += 1;
        }
        if line.contains(GUARD_FIRED) {
            self.guard_fired += 1;
        }
        if let Some(us) = line
            .split_once(STEPPED)
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|us| us.parse::<f64>().ok())
        {
            self.steps_us.push(us);
        }
        let serious = match level {
            "WARN" => {
                self.warnings += 1;
                true
            }
            "ERROR" => {
                self.errors += 1;
                true
            }
            _ => false,
        };
        if serious && self.samples.len() < 8 {
            self.samples.push(line.chars().take(240).collect());
        }
    }
}

/// A `starting package` line: (log time in ns, package).
fn launch_of(line: &str) -> Option<(i128, String)> {
    if !line.contains("starting package") {
        return None;
    }
    let stamp = line.split_whitespace().next()?;
    let at = time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
        .ok()?
        .unix_timestamp_nanos();
    let package = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("package="))?
        .to_owned();
    Some((at, package))
}

struct Cluster {
    // Declared first so they are dropped first (see Drop too): the hosts
    // stop before their config dirs go.
    hosts: [Option<Host>; 3],
    /// The lines of each host's current log already counted (only the
    /// few that matter: see `Oddities::relevant`). Not a byte offset: a
    /// killed host's guard keeps writing to the log file through the fd it
    /// inherited, at its old offset, after the restarted host truncated it.
    scanned: [BTreeSet<String>; 3],
    /// `starting package` lines seen in the scans: (node, ns, package).
    launches: Vec<(usize, i128, String)>,
    oddities: Oddities,
    dirs: [ConfigDir; 3],
    k: usize,
    gated: bool,
    /// For the kept logs: `<case>-k<K>-s<S>`.
    label: String,
    /// Stamped in milliseconds.
    log: ScriptLog,
    _etcd: Etcd,
}

impl Cluster {
    fn new(
        case: Case,
        k: usize,
        start_ms: u64,
        max_parallel: Option<usize>,
    ) -> anyhow::Result<Self> {
        let gated = case == Case::Fault;
        let etcd = Etcd::start();
        let log = ScriptLog::new("vigil-mass-failover-", Stamp::Millis);
        let name = format!("mass{}-{}", std::process::id(), now_ms() % 1_000_000);
        let max_parallel = max_parallel
            .map(|n| format!("max_parallel_actions = {n}\n"))
            .unwrap_or_default();
        let sleep = if start_ms > 0 {
            format!("sleep {}.{:03}\n", start_ms / 1000, start_ms % 1000)
        } else {
            String::new()
        };
        let dirs = [0, 1, 2].map(|_| {
            let cfg = ConfigDir::new();
            cfg.write(
                "cluster.toml",
                &etcd_cluster_toml(&name, &NODES, &etcd.endpoint, 2, &max_parallel),
            );
            log.write_scripts(&cfg, &sleep);
            let mut resource = String::new();
            if gated {
                cfg.monitor(
                    "file",
                    &format!(
                        "name = \"file\"\ntype = \"dylib\"\nplugin = \"vigil_example_file\"\ninterval_seconds = 0.1\n[params.files]\nflag = \"{}\"\n",
                        cfg.path().join("flag").display()
                    ),
                );
                cfg.write("flag", "");
                resource = format!("\n[[resource]]\nname = \"{FLAG}\"\nup = \"== yes\"\n");
            }
            for i in 0..k {
                cfg.write(
                    &format!("packages.d/{}.toml", package_name(i)),
                    &format!(
                        "name = \"{}\"\ntype = \"failover\"\nnodes = [\"node1\", \"node2\", \"node3\"]\nfailover_policy = \"configured_node\"\nfailback_policy = \"manual\"\nrun = [\"pkg/run.sh\"]\nhalt = [\"pkg/halt.sh\"]\n{resource}",
                        package_name(i)
                    ),
                );
            }
            cfg
        });
        let check = dirs[0].vigil(&["check"]);
        if !check.status.success() {
            bail!(
                "vigil check refused the benchmark's config: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
        Ok(Self {
            hosts: [None, None, None],
            scanned: Default::default(),
            launches: Vec::new(),
            oddities: Oddities::default(),
            dirs,
            k,
            gated,
            label: format!("{}-k{k}-s{start_ms}", case.name()),
            log,
            _etcd: etcd,
        })
    }

    /// Starts node `i`'s host and waits until it answers.
    fn start(&mut self, i: usize) {
        self.hosts[i] = Some(self.dirs[i].start_host_as_with_env(NODES[i], HOST_ENV));
        self.scanned[i].clear();
    }

    fn status(&self, i: usize) -> Result<serde_json::Value, String> {
        self.dirs[i].status_json()
    }

    /// Where every package runs (package -> node index) as seen from node
    /// `i`, if all K are up on one node each, all three nodes are up and
    /// (gated) every package's flag is up there.
    fn placement(&self, i: usize) -> Result<BTreeMap<String, usize>, String> {
        let s = self.status(i)?;
        let nodes_up = s["nodes"]
            .as_array()
            .is_some_and(|ns| ns.iter().filter(|n| n["state"] == "up").count() == NODES.len());
        if !nodes_up {
            return Err(format!(
                "seen from {}: not all nodes up: {}",
                NODES[i], s["nodes"]
            ));
        }
        let packages = s["packages"].as_array().cloned().unwrap_or_default();
        if packages.len() != self.k {
            return Err(format!(
                "seen from {}: {} packages",
                NODES[i],
                packages.len()
            ));
        }
        let mut placement = BTreeMap::new();
        for p in &packages {
            let owner = p["running_on"]
                .as_array()
                .filter(|on| on.len() == 1 && p["state"] == "up")
                .and_then(|on| on[0].as_str())
                .and_then(|on| NODES.iter().position(|n| *n == on))
                .ok_or_else(|| format!("seen from {}: {p}", NODES[i]))?;
            if self.gated
                && !p["resources"]
                    .as_array()
                    .is_some_and(|rs| rs.iter().any(|r| r["name"] == FLAG && r["state"] == "up"))
            {
                return Err(format!("seen from {}: flag not up: {p}", NODES[i]));
            }
            let name = p["name"].as_str().unwrap_or_default().to_owned();
            placement.insert(name, owner);
        }
        Ok(placement)
    }

    /// Waits until every node sees all K packages up, the same placement
    /// from everywhere, unchanged for 500 ms and with the script log quiet,
    /// so nothing the last trial set off is still under way; returns the
    /// placement. Normally all K run on one node; a split is noted.
    fn settle(&mut self) -> anyhow::Result<BTreeMap<String, usize>> {
        let mut last: Option<(BTreeMap<String, usize>, usize)> = None;
        let placement = wait_for(
            SETTLE,
            "all packages up, the same placement seen from every node, stable",
            || {
                let mut views = (0..NODES.len())
                    .map(|i| self.placement(i))
                    .collect::<Result<Vec<_>, String>>()?;
                let view = views.pop().unwrap_or_default();
                if views.iter().any(|v| *v != view) {
                    return Err("nodes disagree on the placement".to_owned());
                }
                let lines = self.entries().len();
                let stable = last
                    .as_ref()
                    .is_some_and(|(p, l)| *p == view && *l == lines);
                last = Some((view.clone(), lines));
                if stable {
                    Ok(view)
                } else {
                    std::thread::sleep(Duration::from_millis(450));
                    Err("placement or script log still changing".to_owned())
                }
            },
        );
        let on: BTreeSet<usize> = placement.values().copied().collect();
        if on.len() > 1 {
            let mut count: BTreeMap<&str, usize> = BTreeMap::new();
            for n in placement.values() {
                *count.entry(NODES[*n]).or_insert(0) += 1;
            }
            let note = format!("settled split over several nodes: {count:?}");
            eprintln!("{}: {note}", self.label);
            self.oddities.notes.push(note);
        }
        self.scan_logs();
        Ok(placement)
    }

    fn entries(&self) -> Vec<Entry> {
        self.log.entries()
    }

    /// Waits until each of `packages` has a run line after the first
    /// `skip` lines on a node other than `not_on`; returns each package's
    /// first such line.
    fn wait_runs(
        &mut self,
        skip: usize,
        packages: &BTreeSet<String>,
        not_on: Option<usize>,
    ) -> anyhow::Result<Vec<Entry>> {
        let start = Instant::now();
        loop {
            let mut first: BTreeMap<String, Entry> = BTreeMap::new();
            for e in self.entries().into_iter().skip(skip) {
                if e.op == "run"
                    && packages.contains(&e.package)
                    && not_on.is_none_or(|n| e.node != NODES[n])
                {
                    first.entry(e.package.clone()).or_insert(e);
                }
            }
            if first.len() == packages.len() {
                return Ok(first.into_values().collect());
            }
            if start.elapsed() > SETTLE {
                self.scan_logs();
                bail!(
                    "only {} of {} packages ran within {SETTLE:?}; host warnings and errors: {:#?}",
                    first.len(),
                    packages.len(),
                    self.oddities.samples
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Reads what the hosts logged since the last scan: oddities and
    /// `starting package` lines.
    fn scan_logs(&mut self) {
        for i in 0..NODES.len() {
            let Some(host) = &self.hosts[i] else { continue };
            let text = host.log_text();
            // Only whole lines: the host may be writing the last one.
            let whole = text.rfind('\n').map_or("", |end| &text[..end]);
            for line in whole.lines() {
                let line = line.trim_start_matches('\0');
                if !Oddities::relevant(line) || !self.scanned[i].insert(line.to_owned()) {
                    continue;
                }
                self.oddities.add(line);
                if let Some((at, package)) = launch_of(line) {
                    self.launches.push((i, at, package));
                }
            }
        }
    }

    /// Keeps host `i`'s log (see `keep_dir`), scans it, and takes the host
    /// out (to kill or drop it).
    fn take_host(&mut self, i: usize) -> Option<Host> {
        self.scan_logs();
        let host = self.hosts[i].take()?;
        keep_host_log(&self.label, i, &host);
        Some(host)
    }

    /// Peak number of packages between their `starting package` line (at or
    /// after `t0_ns`, on a node other than `not_on`) and their run line.
    fn peak_starting(&self, t0_ns: i128, runs: &[Entry], not_on: Option<usize>) -> usize {
        let mut edges: Vec<(i128, i32)> = Vec::new();
        for (node, at, package) in &self.launches {
            if *at < t0_ns || not_on == Some(*node) {
                continue;
            }
            if let Some(run) = runs
                .iter()
                .find(|r| &r.package == package && r.node == NODES[*node])
            {
                edges.push((*at, 1));
                edges.push((run.at * 1_000_000, -1));
            }
        }
        edges.sort();
        let (mut now, mut peak) = (0, 0);
        for (_, d) in edges {
            now += d;
            peak = peak.max(now);
        }
        peak as usize
    }

    /// First and last `starting package` (ms after `t0_ns`) on nodes other
    /// than `not_on`.
    fn launch_span(&self, t0_ns: i128, not_on: Option<usize>) -> Option<(f64, f64)> {
        let times: Vec<f64> = self
            .launches
            .iter()
            .filter(|(node, at, _)| *at >= t0_ns && not_on != Some(*node))
            .map(|(_, at, _)| (*at - t0_ns) as f64 / 1e6)
            .collect();
        let first = times.iter().copied().reduce(f64::min)?;
        let last = times.iter().copied().reduce(f64::max)?;
        Some((first, last))
    }

    fn flag(&self, i: usize) -> PathBuf {
        self.dirs[i].path().join("flag")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..NODES.len() {
            // Stopping a host leaves its guard armed; the guard and any
            // control script still running are killed below.
            drop(self.take_host(i));
        }
        keep_script_log(&self.label, self.log.path());
        for dir in &self.dirs {
            for (pid, _) in processes_matching(&dir.path().display().to_string()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// What one trial measured, in ms from the fault (or node1's spawn).
struct Trial {
    /// How many packages had to move (K unless a restore left some
    /// elsewhere).
    moved: usize,
    last: f64,
    first: f64,
    launch: Option<(f64, f64)>,
    peak: usize,
    /// Where the packages ran: node -> count.
    spread: BTreeMap<String, usize>,
}

fn summarize(t0_ms: i64, t0_ns: i128, c: &Cluster, runs: &[Entry], not_on: Option<usize>) -> Trial {
    let times: Vec<i64> = runs
        .iter()
        .map(|r| (r.at - i128::from(t0_ms)) as i64)
        .collect();
    let mut spread = BTreeMap::new();
    for r in runs {
        *spread.entry(r.node.clone()).or_insert(0) += 1;
    }
    Trial {
        moved: runs.len(),
        last: times.iter().copied().max().unwrap_or(0) as f64,
        first: times.iter().copied().min().unwrap_or(0) as f64,
        launch: c.launch_span(t0_ns, not_on),
        peak: c.peak_starting(t0_ns, runs, not_on),
        spread,
    }
}

fn cold_trial(k: usize, start_ms: u64, options: &Options) -> anyhow::Result<(Trial, Oddities)> {
    let mut c = Cluster::new(Case::Cold, k, start_ms, options.max_parallel)?;
    let t0_ms = now_ms();
    let t0_ns = now_ns();
    let mut first = c.dirs[0].spawn_host_as_with_env(NODES[0], HOST_ENV);
    c.dirs[0].wait_ready(&mut first);
    c.hosts[0] = Some(first);
    c.start(1);
    c.start(2);
    let all: BTreeSet<String> = (0..k).map(package_name).collect();
    let runs = c.wait_runs(0, &all, None)?;
    c.scan_logs();
    let trial = summarize(t0_ms, t0_ns, &c, &runs, None);
    c.settle()?;
    let oddities = std::mem::take(&mut c.oddities);
    Ok((trial, oddities))
}

/// The node running the most packages (the first such in list order) and
/// the packages on it.
fn owner_of(placement: &BTreeMap<String, usize>) -> (usize, BTreeSet<String>) {
    let owner = (0..NODES.len())
        .max_by_key(|n| {
            (
                placement.values().filter(|o| *o == n).count(),
                std::cmp::Reverse(*n),
            )
        })
        .unwrap_or(0);
    let on = placement
        .iter()
        .filter(|(_, o)| **o == owner)
        .map(|(p, _)| p.clone())
        .collect();
    (owner, on)
}

fn kill_trial(c: &mut Cluster) -> anyhow::Result<Trial> {
    let (owner, moving) = owner_of(&c.settle()?);
    let skip = c.entries().len();
    let host = c.hosts[owner].as_mut().context("owner host not running")?;
    let t0_ms = now_ms();
    let t0_ns = now_ns();
    host.kill();
    let runs = c.wait_runs(skip, &moving, Some(owner))?;
    c.scan_logs();
    let trial = summarize(t0_ms, t0_ns, c, &runs, Some(owner));
    // Its log is kept and scanned before the restart starts a fresh one.
    drop(c.take_host(owner));
    c.start(owner);
    Ok(trial)
}

fn fault_trial(c: &mut Cluster) -> anyhow::Result<Trial> {
    let (owner, moving) = owner_of(&c.settle()?);
    let skip = c.entries().len();
    let flag = c.flag(owner);
    let t0_ms = now_ms();
    let t0_ns = now_ns();
    std::fs::remove_file(&flag).with_context(|| format!("removing {}", flag.display()))?;
    let runs = c.wait_runs(skip, &moving, Some(owner))?;
    c.scan_logs();
    let trial = summarize(t0_ms, t0_ns, c, &runs, Some(owner));
    std::fs::write(&flag, "").with_context(|| format!("recreating {}", flag.display()))?;
    Ok(trial)
}

struct Row {
    case: Case,
    k: usize,
    start_ms: u64,
    trials: Vec<Trial>,
    oddities: Oddities,
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn sorted(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v
}

impl Row {
    fn median_last(&self) -> f64 {
        median(&sorted(self.trials.iter().map(|t| t.last)))
    }
}

fn run_row(case: Case, k: usize, start_ms: u64, options: &Options) -> anyhow::Result<Row> {
    let mut row = Row {
        case,
        k,
        start_ms,
        trials: Vec::new(),
        oddities: Oddities::default(),
    };
    let report = |i: usize, t: &Trial| {
        eprintln!(
            "{:<5} K={k:<3} S={start_ms:<4} trial {i}: {} moved, last {:.0} ms, first {:.0} ms, starting package {:?} ms, peak {} starting at once, ran on {:?}",
            case.name(),
            t.moved,
            t.last,
            t.first,
            t.launch.map(|(a, b)| (a.round(), b.round())),
            t.peak,
            t.spread
        );
    };
    if case == Case::Cold {
        for i in 0..options.trials {
            let (t, o) = cold_trial(k, start_ms, options)
                .with_context(|| format!("cold K={k} S={start_ms} trial {i}"))?;
            report(i, &t);
            merge(&mut row.oddities, o);
            row.trials.push(t);
        }
        return Ok(row);
    }
    let mut c = Cluster::new(case, k, start_ms, options.max_parallel)?;
    // As in a real cluster: node1 first, then the others once it answers.
    c.start(0);
    c.start(1);
    c.start(2);
    for i in 0..options.trials {
        let t = match case {
            Case::Kill => kill_trial(&mut c),
            _ => fault_trial(&mut c),
        }
        .with_context(|| format!("{} K={k} S={start_ms} trial {i}", case.name()))?;
        report(i, &t);
        row.trials.push(t);
    }
    c.settle()?;
    row.oddities = std::mem::take(&mut c.oddities);
    Ok(row)
}

fn merge(into: &mut Oddities, from: Oddities) {
    into.permit_waits += from.permit_waits;
    into.guard_fired += from.guard_fired;
    into.warnings += from.warnings;
    into.errors += from.errors;
    into.steps_us.extend(from.steps_us);
    for s in from.samples {
        if into.samples.len() < 8 {
            into.samples.push(s);
        }
    }
    into.notes.extend(from.notes);
}

/// The ideal figure of a row: TTL + S for a node kill, the K = 1 median of
/// the same case and S otherwise.
fn ideal(row: &Row, rows: &[Row]) -> Option<f64> {
    match row.case {
        Case::Kill => Some(LEASE_TTL_MS + row.start_ms as f64),
        _ => rows
            .iter()
            .find(|r| r.case == row.case && r.start_ms == row.start_ms && r.k == 1)
            .map(Row::median_last),
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<5} {:>3} {:>5} {:>4} {:>2} {:>8} {:>8} {:>8} {:>6} {:>7} {:>8} {:>8} {:>8} {:>4} {:>6} {:>5} {:>4} {:>4} {:>8} {:>8}",
        "case",
        "K",
        "moved",
        "S ms",
        "n",
        "med ms",
        "max ms",
        "ideal",
        "ratio",
        "ms/pkg",
        "1st run",
        "1st lch",
        "last lch",
        "peak",
        "permit",
        "guard",
        "warn",
        "err",
        "step us",
        "step max"
    );
    for row in rows {
        let last = sorted(row.trials.iter().map(|t| t.last));
        let med = median(&last);
        let max = last.last().copied().unwrap_or(f64::NAN);
        let first = median(&sorted(row.trials.iter().map(|t| t.first)));
        let launch_first = median(&sorted(
            row.trials.iter().filter_map(|t| t.launch.map(|l| l.0)),
        ));
        let launch_last = median(&sorted(
            row.trials.iter().filter_map(|t| t.launch.map(|l| l.1)),
        ));
        let peak = row.trials.iter().map(|t| t.peak).max().unwrap_or(0);
        let ideal = ideal(row, rows);
        let steps = sorted(row.oddities.steps_us.iter().copied());
        println!(
            "{:<5} {:>3} {:>5} {:>4} {:>2} {:>8.0} {:>8.0} {:>8} {:>6} {:>7.1} {:>8.0} {:>8.0} {:>8.0} {:>4} {:>6} {:>5} {:>4} {:>4} {:>8.0} {:>8.0}",
            row.case.name(),
            row.k,
            row.trials.iter().map(|t| t.moved).min().unwrap_or(0),
            row.start_ms,
            row.trials.len(),
            med,
            max,
            ideal.map_or("-".to_owned(), |i| format!("{i:.0}")),
            ideal.map_or("-".to_owned(), |i| format!("{:.2}", med / i)),
            med / row.k as f64,
            first,
            launch_first,
            launch_last,
            peak,
            row.oddities.permit_waits,
            row.oddities.guard_fired,
            row.oddities.warnings,
            row.oddities.errors,
            median(&steps),
            steps.last().copied().unwrap_or(f64::NAN),
        );
    }
    println!(
        "moved: fewest packages that had to move in a trial (K unless a restore left some elsewhere); med/max: to the last package's run line; ratio = med / ideal (kill: TTL + S; cold, fault: the K=1 median, same S);"
    );
    println!(
        "1st run: median to the first run line; 1st/last lch: median to the adoptive hosts' first/last `starting package` log line;"
    );
    println!(
        "peak: most packages between `starting package` and their run line at once; permit/guard/warn/err: host log lines in the row (restores included); guard: a guard halted its node's packages (expected after each kill, never otherwise);\nstep us/max: median and max of the hosts' manager steps in the row (restores included), from their `stepped` debug lines"
    );
    for row in rows {
        for s in row.oddities.notes.iter().chain(&row.oddities.samples) {
            println!("{} K={} S={}: {s}", row.case.name(), row.k, row.start_ms);
        }
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("the mass failover benchmark runs real hosts and their guards: run it as root");
    }
    require_tool("etcd", "etcd-server");
    let vigil = vigil_bench::artifact("vigil");
    vigil_bench::artifact("libvigil_example_file.so");
    println!(
        "mass_failover: K {:?}, S {:?} ms, {} trials per row, three nodes on one etcd (loopback), lease_ttl_seconds = 2, max_parallel_actions {}, {}",
        options.ks,
        options.start_ms,
        options.trials,
        options
            .max_parallel
            .map_or("default".to_owned(), |n| n.to_string()),
        vigil.display()
    );
    let load_before = load_average();
    let mut rows = Vec::new();
    let mut failed = None;
    'rows: for &case in &options.cases {
        for &start_ms in &options.start_ms {
            for &k in &options.ks {
                // A row that fails (or a wait of the harness that panics)
                // still leaves the table of the rows before it.
                let row = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_row(case, k, start_ms, &options)
                }));
                match row {
                    Ok(Ok(row)) => rows.push(row),
                    Ok(Err(e)) => {
                        failed = Some(e);
                        break 'rows;
                    }
                    Err(_) => {
                        failed = Some(anyhow::anyhow!(
                            "{} K={k} S={start_ms} panicked (message above)",
                            case.name()
                        ));
                        break 'rows;
                    }
                }
            }
        }
    }
    print_table(&rows);
    println!(
        "load average before / after: {load_before} / {} (shared machine: other builds may run)",
        load_average()
    );
    failed.map_or(Ok(()), Err)
}

/// `MASS_FAILOVER_KEEP=DIR`: where to keep the hosts' logs (every instance
/// of each, appended in order) and the script logs, per row.
fn keep_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("MASS_FAILOVER_KEEP")?);
    match std::fs::create_dir_all(&dir) {
        Ok(()) => Some(dir),
        Err(e) => {
            eprintln!("cannot create {}: {e}", dir.display());
            None
        }
    }
}

fn keep_host_log(label: &str, node: usize, host: &Host) {
    append_kept(&format!("{label}-{}.log", NODES[node]), &host.log_text());
}

fn keep_script_log(label: &str, log: &std::path::Path) {
    append_kept(
        &format!("{label}-scripts.log"),
        &std::fs::read_to_string(log).unwrap_or_default(),
    );
}

fn append_kept(file: &str, text: &str) {
    use std::io::Write;
    let Some(dir) = keep_dir() else {
        return;
    };
    let path = dir.join(file);
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = appended {
        eprintln!("cannot keep {}: {e}", path.display());
    }
}
