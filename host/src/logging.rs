//! The `vigil` process's own log on stderr: `[logging] format = "text"`
//! (tracing's usual lines) or `"json"` (one JSON object per line:
//! `timestamp`, `level`, `target`, `message`, `fields`), and, when stderr is
//! the systemd journal, a `<N>` syslog priority in front of each line so
//! journald files errors as errors (sd-daemon(3); journald strips it, so a
//! JSON line stays JSON in the journal).
//!
//! It does not write files, rotate anything or talk to journald's native
//! protocol: under systemd, stderr is the journal stream. Span fields are
//! not included (the host logs with events only).

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// The syslog priority of a level, as journald reads it from `<N>`.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// True when `journal_stream` (`$JOURNAL_STREAM`, "DEV:INODE") names the
/// file that is this process's stderr: systemd connected it to the journal.
pub fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    use std::os::fd::AsFd;
    let Some((dev, ino)) = journal_stream.and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(stat.st_dev) && ino.parse::<u64>().ok() == Some(stat.st_ino)
}

/// One JSON log line (without the newline).
pub fn json_line(
    timestamp: &str,
    level: &Level,
    target: &str,
    message: &str,
    fields: BTreeMap<String, Value>,
) -> String {
    let mut object = Map::new();
    object.insert("timestamp".into(), timestamp.into());
    object.insert("level".into(), level.as_str().into());
    object.insert("target".into(), target.into());
    object.insert("message".into(), message.into());
    object.insert("fields".into(), Value::Object(fields.into_iter().collect()));
    Value::Object(object).to_string()
}

/// Collects an event's message and fields as JSON values.
#[derive(Default)]
struct Fields {
    message: String,
    fields: BTreeMap<String, Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
        } else {
            self.fields.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%x` fields arrive here already Display-formatted; `?x` as Debug.
        self.put(field, format!("{value:?}").into());
    }
}

/// `[logging] format = "json"`.
struct JsonLines {
    journal: bool,
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        if self.journal {
            write!(writer, "<{}>", priority(meta.level()))?;
        }
        let line = json_line(
            &now,
            meta.level(),
            meta.target(),
            &fields.message,
            fields.fields,
        );
        writeln!(writer, "{line}")
    }
}

/// Text lines, with the journal's `<N>` in front when stderr is the journal.
struct Prefixed {
    inner: Format<Full>,
    journal: bool,
}

impl<S, N> FormatEvent<S, N> for Prefixed
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.journal {
            write!(writer, "<{}>", priority(event.metadata().level()))?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}

/// Installs the global subscriber: `filter` from `$VIGIL_LOG`, else
/// `default_level`; `format` from `[logging]` (text for every command but
/// `vigil host`).
pub fn init(format: LogFormat, default_level: &str) {
    use std::io::IsTerminal;
    let filter =
        EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let journal = stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.event_format(JsonLines { journal }).init(),
        LogFormat::Text => builder
            .event_format(Prefixed {
                inner: Format::default().with_ansi(std::io::stderr().is_terminal() && !journal),
                journal,
            })
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_lines_carry_timestamp_level_target_message_and_fields() {
        fn check(level: Level, fields: Value, expected: Value) {
            let fields: BTreeMap<String, Value> = serde_json::from_value(fields).unwrap();
            let line = json_line(
                "2026-01-01T00:00:00Z",
                &level,
                "vigil_host::daemon",
                "vigil host running",
                fields,
            );
            assert!(!line.contains('\n'), "one line: {line}");
            let parsed: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(parsed, expected);
        }
        check(
            Level::INFO,
            json!({"node": "node1", "monitors": 3}),
            json!({"timestamp": "2026-01-01T00:00:00Z", "level": "INFO", "target": "vigil_host::daemon",
                   "message": "vigil host running", "fields": {"node": "node1", "monitors": 3}}),
        );
        check(
            Level::ERROR,
            json!({"error": "a\nb \"q\""}),
            json!({"timestamp": "2026-01-01T00:00:00Z", "level": "ERROR", "target": "vigil_host::daemon",
                   "message": "vigil host running", "fields": {"error": "a\nb \"q\""}}),
        );
    }

    #[test]
    fn priorities_follow_syslog() {
        let table = [
            (Level::ERROR, 3),
            (Level::WARN, 4),
            (Level::INFO, 6),
            (Level::DEBUG, 7),
            (Level::TRACE, 7),
        ];
        for (level, want) in table {
            assert_eq!(priority(&level), want, "{level}");
        }
    }

    #[test]
    fn journal_stream_must_name_stderr() {
        assert!(!stderr_is_journal(None));
        assert!(!stderr_is_journal(Some("garbage")));
        assert!(!stderr_is_journal(Some("0:0")));
    }
}
