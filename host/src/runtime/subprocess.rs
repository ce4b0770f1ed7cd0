//! Running untrusted monitor programs: each child in its own process group,
//! every run under a deadline, every output under a size bound, every child
//! reaped. When a run ends, however it ends (normal exit, timeout, overflow,
//! or the task running it being dropped at shutdown or reload), the whole
//! group is killed with SIGKILL, so a script's own children go too.
//!
//! What it does not do: catch a descendant that leaves the group on purpose
//! (`setsid`, `setpgid`). Only a cgroup would; see docs/operations.md for
//! why the host does not make one per monitor.
//!
//! This module knows nothing of the exec protocol or Nagios conventions; it
//! hands back bytes and how the process ended.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// Most bytes of stdout kept from one run; more is treated as nonsense.
pub const MAX_STDOUT_BYTES: usize = 1 << 20;
/// Most bytes of stderr kept (the tail) for messages.
pub const MAX_STDERR_BYTES: usize = 4096;
/// How long a child that has exited may keep its stdout open (through a
/// grandchild) before the group is killed.
const EXIT_GRACE: Duration = Duration::from_millis(200);

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// Killed by us after the deadline.
    TimedOut,
    /// Killed by us after writing more than [`MAX_STDOUT_BYTES`].
    OutputTooLarge,
}

#[derive(Debug, Clone)]
pub struct RunOutput {
    pub exit: Exit,
    pub stdout: Vec<u8>,
    /// The last bytes of stderr, lossily decoded.
    pub stderr: String,
}

impl RunOutput {
    /// A short description of a failed run for resource reasons.
    pub fn describe_failure(&self, timeout: Duration) -> String {
        let what = match &self.exit {
            Exit::Code(c) => format!("exited with status {c}"),
            Exit::Signal(s) => format!("killed by signal {s}"),
            Exit::TimedOut => format!("timed out after {timeout:?}; process group killed"),
            Exit::OutputTooLarge => {
                format!("wrote more than {MAX_STDOUT_BYTES} bytes; process group killed")
            }
        };
        let stderr = self.stderr.trim();
        if stderr.is_empty() {
            what
        } else {
            let last = stderr.lines().last().unwrap_or_default();
            format!("{what}: {last}")
        }
    }
}

/// Why a program could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start {program}: {source}")]
pub struct SpawnError {
    pub program: String,
    #[source]
    pub source: std::io::Error,
}

/// Starts `argv` in its own process group with piped stdio.
pub fn spawn(argv: &[String], stdin: bool) -> Result<Child, SpawnError> {
    spawn_command(command(argv, stdin))
}

