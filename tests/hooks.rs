//! Alert hooks (`[[hook]]` in cluster.toml, DESIGN §7a) on three real
//! `vigil host`s over a real etcd: every event of a failover reaches a hook
//! in order with its fields; a hook that hangs or fails never delays a
//! failover; a full queue is counted; `vigil check` and the host agree on a
//! broken hook; the shipped examples deliver a real event.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::*;

const WAIT: Duration = Duration::from_secs(30);
const NODES: [&str; 3] = ["node1", "node2", "node3"];

fn status_of(dir: &ConfigDir) -> Result<Value, String> {
    let out = dir.vigil(&["status", "--json"]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

fn unique_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{prefix}{}x{n}", std::process::id())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One event as the `record` hook wrote it: `VIGIL_EVENT_SEQ`,
/// `VIGIL_EVENT_KIND`, `VIGIL_EVENT_FENCE_TOKEN`, then the JSON from stdin.
#[derive(Debug)]
struct Recorded {
    env_seq: u64,
    env_kind: String,
    env_token: String,
    json: Value,
}

/// Three nodes on one etcd, package `app` (node1, then node2, then node3).
/// `hooks` is appended to every node's cluster.toml; `{dir}` in it is the
/// shared directory the `record` hook writes `events.<node>` into.
struct HookCluster {
    _etcd: Etcd,
    dirs: BTreeMap<&'static str, ConfigDir>,
    hosts: BTreeMap<&'static str, Host>,
    shared: tempfile::TempDir,
    http_port: u16,
}

impl HookCluster {
    fn new(hooks: &str) -> Self {
        let etcd = Etcd::start();
        let shared = tempfile::tempdir().unwrap();
        let name = unique_name("hooks");
        let http_port = free_loopback_port();
        let mut dirs = BTreeMap::new();
        for node in NODES {
            let cfg = ConfigDir::new();
            let api = if node == "node2" {
                format!("[api]\nhttp_listen = \"127.0.0.1:{http_port}\"\n")
            } else {
                String::new()
            };
            cfg.write(
                "cluster.toml",
                &format!(
                    "[cluster]\nname = \"{name}\"\nnodes = [\"node1\", \"node2\", \"node3\"]\n[store]\ntype = \"etcd\"\nendpoints = [\"{}\"]\nlease_ttl_seconds = 2\n{api}{}",
                    etcd.endpoint,
                    hooks.replace("{dir}", &shared.path().display().to_string())
                ),
            );
            cfg.script("pkg/true.sh", "#!/bin/sh\nexit 0\n");
            // Long enough for `halting` to be a state one can see.
            cfg.script("pkg/halt.sh", "#!/bin/sh\nsleep 0.3\n");
            cfg.script(
                "hooks/record.sh",
                &format!(
                    "#!/bin/sh\n{{ printf '%s %s %s ' \"$VIGIL_EVENT_SEQ\" \"$VIGIL_EVENT_KIND\" \"$VIGIL_EVENT_FENCE_TOKEN\"; cat; }} >> {}/events.\"$VIGIL_EVENT_OBSERVED_BY\"\n",
                    shared.path().display()
                ),
            );
            cfg.script("hooks/hangs.sh", "#!/bin/sh\nexec sleep 60\n");
            cfg.script(
                "hooks/fails.sh",
                "#!/bin/sh\necho 'relay refused' >&2\nexit 7\n",
            );
            cfg.write(
                "packages.d/app.toml",
                "name = \"app\"\ntype = \"failover\"\nnodes = [\"node1\", \"node2\", \"node3\"]\nrun = [\"pkg/true.sh\"]\nhalt = [\"pkg/halt.sh\"]\n",
            );
            dirs.insert(node, cfg);
        }
        Self {
            _etcd: etcd,
            dirs,
            hosts: BTreeMap::new(),
            shared,
            http_port,
        }
    }

    fn status(&self, node: &str) -> Result<Value, String> {
        status_of(&self.dirs[node])
    }

    fn app(&self, from: &str) -> Result<Value, String> {
        let status = self.status(from)?;
        status["packages"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "app").cloned())
            .ok_or_else(|| status.to_string())
    }

    fn wait_app_up_on(&self, from: &str, node: &str) -> Value {
        wait_for(WAIT, &format!("app up on {node}, seen from {from}"), || {
            let app = self.app(from)?;
            if app["state"] == "up" && app["running_on"] == serde_json::json!([node]) {
                Ok(app)
            } else {
                Err(app.to_string())
            }
        })
    }

    /// node1 with app, then node2 and node3; returns app as node2 sees it.
    fn start(&mut self) -> Value {
        self.hosts
            .insert("node1", self.dirs["node1"].start_host_as("node1"));
        self.wait_app_up_on("node1", "node1");
        for node in ["node2", "node3"] {
            self.hosts.insert(node, self.dirs[node].start_host_as(node));
        }
        wait_for(WAIT, "3 nodes up, seen from node2 and node3", || {
            for from in ["node2", "node3"] {
                let status = self.status(from)?;
                let up = status["nodes"]
                    .as_array()
                    .map_or(0, |n| n.iter().filter(|n| n["state"] == "up").count());
                if up != 3 {
                    return Err(status.to_string());
                }
            }
            Ok(())
        });
        self.wait_app_up_on("node2", "node1")
    }

    /// Kills node1's host (the node dies; its guard halts app) and waits
    /// for app up on node2 as node2 sees it; returns the time that took.
    fn fail_over(&mut self) -> (u64, Duration) {
        let killed_ms = now_ms();
        let started = Instant::now();
        self.hosts.get_mut("node1").unwrap().kill();
        self.wait_app_up_on("node2", "node2");
        (killed_ms, started.elapsed())
    }

    fn recorded(&self, node: &str) -> Vec<Recorded> {
        let path = self.shared.path().join(format!("events.{node}"));
        // Only whole lines: the hook may be writing the last one.
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n'))
            .map(|l| {
                let mut f = l.splitn(4, ' ');
                let (seq, kind, token, json) = (
                    f.next().unwrap(),
                    f.next().unwrap(),
                    f.next().unwrap(),
                    f.next().unwrap_or_default(),
                );
                Recorded {
                    env_seq: seq.parse().unwrap_or_else(|_| panic!("{l}")),
                    env_kind: kind.to_owned(),
                    env_token: token.to_owned(),
                    json: serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {l}")),
                }
            })
            .collect()
    }

    fn hook_row(&self, node: &str, hook: &str) -> Result<Value, String> {
        let status = self.status(node)?;
        status["hooks"]
            .as_array()
            .and_then(|h| h.iter().find(|h| h["name"] == hook).cloned())
            .ok_or_else(|| status.to_string())
    }

    fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dirs[node].path().join("host.log")).unwrap_or_default()
    }
}

