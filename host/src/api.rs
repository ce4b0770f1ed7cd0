//! The control API: JSON lines over a Unix socket (mode 0600).
//!
//! The shapes of the answers live in [`crate::views`] (re-exported here):
//! the daemon answers requests with those typed structs.
//!
//! One request line, one response line per connection. The server does not
//! handle requests itself: it forwards them to the daemon's main loop and
//! writes back what the loop answers. It parses requests strictly (unknown
//! ops and fields are refused, a `resls` path must start with `/`), closes a
//! client that sends no complete request within [`IDLE_TIMEOUT`], and holds
//! at most [`MAX_CONNECTIONS`] connections: past that, a new client gets an
//! error line and is closed at once, so idle clients cannot exhaust the
//! daemon's file descriptors.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

pub use crate::views::{
    ClassRow, ConfigErrorRow, DeclaredRow, MonitorRow, ReslsOutput, ResourceRow, monitor_row,
    resls_output, rfc3339,
};

/// Longest request line accepted.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// How long a client may take to send its request line, and to read the
/// answer once it is written.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; the CLI opens one per command.
pub const MAX_CONNECTIONS: usize = 64;
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// The largest pid on Linux (`pid_max` on 64-bit), for the longest
/// temporary name [`bind`] may use.
const MAX_PID: u32 = 4_194_304;

/// A request to the daemon. Parse one with [`parse_request`]: serde alone
/// does not refuse unknown fields of an internally tagged enum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Ping,
    /// Resources at or below `path`.
    Resls {
        path: String,
    },
    Monitors,
    Status,
    Why {
        package: String,
    },
    Pkg {
        action: crate::package::manager::AdminOp,
        package: String,
        node: Option<String>,
    },
    Node {
        halt: bool,
        node: String,
    },
    /// `vigil node maintenance NODE on|off`.
    NodeMaintenance {
        node: String,
        on: bool,
    },
    /// Configuration errors the daemon knows of (from startup and the last
    /// reload), for `vigil monitor list`.
    ConfigErrors,
    /// Whether the host vouches for itself (`/healthz`).
    Health,
    /// `vigil apply`: read and validate this host's `packages.d/` and make
    /// it the cluster's package set, if it is still what the CLI validated
    /// (`digest`, of the files that validated).
    Apply {
        digest: String,
    },
    /// The applied package set with its files (`vigil check` compares).
    Applied,
}

/// The fields each op takes, besides `op`.
fn request_fields(op: &str) -> Option<&'static [&'static str]> {
    Some(match op {
        "ping" | "monitors" | "status" | "config_errors" | "health" | "applied" => &[],
        "apply" => &["digest"],
        "resls" => &["path"],
        "why" => &["package"],
        "pkg" => &["action", "package", "node"],
        "node" => &["halt", "node"],
        "node_maintenance" => &["node", "on"],
        _ => return None,
    })
}

/// Why `path` is not a resource path `resls` can list.
pub fn resls_path_problem(path: &str) -> Option<String> {
    (!path.starts_with('/')).then(|| {
        format!("{path:?} is not a resource path: it must start with / (such as / or /net)")
    })
}

/// Parses one request line strictly: an object with a known `op`, only
/// that op's fields, and a `resls` path that starts with `/`.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("request is not JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| "request must be a JSON object".to_owned())?;
    let op = object
        .get("op")
        .and_then(|op| op.as_str())
        .ok_or_else(|| "request needs \"op\": \"<operation>\"".to_owned())?;
    let fields = request_fields(op).ok_or_else(|| format!("unknown op {op:?}"))?;
    if let Some(unknown) = object
        .keys()
        .find(|k| *k != "op" && !fields.contains(&k.as_str()))
    {
        return Err(format!(
            "unknown field `{unknown}` for op {op:?} (it takes: {})",
            if fields.is_empty() {
                "nothing".to_owned()
            } else {
                fields.join(", ")
            }
        ));
    }
    let request: Request =
        serde_json::from_value(value).map_err(|e| format!("bad request: {e}"))?;
    if let Request::Resls { path } = &request
        && let Some(problem) = resls_path_problem(path)
    {
        return Err(format!("resls: {problem}"));
    }
    Ok(request)
}

/// The daemon's answer: `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: impl Serialize) -> Self {
        match serde_json::to_value(result) {
            Ok(v) => Self {
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => Self::error(format!("cannot encode result: {e}")),
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            result: None,
            error: Some(message.into()),
        }
    }
}

/// A request on its way to the main loop, with where to send the answer.
#[derive(Debug)]
pub struct ApiCall {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

// ------------------------------------------------------------------ server

/// Why the API socket could not be opened, or a call did not succeed.
///
/// The I/O errors are in the message and deliberately not a `source`:
/// `vigil: {e:#}` prints the whole chain, which would say them twice.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("another vigil host answers on {}", .0.display())]
    InUse(PathBuf),
    #[error("socket {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot reach the vigil host at {}: {error} (is `vigil host` running with this config dir?)", path.display())]
    Connect {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("talking to the vigil host at {}: {message}", path.display())]
    Protocol { path: PathBuf, message: String },
    /// The host answered and refused, or the operation failed there.
    #[error("{0}")]
    Refused(String),
}

