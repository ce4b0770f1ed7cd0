use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::package::{FailbackPolicy, FailoverPolicy, PackageKind, PackageLines, Restarts};

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

fn package(name: &str, run: &str, halt: &str, services: Vec<ServiceConfig>) -> PackageConfig {
    PackageConfig {
        name: name.into(),
        kind: PackageKind::Failover,
        nodes: vec!["node1".into()],
        all_nodes: false,
        failover_policy: FailoverPolicy::ConfiguredNode,
        failback_policy: FailbackPolicy::Manual,
        auto_run: true,
        node_fail_fast: false,
        priority: None,
        run: sh(run),
        halt: sh(halt),
        run_timeout: Duration::from_secs(20),
        halt_timeout: Duration::from_secs(20),
        follow: None,
        avoid: Vec::new(),
        services,
        resources: Vec::new(),
        dependencies: Vec::new(),
        parts: Vec::new(),
        source: "test.toml".into(),
        lines: PackageLines::default(),
    }
}

fn service(name: &str, script: &str, restarts: Restarts, fail_fast: bool) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        command: sh(script),
        restarts,
        fail_fast,
        line: 1,
    }
}

fn context(dir: &Path) -> RunnerContext {
    RunnerContext {
        log_dir: Some(dir.to_owned()),
        restart_backoff: Duration::from_millis(20),
        stop_grace: Duration::from_millis(500),
        ..RunnerContext::new("node1", dir)
    }
}

fn runner(
    spec: PackageConfig,
    dir: &Path,
) -> (PackageRunner, mpsc::UnboundedReceiver<LifecycleEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (PackageRunner::new(spec, context(dir), tx), rx)
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<LifecycleEvent>) -> LifecycleEvent {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("an event within 20 s")
        .expect("runner alive")
}

/// Waits until `cond` holds, up to 20 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within 20 s: {what}");
}

/// Live (not zombie) processes whose process group is `pgid`.
fn live_group_members(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|s| s.pgid == pgid && s.state != 'Z'))
        .collect()
}

fn read_pid(path: &Path) -> i32 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", path.display()))
}

/// The pid in `path` once the shell has finished writing it (`echo`
/// creates the file before it writes the line).
fn written_pid(path: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(path).ok()?;
    text.ends_with('\n').then(|| text.trim().parse().ok())?
}

#[tokio::test]
async fn control_scripts_get_the_environment_and_run_in_the_config_dir() {
    let dir = tempfile::tempdir().unwrap();
    let spec = package(
        "pkg",
        "env | grep ^VIGIL_ | sort > run.env; pwd > run.pwd",
        "env | grep ^VIGIL_ | sort > halt.env",
        Vec::new(),
    );
    let (mut runner, _events) = runner(spec, dir.path());
    runner
        .start(&Reason::Failover, FenceToken(7))
        .await
        .unwrap();
    let d = dir.path().display();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("run.env")).unwrap(),
        format!(
            "VIGIL_CONFIG_DIR={d}\nVIGIL_FENCE_TOKEN=7\nVIGIL_NODE=node1\nVIGIL_PACKAGE=pkg\nVIGIL_REASON=failover\n"
        )
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("run.pwd"))
            .unwrap()
            .trim(),
        std::fs::canonicalize(dir.path())
            .unwrap()
            .display()
            .to_string()
    );
    assert_eq!(runner.record().unwrap().fence_token, FenceToken(7));
    runner.halt(&Reason::Manual).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("halt.env")).unwrap(),
        format!(
            "VIGIL_CONFIG_DIR={d}\nVIGIL_FENCE_TOKEN=7\nVIGIL_NODE=node1\nVIGIL_PACKAGE=pkg\nVIGIL_REASON=manual\n"
        )
    );
    assert!(!runner.is_running());
}

