//! Link state over rtnetlink: a socket subscribed to link events, a dump of
//! every link, and the parser that turns `RTM_NEWLINK`/`RTM_DELLINK`
//! messages into [`LinkEvent`]s.
//!
//! Only what the `lan` monitor needs is parsed (name, flags, operstate,
//! carrier); addresses, routes and statistics are skipped. Everything works on
//! the network namespace of the calling thread, which is what lets tests run
//! the monitor inside namespaces they create.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

/// Why talking to rtnetlink failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink {op}: {source}")]
    Io { op: &'static str, source: io::Error },
    #[error("netlink link dump: kernel error {errno}")]
    Kernel { errno: i32 },
    #[error("netlink link dump did not finish before the poll deadline")]
    Timeout,
}

const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTMGRP_LINK: u32 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_OPERSTATE: u16 = 16;
const IFLA_CARRIER: u16 = 33;
const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;
const IFF_LOWER_UP: u32 = 0x1_0000;
// RFC 2863 operational states as the kernel numbers them (IF_OPER_*).
const IF_OPER_NOTPRESENT: u8 = 1;
const IF_OPER_DOWN: u8 = 2;
const IF_OPER_LOWERLAYERDOWN: u8 = 3;
const IF_OPER_TESTING: u8 = 4;
const IF_OPER_DORMANT: u8 = 5;

/// One link as the kernel described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: i32,
    pub name: String,
    pub flags: u32,
    pub operstate: Option<u8>,
    pub carrier: Option<bool>,
}

/// Whether a link counts as up, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkStatus {
    Up,
    Down(&'static str),
}

impl Link {
    pub fn is_loopback(&self) -> bool {
        self.flags & IFF_LOOPBACK != 0
    }

    /// Up means administratively up, with carrier, and not in an operational
    /// state that forbids traffic. `unknown` operstate (tun, dummy and many
    /// virtual drivers never report one) counts as up when the flags say so.
    pub fn status(&self) -> LinkStatus {
        if self.flags & IFF_UP == 0 {
            return LinkStatus::Down("administratively down");
        }
        if self.flags & IFF_LOWER_UP == 0 || self.carrier == Some(false) {
            return LinkStatus::Down("no carrier");
        }
        match self.operstate {
            Some(IF_OPER_NOTPRESENT) => LinkStatus::Down("device not present"),
            Some(IF_OPER_DOWN) => LinkStatus::Down("operationally down"),
            Some(IF_OPER_LOWERLAYERDOWN) => LinkStatus::Down("lower layer down"),
            Some(IF_OPER_TESTING) => LinkStatus::Down("in test mode"),
            Some(IF_OPER_DORMANT) => LinkStatus::Down("dormant"),
            _ => LinkStatus::Up,
        }
    }
}

/// What one netlink message said about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    New(Link),
    Deleted(Link),
}

/// Result of parsing one datagram.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub events: Vec<LinkEvent>,
    pub done: bool,
    pub error: Option<i32>,
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Parses every netlink message in `buf`; malformed tails are ignored, since
/// the kernel never sends them and a monitor must not die on one.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let (Some(len), Some(kind)) = (u32_at(buf, at), u16_at(buf, at + 4)) else {
            break;
        };
        let len = len as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            break;
        }
        let body = &buf[at + NLMSG_HDRLEN..at + len];
        match kind {
            NLMSG_DONE => parsed.done = true,
            NLMSG_ERROR => {
                let errno = u32_at(body, 0).map(|e| e as i32).unwrap_or(-libc::EIO);
                if errno != 0 {
                    parsed.error = Some(-errno);
                }
            }
            RTM_NEWLINK | RTM_DELLINK => {
                if let Some(link) = parse_link(body) {
                    parsed.events.push(if kind == RTM_NEWLINK {
                        LinkEvent::New(link)
                    } else {
                        LinkEvent::Deleted(link)
                    });
                }
            }
            _ => {}
        }
        at += align4(len);
    }
    parsed
}

