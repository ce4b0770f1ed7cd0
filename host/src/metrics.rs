//! Prometheus metrics for `/metrics`, in the text format 0.0.4 that
//! `promtool check metrics` reads: packages, nodes, failovers, resources
//! (numbers in base units, the unit in the metric name), monitors, the
//! monitor poll-duration histogram, build info and process metrics.
//!
//! Written by hand rather than with `prometheus-client`: that crate writes
//! OpenMetrics only (`# TYPE x counter` over `x_total`, `info` types, `# EOF`),
//! which the text-format parser of `promtool check metrics` refuses. The
//! only state kept here is the poll-duration histogram, fed by the monitor
//! runtime; everything else is rendered from one [`ClusterView`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use crate::views::ClusterView;

/// Upper bounds (seconds) of the poll-duration buckets: a dylib poll takes
/// microseconds, a Nagios check up to its timeout.
const POLL_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Count per bucket of [`POLL_BUCKETS`] (not cumulative).
    buckets: [u64; POLL_BUCKETS.len()],
    count: u64,
    sum: f64,
}

static POLLS: LazyLock<Mutex<BTreeMap<String, Histogram>>> = LazyLock::new(Default::default);

/// Records how long one poll of `monitor` took (from the runtime's tasks).
pub fn observe_poll(monitor: &str, took: Duration) {
    let seconds = took.as_secs_f64();
    let mut polls = POLLS.lock().unwrap_or_else(|p| p.into_inner());
    let h = polls.entry(monitor.to_owned()).or_default();
    if let Some(i) = POLL_BUCKETS.iter().position(|b| seconds <= *b) {
        h.buckets[i] += 1;
    }
    h.count += 1;
    h.sum += seconds;
}

/// A resource unit as Prometheus wants it: the base-unit name that ends
/// the metric name, and the factor to it. vigil's `KB`/`MB`/`GB` are
/// binary (the fs monitor's `avail_mb` is 2^20 bytes). Unknown units are
/// kept, made safe for a metric name; no unit is `value`.
pub fn base_unit(unit: Option<&str>) -> (String, f64) {
    let unit = unit.unwrap_or_default().trim();
    let (name, factor) = match unit {
        "" => ("value", 1.0),
        "%" => ("ratio", 0.01),
        "B" | "bytes" => ("bytes", 1.0),
        "KB" | "kB" | "KiB" => ("bytes", 1024.0),
        "MB" | "MiB" => ("bytes", 1024.0 * 1024.0),
        "GB" | "GiB" => ("bytes", 1024.0 * 1024.0 * 1024.0),
        "TB" | "TiB" => ("bytes", 1024.0_f64.powi(4)),
        "s" => ("seconds", 1.0),
        "ms" => ("seconds", 1e-3),
        "us" | "µs" => ("seconds", 1e-6),
        "ns" => ("seconds", 1e-9),
        "C" | "°C" => ("celsius", 1.0),
        other => {
            let safe: String = other
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            let safe = safe.trim_matches('_').to_owned();
            return if safe.is_empty() {
                ("value".to_owned(), 1.0)
            } else {
                (safe, 1.0)
            };
        }
    };
    (name.to_owned(), factor)
}

/// Escapes a label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// One metric family at a time, so each family's samples stay together
/// under its HELP and TYPE.
#[derive(Default)]
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, pairs: &[(&str, &str)], value: f64) {
        let _ = writeln!(self.0, "{name}{} {value}", labels(pairs));
    }
}

const PACKAGE_STATES: [&str; 5] = ["up", "down", "starting", "halting", "failed"];

/// The package's state on `node`: its state where it runs, `failed` where
/// it failed, else `down`.
fn state_on<'a>(p: &'a crate::views::PackageStatus, node: &str) -> &'a str {
    if p.running_on.iter().any(|n| n == node) {
        &p.state
    } else if p.failed_on.iter().any(|n| n == node) {
        "failed"
    } else {
        "down"
    }
}

