//! systemd's readiness and watchdog protocol (`sd_notify`), spoken directly:
//! one datagram per message to the socket named by `$NOTIFY_SOCKET`.
//!
//! `vigil host` under `Type=notify` says `READY=1` once its monitors run and
//! its packages are adopted, `STATUS=...` as it goes, `WATCHDOG=1` from the
//! main loop's tick (so a stuck loop, not just a dead process, trips
//! `WatchdogSec`), and `STOPPING=1` when it shuts down. Without
//! `$NOTIFY_SOCKET` (not under systemd) every call does nothing.
//!
//! It does not read the socket, retry, or block: a lost datagram is
//! systemd's to notice.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

/// The daemon's end of the notification socket, if systemd gave one.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    /// Half of `$WATCHDOG_USEC`, when systemd watches this process.
    watchdog_every: Option<Duration>,
    last_watchdog: Option<Instant>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (honouring
    /// `$WATCHDOG_PID` when set: only that process is watched).
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let addr = if let Some(name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            } else {
                std::os::unix::net::SocketAddr::from_pathname(&path)
            };
            let opened = addr.and_then(|addr| Ok((UnixDatagram::unbound()?, addr)));
            match opened {
                Ok(pair) => Some(pair),
                Err(e) => {
                    warn!(socket = %path, error = %e, "NOTIFY_SOCKET is not usable; not notifying systemd");
                    None
                }
            }
        });
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog_every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && ours)
            .map(|u| Duration::from_micros(u / 2));
        Self {
            socket,
            watchdog_every,
            last_watchdog: None,
        }
    }

    /// Sends one message (`KEY=value` lines).
    pub fn send(&self, message: &str) {
        let Some((socket, addr)) = &self.socket else {
            return;
        };
        match socket.send_to_addr(message.as_bytes(), addr) {
            Ok(_) => debug!(%message, "notified systemd"),
            Err(e) => warn!(%message, error = %e, "cannot notify systemd"),
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// `WATCHDOG=1` when half the watchdog interval has passed since the
    /// last one; call it from the main loop, as often as it likes.
    pub fn watchdog(&mut self, now: Instant) {
        let Some(every) = self.watchdog_every else {
            return;
        };
        if self
            .last_watchdog
            .is_none_or(|last| now.duration_since(last) >= every)
        {
            self.last_watchdog = Some(now);
            self.send("WATCHDOG=1");
        }
    }
}
