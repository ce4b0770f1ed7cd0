//! The run permits this node owes the cluster.
//!
//! A run permit (DESIGN §1) says which node may run a failover package; the
//! node that holds it must give it back once nothing of the package runs
//! there, or the adoptive node waits for it as long as this node keeps its
//! lease. Every path that ends a run here owes a release: a recorded halt, a
//! stale copy's halt, a guard halt, a claim given up (its grant may have
//! landed even though the answer did not). A release of a permit this node
//! does not hold changes nothing, so owing one too many is harmless; owing
//! one too few strands a package.
//!
//! A release must never take a permit from a run that started here since:
//! while the package runs or is being started or halted here, the release
//! is dropped (the end of that run owes its own); while its permit is being
//! claimed here again, the release waits — a grant cancels it, a claim given
//! up lets it go.
//!
//! Pure: events in, the packages to release out; the manager sends them.

use std::collections::BTreeSet;

/// What this node does with a package right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InUse {
    /// It runs here, or is being started or halted here.
    Runs,
    /// Its run permit is being claimed here.
    Claimed,
    /// Nothing.
    Free,
}

/// The releases owed and not sent yet.
#[derive(Debug, Default)]
pub struct Releases {
    owed: BTreeSet<String>,
}

impl Releases {
    /// Nothing of `package` runs here any more.
    pub fn ended(&mut self, package: &str) {
        self.owed.insert(package.to_owned());
    }

    /// A claim of `package`'s permit was given up: the permit may be ours
    /// all the same (from an earlier run, or a grant whose answer was lost).
    pub fn claim_given_up(&mut self, package: &str) {
        self.owed.insert(package.to_owned());
    }

    /// The permit was granted to a new run here: it stays.
    pub fn granted(&mut self, package: &str) {
        self.owed.remove(package);
    }

    /// A release did not reach the store: owed again.
    pub fn failed(&mut self, package: &str) {
        self.owed.insert(package.to_owned());
    }

    pub fn is_empty(&self) -> bool {
        self.owed.is_empty()
    }

    /// The releases to send now. Those of packages that run here again are
    /// dropped; those whose permit is being claimed here wait.
    pub fn take(&mut self, in_use: impl Fn(&str) -> InUse) -> Vec<String> {
        let mut send = Vec::new();
        self.owed.retain(|p| match in_use(p) {
            InUse::Runs => false,
            InUse::Claimed => true,
            InUse::Free => {
                send.push(p.clone());
                false
            }
        });
        send
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;

    /// `script` is one event per `;`: `ended P`, `given-up P`, `granted P`,
    /// `failed P`, or `send` with what runs (`runs=P,Q`) and what is claimed
    /// (`claims=P`) here at that moment; `expect` is what each `send` sent.
    fn check(script: &str, expect: Expect) {
        let mut releases = Releases::default();
        let mut sent = Vec::new();
        for step in script.split(';').map(str::trim) {
            let words: Vec<&str> = step.split_whitespace().collect();
            match words[..] {
                ["ended", p] => releases.ended(p),
                ["given-up", p] => releases.claim_given_up(p),
                ["granted", p] => releases.granted(p),
                ["failed", p] => releases.failed(p),
                ["send", ref uses @ ..] => {
                    let listed = |key: &str| -> Vec<String> {
                        uses.iter()
                            .filter_map(|u| u.strip_prefix(key))
                            .flat_map(|l| l.split(','))
                            .map(str::to_owned)
                            .collect()
                    };
                    let (runs, claims) = (listed("runs="), listed("claims="));
                    let got = releases.take(|p| {
                        if runs.iter().any(|r| r == p) {
                            InUse::Runs
                        } else if claims.iter().any(|c| c == p) {
                            InUse::Claimed
                        } else {
                            InUse::Free
                        }
                    });
                    sent.push(format!("send: {}", got.join(" ")));
                }
                _ => panic!("unknown step {step:?}"),
            }
        }
        expect.assert_eq(&sent.join("\n"));
    }

    /// Chaos trial 25 (all hosts started at once): node3 ran ers, the record
    /// had moved on, node3 halted its copy as a stale one — and kept the
    /// permit while it lived, so node2 waited for it for good.
    #[test]
    fn a_stale_copy_halted_gives_its_permit_back() {
        check("ended ers; send", expect![[r#"send: ers"#]]);
    }

    #[test]
    fn a_release_never_takes_the_permit_of_a_run_started_here_since() {
        check(
            "ended a; send runs=a; send",
            expect![[r#"
                send: 
                send: "#]],
        );
    }

    #[test]
    fn a_release_waits_for_a_claim_here_and_goes_when_it_is_given_up() {
        check(
            "ended a; send claims=a; given-up a; send",
            expect![[r#"
                send: 
                send: a"#]],
        );
    }

    #[test]
    fn a_release_waiting_for_a_claim_is_cancelled_by_its_grant() {
        check(
            "ended a; send claims=a; granted a; send",
            expect![[r#"
                send: 
                send: "#]],
        );
    }

    /// A claim whose grant landed in the store but whose answer was lost
    /// leaves the permit ours with nothing running.
    #[test]
    fn a_claim_given_up_gives_back_a_permit_it_may_have_got() {
        check("given-up a; send", expect![[r#"send: a"#]]);
    }

    #[test]
    fn a_failed_release_is_sent_again_unless_the_package_runs_here_again() {
        check(
            "ended a; ended b; send; failed a; failed b; send runs=b",
            expect![[r#"
                send: a b
                send: a"#]],
        );
    }

    #[test]
    fn a_package_owed_twice_is_released_once() {
        check(
            "ended a; given-up a; failed a; send",
            expect![[r#"send: a"#]],
        );
    }
}
