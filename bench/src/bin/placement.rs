//! Placement benchmark: vigil's placement engine against Pacemaker's
//! scheduler (`crm_simulate`) on the same synthetic clusters, in one run.
//!
//! For each size it times a full placement (nothing running) and the
//! re-placement after the busiest node fails (steady state, everything
//! running where the first plan put it), writes the equivalent Pacemaker CIBs,
//! runs `crm_simulate -R` on them (offline, no daemons), reads the placement
//! out of the transition graph and counts the packages both put on the same
//! node. It does not benchmark multi-node packages, avoid/follow or
//! resource changes: Pacemaker has no direct equivalent the synthetic
//! clusters could be mapped onto.
//!
//! Without `crm_simulate` (or with `--vigil-only`) it times vigil's side
//! alone and says so.
//!
//! `cargo build --release -p vigil-bench && target/release/placement [--vigil-only] [NODES/PACKAGES ...]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vigil_host::placement::{self, ClusterSnapshot, DependencyLocation, FailoverPolicy, Plan};

/// Counts live heap bytes and, while [`TRACKING`] is set, their peak: the
/// memory figure for vigil is the heap a `plan()` call needs on top of its
/// input, which a process-wide VmHWM (CIB strings, graphs) would drown.
struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static TRACKING: AtomicBool = AtomicBool::new(false);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counters are plain atomics and never allocate.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            if TRACKING.load(Ordering::Relaxed) {
                PEAK.fetch_max(live, Ordering::Relaxed);
            }
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            let live = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            if TRACKING.load(Ordering::Relaxed) {
                PEAK.fetch_max(live, Ordering::Relaxed);
            }
        }
        new
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const SEED: u64 = 42;
const REPEATS: usize = 9;
const DEFAULT_SIZES: [(usize, usize); 3] = [(10, 100), (50, 1_000), (100, 5_000)];

/// Location scores. `configured_node` lists become 3/2/1 in list order;
/// `min_package_node` lists score 0 everywhere, so Pacemaker's tie-break
/// (fewest assigned resources, then node name) picks the node.
const SCORE_FIRST: i64 = 3;
/// Stays on its node over any location preference: manual failback.
const STICKINESS: i64 = 100;
/// A different_node dependency. Finite on purpose: Pacemaker merges a
/// dependent's node scores into a primary that is not running yet, scaled by
/// score/INFINITY; at -1000 that is at most 0.001 × (3 + 100), which rounds
/// to 0, while -1000 still outweighs every positive score, so the primary's
/// node stays forbidden to the dependent.
const ANTI_COLOCATION: i64 = -1_000;

fn main() {
    let vigil_only = std::env::args().any(|a| a == "--vigil-only");
    let sizes = parse_sizes();
    let crm = if vigil_only {
        None
    } else {
        find_crm_simulate()
    };
    let Some(crm) = crm else {
        println!(
            "placement benchmark: vigil_host::placement only (no crm_simulate), seed {SEED}, vigil repeated {REPEATS}×"
        );
        for (nodes, packages) in sizes {
            run_vigil(nodes, packages);
        }
        return;
    };
    let version = Command::new(&crm)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    // PLACEMENT_BENCH_KEEP=DIR keeps the CIBs and graphs there for a look.
    let temp = tempfile::tempdir().expect("temporary directory");
    let dir = std::env::var_os("PLACEMENT_BENCH_KEEP")
        .map_or_else(|| temp.path().to_owned(), PathBuf::from);
    std::fs::create_dir_all(&dir).expect("benchmark directory");
    println!(
        "placement benchmark: vigil_host::placement vs {} ({version}), seed {SEED}, vigil repeated {REPEATS}×",
        crm.display()
    );
    let mut rows = Vec::new();
    for (nodes, packages) in sizes {
        rows.push(run_size(nodes, packages, &crm, &dir));
    }
    print_table(&rows);
    println!(
        "benchmark process VmHWM {:.1} MiB (snapshots, CIB text, graphs and all runs)",
        vigil_bench::vm_mib(std::process::id(), "VmHWM")
    );
}