#[tokio::test]
async fn run_timeout_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = package(
        "slow",
        "sleep 1000 & echo $! > grandchild.pid; sleep 1000",
        "true",
        vec![service("never", "sleep 1000", Restarts::Limited(0), false)],
    );
    spec.run_timeout = Duration::from_millis(500);
    let (mut runner, _events) = runner(spec, dir.path());
    let err = runner
        .start(&Reason::Startup, FenceToken(1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            StartError::Run(ScriptError::Failed {
                exit: ScriptExit::TimedOut,
                script: "run",
                ..
            })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("run of package slow timed out"),
        "{err}"
    );
    assert!(
        !runner.is_running(),
        "services must not start after a failed run"
    );
    let grandchild = read_pid(&dir.path().join("grandchild.pid"));
    eventually("the grandchild is killed with its group", || {
        proc_stat(grandchild).is_none_or(|s| s.state == 'Z')
    })
    .await;
}

#[tokio::test]
async fn failing_run_and_halt_are_reported_with_their_output() {
    let dir = tempfile::tempdir().unwrap();
    let spec = package(
        "bad",
        "echo starting; echo no such volume >&2; exit 3",
        "echo $VIGIL_FENCE_TOKEN > halt.token; echo cannot unmount >&2; exit 4",
        Vec::new(),
    );
    let (mut runner, _events) = runner(spec, dir.path());
    let err = runner
        .start(&Reason::Startup, FenceToken(9))
        .await
        .unwrap_err();
    let StartError::Run(ScriptError::Failed { exit, output, .. }) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*exit, ScriptExit::Code(3));
    assert!(output.contains("starting") && output.contains("no such volume"));
    assert_eq!(
        err.to_string(),
        "run of package bad exited with status 3: no such volume"
    );
    // A halt after the failed run cleans up under the same token.
    let err = runner.halt(&Reason::Manual).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "halt of package bad exited with status 4: cannot unmount"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("halt.token")).unwrap(),
        "9\n"
    );
}

#[tokio::test]
async fn a_service_that_cannot_start_is_an_error_and_stops_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let spec = package(
        "half",
        "true",
        "true",
        vec![
            service(
                "ok",
                "echo $$ > ok.pid; exec sleep 1000",
                Restarts::Limited(0),
                false,
            ),
            ServiceConfig {
                command: vec!["/nonexistent/vigil-service".into()],
                ..service("missing", "", Restarts::Limited(0), false)
            },
        ],
    );
    let (mut runner, _events) = runner(spec, dir.path());
    let err = runner
        .start(&Reason::Startup, FenceToken(1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StartError::Service { service, .. } if service == "missing"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("/nonexistent/vigil-service"),
        "{err}"
    );
    // The first service may not have written its pid yet when it was
    // stopped; if it did, it must be gone.
    let pidfile = dir.path().join("ok.pid");
    if let Some(pid) = written_pid(&pidfile) {
        assert!(
            proc_stat(pid).is_none(),
            "service ok survived a failed start"
        );
    }
    assert!(!runner.is_running());
}

#[tokio::test]
async fn a_killed_service_is_restarted_n_times_then_the_package_fails() {
    let dir = tempfile::tempdir().unwrap();
    let spec = package(
        "svc",
        "true",
        "echo halted > halted",
        vec![service(
            "worker",
            "exec sleep 1000",
            Restarts::Limited(2),
            false,
        )],
    );
    let (mut runner, mut events) = runner(spec, dir.path());
    runner.start(&Reason::Startup, FenceToken(3)).await.unwrap();

    for round in 0..3u32 {
        let record = runner.record().unwrap();
        let worker = &record.services[0];
        assert_eq!(worker.restarts, round);
        assert_eq!(worker.liveness(), Liveness::Alive);
        nix::sys::signal::kill(Pid::from_raw(worker.pid), Signal::SIGKILL).unwrap();
        let restarting = round < 2;
        assert_eq!(
            next_event(&mut events).await,
            LifecycleEvent::ServiceExited {
                package: "svc".into(),
                service: "worker".into(),
                exit: ServiceExit::Signal(9),
                restarts: round,
                restarting,
            }
        );
        if restarting {
            let LifecycleEvent::ServiceRestarted { pid, restarts, .. } =
                next_event(&mut events).await
            else {
                panic!("expected a restart")
            };
            assert_eq!(restarts, round + 1);
            assert_ne!(pid, worker.pid);
            assert!(proc_stat(worker.pid).is_none(), "old worker not reaped");
        }
    }
    let failed = next_event(&mut events).await;
    assert_eq!(
        failed,
        LifecycleEvent::PackageFailed {
            package: "svc".into(),
            service: "worker".into(),
            reason: "service worker killed by signal 9 after 2 restarts".into(),
        }
    );
    // The caller halts the failed package: the halt script still runs.
    runner.halt(&Reason::ServiceFailed).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("halted")).unwrap(),
        "halted\n"
    );
}

