//! Which links the monitor watches, how a link becomes a sample, and the
//! event thread that pushes link changes as they happen.
//!
//! The thread (the SDK's [`EventThread`]) blocks in `poll(2)` on the
//! rtnetlink socket and its stop signal; it does no periodic work, so a link
//! change reaches the sink within the time it takes the kernel to send one
//! message. It pushes only changes (the
//! kernel also sends `RTM_NEWLINK` for MTU, statistics and other updates).
//! After a socket overrun (`ENOBUFS`) it re-reads every link instead of
//! guessing what it missed.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use vigil_sdk::events::{EventThread, StopSignal, Watch};
use vigil_sdk::{ResourceName, ResourcePattern, Sample, SampleSink, encode_segment};

use crate::netlink::{self, Link, LinkEvent, LinkStatus};

/// Reason given for a watched link that is not there.
pub const MISSING: &str = "interface missing";

/// The links the monitor publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every non-loopback link, including links that appear later.
    All,
    /// Exactly these names (loopback too, when named).
    Named(Vec<String>),
}

impl Selection {
    pub fn wants(&self, link: &Link) -> bool {
        match self {
            Selection::All => !link.is_loopback(),
            Selection::Named(names) => names.contains(&link.name),
        }
    }

    pub fn declare(&self) -> Vec<ResourcePattern> {
        let pattern = |seg: &str| format!("/net/interfaces/{seg}/status");
        let patterns: Vec<String> = match self {
            Selection::All => vec![pattern("*")],
            Selection::Named(names) => names.iter().map(|n| pattern(&encode_segment(n))).collect(),
        };
        patterns
            .into_iter()
            // Segments come from encode_segment or are `*`, so the pattern is valid.
            .map(|p| ResourcePattern::new(p).expect("encoded segments form valid patterns"))
            .collect()
    }

    /// Samples for the links present now, plus `interface missing` for named
    /// links that are absent.
    pub fn samples(&self, links: &[Link]) -> Vec<Sample> {
        let mut samples: Vec<Sample> = links
            .iter()
            .filter(|l| self.wants(l))
            .map(|l| link_sample(&l.name, l.status()))
            .collect();
        if let Selection::Named(names) = self {
            for name in names {
                if !links.iter().any(|l| &l.name == name) {
                    samples.push(link_sample(name, LinkStatus::Down(MISSING)));
                }
            }
        }
        samples
    }
}

pub fn status_name(interface: &str) -> ResourceName {
    // encode_segment always yields a valid segment, and the fixed parts are valid.
    ResourceName::new(format!(
        "/net/interfaces/{}/status",
        encode_segment(interface)
    ))
    .expect("encoded interface names form valid resource names")
}

pub fn link_sample(interface: &str, status: LinkStatus) -> Sample {
    let name = status_name(interface);
    match status {
        LinkStatus::Up => Sample::up(name),
        LinkStatus::Down(reason) => Sample::down(name, reason),
    }
}

/// Turns a stream of link events into the samples worth pushing.
#[derive(Debug)]
pub struct Tracker {
    selection: Selection,
    /// Last status pushed per interface name.
    pushed: HashMap<String, LinkStatus>,
    /// Interface name per ifindex, to notice renames.
    names: HashMap<i32, String>,
}

impl Tracker {
    pub fn new(selection: Selection) -> Self {
        Self {
            selection,
            pushed: HashMap::new(),
            names: HashMap::new(),
        }
    }

    fn set(&mut self, name: &str, status: LinkStatus, out: &mut Vec<Sample>) {
        if self.pushed.get(name) != Some(&status) {
            self.pushed.insert(name.to_owned(), status.clone());
            out.push(link_sample(name, status));
        }
    }

    fn gone(&mut self, name: &str, out: &mut Vec<Sample>) {
        let watched = match &self.selection {
            Selection::All => self.pushed.contains_key(name),
            Selection::Named(names) => names.iter().any(|n| n == name),
        };
        if watched {
            self.set(name, LinkStatus::Down(MISSING), out);
        }
        if self.selection == Selection::All {
            // A link that is gone is reported once, then forgotten, so that
            // container veths coming and going do not pile up.
            self.pushed.remove(name);
        }
    }

    /// Samples for the changes `event` makes.
    pub fn event(&mut self, event: LinkEvent) -> Vec<Sample> {
        let mut out = Vec::new();
        match event {
            LinkEvent::New(link) => {
                if let Some(old) = self.names.insert(link.index, link.name.clone())
                    && old != link.name
                {
                    self.gone(&old, &mut out);
                }
                if self.selection.wants(&link) {
                    self.set(&link.name, link.status(), &mut out);
                }
            }
            LinkEvent::Deleted(link) => {
                self.names.remove(&link.index);
                self.gone(&link.name, &mut out);
            }
        }
        out
    }

    /// Samples that bring the pushed state in line with a full dump.
    pub fn resync(&mut self, links: Vec<Link>) -> Vec<Sample> {
        let mut out = Vec::new();
        let present: Vec<String> = links.iter().map(|l| l.name.clone()).collect();
        self.names = links.iter().map(|l| (l.index, l.name.clone())).collect();
        for link in links {
            if self.selection.wants(&link) {
                self.set(&link.name, link.status(), &mut out);
            }
        }
        let missing: Vec<String> = match &self.selection {
            Selection::All => self
                .pushed
                .keys()
                .filter(|n| !present.contains(n))
                .cloned()
                .collect(),
            Selection::Named(names) => names
                .iter()
                .filter(|n| !present.contains(n))
                .cloned()
                .collect(),
        };
        for name in missing {
            self.gone(&name, &mut out);
        }
        out
    }
}

