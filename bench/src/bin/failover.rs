//! Failover latency on a real two-node cluster: two real `vigil host`
//! processes (`node1`, `node2`) on a throwaway etcd on loopback, and a
//! failover package `app` (nodes `[node1, node2]`, manual failback) that
//! requires `/fs/data/status == up` on the node it runs on. Two cases, each
//! `--trials N` times (default 50), alternating the owner:
//!
//! * **resource fault**: the owner's `data` file system (a tmpfs of its own,
//!   watched by the bundled `fs` monitor, which is pushed the change through
//!   `POLLPRI` on `/proc/self/mountinfo`) is remounted read-only with
//!   `mount(2)`; timed from the realtime clock read just before that system
//!   call to the nanosecond timestamp the adoptive node's `run` script writes
//!   first thing. Then it is remounted read-write and the cluster settles
//!   with the package on the adoptive node, which owns it in the next trial.
//! * **node death**: the owner's `vigil host` gets SIGKILL; timed from just
//!   before the `kill(2)` to the adoptive node's `run` line. The killed host
//!   is restarted (its guard, still armed, has halted its copy meanwhile)
//!   and the cluster settles before the next trial.
//!
//! Each trial starts after a random pause of 0–1 s so that faults land at
//! random phases of the host's 1 s tick and of the lease keepalives. Every
//! trial is also checked: the package must start on the other node only
//! after it was halted on the owner, with a larger fence token.
//!
//! It deliberately measures nothing but these two paths, with trivial
//! control scripts: no services, no real application start time.
//!
//! `cargo build --release --workspace && target/release/failover` (as root;
//! needs `etcd` from the Debian package `etcd-server`).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use vigil_tests::cluster::{ScriptEntry as Entry, ScriptLog, Stamp, etcd_cluster_toml};
use vigil_tests::{ConfigDir, Etcd, Host, Mount, require_tool, wait_for};

const NODES: [&str; 2] = ["node1", "node2"];
const LEASE_TTL_MS: f64 = 2000.0;
const SETTLE: Duration = Duration::from_secs(30);
const RESOURCE: &str = "/fs/data/status";

struct Options {
    trials: usize,
    resource: bool,
    node: bool,
}

impl Options {
    fn parse() -> anyhow::Result<Self> {
        let mut options = Self {
            trials: 50,
            resource: true,
            node: true,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--trials" => {
                    let n = args.next().context("--trials needs a number")?;
                    options.trials = n.parse().with_context(|| format!("--trials {n}"))?;
                }
                "--only" => {
                    let case = args.next().context("--only needs resource or node")?;
                    match case.as_str() {
                        "resource" => options.node = false,
                        "node" => options.resource = false,
                        other => bail!("--only {other:?}: want resource or node"),
                    }
                }
                other => bail!(
                    "unknown argument {other:?}; usage: failover [--trials N] [--only resource|node]"
                ),
            }
        }
        if options.trials == 0 {
            bail!("--trials must be at least 1");
        }
        Ok(options)
    }
}

/// Nanoseconds since the epoch on the realtime clock, as `date +%s%N`.
fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// A small xorshift generator for the pauses between trials: no need for a
/// crate, only for phases that are not in step with the host's timers.
struct Pauses(u64);

impl Pauses {
    fn next(&mut self) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(self.0 % 1000)
    }
}

struct Cluster {
    // Declared first so they are dropped first: the hosts stop before their
    // config dirs (and with them the guards) and the mounts go away.
    hosts: [Option<Host>; 2],
    dirs: [ConfigDir; 2],
    mounts: [Mount; 2],
    /// Stamped in nanoseconds.
    log: ScriptLog,
    _etcd: Etcd,
}

