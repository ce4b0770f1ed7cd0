//! The monitor host end to end: the real `vigil` binary loading real dylib,
//! exec and nagios monitors, and misbehaving ones that must only cost their
//! own resources.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use vigil_tests::*;

const WAIT: Duration = Duration::from_secs(20);

fn known(cfg: &ConfigDir, name: &str) -> Result<serde_json::Value, String> {
    let r = cfg.resource(name)?;
    if r["state"] == "known" {
        Ok(r)
    } else {
        Err(format!("{name} is {r}"))
    }
}

fn unknown_with(cfg: &ConfigDir, name: &str, reason: &str) -> Result<serde_json::Value, String> {
    let r = cfg.resource(name)?;
    let why = r["reason"].as_str().unwrap_or_default();
    if r["state"] == "unknown" && r["value"].is_null() && why.contains(reason) {
        Ok(r)
    } else {
        Err(format!(
            "{name} is {r}, want unknown with reason containing {reason:?}"
        ))
    }
}

fn monitor_failed_with(
    cfg: &ConfigDir,
    monitor: &str,
    reason: &str,
) -> Result<serde_json::Value, String> {
    let m = cfg.monitor_state(monitor)?;
    let why = m["reason"].as_str().unwrap_or_default();
    if m["state"] == "failed" && why.contains(reason) {
        Ok(m)
    } else {
        Err(format!(
            "monitor {monitor} is {m}, want failed with {reason:?}"
        ))
    }
}