/// Bound on a full link dump inside the event thread, which cannot see the
/// wake-up while it waits for the dump; keeps `stop` prompt.
const RESYNC_DEADLINE: Duration = Duration::from_secs(1);

/// How long the thread waits before re-opening a failed netlink socket.
const RETRY: Duration = Duration::from_secs(1);

/// Subscribes in the caller's network namespace (so an error is reported to
/// the caller), then watches on a new thread, which inherits that namespace.
/// Stopping or dropping the returned thread joins it; it never pushes after
/// that returns.
pub fn start_events(selection: Selection, sink: SampleSink) -> Result<EventThread, String> {
    let socket = netlink::subscribe().map_err(|e| format!("cannot watch link events: {e}"))?;
    EventThread::spawn("vigil-lan-links", move |stop: &StopSignal| {
        watch(selection, socket, stop, &sink);
    })
    .map_err(|e| format!("cannot start the link event thread: {e}"))
}

fn watch(selection: Selection, socket: OwnedFd, stop: &StopSignal, sink: &SampleSink) {
    let mut tracker = Tracker::new(selection.clone());
    let mut socket = Some(socket);
    loop {
        let result = match socket.take() {
            Some(fd) => session(&mut tracker, fd, stop, sink),
            None => netlink::subscribe()
                .map_err(|e| e.to_string())
                .and_then(|fd| session(&mut tracker, fd, stop, sink)),
        };
        let reason = match result {
            Ok(()) => return,
            Err(reason) => reason,
        };
        // The watcher cannot see links now: say so rather than let stale
        // "up"s stand, then try again.
        let unknown: Vec<Sample> = tracker
            .pushed
            .keys()
            .map(|name| Sample::unknown(status_name(name), format!("link events lost: {reason}")))
            .collect();
        tracker.pushed.clear();
        sink.push(&unknown);
        if stop.sleep(RETRY) {
            return;
        }
    }
}

/// Watches until stopped (`Ok`) or the socket fails (`Err`).
fn session(
    tracker: &mut Tracker,
    socket: OwnedFd,
    stop: &StopSignal,
    sink: &SampleSink,
) -> Result<(), String> {
    let resync = |tracker: &mut Tracker| -> Result<(), String> {
        let links =
            netlink::dump_links(Instant::now() + RESYNC_DEADLINE).map_err(|e| e.to_string())?;
        sink.push(&tracker.resync(links));
        Ok(())
    };
    resync(tracker)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stop.wait(&[Watch::readable(socket.as_fd())], None) {
            Ok(None) => return Ok(()),
            Ok(Some(_)) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        loop {
            match netlink::recv(&socket, &mut buf) {
                Ok(None) => break,
                Ok(Some(n)) => {
                    let mut samples = Vec::new();
                    for event in netlink::parse(&buf[..n]).events {
                        samples.extend(tracker.event(event));
                    }
                    sink.push(&samples);
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    resync(tracker)?;
                }
                Err(e) => return Err(format!("netlink recv: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: i32, name: &str, flags: u32) -> Link {
        Link {
            index,
            name: name.into(),
            flags,
            operstate: None,
            carrier: None,
        }
    }

    const UP: u32 = 0x1 | 0x1_0000;
    const LOOPBACK: u32 = 0x8;

    fn described(samples: &[Sample]) -> Vec<String> {
        samples
            .iter()
            .map(|s| {
                let value = s.value.as_ref().map_or("unknown".into(), |v| v.to_string());
                match &s.reason {
                    Some(r) => format!("{} {value} ({r})", s.name),
                    None => format!("{} {value}", s.name),
                }
            })
            .collect()
    }

    #[test]
    fn tracker_pushes_changes_renames_and_deletions() {
        let mut t = Tracker::new(Selection::All);
        let got = t.resync(vec![link(1, "lo", UP | LOOPBACK), link(2, "eth0", UP)]);
        assert_eq!(described(&got), ["/net/interfaces/eth0/status up"]);
        assert!(
            t.event(LinkEvent::New(link(2, "eth0", UP))).is_empty(),
            "no change, no push"
        );
        let got = t.event(LinkEvent::New(link(2, "eth0", 0x1)));
        assert_eq!(
            described(&got),
            ["/net/interfaces/eth0/status down (no carrier)"]
        );
        let got = t.event(LinkEvent::New(link(2, "wan 0", UP)));
        assert_eq!(
            described(&got),
            [
                "/net/interfaces/eth0/status down (interface missing)",
                "/net/interfaces/wan_200/status up"
            ]
        );
        let got = t.event(LinkEvent::Deleted(link(2, "wan 0", UP)));
        assert_eq!(
            described(&got),
            ["/net/interfaces/wan_200/status down (interface missing)"]
        );
        let got = t.event(LinkEvent::New(link(3, "eth1", 0)));
        assert_eq!(
            described(&got),
            ["/net/interfaces/eth1/status down (administratively down)"]
        );
    }

    #[test]
    fn named_selection_reports_missing_links() {
        let mut t = Tracker::new(Selection::Named(vec!["lo".into(), "eth9".into()]));
        let got = t.resync(vec![link(1, "lo", UP | LOOPBACK), link(2, "eth0", UP)]);
        assert_eq!(
            described(&got),
            [
                "/net/interfaces/lo/status up",
                "/net/interfaces/eth9/status down (interface missing)"
            ]
        );
        assert!(
            t.event(LinkEvent::New(link(2, "eth0", 0))).is_empty(),
            "eth0 is not watched"
        );
        let got = t.event(LinkEvent::New(link(4, "eth9", UP)));
        assert_eq!(described(&got), ["/net/interfaces/eth9/status up"]);
        let sel = Selection::Named(vec!["eth9".into()]);
        assert_eq!(
            described(&sel.samples(&[])),
            ["/net/interfaces/eth9/status down (interface missing)"]
        );
    }
}