fn parse_sizes() -> Vec<(usize, usize)> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--vigil-only")
        .collect();
    if args.is_empty() {
        return DEFAULT_SIZES.to_vec();
    }
    args.iter()
        .map(|a| {
            let parsed = a
                .split_once('/')
                .and_then(|(n, p)| Some((n.parse().ok()?, p.replace(',', "").parse().ok()?)));
            match parsed {
                Some((n, p)) if n > 0 && p > 0 => (n, p),
                _ => panic!("size {a:?}: expected NODES/PACKAGES, e.g. 100/5000"),
            }
        })
        .collect()
}

/// `crm_simulate` on PATH (or in /usr/sbin), or `None` after saying how to
/// get it.
fn find_crm_simulate() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join("crm_simulate"))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!(
            "note: crm_simulate not found on PATH or in /usr/sbin, timing vigil only; it is \
             Pacemaker's offline scheduler simulator, in Debian's `pacemaker-cli-utils` package \
             (apt-get install pacemaker-cli-utils)"
        );
    }
    found
}

struct Row {
    nodes: usize,
    packages: usize,
    vigil_full: Timing,
    vigil_failover: Timing,
    vigil_heap_mib: f64,
    failed_node: String,
    moved: usize,
    crm_full: CrmRun,
    crm_failover: CrmRun,
    agree_full: Agreement,
    agree_failover: Agreement,
}

struct Timing {
    median: Duration,
    min: Duration,
    max: Duration,
}

fn time_plan(snapshot: &ClusterSnapshot) -> (Timing, Plan) {
    let mut times = Vec::with_capacity(REPEATS);
    let mut plan = None;
    for _ in 0..REPEATS {
        let start = Instant::now();
        let p = placement::plan(snapshot);
        times.push(start.elapsed());
        plan = Some(p);
    }
    times.sort();
    let timing = Timing {
        median: times[times.len() / 2],
        min: times[0],
        max: times[times.len() - 1],
    };
    // REPEATS > 0, so the loop ran.
    (timing, plan.expect("at least one run"))
}

/// Peak heap bytes one `plan()` allocates on top of what was live before.
fn plan_heap_peak(snapshot: &ClusterSnapshot) -> usize {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    TRACKING.store(true, Ordering::Relaxed);
    let plan = placement::plan(snapshot);
    TRACKING.store(false, Ordering::Relaxed);
    let peak = PEAK.load(Ordering::Relaxed);
    drop(plan);
    peak.saturating_sub(before)
}

/// vigil's half of one size: the same snapshots, timings and heap figures
/// as in [`run_size`], without Pacemaker.
fn run_vigil(nodes: usize, packages: usize) {
    println!("\n== {nodes} nodes / {packages} packages");
    let snapshot = bench_snapshot(nodes, packages);
    let (full, full_plan) = time_plan(&snapshot);
    let heap_full = plan_heap_peak(&snapshot);
    let failed_node = busiest_node(&full_plan);
    let failed = failed_snapshot(&snapshot, &full_plan, &failed_node);
    let (fail, failover_plan) = time_plan(&failed);
    let heap_failover = plan_heap_peak(&failed);
    let moved = full_plan
        .placement
        .iter()
        .filter(|(p, on)| failover_plan.placement.get(*p) != Some(*on))
        .count();
    println!(
        "vigil: full {:.2} ms (min {:.2}, max {:.2}), {failed_node} fails: {:.2} ms (min {:.2}, max {:.2}), {moved} packages move; plan heap peak {:.1} / {:.1} MiB",
        ms(full.median),
        ms(full.min),
        ms(full.max),
        ms(fail.median),
        ms(fail.min),
        ms(fail.max),
        mib(heap_full),
        mib(heap_failover),
    );
}

/// The synthetic cluster of one size, `min_package_node` lists sorted by
/// name.
fn bench_snapshot(nodes: usize, packages: usize) -> ClusterSnapshot {
    let mut snapshot = placement::synthetic_cluster(nodes, packages, SEED);
    // vigil breaks min_package_node ties by list order, Pacemaker by node
    // name: sorting those lists by name makes the two tie-breaks one and
    // changes nothing else (their order matters for nothing but ties).
    for spec in &mut snapshot.packages {
        if spec.failover_policy == FailoverPolicy::MinPackageNode {
            spec.nodes.sort();
        }
    }
    snapshot
}

/// Steady state (everything runs where `full_plan` put it), then
/// `failed_node` fails.
fn failed_snapshot(
    snapshot: &ClusterSnapshot,
    full_plan: &Plan,
    failed_node: &str,
) -> ClusterSnapshot {
    let mut failed = snapshot.clone();
    for (pkg, on) in &full_plan.placement {
        failed.state_mut(pkg).running_on = on.clone();
    }
    failed.set_node_up(failed_node, false);
    failed
}

