//! Nagios plugin output: exit codes, text, perfdata and threshold ranges.
//!
//! Any unmodified Nagios / monitoring-plugins check can be a vigil monitor:
//! its exit code becomes `/nagios/<N>/status` and each perfdata label
//! becomes `/nagios/<N>/<label>`. This module parses what a check printed
//! (per the Nagios plugin development guidelines) and maps it to samples.
//! It is pure: it does not run the check, bound its output or enforce its
//! timeout — the host's subprocess runner does that and hands the exit code
//! and stdout here.
//!
//! Parsing is lenient where the real world is messy: a bad perfdata item is
//! reported in [`CheckOutput::errors`] and the good items around it are
//! kept; a bad threshold, min or max field drops only that field.

use std::collections::HashSet;
use std::fmt;

use crate::resource::{
    MAX_NAME_LEN, MAX_TEXT_LEN, ResourceName, ResourcePattern, Sample, encode_segment,
};

/// Prefix of every resource a nagios monitor publishes.
pub const NAME_PREFIX: &str = "/nagios";

/// Segment used for a perfdata label spelled `status`, so that it cannot
/// collide with the status resource. [`encode_segment`] only ever emits `_`
/// followed by two hex digits, so `_status` is outside its image and no other
/// label maps to it.
pub const STATUS_LABEL_SEGMENT: &str = "_status";

/// What went wrong reading a check's output or naming its resources.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NagiosError {
    #[error("threshold {text:?}: {why}")]
    BadThreshold { text: String, why: String },
    #[error("perfdata item {item:?}: {why}")]
    BadPerfItem { item: String, why: String },
    #[error("perfdata item {item:?}: {field} field {text:?} ignored: {why}")]
    BadPerfField {
        item: String,
        field: &'static str,
        text: String,
        why: String,
    },
    #[error("perfdata label {label:?} repeated; the first one is kept")]
    DuplicateLabel { label: String },
    #[error(
        "nagios monitor {monitor}: perfdata label {label:?} gives a resource name longer than {MAX_NAME_LEN} bytes"
    )]
    NameTooLong { monitor: String, label: String },
    #[error("nagios monitor name {name:?} is not one valid resource name segment")]
    BadMonitorName { name: String },
}

/// The service state a check reports through its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NagiosStatus {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl NagiosStatus {
    /// Maps an exit code: 0 ok, 1 warning, 2 critical, 3 unknown. Any other
    /// code, and `None` (the check died by a signal), is unknown: a check
    /// that broke tells us nothing about the service.
    pub fn from_exit_code(code: Option<i32>) -> Self {
        match code {
            Some(0) => Self::Ok,
            Some(1) => Self::Warning,
            Some(2) => Self::Critical,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for NagiosStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Nagios threshold range: alert when the value lies outside
/// `start..=end`, or inside it when written with a leading `@`.
///
/// | text     | alerts when           |
/// |----------|-----------------------|
/// | `10`     | < 0 or > 10           |
/// | `10:`    | < 10                  |
/// | `~:10`   | > 10                  |
/// | `10:20`  | < 10 or > 20          |
/// | `@10:20` | 10 ≤ value ≤ 20       |
///
/// An empty start (`:10`) means 0, as in monitoring-plugins.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    /// Lower bound; `-inf` for `~`.
    pub start: f64,
    /// Upper bound; `+inf` when omitted (`10:`).
    pub end: f64,
    /// `@`: alert inside the range instead of outside.
    pub inside: bool,
}

impl Threshold {
    pub fn parse(text: &str) -> Result<Self, NagiosError> {
        let bad = |why: &str| NagiosError::BadThreshold {
            text: text.to_owned(),
            why: why.to_owned(),
        };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(bad("empty"));
        }
        let (inside, body) = match trimmed.strip_prefix('@') {
            Some(body) => (true, body),
            None => (false, trimmed),
        };
        let number =
            |s: &str| parse_finite(s).ok_or_else(|| bad(&format!("{s:?} is not a finite number")));
        let (start, end) = match body.split_once(':') {
            None => (0.0, number(body)?),
            Some((start, end)) => {
                let start = match start {
                    "~" => f64::NEG_INFINITY,
                    "" => 0.0,
                    s => number(s)?,
                };
                let end = if end.is_empty() {
                    f64::INFINITY
                } else {
                    number(end)?
                };
                (start, end)
            }
        };
        if start > end {
            return Err(bad("start is greater than end"));
        }
        Ok(Self { start, end, inside })
    }

    /// True when `value` should raise an alert. NaN never alerts.
    pub fn alerts(&self, value: f64) -> bool {
        let within = self.start <= value && value <= self.end;
        if self.inside {
            within
        } else {
            !within && !value.is_nan()
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.inside {
            f.write_str("@")?;
        }
        if self.start == f64::NEG_INFINITY {
            f.write_str("~:")?;
        } else if self.start != 0.0 || self.end == f64::INFINITY {
            write!(f, "{}:", self.start)?;
        }
        if self.end != f64::INFINITY {
            write!(f, "{}", self.end)?;
        }
        Ok(())
    }
}

/// One perfdata item: `'label'=value[UOM];[warn];[crit];[min];[max]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PerfDatum {
    /// The label, unquoted and unescaped (`'it''s'` gives `it's`).
    pub label: String,
    /// `None` when the check printed `U` (it could not determine the value).
    pub value: Option<f64>,
    /// The unit of measure as printed (`s`, `ms`, `%`, `B`, `KB`, `c`, …).
    pub unit: Option<String>,
    pub warn: Option<Threshold>,
    pub crit: Option<Threshold>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// Everything a check said: status from the exit code, its text and the
/// perfdata, plus every perfdata problem found on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckOutput {
    pub status: NagiosStatus,
    /// As given to [`CheckOutput::parse`]; `None` when killed by a signal.
    pub exit_code: Option<i32>,
    /// The first line, before any `|`, trimmed.
    pub text: String,
    /// The following lines up to the next `|`, trimmed; may be empty.
    pub long_text: String,
    pub perfdata: Vec<PerfDatum>,
    pub errors: Vec<NagiosError>,
}