fn parse_link(body: &[u8]) -> Option<Link> {
    let index = u32_at(body, 4)? as i32;
    let flags = u32_at(body, 8)?;
    let mut link = Link {
        index,
        name: String::new(),
        flags,
        operstate: None,
        carrier: None,
    };
    let mut at = IFINFOMSG_LEN;
    while at + 4 <= body.len() {
        let len = u16_at(body, at)? as usize;
        let kind = u16_at(body, at + 2)? & 0x3fff;
        if len < 4 || at + len > body.len() {
            break;
        }
        let payload = &body[at + 4..at + len];
        match kind {
            IFLA_IFNAME => {
                let name = payload.split(|b| *b == 0).next().unwrap_or_default();
                link.name = String::from_utf8_lossy(name).into_owned();
            }
            IFLA_OPERSTATE => link.operstate = payload.first().copied(),
            IFLA_CARRIER => link.carrier = payload.first().map(|c| *c != 0),
            _ => {}
        }
        at += align4(len);
    }
    (!link.name.is_empty()).then_some(link)
}

fn last_error(op: &'static str) -> NetlinkError {
    NetlinkError::Io {
        op,
        source: io::Error::last_os_error(),
    }
}

/// Opens a `NETLINK_ROUTE` socket, subscribed to `groups`.
fn open(groups: u32) -> Result<OwnedFd, NetlinkError> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(last_error("socket"));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = groups;
    // SAFETY: `addr` is a valid sockaddr_nl and the length matches it.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(last_error("bind"));
    }
    Ok(fd)
}

/// Opens a socket that receives every link change in this namespace.
pub fn subscribe() -> Result<OwnedFd, NetlinkError> {
    let fd = open(RTMGRP_LINK)?;
    // A larger buffer makes overruns (ENOBUFS) rarer when many links flap at
    // once; an overrun is still handled by a resync dump.
    let size: libc::c_int = 1 << 20;
    // SAFETY: valid fd, option value points to a c_int of the given size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    Ok(fd)
}

/// Receives one datagram without blocking; `Ok(None)` when nothing is queued.
pub fn recv(fd: &OwnedFd, buf: &mut [u8]) -> Result<Option<usize>, io::Error> {
    // SAFETY: `buf` is writable for its whole length.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(err),
        };
    }
    Ok(Some(n as usize))
}

/// Waits until `fd` is readable or `deadline` passes; true when readable.
fn wait_readable(fd: &OwnedFd, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = left.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    rc > 0
}

/// Lists every link in the calling thread's network namespace.
pub fn dump_links(deadline: Instant) -> Result<Vec<Link>, NetlinkError> {
    let fd = open(0)?;
    let mut req = [0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[NLMSG_HDRLEN] = libc::AF_UNSPEC as u8;
    // SAFETY: `req` is readable for its whole length.
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(last_error("send"));
    }
    let mut links = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match recv(&fd, &mut buf) {
            Ok(Some(n)) => n,
            Ok(None) => {
                if !wait_readable(&fd, deadline) {
                    return Err(NetlinkError::Timeout);
                }
                continue;
            }
            Err(source) => return Err(NetlinkError::Io { op: "recv", source }),
        };
        let parsed = parse(&buf[..n]);
        if let Some(errno) = parsed.error {
            return Err(NetlinkError::Kernel { errno });
        }
        links.extend(parsed.events.into_iter().filter_map(|e| match e {
            LinkEvent::New(link) => Some(link),
            LinkEvent::Deleted(_) => None,
        }));
        if parsed.done {
            return Ok(links);
        }
    }
}

/// One address of a link, from an `RTM_NEWADDR` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The link's index ([`Link::index`]).
    pub index: i32,
    pub address: std::net::IpAddr,
    pub prefix: u8,
}

const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const IFADDRMSG_LEN: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
/// IPv6 duplicate address detection failed: the address is not usable.
const IFA_F_DADFAILED: u8 = 0x08;

