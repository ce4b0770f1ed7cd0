//! The `fs` monitor against real file systems: a 1 MiB tmpfs that is
//! filled, emptied, remounted read-only and unmounted, with the mount
//! changes arriving as pushed samples.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags};
use serde_json::json;
use vigil_fs::FsMonitor;
use vigil_sdk::testing::{Conformance, PushCollector};
use vigil_sdk::{Monitor, Sample};

/// True when the test may go on; panics when it lacks root, unless the
/// person running it asked to skip privileged tests.
fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("VIGIL_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        eprintln!("{test}: skipped, needs root (VIGIL_SKIP_PRIVILEGED=1)");
        return false;
    }
    panic!("{test} needs root to mount tmpfs; set VIGIL_SKIP_PRIVILEGED=1 to skip");
}

/// A tmpfs mounted on a fresh directory; unmounted and removed on drop,
/// even when the test fails half way.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(tag: &str, options: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vigil-fs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create mount point");
        let guard = Self { dir };
        nix::mount::mount(
            Some("tmpfs"),
            &guard.dir,
            Some("tmpfs"),
            MsFlags::empty(),
            Some(options),
        )
        .expect("mount tmpfs");
        guard
    }

    fn remount(&self, flags: MsFlags) {
        nix::mount::mount(
            None::<&str>,
            &self.dir,
            None::<&str>,
            MsFlags::MS_REMOUNT | flags,
            None::<&str>,
        )
        .expect("remount");
    }

    fn unmount(&self) {
        nix::mount::umount(&self.dir).expect("umount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        while nix::mount::umount2(&self.dir, MntFlags::MNT_DETACH).is_ok() {}
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// How long a mount change may take to be pushed.
const PUSH_WAIT: Duration = Duration::from_secs(10);

fn find<'a>(samples: &'a [Sample], name: &str) -> &'a Sample {
    samples
        .iter()
        .find(|s| s.name.as_str() == name)
        .unwrap_or_else(|| panic!("no sample {name}"))
}

fn number(samples: &[Sample], name: &str) -> f64 {
    find(samples, name)
        .value
        .as_ref()
        .and_then(|v| v.as_number())
        .unwrap_or_else(|| panic!("{name} is not a number: {:?}", find(samples, name)))
}

fn text(sample: &Sample) -> Option<&str> {
    sample.value.as_ref().and_then(|v| v.as_text())
}

fn poll(monitor: &mut FsMonitor) -> Vec<Sample> {
    monitor
        .poll(Instant::now() + Duration::from_secs(2))
        .expect("poll")
}

#[test]
fn conformance_direct_and_through_the_abi() {
    let params = json!({"mounts": {"root": "/"}});
    let conformance = Conformance::new(params)
        .bad_params(json!({"mounts": {}}))
        .bad_params(json!({"mounts": {"bad name": "/"}}))
        .bad_params(json!({"mounts": {"a/b": "/"}}))
        .bad_params(json!({"mounts": {"rel": "srv/data"}}))
        .bad_params(json!({"mounts": {"gone": "/no/such/vigil/path"}}))
        .bad_params(json!({"mounts": {"file": "/proc/self/mountinfo"}}))
        .bad_params(json!({"mounts": ["/"]}));
    for report in [
        conformance.check::<FsMonitor>(),
        conformance.check_abi(vigil_fs::vigil_vtable()),
    ] {
        assert_eq!(report.declared.len(), 4);
        // `/` is a mount point everywhere; a container may mount it read-only.
        let status = find(&report.polled, "/fs/root/status");
        let read_only = status
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("read-only"));
        assert!(text(status) == Some("up") || read_only, "{status:?}");
        let used = number(&report.polled, "/fs/root/used_percent");
        assert!((0.0..=100.0).contains(&used), "{used}");
        assert!(
            report
                .pushed
                .iter()
                .any(|s| s.name.as_str() == "/fs/root/status"),
            "start pushes the current status"
        );
    }
}

#[test]
fn bad_params_are_refused_with_the_param_named() {
    fn check(params: serde_json::Value, expect: &str) {
        let error = FsMonitor::configure(params.clone())
            .expect_err("must be refused")
            .to_string();
        assert!(
            error.contains(expect),
            "{params}: {error:?} lacks {expect:?}"
        );
    }
    check(json!({"mounts": {}}), "params.mounts is empty");
    check(
        json!({"mounts": {"bad name": "/"}}),
        "instance name \"bad name\"",
    );
    check(
        json!({"mounts": {"data": "srv/data"}}),
        "params.mounts.data: mount point \"srv/data\" is not an absolute path",
    );
    check(
        json!({"mounts": {"data": "/no/such/vigil"}}),
        "params.mounts.data: mount point /no/such/vigil does not exist",
    );
    check(
        json!({"mounts": {"data": "/proc/self/mountinfo"}}),
        "is not a directory",
    );
    check(
        json!({"mounts": {"data": "/"}, "extra": 1}),
        "unknown field `extra`",
    );
}

