//! Faults injected into real system objects, seen through the real host.
//!
//! Each test creates what its monitor watches (a veth pair between network
//! namespaces, a tmpfs, an ext4 file system or an LVM volume group on loop
//! devices, shared-memory segments), starts a real `vigil host` with the
//! bundled plugin registered by name, breaks and repairs the object, and
//! waits until `vigil resls --json` shows each change. Waits are generous
//! and nothing is timed: latency is the benchmark's job (`bench/`).
//!
//! Every object is removed by a Drop guard, also when a test fails.

use std::time::Duration;

use serde_json::Value;
use vigil_tests::*;

/// Long enough for a poll-driven change on a loaded CI machine.
const WAIT: Duration = Duration::from_secs(30);
/// `vgs` scans every block device; on a busy machine that can be slow.
const LVM_WAIT: Duration = Duration::from_secs(90);

/// Waits until `name` is known with the text value `want` (and, when
/// `reason` is not empty, a reason containing it); returns the resource.
fn wait_value(cfg: &ConfigDir, name: &str, want: &str, reason: &str) -> Value {
    wait_for(WAIT, &format!("{name} = {want} ({reason})"), || {
        let r = cfg.resource(name)?;
        let why = r["reason"].as_str().unwrap_or_default();
        if r["state"] == "known" && r["value"] == want && why.contains(reason) {
            Ok(r)
        } else {
            Err(r.to_string())
        }
    })
}

/// Waits until `name` is a known number for which `test` holds.
fn wait_number(
    cfg: &ConfigDir,
    name: &str,
    what: &str,
    test: impl Fn(f64) -> bool,
) -> (f64, Value) {
    wait_for(WAIT, &format!("{name} {what}"), || {
        let r = cfg.resource(name)?;
        match r["value"].as_f64() {
            Some(v) if r["state"] == "known" && test(v) => Ok((v, r)),
            _ => Err(r.to_string()),
        }
    })
}

fn dylib_monitor(name: &str, plugin: &str, interval: &str, params: &str) -> String {
    format!(
        "name = \"{name}\"\ntype = \"dylib\"\nplugin = \"{plugin}\"\ninterval_seconds = {interval}\ntimeout_seconds = 1\n{params}"
    )
}

#[test]
fn veth_peer_down_and_up_is_pushed_to_the_interface_status() {
    if !privileged("veth link fault (network namespaces)") {
        return;
    }
    require_tool("ip", "iproute2");
    let host_ns = Netns::new("lh");
    let peer_ns = Netns::new("lp");
    let veth = Veth::new("l", &host_ns, &peer_ns);
    veth.a.set(true);
    veth.b.set(true);
    let cfg = ConfigDir::new();
    // An hour between polls: every change after the first poll must arrive
    // through the rtnetlink push path to be seen within the wait.
    cfg.monitor(
        "lan",
        &dylib_monitor(
            "lan",
            "vigil_lan",
            "3600",
            &format!("[params]\ninterfaces = [\"{}\"]\n", veth.a.name),
        ),
    );
    let _host = cfg.start_host_with(&host_ns.exec_prefix());
    let status = format!("/net/interfaces/{}/status", veth.a.name);
    wait_value(&cfg, &status, "up", "");

    // The far end goes down: our end loses its carrier.
    veth.b.set(false);
    wait_value(&cfg, &status, "down", "no carrier");
    veth.b.set(true);
    wait_value(&cfg, &status, "up", "");

    // Our own end is taken down by an administrator.
    veth.a.set(false);
    wait_value(&cfg, &status, "down", "administratively down");
    veth.a.set(true);
    let up = wait_value(&cfg, &status, "up", "");
    assert_eq!(up["monitor"], "lan");
}

#[test]
fn reachability_target_cut_off_by_its_veth_goes_down() {
    if !privileged("reachability fault (network namespaces)") {
        return;
    }
    require_tool("ip", "iproute2");
    // The host probes from one namespace of ours to a target in another:
    // no packet leaves namespaces this test made.
    let host_ns = Netns::new("rh");
    let target_ns = Netns::new("rt");
    let veth = Veth::new("r", &host_ns, &target_ns);
    veth.a.address("10.200.0.1/30");
    veth.b.address("10.200.0.2/30");
    let target = "10.200.0.2";
    let cfg = ConfigDir::new();
    cfg.monitor(
        "lan",
        &dylib_monitor(
            "lan",
            "vigil_lan",
            "0.5",
            &format!(
                "[params]\ninterfaces = [\"{}\"]\ntargets = [\"{target}\"]\nattempts = 1\ntimeout_ms = 300\nmisses_before_down = 1\n",
                veth.a.name
            ),
        ),
    );
    let _host = cfg.start_host_with(&host_ns.exec_prefix());
    let status = format!("/net/reach/{target}/status");
    let rtt = format!("/net/reach/{target}/rtt_ms");
    wait_value(&cfg, &status, "up", "");
    wait_number(&cfg, &rtt, "is a round-trip time", |ms| ms >= 0.0);

    veth.b.set(false);
    wait_value(&cfg, &status, "down", "");
    wait_for(WAIT, "rtt unknown while the target is cut off", || {
        let r = cfg.resource(&rtt)?;
        if r["state"] == "unknown" {
            Ok(())
        } else {
            Err(r.to_string())
        }
    });

    veth.b.set(true);
    wait_value(&cfg, &status, "up", "");
}

