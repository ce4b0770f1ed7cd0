//! Bounding what a monitor can make the host write to its log.
//!
//! A monitor's stderr (stream mode), its `log` messages and its failures all
//! reach the host log, and a monitor that writes as fast as it can must not
//! fill the disk through it. Every monitor gets one [`LogGate`]: a token
//! bucket of lines ([`BURST`] at once, then [`LINES_PER_SECOND`]), every line
//! cut to [`MAX_TEXT_LEN`] bytes, and the lines it drops counted and reported
//! with the next line it lets through ("N lines suppressed") or when the run
//! ends. A failure, warning or refused sample identical to the previous one
//! of its kind is logged again only after [`REPEAT_EVERY`], with how often
//! it repeated meanwhile ("N repeats suppressed").
//!
//! [`LogGate`] is pure (time is passed in); [`MonitorLog`] is the shell that
//! holds one behind a lock and writes the admitted lines with `tracing`.
//! Neither decides what a monitor's output means.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};
pub use vigil_sdk::resource::MAX_TEXT_LEN;

/// Lines a monitor may log at once after a quiet spell.
pub const BURST: u32 = 20;
/// Lines a monitor may log per second in the long run.
pub const LINES_PER_SECOND: u32 = 1;
/// How often an unchanged failure is logged again.
pub const REPEAT_EVERY: Duration = Duration::from_secs(60);

/// `text` cut to at most `max` bytes on a character boundary, with a note
/// of how much was cut.
pub fn cap_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let note = format!("… ({} bytes cut)", text.len());
    let keep = max.saturating_sub(note.len());
    let mut end = keep.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{note}", &text[..end])
}

/// What the gate decided about one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` lines were dropped since the last one logged.
    Log { suppressed: u64 },
    /// Drop it (it is counted).
    Drop,
}

/// What the gate decided about one failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureVerdict {
    /// Log it; it is the same as the last one logged, seen `repeated` more
    /// times since; `suppressed` other lines were dropped meanwhile.
    Log {
        repeated: u64,
        suppressed: u64,
    },
    Drop,
}

/// What kind of repeatable message: each kind remembers its own last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// The monitor failed (its resources go unknown).
    Failure,
    /// The monitor worked but said something wrong (a dropped perfdata item).
    Warning,
    /// The registry refused one of its samples.
    Refused,
}

/// The last message of a [`Repeat`] kind logged, when, and how often it
/// came again since without being logged.
#[derive(Debug, Clone, Default)]
struct Last {
    message: Option<(String, Instant)>,
    repeats: u64,
}

/// A token bucket of log lines, plus the last failure and warning logged.
#[derive(Debug, Clone)]
pub struct LogGate {
    tokens: f64,
    last_refill: Instant,
    suppressed: u64,
    last: [Last; 3],
}

impl LogGate {
    pub fn new(now: Instant) -> Self {
        Self {
            tokens: BURST as f64,
            last_refill: now,
            suppressed: 0,
            last: Default::default(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_refill);
        self.tokens =
            (self.tokens + elapsed.as_secs_f64() * LINES_PER_SECOND as f64).min(BURST as f64);
        self.last_refill = now;
    }

    /// Whether the next line may be logged.
    pub fn line(&mut self, now: Instant) -> Verdict {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Verdict::Log {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Verdict::Drop
        }
    }

    /// Whether a failure with `reason` may be logged: an unchanged one only
    /// every [`REPEAT_EVERY`], a new one if the bucket allows a line.
    pub fn failure(&mut self, reason: &str, now: Instant) -> FailureVerdict {
        self.repeatable(Repeat::Failure, reason, now)
    }

    /// [`LogGate::failure`] for a message of any [`Repeat`] kind.
    pub fn repeatable(&mut self, kind: Repeat, message: &str, now: Instant) -> FailureVerdict {
        let slot = kind as usize;
        if let Some((last, at)) = &self.last[slot].message
            && last == message
        {
            if now.saturating_duration_since(*at) < REPEAT_EVERY {
                self.last[slot].repeats += 1;
                return FailureVerdict::Drop;
            }
            let repeated = std::mem::take(&mut self.last[slot].repeats);
            self.last[slot].message = Some((message.to_owned(), now));
            return FailureVerdict::Log {
                repeated,
                suppressed: std::mem::take(&mut self.suppressed),
            };
        }
        match self.line(now) {
            Verdict::Log { suppressed } => {
                self.last[slot] = Last {
                    message: Some((message.to_owned(), now)),
                    repeats: 0,
                };
                FailureVerdict::Log {
                    repeated: 0,
                    suppressed,
                }
            }
            Verdict::Drop => FailureVerdict::Drop,
        }
    }

    /// Lines dropped and not yet reported; the count starts again.
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

/// Where a line came from, for the log message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Stderr,
    LogMessage,
}

/// One monitor's gate and the tracing calls behind it; cheap to clone.
#[derive(Debug, Clone)]
pub struct MonitorLog {
    name: Arc<str>,
    gate: Arc<Mutex<LogGate>>,
}

impl MonitorLog {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            gate: Arc::new(Mutex::new(LogGate::new(Instant::now()))),
        }
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, LogGate> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Logs a line of the monitor's stderr or a `log` message at `level`
    /// (`error`, `warn`, `debug`; anything else is info), if the gate lets it.
    pub fn line(&self, source: Source, level: Option<&str>, text: &str) {
        let Verdict::Log { suppressed } = self.gate().line(Instant::now()) else {
            return;
        };
        self.report_suppressed(suppressed);
        let line = cap_text(text, MAX_TEXT_LEN);
        let monitor = &self.name;
        match (source, level) {
            (Source::Stderr, _) => info!(monitor = %monitor, line = %line, "monitor stderr"),
            (Source::LogMessage, Some("error")) => {
                error!(monitor = %monitor, message = %line, "monitor log")
            }
            (Source::LogMessage, Some("warn" | "warning")) => {
                warn!(monitor = %monitor, message = %line, "monitor log")
            }
            (Source::LogMessage, Some("debug" | "trace")) => {
                debug!(monitor = %monitor, message = %line, "monitor log")
            }
            (Source::LogMessage, _) => info!(monitor = %monitor, message = %line, "monitor log"),
        }
    }