#[test]
fn every_plugin_kind_publishes_resources_visible_in_resls() {
    require_tool(
        "/usr/lib/nagios/plugins/check_load",
        "monitoring-plugins-basic",
    );
    let cfg = ConfigDir::new();
    let heartbeat = cfg.write("heartbeat", "alive");
    cfg.monitor(
        "rust",
        &format!(
            "name = \"heartbeat\"\ntype = \"dylib\"\nplugin = \"vigil_example_file\"\ninterval_seconds = 0.5\n[params.files]\nbeat = \"{}\"\n",
            heartbeat.display()
        ),
    );
    let c_lib = cfg.path().join("libuptime.so");
    compile_c_plugin(
        &repo_root().join("plugins/examples/c/uptime_monitor.c"),
        &c_lib,
    );
    cfg.monitor(
        "c",
        "name = \"uptime-c\"\ntype = \"dylib\"\nplugin = \"libuptime.so\"\n",
    );
    // "libuptime.so" has no slash: searched by name; give the path instead.
    cfg.monitor("c", "name = \"uptime-c\"\ntype = \"dylib\"\nplugin = \"./libuptime.so\"\ninterval_seconds = 0.5\n");
    let script = repo_root().join("plugins/examples/exec/proc_running.sh");
    cfg.monitor(
        "shell",
        &format!(
            "name = \"proc-vigil\"\ntype = \"exec\"\ncommand = [\"{}\", \"vigil\"]\ninterval_seconds = 0.5\n",
            script.display()
        ),
    );
    cfg.monitor(
        "nagios",
        "name = \"load\"\ntype = \"nagios\"\ncommand = [\"/usr/lib/nagios/plugins/check_load\", \"-w\", \"1000,1000,1000\", \"-c\", \"2000,2000,2000\"]\ninterval_seconds = 0.5\n",
    );
    let check = cfg.vigil(&["check"]);
    assert!(
        check.status.success(),
        "vigil check: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    let _host = cfg.start_host();
    let beat = wait_for(WAIT, "the rust dylib sample", || {
        known(&cfg, "/example/file/beat/present")
    });
    assert_eq!(beat["value"], "yes");
    assert_eq!(beat["monitor"], "heartbeat");
    let age = wait_for(WAIT, "the rust dylib age", || {
        known(&cfg, "/example/file/beat/age_seconds")
    });
    assert_eq!(age["unit"], "s");
    let uptime = wait_for(WAIT, "the C dylib sample", || {
        known(&cfg, "/example/c/uptime_seconds")
    });
    assert!(uptime["value"].as_f64().unwrap() > 0.0, "{uptime}");
    let running = wait_for(WAIT, "the shell sample", || {
        known(&cfg, "/example/process/vigil/running")
    });
    assert_eq!(
        running["value"], "yes",
        "the host itself is a running `vigil` process"
    );
    let status = wait_for(WAIT, "the nagios status", || {
        known(&cfg, "/nagios/load/status")
    });
    assert_eq!(status["value"], "ok");
    assert!(
        status["reason"].as_str().unwrap().starts_with("LOAD OK"),
        "{status}"
    );
    let load1 = wait_for(WAIT, "nagios perfdata", || {
        known(&cfg, "/nagios/load/load1")
    });
    assert!(load1["value"].as_f64().unwrap() >= 0.0);
    // The file goes away: the next poll reports it.
    std::fs::remove_file(&heartbeat).unwrap();
    wait_for(WAIT, "the file to be reported missing", || {
        let r = cfg.resource("/example/file/beat/present")?;
        if r["value"] == "no" {
            Ok(())
        } else {
            Err(r.to_string())
        }
    });
    // Every listed sample carries an RFC 3339 timestamp.
    let all = cfg.resls("/").unwrap();
    for r in all["resources"].as_array().unwrap() {
        if r["state"] == "known" {
            let updated = r["updated"].as_str().unwrap();
            assert!(
                updated.len() >= 20 && updated.ends_with('Z') && updated.contains('T'),
                "{r}"
            );
        }
    }
}

#[test]
fn misbehaving_monitors_only_lose_their_own_resources() {
    let cfg = ConfigDir::new();
    // Each misbehaves from its third poll on, so its resource is known first.
    let dylib = |name: &str, behavior: &str| {
        cfg.monitor(
            name,
            &format!(
                "name = \"{name}\"\ntype = \"dylib\"\nplugin = \"vigil_testkit\"\ninterval_seconds = 0.2\ntimeout_seconds = 0.5\n[params]\ninstance = \"{name}\"\nbehavior = \"{behavior}\"\nafter_polls = 2\n"
            ),
        );
    };
    dylib("good", "ok");
    dylib("hung", "hang");
    dylib("panicky", "panic");
    dylib("liar", "undeclared");

    // Exec monitors that never exit, print garbage, or print 100 MB.
    let marker = format!("{}", 500_000 + std::process::id());
    cfg.script(
        "never.sh",
        &format!("#!/bin/sh\necho '{{\"type\":\"hello\",\"protocol\":1,\"publishes\":[\"/never/x\"]}}'\nexec sleep {marker}\n"),
    );
    cfg.script(
        "garbage.sh",
        "#!/bin/sh\necho 'this is not the vigil protocol'\n",
    );
    cfg.script(
        "flood.sh",
        "#!/bin/sh\necho '{\"type\":\"hello\",\"protocol\":1,\"publishes\":[\"/flood/x\"]}'\nhead -c 100000000 /dev/zero | tr '\\0' 'x'\n",
    );
    for (name, script) in [
        ("never", "never.sh"),
        ("garbage", "garbage.sh"),
        ("flood", "flood.sh"),
    ] {
        cfg.monitor(
            name,
            &format!("name = \"{name}\"\ntype = \"exec\"\ncommand = [\"./{script}\"]\ninterval_seconds = 0.5\ntimeout_seconds = 1\n"),
        );
    }

    // A library claiming ABI version 2, and a world-writable copy of a good plugin.
    let abi_v2 = cfg.path().join("libabi_v2.so");
    compile_c_plugin(&repo_root().join("tests/fixtures/abi_v2.c"), &abi_v2);
    cfg.monitor(
        "abi2",
        "name = \"abi2\"\ntype = \"dylib\"\nplugin = \"./libabi_v2.so\"\n",
    );
    let writable = cfg.path().join("libwritable.so");
    std::fs::copy(plugin_lib("vigil_testkit"), &writable).unwrap();
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o666)).unwrap();
    cfg.monitor(
        "writable",
        "name = \"writable\"\ntype = \"dylib\"\nplugin = \"./libwritable.so\"\n[params]\ninstance = \"w\"\n",
    );

    let mut host = cfg.start_host();
    // The first stuck poll times out; later ticks find the worker still
    // stuck and say so (and never pile up more polls on it).
    wait_for(WAIT, "hung plugin to be reported", || {
        unknown_with(
            &cfg,
            "/testkit/hung/r0",
            "monitor hung: previous poll has not returned: plugin hung",
        )
    });
    assert!(
        host.log_text().contains("poll timed out after 500ms"),
        "{}",
        host.log_text()
    );
    wait_for(WAIT, "panic to be caught", || {
        unknown_with(
            &cfg,
            "/testkit/panicky/r0",
            "poll panicked: testkit: panicking in poll",
        )
    });
    wait_for(WAIT, "undeclared samples to be refused", || {
        let m = cfg.monitor_state("liar")?;
        let listed = cfg.resource("/elsewhere/x").is_ok();
        if m["samples_received"] == 2
            && !listed
            && m["state"] == "ok"
            && cfg.resource("/testkit/liar/r0").is_ok()
        {
            Ok(())
        } else {
            Err(m.to_string())
        }
    });
    wait_for(WAIT, "never-exiting exec to time out", || {
        monitor_failed_with(&cfg, "never", "timed out after 1s; process group killed")
    });
    wait_for(WAIT, "garbage to be refused", || {
        monitor_failed_with(&cfg, "garbage", "line 1: line is not JSON")
    });
    wait_for(WAIT, "the flood to be cut", || {
        monitor_failed_with(&cfg, "flood", "wrote more than 1048576 bytes")
    });
    wait_for(WAIT, "ABI v2 to be refused", || {
        monitor_failed_with(
            &cfg,
            "abi2",
            "has ABI version 2, this host speaks ABI version 1",
        )
    });
    wait_for(WAIT, "the writable plugin to be refused", || {
        monitor_failed_with(
            &cfg,
            "writable",
            "is writable by group or others (mode 666)",
        )
    });

    // Meanwhile the healthy monitor kept publishing on time: at 0.2 s it
    // must have reported many times, and its sample is fresh.
    let first = wait_for(WAIT, "good samples", || known(&cfg, "/testkit/good/r0"));
    let before = cfg.monitor_state("good").unwrap()["samples_received"]
        .as_u64()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let after = cfg.monitor_state("good").unwrap()["samples_received"]
        .as_u64()
        .unwrap();
    assert!(
        after >= before + 5,
        "good monitor published {} samples in 3 s at 0.2 s",
        after - before
    );
    let now = known(&cfg, "/testkit/good/r0").unwrap();
    assert!(
        now["value"].as_f64() > first["value"].as_f64(),
        "{first} then {now}"
    );
    assert!(
        now["age_seconds"].as_f64().unwrap() < 2.0,
        "good sample is stale: {now}"
    );

    // At most one run of the never-exiting monitor is alive at a time, none
    // is a zombie, and none survives the host.
    let alive = processes_matching(&format!("sleep {marker}"));
    assert!(alive.len() <= 1, "runs pile up: {alive:?}");
    assert!(
        alive.iter().all(|(_, state)| *state != 'Z'),
        "zombie: {alive:?}"
    );
    let status = host.stop().expect("host was running");
    assert!(status.success(), "host exited with {status}");
    wait_for(
        Duration::from_secs(5),
        "no leftover monitor processes",
        || {
            let left = processes_matching(&format!("sleep {marker}"));
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    );
}

