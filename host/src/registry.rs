//! The resource registry: the latest sample of every resource on this node,
//! which monitor owns it, and what each monitor declared.
//!
//! Pure state, driven by the daemon's main loop: [`Registry::apply`] takes a
//! [`MonitorEvent`] and returns every sample it recorded (including the
//! unknowns written when a monitor fails), in order, for the subscribers that
//! judge resources up or down. Nothing is dropped silently: a sample that
//! matches no pattern its monitor declared, or a name another monitor already
//! owns, is refused and the refusal returned.
//!
//! The registry does not judge values (see [`crate::criteria`]) and does no
//! I/O.

use std::collections::BTreeMap;

use vigil_sdk::{ResourceName, ResourcePattern, Sample};

use crate::runtime::MonitorEvent;

/// One resource's latest sample and its owner.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub sample: Sample,
    pub monitor: String,
}

/// How a monitor is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorStatus {
    /// Registered, nothing reported yet.
    Starting,
    Ok,
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct MonitorRecord {
    pub kind: &'static str,
    pub patterns: Vec<ResourcePattern>,
    pub status: MonitorStatus,
    /// When the monitor last reported anything, ms since the epoch.
    pub last_report_ms: Option<u64>,
    pub samples_received: u64,
    /// How long its resources may go without a first sample before they
    /// are unknown rather than pending (twice interval plus timeout).
    pub pending_limit_ms: Option<u64>,
    /// True once the monitor's declaration arrived.
    pub declared: bool,
}

/// What [`Registry::apply`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// Samples recorded, in order.
    pub recorded: Vec<Sample>,
    /// Why some samples were not recorded.
    pub refused: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Registry {
    resources: BTreeMap<ResourceName, Entry>,
    monitors: BTreeMap<String, MonitorRecord>,
    /// Samples a monitor pushed before its declaration reached the registry
    /// (a dylib's event thread can push while its configure call is still
    /// returning): held, then judged against the declaration when it comes.
    early: BTreeMap<String, Vec<Sample>>,
}

/// At most this many early samples are held per monitor; more are refused.
const EARLY_SAMPLES_LIMIT: usize = 10_000;

impl Registry {
    /// Adds (or resets) a monitor before it reports.
    pub fn register_monitor(&mut self, name: &str, kind: &'static str) {
        self.remove_monitor(name);
        self.monitors.insert(
            name.to_owned(),
            MonitorRecord {
                kind,
                patterns: Vec::new(),
                status: MonitorStatus::Starting,
                last_report_ms: None,
                samples_received: 0,
                pending_limit_ms: None,
                declared: false,
            },
        );
    }

    /// Sets how long the monitor's resources stay pending without a first
    /// sample; see [`MonitorRecord::pending_limit_ms`].
    pub fn set_pending_limit(&mut self, name: &str, limit_ms: u64) {
        if let Some(record) = self.monitors.get_mut(name) {
            record.pending_limit_ms = Some(limit_ms);
        }
    }

    /// The pending limit of the monitor that publishes `name`, or else of
    /// the first monitor declaring a pattern that matches it.
    pub fn pending_limit_ms(&self, name: &ResourceName) -> Option<u64> {
        let owner = self.resources.get(name).map(|e| e.monitor.as_str());
        let record = match owner {
            Some(monitor) => self.monitors.get(monitor),
            None => self
                .monitors
                .values()
                .find(|m| m.patterns.iter().any(|p| p.matches(name))),
        };
        record.and_then(|r| r.pending_limit_ms)
    }

    /// Forgets a monitor and its resources.
    pub fn remove_monitor(&mut self, name: &str) {
        self.monitors.remove(name);
        self.early.remove(name);
        self.resources.retain(|_, e| e.monitor != name);
    }

    pub fn monitors(&self) -> &BTreeMap<String, MonitorRecord> {
        &self.monitors
    }

    pub fn get(&self, name: &ResourceName) -> Option<&Entry> {
        self.resources.get(name)
    }

