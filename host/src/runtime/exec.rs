//! The host side of the exec line protocol ([`vigil_sdk::proto`]): builds the
//! host's hello and checks what a monitor program says, line by line.
//!
//! Pure: it turns lines into [`ExecMessage`]s and errors; running the
//! program is [`super::subprocess`]'s job.

use std::time::Duration;

use vigil_sdk::proto::{
    self, CAP_ONESHOT, CAP_STREAM, HelloTag, HostHello, Mode, MonitorMessage, PROTOCOL_VERSION,
};
use vigil_sdk::{ResourcePattern, Sample};

/// The one line the host writes to an exec monitor's stdin.
pub fn host_hello(
    monitor: &str,
    mode: Mode,
    interval: Duration,
    params: &serde_json::Value,
) -> Vec<u8> {
    proto::encode_line(&HostHello {
        kind: HelloTag::Hello,
        protocol: PROTOCOL_VERSION,
        monitor: monitor.to_owned(),
        mode,
        interval_ms: interval.as_millis() as u64,
        params: params.clone(),
    })
    .into_bytes()
}

/// What one line meant.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecMessage {
    Hello(Vec<ResourcePattern>),
    Samples(Vec<Sample>),
    /// The monitor says it cannot work.
    Error(String),
    Log {
        level: Option<String>,
        message: String,
    },
    /// Blank line or a message type from a newer protocol.
    Nothing,
}

/// Reads a monitor's lines in order, enforcing hello-first.
#[derive(Debug)]
pub struct ExecParser {
    mode: Mode,
    line: usize,
    greeted: bool,
}

