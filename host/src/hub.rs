//! The resource hub: the registry, the criteria tracker, and the broadcast
//! of up/down transitions, fed together so they can never disagree.
//!
//! Every sample the registry records goes through the tracker in the same
//! call, and every transition it yields is sent to every subscriber before
//! the call returns. A subscriber gets the current states and its receiver
//! in one step ([`ResourceHub::subscribe`]), so it can miss nothing between
//! reading the state and listening. Receivers are unbounded: a slow consumer
//! delays nobody and loses nothing.
//!
//! Pure state like the registry: owned by the daemon's main loop, no I/O.

use tokio::sync::mpsc;
use vigil_sdk::ResourceName;

use crate::criteria::{Criteria, ResourceState, Tracker, Transition};
use crate::registry::{Applied, Registry};
use crate::runtime::MonitorEvent;

/// What a new subscriber starts from: every watched (package, resource)
/// pair and its state at the moment of subscribing.
pub type Snapshot = Vec<(String, ResourceName, ResourceState)>;

/// How long a resource that no monitor declares stays pending.
pub const UNDECLARED_PENDING_MS: u64 = 60_000;

#[derive(Debug, Default)]
pub struct ResourceHub {
    pub registry: Registry,
    tracker: Tracker,
    subscribers: Vec<mpsc::UnboundedSender<Transition>>,
    /// Every watched pair, for snapshots.
    watched: Vec<(String, ResourceName)>,
}

impl ResourceHub {
    /// Records a monitor event, judges every recorded sample, and sends the
    /// resulting transitions to all subscribers, in order.
    pub fn apply(&mut self, event: MonitorEvent, now_ms: u64) -> (Applied, Vec<Transition>) {
        let applied = self.registry.apply(event, now_ms);
        let mut transitions = Vec::new();
        for sample in &applied.recorded {
            transitions.extend(self.tracker.observe(sample, now_ms));
        }
        for t in &transitions {
            self.publish(t);
        }
        (applied, transitions)
    }

    fn publish(&mut self, transition: &Transition) {
        self.subscribers
            .retain(|s| s.send(transition.clone()).is_ok());
    }

    /// Starts judging `resource` for `package`; a transition caused by the
    /// latest sample is published like any other.
    pub fn watch(
        &mut self,
        package: &str,
        resource: ResourceName,
        criteria: Criteria,
        rise: u32,
        fall: u32,
        now_ms: u64,
    ) -> Option<Transition> {
        if !self
            .watched
            .iter()
            .any(|(p, r)| p == package && *r == resource)
        {
            self.watched.push((package.to_owned(), resource.clone()));
        }
        let transition = self
            .tracker
            .watch(package, resource, criteria, rise, fall, now_ms);
        if let Some(t) = &transition {
            self.publish(t);
        }
        transition
    }

    /// Judges `resource` afresh for `package` (see [`Tracker::restart`]).
    pub fn restart(&mut self, package: &str, resource: &ResourceName, now_ms: u64) {
        if let Some(t) = self.tracker.restart(package, resource, now_ms) {
            self.publish(&t);
        }
    }

    /// Resources still pending past their deadline become unknown: twice
    /// the interval plus timeout of the monitor that declares them
    /// (DESIGN §3), or [`UNDECLARED_PENDING_MS`] when no monitor does.
    /// The transitions are published like any other and returned.
    pub fn expire_pending(&mut self, now_ms: u64) -> Vec<Transition> {
        let registry = &self.registry;
        let transitions = self.tracker.expire_pending(now_ms, |resource| {
            registry
                .pending_limit_ms(resource)
                .unwrap_or(UNDECLARED_PENDING_MS)
        });
        for t in &transitions {
            self.publish(t);
        }
        transitions
    }

    /// The state of `resource` for `package` and since when (ms since the
    /// epoch), `None` if not watched.
    pub fn state_since(
        &self,
        package: &str,
        resource: &ResourceName,
    ) -> Option<(ResourceState, u64)> {
        self.tracker.state_since(package, resource)
    }

    /// Stops judging every resource of `package`.
    pub fn unwatch_package(&mut self, package: &str) {
        self.tracker.unwatch_package(package);
        self.watched.retain(|(p, _)| p != package);
    }

    pub fn state(&self, package: &str, resource: &ResourceName) -> Option<ResourceState> {
        self.tracker.state(package, resource)
    }