    /// Every resource at or below `path`, in name order.
    pub fn under<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.resources
            .values()
            .filter(move |e| e.sample.name.is_under(path))
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// True when some registered monitor declares a pattern that can match
    /// `name` (used to refuse packages needing resources nobody publishes).
    pub fn is_declared(&self, name: &ResourceName) -> bool {
        self.monitors
            .values()
            .any(|m| m.patterns.iter().any(|p| p.matches(name)))
    }

    /// Records what a monitor reported at `now_ms`.
    pub fn apply(&mut self, event: MonitorEvent, now_ms: u64) -> Applied {
        let mut applied = Applied::default();
        match event {
            MonitorEvent::Declared {
                monitor,
                kind,
                patterns,
            } => {
                let record = self
                    .monitors
                    .entry(monitor.clone())
                    .or_insert(MonitorRecord {
                        kind,
                        patterns: Vec::new(),
                        status: MonitorStatus::Starting,
                        last_report_ms: None,
                        samples_received: 0,
                        pending_limit_ms: None,
                        declared: false,
                    });
                record.patterns = patterns;
                record.declared = true;
                // Resources the monitor no longer declares are gone.
                let record = record.clone();
                self.resources.retain(|name, e| {
                    e.monitor != monitor || record.patterns.iter().any(|p| p.matches(name))
                });
                if let Some(samples) = self.early.remove(&monitor) {
                    return self.apply(MonitorEvent::Samples { monitor, samples }, now_ms);
                }
            }
            MonitorEvent::Samples { monitor, samples } => {
                let Some(record) = self.monitors.get_mut(&monitor) else {
                    applied
                        .refused
                        .push(format!("monitor {monitor:?} is not registered"));
                    return applied;
                };
                if !record.declared {
                    let held = self.early.entry(monitor.clone()).or_default();
                    let room = EARLY_SAMPLES_LIMIT.saturating_sub(held.len());
                    if samples.len() > room {
                        applied.refused.push(format!(
                            "monitor {monitor}: {} samples before its declaration; holding at most {EARLY_SAMPLES_LIMIT}",
                            samples.len() - room
                        ));
                    }
                    held.extend(samples.into_iter().take(room));
                    return applied;
                }
                record.last_report_ms = Some(now_ms);
                record.status = MonitorStatus::Ok;
                for sample in samples {
                    if !record.patterns.iter().any(|p| p.matches(&sample.name)) {
                        applied.refused.push(format!(
                            "monitor {monitor}: sample {} matches none of its declared patterns",
                            sample.name
                        ));
                        continue;
                    }
                    match self.resources.get_mut(&sample.name) {
                        Some(entry) if entry.monitor != monitor => {
                            applied.refused.push(format!(
                                "monitor {monitor}: resource {} is published by monitor {}",
                                sample.name, entry.monitor
                            ));
                            continue;
                        }
                        Some(entry) => entry.sample = sample.clone(),
                        None => {
                            self.resources.insert(
                                sample.name.clone(),
                                Entry {
                                    sample: sample.clone(),
                                    monitor: monitor.clone(),
                                },
                            );
                        }
                    }
                    record.samples_received += 1;
                    applied.recorded.push(sample);
                }
            }
            MonitorEvent::Failed { monitor, reason } => {
                if let Some(record) = self.monitors.get_mut(&monitor) {
                    record.status = MonitorStatus::Failed(reason.clone());
                    record.last_report_ms = Some(now_ms);
                }
                let why = format!("monitor {monitor}: {reason}");
                for entry in self.resources.values_mut().filter(|e| e.monitor == monitor) {
                    let unknown = Sample {
                        name: entry.sample.name.clone(),
                        value: None,
                        reason: Some(why.clone()),
                        timestamp_ms: now_ms,
                    };
                    entry.sample = unknown.clone();
                    applied.recorded.push(unknown);
                }
            }
        }
        applied
    }

