//! The `[params]` of a `lan` registration: raw serde form, then a validated
//! [`LanParams`] with parsed targets.
//!
//! Validation is syntactic plus one look at the system: interfaces named in
//! params must exist when the monitor is configured (see `docs/monitors/lan.md`
//! for why). It does not probe targets.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

/// Why params were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamsError {
    #[error("lan params: {0}")]
    Shape(String),
    #[error(
        "lan params.interfaces: {name:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or whitespace, not '.' or '..')"
    )]
    BadInterfaceName { name: String },
    #[error(
        "lan params.interfaces: interface {name:?} does not exist on this node (links: {known})"
    )]
    NoSuchInterface { name: String, known: String },
    #[error("lan params.interfaces: {name:?} is listed twice")]
    DuplicateInterface { name: String },
    #[error(
        "lan params.targets: {target:?} is not an IP address or IP:port (write [v6]:port for IPv6)"
    )]
    BadTarget { target: String },
    #[error(
        "lan params.targets: {count} targets, at most {MAX_TARGETS} (each is probed on its own thread)"
    )]
    TooManyTargets { count: usize },
    #[error("lan params.targets: {target:?} is listed twice")]
    DuplicateTarget { target: String },
    #[error("lan params.targets: {target:?} has no port, but method = \"tcp\" needs one")]
    TcpNeedsPort { target: String },
    #[error("lan params.{param}: {value} is outside {min}..={max}")]
    OutOfRange {
        param: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("lan params.subnets: {subnet:?} is not a subnet (write 192.0.2.0/24 or 2001:db8::/64)")]
    BadSubnet { subnet: String },
    #[error("lan: cannot list links to check params.interfaces: {0}")]
    Netlink(String),
}

/// How a target is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    #[default]
    Icmp,
    Tcp,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawParams {
    #[serde(default)]
    interfaces: Vec<String>,
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    method: Method,
    attempts: Option<u64>,
    timeout_ms: Option<u64>,
    misses_before_down: Option<u64>,
    #[serde(default)]
    subnets: Vec<String>,
}

/// Targets are probed concurrently, one thread each; this bounds the threads.
pub const MAX_TARGETS: usize = 64;
pub const DEFAULT_ATTEMPTS: u32 = 2;
pub const DEFAULT_TIMEOUT_MS: u64 = 500;
pub const DEFAULT_MISSES_BEFORE_DOWN: u32 = 2;

/// What to probe, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// As written in params; the resource segment is derived from it.
    pub text: String,
    pub probe: Probe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Icmp(IpAddr),
    Tcp(SocketAddr),
}

/// Validated params.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanParams {
    /// Empty: every non-loopback link, including links that appear later.
    pub interfaces: Vec<String>,
    pub targets: Vec<Target>,
    pub attempts: u32,
    pub timeout: Duration,
    pub misses_before_down: u32,
    /// Published as `/net/subnets/<subnet>/status`; duplicates dropped.
    pub subnets: Vec<crate::subnets::Subnet>,
}

/// Linux's rule for interface names (`dev_valid_name`).
pub fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

fn parse_target(text: &str, method: Method) -> Result<Target, ParamsError> {
    let bad = || ParamsError::BadTarget {
        target: text.to_owned(),
    };
    let probe = if let Ok(ip) = text.parse::<IpAddr>() {
        match method {
            Method::Icmp => Probe::Icmp(ip),
            Method::Tcp => {
                return Err(ParamsError::TcpNeedsPort {
                    target: text.to_owned(),
                });
            }
        }
    } else {
        let addr = text.parse::<SocketAddr>().map_err(|_| bad())?;
        if addr.port() == 0 {
            return Err(bad());
        }
        Probe::Tcp(addr)
    };
    Ok(Target {
        text: text.to_owned(),
        probe,
    })
}

