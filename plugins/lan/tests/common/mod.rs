//! Test fixtures shared by the lan integration tests: privilege checks,
//! network namespaces and veth pairs that remove themselves on drop, a
//! thread that runs inside a namespace, and a sink that collects pushes.
//!
//! Everything here creates its own namespaces and links with names that
//! include the process id; it never touches links it did not create.

#![allow(dead_code)] // each test binary uses a different part

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vigil_sdk::{Sample, SampleSink};

/// True when the test may run; false (after saying so) when it needs root or
/// `ip` and the person running it set `VIGIL_SKIP_PRIVILEGED=1`. Panics
/// otherwise, so a CI without privileges fails loudly instead of passing.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if root && ip {
        return true;
    }
    let missing = if root {
        "the `ip` command (iproute2)"
    } else {
        "root"
    };
    if std::env::var("VIGIL_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        eprintln!("{test}: skipped, needs {missing} (VIGIL_SKIP_PRIVILEGED=1)");
        return false;
    }
    panic!("{test} needs {missing}; set VIGIL_SKIP_PRIVILEGED=1 to skip it");
}

/// Runs `ip` with `args`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, deleted (with every link in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("vigil-lan-{}-{tag}", std::process::id());
        ip(&["netns", "add", &name]);
        Self { name }
    }

    /// Runs `f` on a thread that has entered this namespace; threads and
    /// processes it starts are in the namespace too.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                    // SAFETY: a valid namespace fd; setns only affects this thread.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A veth pair created in the root namespace; deleting one end deletes both.
pub struct Veth {
    pub ours: String,
    pub peer: String,
}

impl Veth {
    /// `tag` is one or two letters so names stay within 15 bytes.
    pub fn new(tag: &str) -> Self {
        let pid = std::process::id();
        let ours = format!("vt{pid}{tag}a");
        let peer = format!("vt{pid}{tag}b");
        ip(&["link", "add", &ours, "type", "veth", "peer", "name", &peer]);
        Self { ours, peer }
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.ours])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A sink that keeps every pushed sample with the time it arrived.
#[derive(Clone, Default)]
pub struct Collector {
    pushed: Arc<Mutex<Vec<(Instant, Sample)>>>,
}

impl Collector {
    pub fn sink(&self) -> SampleSink {
        let pushed = Arc::clone(&self.pushed);
        SampleSink::new(move |samples: &[Sample]| {
            let now = Instant::now();
            let mut pushed = pushed.lock().unwrap_or_else(|p| p.into_inner());
            pushed.extend(samples.iter().map(|s| (now, s.clone())));
        })
    }

    /// Waits up to `within` for a sample pushed after `since` that matches;
    /// returns when it arrived and the sample.
    pub fn wait_for(
        &self,
        since: Instant,
        within: Duration,
        what: &str,
        matches: impl Fn(&Sample) -> bool,
    ) -> (Instant, Sample) {
        let give_up = Instant::now() + within;
        loop {
            {
                let pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((at, s)) = pushed.iter().find(|(at, s)| *at >= since && matches(s)) {
                    return (*at, s.clone());
                }
                if Instant::now() > give_up {
                    let seen: Vec<String> = pushed.iter().map(|(_, s)| describe(s)).collect();
                    panic!("no pushed sample {what} within {within:?}; pushed: {seen:#?}");
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn all(&self) -> Vec<Sample> {
        self.pushed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, s)| s.clone())
            .collect()
    }
}

pub fn describe(s: &Sample) -> String {
    let value = s.value.as_ref().map_or("unknown".into(), |v| v.to_string());
    match &s.reason {
        Some(r) => format!("{} = {value} ({r})", s.name),
        None => format!("{} = {value}", s.name),
    }
}

/// True when `s` is `name` with text value `value`.
pub fn is(s: &Sample, name: &str, value: &str) -> bool {
    s.name.as_str() == name && s.value.as_ref().and_then(|v| v.as_text()) == Some(value)
}

/// The sample for `name` in `samples`, or a panic listing what was there.
pub fn find<'a>(samples: &'a [Sample], name: &str) -> &'a Sample {
    samples
        .iter()
        .find(|s| s.name.as_str() == name)
        .unwrap_or_else(|| {
            let seen: Vec<String> = samples.iter().map(describe).collect();
            panic!("no sample {name}; got {seen:#?}")
        })
}
