//! Drop guards for the system objects the fault-injection tests create:
//! network namespaces, veth pairs, mounts, loop devices, LVM volume groups,
//! POSIX and System V shared-memory segments.
//!
//! Each guard undoes what it made when dropped, also when the test panics,
//! and ignores errors while doing so (the object may already be gone: that
//! is often what the test did to it). Names include the process id so that
//! test processes running in parallel never share an object. The guards do
//! not check privileges: callers check [`crate::privileged`] first.

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::{MntFlags, MsFlags};

/// `vigil-<pid>-<tag>`: a name no other test process uses.
pub fn unique(tag: &str) -> String {
    format!("vigil-{}-{tag}", std::process::id())
}

/// Runs a program without a shell, ignoring its outcome (for cleanup).
fn quietly(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs a program without a shell, panicking with its output on failure;
/// returns its trimmed stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A network namespace, deleted with every link in it on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        run("ip", &["netns", "add", &name]);
        Self { name }
    }

    /// Runs `ip -n <ns> args…`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// The wrapper that runs a program inside this namespace, for
    /// [`crate::ConfigDir::start_host_with`].
    pub fn exec_prefix(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        quietly("ip", &["netns", "del", &self.name]);
    }
}

/// One end of a veth pair: its name and the namespace it lives in.
#[derive(Debug, Clone)]
pub struct VethEnd {
    pub name: String,
    pub netns: String,
}

impl VethEnd {
    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.netns.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// `ip link set <end> up|down` inside its namespace.
    pub fn set(&self, up: bool) {
        self.ip(&["link", "set", &self.name, if up { "up" } else { "down" }]);
    }

    /// Adds an address (`10.1.2.1/30`) and brings the end up.
    pub fn address(&self, cidr: &str) {
        self.ip(&["addr", "add", cidr, "dev", &self.name]);
        self.set(true);
    }
}

/// A veth pair joining two namespaces; deleting one end deletes both, and
/// deleting either namespace does too.
pub struct Veth {
    pub a: VethEnd,
    pub b: VethEnd,
}

impl Veth {
    /// `tag` is at most two characters so names stay within IFNAMSIZ.
    pub fn new(tag: &str, a: &Netns, b: &Netns) -> Self {
        let pid = std::process::id();
        let end = |side: &str, ns: &Netns| VethEnd {
            name: format!("v{pid}{tag}{side}"),
            netns: ns.name.clone(),
        };
        let this = Self {
            a: end("a", a),
            b: end("b", b),
        };
        run(
            "ip",
            &[
                "link",
                "add",
                this.a.name.as_str(),
                "netns",
                a.name.as_str(),
                "type",
                "veth",
                "peer",
                "name",
                this.b.name.as_str(),
                "netns",
                b.name.as_str(),
            ],
        );
        this
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        quietly("ip", &["-n", &self.a.netns, "link", "del", &self.a.name]);
    }
}

