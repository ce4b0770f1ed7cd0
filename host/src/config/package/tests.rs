use std::path::Path;

use expect_test::{Expect, expect};
use vigil_sdk::ResourcePattern;

use super::*;
use crate::config::{ApiConfig, StoreConfig};

fn cluster(dir: &Path) -> ClusterConfig {
    ClusterConfig {
        dir: dir.to_owned(),
        name: "demo".into(),
        nodes: vec!["node1".into(), "node2".into(), "node3".into()],
        plugin_path: Vec::new(),
        store: StoreConfig::Embedded {
            path: dir.join("run/state"),
        },
        lease_ttl: std::time::Duration::from_secs(3),
        max_parallel_actions: 32,
        api: ApiConfig {
            socket: dir.join("run/vigil.sock"),
            http_listen: None,
        },
        // Inside the test's dir: no test touches /var/lib, /run or /var/log.
        paths: crate::config::Paths {
            state_dir: dir.join("run"),
            run_dir: dir.join("run"),
            log_dir: dir.join("run"),
        },
        log_format: crate::config::LogFormat::Text,
        hooks: Vec::new(),
        hook_errors: Vec::new(),
        fail_fast_action: crate::config::FailFastAction::HaltNode,
    }
}

/// Monitors in these tests declare the LAN status of any interface, the
/// used percentage of `/fs/data` and the status of any package's agent.
const DECLARED: &[&str] = &[
    "/net/interfaces/*/status",
    "/fs/data/used_percent",
    "/package/*/agent/*/status",
    "/net/subnets/*/status",
];

/// Writes `packages` into a temp `packages.d`, loads and cross-checks them,
/// and renders the packages and then every error, with the temp dir as `DIR`.
fn check(packages: &[(&str, &str)], expect: Expect) {
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("packages.d");
    std::fs::create_dir(&pdir).unwrap();
    for (name, text) in packages {
        std::fs::write(pdir.join(name), text).unwrap();
    }
    let cluster = cluster(dir.path());
    let (loaded, mut errors) = load_packages(&pdir, &cluster);
    let patterns: Vec<ResourcePattern> = DECLARED
        .iter()
        .map(|p| ResourcePattern::new(*p).unwrap())
        .collect();
    errors.extend(check_packages(&loaded, &cluster.nodes, |name| {
        patterns.iter().any(|p| p.matches(name))
    }));
    let mut out = String::new();
    for p in &loaded {
        out += &render(p);
    }
    for e in &errors {
        out += &format!("{e}\n");
    }
    let out = out.replace(&dir.path().display().to_string(), "DIR");
    expect.assert_eq(&out);
}

fn render(p: &PackageConfig) -> String {
    let mut out = format!(
        "package {} {} nodes {:?}{} {:?} {:?} auto_run={} priority={:?}\n  run {:?} {:?}\n  halt {:?} {:?}\n",
        p.name,
        p.kind.as_str(),
        p.nodes,
        if p.all_nodes { " (all)" } else { "" },
        p.failover_policy,
        p.failback_policy,
        p.auto_run,
        p.priority,
        p.run,
        p.run_timeout,
        p.halt,
        p.halt_timeout,
    );
    if let Some(f) = &p.follow {
        out += &format!("  follow {f}\n");
    }
    if !p.avoid.is_empty() {
        out += &format!("  avoid {:?}\n", p.avoid);
    }
    for s in &p.services {
        out += &format!(
            "  service {} {:?} restarts {:?} fail_fast={}\n",
            s.name, s.command, s.restarts, s.fail_fast
        );
    }
    for r in &p.resources {
        out += &format!(
            "  resource {} up [{}] {:?} rise {} fall {}{}\n",
            r.name,
            r.up,
            r.evaluate,
            r.rise,
            r.fall,
            r.implied_by
                .as_ref()
                .map(|p| format!(" implied by {p}"))
                .unwrap_or_default()
        );
    }
    for d in &p.dependencies {
        out += &format!(
            "  dependency {} {} {}\n",
            d.package,
            d.condition.as_str(),
            d.location.as_str()
        );
    }
    for part in &p.parts {
        out += &format!("  part line {} {:?}\n", part.line, part.part);
    }
    out
}

