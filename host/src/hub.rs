//! The resource hub: the registry and the criteria tracker, fed together so
//! they can never disagree.
//!
//! Every sample the registry records goes through the tracker in the same
//! call, which returns every transition it caused, in order; the daemon's
//! main loop hands them to the package manager before it reads the next
//! event, so none is lost or reordered.
//!
//! Pure state like the registry: owned by the daemon's main loop, no I/O.

use vigil_sdk::ResourceName;

use crate::criteria::{Criteria, ResourceState, Tracker, Transition};
use crate::registry::{Applied, Registry};
use crate::runtime::MonitorEvent;

/// How long a resource that no monitor declares stays pending.
pub const UNDECLARED_PENDING_MS: u64 = 60_000;

#[derive(Debug, Default)]
pub struct ResourceHub {
    pub registry: Registry,
    tracker: Tracker,
}

impl ResourceHub {
    /// Records a monitor event, judges every recorded sample, and returns
    /// the resulting transitions, in order.
    pub fn apply(&mut self, event: MonitorEvent, now_ms: u64) -> (Applied, Vec<Transition>) {
        let applied = self.registry.apply(event, now_ms);
        let mut transitions = Vec::new();
        for sample in &applied.recorded {
            transitions.extend(self.tracker.observe(sample, now_ms));
        }
        (applied, transitions)
    }

    /// Starts judging `resource` for `package`; returns the transition the
    /// latest sample caused, if any.
    pub fn watch(
        &mut self,
        package: &str,
        resource: ResourceName,
        criteria: Criteria,
        rise: u32,
        fall: u32,
        now_ms: u64,
    ) -> Option<Transition> {
        self.tracker
            .watch(package, resource, criteria, rise, fall, now_ms)
    }

    /// Judges `resource` afresh for `package` (see [`Tracker::restart`]).
    pub fn restart(
        &mut self,
        package: &str,
        resource: &ResourceName,
        now_ms: u64,
    ) -> Option<Transition> {
        self.tracker.restart(package, resource, now_ms)
    }

    /// Resources still pending past their deadline become unknown: twice
    /// the interval plus timeout of the monitor that declares them
    /// (DESIGN §3), or [`UNDECLARED_PENDING_MS`] when no monitor does.
    /// Returns the transitions.
    pub fn expire_pending(&mut self, now_ms: u64) -> Vec<Transition> {
        let registry = &self.registry;
        self.tracker.expire_pending(now_ms, |resource| {
            registry
                .pending_limit_ms(resource)
                .unwrap_or(UNDECLARED_PENDING_MS)
        })
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
    }

    /// How `package` judges `resource` now (for `vigil why`).
    pub fn judged(
        &self,
        package: &str,
        resource: &ResourceName,
    ) -> Option<crate::criteria::Judged> {
        self.tracker.judged(package, resource)
    }

    /// Every resource `package` watches with its state, in name order.
    pub fn states(&self, package: &str) -> Vec<(ResourceName, ResourceState)> {
        self.tracker.states(package)
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
    fn every_flip_is_a_transition_in_order() {
        let mut hub = hub_with_monitor();
        let eth0 = name("/net/interfaces/eth0/status");
        hub.watch("app", eth0.clone(), Criteria::default(), 1, 1, 0);
        push(&mut hub, true);
        assert_eq!(hub.state("app", &eth0), Some(ResourceState::Up));
        let mut got = Vec::new();
        for i in 0..1000 {
            got.extend(push(&mut hub, i % 2 == 1));
        }
        assert_eq!(
            got.len(),
            1000,
            "every flip is a transition with rise = fall = 1"
        );
        for (i, t) in got.iter().enumerate() {
            let up = i % 2 == 1;
            assert_eq!(t.to.is_up(), up, "transition {i}: {t:?}");
        }
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
        let t = hub.restart("app", &eth0, 0).expect("a transition");
        assert_eq!(hub.state("app", &eth0), Some(ResourceState::Pending));
        assert_eq!(t.to, ResourceState::Pending);
        push(&mut hub, true);
        assert_eq!(hub.state("app", &eth0), Some(ResourceState::Up));
        hub.restart("nobody", &eth0, 0);
        assert_eq!(hub.state("app", &eth0), Some(ResourceState::Up));
    }
}