#[test]
fn streaming_exec_monitor_pushes_and_is_restarted() {
    let cfg = ConfigDir::new();
    let flag = cfg.path().join("flag");
    cfg.script(
        "stream.sh",
        &format!(
            "#!/bin/sh\nread -r hello\necho '{{\"type\":\"hello\",\"protocol\":1,\"publishes\":[\"/stream/flag\"],\"capabilities\":[\"stream\"]}}'\nwhile :; do\n  if [ -e {flag} ]; then v=up; else v=down; fi\n  echo \"{{\\\"type\\\":\\\"sample\\\",\\\"name\\\":\\\"/stream/flag\\\",\\\"value\\\":\\\"$v\\\"}}\"\n  [ -e {flag}.exit ] && exit 3\n  sleep 0.1\ndone\n",
            flag = flag.display()
        ),
    );
    cfg.monitor("stream", "name = \"stream\"\ntype = \"exec\"\nmode = \"stream\"\ncommand = [\"./stream.sh\"]\ntimeout_seconds = 2\n");
    let _host = cfg.start_host();
    wait_for(WAIT, "down", || {
        let r = known(&cfg, "/stream/flag")?;
        if r["value"] == "down" {
            Ok(())
        } else {
            Err(r.to_string())
        }
    });
    std::fs::write(&flag, "").unwrap();
    wait_for(WAIT, "up", || {
        let r = known(&cfg, "/stream/flag")?;
        if r["value"] == "up" {
            Ok(())
        } else {
            Err(r.to_string())
        }
    });
    // The monitor exits: its resources go unknown, then it is restarted.
    std::fs::write(cfg.path().join("flag.exit"), "").unwrap();
    wait_for(WAIT, "unknown after exit", || {
        unknown_with(&cfg, "/stream/flag", "exited")
    });
    std::fs::remove_file(cfg.path().join("flag.exit")).unwrap();
    wait_for(WAIT, "known again after restart", || {
        known(&cfg, "/stream/flag")
    });
}

