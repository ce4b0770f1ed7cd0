//! Harness for vigil's integration tests: temporary config directories, a
//! real `vigil host` process, the real CLI, and guards that undo system
//! changes (network namespaces, mounts, loop devices) even when a test fails.
//!
//! The binaries and plugin libraries are found in the cargo target directory
//! this test executable was built into; `cargo build --workspace` builds
//! them (the README's test command does).

pub mod address_failover;
pub mod chaos;
pub mod cluster;
mod guards;

pub use guards::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `target/<profile>`, from this test executable's path (`target/<profile>/deps/x`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("exe has a parent");
    let dir = if deps.ends_with("deps") {
        deps.parent().expect("deps has a parent")
    } else {
        deps
    };
    dir.to_owned()
}

/// The `vigil` binary under test.
pub fn vigil_bin() -> PathBuf {
    let bin = target_dir().join("vigil");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests",
        bin.display()
    );
    bin
}

/// A plugin library built by this workspace (`lib<name>.so`).
pub fn plugin_lib(name: &str) -> PathBuf {
    let lib = target_dir().join(format!("lib{name}.so"));
    assert!(
        lib.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests",
        lib.display()
    );
    lib
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repo")
        .to_owned()
}

/// True when the test may run privileged steps. Panics (fails loudly) when
/// not root, unless `VIGIL_SKIP_PRIVILEGED=1` was set by hand, in which case
/// it returns false and the caller skips.
pub fn privileged(what: &str) -> bool {
    if std::env::var("VIGIL_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        eprintln!("skipped (VIGIL_SKIP_PRIVILEGED=1): {what}");
        return false;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "{what} needs root; run as root or set VIGIL_SKIP_PRIVILEGED=1 to skip"
    );
    true
}

/// Panics with a clear message unless `program` is executable.
pub fn require_tool(program: &str, package: &str) {
    let found = if program.contains('/') {
        Path::new(program).is_file()
    } else {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
    };
    assert!(
        found,
        "{program} is missing: install the Debian package {package}"
    );
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("spawn /bin/sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` until it returns `Some` or `timeout` passes; panics with
/// `what` and the last observation on timeout.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        match f() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
}

/// `[paths]` inside the config dir, so that no test or benchmark ever
/// writes to `/var/lib`, `/run` or `/var/log`. [`ConfigDir::write`] appends
/// it to every `cluster.toml` that has no `[paths]` of its own. Run
/// records, guard files, service logs and the API socket end up in `run/`.
pub const TEST_PATHS: &str =
    "\n[paths]\nstate_dir = \"run\"\nrun_dir = \"run\"\nlog_dir = \"run\"\n";

/// `text` with [`TEST_PATHS`] appended unless it sets `[paths]` itself.
pub fn with_test_paths(text: &str) -> String {
    if text.contains("[paths]") {
        text.to_owned()
    } else {
        format!("{text}{TEST_PATHS}")
    }
}

/// A temporary configuration directory.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
}

