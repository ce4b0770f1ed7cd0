use std::path::Path;

use expect_test::{Expect, expect};

use super::*;

/// Writes `cluster` and `monitors` into a temp config dir, loads it and
/// renders the result (monitors or errors) with the temp dir replaced by `DIR`.
fn check(cluster: &str, monitors: &[(&str, &str)], expect: Expect) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.toml"), cluster).unwrap();
    std::fs::create_dir(dir.path().join("monitors.d")).unwrap();
    for (name, text) in monitors {
        std::fs::write(dir.path().join("monitors.d").join(name), text).unwrap();
    }
    let rendered = match load(dir.path()) {
        Err(errors) => errors.iter().map(|e| format!("{e}\n")).collect::<String>(),
        Ok(config) => {
            let mut out = format!(
                "cluster {} nodes {:?} store {:?}\n",
                config.cluster.name, config.cluster.nodes, config.cluster.store
            );
            for m in &config.monitors {
                out += &format!(
                    "monitor {} {:?} every {:?} timeout {:?} params {}\n",
                    m.name, m.kind, m.interval, m.timeout, m.params
                );
            }
            for e in &config.errors {
                out += &format!("{e}\n");
            }
            out
        }
    };
    let rendered = rendered.replace(&dir.path().display().to_string(), "DIR");
    expect.assert_eq(&rendered);
}

const CLUSTER: &str = "[cluster]\nname = \"demo\"\nnodes = [\"node1\"]\n";

#[test]
fn valid_monitors_of_each_kind() {
    check(
        CLUSTER,
        &[
            (
                "lan.toml",
                "name = \"lan\"\ntype = \"dylib\"\nplugin = \"vigil_lan\"\ninterval_seconds = 5\n[params]\ninterfaces = [\"eth0\"]\n",
            ),
            (
                "load.toml",
                "name = \"load\"\ntype = \"nagios\"\ncommand = [\"check_load\", \"-w\", \"1,1,1\"]\ninterval_seconds = 0.5\n",
            ),
            (
                "tail.toml",
                "name = \"tail\"\ntype = \"exec\"\ncommand = [\"./t.sh\"]\nmode = \"stream\"\n",
            ),
            (
                "off.toml",
                "name = \"off\"\ntype = \"exec\"\ncommand = [\"x\"]\nenabled = false\n",
            ),
        ],
        expect![[r#"
            cluster demo nodes ["node1"] store Embedded { path: "DIR/run/state" }
            monitor lan Dylib { plugin: "vigil_lan", isolation: InProcess } every 5s timeout 2s params {"interfaces":["eth0"]}
            monitor load Nagios { command: ["check_load", "-w", "1,1,1"] } every 500ms timeout 2s params {}
            monitor tail Exec { command: ["./t.sh"], mode: Stream } every 5s timeout 2s params {}
        "#]],
    );
}

#[test]
fn errors_name_file_and_line_and_keep_other_monitors() {
    check(
        CLUSTER,
        &[
            (
                "a.toml",
                "name = \"a\"\ntype = \"dylib\"\n\nplugin = \"x\"\nintervall = 3\n",
            ),
            ("b.toml", "name = \"b\"\ntype = \"snmp\"\n"),
            (
                "c.toml",
                "name = \"c\"\ntype = \"exec\"\ncommand = []\ninterval_seconds = 0\n",
            ),
            ("d.toml", "name = \"d\"\ntype = \"dylib\"\nplugin = \"p\"\n"),
            ("e.toml", "name = \"d\"\ntype = \"dylib\"\nplugin = \"p\"\n"),
            (
                "f.toml",
                "name = \"f\"\ntype = \"exec\"\ncommand = [\"x\"]\nmode = \"forever\"\n",
            ),
            (
                "g.toml",
                "name = \"g g\"\ntype = \"dylib\"\nplugin = \"p\"\ncommand = [\"x\"]\n",
            ),
            ("h.toml", "name = [\n"),
        ],
        expect![[r#"
            cluster demo nodes ["node1"] store Embedded { path: "DIR/run/state" }
            monitor d Dylib { plugin: "p", isolation: InProcess } every 5s timeout 2s params {}
            DIR/monitors.d/a.toml:5: unknown field `intervall`, expected one of `name`, `type`, `plugin`, `command`, `mode`, `isolation`, `interval_seconds`, `timeout_seconds`, `enabled`, `params`
            DIR/monitors.d/b.toml:2: type "snmp" is not one of "dylib", "exec", "nagios"
            DIR/monitors.d/c.toml:4: interval_seconds must be more than 0 and at most 86400 seconds, got 0
            DIR/monitors.d/c.toml:3: command must name a program
            DIR/monitors.d/e.toml:1: monitor name "d" is already used by DIR/monitors.d/d.toml
            DIR/monitors.d/f.toml:4: mode "forever" is not one of "oneshot", "stream"
            DIR/monitors.d/g.toml:1: monitor name "g g" must be 1 segment of [A-Za-z0-9._:@+-]
            DIR/monitors.d/g.toml:4: command does not apply to type = "dylib"
            DIR/monitors.d/h.toml:1: unclosed array, expected `]`
        "#]],
    );
}

#[test]
fn cluster_errors_are_fatal_and_collected() {
    check(
        "[cluster]\nname = \"\"\nnodes = [\"n1\", \"n1\", \"bad node\"]\n[store]\ntype = \"zk\"\n",
        &[],
        expect![[r#"
            DIR/cluster.toml:2: cluster.name must not be empty
            DIR/cluster.toml:3: node "n1" is listed twice
            DIR/cluster.toml:3: node name "bad node" must be 1-63 characters of [A-Za-z0-9._-]
            DIR/cluster.toml:5: store.type "zk" is not one of "embedded", "etcd"
        "#]],
    );
    check(
        "[cluster]\nname = \"x\"\n",
        &[],
        expect![[r#"
        DIR/cluster.toml:1: missing field `nodes`
    "#]],
    );
}

#[test]
fn missing_cluster_file_is_reported() {
    let err = load(Path::new("/nonexistent-vigil-dir")).unwrap_err();
    assert_eq!(err.len(), 1);
    assert!(
        err[0]
            .to_string()
            .starts_with("/nonexistent-vigil-dir/cluster.toml: cannot read")
    );
}

#[test]
fn isolation_applies_to_dylib_monitors_only() {
    check(
        CLUSTER,
        &[
            (
                "own.toml",
                "name = \"own\"\ntype = \"dylib\"\nplugin = \"p\"\nisolation = \"process\"\n",
            ),
            (
                "typo.toml",
                "name = \"typo\"\ntype = \"dylib\"\nplugin = \"p\"\nisolation = \"sandbox\"\n",
            ),
            (
                "exec.toml",
                "name = \"exec\"\ntype = \"exec\"\ncommand = [\"x\"]\nisolation = \"process\"\n",
            ),
        ],
        expect![[r#"
            cluster demo nodes ["node1"] store Embedded { path: "DIR/run/state" }
            monitor own Dylib { plugin: "p", isolation: Process } every 5s timeout 2s params {}
            DIR/monitors.d/exec.toml:4: isolation does not apply to type = "exec"
            DIR/monitors.d/typo.toml:4: isolation "sandbox" is not one of "in_process", "process"
        "#]],
    );
}
