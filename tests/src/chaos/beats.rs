//! The overlap detector of the chaos test, independent of vigil: it knows
//! only the beat lines the packages' services write (see the `chaos_beat`
//! binary), never vigil's records, logs or status.
//!
//! Each service process is an **instance** (node, pid, fence token), alive at
//! least from its first beat to its last. Two instances of one failover
//! package on different nodes **overlap** when their spans, each widened by
//! one beat interval, meet: either both were provably alive at the same
//! moment, or one started within a beat interval of the other's last beat,
//! closer than any real handover (a handover runs a `run` script that takes
//! longer than one interval). Two instances on the same node overlap only
//! when their spans meet outright (a supervised restart starts the next copy
//! right after the last one died). Pure: lines in, findings out; reading the
//! files is the driver's job.

use std::collections::{BTreeMap, BTreeSet};

/// One beat line: `<mono ns> <wall ns> <node> <package> <pid> <token>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    pub mono_ns: u64,
    pub node: String,
    pub package: String,
    pub pid: u32,
    pub token: u64,
}

impl Beat {
    /// Parses one line; `None` for a line that is not a whole beat.
    pub fn parse(line: &str) -> Option<Beat> {
        let mut f = line.split_ascii_whitespace();
        let mono_ns = f.next()?.parse().ok()?;
        let _wall_ns: u64 = f.next()?.parse().ok()?;
        let node = f.next()?.to_owned();
        let package = f.next()?.to_owned();
        let pid = f.next()?.parse().ok()?;
        let token = f.next()?.parse().ok()?;
        if f.next().is_some() {
            return None;
        }
        Some(Beat {
            mono_ns,
            node,
            package,
            pid,
            token,
        })
    }
}

/// One service process as seen from its beats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub node: String,
    pub pid: u32,
    pub token: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}

impl Instance {
    fn key(&self) -> InstanceKey {
        (self.node.clone(), self.pid, self.token)
    }

    fn meets(&self, other: &Instance, window_ns: u64) -> bool {
        let window = if self.node == other.node {
            0
        } else {
            window_ns
        };
        self.first_ns < other.last_ns + window && other.first_ns < self.last_ns + window
    }
}

/// (node, pid, fence token): one service process.
type InstanceKey = (String, u32, u64);

/// Two instances of one package that overlapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub package: String,
    pub a: Instance,
    pub b: Instance,
}

impl std::fmt::Display for Overlap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (a, b) = (&self.a, &self.b);
        write!(
            f,
            "{}: {} pid {} token {} beat {}..{} ms and {} pid {} token {} beat {}..{} ms (monotonic)",
            self.package,
            a.node,
            a.pid,
            a.token,
            a.first_ns / 1_000_000,
            a.last_ns / 1_000_000,
            b.node,
            b.pid,
            b.token,
            b.first_ns / 1_000_000,
            b.last_ns / 1_000_000
        )
    }
}

/// How long an instance that has not beaten is kept to compare new ones
/// with: far longer than any pause of the reader.
const KEEP_NS: u64 = 60_000_000_000;

/// Every package's instances, fed beat by beat.
#[derive(Debug, Default)]
pub struct Beats {
    window_ns: u64,
    instances: BTreeMap<String, Vec<Instance>>,
    /// (package, a, b) pairs already reported.
    reported: BTreeSet<(String, InstanceKey, InstanceKey)>,
    newest_ns: u64,
    /// Instances seen in all (kept or dropped).
    pub started: usize,
}

impl Beats {
    /// `window_ns`: one beat interval.
    pub fn new(window_ns: u64) -> Self {
        Self {
            window_ns,
            ..Self::default()
        }
    }

    /// Adds one beat.
    pub fn add(&mut self, beat: Beat) {
        self.newest_ns = self.newest_ns.max(beat.mono_ns);
        let list = self.instances.entry(beat.package).or_default();
        match list
            .iter_mut()
            .find(|i| i.node == beat.node && i.pid == beat.pid && i.token == beat.token)
        {
            Some(i) => {
                i.first_ns = i.first_ns.min(beat.mono_ns);
                i.last_ns = i.last_ns.max(beat.mono_ns);
            }
            None => {
                self.started += 1;
                list.push(Instance {
                    node: beat.node,
                    pid: beat.pid,
                    token: beat.token,
                    first_ns: beat.mono_ns,
                    last_ns: beat.mono_ns,
                });
            }
        }
    }

