//! The applied package set (`vigil apply`, DESIGN §7): the cluster's one
//! definition of its packages, kept in the store as the text of every
//! `packages.d/*.toml` file. Every host runs these packages, not its local
//! files.
//!
//! Pure: turning a stored set into package configs (with this host's
//! `cluster.toml` and config dir, through the same loader as `packages.d/`),
//! composing the set a reload applies (a broken file keeps its last good
//! text), and naming what changed between two sets — and whether a change
//! needs the package restarted ([`redefines`]) or only replanned.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use crate::config::package::{self, PackageConfig};
use crate::config::{ClusterConfig, ConfigError, SourceFile};
use crate::store::AppliedPackages;

/// The file name a package came from (`web.toml`), its key in a set.
pub fn file_name(source: &Path) -> String {
    source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The packages of a stored set, loaded as if each file were
/// `<config dir>/packages.d/<name>` on this host, and the errors of those
/// that do not load here (left out). The cross-check runs without the
/// monitors' declarations, which the applier's `vigil apply` checked.
pub fn parse(
    files: &BTreeMap<String, String>,
    cluster: &ClusterConfig,
) -> (Vec<PackageConfig>, Vec<ConfigError>) {
    let dir = cluster.dir.join("packages.d");
    let mut packages: Vec<PackageConfig> = Vec::new();
    let mut errors = Vec::new();
    for (name, text) in files {
        let file = SourceFile::from_text(&dir.join(name), text);
        match package::load_package_text(&file, cluster) {
            Ok(p) => {
                if let Some(first) = packages.iter().find(|q| q.name == p.name) {
                    errors.push(ConfigError::at(
                        &file.path,
                        p.lines.name,
                        format!(
                            "package name {:?} is already used by {}",
                            p.name,
                            first.source.display()
                        ),
                    ));
                } else {
                    packages.push(p);
                }
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    loop {
        let again = package::check_packages(&packages, &cluster.nodes, |_| true);
        if again.is_empty() {
            break;
        }
        let broken: BTreeSet<_> = again.iter().map(|e| e.file.clone()).collect();
        packages.retain(|p| !broken.contains(&p.source));
        errors.extend(again);
    }
    (packages, errors)
}

/// The files a reload applies on one node: the local files that validated,
/// and for a file that is broken now, the text applied before (the last
/// good version keeps running); a broken file never applied is left out.
pub fn compose_reload(
    valid: &BTreeMap<String, String>,
    broken: &BTreeSet<String>,
    applied: Option<&AppliedPackages>,
) -> BTreeMap<String, String> {
    let mut files = valid.clone();
    for name in broken {
        if let Some(text) = applied.and_then(|a| a.files.get(name)) {
            files.insert(name.clone(), text.clone());
        }
    }
    files
}

/// Whether the change from `old` to `new` touches what runs: `run`,
/// `halt`, their timeouts, `[[service]]` or the parts. Such a change halts
/// the package with its old definition and runs it with the new one; any
/// other change (nodes, policies, priority, follow/avoid, resources,
/// dependencies, auto_run, type) only changes placement.
pub fn redefines(old: &PackageConfig, new: &PackageConfig) -> bool {
    let services = |p: &PackageConfig| {
        let mut s = p.services.clone();
        for service in &mut s {
            service.line = 0;
        }
        s
    };
    let parts = |p: &PackageConfig| {
        let mut s = p.parts.clone();
        for part in &mut s {
            part.line = 0;
        }
        s
    };
    old.run != new.run
        || old.halt != new.halt
        || old.run_timeout != new.run_timeout
        || old.halt_timeout != new.halt_timeout
        || services(old) != services(new)
        || parts(old) != parts(new)
}

/// Whether two versions of a package differ other than in line numbers.
pub fn same(old: &PackageConfig, new: &PackageConfig) -> bool {
    let strip = |p: &PackageConfig| {
        let mut p = p.clone();
        p.lines = Default::default();
        for s in &mut p.services {
            s.line = 0;
        }
        for part in &mut p.parts {
            part.line = 0;
        }
        for r in &mut p.resources {
            r.line = 0;
        }
        for d in &mut p.dependencies {
            d.line = 0;
        }
        p
    };
    strip(old) == strip(new)
}

/// What changed from one package set to the next, by package name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Changed in placement keys only: replanned, not restarted.
    pub replanned: Vec<String>,
    /// Changed in what runs: halted and run again where it runs.
    pub redefined: Vec<String>,
}

impl SetChanges {
    pub fn between(old: &[PackageConfig], new: &[PackageConfig]) -> Self {
        let mut changes = Self::default();
        for n in new {
            match old.iter().find(|o| o.name == n.name) {
                None => changes.added.push(n.name.clone()),
                Some(o) if redefines(o, n) => changes.redefined.push(n.name.clone()),
                Some(o) if !same(o, n) => changes.replanned.push(n.name.clone()),
                Some(_) => {}
            }
        }
        changes.removed = old
            .iter()
            .filter(|o| !new.iter().any(|n| n.name == o.name))
            .map(|o| o.name.clone())
            .collect();
        changes
    }

    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

impl fmt::Display for SetChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (what, list) in [
            ("added", &self.added),
            ("changed (restarted)", &self.redefined),
            ("changed (replanned)", &self.replanned),
            ("removed", &self.removed),
        ] {
            if !list.is_empty() {
                parts.push(format!("{what}: {}", list.join(", ")));
            }
        }
        if parts.is_empty() {
            write!(f, "no package changed")
        } else {
            write!(f, "{}", parts.join("; "))
        }
    }
}

/// How local files differ from an applied set, by file name: `None` when
/// they are the same.
pub fn file_differences(
    local: &BTreeMap<String, String>,
    applied: &BTreeMap<String, String>,
) -> Option<String> {
    let mut parts = Vec::new();
    let only = |a: &BTreeMap<String, String>, b: &BTreeMap<String, String>| {
        a.keys()
            .filter(|k| !b.contains_key(*k))
            .cloned()
            .collect::<Vec<_>>()
    };
    let changed: Vec<String> = local
        .iter()
        .filter(|(k, v)| applied.get(*k).is_some_and(|a| a != *v))
        .map(|(k, _)| k.clone())
        .collect();
    for (what, list) in [
        ("not applied", only(local, applied)),
        ("different", changed),
        ("applied but not here", only(applied, local)),
    ] {
        if !list.is_empty() {
            parts.push(format!("{what}: {}", list.join(", ")));
        }
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;

    const CLUSTER: &str = "[cluster]\nname = \"t\"\nnodes = [\"node1\", \"node2\"]\n";

    fn cluster() -> ClusterConfig {
        let dir = Path::new("/cfg");
        crate::config::load_cluster_text(
            dir,
            &SourceFile::from_text(&dir.join("cluster.toml"), CLUSTER),
        )
        .unwrap()
    }

    fn parsed(text: &str) -> PackageConfig {
        let files = [("p.toml".to_owned(), text.to_owned())]
            .into_iter()
            .collect();
        let (mut packages, errors) = parse(&files, &cluster());
        assert_eq!(errors, Vec::new());
        packages.remove(0)
    }

    const BASE: &str = "name = \"p\"\ntype = \"failover\"\nnodes = [\"node1\", \"node2\"]\nrun = [\"/bin/true\"]\nhalt = [\"/bin/true\"]\n";

    /// One row: the package's text before and after (appended to BASE),
    /// and how the change is classified.
    fn check(before: &str, after: &str, expect: Expect) {
        let old = parsed(&format!("{BASE}{before}"));
        let new = parsed(&format!("{BASE}{after}"));
        let changes = SetChanges::between(&[old], &[new]);
        expect.assert_eq(&changes.to_string());
    }

    #[test]
    fn which_keys_restart_a_package_and_which_only_replan_it() {
        check("", "", expect!["no package changed"]);
        // A comment moves every line: not a change.
        check("", "", expect!["no package changed"]);
        check(
            "[[service]]\nname = \"s\"\ncommand = [\"/bin/sleep\", \"1\"]\n",
            "# moved\n\n[[service]]\nname = \"s\"\ncommand = [\"/bin/sleep\", \"1\"]\n",
            expect!["no package changed"],
        );
        check(
            "",
            "failback_policy = \"automatic\"\n",
            expect!["changed (replanned): p"],
        );
        check("", "priority = 3\n", expect!["changed (replanned): p"]);
        check("", "auto_run = false\n", expect!["changed (replanned): p"]);
        check(
            "",
            "[[resource]]\nname = \"/system/load/1min\"\nup = \"< 5\"\n",
            expect!["changed (replanned): p"],
        );
        check(
            "",
            "run_timeout_seconds = 5\n",
            expect!["changed (restarted): p"],
        );
        check(
            "",
            "[[service]]\nname = \"s\"\ncommand = [\"/bin/sleep\", \"1\"]\n",
            expect!["changed (restarted): p"],
        );
        check(
            "",
            "[[ip]]\naddress = \"192.0.2.50/24\"\n",
            expect!["changed (restarted): p"],
        );
    }

    #[test]
    fn set_changes_name_added_and_removed_packages() {
        let p = parsed(BASE);
        let mut q = p.clone();
        q.name = "q".into();
        let changes = SetChanges::between(std::slice::from_ref(&p), std::slice::from_ref(&q));
        assert_eq!(changes.to_string(), "added: q; removed: p");
    }

    #[test]
    fn a_reload_keeps_the_applied_text_of_a_broken_file() {
        let files = |list: &[(&str, &str)]| -> BTreeMap<String, String> {
            list.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let applied = AppliedPackages {
            revision: 1,
            digest: String::new(),
            files: files(&[("a.toml", "old a"), ("b.toml", "old b")]),
            applied_by: String::new(),
            applied_ms: 0,
        };
        let broken: BTreeSet<String> = ["a.toml".to_owned(), "c.toml".to_owned()].into();
        let composed = compose_reload(&files(&[("d.toml", "new d")]), &broken, Some(&applied));
        // a keeps its last good text, b was deleted locally, c never
        // applied stays out, d is new.
        assert_eq!(composed, files(&[("a.toml", "old a"), ("d.toml", "new d")]));
    }

    #[test]
    fn file_differences_name_each_file() {
        let files = |list: &[(&str, &str)]| -> BTreeMap<String, String> {
            list.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            file_differences(&files(&[("a", "1")]), &files(&[("a", "1")])),
            None
        );
        assert_eq!(
            file_differences(
                &files(&[("a", "1"), ("b", "2")]),
                &files(&[("a", "2"), ("c", "3")])
            )
            .unwrap(),
            "not applied: b; different: a; applied but not here: c"
        );
    }

    #[test]
    fn a_set_file_that_does_not_load_here_is_left_out_with_its_line() {
        let files = [
            ("p.toml".to_owned(), BASE.to_owned()),
            ("q.toml".to_owned(), "name = \"q\"\nbogus = 1\n".to_owned()),
        ]
        .into_iter()
        .collect();
        let (packages, errors) = parse(&files, &cluster());
        assert_eq!(packages.len(), 1);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]
                .to_string()
                .starts_with("/cfg/packages.d/q.toml:2: "),
            "{}",
            errors[0]
        );
    }
}