fn run_size(nodes: usize, packages: usize, crm: &Path, dir: &Path) -> Row {
    println!("\n== {nodes} nodes / {packages} packages");
    let snapshot = bench_snapshot(nodes, packages);

    let (vigil_full, full_plan) = time_plan(&snapshot);
    let heap_full = plan_heap_peak(&snapshot);

    let failed_node = busiest_node(&full_plan);
    let failed = failed_snapshot(&snapshot, &full_plan, &failed_node);
    let (vigil_failover, failover_plan) = time_plan(&failed);
    let heap_failover = plan_heap_peak(&failed);
    let moved = full_plan
        .placement
        .iter()
        .filter(|(p, on)| failover_plan.placement.get(*p) != Some(*on))
        .count();
    println!(
        "vigil: full {:.2} ms (min {:.2}, max {:.2}), {failed_node} fails: {:.2} ms (min {:.2}, max {:.2}), {moved} packages move; plan heap peak {:.1} / {:.1} MiB",
        ms(vigil_full.median),
        ms(vigil_full.min),
        ms(vigil_full.max),
        ms(vigil_failover.median),
        ms(vigil_failover.min),
        ms(vigil_failover.max),
        mib(heap_full),
        mib(heap_failover),
    );

    let ranks = placement_ranks(&snapshot);
    let full_cib = dir.join(format!("full-{nodes}-{packages}.xml"));
    std::fs::write(&full_cib, cib(&snapshot, &ranks, None)).expect("write full CIB");
    let steady_cib = dir.join(format!("steady-{nodes}-{packages}.xml"));
    std::fs::write(
        &steady_cib,
        cib(
            &snapshot,
            &ranks,
            Some((&full_plan.placement, &failed_node)),
        ),
    )
    .expect("write steady-state CIB");

    let crm_full = run_crm(
        crm,
        &full_cib,
        &[],
        dir,
        &format!("full-{nodes}-{packages}"),
    );
    let crm_placement = apply_graph(&BTreeMap::new(), None, &crm_full.graph);
    let agree_full = compare(&full_plan.placement, &crm_placement, "full placement");
    println!(
        "crm_simulate full: {:.2} s, maxrss {:.0} MiB; agreement {}/{}",
        crm_full.wall.as_secs_f64(),
        crm_full.maxrss_mib,
        agree_full.same,
        agree_full.same + agree_full.differ
    );

    let crm_failover = run_crm(
        crm,
        &steady_cib,
        &["--node-fail", &failed_node],
        dir,
        &format!("failover-{nodes}-{packages}"),
    );
    let crm_after = apply_graph(
        &full_plan.placement,
        Some(&failed_node),
        &crm_failover.graph,
    );
    let agree_failover = compare(&failover_plan.placement, &crm_after, "after node failure");
    println!(
        "crm_simulate {failed_node} fails: {:.2} s, maxrss {:.0} MiB; agreement {}/{}",
        crm_failover.wall.as_secs_f64(),
        crm_failover.maxrss_mib,
        agree_failover.same,
        agree_failover.same + agree_failover.differ
    );

    Row {
        nodes,
        packages,
        vigil_full,
        vigil_failover,
        vigil_heap_mib: mib(heap_full.max(heap_failover)),
        failed_node,
        moved,
        crm_full,
        crm_failover,
        agree_full,
        agree_failover,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The node running the most packages (first by name on a tie).
fn busiest_node(plan: &Plan) -> String {
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    for on in plan.placement.values() {
        for n in on {
            *load.entry(n).or_default() += 1;
        }
    }
    let max = load.values().copied().max().unwrap_or(0);
    load.into_iter()
        .find(|&(_, l)| l == max)
        .map(|(n, _)| n.to_owned())
        .expect("the first plan places at least one package")
}

/// vigil's placement order (priority, lower first, none last; then name)
/// as a rank per package. The synthetic clusters give a predecessor the
/// priority of its dependent and a smaller name, so this is also the
/// engine's topological order; checked here rather than assumed.
fn placement_ranks(snapshot: &ClusterSnapshot) -> BTreeMap<String, usize> {
    let mut order: Vec<(u64, &str)> = snapshot
        .packages
        .iter()
        .map(|p| (p.priority.map_or(u64::MAX, u64::from), p.name.as_str()))
        .collect();
    order.sort();
    let ranks: BTreeMap<String, usize> = order
        .iter()
        .enumerate()
        .map(|(i, (_, n))| ((*n).to_owned(), i))
        .collect();
    for p in &snapshot.packages {
        for d in &p.dependencies {
            assert!(
                ranks[&d.package] < ranks[&p.name],
                "{} depends on {} but comes first in (priority, name) order",
                p.name,
                d.package
            );
        }
    }
    ranks
}

/// The Pacemaker CIB equivalent to `snapshot`; with `steady` (placement,
/// node about to fail), a status section in which every package runs where
/// the placement says (start recorded, probes on the other nodes of its list
/// found it stopped).
///
/// The model: an opt-in cluster (`symmetric-cluster=false`) with one
/// `ocf:pacemaker:Dummy` per package, allowed only on its list via location
/// constraints with `resource-discovery="exclusive"` (probing every resource
/// on every node makes crm_simulate take minutes at 100 nodes); a unique
/// resource `priority` per package that makes Pacemaker assign resources in
/// vigil's placement order; `resource-stickiness` for manual failback;
/// same_node dependencies as INFINITY colocations (the dependent's own
/// scores are flat, its node is forced), different_node ones as
/// [`ANTI_COLOCATION`]. `influence="false"` keeps a running primary from
/// being pulled by its dependents, as in vigil, where a predecessor ignores
/// them.
fn cib(
    snapshot: &ClusterSnapshot,
    ranks: &BTreeMap<String, usize>,
    steady: Option<(&BTreeMap<String, Vec<String>>, &str)>,
) -> String {
    let running = steady.map(|(r, _)| r);
    let node_id: BTreeMap<&str, usize> = snapshot
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i + 1))
        .collect();
    let total = snapshot.packages.len();

    let mut x = String::with_capacity(512 * total + 4096);
    x.push_str(
        r#"<cib crm_feature_set="3.16.1" validate-with="pacemaker-3.8" epoch="1" num_updates="0" admin_epoch="0" have-quorum="1" dc-uuid="1">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
        <nvpair id="opt-stonith" name="stonith-enabled" value="false"/>
        <nvpair id="opt-symmetric" name="symmetric-cluster" value="false"/>
        <nvpair id="opt-quorum" name="no-quorum-policy" value="ignore"/>
        <nvpair id="opt-placement" name="placement-strategy" value="default"/>
      </cluster_property_set>
    </crm_config>
    <nodes>
"#,
    );
    for n in &snapshot.nodes {
        let _ = writeln!(
            x,
            r#"      <node id="{}" uname="{}"/>"#,
            node_id[n.name.as_str()],
            n.name
        );
    }
    x.push_str("    </nodes>\n    <resources>\n");
    for p in &snapshot.packages {
        // Pacemaker assigns by descending priority, and both count a
        // package on a node only once it is assigned in this run. After a
        // node failure vigil places, at equal priority, the packages that
        // keep their node before those of the failed node; assigning
        // everything that stays first (each group in vigil's order) matches
        // that exactly when the priorities are equal. (With the synthetic
        // clusters' few priorities the orders can differ: a more important
        // package of the failed node is placed by vigil before a less
        // important one that stays.)
        let on_failed = steady.is_some_and(|(placement, failed)| {
            placement
                .get(&p.name)
                .is_some_and(|on| on.iter().any(|n| n == failed))
        });
        let priority = if steady.is_some() && !on_failed {
            2 * total - ranks[&p.name]
        } else {
            total - ranks[&p.name]
        };
        let _ = writeln!(
            x,
            r#"      <primitive id="{0}" class="ocf" provider="pacemaker" type="Dummy">
        <meta_attributes id="{0}-meta"><nvpair id="{0}-priority" name="priority" value="{1}"/></meta_attributes>
      </primitive>"#,
            p.name, priority
        );
    }
    x.push_str("    </resources>\n    <constraints>\n");
    let scores = location_scores(snapshot, steady);
    for p in &snapshot.packages {
        for n in &p.nodes {
            let score = scores[&(p.name.as_str(), n.as_str())];
            let _ = writeln!(
                x,
                r#"      <rsc_location id="loc-{0}-{1}" rsc="{0}" node="{1}" score="{score}" resource-discovery="exclusive"/>"#,
                p.name, n
            );
        }
        for d in &p.dependencies {
            let score = match d.location {
                DependencyLocation::SameNode => "INFINITY".to_owned(),
                DependencyLocation::DifferentNode => ANTI_COLOCATION.to_string(),
                other => panic!("{}: no Pacemaker mapping for {other:?}", p.name),
            };
            let _ = writeln!(
                x,
                r#"      <rsc_colocation id="col-{0}-{1}" rsc="{0}" with-rsc="{1}" score="{score}" influence="false"/>"#,
                p.name, d.package
            );
        }
    }
    let _ = write!(
        x,
        r#"    </constraints>
    <rsc_defaults>
      <meta_attributes id="rsc-options">
        <nvpair id="rsc-stickiness" name="resource-stickiness" value="{STICKINESS}"/>
      </meta_attributes>
    </rsc_defaults>
  </configuration>
  <status>
"#
    );

    // Per node: (package, running there) for every package listing it.
    let mut history: BTreeMap<&str, Vec<(&str, bool)>> = BTreeMap::new();
    if let Some(running) = running {
        for p in &snapshot.packages {
            let on = running.get(&p.name).and_then(|v| v.first());
            for n in &p.nodes {
                history
                    .entry(n.as_str())
                    .or_default()
                    .push((p.name.as_str(), on == Some(n)));
            }
        }
    }
    const UUID: &str = "00000000-0000-4000-8000-000000000000";
    // Pacemaker's digest of an empty parameter set: the MD5 of
    // " <parameters/>\n", its digest serialisation. Without a matching
    // op-digest the scheduler restarts every resource ("parameters changed").
    const EMPTY_PARAMS_DIGEST: &str = "f2317cad3d54cec5d7d7aa7d0bf35cf8";
    let mut call_id = 0u64;
    for n in &snapshot.nodes {
        let id = node_id[n.name.as_str()];
        let _ = writeln!(
            x,
            r#"    <node_state id="{id}" uname="{}" in_ccm="true" crmd="online" crm-debug-origin="do_state_transition" join="member" expected="member">
      <lrm id="{id}">
        <lrm_resources>"#,
            n.name
        );
        for &(pkg, started) in history.get(n.name.as_str()).into_iter().flatten() {
            call_id += 1;
            let (op, key, rc) = if started {
                ("start", "start_0", 0)
            } else {
                ("monitor", "monitor_0", 7)
            };
            let _ = writeln!(
                x,
                r#"          <lrm_resource id="{pkg}" class="ocf" provider="pacemaker" type="Dummy">
            <lrm_rsc_op id="{pkg}_last_0" operation_key="{pkg}_{key}" operation="{op}" crm-debug-origin="build_active_RAs" crm_feature_set="3.16.1" transition-key="1:0:{rc}:{UUID}" transition-magic="0:{rc};1:0:{rc}:{UUID}" exit-reason="" on_node="{node}" call-id="{call_id}" rc-code="{rc}" op-status="0" interval="0" last-rc-change="1700000000" exec-time="1" queue-time="0" op-digest="{EMPTY_PARAMS_DIGEST}"/>
          </lrm_resource>"#,
                node = n.name
            );
        }
        x.push_str("        </lrm_resources>\n      </lrm>\n    </node_state>\n");
    }
    x.push_str("  </status>\n</cib>\n");
    x
}