    /// Listing for `resls`: resources at or below `path`, exact declared
    /// names not sampled yet, declared wildcard classes, and the immediate
    /// child segments of `path` with their resource counts.
    pub fn listing(&self, path: &str) -> Listing {
        let path = normalize(path);
        let mut resources: Vec<ListedResource> = self
            .under(&path)
            .map(|e| ListedResource {
                entry: e.clone(),
                sampled: true,
            })
            .collect();
        let mut declared = Vec::new();
        for (monitor, record) in &self.monitors {
            for pattern in &record.patterns {
                if !pattern_under(pattern, &path) {
                    continue;
                }
                if pattern.is_exact() {
                    // Exact patterns are valid names.
                    let Ok(name) = ResourceName::new(pattern.as_str()) else {
                        continue;
                    };
                    if !self.resources.contains_key(&name) {
                        let reason = match &record.status {
                            MonitorStatus::Failed(r) => format!("monitor {monitor}: {r}"),
                            _ => "no sample yet".to_owned(),
                        };
                        resources.push(ListedResource {
                            entry: Entry {
                                sample: Sample {
                                    name,
                                    value: None,
                                    reason: Some(reason),
                                    timestamp_ms: 0,
                                },
                                monitor: monitor.clone(),
                            },
                            sampled: false,
                        });
                    }
                } else if !self.resources.keys().any(|n| pattern.matches(n)) {
                    declared.push((pattern.clone(), monitor.clone()));
                }
            }
        }
        resources.sort_by(|a, b| a.entry.sample.name.cmp(&b.entry.sample.name));
        let depth = path.split('/').filter(|s| !s.is_empty()).count();
        let mut classes: BTreeMap<String, usize> = BTreeMap::new();
        for r in &resources {
            let segments: Vec<&str> = r.entry.sample.name.segments().collect();
            if segments.len() > depth + 1 {
                let class = format!("/{}", segments[..=depth].join("/"));
                *classes.entry(class).or_default() += 1;
            }
        }
        Listing {
            path,
            resources,
            declared,
            classes,
        }
    }
}

fn normalize(path: &str) -> String {
    let trimmed = path.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else if trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    }
}

/// True when some name matching `pattern` could lie at or below `path`.
fn pattern_under(pattern: &ResourcePattern, path: &str) -> bool {
    let mut p = pattern.as_str()[1..].split('/');
    for want in path.split('/').filter(|s| !s.is_empty()) {
        match p.next() {
            Some(seg) if seg == "*" || seg == want => {}
            _ => return false,
        }
    }
    true
}

/// A resource in a listing; `sampled` is false for a declared name that has
/// no sample yet.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedResource {
    pub entry: Entry,
    pub sampled: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    pub path: String,
    pub resources: Vec<ListedResource>,
    /// Declared wildcard patterns at or below the path, with their monitor.
    pub declared: Vec<(ResourcePattern, String)>,
    /// Immediate child classes (`/net/interfaces`) and how many resources each holds.
    pub classes: BTreeMap<String, usize>,
}

/// True when some resource name matches both patterns: as many segments,
/// and each pair of segments equal or one of them `*`.
pub fn patterns_overlap(a: &ResourcePattern, b: &ResourcePattern) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (
        a.as_str().split('/').collect(),
        b.as_str().split('/').collect(),
    );
    a.len() == b.len()
        && a.iter()
            .zip(&b)
            .all(|(x, y)| x == y || *x == "*" || *y == "*")
}

/// Two monitors declaring patterns that can name the same resource: only
/// one of them can publish it (the registry refuses the other's samples).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicatePublisher {
    /// The monitor listed first, and its pattern.
    pub first: (String, ResourcePattern),
    /// The monitor listed later, and its pattern.
    pub second: (String, ResourcePattern),
}