    /// Logs a failure unless it repeats the last one (see [`LogGate::failure`]).
    pub fn failure(&self, reason: &str) {
        self.repeatable(Repeat::Failure, reason);
    }

    /// Logs a warning (the monitor worked but said something wrong) unless
    /// it repeats the last one.
    pub fn warning(&self, message: &str) {
        self.repeatable(Repeat::Warning, message);
    }

    /// Logs a sample the registry refused unless it repeats the last
    /// refusal (a monitor that sends an undeclared sample every poll
    /// repeats the same refusal every poll).
    pub fn refused(&self, refusal: &str) {
        self.repeatable(Repeat::Refused, refusal);
    }

    fn repeatable(&self, kind: Repeat, message: &str) {
        let FailureVerdict::Log {
            repeated,
            suppressed,
        } = self.gate().repeatable(kind, message, Instant::now())
        else {
            return;
        };
        self.report_suppressed(suppressed);
        let message = cap_text(message, MAX_TEXT_LEN);
        let what = match kind {
            Repeat::Failure => "monitor failed",
            Repeat::Warning => "monitor output partly refused",
            Repeat::Refused => "sample refused",
        };
        if repeated > 0 {
            let every = REPEAT_EVERY.as_secs();
            warn!(monitor = %self.name, reason = %message, repeated, "{what} ({repeated} repeats suppressed; the same message is logged at most every {every} s)");
        } else {
            warn!(monitor = %self.name, reason = %message, "{what}");
        }
    }

    /// Reports lines dropped since the last line logged, if any (call when
    /// a run ends, so a flood that stops is still accounted for).
    pub fn flush(&self) {
        let suppressed = self.gate().take_suppressed();
        self.report_suppressed(suppressed);
    }

