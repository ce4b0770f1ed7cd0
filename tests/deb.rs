//! The Debian package: `packaging/deb/build` packs the binaries this
//! workspace already built (no release build here), and the .deb is
//! installed, used, removed and purged with the real `dpkg` in a throwaway
//! root (`dpkg --root` with an empty database): nothing outside that
//! directory is touched. Maintainer scripts run chrootless with
//! `$DPKG_ROOT` set, which they honour. `--force-depends` because the
//! scratch root has no libc6 in its database (the binary runs on the
//! host's libc).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vigil_tests::*;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `dpkg` on the scratch root only: its database, its files, its log.
fn dpkg(root: &Path, args: &[&str]) -> Output {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .arg(format!("--log={}", root.join("dpkg.log").display()))
        .args(["--force-not-root", "--force-script-chrootless"])
        .args(args))
}

/// Every path below `root` except dpkg's own database and log.
fn tree(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if rel.starts_with("var/lib/dpkg") || rel == "dpkg.log" {
                continue;
            }
            out.insert(rel);
            if path.is_dir() && !path.is_symlink() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

fn files(root: &Path) -> BTreeSet<String> {
    tree(root)
        .into_iter()
        .filter(|p| !root.join(p).is_dir())
        .collect()
}

#[test]
fn deb_installs_runs_check_verifies_its_unit_and_removes_cleanly() {
    for (tool, package) in [
        ("dpkg-deb", "dpkg"),
        ("dpkg", "dpkg"),
        ("strip", "binutils"),
        ("systemd-analyze", "systemd"),
    ] {
        require_tool(tool, package);
    }
    let work = tempfile::tempdir().unwrap();
    let out = run(Command::new(repo_root().join("packaging/deb/build"))
        .arg("--bin-dir")
        .arg(target_dir())
        .arg("--out")
        .arg(work.path())
        .args(["--compression", "none"]));
    let deb = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(deb.is_file(), "{}", deb.display());

    // A fresh root with an empty dpkg database.
    let root = work.path().join("root");
    let admin = root.join("var/lib/dpkg");
    for dir in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(dir)).unwrap();
    }
    std::fs::write(admin.join("status"), "").unwrap();
    std::fs::write(admin.join("available"), "").unwrap();
    // Directories every Debian system has, where the host creates its own.
    std::fs::create_dir_all(root.join("var/log")).unwrap();
    std::fs::create_dir_all(root.join("run")).unwrap();
    let before = tree(&root);

    dpkg(
        &root,
        &["--force-depends", "--install", deb.to_str().unwrap()],
    );
    for file in [
        "usr/bin/vigil",
        "usr/lib/vigil/plugins/libvigil_lan.so",
        "usr/lib/vigil/plugins/libvigil_load.so",
        "usr/lib/vigil/plugins/libvigil_fs.so",
        "usr/lib/vigil/plugins/libvigil_volume.so",
        "usr/lib/vigil/plugins/libvigil_shm.so",
        "lib/systemd/system/vigil.service",
        "etc/vigil/cluster.toml",
        "etc/logrotate.d/vigil",
        "usr/share/man/man1/vigil.1.gz",
        "usr/share/man/man1/vigil-host.1.gz",
        "usr/share/bash-completion/completions/vigil",
        "usr/share/zsh/vendor-completions/_vigil",
        "usr/share/fish/vendor_completions.d/vigil.fish",
        "usr/share/doc/vigil/examples/cluster.toml",
        "usr/share/doc/vigil/examples/packages.d/demo.toml",
        "usr/share/doc/vigil/docs/reference/commands.md",
    ] {
        assert!(root.join(file).is_file(), "{file} not installed");
    }
    let conffiles = run(Command::new("dpkg-query")
        .arg(format!("--admindir={}", admin.display()))
        .args(["-W", "-f=${Conffiles}", "vigil"]));
    let conffiles = String::from_utf8_lossy(&conffiles.stdout);
    assert!(
        conffiles.contains("/etc/vigil/cluster.toml")
            && conffiles.contains("/etc/logrotate.d/vigil"),
        "{conffiles}"
    );

    // The installed binary, its plugins found from its own prefix.
    let vigil = root.join("usr/bin/vigil");
    let version = run(Command::new(&vigil).arg("--version"));
    let built = run(Command::new(vigil_bin()).arg("--version"));
    assert_eq!(version.stdout, built.stdout);
    let check = run(Command::new(&vigil)
        .arg("-c")
        .arg(root.join("usr/share/doc/vigil/examples"))
        .arg("check"));
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "configuration is valid (5 monitors)"
    );
    run(Command::new(&vigil)
        .arg("-c")
        .arg(root.join("etc/vigil"))
        .arg("check"));
    let logrotate = std::fs::read_to_string(root.join("etc/logrotate.d/vigil")).unwrap();
    assert!(logrotate.contains("/var/log/vigil/*.log") && logrotate.contains("copytruncate"));

    // systemd-analyze verify checks that ExecStart's program exists: point
    // it at the installed binary (the scratch root has no /bin/kill or
    // targets for `--root` to work with).
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/vigil.service")).unwrap();
    let unit_dir = work.path().join("unit");
    std::fs::create_dir(&unit_dir).unwrap();
    let local = unit_dir.join("vigil.service");
    std::fs::write(
        &local,
        unit.replace("/usr/bin/vigil", vigil.to_str().unwrap()),
    )
    .unwrap();
    let verify = run(Command::new("systemd-analyze").arg("verify").arg(&local));
    let remarks = String::from_utf8_lossy(&verify.stderr);
    assert!(!remarks.contains("vigil.service"), "{remarks}");

    // What a host leaves at run time under the default [paths].
    for file in [
        "var/lib/vigil/store/cluster.redb",
        "var/log/vigil/guard.log",
    ] {
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "x").unwrap();
    }

    // Remove: only the conffiles and the run-time state stay.
    dpkg(&root, &["--remove", "vigil"]);
    let left: Vec<String> = files(&root).into_iter().collect();
    assert_eq!(
        left,
        [
            "etc/logrotate.d/vigil",
            "etc/vigil/cluster.toml",
            "var/lib/vigil/store/cluster.redb",
            "var/log/vigil/guard.log",
        ]
    );

    // Purge: nothing at all, not even a directory that was not there.
    dpkg(&root, &["--purge", "vigil"]);
    assert_eq!(tree(&root), before);
}
