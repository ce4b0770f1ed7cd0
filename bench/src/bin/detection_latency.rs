//! Detection latency: how long after a fault the `vigil host` registry
//! records the sample that shows it, for the event-driven paths of the
//! bundled monitors, next to a one-second polling baseline measured on the
//! same faults in the same host.
//!
//! Per monitor it starts the real `vigil host` (release build, plugins by
//! name) with two monitors: the bundled plugin, and an exec monitor at
//! `interval_seconds = 1` that reads the same state from a shell script
//! (the poll-only path). It then injects the fault and its repair, each
//! `--count` times, alternating, after a random pause of 0–1 s so that the
//! injections fall at random phases of the poll interval. A fault is timed
//! from just before the system call that causes it (taken in this process)
//! to the timestamp of the host's `sample recorded` debug line, which the
//! daemon's main loop writes right after the registry recorded the sample;
//! both are the realtime clock of this machine.
//!
//! Faults: `lan` — the far end of a veth pair is set down (`SIOCSIFFLAGS`
//! from a socket in the peer's namespace), the host runs in its own network
//! namespace; `shm` — a POSIX segment is unlinked (`shm_unlink`) and
//! re-created; `fs` — a tmpfs is remounted read-only (`mount(2)` with
//! `MS_REMOUNT|MS_RDONLY`) and back.
//!
//! For `lan` a third row, the kernel's own notification as seen by a
//! netlink listener of the benchmark in the host's namespace, shows how
//! much of a latency is the kernel's and how much vigil's.
//!
//! It does not measure the reaction to a sample (criteria, packages), and
//! it is not run by CI: it needs root and takes minutes.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use vigil_tests::{Mount, Netns, PosixShm, Veth, unique};

/// The poll interval of the baseline exec monitor.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long one detection may take before the run is abandoned.
const DETECTION_LIMIT: Duration = Duration::from_secs(15);

fn main() -> anyhow::Result<()> {
    let options = Options::parse(std::env::args().skip(1))?;
    if !nix::unistd::geteuid().is_root() {
        bail!("detection_latency needs root (network namespaces, mounts)");
    }
    let bin_dir = vigil_tests::target_dir();
    let vigil = bin_dir.join("vigil");
    for needed in [
        vigil.clone(),
        bin_dir.join("libvigil_lan.so"),
        bin_dir.join("libvigil_shm.so"),
        bin_dir.join("libvigil_fs.so"),
    ] {
        if !needed.is_file() {
            bail!(
                "{} is missing: run `cargo build --release --workspace` first",
                needed.display()
            );
        }
    }
    println!(
        "detection_latency: {} faults and {} repairs per monitor; baseline: exec monitor polling every {:?}",
        options.count, options.count, POLL_INTERVAL
    );
    let mut rows = Vec::new();
    for monitor in &options.monitors {
        let started = Instant::now();
        let mut scenario = match monitor.as_str() {
            "lan" => Scenario::lan(&vigil, true)?,
            "lan-same-index" => Scenario::lan(&vigil, false)?,
            "shm" => Scenario::shm(&vigil)?,
            "fs" => Scenario::fs(&vigil)?,
            other => bail!("unknown monitor {other:?} (lan, lan-same-index, shm, fs)"),
        };
        let measured = scenario.measure(options.count)?;
        eprintln!("{monitor}: done in {:.0?}", started.elapsed());
        rows.extend(measured);
    }
    print_table(&rows);
    Ok(())
}

#[derive(Debug)]
struct Options {
    count: usize,
    monitors: Vec<String>,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut options = Options {
            count: 100,
            monitors: ["lan", "lan-same-index", "shm", "fs"]
                .map(String::from)
                .to_vec(),
        };
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--count" => {
                    let n = args.next().context("--count needs a number")?;
                    options.count = n.parse().with_context(|| format!("--count {n}"))?;
                }
                "--only" => {
                    let list = args
                        .next()
                        .context("--only needs a list such as lan,shm,fs")?;
                    options.monitors = list.split(',').map(str::to_owned).collect();
                }
                other => bail!(
                    "unknown argument {other:?}; usage: detection_latency [--count N] [--only lan,lan-same-index,shm,fs]"
                ),
            }
        }
        Ok(options)
    }
}

