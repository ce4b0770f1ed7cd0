//! `[[filesystem]]`: an optional `fsck -p`, `mount` with the type and
//! options; on halt the processes using the file system are killed (as
//! `fuser -km` does: SIGTERM, SIGKILL after the grace period), then it is
//! unmounted. A lazy unmount (`MNT_DETACH`) is the logged last resort when
//! something still holds it.
//!
//! Users are found through `/proc/<pid>/{cwd,root,exe,fd/*}` and the
//! mapped files of `/proc/<pid>/maps`, by the device number of the mounted
//! file system (as `fuser -m` does), so a file reached through another path
//! (a bind mount) counts too. It does not look into other mount namespaces
//! than the device number reaches, and does not manage `/etc/fstab`.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{tool, tool_ok};

/// How long `fsck -p` may take.
const FSCK_TIMEOUT: Duration = Duration::from_secs(600);

/// Checks (when asked) and mounts `device` on `mount`, creating the mount
/// point if missing. Refuses a mount point that already has something
/// mounted on it.
pub fn mount(
    device: &str,
    mount: &Path,
    fstype: &str,
    options: Option<&str>,
    fsck: bool,
) -> Result<(), String> {
    if is_mount_point(mount)? {
        return Err(format!(
            "something is already mounted on {}",
            mount.display()
        ));
    }
    if fsck {
        // -p repairs what is safe to repair; 0 = clean, 1 = repaired.
        let mut out = tool("fsck", &["-p", "-t", fstype, device], &[], FSCK_TIMEOUT)?;
        // Something holds the device for a while — a device probe (udev's
        // blkid after a device appears), or a copy of its last mount in a
        // mount namespace created while it was mounted, which lives until
        // that namespace does: e2fsck then says "in use" and gives up.
        // Wait up to 10 s before failing the start.
        for _ in 0..50 {
            if out.code != Some(8) || !out.stdout.contains("is in use") {
                break;
            }
            tracing::warn!(%device, "device briefly in use; retrying fsck");
            std::thread::sleep(Duration::from_millis(200));
            out = tool("fsck", &["-p", "-t", fstype, device], &[], FSCK_TIMEOUT)?;
        }
        match out.code {
            Some(0) | Some(1) => {}
            // e2fsck says why on stdout and only "cannot continue" on stderr.
            _ => {
                return Err(format!(
                    "{} ({})",
                    out.describe(&format!("fsck -p {device}")),
                    out.stdout.trim().lines().last().unwrap_or("")
                ));
            }
        }
    }
    std::fs::create_dir_all(mount)
        .map_err(|e| format!("cannot create mount point {}: {e}", mount.display()))?;
    let target = mount.to_str().ok_or("mount point is not UTF-8")?;
    let mut args = vec!["-t", fstype];
    if let Some(options) = options {
        args.extend(["-o", options]);
    }
    args.extend([device, target]);
    tool_ok("mount", &args).map(drop)
}

/// Whether `path` is the mount point of something in this namespace.
fn is_mount_point(path: &Path) -> Result<bool, String> {
    let table = vigil_sdk::mountinfo::read().map_err(|e| format!("cannot read mountinfo: {e}"))?;
    Ok(vigil_sdk::mountinfo::find(&table, path).is_some())
}

/// Kills the users of the file system on `mount` (SIGTERM, then SIGKILL
/// after `grace`) and unmounts it. Nothing mounted there is success.
pub fn unmount(mount: &Path, grace: Duration) -> Result<(), String> {
    if !is_mount_point(mount)? {
        tracing::info!(mount = %mount.display(), "not mounted; nothing to unmount");
        return Ok(());
    }
    let dev = std::fs::metadata(mount)
        .map_err(|e| format!("cannot stat {}: {e}", mount.display()))?
        .dev();
    for attempt in 0..3 {
        kill_users(dev, mount, grace);
        match umount2(mount, MntFlags::empty()) {
            Ok(()) => return Ok(()),
            // Not a mount point (any more): someone else unmounted it.
            Err(nix::errno::Errno::EINVAL) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) => {
                tracing::warn!(mount = %mount.display(), attempt, "file system still busy after killing its users");
            }
            Err(e) => return Err(format!("cannot unmount {}: {e}", mount.display())),
        }
    }
    // Something we cannot see (another namespace, a kernel user such as a
    // loop device or swap file) holds it. Detaching lets the package move;
    // the device stays busy until that user lets go.
    tracing::error!(mount = %mount.display(), "file system still busy; detaching it lazily (MNT_DETACH) as a last resort");
    umount2(mount, MntFlags::MNT_DETACH)
        .map_err(|e| format!("cannot unmount {} even lazily: {e}", mount.display()))
}

/// SIGTERM to every process using device `dev`, SIGKILL to those left
/// after `grace`, then a bounded wait for them to go.
fn kill_users(dev: u64, mount: &Path, grace: Duration) {
    let users = users_of(dev);
    if users.is_empty() {
        return;
    }
    tracing::warn!(mount = %mount.display(), pids = ?users, "killing processes using the file system (SIGTERM)");
    for pid in &users {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    if wait_gone(dev, grace) {
        return;
    }
    let left = users_of(dev);
    tracing::warn!(mount = %mount.display(), pids = ?left, ?grace, "processes outlived SIGTERM; SIGKILL");
    for pid in &left {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    wait_gone(dev, Duration::from_secs(5));
}

/// Waits until no process uses `dev`; false on timeout.
fn wait_gone(dev: u64, timeout: Duration) -> bool {
    let start = Instant::now();
    loop {
        if users_of(dev).is_empty() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The processes (other than this one) with a file, directory, root,
/// executable or mapping on device `dev`. Zombies hold nothing.
pub fn users_of(dev: u64) -> BTreeSet<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| uses(*pid, dev))
        .collect()
}

fn uses(pid: i32, dev: u64) -> bool {
    let base = format!("/proc/{pid}");
    let on_dev = |path: &str| std::fs::metadata(path).is_ok_and(|m| m.dev() == dev);
    if ["cwd", "root", "exe"]
        .iter()
        .any(|l| on_dev(&format!("{base}/{l}")))
    {
        return true;
    }
    if let Ok(fds) = std::fs::read_dir(format!("{base}/fd"))
        && fds
            .filter_map(Result::ok)
            .any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev))
    {
        return true;
    }
    std::fs::read_to_string(format!("{base}/maps")).is_ok_and(|maps| maps_use_device(&maps, dev))
}

/// Whether a `/proc/<pid>/maps` text maps a file of device `dev` (field 4
/// is the device as `major:minor` in hex).
fn maps_use_device(maps: &str, dev: u64) -> bool {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    maps.lines().any(|line| {
        let Some(field) = line.split_whitespace().nth(3) else {
            return false;
        };
        let Some((ma, mi)) = field.split_once(':') else {
            return false;
        };
        let inode = line.split_whitespace().nth(4).unwrap_or("0");
        inode != "0"
            && u32::from_str_radix(ma, 16).is_ok_and(|m| m == major)
            && u32::from_str_radix(mi, 16).is_ok_and(|m| m == minor)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_name_their_device_in_hex() {
        let maps = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 07:0a 12       /mnt/x/bin
7f0000000000-7f0000001000 rw-p 00000000 00:00 0 
";
        let check =
            |dev: u64, expect: bool| assert_eq!(maps_use_device(maps, dev), expect, "{dev:x}");
        check(libc::makedev(7, 10), true);
        check(libc::makedev(7, 1), false);
        // Anonymous mappings (inode 0) use no device.
        check(libc::makedev(0, 0), false);
    }
}