/// Something mounted on a fresh directory; unmounted (every layer) and the
/// directory removed on drop.
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    fn at(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self { dir }
    }

    /// A tmpfs of `bytes` bytes.
    pub fn tmpfs(tag: &str, bytes: u64) -> Self {
        let this = Self::at(tag);
        nix::mount::mount(
            Some("tmpfs"),
            &this.dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("size={bytes},mode=0700").as_str()),
        )
        .unwrap_or_else(|e| panic!("mount tmpfs on {}: {e}", this.dir.display()));
        this
    }

    /// An ext4 file system from `device`.
    pub fn ext4(tag: &str, device: &str) -> Self {
        let this = Self::at(tag);
        nix::mount::mount(
            Some(device),
            &this.dir,
            Some("ext4"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("mount {device} on {}: {e}", this.dir.display()));
        this
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The mount point as text, for monitor params.
    pub fn path_str(&self) -> &str {
        self.dir.to_str().expect("temp dir paths are UTF-8 here")
    }

    /// Remounts read-only (`true`) or read-write.
    pub fn remount_read_only(&self, read_only: bool) {
        let flags = if read_only {
            MsFlags::MS_RDONLY
        } else {
            MsFlags::empty()
        };
        nix::mount::mount(
            None::<&str>,
            &self.dir,
            None::<&str>,
            MsFlags::MS_REMOUNT | flags,
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("remount {}: {e}", self.dir.display()));
    }

    /// Unmounts now (the directory stays until drop).
    pub fn unmount(&self) {
        nix::mount::umount2(&self.dir, MntFlags::empty())
            .unwrap_or_else(|e| panic!("umount {}: {e}", self.dir.display()));
    }

    /// Writes a file of `bytes` zero bytes into the mount.
    pub fn fill(&self, name: &str, bytes: usize) -> PathBuf {
        let file = self.dir.join(name);
        std::fs::write(&file, vec![0u8; bytes])
            .unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        file
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        while nix::mount::umount2(&self.dir, MntFlags::MNT_DETACH).is_ok() {}
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A loop device over a sparse file of `bytes`; detached and the file
/// removed on drop.
pub struct LoopDevice {
    pub device: String,
    file: PathBuf,
    attached: bool,
}

impl LoopDevice {
    pub fn new(tag: &str, bytes: u64) -> Self {
        let file = std::env::temp_dir().join(format!("{}.img", unique(tag)));
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(bytes))
            .unwrap_or_else(|e| panic!("create {}: {e}", file.display()));
        let mut this = Self {
            device: String::new(),
            file,
            attached: false,
        };
        let path = this.file.to_str().expect("temp dir paths are UTF-8 here");
        this.device = run("losetup", &["-f", "--show", path]);
        this.attached = true;
        this
    }

    /// Formats the device as ext4.
    pub fn mkfs_ext4(&self) {
        run("mkfs.ext4", &["-q", "-F", &self.device]);
    }

    /// Detaches the device now, as a disk that disappears.
    pub fn detach(&mut self) {
        run("losetup", &["-d", &self.device]);
        self.attached = false;
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if self.attached {
            quietly("losetup", &["-d", &self.device]);
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// An LVM volume group over `devices`; removed with its PV labels on drop.
/// Declare it after its [`LoopDevice`]s so that it is dropped first.
pub struct VolumeGroup {
    pub name: String,
    devices: Vec<String>,
}

impl VolumeGroup {
    pub fn new(name: &str, devices: &[&str]) -> Self {
        let this = Self {
            name: name.to_owned(),
            devices: devices.iter().map(|d| (*d).to_owned()).collect(),
        };
        let mut args = vec!["-q"];
        args.extend_from_slice(devices);
        run("pvcreate", &args);
        let mut args = vec!["-q", name];
        args.extend_from_slice(devices);
        run("vgcreate", &args);
        this
    }

    /// Its tags, as `vgs` prints them.
    pub fn tags(&self) -> String {
        run("vgs", &["--noheadings", "-o", "vg_tags", &self.name])
    }
}

/// A volume group on a loop device of its own (16 MiB), for a test of
/// volume group parts; the group goes before its device is detached.
pub struct ScratchVolumeGroup {
    pub vg: VolumeGroup,
    _disk: LoopDevice,
}

impl ScratchVolumeGroup {
    /// Fails loudly without lvm2 or loop devices.
    pub fn new(label: &str) -> Self {
        require_tools(&[
            ("vgcreate", "lvm2"),
            ("vgchange", "lvm2"),
            ("losetup", "util-linux"),
        ]);
        require_loop_devices();
        let disk = LoopDevice::new(label, 16 << 20);
        let name = unique(label).replace('-', "_");
        let vg = VolumeGroup::new(&name, &[&disk.device]);
        Self { vg, _disk: disk }
    }
}

impl Drop for VolumeGroup {
    fn drop(&mut self) {
        quietly("vgremove", &["-f", &self.name]);
        for device in &self.devices {
            quietly("pvremove", &["-ff", "-y", device]);
        }
    }
}

/// A POSIX shared-memory segment (`shm_open`); unlinked on drop.
pub struct PosixShm {
    pub name: String,
    linked: bool,
}

impl PosixShm {
    /// Creates `/<name>` with `O_EXCL`, so a leftover is an error.
    pub fn create(name: &str) -> Self {
        use nix::fcntl::OFlag;
        use nix::sys::stat::Mode;
        let fd = nix::sys::mman::shm_open(
            format!("/{name}").as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .unwrap_or_else(|e| panic!("shm_open /{name}: {e}"));
        drop(fd);
        Self {
            name: name.to_owned(),
            linked: true,
        }
    }

    pub fn unlink(&mut self) {
        nix::sys::mman::shm_unlink(format!("/{}", self.name).as_str())
            .unwrap_or_else(|e| panic!("shm_unlink /{}: {e}", self.name));
        self.linked = false;
    }
}

impl Drop for PosixShm {
    fn drop(&mut self) {
        if self.linked {
            let _ = nix::sys::mman::shm_unlink(format!("/{}", self.name).as_str());
        }
    }
}

/// A System V shared-memory segment; detached and removed on drop.
pub struct SysvShm {
    pub key: libc::key_t,
    id: Option<libc::c_int>,
    attached: Option<*mut c_void>,
}

impl SysvShm {
    /// A key no other test process uses: derived from the process id.
    pub fn unique_key() -> libc::key_t {
        // Process ids are below 2^22, so this stays positive and non-zero.
        0x5600_0000 | std::process::id() as libc::key_t
    }

    /// Creates a 4 KiB segment with `key`, failing if it exists.
    pub fn create(key: libc::key_t) -> Self {
        // SAFETY: shmget takes plain integers and has no memory effects.
        let id = unsafe { libc::shmget(key, 4096, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
        assert!(
            id >= 0,
            "shmget {key:#010x}: {}",
            std::io::Error::last_os_error()
        );
        Self {
            key,
            id: Some(id),
            attached: None,
        }
    }

    pub fn attach(&mut self) {
        let id = self.id.expect("segment not removed");
        // SAFETY: a null address lets the kernel choose where to map; the
        // mapping is only touched again by shmdt.
        let addr = unsafe { libc::shmat(id, std::ptr::null(), 0) };
        assert!(
            addr as isize != -1,
            "shmat {}: {}",
            self.key,
            std::io::Error::last_os_error()
        );
        self.attached = Some(addr);
    }

    pub fn detach(&mut self) {
        if let Some(addr) = self.attached.take() {
            // SAFETY: addr came from shmat and was not detached before.
            let rc = unsafe { libc::shmdt(addr) };
            assert_eq!(rc, 0, "shmdt: {}", std::io::Error::last_os_error());
        }
    }

    /// `IPC_RMID`.
    pub fn remove(&mut self) {
        if let Some(id) = self.id.take() {
            // SAFETY: IPC_RMID ignores the buffer argument.
            let rc = unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
            assert_eq!(
                rc,
                0,
                "shmctl IPC_RMID: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    /// The key as the shm monitor publishes it (`0x` and eight hex digits).
    pub fn key_segment(&self) -> String {
        format!("0x{:08x}", self.key)
    }
}

impl Drop for SysvShm {
    fn drop(&mut self) {
        if let Some(addr) = self.attached.take() {
            // SAFETY: addr came from shmat and was not detached before.
            unsafe { libc::shmdt(addr) };
        }
        if let Some(id) = self.id.take() {
            // SAFETY: IPC_RMID ignores the buffer argument.
            unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
        }
    }
}

/// Panics unless every tool is found on PATH or in the sbin directories
/// (which a non-login root shell may leave off PATH).
pub fn require_tools(tools: &[(&str, &str)]) {
    for (tool, package) in tools {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(tool).is_file());
        if !found {
            crate::require_tool(tool, package);
        }
    }
}

/// Panics with a clear message unless `/dev/loop-control` exists: loop
/// devices are needed, not optional.
pub fn require_loop_devices() {
    assert!(
        Path::new("/dev/loop-control").exists(),
        "/dev/loop-control is missing: loop devices are needed (modprobe loop)"
    );
}
