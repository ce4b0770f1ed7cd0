//! Conformance harness: every monitor runs it in its own tests.
//!
//! [`Conformance::check`] drives a [`Monitor`] directly;
//! [`Conformance::check_abi`] drives the same monitor through its C vtable,
//! exactly as the host does, without loading a library. Both assert the
//! contract every monitor must keep and panic with a message naming the
//! broken rule:
//!
//! * configure accepts the given params and refuses each bad one with an
//!   error (not a panic);
//! * the declaration is non-empty and valid;
//! * a poll returns before its deadline, and every sample is valid and
//!   matches a declared pattern;
//! * start/stop (event pushing) works, stop returns promptly, and nothing is
//!   pushed after stop returns.
//!
//! ```
//! # use std::time::Instant;
//! # use vigil_sdk::{Monitor, MonitorError, ResourceName, ResourcePattern, Sample};
//! # use vigil_sdk::testing::Conformance;
//! # use serde_json::json;
//! struct Flag(String);
//! impl Monitor for Flag {
//!     fn configure(params: serde_json::Value) -> Result<Self, MonitorError> {
//!         let name = params.get("name").and_then(|v| v.as_str()).ok_or("params: name is required")?;
//!         if params.as_object().is_some_and(|o| o.len() != 1) {
//!             return Err("params: only `name` is allowed".into());
//!         }
//!         Ok(Flag(name.to_owned()))
//!     }
//!     fn declare(&self) -> Vec<ResourcePattern> {
//!         vec![ResourcePattern::new("/example/flag/*").unwrap()]
//!     }
//!     fn poll(&mut self, _: Instant) -> Result<Vec<Sample>, MonitorError> {
//!         let name = ResourceName::new(format!("/example/flag/{}", self.0)).map_err(|e| e.to_string())?;
//!         Ok(vec![Sample::up(name)])
//!     }
//! }
//!
//! // In the monitor crate's tests:
//! let report = Conformance::new(json!({"name": "a"}))
//!     .bad_params(json!({"name": 3}))
//!     .check::<Flag>();
//! assert_eq!(report.polled[0].name.as_str(), "/example/flag/a");
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::abi::{AbiInstance, VigilMonitorVtable};
use crate::monitor::{Monitor, SampleSink};
use crate::resource::{ResourcePattern, Sample};

/// What the harness saw, for further assertions by the caller.
#[derive(Debug, Clone)]
pub struct Report {
    pub declared: Vec<ResourcePattern>,
    /// Samples from the first poll.
    pub polled: Vec<Sample>,
    /// Samples pushed between start and stop.
    pub pushed: Vec<Sample>,
    pub poll_time: Duration,
}

/// A conformance run: params to configure with, params that must be refused,
/// and time limits.
#[derive(Debug, Clone)]
pub struct Conformance {
    params: serde_json::Value,
    bad_params: Vec<serde_json::Value>,
    poll_timeout: Duration,
    event_window: Duration,
    during_events: Option<fn()>,
}

impl Conformance {
    pub fn new(params: serde_json::Value) -> Self {
        Self {
            params,
            bad_params: vec![
                serde_json::json!(42),
                serde_json::json!({"__no_such_param__": 1}),
            ],
            poll_timeout: Duration::from_secs(2),
            event_window: Duration::from_millis(200),
            during_events: None,
        }
    }

    /// Adds params that configure must refuse.
    pub fn bad_params(mut self, params: serde_json::Value) -> Self {
        self.bad_params.push(params);
        self
    }

    pub fn poll_timeout(mut self, timeout: Duration) -> Self {
        self.poll_timeout = timeout;
        self
    }

    /// Runs `trigger` after start, so an event-driven monitor has something
    /// to push; the harness then waits `window` before stopping.
    pub fn events(mut self, trigger: fn(), window: Duration) -> Self {
        self.during_events = Some(trigger);
        self.event_window = window;
        self
    }

    /// Drives `M` directly.
    pub fn check<M: Monitor>(&self) -> Report {
        for bad in &self.bad_params {
            let result = std::panic::catch_unwind(|| M::configure(bad.clone()).is_err());
            match result {
                Ok(true) => {}
                Ok(false) => panic!("conformance: configure accepted bad params {bad}"),
                Err(_) => panic!("conformance: configure panicked on bad params {bad}"),
            }
        }
        let mut monitor = M::configure(self.params.clone())
            .unwrap_or_else(|e| panic!("conformance: configure({}) failed: {e}", self.params));
        let declared = monitor.declare();
        let started = Instant::now();
        let polled = monitor
            .poll(started + self.poll_timeout)
            .unwrap_or_else(|e| panic!("conformance: poll failed: {e}"));
        let poll_time = started.elapsed();
        let monitor = std::cell::RefCell::new(monitor);
        let pushed = collect_pushes(
            self,
            |sink| monitor.borrow_mut().start(sink).map_err(|e| e.to_string()),
            || monitor.borrow_mut().stop(),
        );
        self.verify(Report {
            declared,
            polled,
            pushed,
            poll_time,
        })
    }