#[tokio::test]
async fn a_fail_fast_service_fails_the_package_on_its_first_exit() {
    let dir = tempfile::tempdir().unwrap();
    let spec = package(
        "ff",
        "true",
        "true",
        vec![service("quick", "exit 0", Restarts::Unlimited, true)],
    );
    let (mut runner, mut events) = runner(spec, dir.path());
    runner.start(&Reason::Startup, FenceToken(1)).await.unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        LifecycleEvent::ServiceExited {
            exit: ServiceExit::Code(0),
            restarting: false,
            ..
        }
    ));
    assert!(matches!(
        next_event(&mut events).await,
        LifecycleEvent::PackageFailed { reason, .. } if reason == "service quick exited with status 0 (fail_fast)"
    ));
    runner.halt(&Reason::ServiceFailed).await.unwrap();
}

#[tokio::test]
async fn halt_stops_services_and_their_children_then_runs_halt() {
    let dir = tempfile::tempdir().unwrap();
    let spec = package(
        "stop",
        "true",
        "echo $VIGIL_REASON > halted",
        vec![
            // Leaves a child of its own in its group.
            service(
                "parent",
                "sleep 1000 & echo $! > child.pid; wait",
                Restarts::Unlimited,
                false,
            ),
            // Ignores SIGTERM: only SIGKILL after the grace period stops it.
            service(
                "stubborn",
                "trap '' TERM; while :; do sleep 0.1; done",
                Restarts::Unlimited,
                false,
            ),
        ],
    );
    let (mut runner, mut events) = runner(spec, dir.path());
    runner.start(&Reason::Startup, FenceToken(1)).await.unwrap();
    let record = runner.record().unwrap();
    assert_eq!(record.services.len(), 2);
    let child_pid = dir.path().join("child.pid");
    eventually("the parent service started its child", || {
        written_pid(&child_pid).is_some()
    })
    .await;
    let child = read_pid(&child_pid);
    for s in &record.services {
        assert_eq!(s.pgid, s.pid);
        assert!(!live_group_members(s.pgid).is_empty());
    }

    runner.halt(&Reason::Manual).await.unwrap();
    for s in &record.services {
        assert_eq!(
            proc_stat(s.pid),
            None,
            "service {} is still there (or an unreaped zombie)",
            s.name
        );
        assert_eq!(live_group_members(s.pgid), Vec::<i32>::new());
    }
    assert!(proc_stat(child).is_none_or(|s| s.state == 'Z'));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("halted")).unwrap(),
        "manual\n"
    );
    // Stopping is not exiting: no service events, no failure.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(events.try_recv().is_err());
    assert!(runner.record().is_none());
}