fn in_range(
    param: &'static str,
    value: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ParamsError> {
    let value = value.unwrap_or(default);
    if value < min || value > max {
        return Err(ParamsError::OutOfRange {
            param,
            value,
            min,
            max,
        });
    }
    Ok(value)
}

impl LanParams {
    /// Parses and validates; `existing` lists the links present now, to
    /// refuse interfaces that do not exist (`None` skips that check).
    pub fn parse(
        params: serde_json::Value,
        existing: Option<&[String]>,
    ) -> Result<Self, ParamsError> {
        let raw: RawParams = if params.is_null() {
            RawParams::default()
        } else {
            serde_json::from_value(params).map_err(|e| ParamsError::Shape(e.to_string()))?
        };
        let mut interfaces: Vec<String> = Vec::new();
        for name in raw.interfaces {
            if !valid_interface_name(&name) {
                return Err(ParamsError::BadInterfaceName { name });
            }
            if interfaces.contains(&name) {
                return Err(ParamsError::DuplicateInterface { name });
            }
            if let Some(existing) = existing
                && !existing.contains(&name)
            {
                return Err(ParamsError::NoSuchInterface {
                    name,
                    known: existing.join(", "),
                });
            }
            interfaces.push(name);
        }
        if raw.targets.len() > MAX_TARGETS {
            return Err(ParamsError::TooManyTargets {
                count: raw.targets.len(),
            });
        }
        let mut targets: Vec<Target> = Vec::new();
        for text in raw.targets {
            let target = parse_target(&text, raw.method)?;
            if targets.iter().any(|t| t.text == text) {
                return Err(ParamsError::DuplicateTarget { target: text });
            }
            targets.push(target);
        }
        let attempts = in_range("attempts", raw.attempts, DEFAULT_ATTEMPTS.into(), 1, 10)?;
        let timeout_ms = in_range("timeout_ms", raw.timeout_ms, DEFAULT_TIMEOUT_MS, 1, 60_000)?;
        let misses = in_range(
            "misses_before_down",
            raw.misses_before_down,
            DEFAULT_MISSES_BEFORE_DOWN.into(),
            1,
            1000,
        )?;
        let mut subnets: Vec<crate::subnets::Subnet> = Vec::new();
        for text in raw.subnets {
            let subnet = crate::subnets::Subnet::parse(&text)
                .ok_or(ParamsError::BadSubnet { subnet: text })?;
            // The host adds the subnets of packages' addresses to the
            // operator's: the same one twice is no mistake.
            if !subnets.contains(&subnet) {
                subnets.push(subnet);
            }
        }
        Ok(LanParams {
            subnets,
            interfaces,
            targets,
            // The ranges above keep these far below u32::MAX.
            attempts: attempts as u32,
            timeout: Duration::from_millis(timeout_ms),
            misses_before_down: misses as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(params: serde_json::Value, expect: Result<(), &str>) {
        let existing = ["lo".to_owned(), "eth0".to_owned()];
        let got = LanParams::parse(params.clone(), Some(&existing));
        match (got, expect) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(want)) => {
                assert!(
                    e.to_string().contains(want),
                    "{params}: {e} does not mention {want:?}"
                )
            }
            (got, want) => panic!("{params}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn params_accepted_and_refused() {
        check(json!({}), Ok(()));
        check(json!(null), Ok(()));
        check(
            json!({"interfaces": ["eth0"], "targets": ["10.0.0.1", "10.0.0.2:22"]}),
            Ok(()),
        );
        check(json!({"targets": ["[fe80::1]:22", "::1"]}), Ok(()));
        check(json!({"targets": ["10.0.0.2:22"], "method": "tcp"}), Ok(()));
        check(json!({"interfaces": 3}), Err("invalid type"));
        check(
            json!({"interface": ["eth0"]}),
            Err("unknown field `interface`"),
        );
        check(
            json!({"interfaces": ["eth0/x"]}),
            Err("\"eth0/x\" is not a valid interface name"),
        );
        check(
            json!({"interfaces": ["a-very-long-interface"]}),
            Err("not a valid interface"),
        );
        check(
            json!({"interfaces": ["eht0"]}),
            Err("\"eht0\" does not exist on this node (links: lo, eth0)"),
        );
        check(json!({"interfaces": ["eth0", "eth0"]}), Err("listed twice"));
        check(
            json!({"targets": ["gateway.example"]}),
            Err("\"gateway.example\" is not an IP address"),
        );
        check(json!({"targets": ["10.0.0.1:0"]}), Err("not an IP address"));
        check(
            json!({"targets": ["10.0.0.1"], "method": "tcp"}),
            Err("needs one"),
        );
        check(json!({"method": "udp"}), Err("unknown variant `udp`"));
        check(
            json!({"subnets": ["10.0.0.0/8", "10.1.0.0/8", "2001:db8::/64"]}),
            Ok(()),
        );
        check(
            json!({"subnets": ["10.0.0.0"]}),
            Err("\"10.0.0.0\" is not a subnet"),
        );
        check(json!({"attempts": 0}), Err("attempts: 0 is outside 1..=10"));
        check(json!({"timeout_ms": 0}), Err("timeout_ms"));
        check(json!({"misses_before_down": 0}), Err("misses_before_down"));
        check(json!({"attempts": -1}), Err("invalid value"));
        let many: Vec<String> = (0..65).map(|i| format!("10.0.0.{i}")).collect();
        check(json!({"targets": many}), Err("65 targets, at most 64"));
    }

    #[test]
    fn defaults() {
        let p = LanParams::parse(json!({"targets": ["10.0.0.1"]}), None).unwrap();
        assert_eq!(p.attempts, DEFAULT_ATTEMPTS);
        assert_eq!(p.timeout, Duration::from_millis(DEFAULT_TIMEOUT_MS));
        assert_eq!(p.misses_before_down, DEFAULT_MISSES_BEFORE_DOWN);
        assert_eq!(p.targets[0].probe, Probe::Icmp("10.0.0.1".parse().unwrap()));
    }
}
