//! The `volume` monitor against real block devices: ext4 on a loop device
//! that is remounted read-only, unmounted and detached, and an LVM volume
//! group on two loop devices that loses one of them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags};
use serde_json::json;
use vigil_sdk::testing::{Conformance, PushCollector};
use vigil_sdk::{Monitor, Sample};
use vigil_volume::VolumeMonitor;

/// True when the test may go on: root, `/dev/loop-control` and `tools`
/// must be there. Panics when they are not, unless the person running the
/// tests asked to skip privileged ones.
fn privileged(test: &str, tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".to_owned());
    }
    if !Path::new("/dev/loop-control").exists() {
        missing.push("/dev/loop-control".to_owned());
    }
    for tool in tools {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|dir| Path::new(dir).join(tool).is_file());
        if !found {
            missing.push((*tool).to_owned());
        }
    }
    if missing.is_empty() {
        return true;
    }
    if std::env::var("VIGIL_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        eprintln!(
            "{test}: skipped, missing {} (VIGIL_SKIP_PRIVILEGED=1)",
            missing.join(", ")
        );
        return false;
    }
    panic!(
        "{test} needs {}; set VIGIL_SKIP_PRIVILEGED=1 to skip",
        missing.join(", ")
    );
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A loop device over a sparse file; detached and the file removed on drop.
struct LoopDevice {
    file: PathBuf,
    device: String,
    attached: bool,
}