    fn report_suppressed(&self, suppressed: u64) {
        if suppressed > 0 {
            warn!(
                monitor = %self.name,
                suppressed,
                "monitor output over its log budget: {suppressed} lines suppressed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds the gate events at offsets in milliseconds and records what it
    /// decided: `l` a line, `f:<reason>` a failure.
    fn check(events: &[(u64, &str)], expect: expect_test::Expect) {
        let start = Instant::now();
        let mut gate = LogGate::new(start);
        let mut out = String::new();
        let mut dropped = 0;
        for (ms, event) in events {
            let now = start + Duration::from_millis(*ms);
            let verdict = match (event.strip_prefix("f:"), event.strip_prefix("r:")) {
                (Some(reason), _) => format!("{:?}", gate.failure(reason, now)),
                (_, Some(refusal)) => {
                    format!("{:?}", gate.repeatable(Repeat::Refused, refusal, now))
                }
                _ => format!("{:?}", gate.line(now)),
            };
            if verdict == "Drop" {
                dropped += 1;
                continue;
            }
            if dropped > 0 {
                out.push_str(&format!("  ({dropped} dropped)\n"));
                dropped = 0;
            }
            out.push_str(&format!("{ms} {event}: {verdict}\n"));
        }
        if dropped > 0 {
            out.push_str(&format!("  ({dropped} dropped)\n"));
        }
        out.push_str(&format!("pending {}\n", gate.take_suppressed()));
        expect.assert_eq(&out);
    }

    #[test]
    fn a_flood_gets_a_burst_then_one_line_a_second_with_counts() {
        // 1,000 lines in the first second, then one 2 s later.
        let mut events: Vec<(u64, &str)> = (0..1000).map(|i| (i, "l")).collect();
        events.push((3000, "l"));
        check(
            &events,
            expect_test::expect![[r#"
                0 l: Log { suppressed: 0 }
                1 l: Log { suppressed: 0 }
                2 l: Log { suppressed: 0 }
                3 l: Log { suppressed: 0 }
                4 l: Log { suppressed: 0 }
                5 l: Log { suppressed: 0 }
                6 l: Log { suppressed: 0 }
                7 l: Log { suppressed: 0 }
                8 l: Log { suppressed: 0 }
                9 l: Log { suppressed: 0 }
                10 l: Log { suppressed: 0 }
                11 l: Log { suppressed: 0 }
                12 l: Log { suppressed: 0 }
                13 l: Log { suppressed: 0 }
                14 l: Log { suppressed: 0 }
                15 l: Log { suppressed: 0 }
                16 l: Log { suppressed: 0 }
                17 l: Log { suppressed: 0 }
                18 l: Log { suppressed: 0 }
                19 l: Log { suppressed: 0 }
                  (980 dropped)
                3000 l: Log { suppressed: 980 }
                pending 0
            "#]],
        );
    }

    #[test]
    fn an_unchanged_failure_is_logged_once_a_minute_with_its_count() {
        let mut events = vec![(0, "f:timed out"), (10, "f:timed out"), (20, "f:other")];
        events.extend((1..=100).map(|i| (20 + i * 500, "f:other")));
        events.push((70_000, "f:other"));
        events.push((70_001, "l"));
        check(
            &events,
            expect_test::expect![[r#"
                0 f:timed out: Log { repeated: 0, suppressed: 0 }
                  (1 dropped)
                20 f:other: Log { repeated: 0, suppressed: 0 }
                  (100 dropped)
                70000 f:other: Log { repeated: 100, suppressed: 0 }
                70001 l: Log { suppressed: 0 }
                pending 0
            "#]],
        );
    }

    #[test]
    fn a_refusal_every_poll_is_logged_once_then_counted_once_a_minute() {
        // Every 100 ms for 130 s, beside a failure that repeats too: each
        // kind keeps its own last message.
        let mut events: Vec<(u64, &str)> = (0..1300)
            .map(|i| (i * 100, "r:/x/y is undeclared"))
            .collect();
        events.extend((0..13).map(|i| (i * 10_000 + 50, "f:timed out")));
        events.sort();
        check(
            &events,
            expect_test::expect![[r#"
                0 r:/x/y is undeclared: Log { repeated: 0, suppressed: 0 }
                50 f:timed out: Log { repeated: 0, suppressed: 0 }
                  (604 dropped)
                60000 r:/x/y is undeclared: Log { repeated: 599, suppressed: 0 }
                60050 f:timed out: Log { repeated: 5, suppressed: 0 }
                  (604 dropped)
                120000 r:/x/y is undeclared: Log { repeated: 599, suppressed: 0 }
                120050 f:timed out: Log { repeated: 5, suppressed: 0 }
                  (99 dropped)
                pending 0
            "#]],
        );
    }

    #[test]
    fn dropped_lines_are_pending_until_taken() {
        let events: Vec<(u64, &str)> = (0..25).map(|_| (0, "l")).collect();
        check(
            &events,
            expect_test::expect![[r#"
                0 l: Log { suppressed: 0 }
                0 l: Log { suppressed: 0 }
                0 l: Log { suppressed: 0 }
                0 l: Log { suppressed: 0 }
                0 l: Log { suppressed: 0 }
                0 l: Log { suppressed: 0 }
                0 l: Log { suppressed: 0 }
                0 l: Log { suppressed: 0 }
                0 l: Log { suppressed: 0 }
                0 l: Log { suppressed: 0 }
                0 l: Log { suppressed: 0 }
                0 l: Log { suppressed: 0 }
                0 l: Log { suppressed: 0 }
                0 l: Log { suppressed: 0 }
                0 l: Log { suppressed: 0 }
                0 l: Log { suppressed: 0 }
                0 l: Log { suppressed: 0 }
                0 l: Log { suppressed: 0 }
                0 l: Log { suppressed: 0 }
                0 l: Log { suppressed: 0 }
                  (5 dropped)
                pending 5
            "#]],
        );
    }

    #[test]
    fn long_text_is_capped_on_a_character_boundary() {
        let long = "é".repeat(1000);
        let capped = cap_text(&long, MAX_TEXT_LEN);
        assert!(capped.len() <= MAX_TEXT_LEN, "{}", capped.len());
        assert!(capped.ends_with("… (2000 bytes cut)"), "{capped}");
        assert_eq!(cap_text("short", MAX_TEXT_LEN), "short");
    }
}
