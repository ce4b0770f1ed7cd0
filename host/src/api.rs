//! The control API: JSON lines over a Unix socket (mode 0600), and the
//! JSON shapes of every listing the CLI prints with `--json`.
//!
//! Architecture invariant: this module and the SDK's wire module are the
//! only places that know the JSON layout of vigil's outputs; the daemon
//! answers requests with the typed structs below.
//!
//! One request line, one response line per connection. The server does not
//! handle requests itself: it forwards them to the daemon's main loop and
//! writes back what the loop answers.

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

use crate::registry::{ListedResource, Listing, MonitorRecord, MonitorStatus};

/// Longest request line accepted.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// A request to the daemon.
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

// ------------------------------------------------------------- JSON shapes

/// `vigil resls --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReslsOutput {
    pub node: String,
    pub path: String,
    pub resources: Vec<ResourceRow>,
    /// Immediate child classes of `path`.
    pub classes: Vec<ClassRow>,
    /// Declared wildcard patterns at or below `path`.
    pub declared: Vec<DeclaredRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceRow {
    pub name: String,
    /// A number, a string, or null when unknown.
    pub value: serde_json::Value,
    pub unit: Option<String>,
    /// `known` or `unknown`.
    pub state: String,
    pub reason: Option<String>,
    pub monitor: String,
    /// RFC 3339; null for a declared resource never sampled.
    pub updated: Option<String>,
    pub age_seconds: Option<f64>,
    pub used_by: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassRow {
    pub name: String,
    pub resources: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeclaredRow {
    pub pattern: String,
    pub monitor: String,
}

/// One monitor in `vigil monitor list --json` and status output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorRow {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// `starting`, `ok` or `failed`.
    pub state: String,
    pub reason: Option<String>,
    pub declares: Vec<String>,
    pub samples_received: u64,
    pub last_report: Option<String>,
}

/// Formats milliseconds since the epoch as RFC 3339 (UTC).
pub fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::UNIX_EPOCH + Duration::from_millis(ms);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn resource_row(r: &ListedResource, now_ms: u64, used_by: Vec<String>) -> ResourceRow {
    let s = &r.entry.sample;
    let (value, unit) = match &s.value {
        None => (serde_json::Value::Null, None),
        Some(vigil_sdk::Value::Text(t)) => (serde_json::Value::String(t.clone()), None),
        Some(vigil_sdk::Value::Number { value, unit }) => (
            serde_json::Number::from_f64(*value)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            unit.clone(),
        ),
    };
    ResourceRow {
        name: s.name.to_string(),
        value,
        unit,
        state: if s.is_known() { "known" } else { "unknown" }.to_owned(),
        reason: s.reason.clone(),
        monitor: r.entry.monitor.clone(),
        updated: r.sampled.then(|| rfc3339(s.timestamp_ms)),
        age_seconds: r
            .sampled
            .then(|| now_ms.saturating_sub(s.timestamp_ms) as f64 / 1000.0),
        used_by,
    }
}

/// Shapes a registry listing; `used_by` names the packages using a resource.
pub fn resls_output(
    node: &str,
    listing: &Listing,
    now_ms: u64,
    used_by: impl Fn(&str) -> Vec<String>,
) -> ReslsOutput {
    ReslsOutput {
        node: node.to_owned(),
        path: listing.path.clone(),
        resources: listing
            .resources
            .iter()
            .map(|r| resource_row(r, now_ms, used_by(r.entry.sample.name.as_str())))
            .collect(),
        classes: listing
            .classes
            .iter()
            .map(|(name, n)| ClassRow {
                name: name.clone(),
                resources: *n,
            })
            .collect(),
        declared: listing
            .declared
            .iter()
            .map(|(p, m)| DeclaredRow {
                pattern: p.to_string(),
                monitor: m.clone(),
            })
            .collect(),
    }
}

pub fn monitor_row(name: &str, record: &MonitorRecord) -> MonitorRow {
    let (state, reason) = match &record.status {
        MonitorStatus::Starting => ("starting", None),
        MonitorStatus::Ok => ("ok", None),
        MonitorStatus::Failed(r) => ("failed", Some(r.clone())),
    };
    MonitorRow {
        name: name.to_owned(),
        kind: record.kind.to_owned(),
        state: state.to_owned(),
        reason,
        declares: record.patterns.iter().map(|p| p.to_string()).collect(),
        samples_received: record.samples_received,
        last_report: record.last_report_ms.map(rfc3339),
    }
}

// ------------------------------------------------------------------ server

/// Why the API socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("another vigil host answers on {}", .0.display())]
    InUse(PathBuf),
    #[error("socket {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach the vigil host at {}: {source} (is `vigil host` running with this config dir?)", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the vigil host at {}: {message}", path.display())]
    Protocol { path: PathBuf, message: String },
}

/// Binds the socket at `path` with mode 0600: bound under a temporary name,
/// restricted, then renamed into place, so it is never reachable with a
/// looser mode. A stale socket (nobody answers) is replaced.
pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    let io = |source| ApiError::Io {
        path: path.to_owned(),
        source,
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
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(listener)
}

/// Accepts connections for ever, forwarding each request to `calls`.
pub async fn serve(listener: UnixListener, calls: mpsc::UnboundedSender<ApiCall>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "api accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader =
                AsyncBufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST_BYTES));
            let response = match reader.read_line(&mut line).await {
                Err(e) => Response::error(format!("reading request: {e}")),
                Ok(_) => match serde_json::from_str::<Request>(line.trim()) {
                    Err(e) => Response::error(format!("bad request: {e}")),
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
            let _ = write.write_all(&out).await;
        });
    }
}

/// Sends one request to the daemon listening at `path` (blocking; for the CLI).
pub fn call(path: &Path, request: &Request) -> Result<serde_json::Value, ApiError> {
    let protocol = |message: String| ApiError::Protocol {
        path: path.to_owned(),
        message,
    };
    let mut stream = StdUnixStream::connect(path).map_err(|source| ApiError::Connect {
        path: path.to_owned(),
        source,
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
        (false, _, error) => Err(protocol(
            error.unwrap_or_else(|| "unspecified error".to_owned()),
        )),
    }
}
