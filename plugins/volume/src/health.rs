//! The verdict of one check of a volume, how several verdicts combine into
//! the volume's status, and the checks that need no subprocess: block
//! device presence, mount state and md array state.
//!
//! The mapping from raw state to verdict is pure and tested on recorded
//! values; the functions that read `/sys` and `stat` device nodes are thin
//! wrappers around it. LVM checks live in [`crate::lvm`].

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use vigil_sdk::mountinfo::{self, MountEntry};

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Up,
    Degraded(String),
    Down(String),
    /// The check could not tell (a tool timed out or is missing).
    Unknown(String),
}

/// A volume's status: `Some("up" | "degraded" | "down")`, or `None` when it
/// is unknown, and the reasons of every check that was not up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub status: Option<&'static str>,
    pub reason: Option<String>,
}

/// Down if any check is down (a missing device is certain even when LVM
/// could not be asked); else unknown if any check could not tell; else
/// degraded if any check is degraded; else up. The reason lists every check
/// that was not up, worst first.
pub fn combine(checks: &[Health]) -> Verdict {
    let of = |pick: fn(&Health) -> Option<&String>| checks.iter().filter_map(pick);
    let down: Vec<&String> = of(|h| {
        if let Health::Down(r) = h {
            Some(r)
        } else {
            None
        }
    })
    .collect();
    let unknown: Vec<&String> = of(|h| {
        if let Health::Unknown(r) = h {
            Some(r)
        } else {
            None
        }
    })
    .collect();
    let degraded: Vec<&String> = of(|h| {
        if let Health::Degraded(r) = h {
            Some(r)
        } else {
            None
        }
    })
    .collect();
    let status = if !down.is_empty() {
        Some("down")
    } else if !unknown.is_empty() {
        None
    } else if !degraded.is_empty() {
        Some("degraded")
    } else {
        Some("up")
    };
    let reasons: Vec<&str> = down
        .into_iter()
        .chain(unknown)
        .chain(degraded)
        .map(String::as_str)
        .collect();
    Verdict {
        status,
        reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
    }
}

/// A block device node and the kernel's view of it. A node that exists
/// but whose device has size 0 counts as missing: that is what a detached
/// loop device or a drive without its medium looks like, and `/dev` nodes of
/// loop devices outlive their backing file.
pub fn device(path: &Path) -> (Health, Option<(u32, u32)>) {
    let shown = path.display();
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (Health::Down(format!("device {shown} missing")), None);
        }
        Err(e) => return (Health::Unknown(format!("device {shown}: {e}")), None),
    };
    if !metadata.file_type().is_block_device() {
        return (
            Health::Down(format!("device {shown} is not a block device")),
            None,
        );
    }
    let rdev = metadata.rdev();
    let numbers = (
        nix::sys::stat::major(rdev) as u32,
        nix::sys::stat::minor(rdev) as u32,
    );
    let size_file = format!("/sys/dev/block/{}:{}/size", numbers.0, numbers.1);
    let health = match std::fs::read_to_string(&size_file) {
        Ok(size) => device_size(path, size.trim()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Health::Down(format!(
            "device {shown} missing (the kernel has no block device {}:{})",
            numbers.0, numbers.1
        )),
        Err(e) => Health::Unknown(format!("{size_file}: {e}")),
    };
    (health, Some(numbers))
}

fn device_size(path: &Path, sectors: &str) -> Health {
    match sectors.parse::<u64>() {
        Ok(0) => Health::Down(format!(
            "device {} missing (size 0: detached or no medium)",
            path.display()
        )),
        Ok(_) => Health::Up,
        Err(_) => Health::Unknown(format!(
            "device {}: unreadable size {sectors:?}",
            path.display()
        )),
    }
}

/// The mount at `path`: missing is down, read-only is degraded (the data
/// is there, but an application that writes will fail), mounted from
/// another device than the configured one is down.
pub fn mount(table: &[MountEntry], path: &Path, device: Option<(&Path, (u32, u32))>) -> Health {
    let shown = path.display();
    let Some(entry) = mountinfo::find(table, path) else {
        return Health::Down(format!("{shown} not mounted"));
    };
    if let Some((device_path, numbers)) = device {
        // Major 0 is an anonymous device (btrfs, overlay): nothing to compare.
        if entry.device.0 != 0 && entry.device != numbers {
            return Health::Down(format!(
                "{shown} is mounted from {} ({}:{}), not from {}",
                entry.source,
                entry.device.0,
                entry.device.1,
                device_path.display()
            ));
        }
    }
    if entry.read_only {
        return Health::Degraded(format!("{shown} mounted read-only"));
    }
    Health::Up
}

/// Reads `/sys/block/<md>/md/array_state` and `degraded`.
pub fn md(name: &str) -> Health {
    let dir = Path::new("/sys/block").join(name);
    if !dir.exists() {
        return Health::Down(format!("md {name} missing"));
    }
    let state_file = dir.join("md/array_state");
    let state = match std::fs::read_to_string(&state_file) {
        Ok(state) => state,
        Err(e) => return Health::Unknown(format!("{}: {e}", state_file.display())),
    };
    let degraded = std::fs::read_to_string(dir.join("md/degraded")).ok();
    md_state(name, state.trim(), degraded.as_deref().map(str::trim))
}