/// The whole exposition for `view`, with the failovers seen so far by
/// (package, reason).
pub fn render(view: &ClusterView, failovers: &BTreeMap<(String, String), u64>) -> String {
    let mut t = Text::default();
    let status = &view.status;
    t.family(
        "vigil_build_info",
        "gauge",
        "The running vigil's version; always 1.",
    );
    t.sample(
        "vigil_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    t.family(
        "vigil_node_up",
        "gauge",
        "1 when the node is up in the cluster store.",
    );
    for n in &status.nodes {
        t.sample(
            "vigil_node_up",
            &[("node", &n.name)],
            f64::from(u8::from(n.state == "up")),
        );
    }
    t.family(
        "vigil_package_up",
        "gauge",
        "1 when the package is up on the node.",
    );
    for p in &status.packages {
        for n in &status.nodes {
            t.sample(
                "vigil_package_up",
                &[("package", &p.name), ("node", &n.name)],
                f64::from(u8::from(state_on(p, &n.name) == "up")),
            );
        }
    }
    t.family(
        "vigil_package_state",
        "gauge",
        "1 for the package's state on the node (up, down, starting, halting, failed), 0 for the others.",
    );
    for p in &status.packages {
        for n in &status.nodes {
            let on = state_on(p, &n.name);
            for state in PACKAGE_STATES {
                t.sample(
                    "vigil_package_state",
                    &[("package", &p.name), ("node", &n.name), ("state", state)],
                    f64::from(u8::from(on == state)),
                );
            }
        }
    }
    t.family(
        "vigil_failovers_total",
        "counter",
        "Packages seen moving to other nodes since this host started, by reason.",
    );
    for ((package, reason), n) in failovers {
        t.sample(
            "vigil_failovers_total",
            &[("package", package), ("reason", reason)],
            *n as f64,
        );
    }
    t.family(
        "vigil_resource_up",
        "gauge",
        "1 when the resource meets the package's criteria on this node (after hysteresis).",
    );
    for p in &status.packages {
        for r in &p.resources {
            t.sample(
                "vigil_resource_up",
                &[("resource", &r.name), ("package", &p.name)],
                f64::from(u8::from(r.state == "up")),
            );
        }
    }
    // Numeric resources, one family per base unit.
    let mut numeric: BTreeMap<String, Vec<(&str, &str, f64)>> = BTreeMap::new();
    for r in &view.resources.resources {
        if let Some(v) = r.value.as_f64() {
            let (unit, factor) = base_unit(r.unit.as_deref());
            numeric
                .entry(unit)
                .or_default()
                .push((&r.name, &r.monitor, v * factor));
        }
    }
    for (unit, rows) in &numeric {
        let name = format!("vigil_resource_{unit}");
        let help = match unit.as_str() {
            "value" => "Latest value of a resource without a unit.".to_owned(),
            "ratio" => "Latest value of a resource given in %, as a ratio (0 to 1).".to_owned(),
            u => format!("Latest value of a resource, in {u}."),
        };
        t.family(&name, "gauge", &help);
        for (resource, monitor, v) in rows {
            t.sample(&name, &[("resource", resource), ("monitor", monitor)], *v);
        }
    }
    t.family(
        "vigil_resource_text_info",
        "gauge",
        "Latest value of a text resource, as the value label; always 1.",
    );
    for r in &view.resources.resources {
        if let Some(text) = r.value.as_str() {
            t.sample(
                "vigil_resource_text_info",
                &[
                    ("resource", &r.name),
                    ("monitor", &r.monitor),
                    ("value", text),
                ],
                1.0,
            );
        }
    }
    t.family(
        "vigil_resource_known",
        "gauge",
        "1 when the resource's value is known, 0 when unknown.",
    );
    for r in &view.resources.resources {
        t.sample(
            "vigil_resource_known",
            &[("resource", &r.name), ("monitor", &r.monitor)],
            f64::from(u8::from(r.state == "known")),
        );
    }
    t.family(
        "vigil_monitor_up",
        "gauge",
        "1 when the monitor's last report was good.",
    );
    for m in &view.monitors {
        t.sample(
            "vigil_monitor_up",
            &[("monitor", &m.name), ("type", &m.kind)],
            f64::from(u8::from(m.state == "ok")),
        );
    }
    t.family(
        "vigil_monitor_samples_total",
        "counter",
        "Samples recorded from the monitor.",
    );
    for m in &view.monitors {
        t.sample(
            "vigil_monitor_samples_total",
            &[("monitor", &m.name)],
            m.samples_received as f64,
        );
    }
    hooks(&mut t, &status.hooks);
    polls(&mut t);
    process(&mut t);
    t.0
}