impl CheckOutput {
    /// Parses a check's stdout (`TEXT | PERFDATA` on the first line, then
    /// `LONG TEXT | MORE PERFDATA` across the following lines) given how it
    /// exited (`None` = killed by a signal). Never fails: problems land in
    /// [`CheckOutput::errors`]. Hosts reading raw bytes should decode them
    /// with `String::from_utf8_lossy` first.
    pub fn parse(exit_code: Option<i32>, stdout: &str) -> Self {
        let (first, rest) = stdout.split_once('\n').unwrap_or((stdout, ""));
        let (text, first_perf) = first.split_once('|').unwrap_or((first, ""));
        let (long_text, more_perf) = rest.split_once('|').unwrap_or((rest, ""));
        let mut output = Self {
            status: NagiosStatus::from_exit_code(exit_code),
            exit_code,
            text: text.trim().to_owned(),
            long_text: long_text
                .lines()
                .map(str::trim_end)
                .collect::<Vec<_>>()
                .join("\n")
                .trim()
                .to_owned(),
            perfdata: Vec::new(),
            errors: Vec::new(),
        };
        let mut seen = HashSet::new();
        for perf in [first_perf, more_perf] {
            for item in split_items(perf) {
                match item.and_then(|item| parse_item(item, &mut output.errors)) {
                    Ok(datum) if !seen.insert(datum.label.clone()) => {
                        output
                            .errors
                            .push(NagiosError::DuplicateLabel { label: datum.label });
                    }
                    Ok(datum) => output.perfdata.push(datum),
                    Err(error) => output.errors.push(error),
                }
            }
        }
        output
    }

    /// Why the status is what it is, for the status sample's reason: the
    /// text line, or what broke when the exit code is not a Nagios status.
    pub fn reason(&self) -> Option<String> {
        let broken = match self.exit_code {
            None => Some("check was killed by a signal".to_owned()),
            Some(0..=3) => None,
            Some(code) => Some(format!("check exited with code {code}, not 0-3")),
        };
        let reason = match (broken, self.text.is_empty()) {
            (Some(broken), true) => broken,
            (Some(broken), false) => format!("{broken}: {}", self.text),
            (None, false) => self.text.clone(),
            (None, true) if self.status == NagiosStatus::Unknown => {
                "check reported unknown without text".to_owned()
            }
            (None, true) => return None,
        };
        Some(truncate(&reason, MAX_TEXT_LEN).to_owned())
    }
}

/// Samples for one run of a nagios monitor, and the perfdata problems to log.
#[derive(Debug, Clone, PartialEq)]
pub struct NagiosSamples {
    pub samples: Vec<Sample>,
    /// The parse errors of the output, then labels that could not be named.
    pub errors: Vec<NagiosError>,
}

fn monitor_prefix(monitor: &str) -> Result<String, NagiosError> {
    let bad = || NagiosError::BadMonitorName {
        name: monitor.to_owned(),
    };
    if monitor.contains('/') || monitor == "*" {
        return Err(bad());
    }
    let status = format!("{NAME_PREFIX}/{monitor}/status");
    ResourceName::new(status).map_err(|_| bad())?;
    Ok(format!("{NAME_PREFIX}/{monitor}"))
}

/// The resource name segment for a perfdata label: [`encode_segment`], so
/// arbitrary labels give valid names and two labels never share one, except
/// that `status` becomes [`STATUS_LABEL_SEGMENT`].
pub fn label_segment(label: &str) -> String {
    if label == "status" {
        STATUS_LABEL_SEGMENT.to_owned()
    } else {
        encode_segment(label)
    }
}

/// `/nagios/<monitor>/status`, the name the exit code is published under.
pub fn status_name(monitor: &str) -> Result<ResourceName, NagiosError> {
    let prefix = monitor_prefix(monitor)?;
    ResourceName::new(format!("{prefix}/status")).map_err(|_| NagiosError::BadMonitorName {
        name: monitor.to_owned(),
    })
}

/// What a nagios monitor named `monitor` declares: `/nagios/<monitor>/status`
/// and `/nagios/<monitor>/*` (its perfdata labels are only known once the
/// check has run).
pub fn declared_patterns(monitor: &str) -> Result<Vec<ResourcePattern>, NagiosError> {
    let prefix = monitor_prefix(monitor)?;
    ["status", "*"]
        .into_iter()
        .map(|last| {
            ResourcePattern::new(format!("{prefix}/{last}")).map_err(|_| {
                NagiosError::BadMonitorName {
                    name: monitor.to_owned(),
                }
            })
        })
        .collect()
}