/// Location score per (package, node of its list).
///
/// `configured_node` lists score 3/2/1 in list order; `min_package_node`
/// lists and same_node dependents (whose node is forced) score 0 everywhere,
/// so Pacemaker's next criterion, fewest assigned resources, decides.
///
/// Pacemaker always lets a dependent pull on a primary that is not running
/// yet (`influence` only covers running primaries): it adds
/// score/INFINITY × the dependent's score on each node to the primary's,
/// and rounds a nonzero result away from 0 to at least ±1. For a
/// different_node pair at [`ANTI_COLOCATION`] that is exactly -1 on every
/// node of the primary's list where the dependent's score (location plus
/// stickiness where it runs) is nonzero. vigil's predecessor ignores its
/// dependents, so the primary's score there gets +1 in advance: after the
/// nudge the primary sees its own preferences again.
fn location_scores<'s>(
    snapshot: &'s ClusterSnapshot,
    steady: Option<(&BTreeMap<String, Vec<String>>, &str)>,
) -> BTreeMap<(&'s str, &'s str), i64> {
    let mut scores = BTreeMap::new();
    for p in &snapshot.packages {
        let flat = p.failover_policy == FailoverPolicy::MinPackageNode
            || p.dependencies
                .iter()
                .any(|d| d.location == DependencyLocation::SameNode);
        for (i, n) in p.nodes.iter().enumerate() {
            let score = if flat { 0 } else { SCORE_FIRST - i as i64 };
            scores.insert((p.name.as_str(), n.as_str()), score);
        }
    }
    let runs_on = |pkg: &str| -> Option<&str> {
        steady.and_then(|(placement, _)| placement.get(pkg)?.first().map(String::as_str))
    };
    let mut nudges = Vec::new();
    for d in &snapshot.packages {
        for dep in &d.dependencies {
            if dep.location != DependencyLocation::DifferentNode {
                continue;
            }
            let primary = dep.package.as_str();
            // A primary still running on a live node is not pulled.
            let active = match (runs_on(primary), steady) {
                (Some(n), Some((_, failed))) => n != failed,
                _ => false,
            };
            if active {
                continue;
            }
            let Some(p) = snapshot.packages.iter().find(|p| p.name == primary) else {
                continue;
            };
            for n in &p.nodes {
                let Some(&own) = scores.get(&(d.name.as_str(), n.as_str())) else {
                    continue;
                };
                let sticky = if runs_on(&d.name) == Some(n.as_str()) {
                    STICKINESS
                } else {
                    0
                };
                let pull = own + sticky;
                // Only a pull that rounds to 0 becomes exactly -1.
                assert!(
                    (pull as f64 * ANTI_COLOCATION as f64 / 1e6).abs() < 0.5,
                    "scores too large for the -1 nudge model"
                );
                if pull != 0 {
                    nudges.push((p.name.as_str(), n.as_str()));
                }
            }
        }
    }
    for key in nudges {
        if let Some(s) = scores.get_mut(&key) {
            *s += 1;
        }
    }
    scores
}