/// `[[hook]]` deliveries, one sample per hook (`sum()` for the host).
fn hooks(t: &mut Text, hooks: &[crate::views::HookRow]) {
    t.family(
        "vigil_hook_dropped_total",
        "counter",
        "Events not given to a hook because its queue was full, since this host started.",
    );
    for h in hooks {
        t.sample(
            "vigil_hook_dropped_total",
            &[("hook", &h.name)],
            h.dropped as f64,
        );
    }
    type Counter = fn(&crate::views::HookRow) -> u64;
    let counters: [(&str, &str, Counter); 4] = [
        (
            "vigil_hook_delivered_total",
            "Events a hook took (status 0), after retries.",
            |h| h.delivered,
        ),
        (
            "vigil_hook_failed_runs_total",
            "Hook runs that failed or timed out; each attempt counts.",
            |h| h.failed_runs,
        ),
        (
            "vigil_hook_timed_out_runs_total",
            "Hook runs killed at their timeout_seconds.",
            |h| h.timed_out_runs,
        ),
        (
            "vigil_hook_given_up_total",
            "Events given up on after every attempt of the hook failed.",
            |h| h.given_up,
        ),
    ];
    for (name, help, value) in counters {
        t.family(name, "counter", help);
        for h in hooks {
            t.sample(name, &[("hook", &h.name)], value(h) as f64);
        }
    }
    t.family(
        "vigil_hook_queued",
        "gauge",
        "Events waiting for the hook now.",
    );
    for h in hooks {
        t.sample("vigil_hook_queued", &[("hook", &h.name)], h.queued as f64);
    }
}

fn polls(t: &mut Text) {
    let polls = POLLS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let name = "vigil_monitor_poll_duration_seconds";
    t.family(
        name,
        "histogram",
        "How long monitor polls took (periodic dylib, exec and Nagios monitors).",
    );
    for (monitor, h) in &polls {
        let mut cumulative = 0;
        for (bound, n) in POLL_BUCKETS.iter().zip(h.buckets) {
            cumulative += n;
            t.sample(
                &format!("{name}_bucket"),
                &[("monitor", monitor), ("le", &bound.to_string())],
                cumulative as f64,
            );
        }
        t.sample(
            &format!("{name}_bucket"),
            &[("monitor", monitor), ("le", "+Inf")],
            h.count as f64,
        );
        t.sample(&format!("{name}_sum"), &[("monitor", monitor)], h.sum);
        t.sample(
            &format!("{name}_count"),
            &[("monitor", monitor)],
            h.count as f64,
        );
    }
}

/// The standard `process_*` metrics, read from `/proc/self`.
fn process(t: &mut Text) {
    let Some(p) = ProcessFacts::read() else {
        return;
    };
    let rows = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            p.resident_bytes,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            p.virtual_bytes,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            p.open_fds,
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            p.max_fds,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            p.start_time,
        ),
    ];
    for (name, kind, help, value) in rows {
        t.family(name, kind, help);
        t.sample(name, &[], value);
    }
}

struct ProcessFacts {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    open_fds: f64,
    max_fds: f64,
    start_time: f64,
}

impl ProcessFacts {
    fn read() -> Option<Self> {
        // /proc counts CPU time and start time in USER_HZ ticks, which the
        // kernel fixes at 100 for every architecture's user space.
        const TICKS: f64 = 100.0;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which may hold spaces: field 3 on.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
        let (utime, stime, starttime) = (field(14)?, field(15)?, field(22)?);
        let (vsize, rss_pages) = (field(23)?, field(24)?);
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse::<f64>()
            .ok()?;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()?
            .lines()
            .find(|l| l.starts_with("Max open files"))?
            .split_whitespace()
            .nth(3)?
            .parse::<f64>()
            .ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        Some(Self {
            cpu_seconds: (utime + stime) / TICKS,
            // RSS is in pages; every Linux vigil runs on has 4 KiB pages
            // unless /proc says otherwise through the status file.
            resident_bytes: resident_bytes().unwrap_or(rss_pages * 4096.0),
            virtual_bytes: vsize,
            open_fds,
            max_fds,
            start_time: boot + starttime / TICKS,
        })
    }
}

