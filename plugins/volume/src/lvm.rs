//! LVM volume-group and logical-volume health, from `vgs` and `lvs`
//! reports in JSON.
//!
//! Parsing and judging are pure functions of the report text, tested on
//! recorded output (`tests/fixtures/`); [`Report::spawn`] runs the tool as a
//! subprocess with a deadline, killing it when the deadline passes. LVM has
//! no change notification a monitor can use without udev, so VG and LV
//! health is read on polls only.
//!
//! This module never changes LVM state (no activation, no repair).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::health::Health;

/// Why a report could not be had or read. Its text becomes the reason of an
/// unknown status.
#[derive(Debug, thiserror::Error)]
pub enum LvmError {
    #[error("{tool} not found on PATH or in /usr/sbin, /sbin (install lvm2)")]
    NotFound { tool: &'static str },
    #[error("cannot run {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot wait for {tool}: {source}")]
    Wait {
        tool: &'static str,
        source: std::io::Error,
    },
    #[error("{tool} did not answer before the poll deadline")]
    Timeout { tool: &'static str },
    #[error("{tool} failed ({status}): {message}")]
    Failed {
        tool: &'static str,
        status: std::process::ExitStatus,
        message: String,
    },
    #[error("no JSON report in the output")]
    NoReport,
    #[error("unreadable JSON report: {0}")]
    BadJson(#[from] serde_json::Error),
    #[error("JSON report has no \"report\" array")]
    NoReportArray,
}

/// `vgs` arguments: one row per VG with what judging needs.
pub const VGS_ARGS: &[&str] = &[
    "--reportformat",
    "json",
    "-o",
    "vg_name,vg_attr,vg_missing_pv_count,pv_count",
];

/// `lvs` arguments: one row per LV with what judging needs.
pub const LVS_ARGS: &[&str] = &[
    "--reportformat",
    "json",
    "-o",
    "lv_name,vg_name,lv_attr,lv_health_status",
];

/// One row of `vgs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VgRecord {
    pub name: String,
    pub attr: String,
    pub missing_pv_count: u64,
    pub pv_count: u64,
}

/// One row of `lvs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvRecord {
    pub name: String,
    pub vg: String,
    pub attr: String,
    pub health_status: String,
}

/// Rows of a report section (`"vg"` or `"lv"`), each a JSON object. The
/// document may be preceded by stray text and followed by a `"log"`
/// section; values may be strings (`json`) or numbers (`json_std`).
fn rows(
    text: &str,
    section: &str,
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, LvmError> {
    let start = text.find('{').ok_or(LvmError::NoReport)?;
    let document: serde_json::Value = serde_json::from_str(&text[start..])?;
    let reports = document
        .get("report")
        .and_then(|r| r.as_array())
        .ok_or(LvmError::NoReportArray)?;
    let mut rows = Vec::new();
    for report in reports {
        if let Some(entries) = report.get(section).and_then(|s| s.as_array()) {
            rows.extend(entries.iter().filter_map(|e| e.as_object().cloned()));
        }
    }
    Ok(rows)
}

fn text_field(row: &serde_json::Map<String, serde_json::Value>, key: &str) -> String {
    match row.get(key) {
        Some(serde_json::Value::String(s)) => s.trim().to_owned(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn count_field(row: &serde_json::Map<String, serde_json::Value>, key: &str) -> u64 {
    text_field(row, key).parse().unwrap_or(0)
}

pub fn parse_vgs(text: &str) -> Result<Vec<VgRecord>, LvmError> {
    Ok(rows(text, "vg")?
        .iter()
        .map(|row| VgRecord {
            name: text_field(row, "vg_name"),
            attr: text_field(row, "vg_attr"),
            missing_pv_count: count_field(row, "vg_missing_pv_count"),
            pv_count: count_field(row, "pv_count"),
        })
        .collect())
}

pub fn parse_lvs(text: &str) -> Result<Vec<LvRecord>, LvmError> {
    Ok(rows(text, "lv")?
        .iter()
        .map(|row| LvRecord {
            name: text_field(row, "lv_name"),
            vg: text_field(row, "vg_name"),
            attr: text_field(row, "lv_attr"),
            health_status: text_field(row, "lv_health_status"),
        })
        .collect())
}

fn attr_char(attr: &str, index: usize) -> char {
    attr.chars().nth(index).unwrap_or('-')
}

/// A missing PV (`p` in the fourth attribute, or a missing-PV count) makes
/// the VG degraded, like EMS's `pv_summary`; an absent or exported VG is
/// down; a read-only VG is degraded.
pub fn vg_health(vgs: &[VgRecord], name: &str) -> Health {
    let Some(vg) = vgs.iter().find(|vg| vg.name == name) else {
        return Health::Down(format!("volume group {name} not found"));
    };
    if attr_char(&vg.attr, 2) == 'x' {
        return Health::Down(format!("volume group {name} is exported"));
    }
    if attr_char(&vg.attr, 3) == 'p' || vg.missing_pv_count > 0 {
        return Health::Degraded(format!(
            "volume group {name} is partial: {} of {} physical volumes missing",
            vg.missing_pv_count, vg.pv_count
        ));
    }
    if attr_char(&vg.attr, 0) == 'r' {
        return Health::Degraded(format!("volume group {name} is read-only"));
    }
    Health::Up
}

/// An LV must exist and be active (fifth attribute `a`); a health status
/// (`partial`, `refresh needed`, `mismatches exist`) makes it degraded.
pub fn lv_health(lvs: &[LvRecord], vg: &str, name: &str) -> Health {
    let Some(lv) = lvs.iter().find(|lv| lv.vg == vg && lv.name == name) else {
        return Health::Down(format!("logical volume {vg}/{name} not found"));
    };
    let state = match attr_char(&lv.attr, 4) {
        'a' => None,
        '-' => Some("is not active"),
        's' | 'S' => Some("is suspended"),
        'I' => Some("is an invalid snapshot"),
        'm' | 'd' | 'i' => Some("has a device without its table"),
        'X' => return Health::Unknown(format!("logical volume {vg}/{name}: state unknown to lvs")),
        _ => Some("is not active"),
    };
    if let Some(state) = state {
        return Health::Down(format!("logical volume {vg}/{name} {state}"));
    }
    let health = attr_char(&lv.attr, 8);
    if !lv.health_status.is_empty() {
        return Health::Degraded(format!("logical volume {vg}/{name}: {}", lv.health_status));
    }
    match health {
        '-' => Health::Up,
        'p' => Health::Degraded(format!("logical volume {vg}/{name}: partial")),
        'X' => Health::Unknown(format!("logical volume {vg}/{name}: health unknown to lvs")),
        other => Health::Degraded(format!("logical volume {vg}/{name}: health flag {other:?}")),
    }
}

/// Finds an LVM tool on `PATH`, then in the sbin directories a daemon's
/// `PATH` often lacks.
fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// A running `vgs` or `lvs`.
#[derive(Debug)]
pub struct Report {
    tool: &'static str,
    child: Child,
    stdout: JoinHandle<Vec<u8>>,
    stderr: JoinHandle<Vec<u8>>,
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

impl Report {
    /// Starts `tool` with `args` in its own process group, reading its
    /// output on helper threads so a large report cannot block it.
    pub fn spawn(tool: &'static str, args: &[&str]) -> Result<Self, LvmError> {
        let path = find_tool(tool).ok_or(LvmError::NotFound { tool })?;
        Self::spawn_path(tool, &path, args)
    }

    fn spawn_path(tool: &'static str, path: &Path, args: &[&str]) -> Result<Self, LvmError> {
        let mut child = Command::new(path)
            .args(args)
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|source| LvmError::Spawn {
                path: path.to_owned(),
                source,
            })?;
        // Both pipes were requested above, so both are present.
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            let source = std::io::Error::other("no output pipes");
            return Err(LvmError::Spawn {
                path: path.to_owned(),
                source,
            });
        };
        Ok(Self {
            tool,
            child,
            stdout: drain(stdout),
            stderr: drain(stderr),
        })
    }

    /// Waits until `deadline` for the tool to exit and returns its stdout;
    /// on timeout kills its process group and reaps it.
    pub fn finish(mut self, deadline: Instant) -> Result<String, LvmError> {
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
                    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                    let _ = self.child.wait();
                    return Err(LvmError::Timeout { tool: self.tool });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(source) => {
                    return Err(LvmError::Wait {
                        tool: self.tool,
                        source,
                    });
                }
            }
        };
        let stdout = self.stdout.join().unwrap_or_default();
        let stderr = self.stderr.join().unwrap_or_default();
        let stdout = String::from_utf8_lossy(&stdout).into_owned();
        if status.success() || stdout.contains('{') {
            return Ok(stdout);
        }
        let stderr = String::from_utf8_lossy(&stderr);
        let first = stderr
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no message");
        Err(LvmError::Failed {
            tool: self.tool,
            status,
            message: first.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn show(health: Health) -> String {
        match health {
            Health::Up => "up".to_owned(),
            Health::Degraded(r) => format!("degraded: {r}"),
            Health::Down(r) => format!("down: {r}"),
            Health::Unknown(r) => format!("unknown: {r}"),
        }
    }

    fn check_vg(file: &str, vg: &str, expect: &str) {
        let vgs = parse_vgs(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(show(vg_health(&vgs, vg)), expect, "{file} {vg}");
    }

    fn check_lv(file: &str, vg: &str, lv: &str, expect: &str) {
        let lvs = parse_lvs(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(show(lv_health(&lvs, vg, lv)), expect, "{file} {vg}/{lv}");
    }

    #[test]
    fn volume_groups() {
        check_vg("vgs-healthy.json", "vgdata", "up");
        check_vg("vgs-healthy.json", "vgroot", "up");
        check_vg(
            "vgs-healthy.json",
            "vgother",
            "down: volume group vgother not found",
        );
        check_vg(
            "vgs-partial.json",
            "vgdata",
            "degraded: volume group vgdata is partial: 1 of 2 physical volumes missing",
        );
        check_vg("vgs-partial.json", "vgroot", "up");
        check_vg(
            "vgs-exported-readonly.json",
            "vgmoved",
            "down: volume group vgmoved is exported",
        );
        check_vg(
            "vgs-exported-readonly.json",
            "vgro",
            "degraded: volume group vgro is read-only",
        );
        check_vg("vgs-json-std-with-log.json", "vgdata", "up");
        check_vg(
            "vgs-none.json",
            "vgdata",
            "down: volume group vgdata not found",
        );
    }

    #[test]
    fn logical_volumes() {
        check_lv("lvs-active.json", "vgdata", "lvdata", "up");
        check_lv("lvs-active.json", "vgdata", "lvlog", "up");
        check_lv(
            "lvs-active.json",
            "vgroot",
            "lvdata",
            "down: logical volume vgroot/lvdata not found",
        );
        check_lv(
            "lvs-inactive.json",
            "vgdata",
            "lvdata",
            "down: logical volume vgdata/lvdata is not active",
        );
        check_lv(
            "lvs-inactive.json",
            "vgdata",
            "lvsusp",
            "down: logical volume vgdata/lvsusp is suspended",
        );
        check_lv(
            "lvs-inactive.json",
            "vgdata",
            "snap",
            "down: logical volume vgdata/snap is an invalid snapshot",
        );
        check_lv(
            "lvs-raid-health.json",
            "vgdata",
            "mirror",
            "degraded: logical volume vgdata/mirror: partial",
        );
        check_lv(
            "lvs-raid-health.json",
            "vgdata",
            "resync",
            "degraded: logical volume vgdata/resync: refresh needed",
        );
        check_lv(
            "lvs-raid-health.json",
            "vgdata",
            "scrubbed",
            "degraded: logical volume vgdata/scrubbed: mismatches exist",
        );
        check_lv(
            "lvs-raid-health.json",
            "vgdata",
            "linear",
            "degraded: logical volume vgdata/linear: partial",
        );
        check_lv(
            "lvs-raid-health.json",
            "vgdata",
            "mystery",
            "unknown: logical volume vgdata/mystery: state unknown to lvs",
        );
    }

    #[test]
    fn unreadable_reports_name_the_problem() {
        let vgs_error = |text: &str| parse_vgs(text).expect_err("refused").to_string();
        assert_eq!(
            vgs_error("  WARNING: nothing\n"),
            "no JSON report in the output"
        );
        assert!(vgs_error("{\"report\": [").starts_with("unreadable JSON report"));
        let lvs_error = parse_lvs("{}").expect_err("refused").to_string();
        assert_eq!(lvs_error, "JSON report has no \"report\" array");
        // Stray text before the document is skipped.
        let vgs =
            parse_vgs(&format!("  WARNING: x\n{}", fixture("vgs-healthy.json"))).expect("parses");
        assert_eq!(vgs.len(), 2);
    }

    #[test]
    fn a_hung_tool_is_killed_at_the_deadline() {
        let started = Instant::now();
        let report =
            Report::spawn_path("sleep", Path::new("/bin/sleep"), &["30"]).expect("spawn sleep");
        let error = report
            .finish(Instant::now() + Duration::from_millis(200))
            .expect_err("killed");
        assert_eq!(
            error.to_string(),
            "sleep did not answer before the poll deadline"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "killed, not waited out"
        );
    }

    #[test]
    fn a_failing_tool_reports_its_first_error_line() {
        let script = "echo '  Volume group \"x\" not found' >&2; exit 5";
        let report =
            Report::spawn_path("sh", Path::new("/bin/sh"), &["-c", script]).expect("spawn sh");
        let error = report
            .finish(Instant::now() + Duration::from_secs(10))
            .expect_err("fails");
        assert_eq!(
            error.to_string(),
            "sh failed (exit status: 5): Volume group \"x\" not found"
        );
    }

    #[test]
    fn a_missing_tool_is_named() {
        let error = Report::spawn("vigil-no-such-lvm-tool", &[]).expect_err("not found");
        assert!(
            error
                .to_string()
                .contains("vigil-no-such-lvm-tool not found"),
            "{error}"
        );
    }
}
