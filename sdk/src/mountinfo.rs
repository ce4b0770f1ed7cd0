//! The mount table as Linux's `/proc/self/mountinfo` shows it, the state of
//! one mount point in it, and [`MountWatch`], which wakes an event thread
//! when the table changes.
//!
//! Parsing is a pure function of the file's text so it can be tested on
//! recorded tables. This module does not look at the file system behind a
//! mount (`statvfs` and device checks stay with the monitor), and it does
//! not say what changed: on a wake-up, read the table again and compare.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::events::Watch;

/// Where the kernel publishes the mount table of the caller's namespace.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of mountinfo, reduced to what the monitors need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    /// `major:minor` of the mounted device (major 0 for virtual and some
    /// multi-device file systems).
    pub device: (u32, u32),
    /// Read-only either per mount (`mount -o remount,ro,bind`) or for the
    /// whole superblock (`mount -o remount,ro`, or an error remount).
    pub read_only: bool,
    pub fs_type: String,
    pub source: String,
}

/// An open mountinfo file, for an event thread to wait on: the kernel
/// raises `POLLPRI` on it at every mount, remount and unmount in the
/// caller's mount namespace after it was opened (and after each wake-up
/// reported since).
///
/// Open it before reading the table for the first time, in
/// [`Monitor::start`](crate::Monitor::start) rather than on the thread, so
/// that no change made after `start` returns goes unnoticed.
#[derive(Debug)]
pub struct MountWatch {
    file: File,
}

impl MountWatch {
    pub fn open() -> std::io::Result<Self> {
        Ok(Self {
            file: File::open(MOUNTINFO)?,
        })
    }

    /// What to pass to [`events::wait`](crate::events::wait) or
    /// [`StopSignal::wait`](crate::events::StopSignal::wait); ready once
    /// the mount table has changed.
    pub fn watch(&self) -> Watch<'_> {
        Watch::priority(self.file.as_fd())
    }
}

/// What a configured path looks like in the mount table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountState {
    ReadWrite,
    ReadOnly,
    NotMounted,
}

/// Parses mountinfo text; lines that do not have the documented shape are
/// skipped rather than failing the whole table.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// Reads and parses the current mount table.
pub fn read() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string(MOUNTINFO)?))
}

// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
// (1)(2)(3)   (4)   (5)      (6)      (7)    (8) (9)   (10)         (11)
fn parse_line(line: &str) -> Option<MountEntry> {
    let (before, after) = line.split_once(" - ")?;
    let mut fields = before.split(' ');
    let _mount_id = fields.next()?;
    let _parent_id = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let _root = fields.next()?;
    let mount_point = unescape(fields.next()?);
    let mount_options = fields.next()?;
    let mut after = after.split(' ');
    let fs_type = after.next()?.to_owned();
    let source = String::from_utf8_lossy(unescape(after.next()?).as_os_str().as_encoded_bytes())
        .into_owned();
    let super_options = after.next().unwrap_or("");
    let is_ro = |options: &str| options.split(',').any(|o| o == "ro");
    Some(MountEntry {
        mount_point,
        device: (major.parse().ok()?, minor.parse().ok()?),
        read_only: is_ro(mount_options) || is_ro(super_options),
        fs_type,
        source,
    })
}

/// The kernel escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The entry visible at `path`: when mounts are stacked on one mount point,
/// the last one listed is on top.
pub fn find<'a>(table: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    table.iter().rev().find(|entry| entry.mount_point == path)
}

/// Whether `path` is a mount point, and mounted read-only or read-write.
pub fn state(table: &[MountEntry], path: &Path) -> MountState {
    match find(table, path) {
        None => MountState::NotMounted,
        Some(entry) if entry.read_only => MountState::ReadOnly,
        Some(_) => MountState::ReadWrite,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
40 27 0:35 / /srv/my\\040data rw,nosuid - tmpfs tmpfs rw,size=1024k
41 27 7:0 / /srv/ro rw,relatime - ext4 /dev/loop0 ro
42 27 7:1 / /srv/bind ro,relatime - ext4 /dev/loop1 rw
43 27 0:36 / /srv/stack rw - tmpfs tmpfs rw
44 27 7:2 / /srv/stack ro - ext4 /dev/loop2 rw
garbage line without separator
";

    fn check(path: &str, expect: MountState) {
        let table = parse(TABLE);
        assert_eq!(state(&table, Path::new(path)), expect, "{path}");
    }

    #[test]
    fn states_from_a_recorded_table() {
        check("/", MountState::ReadWrite);
        check("/srv/my data", MountState::ReadWrite);
        check("/srv/ro", MountState::ReadOnly);
        check("/srv/bind", MountState::ReadOnly);
        // The later (upper) mount hides the lower one.
        check("/srv/stack", MountState::ReadOnly);
        check("/srv", MountState::NotMounted);
        check("/srv/my\\040data", MountState::NotMounted);
    }

    #[test]
    fn fields() {
        let table = parse(TABLE);
        assert_eq!(table.len(), 7, "the garbage line is skipped");
        let root = find(&table, Path::new("/")).expect("root is listed");
        assert_eq!(root.device, (8, 1));
        assert_eq!(root.fs_type, "ext4");
        assert_eq!(root.source, "/dev/sda1");
    }

    #[test]
    fn unescape_keeps_bad_escapes_verbatim() {
        assert_eq!(unescape("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape("/a\\134b"), PathBuf::from("/a\\b"));
        assert_eq!(unescape("/a\\9"), PathBuf::from("/a\\9"));
        assert_eq!(unescape("/a\\"), PathBuf::from("/a\\"));
    }

    /// A tmpfs mounted for the test; unmounted and removed on drop, even
    /// when an assertion fails first.
    struct Tmpfs(PathBuf);

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .args(["-l", "--"])
                .arg(&self.0)
                .status();
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    #[test]
    fn watch_wakes_on_a_mount_made_after_it_was_opened() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            if std::env::var("VIGIL_SKIP_PRIVILEGED").as_deref() == Ok("1") {
                eprintln!("mountinfo watch test skipped: needs root (VIGIL_SKIP_PRIVILEGED=1)");
                return;
            }
            panic!("this test needs root to mount tmpfs; set VIGIL_SKIP_PRIVILEGED=1 to skip");
        }
        let watch = MountWatch::open().expect("open mountinfo");
        let dir = std::env::temp_dir().join(format!("vigil-sdk-mountinfo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create mount point");
        let dir = std::fs::canonicalize(&dir).expect("canonical mount point");
        let guard = Tmpfs(dir.clone());
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs", "--"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs on {}", dir.display());
        // Other tests mount and unmount concurrently, so an earlier wake-up
        // may be theirs: wait until one shows this mount.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left = give_up.saturating_duration_since(std::time::Instant::now());
            let ready = crate::events::wait(&[watch.watch()], Some(left)).expect("wait");
            assert!(ready[0], "no mount change reported within 10 s");
            let table = read().expect("read mountinfo");
            if state(&table, &dir) == MountState::ReadWrite {
                break;
            }
        }
        drop(guard);
    }
}