fn describe(events: &[Recorded]) -> String {
    events
        .iter()
        .map(|e| format!("#{} {} {}\n", e.env_seq, e.env_kind, e.json["text"]))
        .collect()
}

#[test]
fn every_event_of_a_failover_reaches_a_hook_in_order_with_its_fields() {
    let mut c = HookCluster::new(
        "[[hook]]\nname = \"record\"\ncommand = [\"hooks/record.sh\"]\nevents = [\"node\", \"package\", \"resource\", \"failover\"]\ntimeout_seconds = 5\n",
    );
    let before = c.start();
    let token_before = before["fence_token"].as_u64().unwrap();
    let seen_before = c.recorded("node2").len();
    let (killed_ms, took) = c.fail_over();
    println!("failover (node1 killed → app up on node2, seen from node2): {took:?}");

    // The failover as node2's hook saw it: node1 down, app off node1,
    // the failover, app up on node2.
    let events = wait_for(WAIT, "the failover's events at node2's hook", || {
        let all = c.recorded("node2");
        let after = &all[seen_before.min(all.len())..];
        let up_on_node2 = after.iter().any(|e| {
            e.json["kind"] == "package"
                && e.json["new_state"] == "up"
                && e.json["new_nodes"] == serde_json::json!(["node2"])
        });
        let failover = after.iter().any(|e| e.json["kind"] == "failover");
        if up_on_node2 && failover {
            Ok(all)
        } else {
            Err(describe(&all))
        }
    });
    println!("node2's hook got:\n{}", describe(&events));

    // In order, none lost, and the variables say what the JSON says.
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.env_seq, i as u64 + 1, "{}", describe(&events));
        assert_eq!(e.json["seq"], e.env_seq, "{}", describe(&events));
        assert_eq!(e.json["kind"], e.env_kind.as_str());
        assert_eq!(e.json["observed_by"], "node2");
        let token = e.json["fence_token"]
            .as_u64()
            .map(|t| t.to_string())
            .unwrap_or_default();
        assert_eq!(e.env_token, token);
        if i > 0 {
            assert!(e.json["at_ms"].as_u64() >= events[i - 1].json["at_ms"].as_u64());
        }
    }
    let after = &events[seen_before..];
    let position = |what: &str, f: &dyn Fn(&Value) -> bool| {
        after
            .iter()
            .position(|e| f(&e.json))
            .unwrap_or_else(|| panic!("no {what} in\n{}", describe(after)))
    };
    let node_down = position("node1 down", &|j| {
        j["kind"] == "node"
            && j["node"] == "node1"
            && j["old_state"] == "up"
            && j["new_state"] == "down"
    });
    let left = position("app leaving node1", &|j| {
        j["kind"] == "package"
            && j["package"] == "app"
            && j["old_nodes"] == serde_json::json!(["node1"])
    });
    let failover = position("the failover", &|j| j["kind"] == "failover");
    let up = position("app up on node2", &|j| {
        j["kind"] == "package"
            && j["new_state"] == "up"
            && j["new_nodes"] == serde_json::json!(["node2"])
    });
    // The move comes just before the package event of the poll that saw
    // app on node2 (starting, or already up when the takeover was quicker
    // than the watcher's 50 ms between polls).
    assert!(
        node_down <= left.min(failover) && left <= up && failover <= up,
        "order: node down {node_down}, left {left}, failover {failover}, up {up}\n{}",
        describe(after)
    );
    // Anything app went through between leaving node1 and running on node2
    // (down, starting) came in between, in that order.
    for e in &after[left..up] {
        if e.json["kind"] == "package" {
            assert_ne!(e.json["new_state"], "up", "{}", describe(after));
        }
    }
    let f = &after[failover].json;
    assert_eq!(f["package"], "app");
    assert_eq!(f["node"], "node2");
    assert_eq!(f["old_nodes"], serde_json::json!(["node1"]));
    assert_eq!(f["new_nodes"], serde_json::json!(["node2"]));
    assert_eq!(f["reason_label"], "failover", "{f}");
    assert!(f["reason"].as_str().is_some_and(|r| !r.is_empty()), "{f}");
    assert!(f["fence_token"].as_u64() > Some(token_before), "{f}");
    assert!(f["at_ms"].as_u64() > Some(killed_ms), "{f}");
    assert!(f["at"].as_str().is_some_and(|a| a.ends_with('Z')), "{f}");
    let u = &after[up].json;
    assert!(u["old_state"].as_str().is_some(), "{u}");
    assert_eq!(u["fence_token"], f["fence_token"]);
    println!(
        "hook saw the failover {} ms after node1 was killed",
        f["at_ms"].as_u64().unwrap() - killed_ms
    );
    // Every host runs its hooks for what it sees: node3's too.
    wait_for(WAIT, "the failover at node3's hook", || {
        let theirs = c.recorded("node3");
        if theirs.iter().any(|e| e.json["kind"] == "failover") {
            Ok(())
        } else {
            Err(describe(&theirs))
        }
    });

    // A switchover: app halts on node2, then starts on node3.
    let seen = c.recorded("node2").len();
    let out = c.dirs["node2"].vigil(&["pkg", "move", "app", "--node", "node3"]);
    assert!(out.status.success(), "{out:?}");
    c.wait_app_up_on("node2", "node3");
    let events = wait_for(WAIT, "the switchover's events at node2's hook", || {
        let all = c.recorded("node2");
        let done = all[seen.min(all.len())..].iter().any(|e| {
            e.json["kind"] == "package"
                && e.json["new_state"] == "up"
                && e.json["new_nodes"] == serde_json::json!(["node3"])
        });
        if done { Ok(all) } else { Err(describe(&all)) }
    });
    let after = &events[seen..];
    println!("node2's hook got for the switchover:\n{}", describe(after));
    let halting = after
        .iter()
        .position(|e| {
            e.json["kind"] == "package"
                && e.json["new_state"] == "halting"
                && e.json["old_nodes"] == serde_json::json!(["node2"])
        })
        .unwrap_or_else(|| panic!("no halting on node2 in\n{}", describe(after)));
    let moved = after
        .iter()
        .position(|e| e.json["kind"] == "failover")
        .unwrap_or_else(|| panic!("no move in\n{}", describe(after)));
    let up3 = after
        .iter()
        .position(|e| e.json["kind"] == "package" && e.json["new_state"] == "up")
        .unwrap();
    assert!(halting < moved && moved <= up3, "{}", describe(after));
    let m = &after[moved].json;
    assert_eq!(m["old_nodes"], serde_json::json!(["node2"]), "{m}");
    assert_eq!(m["new_nodes"], serde_json::json!(["node3"]), "{m}");
    assert!(m["fence_token"].as_u64() > f["fence_token"].as_u64(), "{m}");

    let row = c.hook_row("node2", "record").unwrap();
    assert_eq!(row["dropped"], 0, "{row}");
    assert_eq!(row["failed_runs"], 0, "{row}");
}

