//! vigil-sdk: everything a monitor author needs, and nothing of the host.
//!
//! * [`resource`] — names, patterns, values and samples;
//! * [`Monitor`] — the trait a monitor implements;
//! * [`abi`] and [`export_monitor!`] — the C ABI for dylib monitors
//!   (C authors use `include/vigil_monitor.h` instead);
//! * [`proto`] — the exec line protocol and [`proto::serve_stdio`];
//! * [`nagios`] — Nagios plugin output and threshold parsing;
//! * [`events`] — the thread an event-driven monitor pushes from, and how it
//!   is stopped;
//! * [`mountinfo`] — the Linux mount table and a watch for its changes;
//! * [`testing`] — the conformance harness every monitor runs in its tests.
//!
//! The SDK does not schedule, judge resources up or down, or talk to the
//! cluster: that is the host's job.

pub mod abi;
// `events` and `mountinfo` wait on file descriptors, so they are Unix only;
// the rest of the SDK builds anywhere.
#[cfg(unix)]
pub mod events;
pub mod monitor;
#[cfg(unix)]
pub mod mountinfo;
pub mod nagios;
pub mod proto;
pub mod resource;
pub mod subnet;
pub mod testing;
pub mod wire;

pub use monitor::{Monitor, MonitorError, SampleSink};
pub use resource::{ResourceName, ResourcePattern, Sample, Value, encode_segment, now_ms};