impl ConfigDir {
    /// `vigil status --json` asked through this directory's host.
    pub fn status_json(&self) -> Result<serde_json::Value, String> {
        let out = self.vigil(&["status", "--json"]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    /// The package `name` as `vigil status --json` shows it.
    pub fn package_status(&self, name: &str) -> Result<serde_json::Value, String> {
        let v = self.status_json()?;
        v["packages"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == name).cloned())
            .ok_or_else(|| v.to_string())
    }

    /// A one-node cluster `test` with node `node1`.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vigil-test-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir(dir.path().join("monitors.d")).expect("mkdir monitors.d");
        std::fs::create_dir(dir.path().join("packages.d")).expect("mkdir packages.d");
        let this = Self { dir };
        this.write(
            "cluster.toml",
            "[cluster]\nname = \"test\"\nnodes = [\"node1\"]\n",
        );
        this
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file relative to the config dir; a `cluster.toml` gets
    /// [`TEST_PATHS`] unless it has `[paths]`.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        let text = if rel == "cluster.toml" {
            with_test_paths(text)
        } else {
            text.to_owned()
        };
        std::fs::write(&path, text).expect("write config file");
        path
    }

    /// Writes `monitors.d/<name>.toml`.
    pub fn monitor(&self, name: &str, toml: &str) -> PathBuf {
        self.write(&format!("monitors.d/{name}.toml"), toml)
    }

    /// Writes an executable script.
    pub fn script(&self, rel: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.write(rel, text);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    /// Runs the real CLI with `-c <dir>`.
    pub fn vigil(&self, args: &[&str]) -> Output {
        Command::new(vigil_bin())
            .arg("-c")
            .arg(self.path())
            .args(args)
            .output()
            .expect("run vigil")
    }

    /// `vigil resls --json -r [path]`, parsed.
    pub fn resls(&self, path: &str) -> Result<serde_json::Value, String> {
        let out = self.vigil(&["resls", "--json", "-r", path]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("resls output is not JSON: {e}"))
    }

    /// The resource `name` from `vigil resls --json`, if listed.
    pub fn resource(&self, name: &str) -> Result<serde_json::Value, String> {
        let all = self.resls("/")?;
        all["resources"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == name).cloned())
            .ok_or_else(|| format!("{name} not listed in {all}"))
    }

    /// The monitor `name` from `vigil monitor list --json`.
    pub fn monitor_state(&self, name: &str) -> Result<serde_json::Value, String> {
        let out = self.vigil(&["monitor", "list", "--json"]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        v["monitors"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == name).cloned())
            .ok_or_else(|| format!("monitor {name} not listed"))
    }

    /// Starts `vigil host` on this config dir and waits until it answers.
    pub fn start_host(&self) -> Host {
        self.start_host_with(&[])
    }

    /// Starts `vigil host` behind a wrapper that execs it, such as
    /// `["ip", "netns", "exec", ns]`, so the host runs inside that network
    /// namespace while the CLI still reaches it through the socket file.
    pub fn start_host_with(&self, wrapper: &[&str]) -> Host {
        self.spawn_host(wrapper, &[], &[])
    }

    /// Starts `vigil host --node NODE` (for multi-node clusters).
    pub fn start_host_as(&self, node: &str) -> Host {
        self.spawn_host(&[], &["--node", node], &[])
    }

    /// `vigil host --node NODE` behind a wrapper that execs it (such as
    /// `nsenter --net=...`, for a node in a network namespace of its own).
    pub fn start_host_as_with(&self, node: &str, wrapper: &[&str]) -> Host {
        self.spawn_host(wrapper, &["--node", node], &[])
    }

    /// Like [`ConfigDir::start_host_as`], with extra environment variables
    /// (they override the harness's `VIGIL_LOG=debug`).
    pub fn start_host_as_with_env(&self, node: &str, env: &[(&str, &str)]) -> Host {
        self.spawn_host(&[], &["--node", node], env)
    }

    /// Starts `vigil host --node NODE` without waiting for it to answer
    /// (to start several hosts at the same moment); see [`ConfigDir::wait_ready`].
    pub fn spawn_host_as(&self, node: &str) -> Host {
        self.spawn_only(&[], &["--node", node], &[])
    }

    /// Like [`ConfigDir::spawn_host_as`], with extra environment variables
    /// (they override the harness's `VIGIL_LOG=debug`).
    pub fn spawn_host_as_with_env(&self, node: &str, env: &[(&str, &str)]) -> Host {
        self.spawn_only(&[], &["--node", node], env)
    }

    /// Waits until `host`, started on this config dir, answers on its
    /// socket; panics with its log if it exits first.
    pub fn wait_ready(&self, host: &mut Host) {
        wait_for(
            Duration::from_secs(20),
            "vigil host to answer on its socket",
            || {
                if let Some(status) = host.try_exit() {
                    panic!(
                        "vigil host exited early ({status}); log:\n{}",
                        host.log_text()
                    );
                }
                self.resls("/").map(drop)
            },
        );
    }

    fn spawn_host(&self, wrapper: &[&str], host_args: &[&str], env: &[(&str, &str)]) -> Host {
        let mut host = self.spawn_only(wrapper, host_args, env);
        self.wait_ready(&mut host);
        host
    }

    fn spawn_only(&self, wrapper: &[&str], host_args: &[&str], env: &[(&str, &str)]) -> Host {
        let log = self.path().join("host.log");
        let log_file = std::fs::File::create(&log).expect("create host.log");
        let vigil = vigil_bin();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&vigil);
                c
            }
            None => Command::new(&vigil),
        };
        let child = command
            .arg("-c")
            .arg(self.path())
            .arg("host")
            .args(host_args)
            .env("VIGIL_LOG", "debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn vigil host");
        Host {
            child: Some(child),
            log,
        }
    }
}