const ASCS: &str = r#"name = "ascs"
type = "failover"
nodes = ["node1", "node2", "node3"]
failover_policy = "configured_node"
failback_policy = "manual"
auto_run = true
priority = 10
run = ["pkg/ascs/run.sh"]
halt = ["pkg/ascs/halt.sh", "--now"]
run_timeout_seconds = 30
halt_timeout_seconds = 0.5
follow = "ers"

[[service]]
name = "enserver"
command = ["/opt/sap/enserver", "-f"]
restarts = 3

[[service]]
name = "watch"
command = ["bin/watch.sh"]
restarts = "unlimited"
fail_fast = true

[[resource]]
name = "/net/interfaces/eth0/status"
up = "== up"
rise = 1
fall = 2

[[resource]]
name = "/fs/data/used_percent"
up = ["< 90", "> 99 and < 100"]
evaluate = "after_start"

[[dependency]]
package = "db"
condition = "up"
location = "same_node"
"#;

const ERS: &str = r#"name = "ers"
type = "failover"
nodes = ["node2", "node3", "node1"]
run = ["/bin/true"]
halt = ["true"]
avoid = ["ascs"]
"#;

const DB: &str = r#"name = "db"
type = "multi_node"
nodes = ["*"]
run = ["/bin/true"]
halt = ["/bin/true"]
"#;