#[test]
fn a_hanging_or_failing_hook_never_delays_a_failover_and_overflow_is_counted() {
    let mut plain = HookCluster::new("");
    plain.start();
    let (_, without) = plain.fail_over();
    drop(plain);

    let mut c = HookCluster::new(concat!(
        "[[hook]]\nname = \"hangs\"\ncommand = [\"hooks/hangs.sh\"]\ntimeout_seconds = 4\nqueue_length = 1\n",
        "[[hook]]\nname = \"fails\"\ncommand = [\"hooks/fails.sh\"]\nevents = [\"node\", \"failover\"]\nretries = 2\n",
    ));
    c.start();
    let (_, with) = c.fail_over();
    println!(
        "failover (node1 killed → app up on node2, seen from node2): {without:?} without hooks, {with:?} with a hook that hangs and one that fails"
    );
    // Generous sanity only: the figure is printed above.
    assert!(
        with < without + Duration::from_secs(10),
        "{with:?} vs {without:?}"
    );

    // The hanging hook was killed at its timeout and its queue of one
    // overflowed: counted in status and in /metrics.
    let hangs = wait_for(
        WAIT,
        "the hanging hook timed out and dropped events",
        || {
            let row = c.hook_row("node2", "hangs")?;
            if row["timed_out_runs"].as_u64() >= Some(1) && row["dropped"].as_u64() >= Some(1) {
                Ok(row)
            } else {
                Err(row.to_string())
            }
        },
    );
    println!("node2's hangs hook: {hangs}");
    assert!(
        hangs["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out")),
        "{hangs}"
    );
    let (_, metrics) = http_get(c.http_port, "/metrics").unwrap();
    let dropped = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vigil_hook_dropped_total{hook=\"hangs\"} "))
        .unwrap_or_else(|| panic!("no dropped count for hangs in\n{metrics}"));
    assert!(dropped.parse::<f64>().unwrap() >= 1.0, "{metrics}");
    // Logged once per burst, not once per dropped event.
    let log = c.log("node2");
    let bursts = log
        .lines()
        .filter(|l| l.contains("hook queue full") && l.contains("hook=hangs"))
        .count() as u64;
    assert!(
        bursts >= 1 && bursts <= hangs["dropped"].as_u64().unwrap(),
        "{bursts} lines for {hangs}"
    );

    // The failing hook: tried 1 + 2 times per event, logged with its name
    // and exit status, then given up.
    let fails = wait_for(WAIT, "the failing hook given up", || {
        let row = c.hook_row("node2", "fails")?;
        if row["given_up"].as_u64() >= Some(1) {
            Ok(row)
        } else {
            Err(row.to_string())
        }
    });
    assert!(fails["failed_runs"].as_u64() >= Some(3), "{fails}");
    assert_eq!(fails["delivered"], 0, "{fails}");
    assert!(
        fails["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("exited with status 7: relay refused")),
        "{fails}"
    );
    let log = c.log("node2");
    assert!(
        log.lines().any(|l| l.contains("hook failed")
            && l.contains("hook=fails")
            && l.contains("exited with status 7")),
        "{log}"
    );
    let text = c.dirs["node2"].vigil(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("HOOK ") && text.contains("hangs"), "{text}");
}