#[test]
fn existing_directory_that_is_not_mounted_reads_down_not_mounted() {
    let dir = std::env::temp_dir().join(format!("vigil-fs-plain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create dir");
    let result = FsMonitor::configure(json!({"mounts": {"plain": dir}}));
    let samples = result.map(|mut m| poll(&mut m));
    let _ = std::fs::remove_dir(&dir);
    let samples = samples.expect("a plain directory is accepted");
    let status = find(&samples, "/fs/plain/status");
    assert_eq!(text(status), Some("down"));
    assert!(
        status
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("not mounted")),
        "{status:?}"
    );
    assert!(
        !find(&samples, "/fs/plain/used_percent").is_known(),
        "parent fs is not reported"
    );
}

#[test]
fn tmpfs_fill_remount_read_only_and_unmount() {
    if !privileged("tmpfs_fill_remount_read_only_and_unmount") {
        return;
    }
    let tmpfs = Tmpfs::mount("cycle", "size=1m,nr_inodes=64");
    let mut monitor =
        FsMonitor::configure(json!({"mounts": {"scratch": tmpfs.dir}})).expect("configure");
    let pushed = PushCollector::new();
    monitor.start(pushed.sink()).expect("start");
    let status = "/fs/scratch/status";
    pushed.wait_for(status, PUSH_WAIT, |s| text(s) == Some("up"));

    let samples = poll(&mut monitor);
    assert_eq!(text(find(&samples, status)), Some("up"));
    let empty = number(&samples, "/fs/scratch/used_percent");
    assert!(empty < 10.0, "fresh tmpfs used {empty}%");
    let empty_inodes = number(&samples, "/fs/scratch/inodes_used_percent");
    let avail = number(&samples, "/fs/scratch/avail_mb");
    assert!(
        avail > 0.9 && avail <= 1.0,
        "1 MiB tmpfs has {avail} MB available"
    );
    assert_eq!(
        find(&samples, "/fs/scratch/avail_mb")
            .value
            .as_ref()
            .and_then(|v| v.unit()),
        Some("MB")
    );

    let file = tmpfs.dir.join("fill");
    std::fs::write(&file, vec![0xa5u8; 900 * 1024]).expect("fill the tmpfs");
    let samples = poll(&mut monitor);
    let full = number(&samples, "/fs/scratch/used_percent");
    assert!(full > 80.0, "900 KiB in 1 MiB is {full}%");
    let inodes = number(&samples, "/fs/scratch/inodes_used_percent");
    assert!(
        inodes > empty_inodes,
        "a new file takes an inode: {empty_inodes}% -> {inodes}%"
    );

    std::fs::remove_file(&file).expect("empty the tmpfs");
    let samples = poll(&mut monitor);
    let emptied = number(&samples, "/fs/scratch/used_percent");
    assert!(emptied < 10.0, "emptied tmpfs used {emptied}%");

    tmpfs.remount(MsFlags::MS_RDONLY);
    let (sample, took) = pushed.wait_for(status, PUSH_WAIT, |s| text(s) == Some("down"));
    eprintln!("fs: read-only remount pushed after {took:?}");
    assert!(
        sample
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("read-only")),
        "{sample:?}"
    );

    tmpfs.remount(MsFlags::empty());
    let (_, took) = pushed.wait_for(status, PUSH_WAIT, |s| text(s) == Some("up"));
    eprintln!("fs: read-write remount pushed after {took:?}");

    tmpfs.unmount();
    let (sample, took) = pushed.wait_for(status, PUSH_WAIT, |s| text(s) == Some("down"));
    eprintln!("fs: umount pushed after {took:?}");
    assert!(
        sample
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("not mounted")),
        "{sample:?}"
    );

    let samples = poll(&mut monitor);
    assert_eq!(text(find(&samples, status)), Some("down"));
    assert!(!find(&samples, "/fs/scratch/used_percent").is_known());

    let stopping = Instant::now();
    monitor.stop();
    eprintln!("fs: stop took {:?}", stopping.elapsed());
    drop(tmpfs);
    assert!(
        pushed.all().iter().all(|s| s.name.as_str() == status),
        "only status is pushed"
    );
}

#[test]
fn default_registration_configures_and_polls() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../monitors.d/fs.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let registration: toml::Table =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(registration["name"].as_str(), Some("fs"));
    assert_eq!(registration["type"].as_str(), Some("dylib"));
    assert_eq!(registration["plugin"].as_str(), Some("vigil_fs"));
    assert!(
        registration["timeout_seconds"].as_integer()
            < registration["interval_seconds"].as_integer()
    );
    let params = serde_json::to_value(&registration["params"]).expect("params as JSON");
    let mut monitor = FsMonitor::configure(params).expect("the default registration configures");
    let samples = monitor
        .poll(Instant::now() + Duration::from_secs(5))
        .expect("poll");
    let status = samples
        .iter()
        .find(|s| s.name.as_str() == "/fs/root/status");
    assert!(status.is_some_and(|s| s.is_known()), "{samples:?}");
}