impl ExecParser {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            line: 0,
            greeted: false,
        }
    }

    pub fn greeted(&self) -> bool {
        self.greeted
    }

    /// Interprets the next line; errors say which line and why.
    pub fn feed(&mut self, line: &str) -> Result<ExecMessage, String> {
        self.feed_bytes(line.as_bytes())
    }

    /// [`ExecParser::feed`] for a line as read: a line that is not UTF-8
    /// is refused, not patched, since replacement characters would become
    /// names, values and reasons the monitor never sent.
    pub fn feed_bytes(&mut self, bytes: &[u8]) -> Result<ExecMessage, String> {
        self.line += 1;
        let at = self.line;
        let line = std::str::from_utf8(bytes).map_err(|e| {
            format!(
                "line {at}: not valid UTF-8 (bad byte at offset {})",
                e.valid_up_to()
            )
        })?;
        if line.trim().is_empty() {
            return Ok(ExecMessage::Nothing);
        }
        let message = proto::parse_monitor_line(line).map_err(|e| format!("line {at}: {e}"))?;
        if !self.greeted
            && !matches!(
                message,
                MonitorMessage::Hello { .. } | MonitorMessage::Error { .. }
            )
        {
            return Err(format!("line {at}: expected a hello message first"));
        }
        match message {
            MonitorMessage::Hello {
                protocol,
                publishes,
                capabilities,
            } => {
                if self.greeted {
                    return Err(format!("line {at}: second hello"));
                }
                if protocol != PROTOCOL_VERSION {
                    return Err(format!(
                        "monitor speaks protocol {protocol}, this host speaks protocol {PROTOCOL_VERSION}"
                    ));
                }
                let wanted = match self.mode {
                    Mode::Oneshot => CAP_ONESHOT,
                    Mode::Stream => CAP_STREAM,
                };
                if !capabilities.is_empty() && !capabilities.iter().any(|c| c == wanted) {
                    return Err(format!(
                        "monitor does not support mode {wanted:?} (capabilities: {})",
                        capabilities.join(", ")
                    ));
                }
                if publishes.is_empty() {
                    return Err("hello declares no resources (\"publishes\" is empty)".to_owned());
                }
                let patterns = publishes
                    .into_iter()
                    .map(ResourcePattern::new)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("line {at}: hello: {e}"))?;
                self.greeted = true;
                Ok(ExecMessage::Hello(patterns))
            }
            MonitorMessage::Sample(sample) => sample
                .into_sample()
                .map(|s| ExecMessage::Samples(vec![s]))
                .map_err(|e| format!("line {at}: {e}")),
            MonitorMessage::Samples { samples } => samples
                .into_iter()
                .map(|s| s.into_sample())
                .collect::<Result<Vec<_>, _>>()
                .map(ExecMessage::Samples)
                .map_err(|e| format!("line {at}: {e}")),
            MonitorMessage::Error { message } => Ok(ExecMessage::Error(message)),
            MonitorMessage::Log { level, message } => Ok(ExecMessage::Log { level, message }),
            MonitorMessage::Unknown => Ok(ExecMessage::Nothing),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(mode: Mode, lines: &[&str], expect: expect_test::Expect) {
        let mut parser = ExecParser::new(mode);
        let out: String = lines
            .iter()
            .map(|l| match parser.feed(l) {
                Ok(ExecMessage::Samples(s)) => format!(
                    "samples {}\n",
                    s.iter()
                        .map(|s| format!("{}={:?}", s.name, s.value))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                Ok(m) => format!("{m:?}\n"),
                Err(e) => format!("error: {e}\n"),
            })
            .collect();
        expect.assert_eq(&out);
    }

    #[test]
    fn hello_then_samples() {
        check(
            Mode::Oneshot,
            &[
                r#"{"type":"hello","protocol":1,"publishes":["/app/*/up"]}"#,
                "",
                r#"{"type":"sample","name":"/app/web/up","value":"up","timestamp_ms":5}"#,
                r#"{"type":"samples","samples":[{"name":"/app/db/up","value":3,"unit":"s"}]}"#,
                r#"{"type":"future_thing"}"#,
                r#"{"type":"log","message":"hi"}"#,
                r#"{"type":"sample","name":"/app/x/up","value":{"a":1}}"#,
                "not json",
            ],
            expect_test::expect![[r#"
                Hello([ResourcePattern("/app/*/up")])
                Nothing
                samples /app/web/up=Some(Text("up"))
                samples /app/db/up=Some(Number { value: 3.0, unit: Some("s") })
                Nothing
                Log { level: None, message: "hi" }
                error: line 7: sample for /app/x/up: value must be a number, a string or null, got {"a":1}
                error: line 8: line is not JSON with a known shape: expected ident at line 1 column 2
            "#]],
        );
    }

    #[test]
    fn invalid_utf8_is_refused_with_its_line() {
        let mut parser = ExecParser::new(Mode::Oneshot);
        parser
            .feed(r#"{"type":"hello","protocol":1,"publishes":["/a/*"]}"#)
            .unwrap();
        let bad = b"{\"type\":\"sample\",\"name\":\"/a/b\",\"value\":\"caf\xe9\"}";
        assert_eq!(
            parser.feed_bytes(bad),
            Err("line 2: not valid UTF-8 (bad byte at offset 43)".to_owned())
        );
        // The numbering goes on after it.
        assert_eq!(
            parser.feed("garbage").unwrap_err(),
            "line 3: line is not JSON with a known shape: expected value at line 1 column 1"
        );
    }

    #[test]
    fn handshake_errors() {
        check(
            Mode::Oneshot,
            &[r#"{"type":"sample","name":"/a/b","value":1}"#],
            expect_test::expect![[r#"
                error: line 1: expected a hello message first
            "#]],
        );
        check(
            Mode::Oneshot,
            &[r#"{"type":"hello","protocol":2,"publishes":["/a/b"]}"#],
            expect_test::expect![[r#"
                error: monitor speaks protocol 2, this host speaks protocol 1
            "#]],
        );
        check(
            Mode::Stream,
            &[r#"{"type":"hello","protocol":1,"publishes":["/a/b"],"capabilities":["oneshot"]}"#],
            expect_test::expect![[r#"
                error: monitor does not support mode "stream" (capabilities: oneshot)
            "#]],
        );
        check(
            Mode::Oneshot,
            &[
                r#"{"type":"hello","protocol":1}"#,
                r#"{"type":"error","message":"no tool"}"#,
            ],
            expect_test::expect![[r#"
                error: hello declares no resources ("publishes" is empty)
                Error("no tool")
            "#]],
        );
    }
}
