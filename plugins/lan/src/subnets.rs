//! `/net/subnets/<subnet>/status`: `up` while an up link has an address in
//! the subnet (Serviceguard's SUBNET monitoring). The host lists in
//! `params.subnets` every subnet a package's `[[ip]]` uses, besides those
//! the operator lists; a package with an address needs its subnet up on a
//! node to run there.
//!
//! The segment is the network address, `_`, the prefix length
//! (`192.0.2.0_24`; IPv6 with `-` for `:`, `2001-db8--_64`). Read on every
//! poll (links and addresses dumped over rtnetlink), not pushed on events.

use std::net::IpAddr;

use vigil_sdk::subnet::network_of;
use vigil_sdk::{ResourceName, ResourcePattern, Sample};

use crate::netlink::{Address, Link, LinkStatus};

/// A watched subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    /// The network address (host bits cleared).
    pub network: IpAddr,
    pub prefix: u8,
}

impl Subnet {
    /// `192.0.2.0/24` (host bits may be set: `192.0.2.50/24` is the same
    /// subnet); `None` when it is not that shape.
    pub fn parse(text: &str) -> Option<Subnet> {
        let (address, prefix) = text.trim().split_once('/')?;
        let address: IpAddr = address.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then(|| Subnet {
            network: network_of(address, prefix),
            prefix,
        })
    }

    /// Whether `address` is in this subnet.
    pub fn contains(&self, address: IpAddr) -> bool {
        vigil_sdk::subnet::same_subnet(address, self.network, self.prefix)
    }

    /// `/net/subnets/<network>_<prefix>/status`.
    pub fn status_name(&self) -> ResourceName {
        vigil_sdk::subnet::status_name(self.network, self.prefix)
    }

    pub fn pattern(&self) -> ResourcePattern {
        ResourcePattern::new(self.status_name().as_str()).expect("names are patterns")
    }

    /// `up` with the interface that has it, or `down` saying why.
    pub fn sample(&self, links: &[Link], addresses: &[Address]) -> Sample {
        let name = self.status_name();
        let mut down_links: Vec<&str> = Vec::new();
        for a in addresses.iter().filter(|a| self.contains(a.address)) {
            let Some(link) = links.iter().find(|l| l.index == a.index) else {
                continue;
            };
            match link.status() {
                LinkStatus::Up => {
                    return Sample::up(name).with_reason(format!("{} on {}", a.address, link.name));
                }
                LinkStatus::Down(_) => down_links.push(&link.name),
            }
        }
        let subnet = format!("{}/{}", self.network, self.prefix);
        if down_links.is_empty() {
            Sample::down(name, format!("no interface has an address in {subnet}"))
        } else {
            down_links.dedup();
            Sample::down(
                name,
                format!(
                    "the interfaces with an address in {subnet} are down: {}",
                    down_links.join(", ")
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: i32, name: &str, up: bool) -> Link {
        Link {
            index,
            name: name.into(),
            // IFF_UP | IFF_LOWER_UP, or nothing.
            flags: if up { 0x1 | 0x1_0000 } else { 0 },
            operstate: None,
            carrier: None,
        }
    }

    fn addr(index: i32, a: &str, prefix: u8) -> Address {
        Address {
            index,
            address: a.parse().unwrap(),
            prefix,
        }
    }

    #[test]
    fn subnet_names_and_membership() {
        let s = Subnet::parse("192.0.2.50/24").unwrap();
        assert_eq!(s.status_name().as_str(), "/net/subnets/192.0.2.0_24/status");
        assert!(s.contains("192.0.2.7".parse().unwrap()));
        assert!(!s.contains("192.0.3.7".parse().unwrap()));
        assert!(!s.contains("::1".parse().unwrap()));
        let v6 = Subnet::parse("2001:db8::50/64").unwrap();
        assert_eq!(
            v6.status_name().as_str(),
            "/net/subnets/2001-db8--_64/status"
        );
        assert!(Subnet::parse("192.0.2.0").is_none());
        assert!(Subnet::parse("192.0.2.0/33").is_none());
        assert!(Subnet::parse("eth0/24").is_none());
    }

    #[test]
    fn subnet_is_up_only_with_an_address_on_an_up_link() {
        let s = Subnet::parse("10.1.0.0/16").unwrap();
        let links = [link(2, "eth0", true), link(3, "eth1", false)];
        let up = s.sample(&links, &[addr(2, "10.1.2.3", 16)]);
        assert_eq!(
            up.value.as_ref().and_then(|v| v.as_text()),
            Some("up"),
            "{up:?}"
        );
        let down = s.sample(&links, &[addr(3, "10.1.2.3", 16)]);
        assert_eq!(down.value.as_ref().and_then(|v| v.as_text()), Some("down"));
        assert!(down.reason.unwrap().contains("eth1"));
        let none = s.sample(&links, &[addr(2, "10.2.0.1", 16)]);
        assert_eq!(none.value.as_ref().and_then(|v| v.as_text()), Some("down"));
    }
}