    /// Packages watching `resource`, for `resls`'s `used_by`.
    pub fn used_by(&self, resource: &str) -> Vec<String> {
        ResourceName::new(resource)
            .map(|r| self.tracker.watchers(&r).map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// The current states and a receiver of every later transition.
    pub fn subscribe(&mut self) -> (Snapshot, mpsc::UnboundedReceiver<Transition>) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers.push(tx);
        let snapshot = self
            .watched
            .iter()
            .map(|(p, r)| {
                (
                    p.clone(),
                    r.clone(),
                    self.tracker.state(p, r).unwrap_or(ResourceState::Pending),
                )
            })
            .collect();
        (snapshot, rx)
    }
}

#[cfg(test)]
mod tests {
    use vigil_sdk::{ResourcePattern, Sample};

    use super::*;

    fn name(s: &str) -> ResourceName {
        ResourceName::new(s).unwrap()
    }

    fn hub_with_monitor() -> ResourceHub {
        let mut hub = ResourceHub::default();
        hub.registry.register_monitor("lan", "dylib");
        hub.apply(
            MonitorEvent::Declared {
                monitor: "lan".into(),
                kind: "dylib",
                patterns: vec![ResourcePattern::new("/net/interfaces/*/status").unwrap()],
            },
            0,
        );
        hub
    }

    fn push(hub: &mut ResourceHub, up: bool) -> Vec<Transition> {
        let n = name("/net/interfaces/eth0/status");
        let sample = if up {
            Sample::up(n)
        } else {
            Sample::down(n, "no carrier")
        };
        hub.apply(
            MonitorEvent::Samples {
                monitor: "lan".into(),
                samples: vec![sample],
            },
            1,
        )
        .1
    }

    #[test]
    fn subscribers_miss_no_transition() {
        let mut hub = hub_with_monitor();
        let eth0 = name("/net/interfaces/eth0/status");
        hub.watch("app", eth0.clone(), Criteria::default(), 1, 1, 0);
        push(&mut hub, true);
        let (snapshot, mut rx) = hub.subscribe();
        assert_eq!(
            snapshot,
            vec![("app".to_owned(), eth0.clone(), ResourceState::Up)]
        );
        let mut expected = Vec::new();
        for i in 0..1000 {
            expected.extend(push(&mut hub, i % 2 == 1));
        }
        assert_eq!(
            expected.len(),
            1000,
            "every flip is a transition with rise = fall = 1"
        );
        let mut got = Vec::new();
        while let Ok(t) = rx.try_recv() {
            got.push(t);
        }
        assert_eq!(got, expected);
        assert_eq!(hub.used_by("/net/interfaces/eth0/status"), ["app"]);
    }

    #[test]
    fn monitor_failure_takes_watched_resources_down_to_unknown() {
        let mut hub = hub_with_monitor();
        let eth0 = name("/net/interfaces/eth0/status");
        hub.watch("app", eth0.clone(), Criteria::default(), 1, 1, 0);
        push(&mut hub, true);
        let (_, transitions) = hub.apply(
            MonitorEvent::Failed {
                monitor: "lan".into(),
                reason: "poll timed out".into(),
            },
            2,
        );
        assert_eq!(transitions.len(), 1);
        assert_eq!(transitions[0].to, ResourceState::Unknown);
        assert!(
            transitions[0].detail.contains("poll timed out"),
            "{}",
            transitions[0].detail
        );
        assert_eq!(hub.state("app", &eth0), Some(ResourceState::Unknown));
    }

    #[test]
    fn restart_forgets_old_samples_and_counts_only_new_ones() {
        let mut hub = hub_with_monitor();
        let eth0 = name("/net/interfaces/eth0/status");
        hub.watch("app", eth0.clone(), Criteria::default(), 1, 1, 0);
        push(&mut hub, false);
        assert_eq!(hub.state("app", &eth0), Some(ResourceState::Down));
        let (_, mut rx) = hub.subscribe();
        hub.restart("app", &eth0, 0);
        assert_eq!(hub.state("app", &eth0), Some(ResourceState::Pending));
        assert_eq!(rx.try_recv().unwrap().to, ResourceState::Pending);
        push(&mut hub, true);
        assert_eq!(hub.state("app", &eth0), Some(ResourceState::Up));
        hub.restart("nobody", &eth0, 0);
        assert_eq!(hub.state("app", &eth0), Some(ResourceState::Up));
    }

    #[test]
    fn dropped_subscribers_are_forgotten() {
        let mut hub = hub_with_monitor();
        hub.watch(
            "app",
            name("/net/interfaces/eth0/status"),
            Criteria::default(),
            1,
            1,
            0,
        );
        let (_, rx) = hub.subscribe();
        drop(rx);
        push(&mut hub, true);
        assert!(hub.subscribers.is_empty());
    }
}
