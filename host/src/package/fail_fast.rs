//! Fail-fast (DESIGN §5, Serviceguard's meaning): when a `fail_fast`
//! service (or a `node_fail_fast` package) fails, the node halts at once.
//!
//! The daemon calls [`kill_packages`] when the manager reports the failure
//! ([`PackageManager::take_fail_fast`](super::manager::PackageManager::take_fail_fast)):
//! every package of this node is stopped without its `halt` script — the
//! recorded service process groups and every process group a child of this
//! host leads (services, and `run` or `halt` scripts under way) get
//! SIGKILL, then the recorded parts are released and the run records
//! removed, so the guard has nothing left to halt. The manager then
//! revokes the node's lease, so the other nodes take its packages over at
//! once, and the host ends (`halt_node`, exit status [`EXIT_STATUS`]) or
//! the machine is rebooted (`reboot`, [`reboot`]).
//!
//! A host that stayed up fenced would have to keep its monitors, socket
//! and guard running while refusing every action and every rejoin; ending
//! the process is simpler and cannot run a package by mistake. systemd does
//! not restart it (`RestartPreventExitStatus=4` in the unit): the node
//! stays out until an operator starts `vigil host` again.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::{error, warn};

use super::agent::record_path;
use super::lifecycle::{Liveness, RunRecord};
use super::parts::{self, PartContext, SystemParts};

/// `vigil host`'s exit status after a fail-fast halt of its node.
pub const EXIT_STATUS: i32 = 4;

/// `vigil host` ended because a fail-fast failure halted its node.
#[derive(Debug, thiserror::Error)]
#[error("fail-fast halted node {node}: {why}")]
pub struct NodeHalted {
    pub node: String,
    pub why: String,
}

/// How long the killed process groups get to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The fields of `/proc/<pid>/stat` this module needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    state: char,
    ppid: i32,
    pgid: i32,
    session: i32,
}

fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgid: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
    })
}

fn processes() -> Vec<(i32, Stat)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parse_stat(&text)?))
        })
        .collect()
}

/// The process groups led by children of `host` that are not session
/// leaders: its services and scripts each lead a group of their own, while
/// the guard leads a session of its own and outlives the host.
fn child_groups(host: i32, procs: &[(i32, Stat)]) -> BTreeSet<i32> {
    procs
        .iter()
        .filter(|(pid, s)| s.ppid == host && s.pgid == *pid && s.session != *pid)
        .map(|(pid, _)| *pid)
        .collect()
}

fn live_groups(procs: &[(i32, Stat)]) -> BTreeSet<i32> {
    procs
        .iter()
        .filter(|(_, s)| s.state != 'Z' && s.state != 'X')
        .map(|(_, s)| s.pgid)
        .collect()
}

/// Stops every package of this node without `halt` scripts: SIGKILL to
/// their process groups, parts released, run records removed. Returns what
/// could not be done (logged too).
pub fn kill_packages<'a>(
    run_dir: &Path,
    node: &str,
    packages: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    super::lifecycle::NODE_HALTING.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut problems = Vec::new();
    let mut records = Vec::new();
    let mut groups = BTreeSet::new();
    for package in packages {
        let path = record_path(run_dir, package);
        let Ok(record) = RunRecord::load(&path) else {
            continue;
        };
        for service in &record.services {
            if matches!(service.liveness(), Liveness::Alive | Liveness::Zombie) {
                groups.insert(service.pgid);
            }
        }
        records.push((path, record));
    }
    let procs = processes();
    groups.extend(child_groups(std::process::id() as i32, &procs));
    for &pgid in &groups {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    let start = Instant::now();
    loop {
        let live = live_groups(&processes());
        let left: Vec<i32> = groups
            .iter()
            .copied()
            .filter(|g| live.contains(g))
            .collect();
        if left.is_empty() {
            break;
        }
        if start.elapsed() > KILL_WAIT {
            let text = format!("process groups {left:?} survived SIGKILL");
            error!("fail-fast: {text}");
            problems.push(text);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (path, record) in records {
        if !record.parts.is_empty() {
            let mut ops = SystemParts {
                ctx: PartContext {
                    node: node.to_owned(),
                    package: record.package.clone(),
                    stop_grace: Duration::from_millis(500),
                    ocf_root: parts::ocf_root(),
                    // Only starts ask who is alive.
                    live_nodes: None,
                },
            };
            for e in parts::stop_all(&record.parts, &mut ops) {
                let text = format!("package {}: {e}", record.package);
                error!("fail-fast: part not released: {text}");
                problems.push(text);
            }
        }
        if let Err(e) = std::fs::remove_file(&path) {
            warn!(package = %record.package, error = %e, "fail-fast: cannot remove the run record");
        }
    }
    problems
}

/// `fail_fast_action = "reboot"`: reboots the machine through the kernel
/// at once, after flushing the file systems. Returns only if the kernel
/// refused (no CAP_SYS_BOOT).
pub fn reboot() -> std::io::Error {
    // SAFETY: sync(2) and reboot(2) take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::LINUX_REBOOT_CMD_RESTART);
    }
    std::io::Error::last_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(ppid: i32, pgid: i32, session: i32) -> Stat {
        Stat {
            state: 'S',
            ppid,
            pgid,
            session,
        }
    }

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let text = "42 (a (b) c) S 7 42 9 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 12345 0 0";
        assert_eq!(parse_stat(text), Some(stat(7, 42, 9)));
    }

    #[test]
    fn only_groups_led_by_the_hosts_children_are_killed_never_the_guards_session() {
        let procs = vec![
            (10, stat(1, 10, 10)),  // the host
            (11, stat(10, 11, 10)), // a service leading its group
            (12, stat(11, 11, 10)), // its child, same group
            (13, stat(10, 13, 13)), // the guard: a session of its own
            (14, stat(10, 10, 10)), // a child in the host's own group
            (15, stat(1, 15, 15)),  // unrelated
        ];
        assert_eq!(child_groups(10, &procs), BTreeSet::from([11]));
    }
}