/// The command [`spawn`] runs, for callers that add environment or a
/// working directory before running it with [`run_command`].
pub fn command(argv: &[String], stdin: bool) -> Command {
    let program = argv.first().cloned().unwrap_or_default();
    let mut cmd = Command::new(&program);
    cmd.args(argv.get(1..).unwrap_or_default())
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

fn spawn_command(mut cmd: Command) -> Result<Child, SpawnError> {
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    cmd.spawn().map_err(|source| SpawnError { program, source })
}

/// The process group of a spawned child, killed with SIGKILL when dropped.
///
/// It keeps the group id from the spawn because `Child::id` forgets the pid
/// once the child has been reaped, and a group outlives its leader: the
/// children a script left behind are still in it after it exited. Holding
/// the id is safe: the kernel does not hand out a pid again while a process
/// group of that number has members, and once the group is empty a kill hits
/// nothing (`ESRCH`).
#[derive(Debug)]
pub struct ProcessGroup(Option<Pid>);

impl ProcessGroup {
    /// The group of `child`, which must have been spawned with
    /// `process_group(0)` (as [`command`] does): its pid is its group id.
    pub fn of(child: &Child) -> Self {
        Self(child.id().map(|pid| Pid::from_raw(pid as i32)))
    }

    /// Kills every process left in the group. Harmless if it is empty.
    pub fn kill(&self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills the group and waits for the child, so it never lingers as a zombie.
pub async fn kill_and_reap(group: &ProcessGroup, child: &mut Child) {
    group.kill();
    let _ = child.wait().await;
}

/// Keeps the last `max` bytes of a stream.
async fn read_tail(mut stream: impl AsyncRead + Unpin, max: usize) -> String {
    let mut tail = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > max {
            tail.drain(..tail.len() - max);
        }
    }
    String::from_utf8_lossy(&tail).into_owned()
}

/// Runs `argv` once: writes `input` to its stdin (then closes it), collects
/// stdout up to [`MAX_STDOUT_BYTES`] and the tail of stderr, and kills the
/// group if it runs past `timeout`.
pub async fn run_once(
    argv: &[String],
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<RunOutput, SpawnError> {
    run_command(command(argv, input.is_some()), input, timeout).await
}

/// [`run_once`] for a command built with [`command`] (and then given an
/// environment or a working directory). Its stdio must be piped as
/// [`command`] sets it up.
pub async fn run_command(
    cmd: Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<RunOutput, SpawnError> {
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    let mut child = spawn_command(cmd)?;
    // Dropped also when the task running this is aborted (monitor removed,
    // host stopping): the group dies with the run.
    let group = ProcessGroup::of(&child);
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        let input = input.to_vec();
        // A child that never reads stdin must not block us: write in the
        // background and ignore a closed pipe.
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
    }
    // Both are pipes as `command` sets them up; a caller that changed
    // that gets an error instead of a panic.
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill_and_reap(&group, &mut child).await;
        return Err(SpawnError {
            program,
            source: std::io::Error::other("stdout and stderr must be piped"),
        });
    };
    let stderr_task = tokio::spawn(read_tail(stderr, MAX_STDERR_BYTES));
    let mut chunks = read_chunks(stdout);

    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    let mut eof = false;
    let mut status: Option<Exit> = None;
    let mut grace = deadline;
    let exit = loop {
        if let (true, Some(exit)) = (eof, &status) {
            break exit.clone();
        }
        tokio::select! {
            chunk = chunks.recv(), if !eof => match chunk {
                Some(chunk) => {
                    out.extend_from_slice(&chunk);
                    if out.len() > MAX_STDOUT_BYTES {
                        break Exit::OutputTooLarge;
                    }
                }
                None => eof = true,
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s.map_or(Exit::Signal(0), exit_of));
                grace = (tokio::time::Instant::now() + EXIT_GRACE).min(deadline);
            }
            // The child exited but a grandchild still holds stdout open.
            _ = tokio::time::sleep_until(grace), if status.is_some() => {
                break status.clone().unwrap_or(Exit::Signal(0));
            }
            _ = tokio::time::sleep_until(deadline) => break Exit::TimedOut,
        }
    };
    // Whatever happened, nothing of the group may outlive the run: not the
    // children a script started and forgot, not a grandchild holding stdout.
    kill_and_reap(&group, &mut child).await;
    let stderr = tokio::time::timeout(EXIT_GRACE, stderr_task)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    Ok(RunOutput {
        exit,
        stdout: out,
        stderr,
    })
}

/// Forwards stdout in chunks so that what was read survives a timeout.
fn read_chunks(mut stream: ChildStdout) -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 || tx.send(buf[..n].to_vec()).await.is_err() {
                break;
            }
        }
    });
    rx
}

fn exit_of(status: std::process::ExitStatus) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(sig)) => Exit::Signal(sig),
        (None, None) => Exit::Signal(0),
    }
}

/// Why a line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("line longer than {0} bytes")]
    TooLong(usize),
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads newline-terminated lines with a bound on each line's length.
///
/// Cancel-safe: a partial line waits in the reader, so a `next_line` dropped
/// by a timeout loses nothing. A line longer than the bound is reported once
/// and the rest of it, up to its newline, is skipped.
pub struct BoundedLines<R> {
    reader: BufReader<R>,
    max: usize,
    line: Vec<u8>,
    skipping: bool,
}

impl<R: AsyncRead + Unpin> BoundedLines<R> {
    pub fn new(reader: R, max: usize) -> Self {
        Self {
            reader: BufReader::new(reader),
            max,
            line: Vec::new(),
            skipping: false,
        }
    }

    /// The next line without its newline (nor a `\r` before it), invalid
    /// UTF-8 replaced; `None` at end of stream.
    pub async fn next_line(&mut self) -> Result<Option<String>, LineError> {
        Ok(self.next_line_bytes().await?.map(|line| {
            String::from_utf8(line)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
        }))
    }

    /// The next line's bytes without its newline (nor a `\r` before it);
    /// `None` at end of stream.
    pub async fn next_line_bytes(&mut self) -> Result<Option<Vec<u8>>, LineError> {
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                self.skipping = false;
                return Ok(if self.line.is_empty() {
                    None
                } else {
                    Some(trim_cr(std::mem::take(&mut self.line)))
                });
            }
            let (len, newline) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (i, true),
                None => (buf.len(), false),
            };
            if !self.skipping {
                self.line.extend_from_slice(&buf[..len]);
            }
            self.reader.consume(len + usize::from(newline));
            if self.skipping {
                self.skipping = !newline;
                continue;
            }
            if self.line.len() > self.max {
                self.line.clear();
                self.skipping = !newline;
                return Err(LineError::TooLong(self.max));
            }
            if newline {
                return Ok(Some(trim_cr(std::mem::take(&mut self.line))));
            }
        }
    }
}