impl Cluster {
    fn new() -> anyhow::Result<Self> {
        let etcd = Etcd::start();
        let log = ScriptLog::new("vigil-failover-", Stamp::Nanos);
        let name = format!("failover{}", std::process::id());
        let mounts = NODES.map(|n| Mount::tmpfs(&format!("failover-{n}"), 1 << 20));
        let dirs = [0, 1].map(|i| {
            let cfg = ConfigDir::new();
            cfg.write(
                "cluster.toml",
                &etcd_cluster_toml(&name, &NODES, &etcd.endpoint, 2, ""),
            );
            // Usage is polled (rarely here); the mount state is pushed.
            cfg.monitor(
                "fs",
                &format!(
                    "name = \"fs\"\ntype = \"dylib\"\nplugin = \"vigil_fs\"\ninterval_seconds = 10\ntimeout_seconds = 2\n[params.mounts]\ndata = \"{}\"\n",
                    mounts[i].path_str()
                ),
            );
            log.write_scripts(&cfg, "");
            cfg.write(
                "packages.d/app.toml",
                &format!(
                    "name = \"app\"\ntype = \"failover\"\nnodes = [\"node1\", \"node2\"]\nrun = [\"pkg/run.sh\"]\nhalt = [\"pkg/halt.sh\"]\n\n[[resource]]\nname = \"{RESOURCE}\"\nup = \"== up\"\n"
                ),
            );
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
            hosts: [None, None],
            dirs,
            mounts,
            log,
            _etcd: etcd,
        })
    }

    fn start(&mut self, i: usize) {
        self.hosts[i] = Some(self.dirs[i].start_host_as(NODES[i]));
    }

    fn status(&self, i: usize) -> Result<serde_json::Value, String> {
        self.dirs[i].status_json()
    }

