//! Usage numbers from `statvfs`, computed the way `df` does.
//!
//! Pure arithmetic on the raw counters so that it can be checked on recorded
//! values; the `statvfs` call itself (and its timeout) lives in the crate
//! root.

/// The raw counters of one `statvfs` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    pub fragment_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    /// Free blocks an unprivileged user may use (free minus the reserve).
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
}

impl From<&nix::sys::statvfs::Statvfs> for FsStats {
    fn from(s: &nix::sys::statvfs::Statvfs) -> Self {
        Self {
            fragment_size: s.fragment_size(),
            blocks: s.blocks(),
            blocks_free: s.blocks_free(),
            blocks_available: s.blocks_available(),
            files: s.files(),
            files_free: s.files_free(),
        }
    }
}

/// What `fs` publishes for one mount.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// `df`'s Use%: used / (used + available), so blocks reserved for root
    /// count as unavailable and a full file system reads 100 %.
    pub used_percent: f64,
    /// Space an unprivileged writer can still use, in MB of 2^20 bytes.
    pub avail_mb: f64,
    /// `None` for file systems without a fixed inode table (btrfs, some
    /// network file systems report zero inodes).
    pub inodes_used_percent: Option<f64>,
}

impl From<&FsStats> for Usage {
    fn from(s: &FsStats) -> Self {
        let used = s.blocks.saturating_sub(s.blocks_free);
        let usable = used + s.blocks_available;
        let used_percent = if usable == 0 {
            0.0
        } else {
            percent(used, usable)
        };
        let avail_mb = (s.blocks_available as f64) * (s.fragment_size as f64) / 1_048_576.0;
        let inodes_used_percent =
            (s.files > 0).then(|| percent(s.files.saturating_sub(s.files_free), s.files));
        Self {
            used_percent,
            avail_mb: round2(avail_mb),
            inodes_used_percent,
        }
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    round2(part as f64 * 100.0 / whole as f64)
}

/// Two decimals are plenty for a threshold and keep samples readable.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(stats: FsStats, used: f64, avail_mb: f64, inodes: Option<f64>) {
        let usage = Usage::from(&stats);
        assert_eq!(
            usage,
            Usage {
                used_percent: used,
                avail_mb,
                inodes_used_percent: inodes
            }
        );
    }

    fn stats(blocks: u64, free: u64, avail: u64, files: u64, ffree: u64) -> FsStats {
        FsStats {
            fragment_size: 4096,
            blocks,
            blocks_free: free,
            blocks_available: avail,
            files,
            files_free: ffree,
        }
    }

    #[test]
    fn usage_like_df() {
        // Empty 1 MiB tmpfs: 256 pages, all free, no reserve.
        check(stats(256, 256, 256, 1000, 999), 0.0, 1.0, Some(0.1));
        // Half full.
        check(stats(256, 128, 128, 1000, 998), 50.0, 0.5, Some(0.2));
        // ext4 with a 5 % reserve, reserve not available: 90 used of 95 usable.
        check(stats(100, 10, 5, 10, 5), 94.74, 0.02, Some(50.0));
        // Full up to the reserve.
        check(stats(100, 5, 0, 10, 0), 100.0, 0.0, Some(100.0));
        // btrfs-like: no inode table.
        check(stats(100, 100, 100, 0, 0), 0.0, 0.39, None);
        // Nothing at all (a pseudo file system).
        check(stats(0, 0, 0, 0, 0), 0.0, 0.0, None);
    }
}
