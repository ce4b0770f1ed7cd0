//! The exec line protocol: how a monitor subprocess talks to the host.
//!
//! One JSON object per line, each with a `type`. The host writes its
//! [`HostHello`] to the child's stdin (then closes it); the child answers on
//! stdout with a [`MonitorHello`] and then sends `sample` (or `samples`)
//! lines. In `oneshot` mode the child exits after its samples and is run
//! again each interval; in `stream` mode it keeps running and sends samples
//! whenever it likes. Anything on stderr is logged by the host.
//!
//! [`PROTOCOL_VERSION`] is its own integer, independent of any crate version.
//! Unknown fields and unknown message types are ignored, so either side may
//! be newer. The golden files in `sdk/tests/golden/` pin the wire format.

use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::monitor::{Monitor, SampleSink};
use crate::resource::{ResourcePattern, Sample};
use crate::wire::{WireError, WireSample};

/// The protocol version this SDK speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Capability: the monitor can be run once per interval.
pub const CAP_ONESHOT: &str = "oneshot";
/// Capability: the monitor can keep running and send samples as they happen.
pub const CAP_STREAM: &str = "stream";
/// Longest line either side accepts.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// How the host runs an exec monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Started each interval; prints its samples and exits.
    #[default]
    Oneshot,
    /// Started once; prints samples as long as it runs.
    Stream,
}

/// The host's first and only line on the child's stdin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostHello {
    #[serde(rename = "type")]
    pub kind: HelloTag,
    pub protocol: u32,
    /// The registration's name.
    pub monitor: String,
    pub mode: Mode,
    /// The poll interval, for streaming monitors that also poll on their own.
    pub interval_ms: u64,
    /// The registration's `[params]`.
    #[serde(default)]
    pub params: serde_json::Value,
}

/// The literal tag `"hello"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HelloTag {
    #[default]
    Hello,
}

/// A line from the monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MonitorMessage {
    /// First line: the version the monitor speaks, what it publishes, what it can do.
    Hello {
        protocol: u32,
        #[serde(default)]
        publishes: Vec<String>,
        #[serde(default)]
        capabilities: Vec<String>,
    },
    /// One sample.
    Sample(WireSample),
    /// Several samples at once.
    Samples { samples: Vec<WireSample> },
    /// The monitor cannot work (bad params, missing tool); its resources become unknown.
    Error { message: String },
    /// A line for the host's log.
    Log {
        #[serde(default)]
        level: Option<String>,
        message: String,
    },
    /// A message type from a newer protocol: ignored.
    #[serde(other)]
    Unknown,
}

/// Why a line could not be understood.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    #[error("line is not JSON with a known shape: {0}")]
    Json(String),
    #[error("line is longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Parses one line from a monitor.
pub fn parse_monitor_line(line: &str) -> Result<MonitorMessage, ProtocolError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(ProtocolError::LineTooLong);
    }
    serde_json::from_str(line).map_err(|e| ProtocolError::Json(e.to_string()))
}

/// Encodes a message as one line (with the newline).
pub fn encode_line<T: Serialize>(message: &T) -> String {
    // Serializing these plain data types cannot fail.
    let mut line = serde_json::to_string(message).unwrap_or_default();
    line.push('\n');
    line
}

/// The hello a monitor built on this SDK sends.
pub fn monitor_hello(publishes: &[ResourcePattern]) -> MonitorMessage {
    MonitorMessage::Hello {
        protocol: PROTOCOL_VERSION,
        publishes: publishes.iter().map(|p| p.to_string()).collect(),
        capabilities: vec![CAP_ONESHOT.to_owned(), CAP_STREAM.to_owned()],
    }
}

