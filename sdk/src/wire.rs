//! JSON form of samples and declarations, shared by the C ABI and the exec
//! protocol so that a sample looks the same whichever way it travels.
//!
//! ```json
//! {"name": "/fs/data/used_percent", "value": 42.5, "unit": "%"}
//! {"name": "/net/interfaces/eth0/status", "value": "down", "reason": "carrier lost"}
//! {"name": "/volume/data/status", "value": null, "reason": "vgs timed out"}
//! ```
//!
//! Unknown fields are ignored so that newer monitors work with older hosts.

use serde::{Deserialize, Serialize};

use crate::resource::{ResourceError, ResourceName, ResourcePattern, Sample, Value, now_ms};

/// A sample as it appears on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireSample {
    pub name: String,
    /// A number, a string, or null (unknown).
    #[serde(default)]
    pub value: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Milliseconds since the epoch; the receiver stamps samples without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<u64>,
}

/// Why a wire sample could not become a [`Sample`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Resource(#[from] ResourceError),
    #[error("sample for {name}: value must be a number, a string or null, got {got}")]
    BadValue { name: String, got: String },
    #[error("invalid JSON: {0}")]
    Json(String),
}

impl From<&Sample> for WireSample {
    fn from(s: &Sample) -> Self {
        let (value, unit) = match &s.value {
            None => (serde_json::Value::Null, None),
            Some(Value::Text(t)) => (serde_json::Value::String(t.clone()), None),
            Some(Value::Number { value, unit }) => (
                serde_json::Number::from_f64(*value)
                    .map(serde_json::Value::Number)
                    .unwrap_or(serde_json::Value::Null),
                unit.clone(),
            ),
        };
        WireSample {
            name: s.name.to_string(),
            value,
            unit,
            reason: s.reason.clone(),
            timestamp_ms: Some(s.timestamp_ms),
        }
    }
}

impl WireSample {
    pub fn into_sample(self) -> Result<Sample, WireError> {
        let name = ResourceName::new(self.name)?;
        let value = match self.value {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(Value::Text(s)),
            serde_json::Value::Number(n) => {
                // as_f64 cannot fail for serde_json numbers without arbitrary precision.
                Some(Value::Number {
                    value: n.as_f64().unwrap_or(f64::NAN),
                    unit: self.unit,
                })
            }
            other => {
                let mut got = other.to_string();
                got.truncate(64);
                return Err(WireError::BadValue {
                    name: name.to_string(),
                    got,
                });
            }
        };
        let reason = match (&value, self.reason) {
            (None, None) => Some("monitor reported no value".to_owned()),
            (_, r) => r,
        };
        let sample = Sample {
            name,
            value,
            reason,
            timestamp_ms: self.timestamp_ms.unwrap_or_else(now_ms),
        };
        sample.validate()?;
        Ok(sample)
    }
}

/// Encodes samples as a JSON array.
pub fn encode_samples(samples: &[Sample]) -> Vec<u8> {
    let wire: Vec<WireSample> = samples.iter().map(WireSample::from).collect();
    // Serializing plain data structs into a Vec cannot fail.
    serde_json::to_vec(&wire).unwrap_or_else(|_| b"[]".to_vec())
}

/// Decodes a JSON array of samples; one bad sample fails the whole batch,
/// since a monitor that talks nonsense cannot be trusted for the rest.
pub fn decode_samples(bytes: &[u8]) -> Result<Vec<Sample>, WireError> {
    let wire: Vec<WireSample> =
        serde_json::from_slice(bytes).map_err(|e| WireError::Json(e.to_string()))?;
    wire.into_iter().map(WireSample::into_sample).collect()
}

/// Encodes a declaration as a JSON array of pattern strings.
pub fn encode_patterns(patterns: &[ResourcePattern]) -> Vec<u8> {
    serde_json::to_vec(patterns).unwrap_or_else(|_| b"[]".to_vec())
}

pub fn decode_patterns(bytes: &[u8]) -> Result<Vec<ResourcePattern>, WireError> {
    let raw: Vec<String> =
        serde_json::from_slice(bytes).map_err(|e| WireError::Json(e.to_string()))?;
    raw.into_iter()
        .map(|p| ResourcePattern::new(p).map_err(WireError::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let n = |s: &str| ResourceName::new(s).unwrap();
        let samples = vec![
            Sample::up(n("/a/b")),
            Sample::down(n("/a/c"), "carrier lost"),
            Sample::number(n("/a/d"), 42.5, Some("%")),
            Sample::unknown(n("/a/e"), "timed out"),
        ];
        assert_eq!(decode_samples(&encode_samples(&samples)).unwrap(), samples);
    }

    #[test]
    fn refuses_nonsense() {
        assert!(decode_samples(b"[{\"name\":\"/a/b\",\"value\":[1]}]").is_err());
        assert!(decode_samples(b"[{\"name\":\"nope\",\"value\":1}]").is_err());
        assert!(decode_samples(b"{}").is_err());
        let unknown = decode_samples(b"[{\"name\":\"/a/b\",\"extra\":1}]").unwrap();
        assert!(!unknown[0].is_known());
        assert!(unknown[0].reason.is_some());
    }
}