struct CrmRun {
    wall: Duration,
    maxrss_mib: f64,
    graph: String,
}

/// Runs `crm_simulate -R -x CIB [extra] -G graph.xml`, measuring its wall
/// time and peak RSS (wait4's rusage of that one child, no extra tool).
fn run_crm(crm: &Path, cib: &Path, extra: &[&str], dir: &Path, label: &str) -> CrmRun {
    let graph = dir.join(format!("{label}-graph.xml"));
    let log = dir.join(format!("{label}-stderr.txt"));
    let stderr = std::fs::File::create(&log).expect("create crm_simulate log");
    let start = Instant::now();
    let child = Command::new(crm)
        .arg("--run")
        .arg("--xml-file")
        .arg(cib)
        .args(extra)
        .arg("--save-graph")
        .arg(&graph)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", crm.display()));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own unreaped child; status and usage point to live
    // locals. `child` is not waited on afterwards, so it is reaped once.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    assert_eq!(
        rc,
        pid,
        "wait4 crm_simulate: {}",
        std::io::Error::last_os_error()
    );
    drop(child);
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !ok {
        let err = std::fs::read_to_string(&log).unwrap_or_default();
        panic!(
            "crm_simulate on {} failed (wait status {status}):\n{}",
            cib.display(),
            err.lines().take(30).collect::<Vec<_>>().join("\n")
        );
    }
    let graph = std::fs::read_to_string(&graph)
        .unwrap_or_else(|e| panic!("read transition graph {}: {e}", graph.display()));
    CrmRun {
        wall,
        // ru_maxrss is in KiB on Linux.
        maxrss_mib: usage.ru_maxrss as f64 / 1024.0,
        graph,
    }
}

