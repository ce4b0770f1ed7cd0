//! Shared helpers for the benchmarks: locating built artifacts and reading
//! a process's CPU time and memory from /proc.

use std::path::PathBuf;

/// `target/<profile>` of the running benchmark binary.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().expect("binary has a directory").to_owned()
}

/// A built artifact beside this binary, or a clear panic.
pub fn artifact(file: &str) -> PathBuf {
    let path = target_dir().join(file);
    assert!(
        path.exists(),
        "{} missing: run `cargo build --release --workspace` first",
        path.display()
    );
    path
}

/// (user+system CPU seconds of the process, of its reaped children).
pub fn cpu_seconds(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, r)| r.split(' ').collect())
        .unwrap_or_default();
    // After the command: state is field 0, utime 11, stime 12, cutime 13, cstime 14.
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ((tick(11) + tick(12)) / hz, (tick(13) + tick(14)) / hz)
}

/// A `Vm*` line of /proc/<pid>/status in MiB (e.g. `VmHWM`, `VmRSS`).
pub fn vm_mib(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
