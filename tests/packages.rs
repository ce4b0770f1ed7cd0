//! The package manager on one node, end to end: the real `vigil` binary, a
//! real dylib monitor (the example file monitor) gating a package with real
//! control scripts and a supervised service.

use std::time::Duration;

use vigil_tests::*;

const WAIT: Duration = Duration::from_secs(20);

/// A one-node config with package `web` gated on `/example/file/flag/present == yes`.
struct Setup {
    cfg: ConfigDir,
    flag: std::path::PathBuf,
    log: std::path::PathBuf,
    /// The service's unique command line, to find (and finally kill) it.
    marker: String,
}

impl Setup {
    fn new(restarts: u32) -> Self {
        let cfg = ConfigDir::new();
        let flag = cfg.path().join("flag");
        let log = cfg.path().join("script.log");
        let marker = format!("{}", 600_000 + std::process::id() * 10 + restarts);
        cfg.monitor(
            "file",
            &format!(
                "name = \"file\"\ntype = \"dylib\"\nplugin = \"vigil_example_file\"\ninterval_seconds = 0.2\n[params.files]\nflag = \"{}\"\n",
                flag.display()
            ),
        );
        let script = |what: &str| {
            format!(
                "#!/bin/sh\necho \"{what} $VIGIL_PACKAGE $VIGIL_NODE $VIGIL_REASON $VIGIL_FENCE_TOKEN\" >> {}\n",
                log.display()
            )
        };
        cfg.script("pkg/run.sh", &script("run"));
        cfg.script("pkg/halt.sh", &script("halt"));
        cfg.write(
            "packages.d/web.toml",
            &format!(
                "name = \"web\"\ntype = \"failover\"\nnodes = [\"node1\"]\nrun = [\"pkg/run.sh\"]\nhalt = [\"pkg/halt.sh\"]\n\n[[service]]\nname = \"server\"\ncommand = [\"/bin/sleep\", \"{marker}\"]\nrestarts = {restarts}\n\n[[resource]]\nname = \"/example/file/flag/present\"\nup = \"== yes\"\n"
            ),
        );
        Self {
            cfg,
            flag,
            log,
            marker,
        }
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The package `web`, the only one here, as `status --json` shows it.
    fn package(&self) -> Result<serde_json::Value, String> {
        self.cfg.package_status("web")
    }

    fn wait_state(&self, state: &str) -> serde_json::Value {
        wait_for(WAIT, &format!("web to be {state}"), || {
            let p = self.package()?;
            if p["state"] == state {
                Ok(p)
            } else {
                Err(p.to_string())
            }
        })
    }

    fn service_pids(&self) -> Vec<i32> {
        processes_matching(&format!("sleep {}", self.marker))
            .into_iter()
            .map(|(pid, _)| pid)
            .collect()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for pid in self.service_pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[test]
fn package_waits_for_its_resource_starts_and_halts_on_resource_down() {
    let s = Setup::new(3);
    let check = s.cfg.vigil(&["check"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _host = s.cfg.start_host();

    // The flag file is missing: the package must not start, and why says so.
    wait_for(WAIT, "the resource to be judged down", || {
        let p = s.package()?;
        if p["resources"][0]["state"] == "down" {
            Ok(())
        } else {
            Err(p.to_string())
        }
    });
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(s.package().unwrap()["state"], "down");
    assert!(s.log().is_empty(), "{:?}", s.log());
    let why = s.cfg.vigil(&["why", "web"]);
    let why = String::from_utf8_lossy(&why.stdout);
    assert!(
        why.contains("node1: not eligible: resource /example/file/flag/present is not up"),
        "{why}"
    );
    let why_json: serde_json::Value =
        serde_json::from_slice(&s.cfg.vigil(&["why", "web", "--json"]).stdout).unwrap();
    assert_eq!(why_json["package"], "web");
    assert!(why_json["explanation"]["choice"].is_null(), "{why_json}");
    let resls = s.cfg.resource("/example/file/flag/present").unwrap();
    assert_eq!(resls["used_by"], serde_json::json!(["web"]));

    // The resource comes up: the package starts, with a fence token.
    std::fs::write(&s.flag, "").unwrap();
    let up = s.wait_state("up");
    assert_eq!(up["running_on"], serde_json::json!(["node1"]));
    let token = up["fence_token"].as_u64().unwrap();
    assert!(token >= 1);
    wait_for(WAIT, "the service", || {
        if s.service_pids().len() == 1 {
            Ok(())
        } else {
            Err(format!("{:?}", s.service_pids()))
        }
    });
    assert_eq!(s.log(), [format!("run web node1 startup {token}")]);

    // It goes down: the package is halted with reason resource_down and the
    // service is stopped.
    std::fs::remove_file(&s.flag).unwrap();
    let down = s.wait_state("down");
    assert!(
        down["reason"].as_str().unwrap().contains("resource_down"),
        "{down}"
    );
    assert_eq!(s.log()[1], format!("halt web node1 resource_down {token}"));
    wait_for(WAIT, "the service to stop", || {
        if s.service_pids().is_empty() {
            Ok(())
        } else {
            Err(format!("{:?}", s.service_pids()))
        }
    });

    // And starts again when it returns, with a higher token.
    std::fs::write(&s.flag, "").unwrap();
    let again = s.wait_state("up");
    assert!(again["fence_token"].as_u64().unwrap() > token, "{again}");
}

#[test]
fn killed_service_is_restarted_then_the_package_fails() {
    let s = Setup::new(2);
    std::fs::write(&s.flag, "").unwrap();
    let _host = s.cfg.start_host();
    s.wait_state("up");
    let mut seen = Vec::new();
    for round in 0..3 {
        let pid = wait_for(WAIT, "a live service", || {
            let pids = s.service_pids();
            match pids.as_slice() {
                [pid] if !seen.contains(pid) => Ok(*pid),
                _ => Err(format!("{pids:?} (seen {seen:?})")),
            }
        });
        seen.push(pid);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        if round < 2 {
            // Restarted (restarts = 2): the package stays up.
            assert_eq!(s.package().unwrap()["state"], "up");
        }
    }
    let failed = s.wait_state("failed");
    assert_eq!(failed["failed_on"], serde_json::json!(["node1"]));
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("service server failed on node1"),
        "{failed}"
    );
    assert_eq!(
        s.log().last().unwrap().split(' ').nth(3),
        Some("service_failed")
    );
    assert!(s.service_pids().is_empty());
    // Failed here: it does not start again until cleared.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(s.package().unwrap()["state"], "failed");
    let why = String::from_utf8_lossy(&s.cfg.vigil(&["why", "web"]).stdout).into_owned();
    assert!(why.contains("failed there"), "{why}");
    let out = s.cfg.vigil(&["pkg", "clear", "web"]);
    assert!(out.status.success(), "{out:?}");
    s.wait_state("up");
}

#[test]
fn host_restart_re_adopts_a_running_package_instead_of_restarting_it() {
    let s = Setup::new(3);
    std::fs::write(&s.flag, "").unwrap();
    let mut host = s.cfg.start_host();
    let up = s.wait_state("up");
    let pid = wait_for(WAIT, "the service", || match s.service_pids().as_slice() {
        [pid] => Ok(*pid),
        other => Err(format!("{other:?}")),
    });
    assert!(host.stop().unwrap().success());
    // The service outlives the host.
    assert_eq!(s.service_pids(), [pid]);
    let _host = s.cfg.start_host();
    let again = s.wait_state("up");
    assert!(
        again["reason"].as_str().unwrap().contains("re-adopted"),
        "{again}"
    );
    assert_eq!(again["fence_token"], up["fence_token"], "no new ownership");
    assert_eq!(s.service_pids(), [pid], "same process, not restarted");
    assert_eq!(s.log().len(), 1, "run ran once: {:?}", s.log());
    // Adopted services are still supervised: killing it restarts it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(WAIT, "a restarted service", || {
        match s.service_pids().as_slice() {
            [new] if *new != pid => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

#[test]
fn operator_halt_and_run() {
    let s = Setup::new(3);
    std::fs::write(&s.flag, "").unwrap();
    let _host = s.cfg.start_host();
    s.wait_state("up");
    let out = s.cfg.vigil(&["pkg", "halt", "web"]);
    assert!(out.status.success(), "{out:?}");
    let halted = s.wait_state("down");
    assert_eq!(halted["switching"], false);
    assert!(
        s.log().last().unwrap().starts_with("halt web node1 "),
        "{:?}",
        s.log()
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(s.package().unwrap()["state"], "down", "stays halted");
    let out = s.cfg.vigil(&["pkg", "run", "web"]);
    assert!(out.status.success(), "{out:?}");
    let up = s.wait_state("up");
    assert_eq!(up["switching"], true);
    let err = s.cfg.vigil(&["pkg", "run", "nope"]);
    assert_eq!(err.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("no package named \"nope\""),
        "{err:?}"
    );
    // DESIGN §7's status shape.
    let status: serde_json::Value =
        serde_json::from_slice(&s.cfg.vigil(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["cluster"], "test");
    // At least these fields (maintenance is one more).
    assert_eq!(
        status["nodes"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    assert_eq!(status["nodes"][0]["name"], "node1");
    assert_eq!(status["nodes"][0]["state"], "up");
    assert_eq!(status["packages"][0]["name"], "web");
    assert_eq!(
        status["packages"][0]["running_on"],
        serde_json::json!(["node1"])
    );
}

#[test]
fn after_start_resources_are_judged_after_the_start_and_fail_the_package_when_down() {
    let s = Setup::new(3);
    // The package's own service raises the flag: the resource can only be up
    // once the package runs, which is what after_start is for.
    let package = std::fs::read_to_string(s.cfg.path().join("packages.d/web.toml")).unwrap();
    let package = package
        .replace(
            &format!("command = [\"/bin/sleep\", \"{}\"]", s.marker),
            &format!(
                "command = [\"/bin/sh\", \"-c\", \"touch {}; exec /bin/sleep {}\"]",
                s.flag.display(),
                s.marker
            ),
        )
        .replace(
            "up = \"== yes\"\n",
            "up = \"== yes\"\nevaluate = \"after_start\"\n",
        );
    s.cfg.write("packages.d/web.toml", &package);
    let _host = s.cfg.start_host();
    let up = s.wait_state("up");
    assert_eq!(up["resources"][0]["evaluate"], "after_start");
    wait_for(WAIT, "the resource to come up after the start", || {
        let p = s.package()?;
        if p["resources"][0]["state"] == "up" {
            Ok(())
        } else {
            Err(p.to_string())
        }
    });
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(s.package().unwrap()["state"], "up", "stays up");
    // It goes down: the package is halted and failed here, not restarted.
    std::fs::remove_file(&s.flag).unwrap();
    let failed = s.wait_state("failed");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("after_start resource /example/file/flag/present went down on node1"),
        "{failed}"
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(s.package().unwrap()["state"], "failed");
    assert_eq!(s.log().len(), 2, "one run, one halt: {:?}", s.log());
}

#[test]
fn check_refuses_packages_it_could_not_run() {
    let s = Setup::new(1);
    std::fs::remove_file(s.cfg.path().join("pkg/halt.sh")).unwrap();
    s.cfg.write(
        "packages.d/other.toml",
        "name = \"other\"\ntype = \"failover\"\nnodes = [\"node1\", \"node7\"]\nrun = [\"pkg/run.sh\"]\nhalt = [\"pkg/run.sh\"]\n\n[[resource]]\nname = \"/nobody/publishes/this\"\n",
    );
    let out = s.cfg.vigil(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let dir = s.cfg.path().display().to_string();
    assert!(
        stderr.contains(&format!("{dir}/packages.d/web.toml:1: package web: halt: ")),
        "{stderr}"
    );
    assert!(stderr.contains("No such file or directory"), "{stderr}");
    assert!(
        stderr.contains(&format!("{dir}/packages.d/other.toml:3:")) && stderr.contains("node7"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{dir}/packages.d/other.toml:8:"))
            && stderr.contains("/nobody/publishes/this"),
        "{stderr}"
    );
}

#[test]
fn a_resource_down_halt_does_not_wait_for_another_packages_long_start() {
    let s = Setup::new(3);
    std::fs::write(&s.flag, "").unwrap();
    // `slow` takes 30 s to start and is started only on request.
    s.cfg.script("pkg/slow_run.sh", "#!/bin/sh\nsleep 30\n");
    s.cfg.write(
        "packages.d/slow.toml",
        "name = \"slow\"\ntype = \"failover\"\nnodes = [\"node1\"]\nauto_run = false\nrun = [\"pkg/slow_run.sh\"]\nhalt = [\"pkg/halt.sh\"]\nrun_timeout_seconds = 60\n",
    );
    let _host = s.cfg.start_host();
    s.wait_state("up");
    let out = s.cfg.vigil(&["pkg", "run", "slow"]);
    assert!(out.status.success(), "{out:?}");
    let slow_state = || -> String {
        let v: serde_json::Value =
            serde_json::from_slice(&s.cfg.vigil(&["status", "--json"]).stdout).unwrap();
        v["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "slow")
            .unwrap()["state"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    wait_for(WAIT, "slow to be starting", || {
        let state = slow_state();
        if state == "starting" {
            Ok(())
        } else {
            Err(state)
        }
    });
    // web's resource goes down while slow's run script still runs: web
    // halts now, not in 30 s.
    std::fs::remove_file(&s.flag).unwrap();
    let down = s.wait_state("down");
    assert!(
        down["reason"].as_str().unwrap().contains("resource_down"),
        "{down}"
    );
    assert_eq!(
        slow_state(),
        "starting",
        "slow is still starting: the halt did not wait for it"
    );
}

/// `[paths]`: state, sockets and logs go where `cluster.toml` says, each to
/// its own directory, and nothing to the old `<config dir>/run`.
#[test]
fn paths_put_state_sockets_and_logs_where_cluster_toml_says() {
    let cfg = ConfigDir::new();
    cfg.write(
        "cluster.toml",
        "[cluster]\nname = \"test\"\nnodes = [\"node1\"]\n[paths]\nstate_dir = \"var/lib\"\nrun_dir = \"r\"\nlog_dir = \"var/log\"\n",
    );
    let marker = format!("{}", 800_000 + std::process::id());
    cfg.script(
        "pkg/server.sh",
        &format!("#!/bin/sh\necho hello from the service\nexec sleep {marker}\n"),
    );
    cfg.write(
        "packages.d/app.toml",
        "name = \"app\"\ntype = \"failover\"\nnodes = [\"node1\"]\nrun = [\"/bin/true\"]\nhalt = [\"/bin/true\"]\n\n[[service]]\nname = \"server\"\ncommand = [\"pkg/server.sh\"]\n",
    );
    // The service dies when the test ends, passed or not.
    let _reap = KillMatching(format!("sleep {marker}"));
    let host = cfg.start_host();
    let p = cfg.path();
    wait_for(WAIT, "the service's log", || {
        let log =
            std::fs::read_to_string(p.join("var/log/app.server.log")).map_err(|e| e.to_string())?;
        if log.contains("hello from the service") {
            Ok(())
        } else {
            Err(log)
        }
    });
    for file in [
        "var/lib/store/cluster.redb",
        "var/lib/packages/app.json",
        "r/vigil.sock",
        "r/guard.sock",
        "r/guard.lock",
        "var/log/guard.log",
    ] {
        // The run record is saved once the start returns, which may be
        // just after the service wrote its first line.
        wait_for(WAIT, &format!("{file} to exist"), || {
            p.join(file)
                .exists()
                .then_some(())
                .ok_or_else(|| format!("{file} is missing"))
        });
    }
    assert!(!p.join("run").exists(), "nothing in <config dir>/run");
    drop(host);
}