impl LoopDevice {
    fn create(tag: &str) -> Self {
        let file =
            std::env::temp_dir().join(format!("vigil-volume-{tag}-{}.img", std::process::id()));
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(16 << 20))
            .expect("create backing file");
        let mut guard = Self {
            file,
            device: String::new(),
            attached: false,
        };
        guard.device = run(
            "losetup",
            &[
                "-f",
                "--show",
                guard.file.to_str().expect("utf-8 temp path"),
            ],
        );
        guard.attached = true;
        guard
    }

    fn detach(&mut self) {
        run("losetup", &["-d", &self.device]);
        self.attached = false;
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if self.attached {
            let _ = Command::new("losetup").args(["-d", &self.device]).status();
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// A directory with something mounted on it; unmounted and removed on drop.
struct MountPoint {
    dir: PathBuf,
}

impl MountPoint {
    fn ext4(tag: &str, device: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vigil-volume-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create mount point");
        let guard = Self { dir };
        nix::mount::mount(
            Some(device),
            &guard.dir,
            Some("ext4"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount ext4");
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
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        while nix::mount::umount2(&self.dir, MntFlags::MNT_DETACH).is_ok() {}
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A volume group; removed with its physical volume labels on drop.
struct VolumeGroup {
    name: String,
    devices: Vec<String>,
}

impl VolumeGroup {
    fn create(name: &str, devices: &[&str]) -> Self {
        let guard = Self {
            name: name.to_owned(),
            devices: devices.iter().map(|d| (*d).to_owned()).collect(),
        };
        let mut args = vec!["-q"];
        args.extend(devices);
        run("pvcreate", &args);
        let mut args = vec!["-q", name];
        args.extend(devices);
        run("vgcreate", &args);
        guard
    }
}

impl Drop for VolumeGroup {
    fn drop(&mut self) {
        let quiet = |program: &str, args: &[&str]| {
            let _ = Command::new(program)
                .args(args)
                .env("LVM_SUPPRESS_FD_WARNINGS", "1")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        };
        quiet("vgremove", &["-f", &self.name]);
        for device in &self.devices {
            quiet("pvremove", &["-ff", "-y", device]);
        }
    }
}

fn status_of(sample: &Sample) -> &str {
    sample
        .value
        .as_ref()
        .and_then(|v| v.as_text())
        .unwrap_or("unknown")
}

/// Waits up to 10 s for a pushed status of `name` reading `want`.
fn wait_pushed(pushed: &PushCollector, name: &str, want: &str) -> (Sample, Duration) {
    pushed.wait_for(name, Duration::from_secs(10), |s| status_of(s) == want)
}

fn poll(monitor: &mut VolumeMonitor) -> Vec<Sample> {
    monitor
        .poll(Instant::now() + Duration::from_secs(10))
        .expect("poll")
}

fn find<'a>(samples: &'a [Sample], name: &str) -> &'a Sample {
    samples
        .iter()
        .find(|s| s.name.as_str() == name)
        .unwrap_or_else(|| panic!("no {name} in {samples:?}"))
}

fn reason(sample: &Sample) -> &str {
    sample.reason.as_deref().unwrap_or("")
}

#[test]
fn conformance_direct_and_through_the_abi() {
    let conformance = Conformance::new(json!({"volumes": {"root": {"mount": "/"}}}))
        .bad_params(json!({"volumes": {}}))
        .bad_params(json!({"volumes": {"x": {}}}))
        .bad_params(json!({"volumes": {"bad name": {"mount": "/"}}}))
        .bad_params(json!({"volumes": {"x": {"device": "sdb1"}}}))
        .bad_params(json!({"volumes": {"x": {"lv": "data"}}}))
        .bad_params(json!({"volumes": {"x": {"vg": "bad/vg"}}}))
        .bad_params(json!({"volumes": {"x": {"md": "md/0"}}}))
        .bad_params(json!({"volumes": {"x": {"mount": "/", "size": 3}}}));
    for report in [
        conformance.check::<VolumeMonitor>(),
        conformance.check_abi(vigil_volume::vigil_vtable()),
    ] {
        assert_eq!(report.declared.len(), 1);
        let root = find(&report.polled, "/volume/root/status");
        assert!(root.is_known(), "/ is a mount point: {root:?}");
        assert!(
            report
                .pushed
                .iter()
                .any(|s| s.name.as_str() == "/volume/root/status"),
            "start pushes the current status"
        );
    }
}

#[test]
fn bad_params_are_refused_with_the_param_named() {
    fn check(params: serde_json::Value, expect: &str) {
        let error = VolumeMonitor::configure(params.clone())
            .expect_err("must be refused")
            .to_string();
        assert!(
            error.contains(expect),
            "{params}: {error:?} lacks {expect:?}"
        );
    }
    check(json!({"volumes": {}}), "params.volumes is empty");
    check(
        json!({"volumes": {"data": {}}}),
        "params.volumes.data: name at least one of device, mount, md or vg",
    );
    check(
        json!({"volumes": {"data": {"lv": "x"}}}),
        "params.volumes.data.lv needs vg",
    );
    check(
        json!({"volumes": {"data": {"device": "sdb1"}}}),
        "params.volumes.data.device: \"sdb1\" is not an absolute path",
    );
    check(
        json!({"volumes": {"data": {"mount": "srv"}}}),
        "params.volumes.data.mount: \"srv\" is not an absolute path",
    );
    check(
        json!({"volumes": {"data": {"md": "md/0"}}}),
        "params.volumes.data.md: \"md/0\"",
    );
    check(
        json!({"volumes": {"data": {"vg": "-vg"}}}),
        "params.volumes.data.vg: \"-vg\" is not a valid LVM name",
    );
    check(
        json!({"volumes": {"data": {"vg": "vg", "lv": "a b"}}}),
        "params.volumes.data.lv: \"a b\"",
    );
    check(
        json!({"volumes": {"my data": {"mount": "/"}}}),
        "instance name \"my data\"",
    );
    check(
        json!({"volumes": {"data": {"mount": "/", "size": 1}}}),
        "unknown field `size`",
    );
}

#[test]
fn absent_things_read_down_with_a_reason() {
    let mut monitor = VolumeMonitor::configure(json!({"volumes": {
        "dev": {"device": "/dev/vigil-no-such-disk"},
        "mnt": {"mount": "/vigil/no/such/mount"},
        "md": {"md": "/dev/md-vigil-none"},
    }}))
    .expect("configure");
    let samples = monitor
        .poll(Instant::now() + Duration::from_secs(2))
        .expect("poll");
    let check = |name: &str, expect: &str| {
        let sample = find(&samples, name);
        assert_eq!(status_of(sample), "down", "{sample:?}");
        assert_eq!(reason(sample), expect);
    };
    check(
        "/volume/dev/status",
        "device /dev/vigil-no-such-disk missing",
    );
    check("/volume/mnt/status", "/vigil/no/such/mount not mounted");
    check("/volume/md/status", "md md-vigil-none missing");
}

#[test]
fn ext4_on_loop_read_only_unmounted_and_detached() {
    if !privileged(
        "ext4_on_loop_read_only_unmounted_and_detached",
        &["losetup", "mkfs.ext4"],
    ) {
        return;
    }
    let mut disk = LoopDevice::create("ext4");
    run("mkfs.ext4", &["-q", "-F", &disk.device]);
    let mount = MountPoint::ext4("ext4", &disk.device);
    let mut monitor = VolumeMonitor::configure(json!({"volumes": {
        "data": {"device": disk.device, "mount": mount.dir},
        "disk": {"device": disk.device},
    }}))
    .expect("configure");
    let pushed = PushCollector::new();
    monitor.start(pushed.sink()).expect("start");
    let (data, raw) = ("/volume/data/status", "/volume/disk/status");
    wait_pushed(&pushed, data, "up");
    let samples = poll(&mut monitor);
    assert_eq!(status_of(find(&samples, data)), "up", "{samples:?}");
    assert_eq!(status_of(find(&samples, raw)), "up", "{samples:?}");

    mount.remount(MsFlags::MS_RDONLY);
    let (sample, took) = wait_pushed(&pushed, data, "degraded");
    eprintln!("volume: read-only remount pushed after {took:?}");
    assert!(reason(&sample).contains("mounted read-only"), "{sample:?}");
    assert_eq!(status_of(find(&poll(&mut monitor), data)), "degraded");

    mount.remount(MsFlags::empty());
    wait_pushed(&pushed, data, "up");

    nix::mount::umount(&mount.dir).expect("umount");
    let (sample, took) = wait_pushed(&pushed, data, "down");
    eprintln!("volume: umount pushed after {took:?}");
    assert!(reason(&sample).contains("not mounted"), "{sample:?}");
    assert_eq!(
        status_of(find(&poll(&mut monitor), raw)),
        "up",
        "the device is still there"
    );

    disk.detach();
    let (sample, took) = wait_pushed(&pushed, raw, "down");
    eprintln!("volume: loop detach pushed after {took:?}");
    assert!(reason(&sample).contains("missing"), "{sample:?}");
    let samples = poll(&mut monitor);
    assert_eq!(status_of(find(&samples, raw)), "down");
    let data_now = find(&samples, data);
    assert!(
        reason(data_now).contains("missing") && reason(data_now).contains("not mounted"),
        "{data_now:?}"
    );
    monitor.stop();
}

#[test]
fn lvm_volume_group_losing_a_physical_volume_is_degraded() {
    if !privileged(
        "lvm_volume_group_losing_a_physical_volume_is_degraded",
        &["losetup", "pvcreate", "vgcreate", "vgs", "lvs"],
    ) {
        return;
    }
    let first = LoopDevice::create("pv-a");
    let mut second = LoopDevice::create("pv-b");
    let name = format!("vgt{}", std::process::id());
    let _vg = VolumeGroup::create(&name, &[&first.device, &second.device]);
    let mut monitor = VolumeMonitor::configure(json!({"volumes": {
        "vg": {"vg": name},
        "lv": {"vg": name, "lv": "nolv"},
    }}))
    .expect("configure");
    let samples = poll(&mut monitor);
    let vg = find(&samples, "/volume/vg/status");
    assert_eq!(status_of(vg), "up", "{vg:?}");
    let lv = find(&samples, "/volume/lv/status");
    assert_eq!(status_of(lv), "down", "{lv:?}");
    assert_eq!(reason(lv), format!("logical volume {name}/nolv not found"));

    second.detach();
    let detached = Instant::now();
    let degraded = loop {
        let samples = poll(&mut monitor);
        let vg = find(&samples, "/volume/vg/status").clone();
        if status_of(&vg) == "degraded" {
            break vg;
        }
        assert!(
            detached.elapsed() < Duration::from_secs(30),
            "VG never read degraded: {vg:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "volume: missing PV seen by a poll {:?} after detach",
        detached.elapsed()
    );
    assert_eq!(
        reason(&degraded),
        format!("volume group {name} is partial: 1 of 2 physical volumes missing")
    );
}

#[test]
fn default_registration_configures_and_polls() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../monitors.d/volume.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let registration: toml::Table =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(registration["name"].as_str(), Some("volume"));
    assert_eq!(registration["type"].as_str(), Some("dylib"));
    assert_eq!(registration["plugin"].as_str(), Some("vigil_volume"));
    assert!(
        registration["timeout_seconds"].as_integer()
            < registration["interval_seconds"].as_integer()
    );
    let params = serde_json::to_value(&registration["params"]).expect("params as JSON");
    let mut monitor =
        VolumeMonitor::configure(params).expect("the default registration configures");
    let samples = monitor
        .poll(Instant::now() + Duration::from_secs(5))
        .expect("poll");
    let status = samples
        .iter()
        .find(|s| s.name.as_str() == "/volume/root/status");
    assert!(status.is_some_and(|s| s.is_known()), "{samples:?}");
}