#[test]
fn tmpfs_filled_and_emptied_crosses_the_usage_threshold_both_ways() {
    if !privileged("tmpfs usage fault (mount)") {
        return;
    }
    let mount = Mount::tmpfs("fsu", 1 << 20);
    let cfg = ConfigDir::new();
    cfg.monitor(
        "fs",
        &dylib_monitor(
            "fs",
            "vigil_fs",
            "0.5",
            &format!("[params.mounts]\nsmall = \"{}\"\n", mount.path_str()),
        ),
    );
    let _host = cfg.start_host();
    let used = "/fs/small/used_percent";
    wait_value(&cfg, "/fs/small/status", "up", "");
    let (_, empty) = wait_number(&cfg, used, "below 50", |p| p < 50.0);
    assert_eq!(empty["unit"], "%", "{empty}");

    let file = mount.fill("ballast", 768 << 10);
    let (full, _) = wait_number(&cfg, used, "above 50", |p| p > 50.0);
    assert!(full <= 100.0, "{full}");
    wait_number(&cfg, "/fs/small/avail_mb", "below 0.5 MB", |mb| mb < 0.5);

    std::fs::remove_file(&file).expect("remove ballast");
    wait_number(&cfg, used, "below 50 again", |p| p < 50.0);
}

#[test]
fn ext4_on_a_loop_device_remounted_read_only_then_unmounted() {
    if !privileged("ext4 loop device fault") {
        return;
    }
    require_loop_devices();
    require_tools(&[("losetup", "mount"), ("mkfs.ext4", "e2fsprogs")]);
    let device = LoopDevice::new("ext4", 32 << 20);
    device.mkfs_ext4();
    let mount = Mount::ext4("ext4", &device.device);
    let cfg = ConfigDir::new();
    cfg.monitor(
        "volume",
        &dylib_monitor(
            "volume",
            "vigil_volume",
            "1",
            &format!(
                "[params.volumes.data]\ndevice = \"{}\"\nmount = \"{}\"\n",
                device.device,
                mount.path_str()
            ),
        ),
    );
    cfg.monitor(
        "fs",
        &dylib_monitor(
            "fs",
            "vigil_fs",
            "1",
            &format!("[params.mounts]\ndata = \"{}\"\n", mount.path_str()),
        ),
    );
    let _host = cfg.start_host();
    wait_value(&cfg, "/volume/data/status", "up", "");
    wait_value(&cfg, "/fs/data/status", "up", "");

    mount.remount_read_only(true);
    wait_value(&cfg, "/volume/data/status", "degraded", "read-only");
    wait_value(&cfg, "/fs/data/status", "down", "read-only");

    mount.unmount();
    wait_value(&cfg, "/volume/data/status", "down", "not mounted");
    wait_value(&cfg, "/fs/data/status", "down", "not mounted");
    wait_for(WAIT, "usage unknown once unmounted", || {
        let r = cfg.resource("/fs/data/used_percent")?;
        if r["state"] == "unknown" {
            Ok(())
        } else {
            Err(r.to_string())
        }
    });
}

#[test]
fn volume_group_losing_one_of_two_physical_volumes_is_degraded() {
    if !privileged("LVM physical volume fault") {
        return;
    }
    require_loop_devices();
    require_tools(&[
        ("losetup", "mount"),
        ("pvcreate", "lvm2"),
        ("vgcreate", "lvm2"),
        ("vgs", "lvm2"),
        ("lvs", "lvm2"),
    ]);
    let first = LoopDevice::new("pv1", 16 << 20);
    let mut second = LoopDevice::new("pv2", 16 << 20);
    // Declared after the devices: dropped before them.
    let vg = VolumeGroup::new(
        &format!("vgf{}", std::process::id()),
        &[&first.device, &second.device],
    );
    let cfg = ConfigDir::new();
    cfg.monitor(
        "volume",
        &format!(
            "name = \"volume\"\ntype = \"dylib\"\nplugin = \"vigil_volume\"\ninterval_seconds = 1\ntimeout_seconds = 10\n[params.volumes.pool]\nvg = \"{}\"\n",
            vg.name
        ),
    );
    let _host = cfg.start_host();
    let status = "/volume/pool/status";
    wait_for(LVM_WAIT, "the volume group up", || {
        let r = cfg.resource(status)?;
        if r["value"] == "up" {
            Ok(())
        } else {
            Err(r.to_string())
        }
    });

    second.detach();
    let degraded = wait_for(LVM_WAIT, "the volume group degraded", || {
        let r = cfg.resource(status)?;
        if r["value"] == "degraded" {
            Ok(r)
        } else {
            Err(r.to_string())
        }
    });
    assert_eq!(
        degraded["reason"],
        format!(
            "volume group {} is partial: 1 of 2 physical volumes missing",
            vg.name
        )
    );
}

