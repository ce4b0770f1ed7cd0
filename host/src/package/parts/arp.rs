//! ARP for IPv4 address parts, on a raw `AF_PACKET` socket of the calling
//! thread's network namespace:
//!
//! * [`probe`]: RFC 5227 ARP probes (sender address 0.0.0.0) for the
//!   address, [`PROBES`] of them [`PROBE_INTERVAL`] apart, listening until
//!   [`PROBE_WAIT`] after the last for anyone who claims it (a reply, or a
//!   request or probe of its own, from another MAC). A failover must not
//!   wait seconds here: `arping -D` (iputils) takes whole seconds per probe.
//! * [`announce`]: gratuitous ARP (a request with sender = target = the
//!   address) so that neighbours move their cache entry to this node at
//!   once; one at once, [`ANNOUNCE_REPEATS`] more from a background thread.
//!
//! Needs `CAP_NET_RAW`, as `arping` does.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Probes sent before an address is taken.
pub const PROBES: u32 = 2;
/// Between two probes.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// How long after the last probe an answer is still waited for.
pub const PROBE_WAIT: Duration = Duration::from_millis(200);
/// Gratuitous ARPs sent after the first one, [`ANNOUNCE_INTERVAL`] apart.
pub const ANNOUNCE_REPEATS: u32 = 2;
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(500);

const ETH_P_ARP: u16 = 0x0806;
const ARP_LEN: usize = 28;

/// An interface's index and MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub index: i32,
    pub mac: [u8; 6],
}

/// An ARP packet for Ethernet and IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    /// 1 = request, 2 = reply.
    pub op: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_mac: [u8; 6],
    pub target_ip: Ipv4Addr,
}

impl Arp {
    pub fn encode(&self) -> [u8; ARP_LEN] {
        let mut b = [0u8; ARP_LEN];
        b[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
        b[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
        b[4] = 6;
        b[5] = 4;
        b[6..8].copy_from_slice(&self.op.to_be_bytes());
        b[8..14].copy_from_slice(&self.sender_mac);
        b[14..18].copy_from_slice(&self.sender_ip.octets());
        b[18..24].copy_from_slice(&self.target_mac);
        b[24..28].copy_from_slice(&self.target_ip.octets());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Arp> {
        if b.len() < ARP_LEN
            || b[0..2] != 1u16.to_be_bytes()
            || b[2..4] != 0x0800u16.to_be_bytes()
            || b[4] != 6
            || b[5] != 4
        {
            return None;
        }
        let mac = |at: usize| <[u8; 6]>::try_from(&b[at..at + 6]).ok();
        let ip = |at: usize| <[u8; 4]>::try_from(&b[at..at + 4]).ok().map(Ipv4Addr::from);
        Some(Arp {
            op: u16::from_be_bytes([b[6], b[7]]),
            sender_mac: mac(8)?,
            sender_ip: ip(14)?,
            target_mac: mac(18)?,
            target_ip: ip(24)?,
        })
    }

    /// Whether this packet, seen while probing for `address` from `mine`,
    /// says another host has or wants it.
    pub fn claims(&self, address: Ipv4Addr, mine: [u8; 6]) -> bool {
        if self.sender_mac == mine {
            return false;
        }
        // Someone using it (reply, request or announcement from it), or
        // probing for it at the same moment (RFC 5227 2.1.1).
        self.sender_ip == address
            || (self.op == 1
                && self.sender_ip == Ipv4Addr::UNSPECIFIED
                && self.target_ip == address)
    }
}

fn last_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// The index and MAC address of `interface` in this namespace.
pub fn link(interface: &str) -> Result<Link, String> {
    // SAFETY: plain socket(2); checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_error("socket"));
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zeroed is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if interface.is_empty() || interface.len() >= req.ifr_name.len() {
        return Err(format!("{interface:?} is not an interface name"));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(interface.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFINDEX fills ifr_ifindex of a valid ifreq.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFINDEX as _, &mut req) } < 0 {
        return Err(last_error(&format!("interface {interface}")));
    }
    // SAFETY: the union member the kernel just wrote.
    let index = unsafe { req.ifr_ifru.ifru_ifindex };
    // SAFETY: SIOCGIFHWADDR fills ifr_hwaddr of a valid ifreq.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR as _, &mut req) } < 0 {
        return Err(last_error(&format!("MAC address of {interface}")));
    }
    // SAFETY: the union member the kernel just wrote.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    if hw.sa_family != libc::ARPHRD_ETHER {
        return Err(format!(
            "{interface} is not an Ethernet interface (ARP hardware type {})",
            hw.sa_family
        ));
    }
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *dst = *src as u8;
    }
    Ok(Link { index, mac })
}

/// A raw ARP socket bound to one interface.
struct Socket {
    fd: OwnedFd,
    link: Link,
}

