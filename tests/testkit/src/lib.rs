//! `vigil_testkit`: a dylib monitor that behaves as its params say, so the
//! host's integration tests and benchmarks can load a real library that is
//! healthy, hangs, panics, or publishes many resources.
//!
//! Params: `instance` (name segment, required), `behavior` (`ok`, `hang`,
//! `panic`, `panic_configure`, `undeclared`, `segfault`; default `ok`), `count`
//! (resources to publish, default 1), `push_ms` (push a sample of resource 0
//! every N ms from an event thread; default off), `after_polls` (behave
//! well for this many polls first; default 0).
//!
//! Publishes `/testkit/<instance>/r<i>` = the number of polls so far.
//! Not for production use.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use vigil_sdk::{Monitor, MonitorError, ResourceName, ResourcePattern, Sample, SampleSink};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
enum Behavior {
    #[default]
    Ok,
    Hang,
    Panic,
    PanicConfigure,
    Undeclared,
    /// Dies of SIGSEGV in poll, as a broken C plugin would.
    Segfault,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    instance: String,
    #[serde(default)]
    behavior: Behavior,
    #[serde(default = "one")]
    count: usize,
    #[serde(default)]
    push_ms: Option<u64>,
    /// Behave well for this many polls first.
    #[serde(default)]
    after_polls: u64,
}

fn one() -> usize {
    1
}

pub struct Testkit {
    params: Params,
    names: Vec<ResourceName>,
    polls: u64,
    pusher: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Monitor for Testkit {
    fn configure(params: serde_json::Value) -> Result<Self, MonitorError> {
        let params: Params = serde_json::from_value(params).map_err(|e| format!("params: {e}"))?;
        if params.behavior == Behavior::PanicConfigure {
            panic!("testkit: panicking in configure as asked");
        }
        if params.count == 0 || params.count > 100_000 {
            return Err("params: count must be 1..=100000".into());
        }
        let names = (0..params.count)
            .map(|i| ResourceName::new(format!("/testkit/{}/r{i}", params.instance)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("params: instance: {e}"))?;
        Ok(Self {
            params,
            names,
            polls: 0,
            pusher: None,
        })
    }

    fn declare(&self) -> Vec<ResourcePattern> {
        // The instance was validated as a segment in configure.
        vec![ResourcePattern::new(format!("/testkit/{}/*", self.params.instance)).expect("valid")]
    }

    fn poll(&mut self, _deadline: Instant) -> Result<Vec<Sample>, MonitorError> {
        self.polls += 1;
        let behavior = if self.polls <= self.params.after_polls {
            Behavior::Ok
        } else {
            self.params.behavior
        };
        match behavior {
            Behavior::Hang => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            Behavior::Panic => panic!("testkit: panicking in poll as asked"),
            Behavior::Segfault => {
                // SAFETY: none wanted: this kills the process on purpose, the
                // way a plugin's bad pointer would.
                unsafe {
                    // No core file left wherever the test runs.
                    let none = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    libc::setrlimit(libc::RLIMIT_CORE, &none);
                    libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                    libc::raise(libc::SIGSEGV);
                }
                unreachable!("SIGSEGV is fatal")
            }
            Behavior::Undeclared => {
                let name = ResourceName::new("/elsewhere/x").map_err(|e| e.to_string())?;
                Ok(vec![Sample::up(name)])
            }
            Behavior::Ok | Behavior::PanicConfigure => Ok(self
                .names
                .iter()
                .map(|n| Sample::number(n.clone(), self.polls as f64, None))
                .collect()),
        }
    }

    fn start(&mut self, sink: SampleSink) -> Result<(), MonitorError> {
        let Some(ms) = self.params.push_ms else {
            return Ok(());
        };
        let stop = Arc::new(AtomicBool::new(false));
        let name = self.names[0].clone();
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut n = 0u64;
            while !flag.load(Ordering::SeqCst) {
                n += 1;
                sink.push(&[Sample::number(name.clone(), n as f64, Some("pushes"))]);
                std::thread::sleep(Duration::from_millis(ms));
            }
        });
        self.pusher = Some((stop, handle));
        Ok(())
    }

    fn stop(&mut self) {
        if let Some((stop, handle)) = self.pusher.take() {
            stop.store(true, Ordering::SeqCst);
            let _ = handle.join();
        }
    }
}

vigil_sdk::export_monitor!(Testkit);

#[cfg(test)]
mod tests {
    use serde_json::json;
    use vigil_sdk::testing::Conformance;

    use super::*;

    #[test]
    fn healthy_behavior_is_conformant() {
        let run = Conformance::new(json!({"instance": "a", "count": 3, "push_ms": 10}))
            .bad_params(json!({"instance": "a b"}))
            .bad_params(json!({"instance": "a", "count": 0}));
        let direct = run.check::<Testkit>();
        assert_eq!(direct.polled.len(), 3);
        assert!(!direct.pushed.is_empty(), "push_ms must push");
        let abi = run.check_abi(vigil_vtable());
        assert_eq!(abi.polled.len(), 3);
    }

    #[test]
    fn panics_are_caught_at_the_abi_boundary() {
        // SAFETY: the table is a static of this crate, complete and valid.
        let table = unsafe { vigil_sdk::abi::check_vtable(vigil_vtable()) }.unwrap();
        let err = vigil_sdk::abi::AbiInstance::create(
            table,
            br#"{"instance":"x","behavior":"panic_configure"}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("create panicked: testkit: panicking in configure"),
            "{err}"
        );
        let mut inst =
            vigil_sdk::abi::AbiInstance::create(table, br#"{"instance":"x","behavior":"panic"}"#)
                .unwrap();
        let err = inst.poll(Duration::from_secs(1)).unwrap_err();
        assert!(
            err.to_string()
                .contains("poll panicked: testkit: panicking in poll"),
            "{err}"
        );
    }
}