/// Maps md's `array_state` (see the kernel's md.rst) and `degraded` count
/// to a verdict.
pub fn md_state(name: &str, array_state: &str, degraded: Option<&str>) -> Health {
    match array_state {
        // Usable states; `read-auto` is an assembled array not yet written to.
        "clean" | "active" | "active-idle" | "write-pending" | "read-auto" => {
            match degraded.map(str::parse::<u64>) {
                Some(Ok(0)) | None => Health::Up,
                Some(Ok(n)) => Health::Degraded(format!(
                    "md {name} is degraded: {n} member{} missing",
                    if n == 1 { "" } else { "s" }
                )),
                Some(Err(_)) => Health::Unknown(format!("md {name}: unreadable degraded count")),
            }
        }
        "readonly" => Health::Degraded(format!("md {name} is read-only")),
        "clear" | "inactive" | "suspended" | "broken" => {
            Health::Down(format!("md {name} is {array_state}"))
        }
        other => Health::Unknown(format!("md {name}: unknown array_state {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_worst_first() {
        fn check(checks: &[Health], status: Option<&str>, reason: Option<&str>) {
            let verdict = combine(checks);
            assert_eq!(verdict.status, status, "{checks:?}");
            assert_eq!(verdict.reason.as_deref(), reason, "{checks:?}");
        }
        let down = || Health::Down("device gone".into());
        let degraded = || Health::Degraded("ro".into());
        let unknown = || Health::Unknown("vgs timed out".into());
        check(&[Health::Up, Health::Up], Some("up"), None);
        check(&[Health::Up, degraded()], Some("degraded"), Some("ro"));
        check(&[unknown(), degraded()], None, Some("vgs timed out; ro"));
        check(
            &[degraded(), unknown(), down()],
            Some("down"),
            Some("device gone; vgs timed out; ro"),
        );
    }

    #[test]
    fn md_states() {
        fn check(state: &str, degraded: Option<&str>, expect: &str) {
            let got = match md_state("md0", state, degraded) {
                Health::Up => "up".to_owned(),
                Health::Degraded(r) => format!("degraded: {r}"),
                Health::Down(r) => format!("down: {r}"),
                Health::Unknown(r) => format!("unknown: {r}"),
            };
            assert_eq!(got, expect, "{state} {degraded:?}");
        }
        check("clean", Some("0"), "up");
        check("active", Some("0"), "up");
        check("read-auto", None, "up");
        check(
            "active",
            Some("1"),
            "degraded: md md0 is degraded: 1 member missing",
        );
        check(
            "clean",
            Some("2"),
            "degraded: md md0 is degraded: 2 members missing",
        );
        check("readonly", Some("0"), "degraded: md md0 is read-only");
        check("inactive", None, "down: md md0 is inactive");
        check("broken", Some("1"), "down: md md0 is broken");
        check("clear", None, "down: md md0 is clear");
        check(
            "clean",
            Some("x"),
            "unknown: md md0: unreadable degraded count",
        );
        check(
            "frobbed",
            None,
            "unknown: md md0: unknown array_state \"frobbed\"",
        );
    }

    #[test]
    fn device_sizes() {
        let path = Path::new("/dev/loop7");
        assert_eq!(device_size(path, "32768"), Health::Up);
        assert!(matches!(device_size(path, "0"), Health::Down(r) if r.contains("size 0")));
        assert!(matches!(device_size(path, "?"), Health::Unknown(_)));
    }

    #[test]
    fn mounts() {
        let table = mountinfo::parse(
            "30 1 7:3 / /srv/data rw - ext4 /dev/loop3 rw\n\
             31 1 7:4 / /srv/ro rw - ext4 /dev/loop4 ro\n\
             32 1 0:40 / /srv/btrfs rw - btrfs /dev/sdc rw\n",
        );
        let loop3 = Path::new("/dev/loop3");
        assert_eq!(
            mount(&table, Path::new("/srv/data"), Some((loop3, (7, 3)))),
            Health::Up
        );
        assert_eq!(
            mount(&table, Path::new("/srv/data"), Some((loop3, (7, 9)))),
            Health::Down("/srv/data is mounted from /dev/loop3 (7:3), not from /dev/loop3".into())
        );
        assert_eq!(
            mount(&table, Path::new("/srv/btrfs"), Some((loop3, (8, 32)))),
            Health::Up
        );
        assert_eq!(
            mount(&table, Path::new("/srv/ro"), None),
            Health::Degraded("/srv/ro mounted read-only".into())
        );
        assert_eq!(
            mount(&table, Path::new("/srv"), None),
            Health::Down("/srv not mounted".into())
        );
    }

    #[test]
    fn real_devices() {
        // /dev/null exists on every Linux box and is not a block device.
        let (health, _) = device(Path::new("/dev/null"));
        assert_eq!(
            health,
            Health::Down("device /dev/null is not a block device".into())
        );
        let (health, _) = device(Path::new("/dev/vigil-no-such-device"));
        assert_eq!(
            health,
            Health::Down("device /dev/vigil-no-such-device missing".into())
        );
        assert_eq!(
            md("md-vigil-none"),
            Health::Down("md md-vigil-none missing".into())
        );
    }
}
