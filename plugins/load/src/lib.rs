//! vigil-load: the bundled `load` monitor.
//!
//! Publishes `/system/load/1min|5min|15min` (from `/proc/loadavg`),
//! `/system/cpu/used_percent` (from the change of `/proc/stat` between two
//! readings) and `/system/memory/avail_percent` (`MemAvailable` over
//! `MemTotal` from `/proc/meminfo`). It is polled only: load moves slowly and
//! has no events to push. It takes no params and does not judge whether a
//! value is too high; that is what a package's `[[resource]]` criteria are for.

use std::time::{Duration, Instant};

use vigil_sdk::{Monitor, MonitorError, ResourceName, ResourcePattern, Sample};

/// Why reading `/proc` failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoadError {
    #[error("load: cannot read {path}: {reason}")]
    Read { path: &'static str, reason: String },
    #[error("load: cannot parse {path}: {what}")]
    Parse {
        path: &'static str,
        what: &'static str,
    },
    #[error("load params: the load monitor takes no params, got {0}")]
    Params(String),
}

const LOADAVG: &str = "/proc/loadavg";
const STAT: &str = "/proc/stat";
const MEMINFO: &str = "/proc/meminfo";

/// How long the first poll watches `/proc/stat` when it has no earlier
/// reading, so that its CPU figure is current rather than since boot.
const FIRST_SAMPLE: Duration = Duration::from_millis(100);

/// Aggregate CPU time counters from the `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub total: u64,
    pub idle: u64,
}

/// Parses the `cpu` line; idle includes iowait (a CPU waiting on disk is not
/// busy), and guest time is already counted in user time so it is left out.
pub fn parse_stat(text: &str) -> Result<CpuTimes, LoadError> {
    let bad = |what| LoadError::Parse { path: STAT, what };
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or(bad("no cpu line"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad("a cpu counter is not a number"))?;
    if fields.len() < 4 {
        return Err(bad("fewer than 4 cpu counters"));
    }
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Ok(CpuTimes {
        total: fields.iter().sum(),
        idle,
    })
}

/// Percent of CPU time spent busy between two readings; `None` when no time
/// passed (two readings in the same clock tick).
pub fn cpu_used_percent(before: CpuTimes, after: CpuTimes) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    let idle = after.idle.saturating_sub(before.idle);
    if total == 0 {
        return None;
    }
    Some((total.saturating_sub(idle) as f64 / total as f64 * 100.0).clamp(0.0, 100.0))
}

/// The three load averages.
pub fn parse_loadavg(text: &str) -> Result<[f64; 3], LoadError> {
    let bad = |what| LoadError::Parse {
        path: LOADAVG,
        what,
    };
    let mut fields = text.split_whitespace().map(str::parse::<f64>);
    let mut next = || match fields.next() {
        Some(Ok(v)) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(bad("expected three non-negative load averages")),
    };
    Ok([next()?, next()?, next()?])
}

/// `MemAvailable` as a percent of `MemTotal`.
pub fn parse_meminfo(text: &str) -> Result<f64, LoadError> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
    };
    let total = field("MemTotal").ok_or(LoadError::Parse {
        path: MEMINFO,
        what: "no MemTotal",
    })?;
    let avail = field("MemAvailable").ok_or(LoadError::Parse {
        path: MEMINFO,
        what: "no MemAvailable (kernel older than 3.14)",
    })?;
    if total == 0 {
        return Err(LoadError::Parse {
            path: MEMINFO,
            what: "MemTotal is 0",
        });
    }
    Ok((avail as f64 / total as f64 * 100.0).clamp(0.0, 100.0))
}

fn read(path: &'static str) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|e| LoadError::Read {
        path,
        reason: e.to_string(),
    })
}

fn name(path: &str) -> ResourceName {
    // Only called with the fixed names below, which are valid.
    ResourceName::new(path).expect("fixed resource names are valid")
}

/// The `load` monitor.
#[derive(Debug, Default)]
pub struct LoadMonitor {
    /// The `/proc/stat` reading of the previous poll.
    last_cpu: Option<CpuTimes>,
    /// The last figure computed, reused when two polls share a clock tick.
    last_cpu_percent: Option<f64>,
}