#[test]
fn check_and_host_leave_out_a_hook_whose_program_is_not_executable() {
    let cfg = ConfigDir::new();
    cfg.write(
        "cluster.toml",
        "[cluster]\nname = \"test\"\nnodes = [\"node1\"]\n\n[[hook]]\nname = \"good\"\ncommand = [\"hooks/ok.sh\"]\n\n[[hook]]\nname = \"bad\"\ncommand = [\"hooks/not-executable.sh\"]\n",
    );
    cfg.script("hooks/ok.sh", "#!/bin/sh\nexit 0\n");
    cfg.write("hooks/not-executable.sh", "#!/bin/sh\nexit 0\n");
    let want = format!(
        "{}:10: hook bad: command: {} is not an executable file",
        cfg.path().join("cluster.toml").display(),
        cfg.path().join("hooks/not-executable.sh").display()
    );
    let out = cfg.vigil(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&want),
        "{out:?}"
    );
    let _host = cfg.start_host();
    let status = status_of(&cfg).unwrap();
    let errors = status["config_errors"].to_string();
    assert!(errors.contains("hook bad: command:"), "{status}");
    let hooks: Vec<&str> = status["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(hooks, ["good"], "{status}");
}

fn examples() -> std::path::PathBuf {
    repo_root().join("plugins/examples/hooks")
}