    /// Drives a monitor through its C vtable, as the host does.
    pub fn check_abi(&self, table: &'static VigilMonitorVtable) -> Report {
        // SAFETY: a table exported by a linked crate is static and complete.
        let table = unsafe { crate::abi::check_vtable(table) }
            .unwrap_or_else(|e| panic!("conformance: vtable refused: {e}"));
        for bad in &self.bad_params {
            let bytes = serde_json::to_vec(bad).unwrap_or_default();
            match AbiInstance::create(table, &bytes) {
                Err(crate::abi::AbiError::Failed { .. }) => {}
                Err(e) => panic!("conformance: create with bad params {bad} gave {e}"),
                Ok(_) => panic!("conformance: create accepted bad params {bad}"),
            }
        }
        let bytes = serde_json::to_vec(&self.params).unwrap_or_default();
        let mut instance = AbiInstance::create(table, &bytes)
            .unwrap_or_else(|e| panic!("conformance: create({}) failed: {e}", self.params));
        let declared = instance
            .declare()
            .unwrap_or_else(|e| panic!("conformance: declare failed: {e}"));
        let started = Instant::now();
        let polled = instance
            .poll(self.poll_timeout)
            .unwrap_or_else(|e| panic!("conformance: poll failed: {e}"));
        let poll_time = started.elapsed();
        let instance = Mutex::new(instance);
        let pushed = collect_pushes(
            self,
            |sink| {
                let handler =
                    Box::new(
                        move |batch: Result<Vec<Sample>, crate::abi::AbiError>| match batch {
                            Ok(samples) => sink.push(&samples),
                            Err(e) => panic!("conformance: plugin pushed bad samples: {e}"),
                        },
                    );
                instance
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .start(handler)
                    .map_err(|e| e.to_string())
            },
            || instance.lock().unwrap_or_else(|p| p.into_inner()).stop(),
        );
        drop(instance);
        self.verify(Report {
            declared,
            polled,
            pushed,
            poll_time,
        })
    }

    fn verify(&self, report: Report) -> Report {
        assert!(
            !report.declared.is_empty(),
            "conformance: monitor declares no resources"
        );
        assert!(
            report.poll_time <= self.poll_timeout + Duration::from_millis(100),
            "conformance: poll took {:?}, past its {:?} deadline",
            report.poll_time,
            self.poll_timeout
        );
        for sample in report.polled.iter().chain(&report.pushed) {
            assert_declared(&report.declared, sample);
        }
        report
    }
}

/// Panics unless `sample` is valid and matches one of `declared`.
pub fn assert_declared(declared: &[ResourcePattern], sample: &Sample) {
    if let Err(e) = sample.validate() {
        panic!("conformance: invalid sample: {e}");
    }
    assert!(
        declared.iter().any(|p| p.matches(&sample.name)),
        "conformance: sample {} matches no declared pattern ({})",
        sample.name,
        declared
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

fn collect_pushes(
    run: &Conformance,
    start: impl FnOnce(SampleSink) -> Result<(), String>,
    stop: impl FnOnce(),
) -> Vec<Sample> {
    let pushed: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let sink = {
        let pushed = Arc::clone(&pushed);
        SampleSink::new(move |samples: &[Sample]| {
            pushed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(samples);
        })
    };
    if let Err(e) = start(sink) {
        panic!("conformance: start failed: {e}");
    }
    if let Some(trigger) = run.during_events {
        trigger();
    }
    std::thread::sleep(run.event_window);
    let stopping = Instant::now();
    stop();
    let stop_time = stopping.elapsed();
    assert!(
        stop_time < Duration::from_secs(2),
        "conformance: stop took {stop_time:?}"
    );
    let at_stop = pushed.lock().unwrap_or_else(|p| p.into_inner()).len();
    std::thread::sleep(Duration::from_millis(50));
    let after = pushed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(
        after.len(),
        at_stop,
        "conformance: samples pushed after stop returned"
    );
    after
}