impl Socket {
    fn open(link: Link) -> Result<Socket, String> {
        let proto = ETH_P_ARP.to_be() as libc::c_int;
        // SAFETY: plain socket(2); checked below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                proto,
            )
        };
        if fd < 0 {
            return Err(last_error("ARP socket (needs CAP_NET_RAW)"));
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let addr = Self::address(link.index, [0; 6]);
        // SAFETY: a valid sockaddr_ll of the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(last_error("binding the ARP socket"));
        }
        Ok(Socket { fd, link })
    }

    fn address(index: i32, mac: [u8; 6]) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data; zeroed is valid.
        let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        a.sll_family = libc::AF_PACKET as u16;
        a.sll_protocol = ETH_P_ARP.to_be();
        a.sll_ifindex = index;
        a.sll_halen = 6;
        a.sll_addr[..6].copy_from_slice(&mac);
        a
    }

    /// Broadcasts `arp`.
    fn send(&self, arp: &Arp) -> Result<(), String> {
        let bytes = arp.encode();
        let to = Self::address(self.link.index, [0xff; 6]);
        // SAFETY: buffer and address valid for their lengths.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(last_error("sending ARP"));
        }
        Ok(())
    }

    /// Every ARP packet that arrives until `until`, handed to `seen`;
    /// stops early when it returns true.
    fn listen(&self, until: Instant, mut seen: impl FnMut(&Arp) -> bool) -> Result<bool, String> {
        let mut buf = [0u8; 128];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
                continue;
            }
            loop {
                // SAFETY: buf is writable for its length.
                let n = unsafe {
                    libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                if n < 0 {
                    break;
                }
                if let Some(arp) = Arp::decode(&buf[..n as usize])
                    && seen(&arp)
                {
                    return Ok(true);
                }
            }
        }
    }
}

/// Whether another host of the LAN of `interface` has or wants `address`:
/// `Ok(Some(mac))` names the first one that said so.
pub fn probe(interface: &str, address: Ipv4Addr) -> Result<Option<[u8; 6]>, String> {
    let link = link(interface)?;
    let socket = Socket::open(link)?;
    let probe = Arp {
        op: 1,
        sender_mac: link.mac,
        sender_ip: Ipv4Addr::UNSPECIFIED,
        target_mac: [0; 6],
        target_ip: address,
    };
    let mut found = None;
    for i in 0..PROBES {
        socket.send(&probe)?;
        let wait = if i + 1 == PROBES {
            PROBE_WAIT
        } else {
            PROBE_INTERVAL
        };
        if socket.listen(Instant::now() + wait, |arp| {
            let claims = arp.claims(address, link.mac);
            if claims {
                found = Some(arp.sender_mac);
            }
            claims
        })? {
            return Ok(found);
        }
    }
    Ok(None)
}

/// Sends a gratuitous ARP for `address` on `interface` now, and
/// [`ANNOUNCE_REPEATS`] more from a background thread.
pub fn announce(interface: &str, address: Ipv4Addr) -> Result<(), String> {
    let link = link(interface)?;
    let socket = Socket::open(link)?;
    let garp = Arp {
        op: 1,
        sender_mac: link.mac,
        sender_ip: address,
        target_mac: [0; 6],
        target_ip: address,
    };
    socket.send(&garp)?;
    // The socket belongs to this namespace already: the thread may send on
    // it whatever namespace it runs in.
    std::thread::spawn(move || {
        for _ in 0..ANNOUNCE_REPEATS {
            std::thread::sleep(ANNOUNCE_INTERVAL);
            if let Err(e) = socket.send(&garp) {
                tracing::debug!(%address, error = %e, "repeated gratuitous ARP failed");
                return;
            }
        }
    });
    Ok(())
}

/// `02:00:00:00:00:01`.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip_and_claims() {
        let me = [2, 0, 0, 0, 0, 1];
        let other = [2, 0, 0, 0, 0, 2];
        let vip = Ipv4Addr::new(192, 0, 2, 50);
        let reply = Arp {
            op: 2,
            sender_mac: other,
            sender_ip: vip,
            target_mac: me,
            target_ip: Ipv4Addr::UNSPECIFIED,
        };
        assert_eq!(Arp::decode(&reply.encode()), Some(reply));
        assert!(reply.claims(vip, me), "a reply from the address");
        assert!(!reply.claims(vip, other), "our own packet");
        let their_probe = Arp {
            op: 1,
            sender_mac: other,
            sender_ip: Ipv4Addr::UNSPECIFIED,
            target_mac: [0; 6],
            target_ip: vip,
        };
        assert!(
            their_probe.claims(vip, me),
            "a probe for it at the same time"
        );
        let unrelated = Arp {
            sender_ip: Ipv4Addr::new(192, 0, 2, 7),
            target_ip: Ipv4Addr::new(192, 0, 2, 8),
            ..reply
        };
        assert!(!unrelated.claims(vip, me));
        assert_eq!(Arp::decode(&[0; 10]), None);
        assert_eq!(mac_text(me), "02:00:00:00:00:01");
    }
}
