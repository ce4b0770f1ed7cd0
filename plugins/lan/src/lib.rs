//! vigil-lan: the bundled `lan` monitor.
//!
//! Publishes `/net/interfaces/<if>/status` (`up`/`down`) and, for each
//! configured target, `/net/reach/<target>/status` and `/net/reach/<target>/rtt_ms`,
//! and for each subnet of `params.subnets` (the host adds those of packages'
//! `[[ip]]` addresses) `/net/subnets/<subnet>/status`, read on polls.
//! Link state is pushed from rtnetlink events the moment the kernel reports
//! a change, and also read on every poll; reachability is probed on polls
//! only (ICMP echo, or TCP connect for targets with a port).
//!
//! It watches the network namespace of the thread that configures and starts
//! it. It does not bring links up, pick routes or resolve host names.
//! Params and their defaults are documented in `docs/monitors/lan.md`.

pub mod links;
pub mod netlink;
pub mod params;
pub mod reach;
pub mod subnets;

use std::time::{Duration, Instant};

use vigil_sdk::{
    Monitor, MonitorError, ResourceName, ResourcePattern, Sample, SampleSink, encode_segment,
};

use vigil_sdk::events::EventThread;

use crate::links::Selection;
use crate::params::{LanParams, Target};
use crate::reach::{Hysteresis, Verdict};

/// Time kept back from the poll deadline for joining probe threads and
/// handing samples to the host.
const POLL_MARGIN: Duration = Duration::from_millis(30);

/// The `lan` monitor.
#[derive(Debug)]
pub struct LanMonitor {
    params: LanParams,
    selection: Selection,
    hysteresis: Hysteresis,
    events: Option<EventThread>,
}

fn reach_name(target: &Target, leaf: &str) -> ResourceName {
    // encode_segment always yields a valid segment.
    ResourceName::new(format!(
        "/net/reach/{}/{leaf}",
        encode_segment(&target.text)
    ))
    .expect("encoded targets form valid resource names")
}

impl LanMonitor {
    fn reach_samples(&mut self, deadline: Instant) -> Vec<Sample> {
        if self.params.targets.is_empty() {
            return Vec::new();
        }
        let probe_deadline = deadline.checked_sub(POLL_MARGIN).unwrap_or(deadline);
        let outcomes = reach::probe_all(
            &self.params.targets,
            self.params.attempts,
            self.params.timeout,
            probe_deadline,
        );
        let mut samples = Vec::with_capacity(2 * outcomes.len());
        for (target, outcome) in self.params.targets.iter().zip(&outcomes) {
            let status = reach_name(target, "status");
            let rtt = reach_name(target, "rtt_ms");
            match self
                .hysteresis
                .judge(&target.text, outcome, self.params.misses_before_down)
            {
                Verdict::Up {
                    rtt: Some(d),
                    reason,
                } => {
                    let mut up = Sample::up(status);
                    up.reason = reason;
                    samples.push(up);
                    samples.push(Sample::number(rtt, d.as_secs_f64() * 1000.0, Some("ms")));
                }
                Verdict::Up { rtt: None, reason } => {
                    let reason = reason.unwrap_or_else(|| "no reply".into());
                    samples.push(Sample::up(status).with_reason(reason.clone()));
                    samples.push(Sample::unknown(rtt, reason));
                }
                Verdict::Down { reason } => {
                    samples.push(Sample::down(status, reason.clone()));
                    samples.push(Sample::unknown(rtt, reason));
                }
                Verdict::Unknown { reason } => {
                    samples.push(Sample::unknown(status, reason.clone()));
                    samples.push(Sample::unknown(rtt, reason));
                }
            }
        }
        samples
    }
}

impl Monitor for LanMonitor {
    fn configure(params: serde_json::Value) -> Result<Self, MonitorError> {
        let names_interfaces = params
            .get("interfaces")
            .and_then(|v| v.as_array())
            .is_some_and(|a| !a.is_empty());
        // Only list links when there are names to check against them.
        let existing = if names_interfaces {
            let links =
                netlink::dump_links(Instant::now() + Duration::from_secs(2)).map_err(|e| {
                    MonitorError::new(params::ParamsError::Netlink(e.to_string()).to_string())
                })?;
            Some(links.into_iter().map(|l| l.name).collect::<Vec<_>>())
        } else {
            None
        };
        let params = LanParams::parse(params, existing.as_deref())
            .map_err(|e| MonitorError::new(e.to_string()))?;
        let selection = if params.interfaces.is_empty() {
            Selection::All
        } else {
            Selection::Named(params.interfaces.clone())
        };
        Ok(Self {
            params,
            selection,
            hysteresis: Hysteresis::default(),
            events: None,
        })
    }

    fn declare(&self) -> Vec<ResourcePattern> {
        let mut patterns = self.selection.declare();
        patterns.extend(self.params.subnets.iter().map(subnets::Subnet::pattern));
        for target in &self.params.targets {
            for leaf in ["status", "rtt_ms"] {
                // A valid resource name is a valid pattern.
                let name = reach_name(target, leaf);
                patterns.push(ResourcePattern::new(name.as_str()).expect("names are patterns"));
            }
        }
        patterns
    }

    fn poll(&mut self, deadline: Instant) -> Result<Vec<Sample>, MonitorError> {
        let links = netlink::dump_links(deadline);
        let mut samples = match &links {
            Ok(links) => self.selection.samples(links),
            Err(e) => match &self.selection {
                Selection::Named(names) => names
                    .iter()
                    .map(|n| {
                        Sample::unknown(links::status_name(n), format!("cannot read links: {e}"))
                    })
                    .collect(),
                Selection::All => return Err(MonitorError::new(format!("cannot read links: {e}"))),
            },
        };
        if !self.params.subnets.is_empty() {
            let addresses = netlink::dump_addresses(deadline);
            for subnet in &self.params.subnets {
                samples.push(match (&links, &addresses) {
                    (Ok(l), Ok(a)) => subnet.sample(l, a),
                    (Err(e), _) | (_, Err(e)) => Sample::unknown(
                        subnet.status_name(),
                        format!("cannot read links and addresses: {e}"),
                    ),
                });
            }
        }
        samples.extend(self.reach_samples(deadline));
        Ok(samples)
    }

    fn start(&mut self, sink: SampleSink) -> Result<(), MonitorError> {
        self.stop();
        self.events = Some(links::start_events(self.selection.clone(), sink)?);
        Ok(())
    }

    fn stop(&mut self) {
        // Dropping the event thread (here or with the monitor) stops and
        // joins it.
        if let Some(events) = self.events.take() {
            events.stop();
        }
    }
}

vigil_sdk::export_monitor!(LanMonitor);