    /// Waits until both nodes see both nodes up, `app` up on `owner` only,
    /// and their own `data` file system up; then a little longer, so that
    /// nothing the last trial set off is still under way.
    fn settle(&self, owner: usize) {
        wait_for(
            SETTLE,
            &format!("app up on {} with both nodes ready", NODES[owner]),
            || {
                for (i, node) in NODES.iter().enumerate() {
                    let s = self.status(i)?;
                    let nodes_up = s["nodes"]
                        .as_array()
                        .is_some_and(|ns| ns.iter().filter(|n| n["state"] == "up").count() == 2);
                    let app = s["packages"]
                        .as_array()
                        .and_then(|ps| ps.iter().find(|p| p["name"] == "app"))
                        .ok_or_else(|| format!("no app in {s}"))?;
                    let resource_up = app["resources"].as_array().is_some_and(|rs| {
                        rs.iter()
                            .any(|r| r["name"] == RESOURCE && r["state"] == "up")
                    });
                    let placed = app["state"] == "up"
                        && app["running_on"] == serde_json::json!([NODES[owner]]);
                    if !(nodes_up && resource_up && placed) {
                        return Err(format!("seen from {node}: {s}"));
                    }
                }
                Ok(())
            },
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    fn entries(&self) -> Vec<Entry> {
        self.log.entries()
    }

    /// Waits for the first `run` on `node` among the entries after `skip`;
    /// returns the new entries up to and including it.
    fn wait_run(&self, skip: usize, node: &str) -> Vec<Entry> {
        let start = Instant::now();
        loop {
            let new: Vec<Entry> = self.entries().into_iter().skip(skip).collect();
            if let Some(pos) = new.iter().position(|e| e.op == "run" && e.node == node) {
                return new[..=pos].to_vec();
            }
            assert!(
                start.elapsed() < SETTLE,
                "no run of app on {node} within {SETTLE:?}; new script lines: {new:#?}; host logs:\n{}",
                self.host_logs()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn host_logs(&self) -> String {
        self.hosts
            .iter()
            .flatten()
            .map(|h| h.log_text())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }

    /// The first `starting package` line the adoptive host logged after `t0`.
    fn launch_logged(&self, node: usize, t0: i128) -> Option<i128> {
        let text = self.hosts[node].as_ref()?.log_text();
        text.lines()
            .filter(|l| l.contains("starting package"))
            .filter_map(|l| {
                let stamp = l.split_whitespace().next()?;
                time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
                    .ok()
                    .map(|t| t.unix_timestamp_nanos())
            })
            .find(|&at| at >= t0)
    }
}

/// What one trial measured, in ms from the fault.
struct Trial {
    total: f64,
    /// The owner's halt line (resource fault: the host's halt; node death:
    /// the guard's).
    halt: Option<f64>,
    /// The adoptive host's `starting package` log line.
    launch: Option<f64>,
}

fn ms(from: i128, to: i128) -> f64 {
    (to - from) as f64 / 1e6
}

/// The adoptive node's run came after the owner's halt, with a larger
/// fence token; returns the owner's halt entry.
fn check_handover(new: &[Entry], owner: &str, before: Option<u64>) -> anyhow::Result<Entry> {
    let run = new.last().context("no entries")?;
    let halt = new
        .iter()
        .find(|e| e.op == "halt" && e.node == owner)
        .with_context(|| {
            format!(
                "app started on {} but was not halted on {owner}: {new:#?}",
                run.node
            )
        })?;
    if halt.at > run.at {
        bail!(
            "app started on {} before it was halted on {owner}: {new:#?}",
            run.node
        );
    }
    if before.is_some_and(|b| run.token <= b) {
        bail!("fence token did not grow: {new:#?}");
    }
    Ok(halt.clone())
}

fn resource_fault(c: &mut Cluster, owner: usize, pause: Duration) -> anyhow::Result<Trial> {
    let adoptive = 1 - owner;
    std::thread::sleep(pause);
    let skip = c.entries().len();
    let token = c.entries().last().map(|e| e.token);
    let t0 = now_ns();
    c.mounts[owner].remount_read_only(true);
    let new = c.wait_run(skip, NODES[adoptive]);
    let run = new.last().context("no run")?.clone();
    let halt = check_handover(&new, NODES[owner], token)?;
    let launch = c.launch_logged(adoptive, t0);
    c.mounts[owner].remount_read_only(false);
    c.settle(adoptive);
    Ok(Trial {
        total: ms(t0, run.at),
        halt: Some(ms(t0, halt.at)),
        launch: launch.map(|l| ms(t0, l)),
    })
}

fn node_death(c: &mut Cluster, owner: usize, pause: Duration) -> anyhow::Result<Trial> {
    let adoptive = 1 - owner;
    std::thread::sleep(pause);
    let skip = c.entries().len();
    let token = c.entries().last().map(|e| e.token);
    let mut host = c.hosts[owner].take().context("owner host not running")?;
    let t0 = now_ns();
    host.kill();
    let new = c.wait_run(skip, NODES[adoptive]);
    let run = new.last().context("no run")?.clone();
    let halt = check_handover(&new, NODES[owner], token)?;
    if halt.reason != "guard_expired" {
        bail!(
            "the dead node's copy was halted with reason {} (want guard_expired)",
            halt.reason
        );
    }
    let launch = c.launch_logged(adoptive, t0);
    // The restarted host starts a fresh log.
    keep_host_log(owner, &host);
    drop(host);
    c.start(owner);
    c.settle(adoptive);
    Ok(Trial {
        total: ms(t0, run.at),
        halt: Some(ms(t0, halt.at)),
        launch: launch.map(|l| ms(t0, l)),
    })
}

/// Nearest-rank percentile of sorted values (p99 of 50 samples is the max).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Row {
    case: &'static str,
    step: &'static str,
    values: Vec<f64>,
    /// (p50 target, p99 target) in ms, when this row is judged.
    targets: Option<(Option<f64>, f64)>,
}

fn rows(
    case: &'static str,
    trials: &[Trial],
    halt: &'static str,
    targets: (Option<f64>, f64),
) -> Vec<Row> {
    vec![
        Row {
            case,
            step: halt,
            values: trials.iter().filter_map(|t| t.halt).collect(),
            targets: None,
        },
        Row {
            case,
            step: "adoptive host launches",
            values: trials.iter().filter_map(|t| t.launch).collect(),
            targets: None,
        },
        Row {
            case,
            step: "adoptive run script (end)",
            values: trials.iter().map(|t| t.total).collect(),
            targets: Some(targets),
        },
    ]
}

fn print_table(rows: &mut [Row]) {
    println!();
    println!(
        "{:<15} {:<28} {:>3} {:>9} {:>9} {:>9} {:>9} {:>9}  verdict",
        "case", "from the fault to", "n", "p50 ms", "p99 ms", "max ms", "p50 tgt", "p99 tgt"
    );
    for row in rows.iter_mut() {
        row.values.sort_by(f64::total_cmp);
        let v = &row.values;
        let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
        let max = v.last().copied().unwrap_or(f64::NAN);
        let (t50, t99, verdict) = match row.targets {
            Some((t50, t99)) => {
                let ok = t50.is_none_or(|t| p50 < t) && p99 < t99;
                (
                    t50.map_or("-".to_owned(), |t| format!("< {t:.0}")),
                    format!("< {t99:.0}"),
                    if ok { "meets" } else { "MISSES" },
                )
            }
            None => ("-".to_owned(), "-".to_owned(), "-"),
        };
        println!(
            "{:<15} {:<28} {:>3} {:>9.1} {:>9.1} {:>9.1} {:>9} {:>9}  {verdict}",
            row.case,
            row.step,
            v.len(),
            p50,
            p99,
            max,
            t50,
            t99
        );
    }
    if let Some(end) = rows.last().filter(|r| r.case == "node death") {
        println!(
            "node death: lease_ttl_seconds = 2; end p50 = {:.2} x TTL, p99 = {:.2} x TTL",
            percentile(&end.values, 0.5) / LEASE_TTL_MS,
            percentile(&end.values, 0.99) / LEASE_TTL_MS,
        );
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn owner_now(c: &Cluster) -> anyhow::Result<usize> {
    let s = c.status(0).map_err(anyhow::Error::msg)?;
    let app = s["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "app"))
        .with_context(|| format!("no app in {s}"))?;
    NODES
        .iter()
        .position(|n| app["running_on"] == serde_json::json!([n]))
        .with_context(|| format!("app runs on no single node: {app}"))
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("the failover benchmark mounts file systems: run it as root");
    }
    require_tool("etcd", "etcd-server");
    let vigil = vigil_bench::artifact("vigil");
    vigil_bench::artifact("libvigil_fs.so");
    println!(
        "failover: {} trials per case, two nodes on one etcd (loopback), {}",
        options.trials,
        vigil.display()
    );
    let mut c = Cluster::new()?;
    c.start(0);
    c.start(1);
    c.settle(0);
    let mut pauses = Pauses(now_ns() as u64 | 1);
    let load_before = load_average();

    let mut table = Vec::new();
    if options.resource {
        let mut faults = Vec::new();
        for i in 0..options.trials {
            let owner = owner_now(&c)?;
            let t = resource_fault(&mut c, owner, pauses.next())
                .with_context(|| format!("resource fault trial {i}"))?;
            eprintln!(
                "resource fault {i:>3}: {} -> {}: {:.1} ms",
                NODES[owner],
                NODES[1 - owner],
                t.total
            );
            faults.push(t);
        }
        table.extend(rows(
            "resource fault",
            &faults,
            "owner's halt script",
            (Some(50.0), 150.0),
        ));
    }
    if options.node {
        let mut deaths = Vec::new();
        for i in 0..options.trials {
            let owner = owner_now(&c)?;
            let t = node_death(&mut c, owner, pauses.next())
                .with_context(|| format!("node death trial {i}"))?;
            eprintln!(
                "node death     {i:>3}: {} -> {}: {:.1} ms",
                NODES[owner],
                NODES[1 - owner],
                t.total
            );
            deaths.push(t);
        }
        table.extend(rows(
            "node death",
            &deaths,
            "dead node's guard halts",
            (None, LEASE_TTL_MS + 200.0),
        ));
    }
    print_table(&mut table);
    println!(
        "load average before / after: {load_before} / {} (shared machine: other builds may run)",
        load_average()
    );
    println!(
        "times: realtime clock read just before the fault's system call -> `date +%s%N` in the script (or the host's log stamp)"
    );
    keep_logs(&c);
    Ok(())
}

/// `FAILOVER_BENCH_KEEP=DIR`: where to keep the hosts' logs (every
/// instance of each, appended in order), the guards' logs and the script log.
fn keep_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("FAILOVER_BENCH_KEEP")?);
    match std::fs::create_dir_all(&dir) {
        Ok(()) => Some(dir),
        Err(e) => {
            eprintln!("cannot create {}: {e}", dir.display());
            None
        }
    }
}

/// Appends one host instance's log to `<keep>/<node>.log`: a restarted
/// host starts a fresh log file.
fn keep_host_log(node: usize, host: &Host) {
    use std::io::Write;
    let Some(dir) = keep_dir() else {
        return;
    };
    let path = dir.join(format!("{}.log", NODES[node]));
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(host.log_text().as_bytes()));
    if let Err(e) = appended {
        eprintln!("cannot keep {}: {e}", path.display());
    }
}

fn keep_logs(c: &Cluster) {
    let Some(dir) = keep_dir() else {
        return;
    };
    for (i, host) in c.hosts.iter().enumerate() {
        if let Some(h) = host {
            keep_host_log(i, h);
        }
        let _ = std::fs::copy(
            c.dirs[i].path().join("run").join("guard.log"),
            dir.join(format!("{}-guard.log", NODES[i])),
        );
    }
    let _ = std::fs::copy(c.log.path(), dir.join("scripts.log"));
}