/// The variables and stdin a hook gets, for running an example by hand.
fn sample_event() -> (Vec<(&'static str, &'static str)>, &'static str) {
    (
        vec![
            ("VIGIL_EVENT_SEQ", "7"),
            ("VIGIL_EVENT_KIND", "failover"),
            (
                "VIGIL_EVENT_TEXT",
                "app moved node1 → node2 (failover: up on node2 (failover))",
            ),
            ("VIGIL_EVENT_OBSERVED_BY", "node2"),
            ("VIGIL_EVENT_NEW_STATE", "up"),
            ("VIGIL_EVENT_AT", "2026-01-01T00:00:00Z"),
        ],
        "{\"seq\":7,\"kind\":\"failover\",\"package\":\"app\"}\n",
    )
}

fn run_example(script: &str, args: &[&str]) -> std::process::Output {
    let (env, stdin) = sample_event();
    let mut child = std::process::Command::new(examples().join(script))
        .args(args)
        .envs(env)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn shipped_hook_examples_parse_and_the_syslog_and_webhook_ones_deliver_an_event() {
    let mut scripts: Vec<_> = std::fs::read_dir(examples())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    scripts.sort();
    assert_eq!(scripts.len(), 3, "{scripts:?}");
    for script in &scripts {
        sh(&format!("sh -n {}", script.display()));
        assert!(
            std::fs::read_to_string(script)
                .unwrap()
                .contains("[[hook]]"),
            "{} explains its [[hook]]",
            script.display()
        );
    }

    // syslog.sh through the real logger to a syslog socket of our own.
    require_tool("logger", "bsdutils");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("log");
    let syslog = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    syslog
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let out = run_example("syslog.sh", &[socket.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let mut buf = vec![0u8; 8192];
    let n = syslog.recv(&mut buf).unwrap();
    let message = String::from_utf8_lossy(&buf[..n]);
    println!("syslog got: {message}");
    // daemon.warning is <28>.
    assert!(message.starts_with("<28>"), "{message}");
    assert!(message.contains("vigil"), "{message}");
    assert!(
        message.contains("#7 failover: app moved node1 → node2"),
        "{message}"
    );
    assert!(message.contains("\"package\":\"app\""), "{message}");

    // webhook.sh through the real curl to a listener on loopback.
    require_tool("curl", "curl");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).unwrap();
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    conn.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                        .unwrap();
                    return text;
                }
            }
            if n == 0 {
                return text;
            }
        }
    });
    let out = run_example("webhook.sh", &[&format!("http://127.0.0.1:{port}/vigil")]);
    assert!(out.status.success(), "{out:?}");
    let request = server.join().unwrap();
    println!("webhook got:\n{request}");
    assert!(request.starts_with("POST /vigil "), "{request}");
    assert!(request.contains("X-Vigil-Event: failover"), "{request}");
    assert!(
        request.ends_with("{\"seq\":7,\"kind\":\"failover\",\"package\":\"app\"}\n"),
        "{request}"
    );
    // A receiver that refuses fails the run (so vigil retries it).
    let refused = run_example("webhook.sh", &["http://127.0.0.1:9/none"]);
    assert!(!refused.status.success(), "{refused:?}");
}
