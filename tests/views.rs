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
