//! Loading dylib monitors and running each instance on its own thread.
//!
//! Before a library is opened its file and the directory holding it must be
//! owned by root or by the daemon's user and writable by nobody else. The
//! file is then copied once, by the kernel, into a sealed private `memfd`;
//! the copy is checked to be a complete ELF shared object (header, program
//! and section header tables, every loadable segment inside the file) and
//! loaded, never the path: a partial copy left by a deploy is refused with a
//! message instead of killing the host with SIGBUS when the loader touches
//! pages past its end, and a file rewritten after the check cannot change
//! what runs. Once opened, its ABI version is read through a
//! fixed-signature symbol before anything else. Each monitor
//! instance lives on a dedicated worker thread, so a poll that hangs blocks
//! only that thread: the scheduler stops waiting at the deadline and marks
//! the monitor's resources unknown. A hung thread cannot be killed; it is
//! abandoned and no further poll is sent to it until it returns.
//!
//! Libraries stay loaded for as long as the process runs: a loaded file is
//! remembered by its identity (device, inode, size, times), so loading the
//! same unchanged plugin again reuses it, and a changed one is loaded anew.
//! Unloading one while its threads run would crash the host.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libloading::Library;
use vigil_sdk::abi::{
    ABI_VERSION, ABI_VERSION_SYMBOL, AbiError, AbiInstance, PushHandler, VTABLE_SYMBOL,
    VigilMonitorVtable, check_vtable,
};
use vigil_sdk::{ResourcePattern, Sample};

/// Why a plugin was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin {name:?} not found (looked in {searched})")]
    NotFound { name: String, searched: String },
    #[error("plugin {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plugin {} is writable by group or others (mode {mode:o}); refusing to load it", path.display())]
    Writable { path: PathBuf, mode: u32 },
    #[error("plugin {} is owned by uid {owner}, not root or the daemon's uid {me}; refusing to load it", path.display())]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error("plugin directory {} is writable by group or others (mode {mode:o}), so anyone could swap {}; refusing to load it", dir.display(), path.display())]
    DirWritable {
        dir: PathBuf,
        path: PathBuf,
        mode: u32,
    },
    #[error("plugin directory {} is owned by uid {owner}, not root or the daemon's uid {me}, so its owner could swap {}; refusing to load it", dir.display(), path.display())]
    DirOwner {
        dir: PathBuf,
        path: PathBuf,
        owner: u32,
        me: u32,
    },
    #[error("plugin {} is not a complete ELF shared object ({detail}); a partial copy? refusing to load it", path.display())]
    Incomplete { path: PathBuf, detail: String },
    #[error("plugin {} changed while it was read (size {expected} became {read}); refusing to load it", path.display())]
    Changed {
        path: PathBuf,
        expected: u64,
        read: u64,
    },
    #[error("plugin {}: cannot open: {message}", path.display())]
    Open { path: PathBuf, message: String },
    #[error("plugin {}: no `{symbol}` symbol: not a vigil monitor", path.display())]
    Symbol { path: PathBuf, symbol: String },
    #[error("plugin {} has ABI version {found}, this host speaks ABI version {expected}", path.display())]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("plugin {}: {source}", path.display())]
    Abi { path: PathBuf, source: AbiError },
}