/// Nanoseconds since the epoch on the realtime clock, as the host's log
/// timestamps are.
fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// One `sample recorded` line of the host's log.
#[derive(Debug, Clone)]
struct Recorded {
    at_ns: i128,
    resource: String,
    value: String,
}

/// Parses `2026-01-01T00:00:00.123456Z DEBUG vigil_host::daemon: sample
/// recorded resource=/a/b value=up`.
fn parse_recorded(line: &str) -> Option<Recorded> {
    if !line.contains("sample recorded") {
        return None;
    }
    let stamp = line.split_whitespace().next()?;
    let at =
        time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).ok()?;
    let field = |key: &str| {
        let start = line.find(key)? + key.len();
        line[start..].split_whitespace().next().map(str::to_owned)
    };
    Some(Recorded {
        at_ns: at.unix_timestamp_nanos(),
        resource: field(" resource=")?,
        value: field(" value=")?,
    })
}

/// A running `vigil host` whose log is read line by line.
struct Host {
    child: Child,
    recorded: mpsc::Receiver<Recorded>,
    /// The last log lines, for error messages.
    tail: Arc<Mutex<VecDeque<String>>>,
    _dir: tempfile::TempDir,
}

impl Host {
    /// Starts `vigil -c <dir> host`, behind `wrapper` (a program that execs
    /// its arguments, such as `ip netns exec NS`) when it is not empty.
    fn start(vigil: &Path, dir: tempfile::TempDir, wrapper: &[&str]) -> anyhow::Result<Self> {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(vigil);
                c
            }
            None => Command::new(vigil),
        };
        let mut child = command
            .arg("-c")
            .arg(dir.path())
            .arg("host")
            .env("VIGIL_LOG", "info,vigil_host::daemon=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", vigil.display()))?;
        let stderr = child.stderr.take().context("host stderr is piped")?;
        let (tx, recorded) = mpsc::channel();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let keep = Arc::clone(&tail);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(r) = parse_recorded(&line) {
                    if tx.send(r).is_err() {
                        break;
                    }
                    continue;
                }
                let mut tail = keep.lock().unwrap_or_else(|p| p.into_inner());
                if tail.len() == 40 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        Ok(Self {
            child,
            recorded,
            tail,
            _dir: dir,
        })
    }

    fn log_tail(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Waits until every `(resource, value)` in `wants` was recorded at or
    /// after `since_ns`; returns when each was first recorded.
    fn wait_all(
        &self,
        since_ns: i128,
        wants: &[(&str, &str)],
        limit: Duration,
    ) -> anyhow::Result<Vec<i128>> {
        let give_up = Instant::now() + limit;
        let mut found: Vec<Option<i128>> = vec![None; wants.len()];
        while found.iter().any(Option::is_none) {
            let left = give_up.saturating_duration_since(Instant::now());
            let r = match self.recorded.recv_timeout(left) {
                Ok(r) => r,
                Err(_) => bail!(
                    "no sample {:?} recorded within {limit:?}; host log ends:\n{}",
                    wants
                        .iter()
                        .zip(&found)
                        .filter(|(_, f)| f.is_none())
                        .map(|(w, _)| w)
                        .collect::<Vec<_>>(),
                    self.log_tail()
                ),
            };
            if r.at_ns < since_ns {
                continue;
            }
            for ((resource, value), slot) in wants.iter().zip(found.iter_mut()) {
                if slot.is_none() && r.resource == *resource && r.value == *value {
                    *slot = Some(r.at_ns);
                }
            }
        }
        Ok(found.into_iter().flatten().collect())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let stop = Instant::now() + Duration::from_secs(5);
        while Instant::now() < stop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config dir with a one-node cluster, the plugin's registration and the
/// baseline exec monitor running `condition` (a shell test) every second.
fn config_dir(registration: &str, condition: &str) -> anyhow::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("vigil-bench-")
        .tempdir()
        .context("creating a temporary config dir")?;
    let write = |rel: &str, text: &str| -> anyhow::Result<PathBuf> {
        let path = dir.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    write(
        "cluster.toml",
        &vigil_tests::with_test_paths("[cluster]\nname = \"bench\"\nnodes = [\"node1\"]\n"),
    )?;
    write("monitors.d/plugin.toml", registration)?;
    let script = write(
        "poll.sh",
        &format!(
            "#!/bin/sh\n\
             printf '{{\"type\":\"hello\",\"protocol\":1,\"publishes\":[\"{POLLED}\"]}}\\n'\n\
             if {condition}; then v=up; else v=down; fi\n\
             printf '{{\"type\":\"sample\",\"name\":\"{POLLED}\",\"value\":\"%s\"}}\\n' \"$v\"\n"
        ),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", script.display()))?;
    write(
        "monitors.d/poll.toml",
        &format!(
            "name = \"poll\"\ntype = \"exec\"\ncommand = [\"{}\"]\ninterval_seconds = {}\ntimeout_seconds = 0.9\n",
            script.display(),
            POLL_INTERVAL.as_secs_f64()
        ),
    )?;
    Ok(dir)
}

/// The baseline exec monitor's resource: `up` when the watched thing is
/// healthy, `down` when the fault is in place.
const POLLED: &str = "/bench/poll/status";

/// A resource and the values it takes under the fault and after repair.
struct Watch {
    resource: String,
    fault: &'static str,
    repair: &'static str,
}

type Inject = Box<dyn FnMut(bool) -> anyhow::Result<()>>;

/// One monitor under test: its host, its fault, and the objects it needs
/// (dropped after the host, which is declared first).
struct Scenario {
    host: Host,
    monitor: &'static str,
    fault: &'static str,
    repair: &'static str,
    target_ms: f64,
    watch: Watch,
    /// Sets the fault (`true`) or repairs it; called right after the start
    /// time is taken, so it must do nothing but the system call.
    inject: Inject,
    /// For `lan`: when the kernel's link notifications reached a listener
    /// of our own, to tell the kernel's share of a latency from vigil's.
    kernel: Option<KernelLinkEvents>,
    _objects: Box<dyn std::any::Any>,
}

impl Scenario {
    /// With `distinct_index`, a spare veth pair in the peer namespace makes the
    /// veth ends' interface indexes differ; see the README for why that
    /// decides whether the kernel reports a carrier loss at once.
    fn lan(vigil: &Path, distinct_index: bool) -> anyhow::Result<Self> {
        let host_ns = Netns::new("bh");
        let peer_ns = Netns::new("bp");
        if distinct_index {
            peer_ns.ip(&[
                "link", "add", "pad0", "type", "veth", "peer", "name", "pad1",
            ]);
        }
        let veth = Veth::new("b", &host_ns, &peer_ns);
        veth.a.set(true);
        veth.b.set(true);
        let dir = config_dir(
            &format!(
                "name = \"lan\"\ntype = \"dylib\"\nplugin = \"vigil_lan\"\ninterval_seconds = 5\ntimeout_seconds = 2\n[params]\ninterfaces = [\"{}\"]\n",
                veth.a.name
            ),
            // The host's namespace has its own /sys (ip netns exec mounts it).
            &format!(
                "[ \"$(cat /sys/class/net/{}/carrier 2>/dev/null)\" = 1 ]",
                veth.a.name
            ),
        )?;
        let kernel = KernelLinkEvents::listen(&host_ns.name, &veth.a.name)?;
        let host = Host::start(vigil, dir, &host_ns.exec_prefix())?;
        let peer = PeerLink::open(&peer_ns.name, &veth.b.name)?;
        Ok(Self {
            host,
            monitor: "lan",
            fault: if distinct_index {
                "link down (peer down)"
            } else {
                "link down (same ifindex)"
            },
            repair: if distinct_index {
                "link up"
            } else {
                "link up (same ifindex)"
            },
            target_ms: 10.0,
            watch: Watch {
                resource: format!("/net/interfaces/{}/status", veth.a.name),
                fault: "down",
                repair: "up",
            },
            inject: Box::new(move |fault| peer.set_up(!fault)),
            kernel: Some(kernel),
            _objects: Box::new((veth, peer_ns, host_ns)),
        })
    }

    fn shm(vigil: &Path) -> anyhow::Result<Self> {
        let name = unique("bench-shm");
        let segment = PosixShm::create(&name);
        let dir = config_dir(
            &format!(
                "name = \"shm\"\ntype = \"dylib\"\nplugin = \"vigil_shm\"\ninterval_seconds = 5\ntimeout_seconds = 1\n[params]\nposix = [\"{name}\"]\n"
            ),
            &format!("[ -e /dev/shm/{name} ]"),
        )?;
        let host = Host::start(vigil, dir, &[])?;
        let path = format!("/{name}");
        Ok(Self {
            host,
            monitor: "shm",
            fault: "POSIX segment unlinked",
            repair: "POSIX segment created",
            target_ms: 50.0,
            watch: Watch {
                resource: format!("/shm/posix/{name}/present"),
                fault: "no",
                repair: "yes",
            },
            inject: Box::new(move |fault| {
                use nix::fcntl::OFlag;
                use nix::sys::stat::Mode;
                if fault {
                    nix::sys::mman::shm_unlink(path.as_str())
                        .with_context(|| format!("shm_unlink {path}"))?;
                } else {
                    nix::sys::mman::shm_open(
                        path.as_str(),
                        OFlag::O_CREAT | OFlag::O_RDWR,
                        Mode::S_IRUSR | Mode::S_IWUSR,
                    )
                    .with_context(|| format!("shm_open {path}"))?;
                }
                Ok(())
            }),
            kernel: None,
            _objects: Box::new(segment),
        })
    }

    fn fs(vigil: &Path) -> anyhow::Result<Self> {
        let mount = Arc::new(Mount::tmpfs("bench-fs", 1 << 20));
        let dir = config_dir(
            &format!(
                "name = \"fs\"\ntype = \"dylib\"\nplugin = \"vigil_fs\"\ninterval_seconds = 10\ntimeout_seconds = 2\n[params.mounts]\nbench = \"{}\"\n",
                mount.path_str()
            ),
            &format!(
                "awk -v m={} '$5 == m {{ split($6, o, \",\"); s = o[1] }} END {{ exit s != \"rw\" }}' /proc/self/mountinfo",
                mount.path_str()
            ),
        )?;
        let host = Host::start(vigil, dir, &[])?;
        let remount = Arc::clone(&mount);
        Ok(Self {
            host,
            monitor: "fs",
            fault: "remounted read-only",
            repair: "remounted read-write",
            target_ms: 50.0,
            watch: Watch {
                resource: "/fs/bench/status".to_owned(),
                fault: "down",
                repair: "up",
            },
            inject: Box::new(move |fault| {
                remount.remount_read_only(fault);
                Ok(())
            }),
            kernel: None,
            _objects: Box::new(mount),
        })
    }

    /// Injects the fault and its repair `count` times each; returns the
    /// rows for the event path and the polling baseline.
    fn measure(&mut self, count: usize) -> anyhow::Result<Vec<Row>> {
        let event = self.watch.resource.clone();
        self.host
            .wait_all(
                0,
                &[(&event, self.watch.repair), (POLLED, "up")],
                Duration::from_secs(60),
            )
            .with_context(|| format!("{}: the healthy state was never recorded", self.monitor))?;
        let mut rng = XorShift::seeded();
        // [fault, repair] × [event, poll, kernel], in milliseconds.
        let mut ms: [[Vec<f64>; 3]; 2] = Default::default();
        for i in 0..2 * count {
            let fault = i % 2 == 0;
            std::thread::sleep(Duration::from_millis(rng.below(1000)));
            let (want_event, want_poll) = if fault {
                (self.watch.fault, "down")
            } else {
                (self.watch.repair, "up")
            };
            let start = now_ns();
            (self.inject)(fault)?;
            let at = self
                .host
                .wait_all(
                    start,
                    &[(&event, want_event), (POLLED, want_poll)],
                    DETECTION_LIMIT,
                )
                .with_context(|| format!("{}: injection {i}", self.monitor))?;
            let which = usize::from(!fault);
            for (path, at) in at.iter().enumerate() {
                ms[which][path].push((at - start) as f64 / 1e6);
            }
            if let Some(kernel) = &self.kernel {
                let at = kernel
                    .wait(start, !fault, DETECTION_LIMIT)
                    .with_context(|| format!("{}: injection {i}", self.monitor))?;
                ms[which][2].push((at - start) as f64 / 1e6);
            }
        }
        let poll_target = POLL_INTERVAL.as_secs_f64() * 1000.0 * 1.1;
        let mut rows = Vec::new();
        for (which, transition) in [self.fault, self.repair].into_iter().enumerate() {
            let [event_ms, poll_ms, kernel_ms] = std::mem::take(&mut ms[which]);
            if !kernel_ms.is_empty() {
                rows.push(Row::new(
                    self.monitor,
                    transition,
                    "kernel (reference)",
                    kernel_ms,
                    f64::NAN,
                ));
            }
            rows.push(Row::new(
                self.monitor,
                transition,
                "event (plugin push)",
                event_ms,
                self.target_ms,
            ));
            rows.push(Row::new(
                self.monitor,
                transition,
                "poll 1 s (exec)",
                poll_ms,
                poll_target,
            ));
        }
        Ok(rows)
    }
}

/// A socket opened inside another network namespace: interface ioctls on
/// it act on that namespace's links, so the fault is one system call.
struct PeerLink {
    socket: OwnedFd,
    name: [libc::c_char; libc::IFNAMSIZ],
}

impl PeerLink {
    fn open(netns: &str, interface: &str) -> anyhow::Result<Self> {
        if interface.len() >= libc::IFNAMSIZ {
            bail!("interface name {interface:?} is too long");
        }
        let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
        for (dst, src) in name.iter_mut().zip(interface.bytes()) {
            *dst = src as libc::c_char;
        }
        let path = format!("/run/netns/{netns}");
        // A socket belongs to the namespace it was created in, so a thread
        // enters the namespace just long enough to create it.
        let socket = std::thread::scope(|scope| {
            scope
                .spawn(|| -> anyhow::Result<OwnedFd> {
                    let ns = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
                    // SAFETY: a valid namespace fd; setns changes only this
                    // thread, which ends right after.
                    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        bail!("setns {path}: {}", std::io::Error::last_os_error());
                    }
                    // SAFETY: socket takes plain integers.
                    let fd = unsafe {
                        libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
                    };
                    if fd < 0 {
                        bail!(
                            "socket in the peer namespace: {}",
                            std::io::Error::last_os_error()
                        );
                    }
                    // SAFETY: fd was just returned by socket and is owned by
                    // nothing else.
                    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
        })?;
        Ok(Self { socket, name })
    }

    fn set_up(&self, up: bool) -> anyhow::Result<()> {
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        request.ifr_name = self.name;
        // SAFETY: SIOCGIFFLAGS fills ifru_flags of the ifreq we pass, which
        // outlives the call.
        let rc = unsafe {
            libc::ioctl(
                self.socket.as_raw_fd(),
                libc::SIOCGIFFLAGS as _,
                &mut request,
            )
        };
        if rc != 0 {
            bail!("SIOCGIFFLAGS: {}", std::io::Error::last_os_error());
        }
        // SAFETY: SIOCGIFFLAGS succeeded, so ifru_flags is the field set.
        let flags = unsafe { request.ifr_ifru.ifru_flags };
        let up_flag = libc::IFF_UP as libc::c_short;
        request.ifr_ifru.ifru_flags = if up {
            flags | up_flag
        } else {
            flags & !up_flag
        };
        // SAFETY: SIOCSIFFLAGS reads the ifreq we pass, which outlives the call.
        let rc = unsafe { libc::ioctl(self.socket.as_raw_fd(), libc::SIOCSIFFLAGS as _, &request) };
        if rc != 0 {
            bail!("SIOCSIFFLAGS: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A listener on the host's namespace for rtnetlink link notifications
/// (`RTMGRP_LINK`) about one interface: each arrival is timestamped on a
/// thread of its own, with whether the link then had carrier.
struct KernelLinkEvents {
    arrivals: mpsc::Receiver<(i128, bool)>,
}

impl KernelLinkEvents {
    fn listen(netns: &str, interface: &str) -> anyhow::Result<Self> {
        let path = format!("/run/netns/{netns}");
        let interface = std::ffi::CString::new(interface).context("interface name")?;
        let (tx, arrivals) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        // The thread stays in the namespace for the rest of the run.
        std::thread::spawn(move || {
            let socket = match Self::subscribe(&path, &interface) {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let (fd, index) = socket;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                // SAFETY: buf is valid for writes of its length.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                let at = now_ns();
                if n < 0 {
                    if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return;
                }
                for carrier in link_messages(&buf[..n as usize], index) {
                    if tx.send((at, carrier)).is_err() {
                        return;
                    }
                }
            }
        });
        ready
            .recv()
            .context("the netlink listener thread ended")??;
        Ok(Self { arrivals })
    }

    /// Enters the namespace, opens and binds the netlink socket, and looks
    /// up the interface index there.
    fn subscribe(path: &str, interface: &std::ffi::CStr) -> anyhow::Result<(OwnedFd, i32)> {
        let ns = std::fs::File::open(path).with_context(|| format!("open {path}"))?;
        // SAFETY: a valid namespace fd; setns changes only this thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        // SAFETY: socket takes plain integers.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            bail!("netlink socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain old data; all zeroes is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = libc::RTMGRP_LINK as u32;
        // SAFETY: addr is a sockaddr_nl of the length passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            bail!("bind netlink socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: interface is a NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(interface.as_ptr()) };
        if index == 0 {
            bail!("no interface {interface:?} in {path}");
        }
        Ok((fd, index as i32))
    }

    /// The first notification at or after `since_ns` with carrier `carrier`.
    fn wait(&self, since_ns: i128, carrier: bool, limit: Duration) -> anyhow::Result<i128> {
        let give_up = Instant::now() + limit;
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            let (at, c) = self
                .arrivals
                .recv_timeout(left)
                .map_err(|_| anyhow::anyhow!("no kernel link notification within {limit:?}"))?;
            if at >= since_ns && c == carrier {
                return Ok(at);
            }
        }
    }
}

/// Carrier (`IFF_LOWER_UP`) of every `RTM_NEWLINK` about `index` in a
/// netlink datagram.
fn link_messages(mut datagram: &[u8], index: i32) -> Vec<bool> {
    let u32_at = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
    };
    let mut found = Vec::new();
    // nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32; then
    // ifinfomsg: family u8, pad u8, type u16, index i32, flags u32, change u32.
    while let Some(len) = u32_at(datagram, 0) {
        let len = len as usize;
        if len < 16 || len > datagram.len() {
            break;
        }
        let kind = u16::from_ne_bytes([datagram[4], datagram[5]]);
        if kind == libc::RTM_NEWLINK
            && let (Some(i), Some(flags)) = (u32_at(datagram, 20), u32_at(datagram, 24))
            && i as i32 == index
        {
            found.push(flags & libc::IFF_LOWER_UP as u32 != 0);
        }
        datagram = &datagram[((len + 3) & !3).min(datagram.len())..];
    }
    found
}

/// A small xorshift generator for the pauses between injections; they only
/// need to be spread over the poll interval, not be unpredictable.
struct XorShift(u64);

impl XorShift {
    fn seeded() -> Self {
        Self((now_ns() as u64) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct Row {
    monitor: &'static str,
    transition: &'static str,
    path: &'static str,
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
    target_p99: f64,
}

impl Row {
    fn new(
        monitor: &'static str,
        transition: &'static str,
        path: &'static str,
        mut ms: Vec<f64>,
        target_p99: f64,
    ) -> Self {
        ms.sort_by(f64::total_cmp);
        Self {
            monitor,
            transition,
            path,
            n: ms.len(),
            p50: percentile(&ms, 0.50),
            p99: percentile(&ms, 0.99),
            max: ms.last().copied().unwrap_or(f64::NAN),
            target_p99,
        }
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<7} {:<27} {:<20} {:>4} {:>10} {:>10} {:>10} {:>12}  verdict",
        "monitor", "transition", "detected by", "n", "p50 ms", "p99 ms", "max ms", "p99 target"
    );
    for r in rows {
        let verdict = if r.target_p99.is_nan() {
            "-"
        } else if r.p99 < r.target_p99 {
            "meets"
        } else {
            "MISSES"
        };
        println!(
            "{:<7} {:<27} {:<20} {:>4} {:>10.3} {:>10.3} {:>10.3} {:>12}  {verdict}",
            r.monitor,
            r.transition,
            r.path,
            r.n,
            r.p50,
            r.p99,
            r.max,
            if r.target_p99.is_nan() {
                "-".to_owned()
            } else {
                format!("< {:.0} ms", r.target_p99)
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_hosts_sample_recorded_line() {
        let r = parse_recorded(
            "2026-11-22T05:21:07.123456Z DEBUG vigil_host::daemon: sample recorded resource=/net/interfaces/v1a/status value=down",
        )
        .expect("a sample recorded line");
        assert_eq!(r.resource, "/net/interfaces/v1a/status");
        assert_eq!(r.value, "down");
        assert_eq!(r.at_ns % 1_000_000_000, 123_456_000);
        assert!(parse_recorded("2026-11-22T05:21:07.123456Z  INFO vigil host running").is_none());
    }

    #[test]
    fn finds_carrier_of_link_notifications_for_one_index() {
        let message = |kind: u16, index: i32, flags: u32| {
            let mut m = Vec::new();
            m.extend_from_slice(&32u32.to_ne_bytes());
            m.extend_from_slice(&kind.to_ne_bytes());
            m.extend_from_slice(&[0; 10]);
            m.extend_from_slice(&[0; 4]);
            m.extend_from_slice(&index.to_ne_bytes());
            m.extend_from_slice(&flags.to_ne_bytes());
            m.extend_from_slice(&[0; 4]);
            m
        };
        let lower_up = libc::IFF_LOWER_UP as u32 | libc::IFF_UP as u32;
        let mut datagram = message(libc::RTM_NEWLINK, 2, lower_up);
        datagram.extend(message(libc::RTM_NEWLINK, 3, 0));
        datagram.extend(message(libc::RTM_DELLINK, 2, 0));
        datagram.extend(message(libc::RTM_NEWLINK, 2, libc::IFF_UP as u32));
        assert_eq!(link_messages(&datagram, 2), [true, false]);
        assert!(link_messages(&datagram[..20], 2).is_empty());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