/// Every pair of monitors (in the order given) whose declarations overlap,
/// once per pair, with the first overlapping patterns.
pub fn duplicate_publishers<'a>(
    monitors: impl IntoIterator<Item = (&'a str, &'a [ResourcePattern])>,
) -> Vec<DuplicatePublisher> {
    let monitors: Vec<(&str, &[ResourcePattern])> = monitors.into_iter().collect();
    let mut found = Vec::new();
    for (i, (second, later)) in monitors.iter().enumerate() {
        for (first, earlier) in &monitors[..i] {
            if first == second {
                continue;
            }
            let pair = earlier
                .iter()
                .flat_map(|a| later.iter().map(move |b| (a, b)))
                .find(|(a, b)| patterns_overlap(a, b));
            if let Some((a, b)) = pair {
                found.push(DuplicatePublisher {
                    first: ((*first).to_owned(), a.clone()),
                    second: ((*second).to_owned(), b.clone()),
                });
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ResourceName {
        ResourceName::new(s).unwrap()
    }

    #[test]
    fn overlapping_declarations_of_two_monitors_are_duplicate_publishers() {
        let p = |s: &str| ResourcePattern::new(s).unwrap();
        let cases: &[(&str, &str, bool)] = &[
            ("/dup/x", "/dup/x", true),
            ("/fs/*/used_percent", "/fs/data/used_percent", true),
            ("/fs/data/*", "/fs/*/used_percent", true),
            ("/fs/*/used_percent", "/fs/*/status", false),
            ("/fs/*", "/fs/*/status", false),
            ("/a/b", "/a/c", false),
        ];
        for (a, b, overlap) in cases {
            assert_eq!(patterns_overlap(&p(a), &p(b)), *overlap, "{a} {b}");
            assert_eq!(patterns_overlap(&p(b), &p(a)), *overlap, "{b} {a}");
        }
        let (one, two, three) = (
            vec![p("/fs/*/used_percent"), p("/fs/*/status")],
            vec![p("/net/*/status")],
            vec![p("/net/eth0/status"), p("/fs/root/status")],
        );
        let found = duplicate_publishers([
            ("fs", one.as_slice()),
            ("net", two.as_slice()),
            ("custom", three.as_slice()),
        ]);
        let shown: Vec<String> = found
            .iter()
            .map(|d| {
                format!(
                    "{} {} / {} {}",
                    d.first.0, d.first.1, d.second.0, d.second.1
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                "fs /fs/*/status / custom /fs/root/status",
                "net /net/*/status / custom /net/eth0/status"
            ]
        );
    }

    fn declare(r: &mut Registry, monitor: &str, patterns: &[&str]) {
        r.register_monitor(monitor, "dylib");
        r.apply(
            MonitorEvent::Declared {
                monitor: monitor.into(),
                kind: "dylib",
                patterns: patterns
                    .iter()
                    .map(|p| ResourcePattern::new(*p).unwrap())
                    .collect(),
            },
            0,
        );
    }

    fn samples(r: &mut Registry, monitor: &str, samples: Vec<Sample>) -> Applied {
        r.apply(
            MonitorEvent::Samples {
                monitor: monitor.into(),
                samples,
            },
            1,
        )
    }

    /// Every host start logged `sample refused ... matches none of its
    /// declared patterns` for fs, lan, shm and volume: their event threads
    /// pushed before the declaration reached the registry.
    #[test]
    fn samples_pushed_before_the_declaration_are_held_not_refused() {
        let mut r = Registry::default();
        r.register_monitor("fs", "dylib");
        let early = r.apply(
            MonitorEvent::Samples {
                monitor: "fs".into(),
                samples: vec![Sample::up(ResourceName::new("/fs/root/status").unwrap())],
            },
            1,
        );
        assert_eq!(
            early,
            Applied::default(),
            "held: neither recorded nor refused"
        );
        let declared = r.apply(
            MonitorEvent::Declared {
                monitor: "fs".into(),
                kind: "dylib",
                patterns: vec![ResourcePattern::new("/fs/*/status").unwrap()],
            },
            2,
        );
        assert!(declared.refused.is_empty(), "{:?}", declared.refused);
        assert_eq!(declared.recorded.len(), 1);
        assert!(
            r.get(&ResourceName::new("/fs/root/status").unwrap())
                .is_some()
        );
    }

    #[test]
    fn records_declared_samples_and_refuses_others() {
        let mut r = Registry::default();
        declare(&mut r, "lan", &["/net/interfaces/*/status"]);
        declare(&mut r, "other", &["/net/interfaces/*/status", "/x/y"]);
        let applied = samples(
            &mut r,
            "lan",
            vec![
                Sample::up(name("/net/interfaces/eth0/status")),
                Sample::up(name("/fs/a/status")),
            ],
        );
        assert_eq!(applied.recorded.len(), 1);
        assert_eq!(
            applied.refused,
            ["monitor lan: sample /fs/a/status matches none of its declared patterns"]
        );
        let applied = samples(
            &mut r,
            "other",
            vec![Sample::up(name("/net/interfaces/eth0/status"))],
        );
        assert_eq!(
            applied.refused,
            ["monitor other: resource /net/interfaces/eth0/status is published by monitor lan"]
        );
        assert_eq!(
            r.get(&name("/net/interfaces/eth0/status")).unwrap().monitor,
            "lan"
        );
    }

    #[test]
    fn failure_makes_every_resource_of_the_monitor_unknown() {
        let mut r = Registry::default();
        declare(&mut r, "fs", &["/fs/*/status"]);
        declare(&mut r, "lan", &["/net/interfaces/*/status"]);
        samples(
            &mut r,
            "fs",
            vec![
                Sample::up(name("/fs/a/status")),
                Sample::up(name("/fs/b/status")),
            ],
        );
        samples(
            &mut r,
            "lan",
            vec![Sample::up(name("/net/interfaces/eth0/status"))],
        );
        let applied = r.apply(
            MonitorEvent::Failed {
                monitor: "fs".into(),
                reason: "poll timed out".into(),
            },
            9,
        );
        assert_eq!(applied.recorded.len(), 2);
        assert!(applied.recorded.iter().all(|s| !s.is_known()));
        assert_eq!(
            r.get(&name("/fs/a/status"))
                .unwrap()
                .sample
                .reason
                .as_deref(),
            Some("monitor fs: poll timed out")
        );
        assert!(
            r.get(&name("/net/interfaces/eth0/status"))
                .unwrap()
                .sample
                .is_known()
        );
        assert_eq!(
            r.monitors()["fs"].status,
            MonitorStatus::Failed("poll timed out".into())
        );
    }

    #[test]
    fn listing_shows_classes_and_unsampled_declarations() {
        let mut r = Registry::default();
        declare(&mut r, "lan", &["/net/interfaces/*/status"]);
        declare(&mut r, "load", &["/system/load/1min"]);
        samples(
            &mut r,
            "lan",
            vec![Sample::up(name("/net/interfaces/eth0/status"))],
        );
        let top = r.listing("/");
        assert_eq!(
            top.classes.into_iter().collect::<Vec<_>>(),
            [("/net".to_owned(), 1), ("/system".to_owned(), 1)]
        );
        assert_eq!(top.resources.len(), 2);
        assert!(!top.resources[1].sampled);
        assert_eq!(
            top.resources[1].entry.sample.reason.as_deref(),
            Some("no sample yet")
        );
        assert!(
            top.declared.is_empty(),
            "a sampled class is not listed as merely declared"
        );
        declare(&mut r, "fs", &["/fs/*/status"]);
        assert_eq!(r.listing("/").declared.len(), 1);
        let net = r.listing("/net/interfaces/");
        assert_eq!(net.resources.len(), 1);
        assert!(r.listing("/fs").resources.is_empty());
        assert_eq!(r.listing("/fs").declared.len(), 1);
        assert!(r.listing("/volume").declared.is_empty());
        assert!(r.is_declared(&name("/net/interfaces/bond0/status")));
        assert!(!r.is_declared(&name("/net/interfaces/bond0/speed")));
    }
}