/// Runs `M` as an exec monitor on stdin/stdout: reads the host's hello,
/// configures, answers hello, then polls once (`oneshot`) or polls every
/// interval and forwards pushed samples until stdout closes (`stream`).
/// Returns the process exit code.
///
/// ```no_run
/// # use vigil_sdk::{Monitor, MonitorError, ResourcePattern, Sample};
/// # struct Mine;
/// # impl Monitor for Mine {
/// #   fn configure(_: serde_json::Value) -> Result<Self, MonitorError> { Ok(Mine) }
/// #   fn declare(&self) -> Vec<ResourcePattern> { vec![] }
/// #   fn poll(&mut self, _: std::time::Instant) -> Result<Vec<Sample>, MonitorError> { Ok(vec![]) }
/// # }
/// fn main() {
///     std::process::exit(vigil_sdk::proto::serve_stdio::<Mine>());
/// }
/// ```
/// Reads the host's hello, the first line a monitor gets, and checks its
/// protocol version; `who` names this side in the error ("monitor").
pub fn read_host_hello(input: &mut impl BufRead, who: &str) -> Result<HostHello, String> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .map_err(|e| format!("reading host hello: {e}"))?;
    let hello: HostHello =
        serde_json::from_str(line.trim()).map_err(|e| format!("host hello is not valid: {e}"))?;
    if hello.protocol != PROTOCOL_VERSION {
        return Err(format!(
            "host speaks protocol {}, this {who} speaks {PROTOCOL_VERSION}",
            hello.protocol
        ));
    }
    Ok(hello)
}

pub fn serve_stdio<M: Monitor>() -> i32 {
    let stdin = std::io::stdin();
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let send = {
        let out = Arc::clone(&out);
        move |message: &MonitorMessage| -> bool {
            let line = encode_line(message);
            let mut out = out.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            out.write_all(line.as_bytes())
                .and_then(|()| out.flush())
                .is_ok()
        }
    };
    let fail = |message: String| {
        send(&MonitorMessage::Error {
            message: message.clone(),
        });
        eprintln!("{message}");
        1
    };

    let hello = match read_host_hello(&mut stdin.lock(), "monitor") {
        Ok(hello) => hello,
        Err(message) => return fail(message),
    };
    let params = if hello.params.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        hello.params
    };
    let mut monitor = match M::configure(params) {
        Ok(m) => m,
        Err(e) => return fail(format!("configure: {e}")),
    };
    if !send(&monitor_hello(&monitor.declare())) {
        return 0;
    }
    let interval = Duration::from_millis(hello.interval_ms.max(100));
    let send_samples = |samples: &[Sample]| {
        send(&MonitorMessage::Samples {
            samples: samples.iter().map(WireSample::from).collect(),
        })
    };
    match hello.mode {
        Mode::Oneshot => match monitor.poll(Instant::now() + interval) {
            Ok(samples) => {
                send_samples(&samples);
                0
            }
            Err(e) => fail(format!("poll: {e}")),
        },
        Mode::Stream => {
            let sink_send = send.clone();
            let sink = SampleSink::new(move |samples: &[Sample]| {
                sink_send(&MonitorMessage::Samples {
                    samples: samples.iter().map(WireSample::from).collect(),
                });
            });
            if let Err(e) = monitor.start(sink) {
                return fail(format!("start: {e}"));
            }
            loop {
                let started = Instant::now();
                let ok = match monitor.poll(started + interval) {
                    Ok(samples) => send_samples(&samples),
                    Err(e) => send(&MonitorMessage::Error {
                        message: format!("poll: {e}"),
                    }),
                };
                if !ok {
                    // The host went away: stdout is closed.
                    monitor.stop();
                    return 0;
                }
                std::thread::sleep(interval.saturating_sub(started.elapsed()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_types_and_fields_are_tolerated() {
        assert_eq!(
            parse_monitor_line(r#"{"type":"telemetry","x":1}"#).unwrap(),
            MonitorMessage::Unknown
        );
        let hello = parse_monitor_line(r#"{"type":"hello","protocol":1,"future":true}"#).unwrap();
        assert_eq!(
            hello,
            MonitorMessage::Hello {
                protocol: 1,
                publishes: vec![],
                capabilities: vec![]
            }
        );
        assert!(parse_monitor_line("garbage").is_err());
        assert!(parse_monitor_line(r#"{"no_type":1}"#).is_err());
    }
}