#[test]
fn posix_segment_created_and_unlinked_is_present_then_absent() {
    let name = unique("shm");
    let cfg = ConfigDir::new();
    // Presence is pushed (inotify): polls an hour apart must not matter.
    cfg.monitor(
        "shm",
        &dylib_monitor(
            "shm",
            "vigil_shm",
            "3600",
            &format!("[params]\nposix = [\"{name}\"]\n"),
        ),
    );
    let _host = cfg.start_host();
    let present = format!("/shm/posix/{name}/present");
    wait_value(&cfg, &present, "no", "");

    let mut segment = PosixShm::create(&name);
    wait_value(&cfg, &present, "yes", "");
    segment.unlink();
    wait_value(&cfg, &present, "no", "");
}

#[test]
fn sysv_segment_lifecycle_is_followed_by_present_and_attached() {
    let key = SysvShm::unique_key();
    let cfg = ConfigDir::new();
    cfg.monitor(
        "shm",
        &dylib_monitor(
            "shm",
            "vigil_shm",
            "3600",
            &format!("[params]\nsysv = [{key}]\n"),
        ),
    );
    let _host = cfg.start_host();
    let segment_name = format!("0x{key:08x}");
    let present = format!("/shm/sysv/{segment_name}/present");
    let attached = format!("/shm/sysv/{segment_name}/attached");
    wait_value(&cfg, &present, "no", "");
    wait_number(&cfg, &attached, "= 0 before creation", |n| n == 0.0);

    let mut shm = SysvShm::create(key);
    assert_eq!(shm.key_segment(), segment_name);
    wait_value(&cfg, &present, "yes", "");
    wait_number(&cfg, &attached, "= 0 after creation", |n| n == 0.0);
    shm.attach();
    wait_number(&cfg, &attached, "= 1 after shmat", |n| n == 1.0);
    shm.detach();
    wait_number(&cfg, &attached, "= 0 after shmdt", |n| n == 0.0);
    shm.remove();
    wait_value(&cfg, &present, "no", "");
    wait_number(&cfg, &attached, "= 0 after removal", |n| n == 0.0);
}

#[test]
fn check_disk_through_the_nagios_path_follows_a_filling_tmpfs() {
    if !privileged("tmpfs usage fault seen by check_disk (mount)") {
        return;
    }
    let check_disk = "/usr/lib/nagios/plugins/check_disk";
    require_tool(check_disk, "monitoring-plugins-basic");
    let mount = Mount::tmpfs("nag", 1 << 20);
    let cfg = ConfigDir::new();
    cfg.monitor(
        "disk",
        &format!(
            "name = \"disk\"\ntype = \"nagios\"\ncommand = [\"{check_disk}\", \"-w\", \"50%\", \"-c\", \"20%\", \"-p\", \"{}\"]\ninterval_seconds = 0.5\ntimeout_seconds = 5\n",
            mount.path_str()
        ),
    );
    let _host = cfg.start_host();
    let status = "/nagios/disk/status";
    let ok = wait_value(&cfg, status, "ok", "DISK OK");
    assert_eq!(ok["monitor"], "disk");
    // check_disk labels its perfdata with the mount point. Its used figure
    // is whole MiB scaled to bytes, so on a 1 MiB tmpfs it stays 0 B: only
    // its presence and unit say anything here.
    let perfdata = format!(
        "/nagios/disk/{}",
        vigil_sdk::nagios::label_segment(mount.path_str())
    );
    let (_, used) = wait_number(&cfg, &perfdata, "as perfdata", |v| v >= 0.0);
    assert_eq!(used["unit"], "B", "{used}");

    // 600 KiB of 1 MiB used: 41 % free, below the 50 % warning threshold.
    mount.fill("a", 600 << 10);
    wait_value(&cfg, status, "warning", "DISK WARNING");
    // 900 KiB used: 12 % free, below the 20 % critical threshold.
    mount.fill("b", 300 << 10);
    wait_value(&cfg, status, "critical", "DISK CRITICAL");
    wait_number(&cfg, &perfdata, "still published", |v| v >= 0.0);

    std::fs::remove_file(mount.path().join("a")).expect("remove a");
    std::fs::remove_file(mount.path().join("b")).expect("remove b");
    wait_value(&cfg, status, "ok", "DISK OK");
}
