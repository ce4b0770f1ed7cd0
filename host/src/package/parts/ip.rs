//! `[[ip]]`: a relocatable address, added with `ip addr add` and announced,
//! removed with `ip addr del`.
//!
//! * The interface is the configured one, or the first up interface that
//!   already has an address in the same subnet (`ip -j addr show up`).
//! * IPv4: before adding, ARP probes ([`super::arp::probe`], a raw socket:
//!   RFC 5227 duplicate address detection in a few hundred milliseconds,
//!   where `arping -D` takes whole seconds) ask the LAN whether someone has
//!   the address; an answer fails the start. After adding, gratuitous ARP
//!   ([`super::arp::announce`]) makes neighbours update their caches at
//!   once.
//! * IPv6: the kernel's own duplicate address detection runs when the
//!   address is added; the start waits until the address is no longer
//!   tentative, and fails (removing it) when the kernel marks it
//!   `dadfailed`. The kernel then announces it itself (unsolicited
//!   neighbour advertisement where `ndisc_notify` is set); no extra tool.
//!
//! Addresses are added and removed with iproute2's `ip` rather than
//! netlink sockets: it is on every node, and its failures read well in an
//! error.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use vigil_sdk::subnet::{same_subnet, segment};

use super::tool_ok;

/// How long IPv6 duplicate address detection may take before the start
/// fails (the kernel's default is one probe, one second).
const DAD_TIMEOUT: Duration = Duration::from_secs(5);

/// One address of one interface, from `ip -j addr show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub interface: String,
    pub up: bool,
    pub address: IpAddr,
    pub prefix: u8,
    pub tentative: bool,
    pub dad_failed: bool,
}

/// Parses `ip -j addr show` output.
pub fn parse_addresses(json: &str) -> Vec<InterfaceAddress> {
    let Ok(serde_json::Value::Array(links)) = serde_json::from_str(json) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for link in &links {
        let Some(name) = link.get("ifname").and_then(|v| v.as_str()) else {
            continue;
        };
        let flags: Vec<&str> = link
            .get("flags")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|f| f.as_str()).collect())
            .unwrap_or_default();
        let up =
            flags.contains(&"UP") && link.get("operstate").and_then(|v| v.as_str()) != Some("DOWN");
        let Some(infos) = link.get("addr_info").and_then(|v| v.as_array()) else {
            continue;
        };
        for info in infos {
            let Some(address) = info
                .get("local")
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let prefix = info.get("prefixlen").and_then(|v| v.as_u64()).unwrap_or(0) as u8;
            let flag = |key: &str| info.get(key).and_then(|v| v.as_bool()).unwrap_or(false);
            out.push(InterfaceAddress {
                interface: name.to_owned(),
                up,
                address,
                prefix,
                tentative: flag("tentative"),
                dad_failed: flag("dadfailed"),
            });
        }
    }
    out
}

/// The interface for `address/prefix`: the first up interface with another
/// address in that subnet.
pub fn choose_interface(table: &[InterfaceAddress], address: IpAddr, prefix: u8) -> Option<String> {
    table
        .iter()
        .find(|a| {
            a.up && a.address != address
                && a.prefix == prefix
                && same_subnet(a.address, address, prefix)
        })
        .map(|a| a.interface.clone())
}

fn addresses() -> Result<Vec<InterfaceAddress>, String> {
    let out = tool_ok("ip", &["-j", "addr", "show"])?;
    Ok(parse_addresses(&out.stdout))
}

/// Adds `address/prefix` (on `interface`, or the one chosen by subnet);
/// returns the interface.
pub fn add(address: IpAddr, prefix: u8, interface: Option<&str>) -> Result<String, String> {
    let table = addresses()?;
    if let Some(present) = table.iter().find(|a| a.address == address) {
        return Err(format!(
            "{address} is already on interface {} of this node",
            present.interface
        ));
    }
    let interface = match interface {
        Some(i) => i.to_owned(),
        None => choose_interface(&table, address, prefix).ok_or_else(|| {
            format!(
                "no up interface of this node has an address in subnet {}; name one with interface = \"...\"",
                segment(address, prefix)
            )
        })?,
    };
    let cidr = format!("{address}/{prefix}");
    match address {
        IpAddr::V4(v4) => {
            if let Some(mac) = super::arp::probe(&interface, v4)? {
                return Err(format!(
                    "{address} is already in use on the LAN of {interface} (duplicate address detection: {} answered the ARP probe)",
                    super::arp::mac_text(mac)
                ));
            }
            tool_ok("ip", &["addr", "add", &cidr, "dev", &interface])?;
            // Best effort: the address works without it, neighbours just
            // learn it later.
            if let Err(e) = super::arp::announce(&interface, v4) {
                tracing::warn!(%address, %interface, error = %e, "gratuitous ARP failed");
            }
        }
        IpAddr::V6(_) => {
            tool_ok("ip", &["addr", "add", &cidr, "dev", &interface])?;
            let deadline = Instant::now() + DAD_TIMEOUT;
            loop {
                let now = addresses()?;
                let Some(entry) = now.iter().find(|a| a.address == address) else {
                    return Err(format!(
                        "{address} disappeared from {interface} while it was being added"
                    ));
                };
                if entry.dad_failed {
                    let _ = remove(address, prefix, Some(&interface));
                    return Err(format!(
                        "{address} is already in use on the LAN of {interface} (IPv6 duplicate address detection failed)"
                    ));
                }
                if !entry.tentative {
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = remove(address, prefix, Some(&interface));
                    return Err(format!(
                        "{address} still tentative on {interface} after {} s of duplicate address detection",
                        DAD_TIMEOUT.as_secs()
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    Ok(interface)
}

/// Removes `address/prefix`; an address that is not there is success.
pub fn remove(address: IpAddr, prefix: u8, interface: Option<&str>) -> Result<(), String> {
    let table = addresses()?;
    let Some(present) = table
        .iter()
        .find(|a| a.address == address && interface.is_none_or(|i| a.interface == i))
    else {
        tracing::info!(%address, "address not present; nothing to remove");
        return Ok(());
    };
    let cidr = format!("{address}/{prefix}");
    tool_ok("ip", &["addr", "del", &cidr, "dev", &present.interface]).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_chosen_by_subnet() {
        let json = r#"[
          {"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"operstate":"UNKNOWN",
           "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
          {"ifname":"eth0","flags":["BROADCAST","UP"],"operstate":"DOWN",
           "addr_info":[{"family":"inet","local":"192.0.2.7","prefixlen":24}]},
          {"ifname":"eth1","flags":["BROADCAST","UP","LOWER_UP"],"operstate":"UP",
           "addr_info":[{"family":"inet","local":"192.0.2.8","prefixlen":24},
                        {"family":"inet6","local":"2001:db8::8","prefixlen":64,"tentative":true}]}
        ]"#;
        let table = parse_addresses(json);
        assert_eq!(table.len(), 4);
        assert!(table[3].tentative);
        let check = |address: &str, prefix: u8, expect: Option<&str>| {
            assert_eq!(
                choose_interface(&table, address.parse().unwrap(), prefix).as_deref(),
                expect,
                "{address}/{prefix}"
            );
        };
        // eth0 is in the subnet but down.
        check("192.0.2.50", 24, Some("eth1"));
        check("198.51.100.1", 24, None);
        check("2001:db8::50", 64, Some("eth1"));
        // A different prefix length is a different subnet.
        check("192.0.2.50", 25, None);
    }
}
