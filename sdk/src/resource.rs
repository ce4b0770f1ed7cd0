//! The resource model: names, patterns, values and samples.
//!
//! A resource is a slash path (`/net/interfaces/eth0/status`) whose latest
//! reading on a node is a [`Sample`]. This module only describes and validates
//! data; it does not know how samples travel (see [`crate::abi`] and
//! [`crate::proto`]) or how they are judged up or down (that is the host's
//! criteria engine).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Longest resource name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Longest text value or reason accepted, in bytes.
pub const MAX_TEXT_LEN: usize = 1024;

/// Why a name, pattern or sample was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("resource name {name:?} must start with '/'")]
    NoLeadingSlash { name: String },
    #[error("resource name {name:?} has an empty segment")]
    EmptySegment { name: String },
    #[error("resource name {name:?} has a character {ch:?} outside [A-Za-z0-9._:@+-]")]
    BadChar { name: String, ch: char },
    #[error("resource name {name:?} is longer than {MAX_NAME_LEN} bytes")]
    TooLong { name: String },
    #[error("resource name {name:?} needs at least two segments")]
    TooShort { name: String },
    #[error("sample for {name}: number is not finite")]
    NotFinite { name: String },
    #[error("sample for {name}: text longer than {MAX_TEXT_LEN} bytes")]
    TextTooLong { name: String },
}

fn segment_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '+' | '-')
}

fn check_path(name: &str, allow_wildcard: bool) -> Result<(), ResourceError> {
    let err_name = || name.to_owned();
    if name.len() > MAX_NAME_LEN {
        return Err(ResourceError::TooLong { name: err_name() });
    }
    let Some(rest) = name.strip_prefix('/') else {
        return Err(ResourceError::NoLeadingSlash { name: err_name() });
    };
    let mut count = 0;
    for segment in rest.split('/') {
        count += 1;
        if segment.is_empty() {
            return Err(ResourceError::EmptySegment { name: err_name() });
        }
        if allow_wildcard && segment == "*" {
            continue;
        }
        if let Some(ch) = segment.chars().find(|c| !segment_char_ok(*c)) {
            return Err(ResourceError::BadChar {
                name: err_name(),
                ch,
            });
        }
    }
    if count < 2 {
        return Err(ResourceError::TooShort { name: err_name() });
    }
    Ok(())
}

/// A validated resource name such as `/fs/data/used_percent`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResourceName(String);

impl ResourceName {
    pub fn new(name: impl Into<String>) -> Result<Self, ResourceError> {
        let name = name.into();
        check_path(&name, false)?;
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Segments without the leading slash: `/a/b` yields `a`, `b`.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0[1..].split('/')
    }

    /// True when `self` equals `prefix` or lies below it (`/fs` covers `/fs/data/status`).
    pub fn is_under(&self, prefix: &str) -> bool {
        let prefix = prefix.trim_end_matches('/');
        prefix.is_empty()
            || self.0 == prefix
            || (self.0.starts_with(prefix) && self.0.as_bytes().get(prefix.len()) == Some(&b'/'))
    }
}