/// Parses the `RTM_NEWADDR` messages in `buf`: (addresses, done, error).
pub fn parse_addresses(buf: &[u8]) -> (Vec<Address>, bool, Option<i32>) {
    let mut out = Vec::new();
    let (mut done, mut error) = (false, None);
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let (Some(len), Some(kind)) = (u32_at(buf, at), u16_at(buf, at + 4)) else {
            break;
        };
        let len = len as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            break;
        }
        let body = &buf[at + NLMSG_HDRLEN..at + len];
        match kind {
            NLMSG_DONE => done = true,
            NLMSG_ERROR => {
                let errno = u32_at(body, 0).map(|e| e as i32).unwrap_or(-libc::EIO);
                if errno != 0 {
                    error = Some(-errno);
                }
            }
            RTM_NEWADDR => out.extend(parse_address(body)),
            _ => {}
        }
        at += align4(len);
    }
    (out, done, error)
}

fn parse_address(body: &[u8]) -> Option<Address> {
    let family = *body.first()?;
    let prefix = *body.get(1)?;
    let flags = *body.get(2)?;
    let index = u32_at(body, 4)? as i32;
    if flags & IFA_F_DADFAILED != 0 {
        return None;
    }
    let (mut local, mut address) = (None, None);
    let mut at = IFADDRMSG_LEN;
    while at + 4 <= body.len() {
        let len = u16_at(body, at)? as usize;
        let kind = u16_at(body, at + 2)? & 0x3fff;
        if len < 4 || at + len > body.len() {
            break;
        }
        let payload = &body[at + 4..at + len];
        let ip: Option<std::net::IpAddr> = match (family as i32, payload.len()) {
            (libc::AF_INET, 4) => Some(<[u8; 4]>::try_from(payload).ok()?.into()),
            (libc::AF_INET6, 16) => Some(<[u8; 16]>::try_from(payload).ok()?.into()),
            _ => None,
        };
        match kind {
            IFA_LOCAL => local = ip,
            IFA_ADDRESS => address = ip,
            _ => {}
        }
        at += align4(len);
    }
    // IFA_LOCAL is this end's address (IFA_ADDRESS is the peer's on
    // point-to-point links); IPv6 gives only IFA_ADDRESS.
    Some(Address {
        index,
        address: local.or(address)?,
        prefix,
    })
}