#[test]
fn invalid_configs_give_file_line_errors_and_check_exits_1() {
    let cfg = ConfigDir::new();
    cfg.monitor(
        "typo",
        "name = \"typo\"\ntype = \"dylib\"\nplugin = \"vigil_testkit\"\nintervall_seconds = 3\n",
    );
    cfg.monitor(
        "missing",
        "name = \"missing\"\ntype = \"dylib\"\n\nplugin = \"no_such_plugin\"\n",
    );
    cfg.monitor(
        "params",
        "name = \"params\"\ntype = \"dylib\"\nplugin = \"vigil_testkit\"\n[params]\ncount = 3\n",
    );
    cfg.monitor("good", "name = \"good\"\ntype = \"dylib\"\nplugin = \"vigil_testkit\"\n[params]\ninstance = \"g\"\n");
    let out = cfg.vigil(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let dir = cfg.path().display().to_string();
    assert!(
        stderr.contains(&format!(
            "{dir}/monitors.d/typo.toml:4: unknown field `intervall_seconds`"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{dir}/monitors.d/missing.toml:4: monitor missing: plugin \"no_such_plugin\" not found"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{dir}/monitors.d/params.toml:3: monitor params:"))
            && stderr.contains("missing field `instance`"),
        "{stderr}"
    );
    assert!(!stderr.contains("good.toml"), "{stderr}");
    assert_eq!(stderr.lines().count(), 3, "{stderr}");

    // The daemon still runs the good monitor, and the socket is private.
    let _host = cfg.start_host();
    wait_for(WAIT, "the good monitor", || known(&cfg, "/testkit/g/r0"));
    let mode = std::fs::metadata(cfg.path().join("run/vigil.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A broken cluster.toml is fatal and named.
    cfg.write(
        "cluster.toml",
        "[cluster]\nname = \"x\"\nnodes = [\"a\", \"a\"]\n",
    );
    let out = cfg.vigil(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cluster.toml:3: node \"a\" is listed twice")
    );
}

#[test]
fn monitor_test_runs_one_monitor_without_the_daemon() {
    let cfg = ConfigDir::new();
    cfg.monitor("tk", "name = \"tk\"\ntype = \"dylib\"\nplugin = \"vigil_testkit\"\n[params]\ninstance = \"t\"\ncount = 2\n");
    let out = cfg.vigil(&["monitor", "test", "tk", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["declared"], serde_json::json!(["/testkit/t/*"]));
    assert_eq!(v["samples"].as_array().unwrap().len(), 2);
    cfg.monitor("bad", "name = \"bad\"\ntype = \"dylib\"\nplugin = \"vigil_testkit\"\n[params]\ninstance = \"b\"\nbehavior = \"panic\"\n");
    let out = cfg.vigil(&["monitor", "test", "bad"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("poll panicked"),
        "{out:?}"
    );
}

#[test]
fn rust_monitor_served_over_stdio_works_oneshot_and_streaming() {
    let cfg = ConfigDir::new();
    let exe = target_dir().join("vigil_testkit_exec");
    assert!(
        exe.is_file(),
        "{} missing: run `cargo build --workspace`",
        exe.display()
    );
    cfg.monitor(
        "once",
        &format!(
            "name = \"once\"\ntype = \"exec\"\ncommand = [\"{}\"]\ninterval_seconds = 0.3\n[params]\ninstance = \"once\"\ncount = 3\n",
            exe.display()
        ),
    );
    cfg.monitor(
        "streamed",
        &format!(
            "name = \"streamed\"\ntype = \"exec\"\nmode = \"stream\"\ncommand = [\"{}\"]\ninterval_seconds = 60\n[params]\ninstance = \"streamed\"\npush_ms = 50\n",
            exe.display()
        ),
    );
    cfg.monitor(
        "refused",
        &format!(
            "name = \"refused\"\ntype = \"exec\"\ncommand = [\"{}\"]\n[params]\ninstance = \"x\"\ncount = 0\n",
            exe.display()
        ),
    );
    let _host = cfg.start_host();
    wait_for(WAIT, "oneshot samples", || known(&cfg, "/testkit/once/r2"));
    // Polled every 60 s, yet the value climbs: the pushes arrive on their own.
    let first = wait_for(WAIT, "streamed samples", || {
        known(&cfg, "/testkit/streamed/r0")
    });
    wait_for(WAIT, "pushed samples", || {
        let now = known(&cfg, "/testkit/streamed/r0")?;
        if now["value"].as_f64() > first["value"].as_f64() && now["unit"] == "pushes" {
            Ok(())
        } else {
            Err(now.to_string())
        }
    });
    wait_for(WAIT, "bad params to be reported", || {
        monitor_failed_with(
            &cfg,
            "refused",
            "configure: params: count must be 1..=100000",
        )
    });
}

#[test]
fn http_api_serves_status_json_and_metrics_on_loopback() {
    let cfg = ConfigDir::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    cfg.write(
        "cluster.toml",
        &format!("[cluster]\nname = \"test\"\nnodes = [\"node1\"]\n[api]\nhttp_listen = \"127.0.0.1:{port}\"\n"),
    );
    cfg.monitor("tk", "name = \"tk\"\ntype = \"dylib\"\nplugin = \"vigil_testkit\"\ninterval_seconds = 0.2\n[params]\ninstance = \"h\"\n");
    let _host = cfg.start_host();
    wait_for(WAIT, "a sample", || known(&cfg, "/testkit/h/r0"));
    let (status, body) = http_get(port, "/metrics").unwrap();
    assert!(status.contains("200"), "{status}");
    assert!(
        body.contains("vigil_resource_known{resource=\"/testkit/h/r0\",monitor=\"tk\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("vigil_monitor_up{monitor=\"tk\",type=\"dylib\"} 1"),
        "{body}"
    );
    let (_, body) = http_get(port, "/api/resources?path=/testkit").unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["resources"][0]["name"], "/testkit/h/r0");
    let (_, page) = http_get(port, "/").unwrap();
    assert!(
        page.contains("seen from <b>node1</b>") && page.contains("<tr data-monitor=\"tk\">"),
        "{page}"
    );
}

/// Kills whatever still runs `sleep <marker>` when dropped, so a failing
/// test leaves nothing behind either.
struct Sleeps(String);

impl Sleeps {
    /// A `sleep` command line no other test uses: `offset` tells tests apart,
    /// the test process id tells concurrent runs apart.
    fn new(offset: u32) -> Self {
        Self(format!("sleep {}", offset + std::process::id()))
    }

    fn alive(&self) -> Vec<(i32, char)> {
        processes_matching(&self.0)
            .into_iter()
            .filter(|(_, state)| *state != 'Z')
            .collect()
    }

    fn wait_all_gone(&self, what: &str) {
        wait_for(WAIT, what, || {
            let left = self.alive();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{} still running: {left:?}", self.0))
            }
        });
    }
}

impl Drop for Sleeps {
    fn drop(&mut self) {
        for (pid, _) in self.alive() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// An exec monitor script that answers hello, publishes `/<name>/x`, and
/// runs `body` (shell) before exiting.
fn exec_script(cfg: &ConfigDir, name: &str, body: &str) {
    cfg.script(
        &format!("{name}.sh"),
        &format!(
            "#!/bin/sh\nread -r hello\necho '{{\"type\":\"hello\",\"protocol\":1,\"publishes\":[\"/{name}/x\"]}}'\n{body}\n"
        ),
    );
}

fn exec_monitor(cfg: &ConfigDir, name: &str, interval: &str, timeout: &str) {
    cfg.monitor(
        name,
        &format!(
            "name = \"{name}\"\ntype = \"exec\"\ncommand = [\"./{name}.sh\"]\ninterval_seconds = {interval}\ntimeout_seconds = {timeout}\n"
        ),
    );
}

#[test]
fn children_a_oneshot_monitor_leaves_behind_are_killed_after_each_run() {
    let cfg = ConfigDir::new();
    let forgotten = Sleeps::new(610_000);
    let holder = Sleeps::new(620_000);
    let count = cfg.path().join("count");
    // The first five runs each leave ten sleeps in the group (not holding
    // stdout) and one that holds stdout open; later runs are clean, so once
    // the count passes five nothing of ours may be left.
    exec_script(
        &cfg,
        "leaky",
        &format!(
            "n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}\nif [ $n -le 5 ]; then\n  for i in 1 2 3 4 5 6 7 8 9 10; do {forgotten} >/dev/null 2>&1 & done\n  {holder} &\nfi\necho \"{{\\\"type\\\":\\\"sample\\\",\\\"name\\\":\\\"/leaky/x\\\",\\\"value\\\":$n}}\"",
            count = count.display(),
            forgotten = forgotten.0,
            holder = holder.0,
        ),
    );
    exec_monitor(&cfg, "leaky", "0.2", "5");
    let _host = cfg.start_host();
    wait_for(WAIT, "seven runs", || {
        let r = known(&cfg, "/leaky/x")?;
        match r["value"].as_f64() {
            Some(v) if v >= 7.0 => Ok(()),
            _ => Err(r.to_string()),
        }
    });
    forgotten.wait_all_gone("the forgotten children to be killed with their run");
    holder.wait_all_gone("the grandchildren holding stdout to be killed");
}

#[test]
fn host_sigterm_kills_the_children_of_a_running_oneshot_monitor() {
    let cfg = ConfigDir::new();
    let sleeps = Sleeps::new(630_000);
    exec_script(&cfg, "slow", &format!("{} &\nwait", sleeps.0));
    exec_monitor(&cfg, "slow", "60", "50");
    let mut host = cfg.start_host();
    wait_for(WAIT, "the run to start its child", || {
        if sleeps.alive().is_empty() {
            Err("no child yet".to_owned())
        } else {
            Ok(())
        }
    });
    let status = host.stop().expect("host was running");
    assert!(status.success(), "host exited with {status}");
    sleeps.wait_all_gone("the running monitor's children to die with the host");
}

#[test]
fn removing_a_running_exec_monitor_on_reload_kills_its_children() {
    let cfg = ConfigDir::new();
    let sleeps = Sleeps::new(640_000);
    exec_script(&cfg, "removed", &format!("{} &\nwait", sleeps.0));
    exec_monitor(&cfg, "removed", "60", "50");
    exec_script(
        &cfg,
        "kept",
        "echo '{\"type\":\"sample\",\"name\":\"/kept/x\",\"value\":\"up\"}'",
    );
    exec_monitor(&cfg, "kept", "0.5", "5");
    let host = cfg.start_host();
    wait_for(WAIT, "the run to start its child", || {
        if sleeps.alive().is_empty() {
            Err("no child yet".to_owned())
        } else {
            Ok(())
        }
    });
    std::fs::remove_file(cfg.path().join("monitors.d/removed.toml")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for(WAIT, "the removed monitor to be gone", || {
        match cfg.monitor_state("removed") {
            Err(_) => Ok(()),
            Ok(m) => Err(m.to_string()),
        }
    });
    sleeps.wait_all_gone("the removed monitor's running child to be killed");
    wait_for(WAIT, "the kept monitor to go on", || known(&cfg, "/kept/x"));
}

#[test]
fn a_truncated_plugin_is_refused_by_check_and_host_without_a_crash() {
    let cfg = ConfigDir::new();
    // What a deploy that was cut short leaves: the first 3,000 bytes of a
    // good plugin, executable, owned by us.
    let good = std::fs::read(plugin_lib("vigil_testkit")).unwrap();
    let cut = cfg.path().join("libcut.so");
    std::fs::write(&cut, &good[..3000]).unwrap();
    std::fs::set_permissions(&cut, std::fs::Permissions::from_mode(0o755)).unwrap();
    cfg.monitor(
        "cut",
        "name = \"cut\"\ntype = \"dylib\"\nplugin = \"./libcut.so\"\ninterval_seconds = 0.5\n[params]\ninstance = \"cut\"\n",
    );
    cfg.monitor(
        "fine",
        "name = \"fine\"\ntype = \"dylib\"\nplugin = \"vigil_testkit\"\ninterval_seconds = 0.5\n[params]\ninstance = \"fine\"\n",
    );
    let out = cfg.vigil(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let want = format!(
        "plugin {}/./libcut.so is not a complete ELF shared object (the section header table ends at byte",
        cfg.path().display()
    );
    assert!(
        stdout.contains(&want) || stderr.contains(&want),
        "stdout: {stdout}\nstderr: {stderr}"
    );

    let mut host = cfg.start_host();
    wait_for(WAIT, "the cut plugin to be refused", || {
        monitor_failed_with(&cfg, "cut", "is not a complete ELF shared object")
    });
    wait_for(WAIT, "the good plugin to go on", || {
        known(&cfg, "/testkit/fine/r0")
    });
    let status = host.stop().expect("host was running");
    assert!(status.success(), "host exited with {status}");
}

/// Lines of the host log that contain all of `needles`.
fn log_lines(host: &Host, needles: &[&str]) -> usize {
    host.log_text()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

#[test]
fn monitor_output_floods_are_bounded_in_the_host_log() {
    let cfg = ConfigDir::new();
    // 200,000 lines of stderr as fast as the shell can, then a sample.
    cfg.script(
        "noisy.sh",
        "#!/bin/sh\nread -r hello\necho '{\"type\":\"hello\",\"protocol\":1,\"publishes\":[\"/noisy/x\"],\"capabilities\":[\"stream\"]}'\nyes 'stderr flood line' | head -n 200000 >&2\necho '{\"type\":\"sample\",\"name\":\"/noisy/x\",\"value\":\"done\"}'\nexec sleep 600\n",
    );
    cfg.monitor(
        "noisy",
        "name = \"noisy\"\ntype = \"exec\"\nmode = \"stream\"\ncommand = [\"./noisy.sh\"]\ntimeout_seconds = 5\n",
    );
    // 5,000 log messages per run.
    exec_script(
        &cfg,
        "chatty",
        "i=0; while [ $i -lt 5000 ]; do echo '{\"type\":\"log\",\"level\":\"warn\",\"message\":\"chatter\"}'; i=$((i+1)); done\necho '{\"type\":\"sample\",\"name\":\"/chatty/x\",\"value\":\"up\"}'",
    );
    exec_monitor(&cfg, "chatty", "0.5", "20");
    // A 900 kB error message every run.
    exec_script(
        &cfg,
        "wordy",
        "printf '{\"type\":\"error\",\"message\":\"'; head -c 900000 /dev/zero | tr '\\0' 'e'; echo '\"}'",
    );
    exec_monitor(&cfg, "wordy", "0.2", "5");
    let host = cfg.start_host();
    wait_for(WAIT, "the noisy monitor's sample", || {
        let r = known(&cfg, "/noisy/x")?;
        if r["value"] == "done" {
            Ok(())
        } else {
            Err(r.to_string())
        }
    });
    wait_for(WAIT, "two chatty runs", || {
        let n = log_lines(&host, &["monitor=chatty", "lines suppressed"]);
        if n >= 2 {
            Ok(())
        } else {
            Err(format!("{n} suppression notes"))
        }
    });
    let wordy = wait_for(WAIT, "the wordy error", || {
        monitor_failed_with(&cfg, "wordy", "eeee")
    });
    // Ten more runs of each at their intervals.
    std::thread::sleep(Duration::from_secs(2));
    let reason = wordy["reason"].as_str().unwrap();
    assert!(
        reason.len() <= 1024,
        "reason kept whole: {} bytes",
        reason.len()
    );
    assert!(
        reason.ends_with("bytes cut)"),
        "{}",
        &reason[reason.len() - 40..]
    );

    let stderr_lines = log_lines(&host, &["monitor=noisy", "stderr flood line"]);
    assert!(
        (1..1000).contains(&stderr_lines),
        "{stderr_lines} of 200000 stderr lines logged"
    );
    assert!(
        log_lines(&host, &["noisy", "lines suppressed"]) >= 1,
        "no suppression note for the stderr flood"
    );
    let chatter = log_lines(&host, &["chatter"]);
    assert!(chatter < 1000, "{chatter} log messages logged");
    // Identical failures are logged once a minute: once here.
    let failures = log_lines(&host, &["wordy", "monitor failed"]);
    assert_eq!(failures, 1, "the same failure was logged {failures} times");
    let longest = host.log_text().lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2048, "a log line of {longest} bytes");
}

/// `vigil monitor test NAME --json`, parsed, with its exit code.
fn monitor_test_json(cfg: &ConfigDir, name: &str) -> (Option<i32>, serde_json::Value) {
    let out = cfg.vigil(&["monitor", "test", name, "--json"]);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "monitor test output is not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

fn nagios_monitor(cfg: &ConfigDir, name: &str, script: &str) {
    cfg.script(&format!("{name}.sh"), script);
    cfg.monitor(
        name,
        &format!("name = \"{name}\"\ntype = \"nagios\"\ncommand = [\"./{name}.sh\"]\n"),
    );
}

#[test]
fn an_exec_sample_with_invalid_utf8_is_refused_with_a_reason() {
    let cfg = ConfigDir::new();
    exec_script(
        &cfg,
        "latin1",
        "printf '{\"type\":\"sample\",\"name\":\"/latin1/x\",\"value\":\"caf\\351\"}\\n'",
    );
    exec_monitor(&cfg, "latin1", "1", "5");
    let (code, v) = monitor_test_json(&cfg, "latin1");
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["samples"], serde_json::json!([]), "{v}");
    assert_eq!(
        v["errors"],
        serde_json::json!(["line 2: not valid UTF-8 (bad byte at offset 48)"]),
        "{v}"
    );
}

#[test]
fn a_nagios_check_killed_by_a_signal_publishes_nothing_known() {
    let cfg = ConfigDir::new();
    nagios_monitor(
        &cfg,
        "killed",
        "#!/bin/sh\necho 'OK - fine | load=1;5;10'\nkill -9 $$\n",
    );
    let (code, v) = monitor_test_json(&cfg, "killed");
    assert_eq!(code, Some(1), "{v}");
    let known: Vec<&serde_json::Value> = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["value"].is_null())
        .collect();
    assert!(known.is_empty(), "known samples from a killed check: {v}");
    assert_eq!(
        v["errors"],
        serde_json::json!(["killed by signal 9"]),
        "{v}"
    );
}

#[test]
fn nagios_perfdata_items_dropped_are_reported_as_errors_naming_their_label() {
    let cfg = ConfigDir::new();
    nagios_monitor(
        &cfg,
        "perf",
        "#!/bin/sh\necho 'OK - fine | comma=1,5 notanumber=nan huge=1e309 good=2s'\nexit 0\n",
    );
    let (code, v) = monitor_test_json(&cfg, "perf");
    assert_eq!(code, Some(1), "{v}");
    let errors: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(errors.len(), 3, "{v}");
    for (label, error) in ["comma=", "notanumber=", "huge="].iter().zip(&errors) {
        assert!(error.contains(label), "{error} does not name {label}");
    }
    let good = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"].as_str().unwrap().ends_with("/good"))
        .unwrap_or_else(|| panic!("no good sample: {v}"));
    assert_eq!(good["value"], 2.0);
}

#[test]
fn an_isolated_dylib_that_segfaults_costs_only_its_own_resources_and_is_restarted() {
    let cfg = ConfigDir::new();
    cfg.monitor(
        "crashy",
        "name = \"crashy\"\ntype = \"dylib\"\nplugin = \"vigil_testkit\"\nisolation = \"process\"\ninterval_seconds = 0.2\ntimeout_seconds = 2\n[params]\ninstance = \"crashy\"\nbehavior = \"segfault\"\nafter_polls = 3\n",
    );
    cfg.monitor(
        "good",
        "name = \"good\"\ntype = \"dylib\"\nplugin = \"vigil_testkit\"\ninterval_seconds = 0.2\n[params]\ninstance = \"good\"\n",
    );
    let mut host = cfg.start_host();
    wait_for(WAIT, "the isolated plugin's first samples", || {
        known(&cfg, "/testkit/crashy/r0")
    });
    wait_for(WAIT, "the crash to make its resources unknown", || {
        unknown_with(&cfg, "/testkit/crashy/r0", "SIGSEGV")
    });
    let before = cfg.monitor_state("good").unwrap()["samples_received"]
        .as_u64()
        .unwrap();
    // Restarted: a fresh child publishes again (its first polls are good).
    wait_for(WAIT, "the isolated plugin to be restarted", || {
        known(&cfg, "/testkit/crashy/r0")
    });
    wait_for(WAIT, "the second crash", || {
        unknown_with(&cfg, "/testkit/crashy/r0", "SIGSEGV")
    });
    // The host and the other monitor went on all along.
    wait_for(WAIT, "the good monitor to go on", || {
        let after = cfg.monitor_state("good")?["samples_received"]
            .as_u64()
            .unwrap_or(0);
        if after > before {
            known(&cfg, "/testkit/good/r0").map(drop)
        } else {
            Err(format!("{after} samples"))
        }
    });
    let status = host.stop().expect("host was running");
    assert!(status.success(), "host exited with {status}");
    wait_for(WAIT, "no isolated child to outlive the host", || {
        let left: Vec<_> = processes_matching("monitor serve-dylib")
            .into_iter()
            .filter(|(_, state)| *state != 'Z')
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
}

#[test]
fn a_flood_of_undeclared_samples_is_rate_limited_in_the_host_log() {
    let cfg = ConfigDir::new();
    // 100,000 samples for a resource the monitor never declared, then one
    // it did.
    cfg.script(
        "liar.sh",
        "#!/bin/sh\nread -r hello\necho '{\"type\":\"hello\",\"protocol\":1,\"publishes\":[\"/liar/x\"],\"capabilities\":[\"stream\"]}'\nyes '{\"type\":\"sample\",\"name\":\"/elsewhere/x\",\"value\":1}' | head -n 100000\necho '{\"type\":\"sample\",\"name\":\"/liar/x\",\"value\":\"done\"}'\nexec sleep 600\n",
    );
    cfg.monitor(
        "liar",
        "name = \"liar\"\ntype = \"exec\"\nmode = \"stream\"\ncommand = [\"./liar.sh\"]\ntimeout_seconds = 5\n",
    );
    let host = cfg.start_host();
    wait_for(
        Duration::from_secs(120),
        "the declared sample after the flood",
        || {
            let r = known(&cfg, "/liar/x")?;
            if r["value"] == "done" {
                Ok(())
            } else {
                Err(r.to_string())
            }
        },
    );
    let refusals = log_lines(&host, &["sample refused"]);
    assert!(
        (1..1000).contains(&refusals),
        "{refusals} of 100000 refusals logged"
    );
}