#[tokio::test]
async fn a_restarted_host_adopts_live_services_and_refuses_dead_or_reused_ones() {
    let dir = tempfile::tempdir().unwrap();
    let spec = package(
        "adopt",
        "true",
        "true",
        vec![service(
            "daemon",
            "exec sleep 1000",
            Restarts::Limited(1),
            false,
        )],
    );
    let saved = dir.path().join("adopt.run.json");
    let (mut first, _events) = runner(spec.clone(), dir.path());
    // Start times have a resolution of one clock tick (10 ms): under
    // nextest this test's process may have started in the same tick as the
    // service would, and the "reused pid" below (ours) would then be
    // indistinguishable from it. Let a few ticks pass first.
    tokio::time::sleep(Duration::from_millis(50)).await;
    first.start(&Reason::Startup, FenceToken(5)).await.unwrap();
    first.record().unwrap().save(&saved).unwrap();
    let pid = first.record().unwrap().services[0].pid;
    // The host goes away without halting: the service keeps running.
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let record = RunRecord::load(&saved).unwrap();
    assert_eq!(record.fence_token, FenceToken(5));
    assert_eq!(record.check(), vec![("daemon".to_owned(), Liveness::Alive)]);
    assert!(record.all_alive());

    // A pid now used by another process (ours) is not the service.
    let mut reused = record.clone();
    reused.services[0].pid = std::process::id() as i32;
    reused.services[0].pgid = proc_stat(std::process::id() as i32).unwrap().pgid;
    assert_eq!(reused.check()[0].1, Liveness::Reused);
    let (mut other, _e) = runner(spec.clone(), dir.path());
    assert!(matches!(
        other.adopt(reused),
        Err(AdoptError::NotRunning {
            liveness: Liveness::Reused,
            ..
        })
    ));

    let (mut second, mut events) = runner(spec.clone(), dir.path());
    second.adopt(record.clone()).unwrap();
    assert_eq!(second.record().unwrap(), record);
    // The adopted service is supervised: killing it restarts it.
    nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        LifecycleEvent::ServiceExited {
            exit: ServiceExit::Vanished,
            restarting: true,
            ..
        }
    ));
    assert!(matches!(
        next_event(&mut events).await,
        LifecycleEvent::ServiceRestarted { restarts: 1, .. }
    ));
    let restarted = second.record().unwrap().services[0].clone();
    assert_ne!(restarted.pid, pid);
    second.halt(&Reason::Manual).await.unwrap();
    assert!(proc_stat(restarted.pid).is_none());

    // The old record now names a dead process (init reaped it after the
    // first host let go of it).
    eventually("the adopted, killed service is reaped by init", || {
        proc_stat(pid)
            .is_none_or(|s| s.state == 'Z' || s.start_time != record.services[0].start_time)
    })
    .await;
    assert_ne!(record.check()[0].1, Liveness::Alive);
    let (mut third, _e) = runner(spec, dir.path());
    assert!(matches!(
        third.adopt(record),
        Err(AdoptError::NotRunning { .. })
    ));
}

#[test]
fn proc_stat_fields_are_counted_from_the_last_parenthesis() {
    let line =
        "4242 (a) (b c) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100\n";
    assert_eq!(
        parse_proc_stat(line),
        Some(ProcStat {
            state: 'S',
            pgid: 4240,
            start_time: 987654
        })
    );
    assert_eq!(parse_proc_stat("4242 (x) S 1"), None);
}

#[tokio::test]
async fn a_service_that_exits_in_maintenance_waits_and_is_restarted_when_maintenance_ends() {
    let dir = tempfile::tempdir().unwrap();
    let spec = package(
        "maint",
        "true",
        "true",
        vec![service("quick", "sleep 0.2", Restarts::Limited(1), false)],
    );
    let (mut runner, mut events) = runner(spec, dir.path());
    let (maintenance, held) = watch::channel(true);
    runner.watch_maintenance(held);
    runner.start(&Reason::Startup, FenceToken(1)).await.unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        LifecycleEvent::ServiceExited {
            restarting: false,
            restarts: 0,
            ..
        }
    ));
    // Held: no restart, no failure while maintenance lasts.
    assert!(
        tokio::time::timeout(Duration::from_millis(600), events.recv())
            .await
            .is_err(),
        "something happened in maintenance"
    );
    maintenance.send_replace(false);
    // Its restart goes ahead, then (restarts spent) the failure.
    let mut seen = Vec::new();
    loop {
        match next_event(&mut events).await {
            LifecycleEvent::PackageFailed { .. } => break,
            other => seen.push(other),
        }
    }
    assert!(
        seen.iter()
            .any(|e| matches!(e, LifecycleEvent::ServiceRestarted { restarts: 1, .. })),
        "{seen:?}"
    );
    runner.halt(&Reason::ServiceFailed).await.unwrap();
}
