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

/// Headless chromium driven over the DevTools protocol on a pipe
/// (`--remote-debugging-pipe`: commands on fd 3, answers on fd 4, each a
/// JSON object ended by NUL), so the test needs no websocket client. Killed
/// with its helper processes when dropped.
struct Browser {
    child: std::process::Child,
    to: std::fs::File,
    from: std::io::BufReader<std::fs::File>,
    next_id: u64,
    session: String,
    profile: tempfile::TempDir,
}

/// Flags every headless chromium of these tests runs with: as root it
/// needs `--no-sandbox`; no GPU, no first-run work.
const CHROMIUM_FLAGS: [&str; 5] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-dev-shm-usage",
];

impl Browser {
    fn open(url: &str) -> Self {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        require_tool("chromium", "chromium");
        let profile = tempfile::Builder::new()
            .prefix("vigil-chromium-")
            .tempdir()
            .expect("tempdir");
        let (child_reads, we_write) = nix::unistd::pipe().expect("pipe");
        let (we_read, child_writes) = nix::unistd::pipe().expect("pipe");
        let (r, w) = (child_reads.as_raw_fd(), child_writes.as_raw_fd());
        let mut command = std::process::Command::new("chromium");
        command
            .args(CHROMIUM_FLAGS)
            .arg("--remote-debugging-pipe")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork
        // and exec. Both ends are first moved above fd 10 so that placing
        // one at 3 cannot overwrite the other; dup2 clears close-on-exec.
        unsafe {
            command.pre_exec(move || {
                let r = libc::fcntl(r, libc::F_DUPFD_CLOEXEC, 10);
                let w = libc::fcntl(w, libc::F_DUPFD_CLOEXEC, 10);
                if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start chromium");
        drop((child_reads, child_writes));
        let mut browser = Self {
            child,
            to: std::fs::File::from(we_write),
            from: std::io::BufReader::new(std::fs::File::from(we_read)),
            next_id: 0,
            session: String::new(),
            profile,
        };
        let target = browser.call("Target.createTarget", serde_json::json!({ "url": url }));
        let attached = browser.call(
            "Target.attachToTarget",
            serde_json::json!({ "targetId": target["targetId"], "flatten": true }),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        browser
    }

    /// Sends one command (to the page once attached) and returns its result.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        use std::io::{BufRead, Write};
        self.next_id += 1;
        let id = self.next_id;
        let mut message = serde_json::json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = self.session.clone().into();
        }
        let mut bytes = serde_json::to_vec(&message).expect("encode");
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        loop {
            let mut answer = Vec::new();
            let n = self.from.read_until(0, &mut answer).expect("read chromium");
            assert!(n > 0, "chromium closed its pipe");
            answer.pop();
            let answer: serde_json::Value = serde_json::from_slice(&answer).expect("json");
            // Events (no id) and other answers are not ours.
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page; its value (null on exceptions).
    fn eval(&mut self, expression: &str) -> serde_json::Value {
        let out = self.call(
            "Runtime.evaluate",
            serde_json::json!({ "expression": expression, "returnByValue": true }),
        );
        out["result"]["value"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its renderer and helper processes name the profile directory.
        let profile = self.profile.path().display().to_string();
        for (pid, _) in processes_matching(&profile) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// `chromium --headless ARGS URL` with a throwaway profile; its stdout.
fn chromium(args: &[&str], url: &str) -> String {
    require_tool("chromium", "chromium");
    let profile = tempfile::Builder::new()
        .prefix("vigil-chromium-")
        .tempdir()
        .expect("tempdir");
    let out = std::process::Command::new("chromium")
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Three config dirs for hosts on a real etcd; node1 serves HTTP on `port`.
/// Packages: `web` prefers node2 then node3, `db` prefers node1, `all` runs
/// on every node.
fn three_nodes(etcd: &Etcd, port: u16) -> Vec<(&'static str, ConfigDir)> {
    let name = format!("page{}", std::process::id());
    ["node1", "node2", "node3"]
        .into_iter()
        .map(|node| {
            let cfg = ConfigDir::new();
            let http = if node == "node1" {
                format!("[api]\nhttp_listen = \"{port}\"\n")
            } else {
                String::new()
            };
            cfg.write(
                "cluster.toml",
                &format!(
                    "[cluster]\nname = \"{name}\"\nnodes = [\"node1\", \"node2\", \"node3\"]\n[store]\ntype = \"etcd\"\nendpoints = [\"{}\"]\nlease_ttl_seconds = 2\n{http}",
                    etcd.endpoint
                ),
            );
            cfg.script("pkg/true.sh", "#!/bin/sh\nexit 0\n");
            let scripts = "run = [\"pkg/true.sh\"]\nhalt = [\"pkg/true.sh\"]\n";
            cfg.write(
                "packages.d/web.toml",
                &format!("name = \"web\"\ntype = \"failover\"\nnodes = [\"node2\", \"node3\", \"node1\"]\n{scripts}"),
            );
            cfg.write(
                "packages.d/db.toml",
                &format!("name = \"db\"\ntype = \"failover\"\nnodes = [\"node1\", \"node2\", \"node3\"]\n{scripts}"),
            );
            cfg.write(
                "packages.d/all.toml",
                &format!("name = \"all\"\ntype = \"multi_node\"\nnodes = [\"*\"]\n{scripts}"),
            );
            (node, cfg)
        })
        .collect()
}

/// Where each package runs, from `status --json`: "name=state@nodes".
fn placement(status: &serde_json::Value) -> Vec<String> {
    status["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let mut on: Vec<&str> = p["running_on"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str())
                .collect();
            // A multi-node package lists its nodes in the order they joined.
            on.sort_unstable();
            format!(
                "{}={}@{}",
                p["name"].as_str().unwrap_or_default(),
                p["state"].as_str().unwrap_or_default(),
                on.join(",")
            )
        })
        .collect()
}

#[test]
fn cluster_page_shows_every_node_and_package_and_follows_a_failover_live() {
    require_tool("chromium", "chromium");
    let etcd = Etcd::start();
    let port = free_loopback_port();
    let dirs = three_nodes(&etcd, port);
    // node2 first, so that the failover packages start there (failback is
    // manual: they stay when the others join).
    let node2 = dirs[1].1.start_host_as("node2");
    wait_for(Duration::from_secs(30), "web and db on node2", || {
        let status = json_of(&dirs[1].1, &["status", "--json"])?;
        let p = placement(&status);
        if p.contains(&"web=up@node2".to_owned()) && p.contains(&"db=up@node2".to_owned()) {
            Ok(())
        } else {
            Err(status.to_string())
        }
    });
    let mut hosts = vec![
        dirs[0].1.start_host_as("node1"),
        node2,
        dirs[2].1.start_host_as("node3"),
    ];
    let node1 = &dirs[0].1;
    let settled = ["all=up@node1,node2,node3", "db=up@node2", "web=up@node2"];
    wait_for(Duration::from_secs(30), "the seed placement", || {
        let status = json_of(node1, &["status", "--json"])?;
        let up = status["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().all(|n| n["state"] == "up"));
        if up && placement(&status) == settled {
            Ok(())
        } else {
            Err(status.to_string())
        }
    });
    let url = format!("http://127.0.0.1:{port}/");

    // What a browser shows on first load: every node and package, states.
    // The page renders the host's status as polled every 500 ms, so it may
    // trail `status --json` by one poll.
    let dom = wait_for(
        Duration::from_secs(10),
        "the page to show the seed placement",
        || {
            let dom = chromium(&["--dump-dom"], &url);
            for node in ["node1", "node2", "node3"] {
                let cell = format!("<th data-node=\"{node}\" data-state=\"up\" class=\"good\">");
                if !dom.contains(&cell) {
                    return Err(format!("{cell} not in\n{dom}"));
                }
            }
            for (package, on) in [("web", "node2"), ("db", "node2")] {
                let row = format!(
                    "<tr data-package=\"{package}\" data-state=\"up\" data-running-on=\"{on}\">"
                );
                if !dom.contains(&row) {
                    return Err(format!("{row} not in\n{dom}"));
                }
            }
            Ok(dom)
        },
    );
    let all = dom
        .split("<tr data-package=\"all\" data-state=\"up\"")
        .nth(1)
        .and_then(|row| row.split("</tr>").next())
        .unwrap_or_else(|| panic!("no row of package all, up, in\n{dom}"));
    for node in ["node1", "node2", "node3"] {
        let cell = format!("<td class=\"cell good\" data-node=\"{node}\">up</td>");
        assert!(all.contains(&cell), "{cell} not in {all}");
    }
    let shot = target_dir().join("cluster-page.png");
    chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1000,760",
            "--hide-scrollbars",
        ],
        &url,
    );
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG: {}", shot.display());

    // The same page, left open while node2 dies: web moves to node3.
    let mut browser = Browser::open(&url);
    let load = wait_for(WAIT, "the page and its event stream", || {
        let v = browser.eval("document.readyState=='complete' && +document.body.dataset.updates>0 && window.vigilLoad");
        if v.is_number() {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    });
    let running_on = "document.querySelector('tr[data-package=web]').dataset.runningOn";
    assert_eq!(browser.eval(running_on), "node2");
    hosts[1].kill();
    let (mut seen_by_cli, mut seen_by_page) = (None, None);
    let start = std::time::Instant::now();
    while seen_by_cli.is_none() || seen_by_page.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "web did not move to node3: status {:?}, page {}",
            json_of(node1, &["status", "--json"]).map(|s| placement(&s)),
            browser.eval(running_on)
        );
        if seen_by_cli.is_none()
            && json_of(node1, &["status", "--json"])
                .is_ok_and(|s| placement(&s).contains(&"web=up@node3".to_owned()))
        {
            seen_by_cli = Some(start.elapsed());
        }
        if seen_by_page.is_none() && browser.eval(running_on) == "node3" {
            seen_by_page = Some(start.elapsed());
        }
        if let (Some(cli), None) = (seen_by_cli, seen_by_page) {
            assert!(
                start.elapsed() < cli + Duration::from_secs(2),
                "the page did not show web on node3 within 2 s of status --json: {}",
                browser.eval("document.getElementById('cluster').innerText")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Patched in place: the same page load, never reloaded.
    assert_eq!(browser.eval("window.vigilLoad"), load);
    let events = browser.eval("document.getElementById('events').innerText");
    assert!(
        events
            .as_str()
            .is_some_and(|e| e.contains("web moved node2 → node3")),
        "{events}"
    );
    println!(
        "failover: status --json showed web on node3 after {:?}, the open page after {:?}",
        seen_by_cli.unwrap_or_default(),
        seen_by_page.unwrap_or_default()
    );
    drop(browser);
    drop(hosts);
}

/// `vigil ARGS` through `cfg`: (exit code, stdout, stderr).
fn run(cfg: &ConfigDir, args: &[&str]) -> (Option<i32>, String, String) {
    let out = cfg.vigil(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn host_unreachable_exits_3_and_says_the_os_error_once() {
    let cfg = ConfigDir::new();
    let (code, _, err) = run(&cfg, &["status"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("cannot reach the vigil host"), "{err}");
    assert_eq!(err.matches("os error").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn host_with_a_node_not_in_the_cluster_names_the_flag() {
    let cfg = ConfigDir::new();
    let (code, _, err) = run(&cfg, &["host", "--node", "node3"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--node node3: not in cluster.nodes (node1)") && !err.contains("pass --node"),
        "{err}"
    );
}

#[test]
fn cli_says_what_happened_once_with_the_exit_code_of_design_7() {
    let port = free_loopback_port();
    let cfg = one_node(port);
    with_gauges(&cfg);
    // Cannot run: its resource does not meet the criterion.
    cfg.write(
        "packages.d/stuck.toml",
        "name = \"stuck\"\ntype = \"failover\"\nnodes = [\"node1\"]\nrun = [\"pkg/true.sh\"]\nhalt = [\"pkg/true.sh\"]\n[[resource]]\nname = \"/g/load\"\nup = \"> 5\"\nfall = 2\n",
    );
    cfg.write("packages.d/broken.toml", "name = \"broken\"\ntype = \n");
    let _host = cfg.start_host();
    wait_for(WAIT, "app up", || {
        let status = json_of(&cfg, &["status", "--json"])?;
        let p = placement(&status);
        if p.contains(&"app=up@node1".to_owned()) {
            Ok(())
        } else {
            Err(status.to_string())
        }
    });
    let check = |args: &[&str], want_code: i32, want_text: &str| {
        let (code, out, err) = run(&cfg, args);
        assert_eq!(code, Some(want_code), "{args:?}: {out}{err}");
        let text = format!("{out}{err}");
        assert!(text.contains(want_text), "{args:?}: {text}");
        assert_eq!(
            text.matches(want_text).count(),
            1,
            "{args:?} says it once: {text}"
        );
    };
    check(&["resls", "/nosuch"], 1, "no resource at or below /nosuch");
    check(&["resls", "nosuch"], 2, "resls PATH");
    check(&["pkg", "move", "app"], 2, "pkg move app needs --node NODE");
    check(&["pkg", "run", "ghost"], 1, "no package named \"ghost\"");
    check(
        &["pkg", "move", "app", "--node", "node1"],
        0,
        "app already runs on node1: nothing to do",
    );
    check(&["pkg", "run", "app"], 0, "app already runs on node1");
    check(&["pkg", "run", "stuck"], 1, "stuck cannot run anywhere");
    check(
        &["pkg", "move", "app", "--node", "node9"],
        1,
        "node \"node9\" is not in cluster.nodes",
    );
    check(
        &["why", "broken"],
        1,
        "file packages.d/broken.toml is broken: line 2",
    );
    check(
        &["pkg", "run", "broken"],
        1,
        "file packages.d/broken.toml is broken",
    );
    // why: the value against the criterion, with the hysteresis counts.
    let why = json_of(&cfg, &["why", "stuck", "--json"]).unwrap();
    let r = &why["resources"][0];
    assert_eq!(r["name"], "/g/load", "{why}");
    assert_eq!(r["criterion"], "> 5", "{why}");
    assert_eq!(r["detail"], "0.5 does not meet > 5", "{why}");
    assert_eq!(
        (r["rise"].as_u64(), r["fall"].as_u64()),
        (Some(1), Some(2)),
        "{why}"
    );
    // A resource starts pending and is down after `fall` bad samples.
    wait_for(Duration::from_secs(20), "/g/load down in why", || {
        let (_, text, _) = run(&cfg, &["why", "stuck"]);
        if text
            .contains("resource /g/load is down: 0.5 does not meet > 5 (0 good in a row of rise 1,")
        {
            Ok(())
        } else {
            Err(text)
        }
    });
    // --wait returns once it is done: no polling needed after it.
    check(&["pkg", "halt", "app", "--wait=20"], 0, "app is down");
    assert!(
        placement(&json_of(&cfg, &["status", "--json"]).unwrap()).contains(&"app=down@".to_owned())
    );
    check(&["pkg", "run", "app", "--wait"], 0, "app is up on node1");
    assert!(
        placement(&json_of(&cfg, &["status", "--json"]).unwrap())
            .contains(&"app=up@node1".to_owned())
    );
    // -v: values and criteria.
    let (code, text, _) = run(&cfg, &["status", "-v"]);
    assert_eq!(code, Some(0));
    assert!(
        text.contains("/g/used_percent") && text.contains("96.1%") && text.contains("up when < 99"),
        "{text}"
    );
    assert!(!text.contains("\x1b["), "no colour on a pipe: {text}");
}

#[test]
fn status_watch_redraws_when_something_changes() {
    use std::io::BufRead;
    let port = free_loopback_port();
    let cfg = one_node(port);
    let _host = cfg.start_host();
    let mut watch = std::process::Command::new(vigil_bin())
        .arg("-c")
        .arg(cfg.path())
        .args(["status", "--watch"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("status --watch");
    let mut lines = std::io::BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let mut seen = String::new();
    let mut next_until = |want: &str, seen: &mut String| {
        for line in lines.by_ref() {
            let line = line.expect("a line");
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(want) {
                return;
            }
        }
        panic!("status --watch ended before {want:?}: {seen}");
    };
    next_until("app              up", &mut seen);
    assert!(cfg.vigil(&["pkg", "halt", "app"]).status.success());
    // A new frame after a separator, without asking again.
    next_until("---", &mut seen);
    next_until("app              ", &mut seen);
    let _ = watch.kill();
    let _ = watch.wait();
    let last = seen.rsplit("---").next().unwrap_or_default();
    assert!(
        last.contains("disabled") && !last.contains("app              up"),
        "{seen}"
    );
}

#[test]
fn monitor_list_and_status_show_broken_files_refused_samples_and_last_errors() {
    let cfg = ConfigDir::new();
    let exec = |name: &str, publishes: &str, body: &str| {
        cfg.script(
            &format!("{name}.sh"),
            &format!(
                "#!/bin/sh\nread -r hello\necho '{{\"type\":\"hello\",\"protocol\":1,\"publishes\":[\"{publishes}\"]}}'\n{body}\n"
            ),
        );
        cfg.monitor(
            name,
            &format!("name = \"{name}\"\ntype = \"exec\"\ncommand = [\"./{name}.sh\"]\ninterval_seconds = 0.2\ntimeout_seconds = 2\n"),
        );
    };
    exec(
        "owner",
        "/dup/x",
        "echo '{\"type\":\"sample\",\"name\":\"/dup/x\",\"value\":1}'",
    );
    // Publishes a resource `owner` publishes, and one outside its declaration.
    exec(
        "second",
        "/dup/x",
        "sleep 0.3\necho '{\"type\":\"sample\",\"name\":\"/dup/x\",\"value\":2}'\necho '{\"type\":\"sample\",\"name\":\"/other/y\",\"value\":3}'",
    );
    // Fails now and then with an error message, and recovers.
    exec(
        "erring",
        "/erring/x",
        // (Every fifth run: the startup probes run it too. The count is kept
        // beside the script: monitors run in the host's working directory.)
        "runs=\"$(dirname \"$0\")/runs\"; n=$(cat \"$runs\" 2>/dev/null || echo 0); n=$((n+1)); echo $n > \"$runs\"\nif [ $((n % 5)) -eq 0 ]; then echo '{\"type\":\"error\",\"message\":\"no tool installed\"}'; else echo '{\"type\":\"sample\",\"name\":\"/erring/x\",\"value\":1}'; fi",
    );
    cfg.monitor("bad", "name = \"bad\"\ntype = \n");
    let _host = cfg.start_host();
    let monitor = |name: &str| {
        wait_for(WAIT, name, || {
            let m = cfg.monitor_state(name)?;
            if m["state"] == "ok"
                && (m["refused_samples"].as_u64() > Some(0) || m["last_error"].is_string())
            {
                Ok(m)
            } else {
                Err(m.to_string())
            }
        })
    };
    let second = monitor("second");
    let refused = second["last_refused"].as_str().unwrap_or_default();
    assert!(
        refused.contains("is published by monitor owner")
            || refused.contains("matches none of its declared patterns"),
        "{second}"
    );
    let erring = monitor("erring");
    assert_eq!(erring["last_error"], "no tool installed", "{erring}");

    let (code, list, _) = run(&cfg, &["monitor", "list"]);
    assert_eq!(code, Some(0));
    for want in [
        "samples refused, last: monitor second:",
        // As `last error <time>: ...` once recovered, as the reason while failed.
        "no tool installed",
        "file monitors.d/bad.toml is broken: line 2:",
    ] {
        assert!(list.contains(want), "{want:?} not in\n{list}");
    }
    let (code, status, _) = run(&cfg, &["status"]);
    assert_eq!(code, Some(0));
    assert!(
        status.contains("MONITOR PROBLEMS") && status.contains("no tool installed"),
        "{status}"
    );
}

#[test]
fn status_verbose_and_the_page_show_service_pids_restarts_fail_counts_and_policies() {
    let port = free_loopback_port();
    let cfg = one_node(port);
    cfg.write(
        "packages.d/app.toml",
        "name = \"app\"\ntype = \"failover\"\nnodes = [\"node1\"]\nfailback_policy = \"automatic\"\npriority = 5\nrun = [\"pkg/true.sh\"]\nhalt = [\"pkg/true.sh\"]\n\n[[service]]\nname = \"server\"\ncommand = [\"/bin/sleep\", \"3141\"]\nrestarts = 3\n",
    );
    let _host = cfg.start_host();
    let service = |want: &dyn Fn(&serde_json::Value) -> bool| {
        wait_for(WAIT, "the service in status --json", || {
            let p = cfg.package_status("app")?;
            let s = &p["services_here"][0];
            if want(s) { Ok(p) } else { Err(p.to_string()) }
        })
    };
    let p = service(&|s| s["state"] == "running" && s["pid"].is_i64());
    assert_eq!(p["policy"]["failover_policy"], "configured_node", "{p}");
    assert_eq!(p["policy"]["failback_policy"], "automatic", "{p}");
    assert_eq!(p["policy"]["auto_run"], true, "{p}");
    assert_eq!(p["policy"]["priority"], 5, "{p}");
    assert_eq!(p["policy"]["type"], "failover", "{p}");
    let s = &p["services_here"][0];
    assert_eq!(
        (
            s["restarts"].as_u64(),
            s["restart_limit"].as_u64(),
            s["fail_count"].as_u64()
        ),
        (Some(0), Some(3), Some(0)),
        "{p}"
    );
    // The pid is the service's: killing it is seen, counted and restarted.
    let pid = s["pid"].as_i64().unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.contains("3141"), "{cmdline:?}");
    sh(&format!("kill -9 {pid}"));
    let p = service(&|s| {
        s["state"] == "running" && s["restarts"] == 1 && s["pid"].as_i64() != Some(pid)
    });
    let s = &p["services_here"][0];
    assert_eq!(s["fail_count"], 1, "{p}");
    assert!(
        s["last_failure"]
            .as_str()
            .is_some_and(|l| l.starts_with("killed by signal 9 at ")),
        "{p}"
    );
    let new_pid = s["pid"].as_i64().unwrap();
    let (code, text, _) = run(&cfg, &["status", "-v"]);
    assert_eq!(code, Some(0));
    for want in [
        "failover package, failover_policy configured_node, failback_policy automatic, auto_run yes, priority 5, nodes node1",
        "service server",
        &format!("running  pid {new_pid:<8} restarts 1/3  fails 1 (last killed by signal 9 at "),
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    // The cluster page lists it too.
    let (_, page) = http_get(port, "/").unwrap();
    assert!(
        page.contains("data-service=\"server\"")
            && page.contains(&format!(">{new_pid}<"))
            && page.contains("1 / 3"),
        "{page}"
    );
    // Without -v only a service that failed is shown.
    let (_, text, _) = run(&cfg, &["status"]);
    assert!(
        text.contains("fails 1") && !text.contains("failover_policy"),
        "{text}"
    );
    // `pkg clear` clears the count.
    assert!(cfg.vigil(&["pkg", "clear", "app"]).status.success());
    let p = cfg.package_status("app").unwrap();
    assert_eq!(p["services_here"][0]["fail_count"], 0, "{p}");
}

#[test]
fn check_monitor_list_and_status_flag_duplicate_publishers_with_both_file_names() {
    let cfg = ConfigDir::new();
    for (name, pattern) in [
        ("owner", "/dup/x"),
        ("second", "/dup/*"),
        ("apart", "/apart/x"),
    ] {
        cfg.script(
            &format!("{name}.sh"),
            &format!(
                "#!/bin/sh\nread -r hello\necho '{{\"type\":\"hello\",\"protocol\":1,\"publishes\":[\"{pattern}\"]}}'\n"
            ),
        );
        cfg.monitor(
            name,
            &format!("name = \"{name}\"\ntype = \"exec\"\ncommand = [\"./{name}.sh\"]\ninterval_seconds = 1\n"),
        );
    }
    let want = "duplicate publisher: monitor second declares /dup/*, and monitor owner (monitors.d/owner.toml:3) declares /dup/x";
    let (code, out, err) = run(&cfg, &["check"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("monitors.d/second.toml:3: ") && err.contains(want),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one pair, one line: {err}");
    let out = cfg.vigil(&["check", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], false, "{doc}");
    assert!(
        doc["errors"][0]["message"].as_str().unwrap().contains(want),
        "{doc}"
    );

    // The host runs both, and says so where operators look: the
    // configuration error, and each monitor's row from the declarations
    // they made.
    let _host = cfg.start_host();
    let row = |name: &str, want: &str| {
        wait_for(WAIT, &format!("{name}'s duplicate publisher"), || {
            let m = cfg.monitor_state(name)?;
            if m["duplicate_publishers"] == serde_json::json!([want]) {
                Ok(())
            } else {
                Err(m.to_string())
            }
        })
    };
    row(
        "second",
        "monitor owner declares /dup/x too (this one: /dup/*)",
    );
    row(
        "owner",
        "monitor second declares /dup/* too (this one: /dup/x)",
    );
    assert_eq!(
        cfg.monitor_state("apart").unwrap()["duplicate_publishers"],
        serde_json::json!([])
    );
    for args in [&["monitor", "list"][..], &["status"][..]] {
        let (code, text, _) = run(&cfg, args);
        assert_eq!(code, Some(0), "{args:?}");
        assert!(
            text.contains(want)
                && text.contains("duplicate publisher: monitor owner declares /dup/x too"),
            "{args:?}: {text}"
        );
    }
}

#[test]
fn a_warning_repeated_every_poll_is_logged_once_then_counted() {
    let cfg = ConfigDir::new();
    let exec = |name: &str, publishes: &str, body: &str| {
        cfg.script(
            &format!("{name}.sh"),
            &format!(
                "#!/bin/sh\nread -r hello\necho '{{\"type\":\"hello\",\"protocol\":1,\"publishes\":[\"{publishes}\"]}}'\n{body}\n"
            ),
        );
        cfg.monitor(
            name,
            &format!("name = \"{name}\"\ntype = \"exec\"\ncommand = [\"./{name}.sh\"]\ninterval_seconds = 0.1\ntimeout_seconds = 2\n"),
        );
    };
    // Fails every poll with the same error.
    exec(
        "failing",
        "/failing/x",
        "echo '{\"type\":\"error\",\"message\":\"sensor unplugged\"}'",
    );
    // Every poll sends a sample outside its declaration.
    exec(
        "stray",
        "/stray/x",
        "echo '{\"type\":\"sample\",\"name\":\"/elsewhere/y\",\"value\":1}'",
    );
    let mut host = cfg.start_host();
    wait_for(WAIT, "both monitors to have reported", || {
        if cfg.monitor_state("failing")?["last_error"].is_string()
            && cfg.monitor_state("stray")?["refused_samples"].as_u64() >= Some(20)
        {
            Ok(())
        } else {
            Err(format!(
                "{:?} {:?}",
                cfg.monitor_state("failing"),
                cfg.monitor_state("stray")
            ))
        }
    });
    // About 30 polls each in 3 s.
    std::thread::sleep(Duration::from_secs(3));
    let refused = cfg.monitor_state("stray").unwrap()["refused_samples"]
        .as_u64()
        .unwrap();
    host.stop();
    let log = host.log_text();
    let lines = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    // (Besides the startup's configuration error: its probe failed too.)
    let failing = lines("monitor failed monitor=failing");
    let stray = lines("/elsewhere/y");
    eprintln!("{refused} refused; {failing} lines of the failure, {stray} of the refusal");
    assert!(refused >= 30, "{refused}");
    assert_eq!(failing, 1, "the failure once:\n{log}");
    assert_eq!(stray, 1, "the refusal once:\n{log}");
}

#[test]
fn pkg_halt_of_a_package_that_is_not_running_says_there_is_nothing_to_halt() {
    let cfg = one_node(free_loopback_port());
    let _host = cfg.start_host();
    wait_for(WAIT, "app up", || {
        let p = cfg.package_status("app")?;
        if p["state"] == "up" {
            Ok(())
        } else {
            Err(p.to_string())
        }
    });
    let (code, out, err) = run(&cfg, &["pkg", "halt", "app", "--wait=20"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("halting app; switching disabled"), "{out}");
    let (code, out, err) = run(&cfg, &["pkg", "halt", "app"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out,
        "app is not running (down): nothing to halt; switching disabled until `vigil pkg run app`\n"
    );
}

#[test]
fn why_says_the_value_against_the_criterion_and_no_monitor_declares_it() {
    let cfg = ConfigDir::new();
    // Slower than the host's startup probe, so the host cannot refuse the
    // package needing a resource it never declares (`check` does).
    cfg.script(
        "temp.sh",
        "#!/bin/sh\nread -r hello\nsleep 1\necho '{\"type\":\"hello\",\"protocol\":1,\"publishes\":[\"/custom/temp/*\"]}'\necho '{\"type\":\"sample\",\"name\":\"/custom/temp/celsius\",\"value\":90,\"unit\":\"C\"}'\n",
    );
    cfg.monitor(
        "temp",
        "name = \"temp\"\ntype = \"exec\"\ncommand = [\"./temp.sh\"]\ninterval_seconds = 1\ntimeout_seconds = 5\n",
    );
    cfg.script("pkg/true.sh", "#!/bin/sh\nexit 0\n");
    for (name, resource) in [
        ("cool", "/custom/temp/celsius"),
        ("humid", "/custom/humid/percent"),
    ] {
        cfg.write(
            &format!("packages.d/{name}.toml"),
            &format!("name = \"{name}\"\ntype = \"failover\"\nnodes = [\"node1\"]\nrun = [\"pkg/true.sh\"]\nhalt = [\"pkg/true.sh\"]\n[[resource]]\nname = \"{resource}\"\nup = \"< 80\"\n"),
        );
    }
    let _host = cfg.start_host();
    wait_for(
        WAIT,
        "why to name the value and the missing declaration",
        || {
            let (_, cool, _) = run(&cfg, &["why", "cool"]);
            let (_, humid, _) = run(&cfg, &["why", "humid"]);
            if cool.contains("node1: not eligible: resource /custom/temp/celsius is not up (90C does not meet < 80)")
            && cool.contains("resource /custom/temp/celsius is down: 90C does not meet < 80")
                && humid
                    .contains("resource /custom/humid/percent is pending: no monitor declares it")
            {
                Ok(())
            } else {
                Err(format!("{cool}\n{humid}"))
            }
        },
    );
}