fn trim_cr(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn collects_output_and_exit_code() {
        let out = run_once(
            &sh("cat; echo out; echo err >&2; exit 3"),
            Some(b"in\n"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(out.exit, Exit::Code(3));
        assert_eq!(out.stdout, b"in\nout\n");
        assert_eq!(out.stderr.trim(), "err");
    }

    /// Waits (up to 5 s) until `pid` is gone or a zombie; false if it is
    /// still running then.
    async fn ends(pid: i32) -> bool {
        for _ in 0..250 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Not ours to leave behind, whatever the assertion says.
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        false
    }

    fn read_pid(path: &std::path::Path) -> i32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn children_left_in_the_group_after_a_normal_exit_are_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        // The child does not hold stdout: the run ends at once, with the
        // sleep still in the group.
        let script = format!(
            "sleep 1000 >/dev/null 2>&1 & echo $! > {}; echo done",
            pidfile.display()
        );
        let out = run_once(&sh(&script), None, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(out.exit, Exit::Code(0));
        let pid = read_pid(&pidfile);
        assert!(ends(pid).await, "child {pid} survived the run");
    }

    #[tokio::test]
    async fn dropping_a_run_kills_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 1000 & echo $! > {}; wait", pidfile.display());
        let run =
            tokio::spawn(
                async move { run_once(&sh(&script), None, Duration::from_secs(600)).await },
            );
        while std::fs::read_to_string(&pidfile).map_or(true, |s| !s.ends_with('\n')) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // What the daemon does to a monitor it removes or stops.
        run.abort();
        let _ = run.await;
        let pid = read_pid(&pidfile);
        assert!(ends(pid).await, "child {pid} survived the aborted run");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 1000 & echo $! > {}; wait", pidfile.display());
        let out = run_once(&sh(&script), None, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(out.exit, Exit::TimedOut);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild was in the group: it must be gone (not even a zombie
        // of ours, since its parent shell was killed and init reaps it).
        let mut gone = false;
        for _ in 0..50 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "grandchild {pid} survived the group kill");
    }

    #[tokio::test]
    async fn endless_output_is_cut() {
        let out = run_once(&sh("yes garbage"), None, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(out.exit, Exit::OutputTooLarge);
        assert!(out.stdout.len() > MAX_STDOUT_BYTES);
        assert!(out.stdout.len() < MAX_STDOUT_BYTES + 64 * 1024);
    }

    #[tokio::test]
    async fn grandchild_holding_stdout_does_not_hang_the_run_nor_outlive_it() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!(
            "echo hi; sleep 1000 & echo $! > {}; exit 0",
            pidfile.display()
        );
        let out = run_once(&sh(&script), None, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(out.exit, Exit::Code(0));
        assert_eq!(out.stdout, b"hi\n");
        let pid = read_pid(&pidfile);
        assert!(ends(pid).await, "grandchild {pid} outlived the run");
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let err = run_once(
            &["/nonexistent/prog".to_owned()],
            None,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/prog"), "{err}");
    }

    #[tokio::test]
    async fn a_long_line_arriving_in_pieces_is_skipped_to_its_newline() {
        let (mut writer, reader) = tokio::io::duplex(16);
        tokio::spawn(async move {
            let long = format!("{}\nok\n", "a".repeat(100));
            let _ = writer.write_all(long.as_bytes()).await;
        });
        let mut lines = BoundedLines::new(reader, 20);
        assert!(matches!(
            lines.next_line().await,
            Err(LineError::TooLong(20))
        ));
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ok"));
        assert_eq!(lines.next_line().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_line_read_across_a_timeout_is_not_lost() {
        let (mut writer, reader) = tokio::io::duplex(64);
        let mut lines = BoundedLines::new(reader, 100);
        writer.write_all(b"first ha").await.unwrap();
        let cut = tokio::time::timeout(Duration::from_millis(50), lines.next_line()).await;
        assert!(cut.is_err(), "a partial line is not a line");
        writer.write_all(b"lf\n").await.unwrap();
        assert_eq!(
            lines.next_line().await.unwrap().as_deref(),
            Some("first half")
        );
    }

    #[tokio::test]
    async fn bounded_lines() {
        let data: &[u8] = b"one\r\ntwo\n\nthree-is-too-long\nfour";
        let mut lines = BoundedLines::new(data, 8);
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("one"));
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("two"));
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some(""));
        assert!(matches!(
            lines.next_line().await,
            Err(LineError::TooLong(8))
        ));
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("four"));
        assert_eq!(lines.next_line().await.unwrap(), None);
    }
}
