//! The [`Monitor`] trait every monitor implements, whichever way it is run
//! (dylib through [`crate::export_monitor!`], subprocess through
//! [`crate::proto::serve_stdio`], or in tests through [`crate::testing`]).
//!
//! A monitor is configured once from JSON params, declares the resource
//! patterns it publishes, answers polls, and may push samples on its own
//! from threads it starts in [`Monitor::start`] and joins in
//! [`Monitor::stop`]. It never sees how samples travel to the host.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::resource::{ResourcePattern, Sample};

/// What went wrong inside a monitor. Plain text: it crosses process and
/// library boundaries as a message and ends up in the host's log and in the
/// `reason` of the monitor's resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorError(pub String);

impl MonitorError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for MonitorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MonitorError {}

impl From<String> for MonitorError {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for MonitorError {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// The receiving end behind a [`SampleSink`].
type PushCallback = dyn Fn(&[Sample]) + Send + Sync;

/// Where a monitor pushes samples it observes between polls. Cheap to clone,
/// safe to call from any thread.
#[derive(Clone)]
pub struct SampleSink {
    push: Arc<PushCallback>,
}

impl SampleSink {
    pub fn new(push: impl Fn(&[Sample]) + Send + Sync + 'static) -> Self {
        Self { push: Arc::new(push) }
    }

    pub fn push(&self, samples: &[Sample]) {
        if !samples.is_empty() {
            (self.push)(samples);
        }
    }
}

impl fmt::Debug for SampleSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SampleSink")
    }
}

/// A monitor plugin.
///
/// ```
/// use std::time::Instant;
/// use vigil_sdk::{Monitor, MonitorError, ResourceName, ResourcePattern, Sample};
///
/// struct Uptime;
///
/// impl Monitor for Uptime {
///     fn configure(_params: serde_json::Value) -> Result<Self, MonitorError> {
///         Ok(Uptime)
///     }
///     fn declare(&self) -> Vec<ResourcePattern> {
///         vec![ResourcePattern::new("/example/uptime_seconds").unwrap()]
///     }
///     fn poll(&mut self, _deadline: Instant) -> Result<Vec<Sample>, MonitorError> {
///         let text = std::fs::read_to_string("/proc/uptime").map_err(|e| e.to_string())?;
///         let secs: f64 = text.split_whitespace().next().unwrap_or("0").parse().unwrap_or(0.0);
///         let name = ResourceName::new("/example/uptime_seconds").unwrap();
///         Ok(vec![Sample::number(name, secs, Some("s"))])
///     }
/// }
/// ```
pub trait Monitor: Send + 'static {
    /// Validates `params` (the `[params]` table of the registration, as JSON)
    /// and returns a monitor ready to poll. Refuse unknown or bad params with
    /// a message that names the param.
    fn configure(params: serde_json::Value) -> Result<Self, MonitorError>
    where
        Self: Sized;

    /// The resource patterns this configured monitor publishes; every sample
    /// it returns or pushes must match one of them.
    fn declare(&self) -> Vec<ResourcePattern>;

    /// Reads the current values. Return before `deadline`: the host stops
    /// waiting then and marks this monitor's resources unknown.
    fn poll(&mut self, deadline: Instant) -> Result<Vec<Sample>, MonitorError>;

    /// Starts pushing samples on events (link changes, mount changes). The
    /// default pushes nothing: the monitor is polled only.
    fn start(&mut self, sink: SampleSink) -> Result<(), MonitorError> {
        let _ = sink;
        Ok(())
    }

    /// Stops what [`Monitor::start`] started and joins its threads: the host
    /// may unload the library right after.
    fn stop(&mut self) {}
}