/// Lists every address (IPv4 and IPv6) in the calling thread's namespace.
pub fn dump_addresses(deadline: Instant) -> Result<Vec<Address>, NetlinkError> {
    let fd = open(0)?;
    let mut req = [0u8; NLMSG_HDRLEN + IFADDRMSG_LEN];
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETADDR.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[NLMSG_HDRLEN] = libc::AF_UNSPEC as u8;
    // SAFETY: `req` is readable for its whole length.
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(last_error("send"));
    }
    let mut addresses = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match recv(&fd, &mut buf) {
            Ok(Some(n)) => n,
            Ok(None) => {
                if !wait_readable(&fd, deadline) {
                    return Err(NetlinkError::Timeout);
                }
                continue;
            }
            Err(source) => return Err(NetlinkError::Io { op: "recv", source }),
        };
        let (found, done, error) = parse_addresses(&buf[..n]);
        if let Some(errno) = error {
            return Err(NetlinkError::Kernel { errno });
        }
        addresses.extend(found);
        if done {
            return Ok(addresses);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link_message(kind: u16, name: &str, flags: u32, operstate: Option<u8>) -> Vec<u8> {
        let mut attrs = Vec::new();
        let mut push_attr = |kind: u16, payload: &[u8]| {
            let len = (4 + payload.len()) as u16;
            attrs.extend_from_slice(&len.to_ne_bytes());
            attrs.extend_from_slice(&kind.to_ne_bytes());
            attrs.extend_from_slice(payload);
            while attrs.len() % 4 != 0 {
                attrs.push(0);
            }
        };
        let mut name_z = name.as_bytes().to_vec();
        name_z.push(0);
        push_attr(IFLA_IFNAME, &name_z);
        if let Some(op) = operstate {
            push_attr(IFLA_OPERSTATE, &[op]);
        }
        let mut msg = vec![0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
        msg[NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8].copy_from_slice(&7i32.to_ne_bytes());
        msg[NLMSG_HDRLEN + 8..NLMSG_HDRLEN + 12].copy_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&attrs);
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg[4..6].copy_from_slice(&kind.to_ne_bytes());
        msg
    }

    fn check(flags: u32, operstate: Option<u8>, expect: LinkStatus) {
        let parsed = parse(&link_message(RTM_NEWLINK, "eth0", flags, operstate));
        let [LinkEvent::New(link)] = parsed.events.as_slice() else {
            panic!("expected one new link, got {:?}", parsed.events)
        };
        assert_eq!(link.name, "eth0");
        assert_eq!(link.index, 7);
        assert_eq!(
            link.status(),
            expect,
            "flags {flags:#x} operstate {operstate:?}"
        );
    }

    #[test]
    fn link_status_from_flags_and_operstate() {
        const OPER_UP: u8 = 6;
        check(IFF_UP | IFF_LOWER_UP, Some(OPER_UP), LinkStatus::Up);
        check(IFF_UP | IFF_LOWER_UP, Some(0), LinkStatus::Up);
        check(IFF_UP | IFF_LOWER_UP, None, LinkStatus::Up);
        check(
            IFF_LOWER_UP,
            Some(OPER_UP),
            LinkStatus::Down("administratively down"),
        );
        check(
            IFF_UP,
            Some(IF_OPER_LOWERLAYERDOWN),
            LinkStatus::Down("no carrier"),
        );
        check(
            IFF_UP | IFF_LOWER_UP,
            Some(IF_OPER_DORMANT),
            LinkStatus::Down("dormant"),
        );
        check(
            IFF_UP | IFF_LOWER_UP,
            Some(IF_OPER_DOWN),
            LinkStatus::Down("operationally down"),
        );
    }

    #[test]
    fn several_messages_and_done_in_one_datagram() {
        let mut buf = link_message(RTM_NEWLINK, "a", IFF_UP, None);
        buf.extend(link_message(RTM_DELLINK, "b", 0, None));
        let mut done = vec![0u8; NLMSG_HDRLEN + 4];
        let done_len = done.len() as u32;
        done[0..4].copy_from_slice(&done_len.to_ne_bytes());
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        buf.extend(done);
        let parsed = parse(&buf);
        assert!(parsed.done);
        assert_eq!(parsed.events.len(), 2);
        assert!(matches!(&parsed.events[1], LinkEvent::Deleted(l) if l.name == "b"));
    }

    #[test]
    fn truncated_input_is_ignored_not_fatal() {
        let msg = link_message(RTM_NEWLINK, "eth0", IFF_UP, None);
        for cut in 0..msg.len() {
            let parsed = parse(&msg[..cut]);
            assert!(parsed.events.is_empty(), "cut at {cut}");
        }
        let mut lying = msg.clone();
        lying[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse(&lying).events.is_empty());
    }

    #[test]
    fn dump_lists_loopback() {
        let links = dump_links(Instant::now() + std::time::Duration::from_secs(5))
            .expect("netlink dump works without privileges");
        let lo = links
            .iter()
            .find(|l| l.name == "lo")
            .expect("every namespace has lo");
        assert!(lo.is_loopback());
    }

    #[test]
    fn address_dump_lists_loopback_addresses() {
        let addrs = dump_addresses(Instant::now() + std::time::Duration::from_secs(2)).unwrap();
        assert!(
            addrs
                .iter()
                .any(|a| a.address == std::net::IpAddr::from([127, 0, 0, 1]) && a.prefix == 8),
            "{addrs:?}"
        );
    }
}