/// The temporary name [`bind`] binds before renaming into place.
fn temp_socket_path(path: &Path, pid: u32) -> PathBuf {
    path.with_extension(format!("tmp{pid}"))
}

/// Why the control socket cannot be bound at `path`, if it cannot: a
/// `sun_path` holds 107 bytes, and [`bind`] first binds a temporary name
/// beside it.
pub fn socket_path_problem(path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    if path.file_name().is_none() {
        return Some(format!("{} names no file", path.display()));
    }
    let longest = temp_socket_path(path, MAX_PID);
    let len = path.as_os_str().as_bytes().len();
    let longest_len = longest.as_os_str().as_bytes().len().max(len);
    (longest_len > MAX_SOCKET_PATH).then(|| {
        format!(
            "{} is too long for a Unix socket ({len} bytes; with its temporary name {longest_len}, limit {MAX_SOCKET_PATH})",
            path.display()
        )
    })
}

/// Binds the socket at `path` with mode 0600: bound under a temporary name,
/// restricted, then renamed into place, so it is never reachable with a
/// looser mode. A stale socket (nobody answers) is replaced.
pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    let io = |error| ApiError::Io {
        path: path.to_owned(),
        error,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if path.exists() {
        if StdUnixStream::connect(path).is_ok() {
            return Err(ApiError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let tmp = temp_socket_path(path, std::process::id());
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(listener)
}

/// How long a client may stay quiet and how many may be connected.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            idle_timeout: IDLE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// Accepts connections for ever, forwarding each request to `calls`.
pub async fn serve(listener: UnixListener, calls: mpsc::UnboundedSender<ApiCall>) {
    serve_with(listener, calls, ServeLimits::default()).await
}

/// [`serve`] with explicit limits (tests use small ones).
pub async fn serve_with(
    listener: UnixListener,
    calls: mpsc::UnboundedSender<ApiCall>,
    limits: ServeLimits,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "api accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = std::sync::Arc::clone(&slots).try_acquire_owned() else {
            // Refused without a task: one line fits in the socket buffer,
            // and the descriptor is closed right here. A request already
            // sent is read first: closing with unread data would reset the
            // connection before the client reads why.
            let mut sink = [0u8; 4096];
            while matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {}
            let mut out = serde_json::to_vec(&Response::error(format!(
                "too many connections ({} open); try again",
                limits.max_connections
            )))
            .unwrap_or_default();
            out.push(b'\n');
            let _ = stream.try_write(&out);
            debug!("api connection refused: too many open");
            continue;
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader =
                AsyncBufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST_BYTES));
            let read = tokio::time::timeout(limits.idle_timeout, reader.read_line(&mut line));
            let response = match read.await {
                Err(_) => Response::error(format!(
                    "no request within {:?}: closing",
                    limits.idle_timeout
                )),
                Ok(Err(e)) => Response::error(format!("reading request: {e}")),
                Ok(Ok(_)) => match parse_request(line.trim()) {
                    Err(e) => Response::error(e),
                    Ok(request) => {
                        debug!(?request, "api request");
                        let (reply, answer) = oneshot::channel();
                        if calls.send(ApiCall { request, reply }).is_err() {
                            Response::error("daemon is shutting down")
                        } else {
                            answer
                                .await
                                .unwrap_or_else(|_| Response::error("daemon dropped the request"))
                        }
                    }
                },
            };
            let mut out = serde_json::to_vec(&response).unwrap_or_default();
            out.push(b'\n');
            let _ = tokio::time::timeout(limits.idle_timeout, write.write_all(&out)).await;
        });
    }
}