/// A test leaves no process behind: guards (left armed by design when a
/// cluster host stops or is killed), package services and monitor children
/// started from this directory are killed before it is removed.
impl Drop for ConfigDir {
    /// Kills what is left of the test's processes: those that name the
    /// directory, and those that run in it (services and hooks run with the
    /// config dir as their working directory, whatever their command line:
    /// `sleep 100000` of a package the stopped host left running).
    fn drop(&mut self) {
        let dir = self.path().display().to_string();
        let mut pids: Vec<i32> = processes_matching(&dir)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        pids.extend(processes_in(self.path()));
        for pid in pids {
            if pid as u32 == std::process::id() {
                continue;
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Processes whose working directory is `dir` or below it.
pub fn processes_in(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect()
}

impl Default for ConfigDir {
    fn default() -> Self {
        Self::new()
    }
}

/// A running `vigil host`; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Host {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Host {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status if the host has exited, `None` while it runs.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Kills the host with SIGKILL (a node dying) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the host and returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kills every process whose command line contains the pattern when
/// dropped: what a test's services leave behind dies with the test,
/// passed or not.
pub struct KillMatching(pub String);

impl Drop for KillMatching {
    fn drop(&mut self) {
        for (pid, _) in processes_matching(&self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Processes whose command line contains `needle`, as (pid, state) pairs.
pub fn processes_matching(needle: &str) -> Vec<(i32, char)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, r)| r.chars().next())
                .unwrap_or('?');
            found.push((pid, state));
        }
    }
    found
}

/// Compiles a C monitor into `out_dir` with the SDK header.
pub fn compile_c_plugin(source: &Path, out: &Path) {
    require_tool("cc", "gcc");
    let include = repo_root().join("sdk/include");
    sh(&format!(
        "cc -shared -fPIC -O2 -Wall -Werror -I {} -o {} {}",
        include.display(),
        out.display(),
        source.display()
    ));
}

/// A throwaway etcd on loopback (free ports, temporary data dir), killed
/// when dropped. Fails loudly when `etcd` (Debian `etcd-server`) is missing.
pub struct Etcd {
    child: Option<Child>,
    pub endpoint: String,
    client: u16,
    peer: u16,
    /// The address it serves clients on.
    host: String,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Etcd {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1")
    }

    /// Serves clients on `host` (an address of the root namespace, such
    /// as a test bridge's, that hosts in network namespaces can reach).
    pub fn start_on(host: &str) -> Self {
        require_tool("etcd", "etcd-server");
        // Free ports are only free until someone takes them: if etcd could
        // not bind (another test's etcd won the race), try other ports
        // rather than talk to someone else's etcd.
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("vigil-etcd-")
                .tempdir()
                .expect("tempdir");
            let (client, peer) = (free_port(), free_port());
            let mut etcd = Etcd {
                child: None,
                endpoint: format!("http://{host}:{client}"),
                client,
                peer,
                host: host.to_owned(),
                dir,
            };
            if etcd.try_resume() {
                return etcd;
            }
        }
        panic!("etcd did not start on free ports five times in a row");
    }

    /// Kills etcd (an outage); [`Etcd::resume`] brings it back with its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd on the same ports and data directory and waits until it answers.
    pub fn resume(&mut self) {
        assert!(
            self.try_resume(),
            "etcd did not restart on its ports; log:\n{}",
            self.log()
        );
    }

    /// Like [`Etcd::resume`], false instead of a panic when it did not come back.
    pub fn try_restart(&mut self) -> bool {
        self.try_resume()
    }

    /// The etcd process id while it runs (to freeze it with SIGSTOP).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Starts etcd and waits until it answers; false if it exited instead.
    fn try_resume(&mut self) -> bool {
        let peer_url = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &self.endpoint,
                "--advertise-client-urls",
                &self.endpoint,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            // A one-member etcd that restarts waits a whole election timeout
            // (1 to 2 s by default) before it serves again: alone, it has no
            // leader to hear from. A real cluster does not go dark for one
            // member's restart; these timings keep an outage the length a
            // test asks for instead of adding etcd's election to it.
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let client = self.client;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            // Ours must still be running: a healthy answer from an etcd that
            // is not our child would be another test's.
            if self
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some())
            {
                self.child = None;
                return false;
            }
            use std::io::{Read, Write};
            let healthy = std::net::TcpStream::connect((self.host.as_str(), client))
                .and_then(|mut stream| {
                    stream.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
                    let mut answer = String::new();
                    stream.read_to_string(&mut answer)?;
                    Ok(answer.contains("\"health\":\"true\""))
                })
                .unwrap_or(false);
            if healthy {
                // Still ours after answering?
                std::thread::sleep(Duration::from_millis(100));
                return self
                    .child
                    .as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_none());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP relay on loopback to a target address that a test can cut, to
/// partition one process from a server while others still reach it.
pub struct CuttableProxy {
    pub addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    streams: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl CuttableProxy {
    /// Relays connections on a new loopback port to `target` (`host:port`).
    pub fn start(target: &str) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let streams: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>> =
            Default::default();
        let target = target.to_owned();
        let (cut2, streams2) = (cut.clone(), streams.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut2.load(Ordering::SeqCst) {
                    continue; // dropped: refused in effect
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                let mut keep = streams2.lock().unwrap_or_else(|p| p.into_inner());
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                keep.push(client);
                keep.push(server);
            }
        });
        Self { addr, cut, streams }
    }

    /// `http://addr`, for an etcd endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every relayed connection and refuses new ones until `mend`.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn mend(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A TCP relay on loopback to a target address that holds every chunk
/// going to the target for `delay` first: a slow link from one process to
/// a server (answers come back at once, so a round trip takes `delay` more).
pub struct SlowProxy {
    pub addr: std::net::SocketAddr,
}

impl SlowProxy {
    /// Relays connections on a new loopback port to `target` (`host:port`).
    pub fn start(target: &str, delay: Duration) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let target = target.to_owned();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                for (from, to, wait) in [
                    (&client, &server, delay),
                    (&server, &client, Duration::ZERO),
                ] {
                    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    // Each chunk leaves `wait` after it arrived, chunks
                    // behind it in flight meanwhile: latency, not a
                    // bandwidth limit.
                    let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
                    std::thread::spawn(move || {
                        use std::io::Read;
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0
                                || tx
                                    .send((std::time::Instant::now() + wait, buf[..n].to_vec()))
                                    .is_err()
                            {
                                break;
                            }
                        }
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                    std::thread::spawn(move || {
                        use std::io::Write;
                        for (due, chunk) in rx {
                            std::thread::sleep(
                                due.saturating_duration_since(std::time::Instant::now()),
                            );
                            if to.write_all(&chunk).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self { addr }
    }

    /// `http://addr`, for an etcd endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A plain HTTP/1.0 GET on loopback; returns (status line, body).
pub fn http_get(port: u16, path: &str) -> Result<(String, String), String> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no header end")?;
    Ok((
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    ))
}

/// A free loopback port (free until someone else takes it).
pub fn free_loopback_port() -> u16 {
    free_port()
}
