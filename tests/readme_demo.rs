//! The README's promise, on the README's own demo configuration: the demo
//! package keeps running across restarts of `vigil host` and is re-adopted,
//! never halted or started again (DESIGN §8, invariants 3 and 7).

use std::path::Path;
use std::time::Duration;

use vigil_tests::*;

const WAIT: Duration = Duration::from_secs(30);
const RESTARTS: usize = 20;

/// A copy of the repo's demo (cluster.toml, monitors.d, packages.d, pkg/)
/// in a temporary directory, so the test owns its run/ directory.
fn demo_config() -> ConfigDir {
    let cfg = ConfigDir::new();
    let root = repo_root();
    std::fs::copy(root.join("cluster.toml"), cfg.path().join("cluster.toml")).unwrap();
    for dir in ["monitors.d", "packages.d", "pkg/demo"] {
        copy_dir(&root.join(dir), &cfg.path().join(dir));
    }
    cfg
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        // fs::copy keeps the mode, so the scripts stay executable.
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn heartbeat_pids(cfg: &ConfigDir) -> Vec<i32> {
    let needle = format!("{}/pkg/demo/heartbeat.sh", cfg.path().display());
    processes_matching(&needle)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}

fn runs_and_halts(cfg: &ConfigDir) -> Vec<String> {
    std::fs::read_to_string(cfg.path().join("run/demo.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn readme_demo_package_survives_host_restarts_without_a_halt() {
    if !privileged("the README demo runs as root") {
        return;
    }
    let cfg = demo_config();
    let mut host = cfg.start_host();
    let up = wait_for(WAIT, "the demo package to be up", || {
        let p = cfg.package_status("demo")?;
        if p["state"] == "up" {
            Ok(p)
        } else {
            Err(p.to_string())
        }
    });
    let pid = wait_for(WAIT, "the heartbeat service", || {
        match heartbeat_pids(&cfg).as_slice() {
            [pid] => Ok(*pid),
            other => Err(format!("{other:?}")),
        }
    });
    for round in 1..=RESTARTS {
        assert!(host.stop().unwrap().success(), "round {round}: host exit");
        host = cfg.start_host();
        let again = wait_for(WAIT, "the demo package to be re-adopted", || {
            let p = cfg.package_status("demo")?;
            let adopted = p["state"] == "up"
                && p["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("re-adopted"));
            if adopted { Ok(p) } else { Err(p.to_string()) }
        });
        assert_eq!(
            again["fence_token"], up["fence_token"],
            "round {round}: no new ownership"
        );
        // Give the monitors time to deliver their first samples: a resource
        // not sampled yet must not halt the package when its sample comes.
        wait_for(WAIT, "every demo resource to have a sample", || {
            let p = cfg.package_status("demo")?;
            let states: Vec<_> = p["resources"]
                .as_array()
                .map(|r| r.iter().map(|r| r["state"].clone()).collect())
                .unwrap_or_default();
            if !states.is_empty() && states.iter().all(|s| s == "up") {
                Ok(())
            } else {
                Err(p.to_string())
            }
        });
        let log = host.log_text();
        assert!(
            !log.contains("halting package"),
            "round {round}: the host halted the re-adopted package:\n{log}"
        );
        assert_eq!(
            heartbeat_pids(&cfg),
            [pid],
            "round {round}: same service process"
        );
    }
    assert_eq!(
        runs_and_halts(&cfg).len(),
        1,
        "run ran once and halt never: {:?}",
        runs_and_halts(&cfg)
    );
    let out = cfg.vigil(&["pkg", "halt", "demo"]);
    assert!(out.status.success(), "{out:?}");
    wait_for(WAIT, "the demo package to halt", || {
        match heartbeat_pids(&cfg).as_slice() {
            [] => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}