/// The placement after a transition: `before` minus what ran on the failed
/// node, minus stops, plus starts in `graph` (Pacemaker's transition graph,
/// one `<rsc_op operation=".." operation_key="RSC_OP_INTERVAL"
/// on_node="..">` per action).
fn apply_graph(
    before: &BTreeMap<String, Vec<String>>,
    failed: Option<&str>,
    graph: &str,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = before
        .iter()
        .map(|(p, on)| {
            let kept = on.iter().filter(|n| Some(n.as_str()) != failed).cloned();
            (p.clone(), kept.collect())
        })
        .collect();
    let mut rest = graph;
    while let Some(i) = rest.find("<rsc_op ") {
        rest = &rest[i + 8..];
        let tag = &rest[..rest.find('>').unwrap_or(rest.len())];
        let (Some(op), Some(key), Some(node)) = (
            attr(tag, "operation"),
            attr(tag, "operation_key"),
            attr(tag, "on_node"),
        ) else {
            continue;
        };
        let Some((rsc, _)) = key.split_once('_') else {
            continue;
        };
        let on = out.entry(rsc.to_owned()).or_default();
        match op {
            "start" if !on.iter().any(|n| n == node) => on.push(node.to_owned()),
            "stop" => on.retain(|n| n != node),
            _ => {}
        }
    }
    out
}