impl LoadMonitor {
    fn cpu_sample(&mut self, deadline: Instant) -> Sample {
        let resource = name("/system/cpu/used_percent");
        let now = match read(STAT).and_then(|t| parse_stat(&t)) {
            Ok(now) => now,
            Err(e) => return Sample::unknown(resource, e.to_string()),
        };
        let mut before = self.last_cpu;
        let mut after = now;
        if before.is_none() {
            // First poll: watch a short while if the deadline allows, else
            // fall back to the average since boot (a zero baseline).
            let left = deadline.saturating_duration_since(Instant::now());
            if left > FIRST_SAMPLE * 3 {
                std::thread::sleep(FIRST_SAMPLE);
                if let Ok(later) = read(STAT).and_then(|t| parse_stat(&t)) {
                    before = Some(now);
                    after = later;
                }
            }
        }
        let before = before.unwrap_or(CpuTimes { total: 0, idle: 0 });
        self.last_cpu = Some(after);
        match cpu_used_percent(before, after).or(self.last_cpu_percent) {
            Some(percent) => {
                self.last_cpu_percent = Some(percent);
                Sample::number(resource, percent, Some("%"))
            }
            None => Sample::unknown(resource, "no cpu time passed between readings"),
        }
    }
}

impl Monitor for LoadMonitor {
    fn configure(params: serde_json::Value) -> Result<Self, MonitorError> {
        match &params {
            serde_json::Value::Null => {}
            serde_json::Value::Object(map) if map.is_empty() => {}
            other => {
                return Err(MonitorError::new(
                    LoadError::Params(other.to_string()).to_string(),
                ));
            }
        }
        Ok(Self::default())
    }

    fn declare(&self) -> Vec<ResourcePattern> {
        [
            "/system/load/1min",
            "/system/load/5min",
            "/system/load/15min",
            "/system/cpu/used_percent",
            "/system/memory/avail_percent",
        ]
        .into_iter()
        // Fixed, valid names.
        .map(|p| ResourcePattern::new(p).expect("fixed patterns are valid"))
        .collect()
    }

    fn poll(&mut self, deadline: Instant) -> Result<Vec<Sample>, MonitorError> {
        let mut samples = Vec::with_capacity(5);
        let loads = [
            "/system/load/1min",
            "/system/load/5min",
            "/system/load/15min",
        ];
        match read(LOADAVG).and_then(|t| parse_loadavg(&t)) {
            Ok(values) => {
                for (path, value) in loads.into_iter().zip(values) {
                    samples.push(Sample::number(name(path), value, None));
                }
            }
            Err(e) => samples.extend(loads.map(|p| Sample::unknown(name(p), e.to_string()))),
        }
        samples.push(self.cpu_sample(deadline));
        let memory = name("/system/memory/avail_percent");
        samples.push(match read(MEMINFO).and_then(|t| parse_meminfo(&t)) {
            Ok(percent) => Sample::number(memory, percent, Some("%")),
            Err(e) => Sample::unknown(memory, e.to_string()),
        });
        Ok(samples)
    }
}

vigil_sdk::export_monitor!(LoadMonitor);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_counts_iowait_as_idle() {
        let text = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\nintr 1\n";
        assert_eq!(
            parse_stat(text),
            Ok(CpuTimes {
                total: 1000,
                idle: 850
            })
        );
        assert!(parse_stat("intr 1\n").is_err());
        assert!(parse_stat("cpu  1 x 3 4\n").is_err());
    }

    #[test]
    fn cpu_percent_between_readings() {
        let a = CpuTimes {
            total: 1000,
            idle: 850,
        };
        let b = CpuTimes {
            total: 1200,
            idle: 900,
        };
        assert_eq!(cpu_used_percent(a, b), Some(75.0));
        assert_eq!(cpu_used_percent(a, a), None, "same tick");
        assert_eq!(cpu_used_percent(b, a), None, "counters went backwards");
    }

    #[test]
    fn loadavg_and_meminfo() {
        assert_eq!(
            parse_loadavg("0.52 0.58 0.59 2/345 1234\n"),
            Ok([0.52, 0.58, 0.59])
        );
        assert!(parse_loadavg("0.52 0.58\n").is_err());
        let mem = "MemTotal:       16000000 kB\nMemFree: 1 kB\nMemAvailable:    4000000 kB\n";
        assert_eq!(parse_meminfo(mem), Ok(25.0));
        let err = parse_meminfo("MemTotal: 1 kB\n").unwrap_err();
        assert!(
            err.to_string().contains("/proc/meminfo: no MemAvailable"),
            "{err}"
        );
    }
}