/// `VmRSS` of /proc/self/status, in bytes (exact whatever the page size).
fn resident_bytes() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()?;
    Some(kib * 1024.0)
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;
    use crate::views::*;

    #[test]
    fn units_become_base_units_in_the_metric_name() {
        let check = |unit: Option<&str>, want: (&str, f64)| {
            let (name, factor) = base_unit(unit);
            assert_eq!((name.as_str(), factor), want, "{unit:?}");
        };
        check(None, ("value", 1.0));
        check(Some("%"), ("ratio", 0.01));
        check(Some("MB"), ("bytes", 1048576.0));
        check(Some("B"), ("bytes", 1.0));
        check(Some("ms"), ("seconds", 0.001));
        check(Some("s"), ("seconds", 1.0));
        check(Some("C"), ("celsius", 1.0));
        check(Some("req/s"), ("req_s", 1.0));
        check(Some("//"), ("value", 1.0));
    }

    #[test]
    fn cluster_view_renders_packages_nodes_and_resources() {
        let view = ClusterView {
            status: StatusOutput {
                applied: None,
                cluster: "c".into(),
                node: "node1".into(),
                nodes: vec![
                    NodeStatus {
                        name: "node1".into(),
                        state: "up".into(),
                        maintenance: false,
                    },
                    NodeStatus {
                        name: "node2".into(),
                        state: "down".into(),
                        maintenance: false,
                    },
                ],
                packages: vec![PackageStatus {
                    name: "db".into(),
                    state: "up".into(),
                    running_on: vec!["node1".into()],
                    switching: true,
                    reason: String::new(),
                    fence_token: 3,
                    failed_on: vec!["node2".into()],
                    resources: vec![ResourceStatus {
                        name: "/fs/d/used_percent".into(),
                        state: "up".into(),
                        evaluate: "before_start".into(),
                        criterion: "< 90".into(),
                    }],
                    parts_here: vec![],
                    maintenance: false,
                    withheld: None,
                    disabled_on: vec![],
                    services_here: vec![],
                    policy: Default::default(),
                }],
                config_errors: vec![],
                hooks: vec![],
            },
            resources: ReslsOutput {
                node: "node1".into(),
                path: "/".into(),
                resources: vec![
                    ResourceRow {
                        name: "/fs/d/used_percent".into(),
                        value: serde_json::json!(42.5),
                        unit: Some("%".into()),
                        state: "known".into(),
                        reason: None,
                        monitor: "fs".into(),
                        updated: None,
                        age_seconds: None,
                        used_by: vec![],
                    },
                    ResourceRow {
                        name: "/net/a\"b/status".into(),
                        value: serde_json::json!("up"),
                        unit: None,
                        state: "known".into(),
                        reason: None,
                        monitor: "lan".into(),
                        updated: None,
                        age_seconds: None,
                        used_by: vec![],
                    },
                ],
                classes: vec![],
                declared: vec![],
            },
            monitors: vec![MonitorRow {
                name: "fs".into(),
                kind: "dylib".into(),
                state: "ok".into(),
                reason: None,
                declares: vec![],
                samples_received: 7,
                last_report: None,
                problems: MonitorProblems::default(),
            }],
            health: HealthOutput::new("node1", false, false),
            events: vec![],
        };
        let failovers = BTreeMap::from([(("db".to_owned(), "failover".to_owned()), 2)]);
        let text = render(&view, &failovers);
        let before_polls = &text[..text.find("# HELP vigil_monitor_poll").unwrap_or(0)];
        expect![[r##"
            # HELP vigil_build_info The running vigil's version; always 1.
            # TYPE vigil_build_info gauge
            vigil_build_info{version="0.1.0"} 1
            # HELP vigil_node_up 1 when the node is up in the cluster store.
            # TYPE vigil_node_up gauge
            vigil_node_up{node="node1"} 1
            vigil_node_up{node="node2"} 0
            # HELP vigil_package_up 1 when the package is up on the node.
            # TYPE vigil_package_up gauge
            vigil_package_up{package="db",node="node1"} 1
            vigil_package_up{package="db",node="node2"} 0
            # HELP vigil_package_state 1 for the package's state on the node (up, down, starting, halting, failed), 0 for the others.
            # TYPE vigil_package_state gauge
            vigil_package_state{package="db",node="node1",state="up"} 1
            vigil_package_state{package="db",node="node1",state="down"} 0
            vigil_package_state{package="db",node="node1",state="starting"} 0
            vigil_package_state{package="db",node="node1",state="halting"} 0
            vigil_package_state{package="db",node="node1",state="failed"} 0
            vigil_package_state{package="db",node="node2",state="up"} 0
            vigil_package_state{package="db",node="node2",state="down"} 0
            vigil_package_state{package="db",node="node2",state="starting"} 0
            vigil_package_state{package="db",node="node2",state="halting"} 0
            vigil_package_state{package="db",node="node2",state="failed"} 1
            # HELP vigil_failovers_total Packages seen moving to other nodes since this host started, by reason.
            # TYPE vigil_failovers_total counter
            vigil_failovers_total{package="db",reason="failover"} 2
            # HELP vigil_resource_up 1 when the resource meets the package's criteria on this node (after hysteresis).
            # TYPE vigil_resource_up gauge
            vigil_resource_up{resource="/fs/d/used_percent",package="db"} 1
            # HELP vigil_resource_ratio Latest value of a resource given in %, as a ratio (0 to 1).
            # TYPE vigil_resource_ratio gauge
            vigil_resource_ratio{resource="/fs/d/used_percent",monitor="fs"} 0.425
            # HELP vigil_resource_text_info Latest value of a text resource, as the value label; always 1.
            # TYPE vigil_resource_text_info gauge
            vigil_resource_text_info{resource="/net/a\"b/status",monitor="lan",value="up"} 1
            # HELP vigil_resource_known 1 when the resource's value is known, 0 when unknown.
            # TYPE vigil_resource_known gauge
            vigil_resource_known{resource="/fs/d/used_percent",monitor="fs"} 1
            vigil_resource_known{resource="/net/a\"b/status",monitor="lan"} 1
            # HELP vigil_monitor_up 1 when the monitor's last report was good.
            # TYPE vigil_monitor_up gauge
            vigil_monitor_up{monitor="fs",type="dylib"} 1
            # HELP vigil_monitor_samples_total Samples recorded from the monitor.
            # TYPE vigil_monitor_samples_total counter
            vigil_monitor_samples_total{monitor="fs"} 7
            # HELP vigil_hook_dropped_total Events not given to a hook because its queue was full, since this host started.
            # TYPE vigil_hook_dropped_total counter
            # HELP vigil_hook_delivered_total Events a hook took (status 0), after retries.
            # TYPE vigil_hook_delivered_total counter
            # HELP vigil_hook_failed_runs_total Hook runs that failed or timed out; each attempt counts.
            # TYPE vigil_hook_failed_runs_total counter
            # HELP vigil_hook_timed_out_runs_total Hook runs killed at their timeout_seconds.
            # TYPE vigil_hook_timed_out_runs_total counter
            # HELP vigil_hook_given_up_total Events given up on after every attempt of the hook failed.
            # TYPE vigil_hook_given_up_total counter
            # HELP vigil_hook_queued Events waiting for the hook now.
            # TYPE vigil_hook_queued gauge
        "##]]
        .assert_eq(before_polls);
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"));
    }

    #[test]
    fn poll_durations_fill_cumulative_buckets() {
        observe_poll("histo-test", Duration::from_millis(3));
        observe_poll("histo-test", Duration::from_secs(20));
        let mut t = Text::default();
        polls(&mut t);
        let mine: Vec<&str> = t.0.lines().filter(|l| l.contains("histo-test")).collect();
        expect![[r#"
            [
                "vigil_monitor_poll_duration_seconds_bucket{monitor=\"histo-test\",le=\"0.001\"} 0",
                "vigil_monitor_poll_duration_seconds_bucket{monitor=\"histo-test\",le=\"0.005\"} 1",
                "vigil_monitor_poll_duration_seconds_bucket{monitor=\"histo-test\",le=\"0.01\"} 1",
                "vigil_monitor_poll_duration_seconds_bucket{monitor=\"histo-test\",le=\"0.025\"} 1",
                "vigil_monitor_poll_duration_seconds_bucket{monitor=\"histo-test\",le=\"0.05\"} 1",
                "vigil_monitor_poll_duration_seconds_bucket{monitor=\"histo-test\",le=\"0.1\"} 1",
                "vigil_monitor_poll_duration_seconds_bucket{monitor=\"histo-test\",le=\"0.25\"} 1",
                "vigil_monitor_poll_duration_seconds_bucket{monitor=\"histo-test\",le=\"1\"} 1",
                "vigil_monitor_poll_duration_seconds_bucket{monitor=\"histo-test\",le=\"2.5\"} 1",
                "vigil_monitor_poll_duration_seconds_bucket{monitor=\"histo-test\",le=\"10\"} 1",
                "vigil_monitor_poll_duration_seconds_bucket{monitor=\"histo-test\",le=\"+Inf\"} 2",
                "vigil_monitor_poll_duration_seconds_sum{monitor=\"histo-test\"} 20.003",
                "vigil_monitor_poll_duration_seconds_count{monitor=\"histo-test\"} 2",
            ]
        "#]]
        .assert_debug_eq(&mine);
    }
}
