//! Reachability probes: ICMP echo or TCP connect, all targets at once, each
//! bounded by the poll's deadline, with a miss counter so one lost packet
//! does not report a gateway down.
//!
//! ICMP first tries an unprivileged ping socket (`SOCK_DGRAM`, allowed by
//! `net.ipv4.ping_group_range`) and falls back to a raw socket (needs
//! `CAP_NET_RAW`). Targets are IP literals only: a heartbeat check that
//! depends on DNS fails when DNS does, so names are not resolved here.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use crate::params::{Probe, Target};

/// How one target answered in one poll.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Reached {
        rtt: Duration,
    },
    Failed {
        reason: String,
    },
    /// The poll deadline left no time for even one attempt: not a miss.
    NotProbed,
}

/// Probes `target` up to `attempts` times, each waiting at most `timeout`,
/// never past `deadline`; stops at the first answer.
pub fn probe(target: &Target, attempts: u32, timeout: Duration, deadline: Instant) -> Outcome {
    let mut last = None;
    for seq in 1..=attempts {
        let now = Instant::now();
        let left = deadline.saturating_duration_since(now);
        if left < Duration::from_millis(1) {
            break;
        }
        let until = now + timeout.min(left);
        let result = match target.probe {
            Probe::Icmp(ip) => icmp_echo(ip, seq as u16, until),
            Probe::Tcp(addr) => tcp_connect(addr, until),
        };
        match result {
            Ok(rtt) => return Outcome::Reached { rtt },
            Err(reason) => last = Some(reason),
        }
        // A failure that came back before the timeout (refused, unreachable)
        // is retried after the rest of the attempt's time, so that
        // `attempts` spreads over attempts × timeout as documented.
        let rest = until.saturating_duration_since(Instant::now());
        if seq < attempts && !rest.is_zero() {
            std::thread::sleep(rest);
        }
    }
    match last {
        Some(reason) => Outcome::Failed { reason },
        None => Outcome::NotProbed,
    }
}

/// Probes every target concurrently; results come back in target order.
pub fn probe_all(
    targets: &[Target],
    attempts: u32,
    timeout: Duration,
    deadline: Instant,
) -> Vec<Outcome> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| scope.spawn(move || probe(t, attempts, timeout, deadline)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Outcome::Failed {
                    reason: "probe panicked".into(),
                })
            })
            .collect()
    })
}

fn tcp_connect(addr: SocketAddr, until: Instant) -> Result<Duration, String> {
    let started = Instant::now();
    let timeout = until
        .saturating_duration_since(started)
        .max(Duration::from_millis(1));
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(stream) => {
            let rtt = started.elapsed();
            drop(stream);
            Ok(rtt)
        }
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            Err(format!("no tcp connect within {} ms", timeout.as_millis()))
        }
        Err(e) => Err(format!("tcp connect: {e}")),
    }
}

/// Per-process echo identifier base, so concurrent raw-socket probes (which
/// all see every ICMP reply) tell their replies apart.
static NEXT_ID: AtomicU16 = AtomicU16::new(0);

const ICMP_ECHO: u8 = 8;
const ICMP_ECHOREPLY: u8 = 0;
const ICMP6_ECHO: u8 = 128;
const ICMP6_ECHOREPLY: u8 = 129;

struct IcmpSocket {
    fd: OwnedFd,
    /// Raw sockets see IPv4 headers and every ICMP packet; ping sockets do not.
    raw: bool,
}

fn open_socket(domain: i32, kind: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is fresh and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn icmp_socket(ip: IpAddr) -> Result<IcmpSocket, String> {
    let (domain, proto) = match ip {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
    };
    let err = match open_socket(domain, libc::SOCK_DGRAM, proto) {
        Ok(fd) => return Ok(IcmpSocket { fd, raw: false }),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) => {
            match open_socket(domain, libc::SOCK_RAW, proto) {
                Ok(fd) => return Ok(IcmpSocket { fd, raw: true }),
                Err(e) => e,
            }
        }
        Err(e) => e,
    };
    Err(format!(
        "cannot open an icmp socket ({err}); allow ping sockets with net.ipv4.ping_group_range or grant CAP_NET_RAW"
    ))
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sockaddr_for(ip: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match ip {
        IpAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(v6) => {
            // SAFETY: as above.
            let sin6 = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = v6.octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn icmp_echo(ip: IpAddr, seq: u16, until: Instant) -> Result<Duration, String> {
    let socket = icmp_socket(ip)?;
    let (addr, addr_len) = sockaddr_for(ip);
    // Connecting filters replies by source address in the kernel and lets an
    // ICMP error (host unreachable) come back as a recv error.
    // SAFETY: `addr` holds a valid sockaddr of `addr_len` bytes.
    if unsafe {
        libc::connect(
            socket.fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_storage).cast(),
            addr_len,
        )
    } < 0
    {
        return Err(format!(
            "icmp connect to {ip}: {}",
            io::Error::last_os_error()
        ));
    }
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() as u16);
    let (request, reply) = match ip {
        IpAddr::V4(_) => (ICMP_ECHO, ICMP_ECHOREPLY),
        IpAddr::V6(_) => (ICMP6_ECHO, ICMP6_ECHOREPLY),
    };
    let mut packet = [0u8; 16];
    packet[0] = request;
    packet[4..6].copy_from_slice(&id.to_be_bytes());
    packet[6..8].copy_from_slice(&seq.to_be_bytes());
    packet[8..16].copy_from_slice(b"vigillan");
    if ip.is_ipv4() {
        // ICMPv6 checksums need the pseudo-header; the kernel fills them in.
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    let started = Instant::now();
    // SAFETY: `packet` is readable for its whole length.
    if unsafe {
        libc::send(
            socket.fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
        )
    } < 0
    {
        return Err(format!("icmp send to {ip}: {}", io::Error::last_os_error()));
    }
    let mut buf = [0u8; 1500];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no icmp echo reply within {} ms",
                until.saturating_duration_since(started).as_millis()
            ));
        }
        let mut pfd = libc::pollfd {
            fd: socket.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // Round up so a sub-millisecond remainder still waits.
        let ms = (left.as_micros().div_ceil(1000)).min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
            continue;
        }
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe {
            libc::recv(
                socket.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
                continue;
            }
            return Err(format!("icmp echo to {ip}: {err}"));
        }
        let mut msg = &buf[..n as usize];
        if socket.raw && ip.is_ipv4() {
            let ihl = usize::from(msg.first().copied().unwrap_or(0) & 0x0f) * 4;
            if msg.len() < ihl {
                continue;
            }
            msg = &msg[ihl..];
        }
        if msg.len() < 8 || msg[0] != reply || u16::from_be_bytes([msg[6], msg[7]]) != seq {
            continue;
        }
        // Ping sockets rewrite the identifier and filter by it themselves.
        if socket.raw && u16::from_be_bytes([msg[4], msg[5]]) != id {
            continue;
        }
        return Ok(started.elapsed());
    }
}

