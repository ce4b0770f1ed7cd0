//! What operators look at: the HTTP API (`/api/status`, `/api/packages/<name>/why`,
//! `/healthz`), `/metrics` checked by `promtool`, the cluster page in a real
//! headless chromium, and the CLI's messages and exit codes.

use std::time::Duration;

use vigil_tests::*;

const WAIT: Duration = Duration::from_secs(20);

/// A one-node cluster whose HTTP side listens on `port` given as a bare
/// port (so on loopback), with package `app` (scripts that do nothing).
fn one_node(port: u16) -> ConfigDir {
    let cfg = ConfigDir::new();
    cfg.write(
        "cluster.toml",
        &format!(
            "[cluster]\nname = \"views\"\nnodes = [\"node1\"]\n[api]\nhttp_listen = \"{port}\"\n"
        ),
    );
    cfg.script("pkg/true.sh", "#!/bin/sh\nexit 0\n");
    cfg.write(
        "packages.d/app.toml",
        "name = \"app\"\ntype = \"failover\"\nnodes = [\"node1\"]\nrun = [\"pkg/true.sh\"]\nhalt = [\"pkg/true.sh\"]\n",
    );
    cfg
}

/// `vigil ARGS --json` through `cfg`'s host, parsed.
fn json_of(cfg: &ConfigDir, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = cfg.vigil(args);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// An HTTP GET whose body is JSON; returns (status line, document).
fn get_json(port: u16, path: &str) -> Result<(String, serde_json::Value), String> {
    let (status, body) = http_get(port, path)?;
    let json = serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
    Ok((status, json))
}

#[test]
fn http_api_serves_status_why_and_health_on_loopback() {
    let port = free_loopback_port();
    let cfg = one_node(port);
    let _host = cfg.start_host();
    let cli = wait_for(WAIT, "app up", || {
        let status = json_of(&cfg, &["status", "--json"])?;
        if status["packages"][0]["state"] == "up" {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    });
    // The same document as `vigil status --json`.
    let (code, http) = get_json(port, "/api/status").unwrap();
    assert!(code.contains("200"), "{code}");
    assert_eq!(http, cli);
    assert_eq!(http["nodes"][0]["name"], "node1");

    let (code, why) = get_json(port, "/api/packages/app/why").unwrap();
    assert!(code.contains("200"), "{code}");
    assert_eq!(why, json_of(&cfg, &["why", "app", "--json"]).unwrap());
    assert_eq!(why["running_on"], serde_json::json!(["node1"]));
    let (code, body) = http_get(port, "/api/packages/ghost/why").unwrap();
    assert!(code.contains("404"), "{code}");
    assert!(body.contains("ghost"), "{body}");

    // One node on the embedded store has no lease to doubt.
    let (code, health) = get_json(port, "/healthz").unwrap();
    assert!(code.contains("200"), "{code}");
    assert_eq!(
        health,
        serde_json::json!({"node": "node1", "healthy": true, "lease": "none"})
    );
}

#[test]
fn healthz_is_503_once_the_lease_is_in_doubt() {
    let mut etcd = Etcd::start();
    let port = free_loopback_port();
    let cfg = ConfigDir::new();
    cfg.write(
        "cluster.toml",
        &format!(
            "[cluster]\nname = \"health{}\"\nnodes = [\"node1\"]\n[store]\ntype = \"etcd\"\nendpoints = [\"{}\"]\nlease_ttl_seconds = 2\n[api]\nhttp_listen = \"127.0.0.1:{port}\"\n",
            std::process::id(),
            etcd.endpoint
        ),
    );
    let _host = cfg.start_host_as("node1");
    let (code, health) = wait_for(WAIT, "a sure lease", || {
        let (code, health) = get_json(port, "/healthz")?;
        if code.contains("200") {
            Ok((code, health))
        } else {
            Err(format!("{code} {health}"))
        }
    });
    assert!(code.contains("200"));
    assert_eq!(health["lease"], "sure");
    // Without etcd the lease cannot be renewed: the host stops vouching.
    etcd.stop();
    let health = wait_for(WAIT, "healthz 503", || {
        let (code, health) = get_json(port, "/healthz")?;
        if code.contains("503") {
            Ok(health)
        } else {
            Err(format!("{code} {health}"))
        }
    });
    assert_eq!(
        health,
        serde_json::json!({"node": "node1", "healthy": false, "lease": "in_doubt"})
    );
}

/// An exec monitor `gauges` publishing a percentage, a size in MB, a
/// unitless number and a text, and package `app` requiring the percentage.
fn with_gauges(cfg: &ConfigDir) {
    cfg.script(
        "gauges.sh",
        "#!/bin/sh\nread -r hello\necho '{\"type\":\"hello\",\"protocol\":1,\"publishes\":[\"/g/used_percent\",\"/g/avail_mb\",\"/g/load\",\"/g/status\"]}'\n\
         echo '{\"type\":\"sample\",\"name\":\"/g/used_percent\",\"value\":96.10391525532768,\"unit\":\"%\"}'\n\
         echo '{\"type\":\"sample\",\"name\":\"/g/avail_mb\",\"value\":14422.5,\"unit\":\"MB\"}'\n\
         echo '{\"type\":\"sample\",\"name\":\"/g/load\",\"value\":0.5}'\n\
         echo '{\"type\":\"sample\",\"name\":\"/g/status\",\"value\":\"up\"}'\n",
    );
    cfg.monitor(
        "gauges",
        "name = \"gauges\"\ntype = \"exec\"\ncommand = [\"./gauges.sh\"]\ninterval_seconds = 0.2\ntimeout_seconds = 2\n",
    );
    cfg.write(
        "packages.d/app.toml",
        "name = \"app\"\ntype = \"failover\"\nnodes = [\"node1\"]\nrun = [\"pkg/true.sh\"]\nhalt = [\"pkg/true.sh\"]\n[[resource]]\nname = \"/g/used_percent\"\nup = \"< 99\"\n",
    );
}

/// `name{labels} value` lines of a Prometheus text exposition.
fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn metrics_pass_promtool_and_equal_status_json() {
    require_tool("promtool", "prometheus");
    let port = free_loopback_port();
    let cfg = one_node(port);
    with_gauges(&cfg);
    let _host = cfg.start_host();
    let status = wait_for(WAIT, "app up with its resource up", || {
        let status = json_of(&cfg, &["status", "--json"])?;
        let p = &status["packages"][0];
        if p["state"] == "up" && p["resources"][0]["state"] == "up" {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    });
    let resls = cfg.resls("/g").unwrap();
    let (code, text) = http_get(port, "/metrics").unwrap();
    assert!(code.contains("200"), "{code}");

    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    std::io::Write::write_all(&mut promtool.stdin.take().expect("stdin"), text.as_bytes())
        .expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let m = samples(&text);
    let get = |key: &str| {
        *m.get(key)
            .unwrap_or_else(|| panic!("{key} missing in\n{text}"))
    };
    assert_eq!(status["nodes"][0]["state"], "up");
    assert_eq!(get(r#"vigil_node_up{node="node1"}"#), 1.0);
    assert_eq!(
        status["packages"][0]["running_on"],
        serde_json::json!(["node1"])
    );
    assert_eq!(get(r#"vigil_package_up{package="app",node="node1"}"#), 1.0);
    assert_eq!(
        get(r#"vigil_package_state{package="app",node="node1",state="up"}"#),
        1.0
    );
    assert_eq!(
        get(r#"vigil_package_state{package="app",node="node1",state="down"}"#),
        0.0
    );
    assert_eq!(
        get(r#"vigil_resource_up{resource="/g/used_percent",package="app"}"#),
        1.0
    );
    // Numbers in base units, the unit in the name; the same values as resls.
    let value = |name: &str| {
        resls["resources"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == name))
            .and_then(|r| r["value"].as_f64())
            .unwrap_or_else(|| panic!("{name} in {resls}"))
    };
    assert_eq!(
        get(r#"vigil_resource_ratio{resource="/g/used_percent",monitor="gauges"}"#),
        value("/g/used_percent") / 100.0
    );
    assert_eq!(
        get(r#"vigil_resource_bytes{resource="/g/avail_mb",monitor="gauges"}"#),
        value("/g/avail_mb") * 1048576.0
    );
    assert_eq!(
        get(r#"vigil_resource_value{resource="/g/load",monitor="gauges"}"#),
        0.5
    );
    assert_eq!(
        get(r#"vigil_resource_text_info{resource="/g/status",monitor="gauges",value="up"}"#),
        1.0
    );
    assert_eq!(get(r#"vigil_build_info{version="0.1.0"}"#), 1.0);
    assert!(get(r#"vigil_monitor_poll_duration_seconds_count{monitor="gauges"}"#) >= 1.0);
    assert!(get("process_resident_memory_bytes") > 0.0);
    assert!(get("process_open_fds") > 0.0);
}