/// Sends one request to the daemon listening at `path` (blocking; for the CLI).
pub fn call(path: &Path, request: &Request) -> Result<serde_json::Value, ApiError> {
    let protocol = |message: String| ApiError::Protocol {
        path: path.to_owned(),
        message,
    };
    let mut stream = StdUnixStream::connect(path).map_err(|error| ApiError::Connect {
        path: path.to_owned(),
        error,
    })?;
    let timeout = Some(Duration::from_secs(30));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    let mut line = serde_json::to_vec(request).map_err(|e| protocol(e.to_string()))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| protocol(e.to_string()))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| protocol(e.to_string()))?;
    let response: Response =
        serde_json::from_str(answer.trim()).map_err(|e| protocol(format!("bad response: {e}")))?;
    match (response.ok, response.result, response.error) {
        (true, Some(result), _) => Ok(result),
        (true, None, _) => Ok(serde_json::Value::Null),
        (false, _, error) => {
            Err(ApiError::Refused(error.unwrap_or_else(|| {
                "the host refused without saying why".to_owned()
            })))
        }
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};
    use tokio::io::AsyncReadExt;

    use super::*;

    fn check(line: &str, expect: Expect) {
        let out = match parse_request(line) {
            Ok(request) => format!("{request:?}"),
            Err(e) => format!("error: {e}"),
        };
        expect.assert_eq(&out);
    }

    #[test]
    fn requests_are_parsed_strictly() {
        check(r#"{"op":"ping"}"#, expect!["Ping"]);
        check(
            r#"{"op":"resls","path":"/net"}"#,
            expect![[r#"Resls { path: "/net" }"#]],
        );
        check(
            r#"{"op":"pkg","action":"halt","package":"app"}"#,
            expect![[r#"Pkg { action: Halt, package: "app", node: None }"#]],
        );
        check(
            r#"{"op":"ping","bogus":1}"#,
            expect!["error: unknown field `bogus` for op \"ping\" (it takes: nothing)"],
        );
        check(
            r#"{"op":"resls","path":"/","recursive":true}"#,
            expect!["error: unknown field `recursive` for op \"resls\" (it takes: path)"],
        );
        check(
            r#"{"op":"resls","path":"system"}"#,
            expect![[
                r#"error: resls: "system" is not a resource path: it must start with / (such as / or /net)"#
            ]],
        );
        check(
            r#"{"op":"resls","path":""}"#,
            expect![[
                r#"error: resls: "" is not a resource path: it must start with / (such as / or /net)"#
            ]],
        );
        check(
            r#"{"op":"resls"}"#,
            expect!["error: bad request: missing field `path`"],
        );
        check(
            r#"{"op":"format"}"#,
            expect![[r#"error: unknown op "format""#]],
        );
        check(
            r#"{"path":"/"}"#,
            expect![[r#"error: request needs "op": "<operation>""#]],
        );
        check(
            r#"["ping"]"#,
            expect!["error: request must be a JSON object"],
        );
        check(
            "ping",
            expect!["error: request is not JSON: expected value at line 1 column 1"],
        );
    }

    #[test]
    fn socket_paths_must_fit_sun_path_with_their_temporary_name() {
        assert_eq!(
            socket_path_problem(Path::new("/run/vigil/vigil.sock")),
            None
        );
        let long = format!("/tmp/{}", "s".repeat(200));
        let problem = socket_path_problem(Path::new(&long)).expect("too long");
        assert!(
            problem.contains("too long for a Unix socket (205 bytes"),
            "{problem}"
        );
        // Fits, but its temporary name (`.tmp<pid>` instead of `.sock`) would not.
        let edge = format!("/tmp/{}.sock", "s".repeat(96));
        assert!(edge.len() <= 107);
        assert!(socket_path_problem(Path::new(&edge)).is_some());
        assert!(socket_path_problem(Path::new("/")).is_some());
    }

    /// A server on a temporary socket whose main loop answers every request.
    fn server(limits: ServeLimits) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("api.sock");
        let listener = bind(&path).expect("bind");
        let (calls, mut inbox) = mpsc::unbounded_channel::<ApiCall>();
        tokio::spawn(serve_with(listener, calls, limits));
        tokio::spawn(async move {
            while let Some(call) = inbox.recv().await {
                let _ = call.reply.send(Response::ok("pong"));
            }
        });
        (dir, path)
    }

    async fn answer(stream: &mut tokio::net::UnixStream) -> String {
        let mut text = String::new();
        stream.read_to_string(&mut text).await.expect("read");
        text
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_refused_at_once() {
        let (_dir, path) = server(ServeLimits {
            idle_timeout: Duration::from_secs(600),
            max_connections: 2,
        });
        let idle_a = tokio::net::UnixStream::connect(&path).await.expect("a");
        let idle_b = tokio::net::UnixStream::connect(&path).await.expect("b");
        // Refused before it writes anything.
        let mut third = tokio::net::UnixStream::connect(&path).await.expect("c");
        let text = answer(&mut third).await;
        assert!(text.contains("too many connections (2 open)"), "{text}");
        drop((idle_a, idle_b));
        // Slots come back once the idle clients leave.
        let text = loop {
            let mut again = tokio::net::UnixStream::connect(&path).await.expect("d");
            again
                .write_all(b"{\"op\":\"ping\"}\n")
                .await
                .expect("write");
            let text = answer(&mut again).await;
            if !text.contains("too many") {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(text, "{\"ok\":true,\"result\":\"pong\"}\n");
    }

    #[tokio::test]
    async fn idle_clients_are_closed() {
        let (_dir, path) = server(ServeLimits {
            idle_timeout: Duration::from_millis(100),
            max_connections: 4,
        });
        let mut idle = tokio::net::UnixStream::connect(&path)
            .await
            .expect("connect");
        // Half a request, then nothing.
        idle.write_all(b"{\"op\":").await.expect("write");
        let text = answer(&mut idle).await;
        assert!(text.contains("no request within 100ms: closing"), "{text}");
    }
}