/// What the monitor remembers about a target between polls.
#[derive(Debug, Clone, Default)]
struct TargetState {
    reported_up: bool,
    misses: u32,
}

/// Turns outcomes into statuses with `misses_before_down` hysteresis.
///
/// A target that was up stays up until `misses_before_down` consecutive polls
/// failed. A target never seen up (or already down) is down at its first
/// failure: reporting up before any answer would be a lie.
#[derive(Debug, Default)]
pub struct Hysteresis {
    states: HashMap<String, TargetState>,
}

/// The verdict for one target in one poll.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Up {
        rtt: Option<Duration>,
        reason: Option<String>,
    },
    Down {
        reason: String,
    },
    Unknown {
        reason: String,
    },
}

impl Hysteresis {
    pub fn judge(&mut self, target: &str, outcome: &Outcome, misses_before_down: u32) -> Verdict {
        let state = self.states.entry(target.to_owned()).or_default();
        match outcome {
            Outcome::Reached { rtt } => {
                state.reported_up = true;
                state.misses = 0;
                Verdict::Up {
                    rtt: Some(*rtt),
                    reason: None,
                }
            }
            Outcome::NotProbed => Verdict::Unknown {
                reason: "not probed: the poll deadline left no time".into(),
            },
            Outcome::Failed { reason } => {
                state.misses = state.misses.saturating_add(1);
                if state.reported_up && state.misses < misses_before_down {
                    Verdict::Up {
                        rtt: None,
                        reason: Some(format!(
                            "{reason} ({} of {misses_before_down} misses before down)",
                            state.misses
                        )),
                    }
                } else {
                    state.reported_up = false;
                    Verdict::Down {
                        reason: reason.clone(),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_echo_request() {
        // Echo request id 1 seq 1, no payload: 0x0800 + 0x0001 + 0x0001 = 0x0802.
        let packet = [8, 0, 0, 0, 0, 1, 0, 1];
        assert_eq!(checksum(&packet), !0x0802);
        let mut with_sum = packet;
        with_sum[2..4].copy_from_slice(&checksum(&packet).to_be_bytes());
        assert_eq!(
            checksum(&with_sum),
            0,
            "a packet with its checksum sums to zero"
        );
    }

    #[test]
    fn misses_before_down() {
        let mut h = Hysteresis::default();
        let fail = Outcome::Failed {
            reason: "no reply".into(),
        };
        let ok = Outcome::Reached {
            rtt: Duration::from_millis(3),
        };
        assert!(
            matches!(h.judge("t", &fail, 3), Verdict::Down { .. }),
            "never up: down at once"
        );
        assert!(matches!(
            h.judge("t", &ok, 3),
            Verdict::Up { rtt: Some(_), .. }
        ));
        assert!(
            matches!(h.judge("t", &fail, 3), Verdict::Up { rtt: None, reason: Some(r) } if r.contains("1 of 3"))
        );
        assert!(matches!(
            h.judge("t", &Outcome::NotProbed, 3),
            Verdict::Unknown { .. }
        ));
        assert!(matches!(h.judge("t", &fail, 3), Verdict::Up { .. }));
        assert!(matches!(h.judge("t", &fail, 3), Verdict::Down { reason } if reason == "no reply"));
        assert!(matches!(h.judge("t", &fail, 3), Verdict::Down { .. }));
        assert!(matches!(h.judge("t", &ok, 3), Verdict::Up { .. }));
        assert!(matches!(h.judge("other", &fail, 1), Verdict::Down { .. }));
    }
}