impl TryFrom<String> for ResourceName {
    type Error = ResourceError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<ResourceName> for String {
    fn from(value: ResourceName) -> Self {
        value.0
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Turns arbitrary text (an interface name, a mount path) into one valid
/// name segment. Characters outside the allowed set become `_xx` hex escapes
/// and `_` itself is escaped, so two different inputs never share a segment.
pub fn encode_segment(raw: &str) -> String {
    if raw.is_empty() {
        return "_".to_owned();
    }
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        let c = b as char;
        if b.is_ascii() && segment_char_ok(c) && c != '_' {
            out.push(c);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// A declared class of resources: a name whose segments may be `*` (exactly
/// one segment), such as `/net/interfaces/*/status`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResourcePattern(String);

impl ResourcePattern {
    pub fn new(pattern: impl Into<String>) -> Result<Self, ResourceError> {
        let pattern = pattern.into();
        check_path(&pattern, true)?;
        Ok(Self(pattern))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, name: &ResourceName) -> bool {
        let mut pattern = self.0[1..].split('/');
        let mut segments = name.segments();
        loop {
            match (pattern.next(), segments.next()) {
                (None, None) => return true,
                (Some(p), Some(s)) if p == "*" || p == s => {}
                _ => return false,
            }
        }
    }

    /// True when the pattern has no wildcard, i.e. names exactly one resource.
    pub fn is_exact(&self) -> bool {
        !self.0.split('/').any(|s| s == "*")
    }
}

impl TryFrom<String> for ResourcePattern {
    type Error = ResourceError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<ResourcePattern> for String {
    fn from(value: ResourcePattern) -> Self {
        value.0
    }
}

impl fmt::Display for ResourcePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A reading: a number with an optional unit, or a word/text (`up`, `down`,
/// `degraded`, `yes`, a version string).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number { value: f64, unit: Option<String> },
    Text(String),
}

impl Value {
    pub fn number(value: f64, unit: Option<&str>) -> Self {
        Value::Number {
            value,
            unit: unit.map(str::to_owned),
        }
    }

    pub fn text(text: impl Into<String>) -> Self {
        Value::Text(text.into())
    }

    pub fn as_number(&self) -> Option<f64> {
        match self {
            Value::Number { value, .. } => Some(*value),
            Value::Text(_) => None,
        }
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            Value::Number { .. } => None,
        }
    }

    pub fn unit(&self) -> Option<&str> {
        match self {
            Value::Number { unit, .. } => unit.as_deref(),
            Value::Text(_) => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number {
                value,
                unit: Some(u),
            } => write!(f, "{value}{u}"),
            Value::Number { value, unit: None } => write!(f, "{value}"),
            Value::Text(t) => f.write_str(t),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The latest reading of one resource. `value: None` means unknown: the
/// monitor could not tell (it failed, timed out, or the thing it reads is
/// gone), and `reason` says why. Unknown is never treated as up.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: ResourceName,
    pub value: Option<Value>,
    /// Why the value is what it is (`carrier lost`), or why it is unknown.
    pub reason: Option<String>,
    pub timestamp_ms: u64,
}

impl Sample {
    pub fn new(name: ResourceName, value: Value) -> Self {
        Self {
            name,
            value: Some(value),
            reason: None,
            timestamp_ms: now_ms(),
        }
    }

    /// A status word `up`.
    pub fn up(name: ResourceName) -> Self {
        Self::new(name, Value::text("up"))
    }

    /// A status word `down`, with why.
    pub fn down(name: ResourceName, reason: impl Into<String>) -> Self {
        Self::new(name, Value::text("down")).with_reason(reason)
    }

    pub fn number(name: ResourceName, value: f64, unit: Option<&str>) -> Self {
        Self::new(name, Value::number(value, unit))
    }

    pub fn text(name: ResourceName, text: impl Into<String>) -> Self {
        Self::new(name, Value::text(text))
    }

    pub fn unknown(name: ResourceName, reason: impl Into<String>) -> Self {
        Self {
            name,
            value: None,
            reason: Some(reason.into()),
            timestamp_ms: now_ms(),
        }
    }

    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn is_known(&self) -> bool {
        self.value.is_some()
    }

    /// Checks what the type cannot: finite numbers, bounded text.
    pub fn validate(&self) -> Result<(), ResourceError> {
        let name = || self.name.to_string();
        match &self.value {
            Some(Value::Number { value, .. }) if !value.is_finite() => {
                return Err(ResourceError::NotFinite { name: name() });
            }
            Some(Value::Text(t)) if t.len() > MAX_TEXT_LEN => {
                return Err(ResourceError::TextTooLong { name: name() });
            }
            Some(Value::Number { unit: Some(u), .. }) if u.len() > MAX_TEXT_LEN => {
                return Err(ResourceError::TextTooLong { name: name() });
            }
            _ => {}
        }
        if self.reason.as_ref().is_some_and(|r| r.len() > MAX_TEXT_LEN) {
            return Err(ResourceError::TextTooLong { name: name() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_name(input: &str, ok: bool) {
        assert_eq!(ResourceName::new(input).is_ok(), ok, "{input}");
    }

    #[test]
    fn names() {
        check_name("/net/interfaces/eth0/status", true);
        check_name("/shm/sysv/0x00004a20/present", true);
        check_name("/system/load/1min", true);
        check_name("net/x", false);
        check_name("/net//x", false);
        check_name("/net/x/", false);
        check_name("/net", false);
        check_name("/net/a b", false);
        check_name("/net/*/status", false);
        check_name(&format!("/a/{}", "x".repeat(300)), false);
    }

    #[test]
    fn patterns_match_one_segment_per_star() {
        let p = ResourcePattern::new("/net/interfaces/*/status").unwrap();
        let n = |s: &str| ResourceName::new(s).unwrap();
        assert!(p.matches(&n("/net/interfaces/eth0/status")));
        assert!(!p.matches(&n("/net/interfaces/eth0/x/status")));
        assert!(!p.matches(&n("/net/interfaces/status")));
        assert!(!p.is_exact());
        assert!(ResourcePattern::new("/a/b").unwrap().is_exact());
    }

    #[test]
    fn encoded_segments_never_collide() {
        assert_eq!(encode_segment("eth0"), "eth0");
        assert_eq!(encode_segment("/srv/data"), "_2fsrv_2fdata");
        assert_ne!(encode_segment("/a_b"), encode_segment("/a/b"));
        assert_ne!(encode_segment("a_2fb"), encode_segment("a/b"));
        assert!(
            ResourceName::new(format!("/fs/{}/status", encode_segment("/mnt/my disk"))).is_ok()
        );
    }

    #[test]
    fn is_under() {
        let n = ResourceName::new("/fs/data/status").unwrap();
        assert!(n.is_under("/fs"));
        assert!(n.is_under("/fs/"));
        assert!(n.is_under("/"));
        assert!(!n.is_under("/f"));
        assert!(n.is_under("/fs/data/status"));
    }
}