/// Maps one run of the check to samples: the status first (text `ok`,
/// `warning` or `critical` with the text line as reason; an *unknown*
/// sample, value `None`, for unknown — so that no criterion such as
/// `!= critical` ever takes a broken check for up), then one number per
/// perfdata label with its unit kept (`U` gives an unknown sample).
pub fn samples(monitor: &str, output: &CheckOutput) -> Result<NagiosSamples, NagiosError> {
    let prefix = monitor_prefix(monitor)?;
    let mut errors = output.errors.clone();
    let mut samples = Vec::with_capacity(1 + output.perfdata.len());
    let status = status_name(monitor)?;
    let reason = output.reason();
    samples.push(match output.status {
        NagiosStatus::Unknown => Sample::unknown(
            status,
            reason.unwrap_or_else(|| "check reported unknown".to_owned()),
        ),
        known => {
            let sample = Sample::text(status, known.as_str());
            match reason {
                Some(reason) => sample.with_reason(reason),
                None => sample,
            }
        }
    });
    for datum in &output.perfdata {
        let Ok(name) = ResourceName::new(format!("{prefix}/{}", label_segment(&datum.label)))
        else {
            errors.push(NagiosError::NameTooLong {
                monitor: monitor.to_owned(),
                label: datum.label.clone(),
            });
            continue;
        };
        samples.push(match datum.value {
            Some(value) => Sample::number(name, value, datum.unit.as_deref()),
            None => Sample::unknown(name, "check printed U: value could not be determined"),
        });
    }
    Ok(NagiosSamples { samples, errors })
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Accepts only plain decimal numbers (no `inf`, `nan`), finite.
fn parse_finite(text: &str) -> Option<f64> {
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    if !plain || !text.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// A raw item: its whole text (for messages), its label, and what follows `=`.
#[derive(Debug)]
struct RawItem<'a> {
    text: &'a str,
    label: String,
    rest: &'a str,
}

/// Splits perfdata into items at whitespace, honouring quoted labels
/// (`'free space'=3`, `'it''s'=1`). A malformed item yields an error and
/// the split resumes at the next whitespace.
fn split_items(perf: &str) -> Vec<Result<RawItem<'_>, NagiosError>> {
    let mut items = Vec::new();
    let mut rest = perf.trim_start();
    let bad = |item: &str, why: &str| NagiosError::BadPerfItem {
        item: item.to_owned(),
        why: why.to_owned(),
    };
    let token_end = |s: &str, from: usize| {
        s[from..]
            .find(char::is_whitespace)
            .map_or(s.len(), |i| from + i)
    };
    while !rest.is_empty() {
        let consumed;
        if let Some(quoted) = rest.strip_prefix('\'') {
            let mut label = String::new();
            let mut pos = 0;
            let mut close = None;
            while let Some(i) = quoted[pos..].find('\'') {
                label.push_str(&quoted[pos..pos + i]);
                let after = pos + i + 1;
                if quoted[after..].starts_with('\'') {
                    label.push('\'');
                    pos = after + 1;
                } else {
                    close = Some(after + 1); // offset in `rest`, past the closing quote
                    break;
                }
            }
            match close {
                None => {
                    items.push(Err(bad(rest, "label quote is not closed")));
                    consumed = rest.len();
                }
                Some(close) => {
                    let end = token_end(rest, close);
                    let text = &rest[..end];
                    match rest[close..end].strip_prefix('=') {
                        Some(value) if !label.is_empty() => items.push(Ok(RawItem {
                            text,
                            label,
                            rest: value,
                        })),
                        Some(_) => items.push(Err(bad(text, "label is empty"))),
                        None => items.push(Err(bad(text, "expected '=' after the quoted label"))),
                    }
                    consumed = end;
                }
            }
        } else {
            let end = token_end(rest, 0);
            let text = &rest[..end];
            match text.split_once('=') {
                None => items.push(Err(bad(text, "expected label=value"))),
                Some(("", _)) => items.push(Err(bad(text, "label is empty"))),
                Some((label, _)) if label.contains('\'') => {
                    items.push(Err(bad(text, "quote inside an unquoted label")))
                }
                Some((label, value)) => items.push(Ok(RawItem {
                    text,
                    label: label.to_owned(),
                    rest: value,
                })),
            }
            consumed = end;
        }
        rest = rest[consumed..].trim_start();
    }
    items
}

/// Splits `12.5ms` into `12.5` and `ms`.
fn split_number(text: &str) -> (&str, &str) {
    let b = text.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
        i += 1;
    }
    if i < b.len() && matches!(b[i], b'e' | b'E') {
        let mut j = i + 1;
        if j < b.len() && matches!(b[j], b'+' | b'-') {
            j += 1;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            i = j;
        }
    }
    text.split_at(i)
}

/// Units are kept as printed: `%`, or letters optionally per something
/// (`KB`, `c`, `B/s`). The guidelines list s, ms, us, %, B, KB, MB, TB, c;
/// plugins in the wild use more, and the unit is only carried along.
fn unit_ok(unit: &str) -> bool {
    if unit == "%" {
        return true;
    }
    let mut parts = unit.split('/');
    parts.all(|p| !p.is_empty() && p.len() <= 16 && p.bytes().all(|b| b.is_ascii_alphabetic()))
        && unit.matches('/').count() <= 1
}

