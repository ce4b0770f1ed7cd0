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
//!
//! For a monitor's own event tests, [`PushCollector`] is a sink that keeps
//! what is pushed and waits for the sample a real change should bring.

use std::sync::{Arc, Condvar, Mutex};
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

/// A sink for tests that keeps every pushed sample and lets the test wait for
/// one: hand [`PushCollector::sink`] to `Monitor::start`, make a real change,
/// then [`PushCollector::wait_for`] the sample it should bring.
///
/// Waits read the pushes in order, like a channel: each one looks only at
/// samples pushed after those an earlier wait went through, so waiting for
/// `down` and then `up` proves they came in that order.
#[derive(Debug, Clone, Default)]
pub struct PushCollector {
    shared: Arc<(Mutex<Pushed>, Condvar)>,
}

#[derive(Debug, Default)]
struct Pushed {
    samples: Vec<Sample>,
    /// Where the next wait starts reading.
    next: usize,
}

impl PushCollector {
    pub fn new() -> Self {
        Self::default()
    }

    /// A sink that records into this collector.
    pub fn sink(&self) -> SampleSink {
        let shared = Arc::clone(&self.shared);
        SampleSink::new(move |samples: &[Sample]| {
            let (pushed, arrived) = &*shared;
            pushed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .samples
                .extend_from_slice(samples);
            arrived.notify_all();
        })
    }

    /// Waits up to `within` for a pushed sample of `name` that satisfies
    /// `want`, and returns it with how long the wait took. Panics, listing
    /// what was pushed, when none comes in time.
    pub fn wait_for(
        &self,
        name: &str,
        within: Duration,
        want: impl Fn(&Sample) -> bool,
    ) -> (Sample, Duration) {
        let started = Instant::now();
        let (pushed, arrived) = &*self.shared;
        let mut guard = pushed.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            while guard.next < guard.samples.len() {
                let index = guard.next;
                guard.next += 1;
                let sample = &guard.samples[index];
                if sample.name.as_str() == name && want(sample) {
                    return (sample.clone(), started.elapsed());
                }
            }
            let left = within.saturating_sub(started.elapsed());
            if left.is_zero() {
                let seen: Vec<String> = guard.samples.iter().map(describe).collect();
                panic!("no pushed sample of {name} as wanted within {within:?}; pushed: {seen:#?}");
            }
            guard = arrived
                .wait_timeout(guard, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Every sample pushed so far, in order.
    pub fn all(&self) -> Vec<Sample> {
        let (pushed, _) = &*self.shared;
        pushed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .samples
            .clone()
    }
}

fn describe(sample: &Sample) -> String {
    let value = sample
        .value
        .as_ref()
        .map_or_else(|| "unknown".to_owned(), |v| v.to_string());
    match &sample.reason {
        Some(reason) => format!("{} = {value} ({reason})", sample.name),
        None => format!("{} = {value}", sample.name),
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
    let pushed = PushCollector::new();
    if let Err(e) = start(pushed.sink()) {
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
    let at_stop = pushed.all().len();
    std::thread::sleep(Duration::from_millis(50));
    let after = pushed.all();
    assert_eq!(
        after.len(),
        at_stop,
        "conformance: samples pushed after stop returned"
    );
    after
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::ResourceName;

    fn sample(name: &str, value: &str) -> Sample {
        // Test names are written valid.
        Sample::text(ResourceName::new(name).expect("valid name"), value)
    }

    fn text(sample: &Sample) -> Option<&str> {
        sample.value.as_ref().and_then(|v| v.as_text())
    }

    #[test]
    fn waits_read_pushes_in_order() {
        let collector = PushCollector::new();
        let sink = collector.sink();
        sink.push(&[sample("/t/a", "up"), sample("/t/b", "up")]);
        sink.push(&[sample("/t/a", "down")]);
        let within = Duration::from_secs(10);
        let (down, _) = collector.wait_for("/t/a", within, |s| text(s) == Some("down"));
        assert_eq!(text(&down), Some("down"));
        let pusher =
            std::thread::spawn(move || sink.push(&[sample("/t/a", "up").with_reason("again")]));
        // The earlier "up" was read past on the way to "down": only the
        // later push can satisfy this wait.
        let (up, _) = collector.wait_for("/t/a", within, |s| text(s) == Some("up"));
        assert_eq!(up.reason.as_deref(), Some("again"));
        pusher.join().expect("pusher");
        assert_eq!(collector.all().len(), 4);
    }

    #[test]
    #[should_panic(expected = "no pushed sample of /t/a as wanted")]
    fn a_wait_that_is_never_satisfied_panics_naming_the_resource() {
        let collector = PushCollector::new();
        collector
            .sink()
            .push(&[sample("/t/a", "up"), sample("/t/b", "down")]);
        collector.wait_for("/t/a", Duration::from_millis(50), |s| {
            text(s) == Some("down")
        });
    }
}
