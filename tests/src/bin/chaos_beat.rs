//! `chaos_beat BEAT_FILE NODE PACKAGE INTERVAL_MS [MARK]`: the service of
//! every package in the chaos test. It appends one line per beat,
//! `<monotonic ns> <realtime ns> <node> <package> <pid> <fence token>`, to
//! `BEAT_FILE` every `INTERVAL_MS` until it is killed, and does nothing else.
//!
//! The file is opened with `O_APPEND` and each line goes out in one
//! `write(2)`, so copies on several nodes (all on this machine) can share one
//! file per package without tearing lines. The overlap detector reads these
//! lines and nothing of vigil's. `MARK` is ignored: it puts the node's config
//! directory on the command line so the harness can find and kill the
//! process when a test ends.

use std::io::Write;
use std::time::Duration;

fn clock_ns(clock: libc::clockid_t) -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, file, node, package, interval_ms, ..] = args.as_slice() else {
        eprintln!("usage: chaos_beat BEAT_FILE NODE PACKAGE INTERVAL_MS [MARK]");
        std::process::exit(2);
    };
    let Ok(interval_ms) = interval_ms.parse::<u64>() else {
        eprintln!("chaos_beat: INTERVAL_MS {interval_ms:?} is not a number");
        std::process::exit(2);
    };
    let mut out = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("chaos_beat: cannot open {file}: {e}");
            std::process::exit(1);
        }
    };
    let token = std::env::var("VIGIL_FENCE_TOKEN").unwrap_or_else(|_| "0".to_owned());
    let pid = std::process::id();
    loop {
        let line = format!(
            "{} {} {node} {package} {pid} {token}\n",
            clock_ns(libc::CLOCK_MONOTONIC),
            clock_ns(libc::CLOCK_REALTIME)
        );
        if let Err(e) = out.write_all(line.as_bytes()) {
            eprintln!("chaos_beat: writing {file}: {e}");
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(interval_ms));
    }
}