fn parse_item(raw: RawItem<'_>, errors: &mut Vec<NagiosError>) -> Result<PerfDatum, NagiosError> {
    let bad = |why: String| NagiosError::BadPerfItem {
        item: raw.text.to_owned(),
        why,
    };
    let mut fields = raw.rest.split(';');
    // split always yields at least one field
    let value_field = fields.next().unwrap_or("");
    let (value, unit) = if value_field == "U" {
        (None, None)
    } else {
        let (number, unit) = split_number(value_field);
        if number.is_empty() {
            return Err(bad(if value_field.is_empty() {
                "value is empty".to_owned()
            } else {
                format!("value {value_field:?} is not a number or U")
            }));
        }
        let value = parse_finite(number)
            .ok_or_else(|| bad(format!("value {number:?} is not a finite number")))?;
        if !unit.is_empty() && !unit_ok(unit) {
            return Err(bad(format!("unit {unit:?} is not a unit of measure")));
        }
        (Some(value), (!unit.is_empty()).then(|| unit.to_owned()))
    };
    let mut field_error = |field: &'static str, text: &str, why: String| {
        errors.push(NagiosError::BadPerfField {
            item: raw.text.to_owned(),
            field,
            text: text.to_owned(),
            why,
        });
    };
    let mut threshold = |field: &'static str, text: Option<&str>| match text {
        None | Some("") => None,
        Some(text) => match Threshold::parse(text) {
            Ok(t) => Some(t),
            Err(NagiosError::BadThreshold { why, .. }) => {
                field_error(field, text, why);
                None
            }
            Err(other) => {
                field_error(field, text, other.to_string());
                None
            }
        },
    };
    let warn = threshold("warn", fields.next());
    let crit = threshold("crit", fields.next());
    let mut bound = |field: &'static str, text: Option<&str>| match text {
        None | Some("") => None,
        Some(text) => {
            // Some plugins repeat the unit on min/max (`0%`); the guidelines
            // say not to, but the number is still meant.
            let number = unit
                .as_deref()
                .and_then(|u| text.strip_suffix(u))
                .unwrap_or(text);
            let parsed = parse_finite(number);
            if parsed.is_none() {
                field_error(field, text, "not a finite number".to_owned());
            }
            parsed
        }
    };
    let min = bound("min", fields.next());
    let max = bound("max", fields.next());
    let extra: Vec<&str> = fields.filter(|f| !f.is_empty()).collect();
    if !extra.is_empty() {
        errors.push(NagiosError::BadPerfField {
            item: raw.text.to_owned(),
            field: "extra",
            text: extra.join(";"),
            why: "more than value;warn;crit;min;max".to_owned(),
        });
    }
    Ok(PerfDatum {
        label: raw.label,
        value,
        unit,
        warn,
        crit,
        min,
        max,
    })
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use expect_test::{Expect, expect};

    use super::*;
    use crate::resource::Value;

    fn render_bound(v: Option<f64>) -> String {
        v.map_or_else(|| "-".to_owned(), |v| v.to_string())
    }

    fn render_threshold(t: Option<Threshold>) -> String {
        t.map_or_else(|| "-".to_owned(), |t| t.to_string())
    }

    /// Parses `stdout` as printed by a check that exited with `exit_code`,
    /// maps it to samples of a monitor named `chk`, and compares a readable
    /// rendering of both with `expect`.
    fn check(exit_code: Option<i32>, stdout: &str, expect: Expect) {
        let output = CheckOutput::parse(exit_code, stdout);
        let mut out = String::new();
        writeln!(out, "status {} text {:?}", output.status, output.text).unwrap();
        if !output.long_text.is_empty() {
            writeln!(out, "long {:?}", output.long_text).unwrap();
        }
        for d in &output.perfdata {
            let value = d.value.map_or_else(|| "U".to_owned(), |v| v.to_string());
            writeln!(
                out,
                "perf {:?} = {value} {} warn {} crit {} min {} max {}",
                d.label,
                d.unit.as_deref().unwrap_or("-"),
                render_threshold(d.warn),
                render_threshold(d.crit),
                render_bound(d.min),
                render_bound(d.max),
            )
            .unwrap();
        }
        let mapped = samples("chk", &output).expect("chk is a valid monitor name");
        for s in &mapped.samples {
            s.validate().expect("every mapped sample is valid");
            let value = match &s.value {
                None => "unknown".to_owned(),
                Some(Value::Text(t)) => format!("{t:?}"),
                Some(Value::Number { value, unit }) => {
                    format!("{value} {}", unit.as_deref().unwrap_or("-"))
                }
            };
            writeln!(out, "sample {} = {value} reason {:?}", s.name, s.reason).unwrap();
        }
        for e in &mapped.errors {
            writeln!(out, "error {e}").unwrap();
        }
        expect.assert_eq(&out);
    }

    // Outputs recorded from monitoring-plugins 2.3.3 (Debian 12).

    #[test]
    fn real_check_load() {
        check(
            Some(0),
            "LOAD OK - total load average: 0.09, 0.15, 0.07|load1=0.090;1.000;2.000;0; load5=0.150;1.000;2.000;0; load15=0.070;1.000;2.000;0; \n",
            expect![[r#"
                status ok text "LOAD OK - total load average: 0.09, 0.15, 0.07"
                perf "load1" = 0.09 - warn 1 crit 2 min 0 max -
                perf "load5" = 0.15 - warn 1 crit 2 min 0 max -
                perf "load15" = 0.07 - warn 1 crit 2 min 0 max -
                sample /nagios/chk/status = "ok" reason Some("LOAD OK - total load average: 0.09, 0.15, 0.07")
                sample /nagios/chk/load1 = 0.09 - reason None
                sample /nagios/chk/load5 = 0.15 - reason None
                sample /nagios/chk/load15 = 0.07 - reason None
            "#]],
        );
    }

    #[test]
    fn real_check_load_scaled() {
        check(
            Some(0),
            "LOAD OK - scaled load average: 0.01, 0.06, 0.03 - total load average: 0.02, 0.11, 0.06|load1=0.020;;;0; scaled_load1=0.010;1.000;2.000;0; load5=0.110;;;0; scaled_load5=0.055;1.000;2.000;0; load15=0.060;;;0; scaled_load15=0.030;1.000;2.000;0; \n",
            expect![[r#"
                status ok text "LOAD OK - scaled load average: 0.01, 0.06, 0.03 - total load average: 0.02, 0.11, 0.06"
                perf "load1" = 0.02 - warn - crit - min 0 max -
                perf "scaled_load1" = 0.01 - warn 1 crit 2 min 0 max -
                perf "load5" = 0.11 - warn - crit - min 0 max -
                perf "scaled_load5" = 0.055 - warn 1 crit 2 min 0 max -
                perf "load15" = 0.06 - warn - crit - min 0 max -
                perf "scaled_load15" = 0.03 - warn 1 crit 2 min 0 max -
                sample /nagios/chk/status = "ok" reason Some("LOAD OK - scaled load average: 0.01, 0.06, 0.03 - total load average: 0.02, 0.11, 0.06")
                sample /nagios/chk/load1 = 0.02 - reason None
                sample /nagios/chk/scaled_5fload1 = 0.01 - reason None
                sample /nagios/chk/load5 = 0.11 - reason None
                sample /nagios/chk/scaled_5fload5 = 0.055 - reason None
                sample /nagios/chk/load15 = 0.06 - reason None
                sample /nagios/chk/scaled_5fload15 = 0.03 - reason None
            "#]],
        );
    }

    #[test]
    fn real_check_load_usage_error() {
        check(
            Some(3),
            "check_load: Could not parse arguments\nUsage:\ncheck_load [-r] -w WLOAD1,WLOAD5,WLOAD15 -c CLOAD1,CLOAD5,CLOAD15 [-n NUMBER_OF_PROCS]\n",
            expect![[r#"
                status unknown text "check_load: Could not parse arguments"
                long "Usage:\ncheck_load [-r] -w WLOAD1,WLOAD5,WLOAD15 -c CLOAD1,CLOAD5,CLOAD15 [-n NUMBER_OF_PROCS]"
                sample /nagios/chk/status = unknown reason Some("check_load: Could not parse arguments")
            "#]],
        );
    }

    #[test]
    fn real_check_disk() {
        check(
            Some(0),
            "DISK OK - free space: / 81251MiB (87% inode=97%);| /=12374245376B;243497277849;257024904396;0;270552530944\n",
            expect![[r#"
                status ok text "DISK OK - free space: / 81251MiB (87% inode=97%);"
                perf "/" = 12374245376 B warn 243497277849 crit 257024904396 min 0 max 270552530944
                sample /nagios/chk/status = "ok" reason Some("DISK OK - free space: / 81251MiB (87% inode=97%);")
                sample /nagios/chk/_2f = 12374245376 B reason None
            "#]],
        );
    }

    #[test]
    fn real_check_procs() {
        check(
            Some(0),
            "PROCS OK: 73 processes | procs=73;;;0;\n",
            expect![[r#"
            status ok text "PROCS OK: 73 processes"
            perf "procs" = 73 - warn - crit - min 0 max -
            sample /nagios/chk/status = "ok" reason Some("PROCS OK: 73 processes")
            sample /nagios/chk/procs = 73 - reason None
        "#]],
        );
    }

    #[test]
    fn real_check_swap_critical() {
        check(
            Some(2),
            "SWAP CRITICAL - 0% free (0MB out of 0MB) - Swap is either disabled, not present, or of zero size. |swap=0B;0;0;0;0\n",
            expect![[r#"
                status critical text "SWAP CRITICAL - 0% free (0MB out of 0MB) - Swap is either disabled, not present, or of zero size."
                perf "swap" = 0 B warn 0 crit 0 min 0 max 0
                sample /nagios/chk/status = "critical" reason Some("SWAP CRITICAL - 0% free (0MB out of 0MB) - Swap is either disabled, not present, or of zero size.")
                sample /nagios/chk/swap = 0 B reason None
            "#]],
        );
    }

    #[test]
    fn real_check_users() {
        check(
            Some(0),
            "USERS OK - 0 users currently logged in |users=0;5;10;0\n",
            expect![[r#"
                status ok text "USERS OK - 0 users currently logged in"
                perf "users" = 0 - warn 5 crit 10 min 0 max -
                sample /nagios/chk/status = "ok" reason Some("USERS OK - 0 users currently logged in")
                sample /nagios/chk/users = 0 - reason None
            "#]],
        );
    }

    #[test]
    fn real_check_dummy() {
        check(
            Some(2),
            "CRITICAL: text\n",
            expect![[r#"
            status critical text "CRITICAL: text"
            sample /nagios/chk/status = "critical" reason Some("CRITICAL: text")
        "#]],
        );
    }

    // Edge cases.

    #[test]
    fn quoted_labels_with_spaces_and_quotes() {
        check(
            Some(0),
            "OK | 'free space'=3GB;;;0;10 'it''s'=1 '/var/log'=20% 'a=b'=1c ''''=2\n",
            expect![[r#"
                status ok text "OK"
                perf "free space" = 3 GB warn - crit - min 0 max 10
                perf "it's" = 1 - warn - crit - min - max -
                perf "/var/log" = 20 % warn - crit - min - max -
                perf "a=b" = 1 c warn - crit - min - max -
                perf "'" = 2 - warn - crit - min - max -
                sample /nagios/chk/status = "ok" reason Some("OK")
                sample /nagios/chk/free_20space = 3 GB reason None
                sample /nagios/chk/it_27s = 1 - reason None
                sample /nagios/chk/_2fvar_2flog = 20 % reason None
                sample /nagios/chk/a_3db = 1 c reason None
                sample /nagios/chk/_27 = 2 - reason None
            "#]],
        );
    }

    #[test]
    fn long_text_with_perfdata_after_second_pipe() {
        check(
            Some(1),
            "DISK WARNING - free space low | /=2643MB;5948;5958;0;5968\n/ 15272 MB (77%);\n/boot 68 MB (69%);\n/home 69357 MB (27%); | /boot=68MB;88;93;0;98\n/home=69357MB;253404;253409;0;253414\n/var/log=818MB;970;975;0;980\n",
            expect![[r#"
                status warning text "DISK WARNING - free space low"
                long "/ 15272 MB (77%);\n/boot 68 MB (69%);\n/home 69357 MB (27%);"
                perf "/" = 2643 MB warn 5948 crit 5958 min 0 max 5968
                perf "/boot" = 68 MB warn 88 crit 93 min 0 max 98
                perf "/home" = 69357 MB warn 253404 crit 253409 min 0 max 253414
                perf "/var/log" = 818 MB warn 970 crit 975 min 0 max 980
                sample /nagios/chk/status = "warning" reason Some("DISK WARNING - free space low")
                sample /nagios/chk/_2f = 2643 MB reason None
                sample /nagios/chk/_2fboot = 68 MB reason None
                sample /nagios/chk/_2fhome = 69357 MB reason None
                sample /nagios/chk/_2fvar_2flog = 818 MB reason None
            "#]],
        );
    }

    #[test]
    fn long_text_without_perfdata() {
        check(
            Some(0),
            "OK - all fine\nline two\n  line three  \n",
            expect![[r#"
            status ok text "OK - all fine"
            long "line two\n  line three"
            sample /nagios/chk/status = "ok" reason Some("OK - all fine")
        "#]],
        );
    }

    #[test]
    fn undetermined_values() {
        check(
            Some(0),
            "OK | rta=U;;;; loss=0% pl=U\n",
            expect![[r#"
            status ok text "OK"
            perf "rta" = U - warn - crit - min - max -
            perf "loss" = 0 % warn - crit - min - max -
            perf "pl" = U - warn - crit - min - max -
            sample /nagios/chk/status = "ok" reason Some("OK")
            sample /nagios/chk/rta = unknown reason Some("check printed U: value could not be determined")
            sample /nagios/chk/loss = 0 % reason None
            sample /nagios/chk/pl = unknown reason Some("check printed U: value could not be determined")
        "#]],
        );
    }

    #[test]
    fn missing_unit_empty_fields_and_units() {
        check(
            Some(0),
            "OK | a=1 b=2;;;; c=3;;; d=-1.5e3ms e=10us f=7KB g=8TB h=9c i=3B/s j=4;@10:20;~:5;;\n",
            expect![[r#"
                status ok text "OK"
                perf "a" = 1 - warn - crit - min - max -
                perf "b" = 2 - warn - crit - min - max -
                perf "c" = 3 - warn - crit - min - max -
                perf "d" = -1500 ms warn - crit - min - max -
                perf "e" = 10 us warn - crit - min - max -
                perf "f" = 7 KB warn - crit - min - max -
                perf "g" = 8 TB warn - crit - min - max -
                perf "h" = 9 c warn - crit - min - max -
                perf "i" = 3 B/s warn - crit - min - max -
                perf "j" = 4 - warn @10:20 crit ~:5 min - max -
                sample /nagios/chk/status = "ok" reason Some("OK")
                sample /nagios/chk/a = 1 - reason None
                sample /nagios/chk/b = 2 - reason None
                sample /nagios/chk/c = 3 - reason None
                sample /nagios/chk/d = -1500 ms reason None
                sample /nagios/chk/e = 10 us reason None
                sample /nagios/chk/f = 7 KB reason None
                sample /nagios/chk/g = 8 TB reason None
                sample /nagios/chk/h = 9 c reason None
                sample /nagios/chk/i = 3 B/s reason None
                sample /nagios/chk/j = 4 - reason None
            "#]],
        );
    }

    #[test]
    fn garbage_items_keep_the_good_ones() {
        check(
            Some(0),
            "OK | good=1 novalue= justtext =5 x=abc y=1.2.3 z=5!! inf=inf big=1e999 also_good=2s 'unclosed=3\n",
            expect![[r#"
                status ok text "OK"
                perf "good" = 1 - warn - crit - min - max -
                perf "also_good" = 2 s warn - crit - min - max -
                sample /nagios/chk/status = "ok" reason Some("OK")
                sample /nagios/chk/good = 1 - reason None
                sample /nagios/chk/also_5fgood = 2 s reason None
                error perfdata item "novalue=": value is empty
                error perfdata item "justtext": expected label=value
                error perfdata item "=5": label is empty
                error perfdata item "x=abc": value "abc" is not a number or U
                error perfdata item "y=1.2.3": value "1.2.3" is not a finite number
                error perfdata item "z=5!!": unit "!!" is not a unit of measure
                error perfdata item "inf=inf": value "inf" is not a number or U
                error perfdata item "big=1e999": value "1e999" is not a finite number
                error perfdata item "'unclosed=3": label quote is not closed
            "#]],
        );
    }

    #[test]
    fn bad_fields_drop_only_the_field() {
        check(
            Some(0),
            "OK | a=1;x;20:10;zero;5 b=5%;80;90;0%;100% c=1;;;;;junk d=2;;;;;\n",
            expect![[r#"
                status ok text "OK"
                perf "a" = 1 - warn - crit - min - max 5
                perf "b" = 5 % warn 80 crit 90 min 0 max 100
                perf "c" = 1 - warn - crit - min - max -
                perf "d" = 2 - warn - crit - min - max -
                sample /nagios/chk/status = "ok" reason Some("OK")
                sample /nagios/chk/a = 1 - reason None
                sample /nagios/chk/b = 5 % reason None
                sample /nagios/chk/c = 1 - reason None
                sample /nagios/chk/d = 2 - reason None
                error perfdata item "a=1;x;20:10;zero;5": warn field "x" ignored: "x" is not a finite number
                error perfdata item "a=1;x;20:10;zero;5": crit field "20:10" ignored: start is greater than end
                error perfdata item "a=1;x;20:10;zero;5": min field "zero" ignored: not a finite number
                error perfdata item "c=1;;;;;junk": extra field "junk" ignored: more than value;warn;crit;min;max
            "#]],
        );
    }

    #[test]
    fn duplicate_labels_keep_the_first() {
        check(
            Some(0),
            "OK | a=1 a=2 'a'=3 b=4\n",
            expect![[r#"
            status ok text "OK"
            perf "a" = 1 - warn - crit - min - max -
            perf "b" = 4 - warn - crit - min - max -
            sample /nagios/chk/status = "ok" reason Some("OK")
            sample /nagios/chk/a = 1 - reason None
            sample /nagios/chk/b = 4 - reason None
            error perfdata label "a" repeated; the first one is kept
            error perfdata label "a" repeated; the first one is kept
        "#]],
        );
    }

    #[test]
    fn labels_become_distinct_valid_segments() {
        check(
            Some(0),
            "OK | status=1 _status=2 a/b=3 a_2fb=4 'with space'=5 ü=6\n",
            expect![[r#"
                status ok text "OK"
                perf "status" = 1 - warn - crit - min - max -
                perf "_status" = 2 - warn - crit - min - max -
                perf "a/b" = 3 - warn - crit - min - max -
                perf "a_2fb" = 4 - warn - crit - min - max -
                perf "with space" = 5 - warn - crit - min - max -
                perf "ü" = 6 - warn - crit - min - max -
                sample /nagios/chk/status = "ok" reason Some("OK")
                sample /nagios/chk/_status = 1 - reason None
                sample /nagios/chk/_5fstatus = 2 - reason None
                sample /nagios/chk/a_2fb = 3 - reason None
                sample /nagios/chk/a_5f2fb = 4 - reason None
                sample /nagios/chk/with_20space = 5 - reason None
                sample /nagios/chk/_c3_bc = 6 - reason None
            "#]],
        );
    }

    #[test]
    fn label_too_long_for_a_name() {
        let label = "ä".repeat(100);
        let output = CheckOutput::parse(Some(0), &format!("OK | {label}=1 ok=2"));
        let mapped = samples("chk", &output).unwrap();
        let names: Vec<&str> = mapped.samples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["/nagios/chk/status", "/nagios/chk/ok"]);
        assert_eq!(
            mapped.errors,
            [NagiosError::NameTooLong {
                monitor: "chk".into(),
                label
            }]
        );
    }

    #[test]
    fn exit_code_out_of_range() {
        check(
            Some(4),
            "OK - looks fine | a=1\n",
            expect![[r#"
            status unknown text "OK - looks fine"
            perf "a" = 1 - warn - crit - min - max -
            sample /nagios/chk/status = unknown reason Some("check exited with code 4, not 0-3: OK - looks fine")
            sample /nagios/chk/a = 1 - reason None
        "#]],
        );
        check(
            Some(255),
            "",
            expect![[r#"
            status unknown text ""
            sample /nagios/chk/status = unknown reason Some("check exited with code 255, not 0-3")
        "#]],
        );
        check(
            Some(-1),
            "weird\n",
            expect![[r#"
            status unknown text "weird"
            sample /nagios/chk/status = unknown reason Some("check exited with code -1, not 0-3: weird")
        "#]],
        );
    }

    #[test]
    fn killed_by_signal() {
        check(
            None,
            "partial outp",
            expect![[r#"
            status unknown text "partial outp"
            sample /nagios/chk/status = unknown reason Some("check was killed by a signal: partial outp")
        "#]],
        );
    }

    #[test]
    fn no_perfdata_and_empty_output() {
        check(
            Some(0),
            "HTTP OK\n",
            expect![[r#"
            status ok text "HTTP OK"
            sample /nagios/chk/status = "ok" reason Some("HTTP OK")
        "#]],
        );
        check(
            Some(0),
            "",
            expect![[r#"
            status ok text ""
            sample /nagios/chk/status = "ok" reason None
        "#]],
        );
        check(
            Some(3),
            "",
            expect![[r#"
            status unknown text ""
            sample /nagios/chk/status = unknown reason Some("check reported unknown without text")
        "#]],
        );
        check(
            Some(1),
            "WARNING |",
            expect![[r#"
            status warning text "WARNING"
            sample /nagios/chk/status = "warning" reason Some("WARNING")
        "#]],
        );
        check(
            Some(0),
            "\r\n",
            expect![[r#"
            status ok text ""
            sample /nagios/chk/status = "ok" reason None
        "#]],
        );
    }

    #[test]
    fn crlf_output() {
        check(
            Some(0),
            "OK - fine | a=1;2;3\r\nmore\r\n",
            expect![[r#"
            status ok text "OK - fine"
            long "more"
            perf "a" = 1 - warn 2 crit 3 min - max -
            sample /nagios/chk/status = "ok" reason Some("OK - fine")
            sample /nagios/chk/a = 1 - reason None
        "#]],
        );
    }

    #[test]
    fn status_words() {
        let table = [
            (0, "ok"),
            (1, "warning"),
            (2, "critical"),
            (3, "unknown"),
            (4, "unknown"),
        ];
        for (code, word) in table {
            assert_eq!(
                NagiosStatus::from_exit_code(Some(code)).as_str(),
                word,
                "exit {code}"
            );
        }
        assert_eq!(NagiosStatus::from_exit_code(None), NagiosStatus::Unknown);
    }

    /// `text` parsed as a threshold, then each (value, alerts) pair.
    fn check_threshold(text: &str, table: &[(f64, bool)]) {
        let t = Threshold::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        for &(value, alerts) in table {
            assert_eq!(t.alerts(value), alerts, "threshold {text:?} value {value}");
        }
        let again = Threshold::parse(&t.to_string()).unwrap();
        assert_eq!(
            again, t,
            "{text} displays as {t} which parses back the same"
        );
    }

    #[test]
    fn thresholds() {
        check_threshold(
            "10",
            &[
                (-0.1, true),
                (0.0, false),
                (5.0, false),
                (10.0, false),
                (10.1, true),
            ],
        );
        check_threshold(
            "10:",
            &[(9.9, true), (10.0, false), (1e9, false), (-5.0, true)],
        );
        check_threshold("~:10", &[(-1e9, false), (10.0, false), (10.5, true)]);
        check_threshold(
            "10:20",
            &[(9.0, true), (10.0, false), (20.0, false), (21.0, true)],
        );
        check_threshold(
            "@10:20",
            &[
                (9.0, false),
                (10.0, true),
                (15.0, true),
                (20.0, true),
                (20.5, false),
            ],
        );
        check_threshold(
            "@10",
            &[(-1.0, false), (0.0, true), (10.0, true), (11.0, false)],
        );
        check_threshold(":5", &[(-1.0, true), (0.0, false), (6.0, true)]);
        check_threshold("-10:-5", &[(-11.0, true), (-7.0, false), (0.0, true)]);
        check_threshold("1.5e2", &[(150.0, false), (151.0, true)]);
        check_threshold(" 3 ", &[(4.0, true)]);
        check_threshold("~:", &[(-1e300, false), (1e300, false)]);
        check_threshold("0", &[(0.0, false), (0.1, true), (f64::NAN, false)]);
    }

    #[test]
    fn threshold_errors() {
        let table = [
            ("", expect![[r#"threshold "": empty"#]]),
            (
                "@",
                expect![[r#"threshold "@": "" is not a finite number"#]],
            ),
            (
                "20:10",
                expect![[r#"threshold "20:10": start is greater than end"#]],
            ),
            (
                "abc",
                expect![[r#"threshold "abc": "abc" is not a finite number"#]],
            ),
            (
                "10:x",
                expect![[r#"threshold "10:x": "x" is not a finite number"#]],
            ),
            (
                "inf",
                expect![[r#"threshold "inf": "inf" is not a finite number"#]],
            ),
            (
                "~",
                expect![[r#"threshold "~": "~" is not a finite number"#]],
            ),
            (
                "10~:20",
                expect![[r#"threshold "10~:20": "10~" is not a finite number"#]],
            ),
        ];
        for (text, expect) in table {
            let error = Threshold::parse(text).expect_err(text);
            expect.assert_eq(&error.to_string());
        }
    }

    #[test]
    fn declared_patterns_and_monitor_names() {
        let patterns = declared_patterns("disk_root").unwrap();
        let shown: Vec<&str> = patterns.iter().map(|p| p.as_str()).collect();
        assert_eq!(shown, ["/nagios/disk_root/status", "/nagios/disk_root/*"]);
        for bad in ["", "a/b", "*", "my disk", "ü"] {
            assert_eq!(
                declared_patterns(bad),
                Err(NagiosError::BadMonitorName {
                    name: bad.to_owned()
                }),
                "{bad:?}"
            );
            assert!(
                samples(bad, &CheckOutput::parse(Some(0), "OK")).is_err(),
                "{bad:?}"
            );
        }
        // Every sample of a run matches what the monitor declared.
        let output = CheckOutput::parse(Some(0), "OK | 'a b'=1 status=2 c=U");
        for s in samples("disk_root", &output).unwrap().samples {
            assert!(patterns.iter().any(|p| p.matches(&s.name)), "{}", s.name);
        }
    }

    #[test]
    fn long_reason_is_truncated_to_a_valid_sample() {
        let text = "é".repeat(MAX_TEXT_LEN);
        let output = CheckOutput::parse(Some(2), &text);
        let mapped = samples("chk", &output).unwrap();
        let reason = mapped.samples[0].reason.as_deref().unwrap();
        assert!(reason.len() <= MAX_TEXT_LEN && reason.starts_with("éé"));
        mapped.samples[0].validate().unwrap();
    }

    const PLUGINS: &str = "/usr/lib/nagios/plugins";

    /// Runs a real monitoring-plugins check; `None` when absent and the
    /// caller asked to skip.
    fn run_plugin(name: &str, args: &[&str]) -> Option<CheckOutput> {
        let path = std::path::Path::new(PLUGINS).join(name);
        if !path.exists() {
            if std::env::var_os("VIGIL_SKIP_PRIVILEGED").is_some_and(|v| v == "1") {
                eprintln!(
                    "skipped: {} is missing (VIGIL_SKIP_PRIVILEGED=1)",
                    path.display()
                );
                return None;
            }
            panic!(
                "{} is missing: install monitoring-plugins-basic or set VIGIL_SKIP_PRIVILEGED=1",
                path.display()
            );
        }
        let out = std::process::Command::new(&path)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
        Some(CheckOutput::parse(
            out.status.code(),
            &String::from_utf8_lossy(&out.stdout),
        ))
    }

    #[test]
    fn real_plugins_parse() {
        let Some(dummy) = run_plugin("check_dummy", &["1", "hello"]) else {
            return;
        };
        assert_eq!(dummy.status, NagiosStatus::Warning);
        assert_eq!(dummy.text, "WARNING: hello");
        assert!(dummy.perfdata.is_empty() && dummy.errors.is_empty());
        let mapped = samples("dummy", &dummy).unwrap();
        assert_eq!(mapped.samples.len(), 1);
        assert_eq!(mapped.samples[0].value, Some(Value::text("warning")));

        // Thresholds far above any real load so the status is always ok.
        let Some(load) = run_plugin(
            "check_load",
            &["-w", "1000,1000,1000", "-c", "2000,2000,2000"],
        ) else {
            return;
        };
        assert_eq!(load.status, NagiosStatus::Ok, "{load:?}");
        assert!(load.errors.is_empty(), "{:?}", load.errors);
        for label in ["load1", "load5", "load15"] {
            let datum = load.perfdata.iter().find(|d| d.label == label);
            let datum = datum.unwrap_or_else(|| panic!("no {label} in {load:?}"));
            assert!(datum.value.is_some_and(|v| v >= 0.0), "{datum:?}");
            assert_eq!(
                datum.warn,
                Some(Threshold {
                    start: 0.0,
                    end: 1000.0,
                    inside: false
                })
            );
        }
        let names: Vec<String> = samples("load", &load)
            .unwrap()
            .samples
            .iter()
            .map(|s| s.name.to_string())
            .collect();
        assert!(
            names.contains(&"/nagios/load/load15".to_owned()),
            "{names:?}"
        );
    }
}
