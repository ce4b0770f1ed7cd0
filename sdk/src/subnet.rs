//! Subnets as resource names know them (DESIGN §3):
//! `/net/subnets/<network>_<prefix>/status`, IPv6 with `-` for `:`
//! (`192.0.2.0_24`, `2001-db8--_64`). The lan monitor publishes these
//! resources; the host requires them for the addresses a package takes.
//! One definition, so both always name a subnet the same way.

use std::net::IpAddr;

use crate::ResourceName;

/// `address` with the bits past `prefix` cleared.
pub fn network_of(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

/// Whether `a` and `b` are in the same subnet of `prefix` bits (never
/// across address families).
pub fn same_subnet(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    a.is_ipv4() == b.is_ipv4() && network_of(a, prefix) == network_of(b, prefix)
}

/// The name segment of the subnet of `address/prefix` (`192.0.2.0_24`).
pub fn segment(address: IpAddr, prefix: u8) -> String {
    format!("{}_{prefix}", network_of(address, prefix)).replace(':', "-")
}

/// `/net/subnets/<segment>/status`: up while an up link has an address in
/// the subnet of `address/prefix`.
pub fn status_name(address: IpAddr, prefix: u8) -> ResourceName {
    ResourceName::new(format!("/net/subnets/{}/status", segment(address, prefix)))
        .expect("digits, dots, dashes and underscores form a valid segment")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let check = |a: &str, b: &str, prefix: u8, same: bool, name: &str| {
            let (a, b): (IpAddr, IpAddr) = (a.parse().unwrap(), b.parse().unwrap());
            assert_eq!(same_subnet(a, b, prefix), same, "{a} {b}/{prefix}");
            assert_eq!(segment(a, prefix), name);
        };
        check("192.0.2.50", "192.0.2.1", 24, true, "192.0.2.0_24");
        check("192.0.2.50", "192.0.3.1", 24, false, "192.0.2.0_24");
        check("10.1.2.3", "10.200.0.1", 8, true, "10.0.0.0_8");
        check("10.1.2.3", "11.1.2.3", 0, true, "0.0.0.0_0");
        check("2001:db8::5", "2001:db8::1", 64, true, "2001-db8--_64");
        check("2001:db8::5", "192.0.2.1", 0, false, "--_0");
    }
}
