//! Example dylib monitor written against the vigil SDK: is a file there,
//! and how many seconds since it was last modified? A heartbeat file that an
//! application touches is a classic liveness check.
//!
//! ```toml
//! name = "heartbeat"
//! type = "dylib"
//! plugin = "vigil_example_file"
//! interval_seconds = 5
//! [params.files]
//! app = "/var/run/app/heartbeat"
//! ```
//!
//! Publishes `/example/file/<alias>/present` (`yes`/`no`) and
//! `/example/file/<alias>/age_seconds`. Poll-only: it does not push events.
//! See docs/sdk.md for a walk-through.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use serde::Deserialize;
use vigil_sdk::{Monitor, MonitorError, ResourceName, ResourcePattern, Sample};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// alias → path
    files: BTreeMap<String, PathBuf>,
}

struct Watched {
    path: PathBuf,
    present: ResourceName,
    age: ResourceName,
}

pub struct FileMonitor {
    files: Vec<Watched>,
}

impl Monitor for FileMonitor {
    fn configure(params: serde_json::Value) -> Result<Self, MonitorError> {
        let params: Params = serde_json::from_value(params).map_err(|e| format!("params: {e}"))?;
        if params.files.is_empty() {
            return Err("params: files must name at least one file".into());
        }
        let mut files = Vec::new();
        for (alias, path) in params.files {
            if !path.is_absolute() {
                return Err(format!(
                    "params: files.{alias}: {} is not an absolute path",
                    path.display()
                )
                .into());
            }
            let name = |leaf: &str| {
                ResourceName::new(format!("/example/file/{alias}/{leaf}"))
                    .map_err(|e| MonitorError::new(format!("params: files.{alias}: {e}")))
            };
            files.push(Watched {
                present: name("present")?,
                age: name("age_seconds")?,
                path,
            });
        }
        Ok(Self { files })
    }

    fn declare(&self) -> Vec<ResourcePattern> {
        ["/example/file/*/present", "/example/file/*/age_seconds"]
            .into_iter()
            .map(|p| ResourcePattern::new(p).expect("static patterns are valid"))
            .collect()
    }

    fn poll(&mut self, _deadline: Instant) -> Result<Vec<Sample>, MonitorError> {
        let mut samples = Vec::new();
        for file in &self.files {
            match std::fs::metadata(&file.path) {
                Ok(meta) => {
                    samples.push(Sample::text(file.present.clone(), "yes"));
                    let age = meta
                        .modified()
                        .ok()
                        .and_then(|m| SystemTime::now().duration_since(m).ok())
                        .map_or(0.0, |d| d.as_secs_f64());
                    samples.push(Sample::number(file.age.clone(), age, Some("s")));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    samples.push(Sample::text(file.present.clone(), "no"));
                    samples.push(Sample::unknown(file.age.clone(), "file is missing"));
                }
                Err(e) => {
                    let why = format!("{}: {e}", file.path.display());
                    samples.push(Sample::unknown(file.present.clone(), why.clone()));
                    samples.push(Sample::unknown(file.age.clone(), why));
                }
            }
        }
        Ok(samples)
    }
}

vigil_sdk::export_monitor!(FileMonitor);

#[cfg(test)]
mod tests {
    use serde_json::json;
    use vigil_sdk::testing::Conformance;

    use super::*;

    #[test]
    fn conformance_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let there = dir.path().join("beat");
        std::fs::write(&there, "x").unwrap();
        let params = json!({"files": {"beat": there, "gone": dir.path().join("nope")}});
        let run = Conformance::new(params)
            .bad_params(json!({"files": {}}))
            .bad_params(json!({"files": {"rel": "relative/path"}}))
            .bad_params(json!({"files": {"bad alias": "/x"}}));
        for report in [run.check::<FileMonitor>(), run.check_abi(vigil_vtable())] {
            let get = |n: &str| report.polled.iter().find(|s| s.name.as_str() == n).unwrap();
            assert_eq!(
                get("/example/file/beat/present").value,
                Some(vigil_sdk::Value::text("yes"))
            );
            assert!(
                get("/example/file/beat/age_seconds")
                    .value
                    .as_ref()
                    .unwrap()
                    .as_number()
                    .unwrap()
                    < 60.0
            );
            assert_eq!(
                get("/example/file/gone/present").value,
                Some(vigil_sdk::Value::text("no"))
            );
            assert!(!get("/example/file/gone/age_seconds").is_known());
        }
    }
}