#[test]
fn full_valid_example() {
    check(
        &[
            ("ascs.toml", ASCS),
            ("ers.toml", ERS),
            ("db.toml", DB),
            (
                "storage.toml",
                "name = \"storage\"\ntype = \"system_multi_node\"\nrun = [\"s\"]\nhalt = [\"s\"]\nauto_run = false\n",
            ),
        ],
        expect![[r#"
            package ascs failover nodes ["node1", "node2", "node3"] ConfiguredNode Manual auto_run=true priority=Some(10)
              run ["DIR/pkg/ascs/run.sh"] 30s
              halt ["DIR/pkg/ascs/halt.sh", "--now"] 500ms
              follow ers
              service enserver ["/opt/sap/enserver", "-f"] restarts Limited(3) fail_fast=false
              service watch ["DIR/bin/watch.sh"] restarts Unlimited fail_fast=true
              resource /net/interfaces/eth0/status up [== up] BeforeStart rise 1 fall 2
              resource /fs/data/used_percent up [< 90 or > 99 and < 100] AfterStart rise 1 fall 1
              dependency db up same_node
            package db multi_node nodes ["node1", "node2", "node3"] (all) ConfiguredNode Manual auto_run=true priority=None
              run ["/bin/true"] 60s
              halt ["/bin/true"] 60s
            package ers failover nodes ["node2", "node3", "node1"] ConfiguredNode Manual auto_run=true priority=None
              run ["/bin/true"] 60s
              halt ["true"] 60s
              avoid ["ascs"]
            package storage system_multi_node nodes ["node1", "node2", "node3"] (all) ConfiguredNode Manual auto_run=false priority=None
              run ["s"] 60s
              halt ["s"] 60s
        "#]],
    );
}

#[test]
fn per_file_errors_name_file_and_line_and_drop_the_file() {
    check(
        &[
            (
                "a.toml",
                "name = \"a\"\ntype = \"failover\"\nnodes = [\"node1\"]\nrun = [\"r\"]\nhalt = [\"h\"]\nrun_timout_seconds = 3\n",
            ),
            (
                "b.toml",
                "name = \"b c\"\ntype = \"floating\"\nnodes = []\nrun = []\n",
            ),
            (
                "c.toml",
                r#"name = "c"
type = "multi_node"
nodes = ["node1", "node1", "*"]
failover_policy = "min_package_node"
failback_policy = "sometimes"
follow = "c"
avoid = ["c", "x", "x"]
priority = -1
run = ["r"]
halt = ["h"]
run_timeout_seconds = 0
"#,
            ),
            (
                "d.toml",
                r#"name = "d"
type = "failover"
nodes = ["node1"]
run = ["r"]
halt = ["h"]
follow = "e"
avoid = ["e"]

[[service]]
name = "s"
command = []
restarts = -2

[[service]]
name = "s"
command = ["x"]
restarts = "forever"

[[resource]]
name = "net/eth0"

[[resource]]
name = "/a/b"
up = "< up"
evaluate = "later"
rise = 0

[[resource]]
name = "/a/b"
up = []

[[dependency]]
package = "d"
condition = "sideways"
location = "moon"

[[dependency]]
package = "d"
"#,
            ),
            (
                "e.toml",
                "name = \"e\"\ntype = \"system_multi_node\"\nnodes = [\"node1\"]\nrun = [\"r\"]\nhalt = [\"h\"]\nfailback_policy = \"automatic\"\n",
            ),
            ("f.toml", "name = \"f\"\ntype = \"failover\"\n"),
            ("g.toml", "name = [\n"),
        ],
        expect![[r#"
            DIR/packages.d/a.toml:6: unknown field `run_timout_seconds`, expected one of `name`, `type`, `nodes`, `failover_policy`, `failback_policy`, `auto_run`, `node_fail_fast`, `priority`, `run`, `halt`, `run_timeout_seconds`, `halt_timeout_seconds`, `follow`, `avoid`, `service`, `resource`, `dependency`, `volume_group`, `filesystem`, `ip`, `agent`
            DIR/packages.d/b.toml:1: package name "b c" must be 1-63 characters of [A-Za-z0-9._-]
            DIR/packages.d/b.toml:2: type "floating" is not one of "failover", "multi_node", "system_multi_node"
            DIR/packages.d/b.toml:3: nodes must list at least one node, or ["*"] for every node
            DIR/packages.d/b.toml:4: run must name a program
            DIR/packages.d/b.toml:1: halt is missing: every package needs a halt control script, e.g. halt = ["pkg/b c/halt.sh"]
            DIR/packages.d/c.toml:3: nodes = ["*"] means every node and cannot be combined with names
            DIR/packages.d/c.toml:4: failover_policy does not apply to type = "multi_node": it runs on every eligible node
            DIR/packages.d/c.toml:5: failback_policy does not apply to type = "multi_node": it runs on every eligible node
            DIR/packages.d/c.toml:5: failback_policy "sometimes" is not one of "manual", "automatic"
            DIR/packages.d/c.toml:8: priority must be 0 or more, got -1
            DIR/packages.d/c.toml:11: run_timeout_seconds must be a number of seconds from 0.01 to 86400, got 0
            DIR/packages.d/c.toml:6: follow does not apply to type = "multi_node": it runs on every eligible node
            DIR/packages.d/c.toml:6: package "c" cannot follow itself
            DIR/packages.d/c.toml:7: package "c" cannot avoid itself
            DIR/packages.d/c.toml:7: avoid lists "x" twice
            DIR/packages.d/d.toml:7: package "d" both follows and avoids "e": it cannot prefer and refuse the same node
            DIR/packages.d/d.toml:11: service "s": command must name a program
            DIR/packages.d/d.toml:12: restarts must be 0 or more, or "unlimited", got -2
            DIR/packages.d/d.toml:15: service "s" is defined twice
            DIR/packages.d/d.toml:17: restarts must be 0 or more, or "unlimited", got "forever"
            DIR/packages.d/d.toml:20: resource name "net/eth0": resource name "net/eth0" must start with '/'
            DIR/packages.d/d.toml:24: resource /a/b: up in "< up": expected a number after '<' at column 3, found "up"
            DIR/packages.d/d.toml:25: evaluate "later" is not one of "before_start", "after_start"
            DIR/packages.d/d.toml:26: rise must be 1 or more samples, got 0
            DIR/packages.d/d.toml:29: resource /a/b is listed twice
            DIR/packages.d/d.toml:30: resource /a/b: up empty list of criteria: the resource could never be up
            DIR/packages.d/d.toml:33: package "d" cannot depend on itself
            DIR/packages.d/d.toml:34: condition "sideways" is not one of "up", "down"
            DIR/packages.d/d.toml:35: location "moon" is not one of "same_node", "different_node", "any_node", "all_nodes"
            DIR/packages.d/d.toml:38: package "d" cannot depend on itself
            DIR/packages.d/e.toml:3: a system_multi_node package runs on every node: nodes must be ["*"] or left out
            DIR/packages.d/e.toml:6: failback_policy does not apply to type = "system_multi_node": it runs on every eligible node
            DIR/packages.d/f.toml:2: nodes is missing: list the nodes in priority order, or ["*"] for every node
            DIR/packages.d/f.toml:1: run is missing: every package needs a run control script, e.g. run = ["pkg/f/run.sh"]
            DIR/packages.d/f.toml:1: halt is missing: every package needs a halt control script, e.g. halt = ["pkg/f/halt.sh"]
            DIR/packages.d/g.toml:1: unclosed array, expected `]`
        "#]],
    );
}

#[test]
fn cross_check_errors() {
    check(
        &[
            (
                "a.toml",
                r#"name = "a"
type = "failover"
nodes = ["node1", "node9"]
failover_policy = "min_package_node"
run = ["r"]
halt = ["h"]
follow = "ghost"
avoid = ["phantom"]

[[resource]]
name = "/net/interfaces/eth0/status"

[[resource]]
name = "/volume/data/status"

[[dependency]]
package = "b"
condition = "down"
location = "same_node"

[[dependency]]
package = "nobody"
"#,
            ),
            (
                "b.toml",
                "name = \"b\"\ntype = \"failover\"\nnodes = [\"node2\"]\nrun = [\"r\"]\nhalt = [\"h\"]\n",
            ),
            (
                "c.toml",
                "name = \"c\"\ntype = \"failover\"\nnodes = [\"node3\"]\nrun = [\"r\"]\nhalt = [\"h\"]\n[[dependency]]\npackage = \"b\"\n",
            ),
            (
                "b2.toml",
                "name = \"b\"\ntype = \"failover\"\nnodes = [\"node1\"]\nrun = [\"r\"]\nhalt = [\"h\"]\n",
            ),
        ],
        expect![[r#"
            package a failover nodes ["node1", "node9"] MinPackageNode Manual auto_run=true priority=None
              run ["r"] 60s
              halt ["h"] 60s
              follow ghost
              avoid ["phantom"]
              resource /net/interfaces/eth0/status up [== up] BeforeStart rise 1 fall 1
              resource /volume/data/status up [== up] BeforeStart rise 1 fall 1
              dependency b down same_node
              dependency nobody up same_node
            package b failover nodes ["node2"] ConfiguredNode Manual auto_run=true priority=None
              run ["r"] 60s
              halt ["h"] 60s
            package c failover nodes ["node3"] ConfiguredNode Manual auto_run=true priority=None
              run ["r"] 60s
              halt ["h"] 60s
              dependency b up same_node
            DIR/packages.d/b2.toml:1: package name "b" is already used by DIR/packages.d/b.toml
            DIR/packages.d/a.toml:3: node "node9" is not a node of the cluster
            DIR/packages.d/a.toml:14: resource /volume/data/status is not declared by any monitor
            DIR/packages.d/a.toml:7: follow names unknown package "ghost"
            DIR/packages.d/a.toml:8: avoid names unknown package "phantom"
            DIR/packages.d/a.toml:17: down dependency on "b" must be mutual: "b" needs a dependency on "a" with condition = "down" and location = "same_node"
            DIR/packages.d/a.toml:4: failover_policy = "min_package_node" cannot be combined with a down dependency (on "b"); use "configured_node"
            DIR/packages.d/a.toml:22: dependency on unknown package "nobody"
            DIR/packages.d/c.toml:7: same_node dependency on "b" can never hold: the two packages share no node
        "#]],
    );
}

#[test]
fn cycles_are_named() {
    let pkg = |name: &str, extra: &str| {
        format!(
            "name = \"{name}\"\ntype = \"failover\"\nnodes = [\"node1\", \"node2\"]\nrun = [\"r\"]\nhalt = [\"h\"]\n{extra}"
        )
    };
    let dep = |on: &str| format!("[[dependency]]\npackage = \"{on}\"\n");
    let x = pkg("x", &dep("y"));
    let y = pkg("y", &dep("z"));
    let z = pkg("z", &format!("{}{}", dep("x"), dep("w")));
    let w = pkg("w", "");
    let f1 = pkg("f1", "follow = \"f2\"\n");
    let f2 = pkg("f2", "follow = \"f1\"\n");
    // Mutual down dependencies are exclusions, not an order: no cycle.
    let m1 = pkg(
        "m1",
        "[[dependency]]\npackage = \"m2\"\ncondition = \"down\"\nlocation = \"same_node\"\n",
    );
    let m2 = pkg(
        "m2",
        "[[dependency]]\npackage = \"m1\"\ncondition = \"down\"\nlocation = \"same_node\"\n",
    );
    check(
        &[
            ("x.toml", &x),
            ("y.toml", &y),
            ("z.toml", &z),
            ("w.toml", &w),
            ("f1.toml", &f1),
            ("f2.toml", &f2),
            ("m1.toml", &m1),
            ("m2.toml", &m2),
        ],
        expect![[r#"
            package f1 failover nodes ["node1", "node2"] ConfiguredNode Manual auto_run=true priority=None
              run ["r"] 60s
              halt ["h"] 60s
              follow f2
            package f2 failover nodes ["node1", "node2"] ConfiguredNode Manual auto_run=true priority=None
              run ["r"] 60s
              halt ["h"] 60s
              follow f1
            package m1 failover nodes ["node1", "node2"] ConfiguredNode Manual auto_run=true priority=None
              run ["r"] 60s
              halt ["h"] 60s
              dependency m2 down same_node
            package m2 failover nodes ["node1", "node2"] ConfiguredNode Manual auto_run=true priority=None
              run ["r"] 60s
              halt ["h"] 60s
              dependency m1 down same_node
            package w failover nodes ["node1", "node2"] ConfiguredNode Manual auto_run=true priority=None
              run ["r"] 60s
              halt ["h"] 60s
            package x failover nodes ["node1", "node2"] ConfiguredNode Manual auto_run=true priority=None
              run ["r"] 60s
              halt ["h"] 60s
              dependency y up same_node
            package y failover nodes ["node1", "node2"] ConfiguredNode Manual auto_run=true priority=None
              run ["r"] 60s
              halt ["h"] 60s
              dependency z up same_node
            package z failover nodes ["node1", "node2"] ConfiguredNode Manual auto_run=true priority=None
              run ["r"] 60s
              halt ["h"] 60s
              dependency x up same_node
              dependency w up same_node
            DIR/packages.d/z.toml:7: dependency cycle: x -> y -> z -> x
            DIR/packages.d/f2.toml:6: follow cycle: f1 -> f2 -> f1
        "#]],
    );
}

/// `vigil template package` must print a file this loader accepts, both as
/// printed and with every commented-out key switched on.
#[test]
fn the_package_template_loads() {
    let template = crate::cli::PACKAGE_TEMPLATE;
    let uncommented: String = template
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if rest.starts_with('[') || rest.contains(" = ") => rest,
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(uncommented.contains("\n[[service]]\n"));
    let dir = tempfile::tempdir().unwrap();
    for text in [template, uncommented.as_str()] {
        let file = SourceFile::from_text(&dir.path().join("app.toml"), text);
        let package = load_package_text(&file, &cluster(dir.path()))
            .unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        assert_eq!(package.name, "app");
    }
    let file = SourceFile::from_text(&dir.path().join("app.toml"), &uncommented);
    let package = load_package_text(&file, &cluster(dir.path())).unwrap();
    assert_eq!(package.services.len(), 1);
    assert_eq!(package.resources[0].fall, 2);
    assert_eq!(package.dependencies[0].package, "db");
    assert_eq!(package.follow.as_deref(), Some("other"));
}

#[test]
fn config_load_includes_packages_and_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cluster.toml"),
        "[cluster]\nname = \"demo\"\nnodes = [\"node1\", \"node2\"]\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("packages.d")).unwrap();
    std::fs::write(dir.path().join("packages.d/ers.toml"), ERS).unwrap();
    std::fs::write(
        dir.path().join("packages.d/bad.toml"),
        "name = \"bad\"\ntype = \"failover\"\nnodes = [\"node1\"]\nrun = [\"r\"]\nhalt = [\"h\"]\nrestarts = 1\n",
    )
    .unwrap();
    let config = crate::config::load(dir.path()).unwrap();
    let names: Vec<&str> = config.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["ers"]);
    let errors: Vec<String> = config
        .errors
        .iter()
        .map(|e| {
            e.to_string()
                .replace(&dir.path().display().to_string(), "DIR")
        })
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("DIR/packages.d/bad.toml:6: unknown field `restarts`"),
        "{errors:?}"
    );
}

#[test]
fn check_reports_duplicates_in_a_list_not_from_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let load = |file: &str, text: &str| {
        load_package_text(&SourceFile::from_text(Path::new(file), text), &cluster).unwrap()
    };
    let packages = [load("one.toml", ERS), load("two.toml", ERS)];
    let errors: Vec<String> = check_packages(&packages, &cluster.nodes, |_| true)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            "one.toml:6: avoid names unknown package \"ascs\"",
            "two.toml:1: package name \"ers\" is already used by one.toml",
        ]
    );
}

#[test]
fn parts_are_loaded_in_file_order_and_checked_with_file_and_line() {
    let head =
        "type = \"failover\"\nnodes = [\"node1\"]\nrun = [\"/bin/true\"]\nhalt = [\"/bin/true\"]\n";
    check(
        &[
            (
                "a.toml",
                &format!(
                    "name = \"a\"\n{head}\n[[ip]]\naddress = \"192.0.2.50/24\"\n\n[[filesystem]]\ndevice = \"/dev/vgdata/lv\"\nmount = \"/srv/data/\"\ntype = \"ext4\"\noptions = \"noatime\"\nfsck = true\n\n[[volume_group]]\nname = \"vgdata\"\n\n[[ip]]\naddress = \"2001:db8::50/64\"\ninterface = \"eth1\"\n\n[[agent]]\nname = \"web\"\nagent = \"ocf:heartbeat:Dummy\"\nparams = {{ state = \"/run/x\", fake = 3 }}\nmonitor_interval_seconds = 2\nstop_timeout_seconds = 5\n"
                ),
            ),
            (
                "b.toml",
                &format!(
                    "name = \"b\"\n{head}\n[[ip]]\naddress = \"192.0.2.300/24\"\n[[ip]]\naddress = \"192.0.2.51\"\n[[ip]]\naddress = \"127.0.0.2/8\"\n[[filesystem]]\ndevice = \"sdb1\"\nmount = \"srv/x\"\ntype = \"ext 4\"\n[[filesystem]]\ndevice = \"/dev/sdb\"\nmount = \"/\"\ntype = \"xfs\"\n[[volume_group]]\nname = \"-vg\"\n[[agent]]\nname = \"x\"\nagent = \"heartbeat:Dummy\"\n[[ip]]\naddress = \"192.0.2.9/24\"\ninterface = \"a/b\"\n"
                ),
            ),
            (
                "c.toml",
                &format!(
                    "name = \"c\"\n{head}\n[[ip]]\naddress = \"192.0.2.60/24\"\n[[ip]]\naddress = \"192.0.2.60/24\"\n"
                ),
            ),
            (
                "d.toml",
                &format!(
                    "name = \"d\"\n{head}\n[[ip]]\naddress = \"192.0.2.50/24\"\n[[filesystem]]\ndevice = \"LABEL=data\"\nmount = \"/srv/data\"\ntype = \"ext4\"\n[[ip]]\naddress = \"192.0.2.61/24\"\n"
                ),
            ),
        ],
        expect![[r#"
            package a failover nodes ["node1"] ConfiguredNode Manual auto_run=true priority=None
              run ["/bin/true"] 60s
              halt ["/bin/true"] 60s
              resource /package/a/agent/web/status up [== up or == stopped] AfterStart rise 1 fall 1 implied by agent web (ocf:heartbeat:Dummy)
              resource /net/subnets/192.0.2.0_24/status up [== up] BeforeStart rise 1 fall 2 implied by ip 192.0.2.50/24
              resource /net/subnets/2001-db8--_64/status up [== up] BeforeStart rise 1 fall 2 implied by ip 2001:db8::50/64 on eth1
              part line 18 VolumeGroup { name: "vgdata" }
              part line 12 Filesystem { device: "/dev/vgdata/lv", mount: "/srv/data", fstype: "ext4", options: Some("noatime"), fsck: true }
              part line 8 Ip { address: 192.0.2.50, prefix: 24, interface: None }
              part line 21 Ip { address: 2001:db8::50, prefix: 64, interface: Some("eth1") }
              part line 25 Agent(AgentPart { name: "web", agent: "ocf:heartbeat:Dummy", params: {"fake": "3", "state": "/run/x"}, monitor_interval_ms: Some(2000), timeouts_ms: {"stop": 5000} })
            package d failover nodes ["node1"] ConfiguredNode Manual auto_run=true priority=None
              run ["/bin/true"] 60s
              halt ["/bin/true"] 60s
              resource /net/subnets/192.0.2.0_24/status up [== up] BeforeStart rise 1 fall 2 implied by ip 192.0.2.50/24
              part line 11 Filesystem { device: "LABEL=data", mount: "/srv/data", fstype: "ext4", options: None, fsck: false }
              part line 8 Ip { address: 192.0.2.50, prefix: 24, interface: None }
              part line 14 Ip { address: 192.0.2.61, prefix: 24, interface: None }
            DIR/packages.d/b.toml:22: volume group name "-vg" must be 1-127 characters of [A-Za-z0-9._+-], not starting with -
            DIR/packages.d/b.toml:14: device "sdb1" must be an absolute path, UUID=... or LABEL=...
            DIR/packages.d/b.toml:15: mount point "srv/x" must be an absolute path other than / without . or ..
            DIR/packages.d/b.toml:16: type "ext 4" is not a file system type
            DIR/packages.d/b.toml:19: mount point "/" must be an absolute path other than / without . or ..
            DIR/packages.d/b.toml:8: address "192.0.2.300/24" must be a unicast IPv4 or IPv6 address with a prefix length, e.g. "192.0.2.50/24"
            DIR/packages.d/b.toml:10: address "192.0.2.51" must be a unicast IPv4 or IPv6 address with a prefix length, e.g. "192.0.2.50/24"
            DIR/packages.d/b.toml:12: address "127.0.0.2/8" must be a unicast IPv4 or IPv6 address with a prefix length, e.g. "192.0.2.50/24"
            DIR/packages.d/b.toml:28: interface "a/b" is not an interface name (1-15 characters, no / or spaces)
            DIR/packages.d/b.toml:25: agent "heartbeat:Dummy" must be ocf:<provider>:<type>, e.g. "ocf:heartbeat:IPaddr2"
            DIR/packages.d/c.toml:10: ip 192.0.2.60/24 is already listed at line 8
            DIR/packages.d/d.toml:11: mount point /srv/data is already claimed by package "a" (DIR/packages.d/a.toml:12)
            DIR/packages.d/d.toml:8: address 192.0.2.50 is already claimed by package "a" (DIR/packages.d/a.toml:8)
        "#]],
    );
}

#[test]
fn an_address_without_a_lan_monitor_is_refused_naming_the_subnet_it_implies() {
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("packages.d");
    std::fs::create_dir(&pdir).unwrap();
    std::fs::write(
        pdir.join("a.toml"),
        "name = \"a\"\ntype = \"failover\"\nnodes = [\"node1\"]\nrun = [\"/bin/true\"]\nhalt = [\"/bin/true\"]\n[[ip]]\naddress = \"192.0.2.50/24\"\n",
    )
    .unwrap();
    let cluster = cluster(dir.path());
    let (loaded, errors) = load_packages(&pdir, &cluster);
    assert!(errors.is_empty(), "{errors:?}");
    let errors = check_packages(&loaded, &cluster.nodes, |_| false);
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 1, "{text:?}");
    assert!(
        text[0].ends_with(
            "a.toml:7: ip 192.0.2.50/24 needs resource /net/subnets/192.0.2.0_24/status (its subnet up), which no monitor declares: configure the lan monitor (monitors.d, plugin = \"vigil_lan\"), which publishes the subnets of packages' addresses"
        ),
        "{text:?}"
    );
}
