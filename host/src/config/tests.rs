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
            cluster demo nodes ["node1"] store Embedded { path: "/var/lib/vigil/store" }
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
            cluster demo nodes ["node1"] store Embedded { path: "/var/lib/vigil/store" }
            monitor d Dylib { plugin: "p", isolation: InProcess } every 5s timeout 2s params {}
            DIR/monitors.d/a.toml:5: unknown field `intervall`, expected one of `name`, `type`, `plugin`, `command`, `mode`, `isolation`, `interval_seconds`, `timeout_seconds`, `enabled`, `params`
            DIR/monitors.d/b.toml:2: type "snmp" is not one of "dylib", "exec", "nagios"
            DIR/monitors.d/c.toml:4: interval_seconds must be a number of seconds from 0.01 to 86400, got 0
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
fn an_unknown_fail_fast_action_is_an_error_naming_its_line() {
    check(
        "[cluster]\nname = \"x\"\nnodes = [\"n1\"]\nfail_fast_action = \"panic\"\n",
        &[],
        expect![[r#"
            DIR/cluster.toml:4: cluster.fail_fast_action "panic" is not one of "halt_node", "reboot"
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
fn cluster_values_the_host_could_not_use_are_errors() {
    let long = format!("/tmp/{}", "s".repeat(200));
    check(
        "[cluster]\nname = \"x\"\nnodes = [\"n1\"]\n[api]\nhttp_listen = \"not an address\"\nsocket = \"\"\n[store]\ntype = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\", \"127.0.0.1:99999\", \"http://a b:1\", \"[::1]:2379\", \"nohost\", \"https://etcd-1.example:2379/\"]\nlease_ttl_seconds = 0.5\n",
        &[],
        expect![[r#"
            DIR/cluster.toml:5: api.http_listen "not an address" is not a port ("7878", on loopback) or an IP address and port such as "127.0.0.1:7878"
            DIR/cluster.toml:6: api.socket must not be empty
            DIR/cluster.toml:9: store.endpoints: "127.0.0.1:99999" is not an etcd endpoint such as "http://127.0.0.1:2379": the port is not a number from 1 to 65535
            DIR/cluster.toml:9: store.endpoints: "http://a b:1" is not an etcd endpoint such as "http://127.0.0.1:2379": the host is not a name or an address
            DIR/cluster.toml:9: store.endpoints: "nohost" is not an etcd endpoint such as "http://127.0.0.1:2379": it has no :port
            DIR/cluster.toml:10: store.lease_ttl_seconds must be a number of seconds from 1 to 3600, got 0.5
        "#]],
    );
    check(
        &format!(
            "[cluster]\nname = \"x\"\nnodes = [\"n1\"]\n[api]\nhttp_listen = \"127.0.0.1:99999\"\nsocket = \"{long}\"\n[store]\ntype = \"embedded\"\npath = \"\"\nlease_ttl_seconds = inf\n"
        ),
        &[],
        expect![[r#"
            DIR/cluster.toml:5: api.http_listen "127.0.0.1:99999" is not a port ("7878", on loopback) or an IP address and port such as "127.0.0.1:7878"
            DIR/cluster.toml:6: api.socket: /tmp/ssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssss is too long for a Unix socket (205 bytes; with its temporary name 216, limit 107)
            DIR/cluster.toml:9: store.path must not be empty
            DIR/cluster.toml:10: store.lease_ttl_seconds must be a number of seconds from 1 to 3600, got inf
        "#]],
    );
    check(
        "[cluster]\nname = \"x\"\nnodes = [\"n1\"]\n[api]\nhttp_listen = \"[::1]:7878\"\nsocket = \"run/api.sock\"\n[store]\ntype = \"etcd\"\nendpoints = [\"10.0.0.1:2379\"]\nlease_ttl_seconds = 2\n",
        &[(
            "m.toml",
            "name = \"m\"\ntype = \"exec\"\ncommand = [\"x\"]\ninterval_seconds = 1e-300\ntimeout_seconds = 0.01\n",
        )],
        expect![[r#"
            cluster x nodes ["n1"] store Etcd { endpoints: ["10.0.0.1:2379"], lease_ttl: 2s }
            DIR/monitors.d/m.toml:4: interval_seconds must be a number of seconds from 0.01 to 86400, got 1e-300
        "#]],
    );
}

#[test]
fn files_that_are_not_regular_or_too_large_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let monitors = dir.path().join("monitors.d");
    std::fs::create_dir(&monitors).unwrap();
    nix::unistd::mkfifo(
        &monitors.join("fifo.toml"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    std::fs::create_dir(monitors.join("dir.toml")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", monitors.join("zero.toml")).unwrap();
    std::fs::write(monitors.join("big.toml"), vec![b'#'; (1 << 20) + 1]).unwrap();
    std::fs::write(monitors.join("limit.toml"), {
        let mut text = b"name = \"limit\"\ntype = \"exec\"\ncommand = [\"x\"]\n".to_vec();
        text.resize(1 << 20, b'\n');
        text
    })
    .unwrap();
    let (loaded, errors) = load_monitors(&monitors);
    let rendered: String = errors
        .iter()
        .map(|e| format!("{e}\n"))
        .collect::<String>()
        .replace(&dir.path().display().to_string(), "DIR");
    let expected = expect![[r#"
        DIR/monitors.d/big.toml: too large (1048577 bytes, limit 1048576)
        DIR/monitors.d/dir.toml: not a regular file
        DIR/monitors.d/fifo.toml: not a regular file
        DIR/monitors.d/zero.toml: not a regular file
    "#]];
    expected.assert_eq(&rendered);
    assert_eq!(loaded.len(), 1, "the file at the limit loads");
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
            cluster demo nodes ["node1"] store Embedded { path: "/var/lib/vigil/store" }
            monitor own Dylib { plugin: "p", isolation: Process } every 5s timeout 2s params {}
            DIR/monitors.d/exec.toml:4: isolation does not apply to type = "exec"
            DIR/monitors.d/typo.toml:4: isolation "sandbox" is not one of "in_process", "process"
        "#]],
    );
}

/// `[paths]`: the Linux layout by default, relative paths below the config
/// dir, and `check` refusing what the host could not use.
#[test]
fn paths_default_to_the_linux_layout_and_are_validated() {
    fn check(paths: &str, expect: Expect) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a-file"), "").unwrap();
        let text = format!("{CLUSTER}{paths}");
        std::fs::write(dir.path().join("cluster.toml"), &text).unwrap();
        let rendered = match load_cluster(dir.path()) {
            Ok(c) => format!(
                "state {} run {} log {}\nstore {:?} socket {}\n",
                c.paths.state_dir.display(),
                c.paths.run_dir.display(),
                c.paths.log_dir.display(),
                c.store,
                c.api.socket.display()
            ),
            Err(errors) => errors.iter().map(|e| format!("{e}\n")).collect(),
        };
        let rendered = rendered.replace(&dir.path().display().to_string(), "DIR");
        expect.assert_eq(&rendered);
    }
    check(
        "",
        expect![[r#"
            state /var/lib/vigil run /run/vigil log /var/log/vigil
            store Embedded { path: "/var/lib/vigil/store" } socket /run/vigil/vigil.sock
        "#]],
    );
    check(
        "[paths]\nstate_dir = \"run\"\nrun_dir = \"/run/x\"\n",
        expect![[r#"
            state DIR/run run /run/x log /var/log/vigil
            store Embedded { path: "DIR/run/store" } socket /run/x/vigil.sock
        "#]],
    );
    let long = "r".repeat(120);
    check(
        &format!(
            "[paths]\nstate_dir = \"\"\nrun_dir = \"{long}\"\nlog_dir = \"a-file\"\ncache = \"x\"\n"
        ),
        expect![[r#"
            DIR/cluster.toml:8: unknown field `cache`, expected one of `state_dir`, `run_dir`, `log_dir`
        "#]],
    );
    check(
        &format!("[paths]\nstate_dir = \"\"\nrun_dir = \"/{long}\"\nlog_dir = \"a-file\"\n"),
        expect![[r#"
            DIR/cluster.toml:5: paths.state_dir must not be empty
            DIR/cluster.toml:6: paths.run_dir: /rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr/guard.sock is too long for a Unix socket (132 bytes; with its temporary name 138, limit 107)
            DIR/cluster.toml:7: paths.log_dir: DIR/a-file exists and is not a directory
        "#]],
    );
}

#[test]
fn logging_format_is_text_or_json() {
    check(
        &format!("{CLUSTER}[logging]\nformat = \"xml\"\n"),
        &[],
        expect![[r#"
            DIR/cluster.toml:5: logging.format "xml" is not one of "text", "json"
        "#]],
    );
    let dir = tempfile::tempdir().unwrap();
    for (text, want) in [
        ("", LogFormat::Text),
        ("[logging]\nformat = \"text\"\n", LogFormat::Text),
        ("[logging]\nformat = \"json\"\n", LogFormat::Json),
    ] {
        std::fs::write(dir.path().join("cluster.toml"), format!("{CLUSTER}{text}")).unwrap();
        assert_eq!(load_cluster(dir.path()).unwrap().log_format, want, "{text}");
    }
}

#[test]
fn http_listen_is_loopback_unless_an_address_is_named() {
    let check = |text: &str, expect: Expect| {
        expect.assert_eq(&format!("{:?}", super::http_listen_addr(text)));
    };
    check("7878", expect!["Some(127.0.0.1:7878)"]);
    check("0.0.0.0:7878", expect!["Some(0.0.0.0:7878)"]);
    check("[::1]:7878", expect!["Some([::1]:7878)"]);
    check("localhost:7878", expect!["None"]);
    check("70000", expect!["None"]);
}

/// Loads a cluster.toml of `hooks` and renders the hooks that load and the
/// errors of those left out (file:line), with the temp dir as `DIR`.
fn check_hooks(hooks: &str, expect: Expect) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.toml"), format!("{CLUSTER}{hooks}")).unwrap();
    let rendered = match load(dir.path()) {
        Err(errors) => errors.iter().map(|e| format!("{e}\n")).collect::<String>(),
        Ok(config) => {
            let mut out = String::new();
            for h in &config.cluster.hooks {
                out += &format!(
                    "hook {} {:?} events {:?} timeout {:?} retries {} queue {} line {}\n",
                    h.name, h.command, h.events, h.timeout, h.retries, h.queue_length, h.line
                );
            }
            for e in &config.errors {
                out += &format!("{e}\n");
            }
            out
        }
    };
    expect.assert_eq(&rendered.replace(&dir.path().display().to_string(), "DIR"));
}

#[test]
fn hooks_load_with_defaults_and_relative_programs_in_the_config_dir() {
    check_hooks(
        "[[hook]]\nname = \"mail\"\ncommand = [\"/usr/bin/logger\", \"-t\", \"vigil\"]\nevents = [\"node\", \"failover\"]\ntimeout_seconds = 2.5\nretries = 2\nqueue_length = 8\n\n[[hook]]\nname = \"web\"\ncommand = [\"hooks/webhook.sh\"]\n",
        expect![[r#"
            hook mail ["/usr/bin/logger", "-t", "vigil"] events [Node, Failover] timeout 2.5s retries 2 queue 8 line 5
            hook web ["DIR/hooks/webhook.sh"] events [Node, Package, Resource, Failover] timeout 10s retries 0 queue 256 line 13
        "#]],
    );
}

#[test]
fn bad_hooks_are_left_out_with_file_line_errors_and_the_rest_load() {
    check_hooks(
        concat!(
            "[[hook]]\nname = \"kinds\"\ncommand = [\"/bin/true\"]\nevents = [\"node\", \"nodes\"]\n",
            "[[hook]]\nname = \"empty\"\ncommand = []\n",
            "[[hook]]\nname = \"blank\"\ncommand = [\"\"]\n",
            "[[hook]]\nname = \"zero\"\ncommand = [\"/bin/true\"]\ntimeout_seconds = 0\n",
            "[[hook]]\nname = \"none\"\ncommand = [\"/bin/true\"]\nevents = []\n",
            "[[hook]]\nname = \"again\"\ncommand = [\"/bin/true\"]\nretries = 11\nqueue_length = 0\n",
            "[[hook]]\nname = \"good\"\ncommand = [\"/bin/true\"]\n",
            "[[hook]]\nname = \"good\"\ncommand = [\"/bin/true\"]\n",
        ),
        expect![[r#"
            hook good ["/bin/true"] events [Node, Package, Resource, Failover] timeout 10s retries 0 queue 256 line 28
            DIR/cluster.toml:7: hook kinds: event kind "nodes" is not one of "node", "package", "resource", "failover"
            DIR/cluster.toml:10: hook empty: command must name a program
            DIR/cluster.toml:13: hook blank: command must name a program, not ""
            DIR/cluster.toml:17: hook zero: timeout_seconds must be a number of seconds from 0.01 to 86400, got 0
            DIR/cluster.toml:21: hook none: events is empty, so it would never run; leave it out for every event
            DIR/cluster.toml:25: hook again: retries must be from 0 to 10, got 11
            DIR/cluster.toml:26: hook again: queue_length must be from 1 to 100000, got 0
            DIR/cluster.toml:31: hook name "good" is already used on line 28
        "#]],
    );
    // Unknown keys make cluster.toml unusable, as everywhere in it.
    check_hooks(
        "[[hook]]\nname = \"x\"\ncommand = [\"/bin/true\"]\ntimeout = 3\n",
        expect![[r#"
            DIR/cluster.toml:7: unknown field `timeout`, expected one of `name`, `command`, `events`, `timeout_seconds`, `retries`, `queue_length`
        "#]],
    );
}

#[test]
fn lan_monitors_get_the_subnets_of_packages_addresses() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.toml"), CLUSTER).unwrap();
    std::fs::create_dir(dir.path().join("monitors.d")).unwrap();
    std::fs::create_dir(dir.path().join("packages.d")).unwrap();
    std::fs::write(
        dir.path().join("monitors.d/lan.toml"),
        "name = \"lan\"\ntype = \"dylib\"\nplugin = \"vigil_lan\"\n[params]\nsubnets = [\"198.51.100.0/24\", \"192.0.2.0/24\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("monitors.d/load.toml"),
        "name = \"load\"\ntype = \"dylib\"\nplugin = \"vigil_load\"\n",
    )
    .unwrap();
    let package = |name: &str, ips: &[&str]| {
        let mut text = format!(
            "name = \"{name}\"\ntype = \"failover\"\nnodes = [\"node1\"]\nrun = [\"/bin/true\"]\nhalt = [\"/bin/true\"]\n"
        );
        for ip in ips {
            text += &format!("[[ip]]\naddress = \"{ip}\"\n");
        }
        std::fs::write(dir.path().join(format!("packages.d/{name}.toml")), text).unwrap();
    };
    package("a", &["192.0.2.50/24", "2001:db8::50/64"]);
    package("b", &["192.0.2.51/24", "10.1.2.3/16"]);
    let config = load(dir.path()).unwrap();
    assert_eq!(
        config.monitor("lan").unwrap().params["subnets"],
        serde_json::json!([
            "198.51.100.0/24",
            "192.0.2.0/24",
            "2001:db8::/64",
            "10.1.0.0/16"
        ])
    );
    assert_eq!(config.monitor("load").unwrap().params.get("subnets"), None);
}