    /// Overlaps not reported before, then forgets instances too old to meet
    /// a new one.
    pub fn new_overlaps(&mut self) -> Vec<Overlap> {
        let mut found = Vec::new();
        for (package, list) in &self.instances {
            for (i, a) in list.iter().enumerate() {
                for b in &list[i + 1..] {
                    if a.meets(b, self.window_ns)
                        && self.reported.insert((package.clone(), a.key(), b.key()))
                    {
                        let (a, b) = if a.first_ns <= b.first_ns {
                            (a, b)
                        } else {
                            (b, a)
                        };
                        found.push(Overlap {
                            package: package.clone(),
                            a: a.clone(),
                            b: b.clone(),
                        });
                    }
                }
            }
        }
        let horizon = self.newest_ns.saturating_sub(KEEP_NS);
        for list in self.instances.values_mut() {
            list.retain(|i| i.last_ns >= horizon);
        }
        found
    }

    /// The instances of `package` that beat at or after `since_ns`.
    pub fn alive_since(&self, package: &str, since_ns: u64) -> Vec<&Instance> {
        self.instances
            .get(package)
            .map(|l| l.iter().filter(|i| i.last_ns >= since_ns).collect())
            .unwrap_or_default()
    }

    /// The last beat of any instance of `package`.
    pub fn last_beat(&self, package: &str) -> Option<u64> {
        self.instances
            .get(package)
            .and_then(|l| l.iter().map(|i| i.last_ns).max())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// `(at ms, node, pid)` beats of package `p`, with a 20 ms window; the
    /// overlaps found, as `(node a, node b)` pairs.
    fn check(beats: &[(u64, &str, u32)], want: &[(&str, &str)]) {
        let mut b = Beats::new(20 * MS);
        for (at, node, pid) in beats {
            let line = format!("{} 0 {node} p {pid} 1", at * MS);
            b.add(Beat::parse(&line).expect("a beat line"));
        }
        let got: Vec<(String, String)> = b
            .new_overlaps()
            .into_iter()
            .map(|o| (o.a.node, o.b.node))
            .collect();
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        assert_eq!(got, want, "beats {beats:?}");
        assert!(b.new_overlaps().is_empty(), "each overlap is reported once");
    }

    #[test]
    fn overlap_table() {
        // A handover: node1's last beat, then node2 after a run script.
        check(&[(0, "n1", 1), (20, "n1", 1), (140, "n2", 2)], &[]);
        // Both alive at once: node2 beats between two of node1's.
        check(
            &[(0, "n1", 1), (40, "n1", 1), (20, "n2", 2)],
            &[("n1", "n2")],
        );
        // Closer than one interval after the other's last beat.
        check(
            &[(0, "n1", 1), (20, "n1", 1), (30, "n2", 2)],
            &[("n1", "n2")],
        );
        // Exactly one interval later is not an overlap.
        check(&[(0, "n1", 1), (20, "n1", 1), (40, "n2", 2)], &[]);
        // Same node, restarted copy right after the old one died: fine.
        check(&[(0, "n1", 1), (20, "n1", 1), (25, "n1", 2)], &[]);
        // Same node, two copies alive at once.
        check(
            &[(0, "n1", 1), (40, "n1", 1), (20, "n1", 2), (60, "n1", 2)],
            &[("n1", "n1")],
        );
        // Back and forth without overlap.
        check(
            &[(0, "n1", 1), (100, "n2", 2), (200, "n2", 2), (400, "n1", 3)],
            &[],
        );
    }

    #[test]
    fn torn_or_foreign_lines_are_not_beats() {
        for line in ["", "12 34 n1 p", "x 34 n1 p 1 1", "1 2 n1 p 1 1 extra"] {
            assert_eq!(Beat::parse(line), None, "{line:?}");
        }
    }
}