/// The value of `name="..."` in one XML start tag.
fn attr<'t>(tag: &'t str, name: &str) -> Option<&'t str> {
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

struct Agreement {
    same: usize,
    differ: usize,
}

fn compare(
    vigil: &BTreeMap<String, Vec<String>>,
    crm: &BTreeMap<String, Vec<String>>,
    what: &str,
) -> Agreement {
    let mut same = 0;
    let mut differ = Vec::new();
    for (pkg, on) in vigil {
        let theirs = crm.get(pkg).cloned().unwrap_or_default();
        if *on == theirs {
            same += 1;
        } else {
            differ.push((pkg, on.clone(), theirs));
        }
    }
    for (pkg, on) in crm {
        if !vigil.contains_key(pkg) && !on.is_empty() {
            differ.push((pkg, Vec::new(), on.clone()));
        }
    }
    for (pkg, ours, theirs) in differ.iter().take(10) {
        println!(
            "  disagreement ({what}): {pkg}: vigil {}, crm_simulate {}",
            show(ours),
            show(theirs)
        );
    }
    Agreement {
        same,
        differ: differ.len(),
    }
}

fn show(nodes: &[String]) -> String {
    if nodes.is_empty() {
        "nowhere".to_owned()
    } else {
        nodes.join(",")
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<12} {:>17} {:>17} {:>10} {:>10} {:>13} {:>16} {:>23}",
        "nodes/pkgs",
        "vigil full ms",
        "vigil fail ms",
        "crm full s",
        "crm fail s",
        "ratio",
        "MiB vigil, crm",
        "agree full, failover"
    );
    println!(
        "{:<12} {:>17} {:>17} {:>10} {:>10} {:>13} {:>16} {:>23}",
        "", "median (min)", "median (min)", "", "", "full / fail", "full / fail", ""
    );
    for r in rows {
        let ratio_full = r.crm_full.wall.as_secs_f64() / r.vigil_full.median.as_secs_f64();
        let ratio_fail = r.crm_failover.wall.as_secs_f64() / r.vigil_failover.median.as_secs_f64();
        println!(
            "{:<12} {:>17} {:>17} {:>10.2} {:>10.2} {:>13} {:>16} {:>23}",
            format!("{}/{}", r.nodes, r.packages),
            format!(
                "{:.2} ({:.2})",
                ms(r.vigil_full.median),
                ms(r.vigil_full.min)
            ),
            format!(
                "{:.2} ({:.2})",
                ms(r.vigil_failover.median),
                ms(r.vigil_failover.min)
            ),
            r.crm_full.wall.as_secs_f64(),
            r.crm_failover.wall.as_secs_f64(),
            format!("{ratio_full:.0}× / {ratio_fail:.0}×"),
            format!(
                "{:.1}, {:.0} / {:.0}",
                r.vigil_heap_mib, r.crm_full.maxrss_mib, r.crm_failover.maxrss_mib
            ),
            format!(
                "{}/{}, {}/{}",
                r.agree_full.same,
                r.agree_full.same + r.agree_full.differ,
                r.agree_failover.same,
                r.agree_failover.same + r.agree_failover.differ
            ),
        );
    }
    println!(
        "vigil: median (min) of {REPEATS} plan() calls, MiB = peak heap one plan() allocates on top \
         of its input; crm_simulate: one `--run`, wall time, MiB = its maxrss (wait4)"
    );
    for r in rows {
        println!(
            "{}/{}: failed node {}, {} packages move (vigil)",
            r.nodes, r.packages, r.failed_node, r.moved
        );
    }
}