/// Finds the library file for `plugin`: a value with a `/` is a path
/// (relative to the config dir); a bare name is searched as `lib<name>.so`,
/// `<name>.so` and `<name>` in `search`.
pub fn resolve(plugin: &str, config_dir: &Path, search: &[PathBuf]) -> Result<PathBuf, LoadError> {
    if plugin.contains('/') {
        return Ok(config_dir.join(plugin));
    }
    let candidates = [
        format!("lib{plugin}.so"),
        format!("{plugin}.so"),
        plugin.to_owned(),
    ];
    for dir in search {
        for file in &candidates {
            let path = dir.join(file);
            if path.is_file() {
                return Ok(path);
            }
        }
    }
    Err(LoadError::NotFound {
        name: plugin.to_owned(),
        searched: search
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The plugin search path: `plugin_path` from cluster.toml, then the
/// directory of the running executable (a build tree), then
/// `<exe dir>/../lib/vigil/plugins` (an install under any prefix, such as
/// `/opt/vigil` or a package unpacked into a scratch root), then the system
/// plugin directory.
pub fn search_path(plugin_path: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = plugin_path.to_vec();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
    {
        if let Some(prefix) = dir.parent() {
            let relative = prefix.join("lib/vigil/plugins");
            dirs.push(dir);
            if relative != Path::new(crate::config::SYSTEM_PLUGIN_DIR) {
                dirs.push(relative);
            }
        } else {
            dirs.push(dir);
        }
    }
    dirs.push(PathBuf::from(crate::config::SYSTEM_PLUGIN_DIR));
    dirs
}

/// Refuses a file that someone other than root or us could have replaced.
pub fn check_permissions(path: &Path) -> Result<(), LoadError> {
    let meta = std::fs::metadata(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    check_file_metadata(path, &meta)
}

fn check_file_metadata(path: &Path, meta: &std::fs::Metadata) -> Result<(), LoadError> {
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(LoadError::Writable {
            path: path.to_owned(),
            mode,
        });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(LoadError::Owner {
            path: path.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    Ok(())
}

/// Refuses a plugin whose directory someone other than root or us could
/// write: they could replace the file between two loads, whatever its mode.
pub fn check_directory(path: &Path) -> Result<(), LoadError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(dir).map_err(|source| LoadError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(LoadError::DirWritable {
            dir: dir.to_owned(),
            path: path.to_owned(),
            mode,
        });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(LoadError::DirOwner {
            dir: dir.to_owned(),
            path: path.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    Ok(())
}

/// Largest plugin file read; a bigger one is refused rather than read.
const MAX_PLUGIN_BYTES: u64 = 512 << 20;

/// Checks that `bytes` are a whole 64-bit ELF shared object for this byte
/// order: the header, the program and section header tables and every
/// `PT_LOAD` segment's file range lie inside the file. Says what is missing.
///
/// It does not check that the code is sane (the loader and the ABI checks
/// do that); it only makes sure the loader will not map pages past the end
/// of the file, which is what a truncated copy makes it do.
pub fn check_elf(bytes: &[u8]) -> Result<(), String> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    const SHDR: usize = 64;
    const PT_LOAD: u32 = 1;
    const ET_DYN: u16 = 3;
    let len = bytes.len() as u64;
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        return Err("no ELF magic at the start".to_owned());
    }
    if bytes.len() < EHDR {
        return Err(format!(
            "the ELF header needs {EHDR} bytes, the file has {len}"
        ));
    }
    if bytes[4] != 2 {
        return Err(format!("ELF class {} is not 64-bit", bytes[4]));
    }
    let little = cfg!(target_endian = "little");
    if bytes[5] != if little { 1 } else { 2 } {
        return Err("ELF byte order is not this machine's".to_owned());
    }
    let u16_at = |at: usize| {
        let b = [bytes[at], bytes[at + 1]];
        if little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }
    };
    let u32_at = |at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&bytes[at..at + 4]);
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        if little {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        }
    };
    if u16_at(16) != ET_DYN {
        return Err(format!("ELF type {} is not a shared object", u16_at(16)));
    }
    // The end of a table of `count` entries of `size` bytes at `offset`, if
    // it fits in the file.
    let table = |what: &str, offset: u64, size: u64, count: u64| -> Result<(), String> {
        let end = size
            .checked_mul(count)
            .and_then(|n| n.checked_add(offset))
            .ok_or_else(|| format!("{what} size overflows"))?;
        if end > len {
            return Err(format!(
                "{what} ends at byte {end}, the file has {len} bytes"
            ));
        }
        Ok(())
    };
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    let (shoff, shentsize, shnum) = (u64_at(40), u16_at(58), u16_at(60));
    if phnum == 0 {
        return Err("no program headers".to_owned());
    }
    if (phentsize as usize) < PHDR {
        return Err(format!("program header entry size {phentsize} < {PHDR}"));
    }
    table(
        "the program header table",
        phoff,
        phentsize as u64,
        phnum as u64,
    )?;
    if shoff != 0 {
        if (shentsize as usize) < SHDR {
            return Err(format!("section header entry size {shentsize} < {SHDR}"));
        }
        // With 0 the count is in the first entry (extended numbering): the
        // first entry at least must be there.
        table(
            "the section header table",
            shoff,
            shentsize as u64,
            (shnum as u64).max(1),
        )?;
    }
    for i in 0..phnum as usize {
        let at = phoff as usize + i * phentsize as usize;
        if u32_at(at) != PT_LOAD {
            continue;
        }
        let (offset, filesz) = (u64_at(at + 8), u64_at(at + 32));
        table(&format!("loadable segment {i}"), offset, filesz, 1)?;
    }
    Ok(())
}

/// A library loaded from a private copy. The copy's descriptor stays open
/// for as long as the library is loaded: the loader knows the library by
/// the name `/proc/self/fd/N`, and a reused `N` would make a later load
/// find this one instead.
#[derive(Debug)]
struct Loaded {
    library: Library,
    _copy: OwnedFd,
}

/// Which file a load came from: the same identity loads the same library.
type FileId = (u64, u64, u64, i64, i64, i64, i64);

fn file_id(meta: &std::fs::Metadata) -> FileId {
    (
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    )
}

/// Every library this process has loaded, by file identity. Never shrinks:
/// an instance's threads may still run code of a library nobody else uses.
static LOADED: Mutex<BTreeMap<FileId, Arc<Loaded>>> = Mutex::new(BTreeMap::new());

/// Checks, copies and opens the library file at `path`, or returns the
/// library already loaded from the same unchanged file.
fn open_private_copy(path: &Path) -> Result<Arc<Loaded>, LoadError> {
    let io = |source: std::io::Error| LoadError::Io {
        path: path.to_owned(),
        source,
    };
    check_directory(path)?;
    let mut file = std::fs::File::open(path).map_err(io)?;
    // The checks apply to the file we read, not to whatever the path names
    // a moment later.
    let meta = file.metadata().map_err(io)?;
    check_file_metadata(path, &meta)?;
    let id = file_id(&meta);
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = loaded.get(&id) {
        return Ok(Arc::clone(found));
    }
    if meta.size() > MAX_PLUGIN_BYTES {
        return Err(LoadError::Incomplete {
            path: path.to_owned(),
            detail: format!("{} bytes is more than {MAX_PLUGIN_BYTES}", meta.size()),
        });
    }
    // The kernel copies (no pass through our memory), the copy is sealed,
    // and the checks read the copy: what is checked is what gets loaded.
    let (copy, copied) = private_copy(path, &mut file).map_err(io)?;
    if copied != meta.size() {
        return Err(LoadError::Changed {
            path: path.to_owned(),
            expected: meta.size(),
            read: copied,
        });
    }
    with_mapping(&copy, copied)
        .map_err(io)?
        .map_err(|detail| LoadError::Incomplete {
            path: path.to_owned(),
            detail,
        })?;
    let proc_path = format!("/proc/self/fd/{}", copy.as_raw_fd());
    // SAFETY: loading runs the library's initialisers; the permission checks
    // above are what make running this code acceptable, and the sealed copy
    // is byte for byte the file that passed them and the ELF check.
    let library = unsafe { Library::new(&proc_path) }.map_err(|e| LoadError::Open {
        path: path.to_owned(),
        message: e
            .to_string()
            .replace(&proc_path, &path.display().to_string()),
    })?;
    let entry = Arc::new(Loaded {
        library,
        _copy: copy,
    });
    loaded.insert(id, Arc::clone(&entry));
    Ok(entry)
}

/// [`check_elf`] on the sealed copy, mapped read-only: only the pages the
/// check reads (the headers) are touched.
fn with_mapping(copy: &OwnedFd, len: u64) -> std::io::Result<Result<(), String>> {
    use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
    let Some(size) = std::num::NonZeroUsize::new(len as usize) else {
        return Ok(Err("the file is empty".to_owned()));
    };
    // SAFETY: a private read-only mapping of a memfd sealed against
    // shrinking and writing: its bytes cannot change or vanish while mapped,
    // so the slice stays valid until the munmap below.
    unsafe {
        let at = mmap(
            None,
            size,
            ProtFlags::PROT_READ,
            MapFlags::MAP_PRIVATE,
            copy,
            0,
        )?;
        let bytes = std::slice::from_raw_parts(at.as_ptr().cast::<u8>(), size.get());
        let verdict = check_elf(bytes);
        munmap(at, size.get())?;
        Ok(verdict)
    }
}

/// A sealed in-memory copy of `file` and how many bytes it holds: nobody, us
/// included, can change its size or contents once written.
fn private_copy(path: &Path, file: &mut std::fs::File) -> std::io::Result<(OwnedFd, u64)> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let name = format!(
        "vigil-plugin:{}",
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    let fd = memfd_create(
        name.as_str(),
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut copy = std::fs::File::from(fd);
    // std copies file to file with copy_file_range/sendfile where it can.
    let copied = std::io::copy(&mut file.take(MAX_PLUGIN_BYTES + 1), &mut copy)?;
    let fd = OwnedFd::from(copy);
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok((fd, copied))
}

/// An opened, checked monitor library.
#[derive(Debug)]
pub struct Plugin {
    pub path: PathBuf,
    table: &'static VigilMonitorVtable,
    // Dropped last: the table points into it.
    _library: Arc<Loaded>,
}

impl Plugin {
    /// Opens `path` after the permission and ELF checks (from a private
    /// copy, see the module docs), reads its ABI version, then its vtable.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let loaded = open_private_copy(path)?;
        let library = &loaded.library;
        let symbol_error = |symbol: &[u8]| LoadError::Symbol {
            path: path.to_owned(),
            symbol: String::from_utf8_lossy(&symbol[..symbol.len() - 1]).into_owned(),
        };
        // SAFETY: the symbol's signature is fixed by the ABI for every version.
        let version = unsafe {
            let f = library
                .get::<unsafe extern "C" fn() -> u32>(ABI_VERSION_SYMBOL)
                .map_err(|_| symbol_error(ABI_VERSION_SYMBOL))?;
            f()
        };
        if version != ABI_VERSION {
            return Err(LoadError::Version {
                path: path.to_owned(),
                found: version,
                expected: ABI_VERSION,
            });
        }
        // SAFETY: version 1 fixes this signature; the returned pointer is
        // checked by `check_vtable` and lives as long as the library, which
        // `Plugin` keeps loaded.
        let table = unsafe {
            let f = library
                .get::<unsafe extern "C" fn() -> *const VigilMonitorVtable>(VTABLE_SYMBOL)
                .map_err(|_| symbol_error(VTABLE_SYMBOL))?;
            check_vtable(f())
        }
        .map_err(|source| LoadError::Abi {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            table,
            _library: loaded,
        })
    }

    pub fn table(&self) -> &'static VigilMonitorVtable {
        self.table
    }
}

type PollReply = tokio::sync::oneshot::Sender<Result<Vec<Sample>, AbiError>>;

enum Request {
    Poll { timeout: Duration, reply: PollReply },
}

/// A monitor instance on its worker thread.
pub struct DylibWorker {
    requests: std::sync::mpsc::Sender<Request>,
    busy: Arc<AtomicBool>,
}

/// What a started worker reports back once its instance exists.
pub struct Started {
    pub worker: DylibWorker,
    pub declared: Vec<ResourcePattern>,
}

impl DylibWorker {
    /// Creates the instance on a new thread with `params`, declares, and
    /// starts event pushing into `push` (when `events` is set and the plugin
    /// can push). Fails if any of that fails or takes longer than `timeout`.
    pub async fn start(
        name: &str,
        plugin: Plugin,
        params: &serde_json::Value,
        timeout: Duration,
        events: Option<PushHandler>,
    ) -> Result<Started, String> {
        let params = serde_json::to_vec(params).unwrap_or_default();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (requests, inbox) = std::sync::mpsc::channel::<Request>();
        let busy = Arc::new(AtomicBool::new(true));
        let thread_busy = Arc::clone(&busy);
        std::thread::Builder::new()
            .name(format!("monitor-{name}"))
            .spawn(move || {
                // `plugin` moves in, so the library outlives the instance.
                let plugin = plugin;
                let mut instance = match AbiInstance::create(plugin.table(), &params) {
                    Ok(i) => i,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let declared = match instance.declare() {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                if let Some(Err(e)) = events.map(|handler| instance.start(handler)) {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
                thread_busy.store(false, Ordering::SeqCst);
                if ready_tx.send(Ok(declared)).is_err() {
                    return;
                }
                // Ends when the DylibWorker (the only sender) is dropped.
                while let Ok(request) = inbox.recv() {
                    match request {
                        Request::Poll { timeout, reply } => {
                            thread_busy.store(true, Ordering::SeqCst);
                            let result = instance.poll(timeout);
                            thread_busy.store(false, Ordering::SeqCst);
                            let _ = reply.send(result);
                        }
                    }
                }
                drop(instance);
                drop(plugin);
            })
            .map_err(|e| format!("cannot start worker thread: {e}"))?;
        match tokio::time::timeout(timeout, ready_rx).await {
            Ok(Ok(Ok(declared))) => Ok(Started {
                worker: DylibWorker { requests, busy },
                declared,
            }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err("worker thread ended during start".to_owned()),
            Err(_) => Err(format!(
                "create/declare/start did not return within {timeout:?}"
            )),
        }
    }

    /// True while a poll (or the start) has not returned.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst)
    }

    /// Polls with a deadline; a poll that overruns is abandoned, not killed.
    pub async fn poll(&self, timeout: Duration) -> Result<Vec<Sample>, String> {
        if self.is_busy() {
            return Err("previous poll has not returned: plugin hung".to_owned());
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.requests
            .send(Request::Poll { timeout, reply })
            .map_err(|_| "worker thread is gone".to_owned())?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result.map_err(|e| e.to_string()),
            Ok(Err(_)) => Err("worker thread ended during poll".to_owned()),
            Err(_) => Err(format!("poll timed out after {timeout:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn permission_check_refuses_writable_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libx.so");
        std::fs::write(&lib, b"not really a library").unwrap();
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o755)).unwrap();
        check_permissions(&lib).unwrap();
        for mode in [0o775, 0o757, 0o666] {
            std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = check_permissions(&lib).unwrap_err().to_string();
            assert!(
                err.contains("is writable by group or others"),
                "{mode:o}: {err}"
            );
        }
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o755)).unwrap();
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("VIGIL_SKIP_PRIVILEGED").as_deref() == Ok("1"),
                "the owner check needs root to chown; set VIGIL_SKIP_PRIVILEGED=1 to skip"
            );
            return;
        }
        // Owned by nobody (65534): neither root nor us.
        nix::unistd::chown(&lib, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let err = check_permissions(&lib).unwrap_err().to_string();
        assert!(
            err.contains("is owned by uid 65534, not root or the daemon's uid 0"),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_is_not_a_library_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libjunk.so");
        std::fs::write(&lib, b"junk").unwrap();
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Plugin::load(&lib).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "plugin {} is not a complete ELF shared object (no ELF magic at the start); a partial copy? refusing to load it",
                lib.display()
            )
        );
    }

    /// The test binary's own ELF file stands in for a good shared object:
    /// same layout rules, and always there.
    fn good_elf() -> Vec<u8> {
        let mut bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test executables are position-independent (ET_DYN) on the targets
        // we build for; make sure, so the table tests the layout rules.
        bytes[16] = 3;
        bytes[17] = 0;
        bytes
    }

    fn check(cut: impl Fn(&mut Vec<u8>), expect: &str) {
        let mut bytes = good_elf();
        cut(&mut bytes);
        let got = match check_elf(&bytes) {
            Ok(()) => "ok".to_owned(),
            Err(e) => e,
        };
        // Byte offsets depend on the binary: every number reads as N, except
        // in the header checks that name fixed values.
        let numbers_as_n = |s: &str| {
            let mut out = String::new();
            for c in s.chars() {
                if c.is_ascii_digit() {
                    if !out.ends_with('N') {
                        out.push('N');
                    }
                } else {
                    out.push(c);
                }
            }
            out
        };
        let words = |s: &str| {
            if expect.contains('N') {
                numbers_as_n(s)
            } else {
                s.to_owned()
            }
        };
        assert_eq!(words(&got), words(expect), "{got}");
    }

    #[test]
    fn elf_check_refuses_truncated_and_inconsistent_files() {
        let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        check(|_| {}, "ok");
        check(
            |b| b.truncate(3000),
            "the section header table ends at byte N, the file has N bytes",
        );
        check(
            |b| b.truncate(40),
            "the ELF header needs 64 bytes, the file has 40",
        );
        check(|b| b.truncate(2), "no ELF magic at the start");
        check(|b| b[0] = b'#', "no ELF magic at the start");
        check(|b| b[4] = 1, "ELF class 1 is not 64-bit");
        check(|b| b[16] = 2, "ELF type 2 is not a shared object");
        // Cut just before the section headers: only they are missing.
        check(
            |b| {
                let shoff = u64_at(b, 40) as usize;
                b.truncate(shoff + 10);
            },
            "the section header table ends at byte N, the file has N bytes",
        );
        // A section header table that would be complete, but a loadable
        // segment points past the end of the file.
        check(
            |b| {
                let phoff = u64_at(b, 32) as usize;
                let phnum = u16::from_le_bytes([b[56], b[57]]) as usize;
                let past_end = b.len() as u64 + 1;
                for i in 0..phnum {
                    let at = phoff + i * 56;
                    if u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) == 1 {
                        b[at + 32..at + 40].copy_from_slice(&past_end.to_le_bytes());
                        break;
                    }
                }
            },
            "loadable segment N ends at byte N, the file has N bytes",
        );
        check(
            |b| b[32..40].copy_from_slice(&u64::MAX.to_le_bytes()),
            "the program header table size overflows",
        );
    }

    #[test]
    fn a_truncated_plugin_is_refused_before_it_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libcut.so");
        std::fs::write(&lib, &good_elf()[..3000]).unwrap();
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = Plugin::load(&lib).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "plugin {} is not a complete ELF shared object (the section header table ends at byte",
                lib.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn directory_check_refuses_writable_and_foreign_directories() {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir(&plugins).unwrap();
        let lib = plugins.join("libx.so");
        std::fs::write(&lib, b"x").unwrap();
        std::fs::set_permissions(&plugins, std::fs::Permissions::from_mode(0o755)).unwrap();
        check_directory(&lib).unwrap();
        for mode in [0o775, 0o777, 0o1777] {
            std::fs::set_permissions(&plugins, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = check_directory(&lib).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "plugin directory {} is writable by group or others (mode {mode:o}), so anyone could swap {}; refusing to load it",
                    plugins.display(),
                    lib.display()
                )
            );
            // Loading goes through the same check.
            let err = Plugin::load(&lib).unwrap_err().to_string();
            assert!(err.starts_with("plugin directory"), "{err}");
        }
        std::fs::set_permissions(&plugins, std::fs::Permissions::from_mode(0o755)).unwrap();
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("VIGIL_SKIP_PRIVILEGED").as_deref() == Ok("1"),
                "the owner check needs root to chown; set VIGIL_SKIP_PRIVILEGED=1 to skip"
            );
            return;
        }
        nix::unistd::chown(&plugins, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let err = check_directory(&lib).unwrap_err().to_string();
        assert!(
            err.contains("is owned by uid 65534, not root or the daemon's uid 0"),
            "{err}"
        );
    }

    #[test]
    fn names_are_searched_in_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(b.path().join("libmon.so"), b"").unwrap();
        let search = vec![a.path().to_owned(), b.path().to_owned()];
        assert_eq!(
            resolve("mon", Path::new("/etc/vigil"), &search).unwrap(),
            b.path().join("libmon.so")
        );
        std::fs::write(a.path().join("mon.so"), b"").unwrap();
        assert_eq!(
            resolve("mon", Path::new("/etc/vigil"), &search).unwrap(),
            a.path().join("mon.so")
        );
        assert_eq!(
            resolve("./x/lib.so", Path::new("/etc/vigil"), &search).unwrap(),
            Path::new("/etc/vigil/./x/lib.so")
        );
        let err = resolve("nope", Path::new("/etc/vigil"), &search)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("plugin \"nope\" not found (looked in "),
            "{err}"
        );
    }
}
