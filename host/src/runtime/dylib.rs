//! Loading dylib monitors and running each instance on its own thread.
//!
//! Before a library is opened its file must be owned by root or by the
//! daemon's user and writable by nobody else; once opened, its ABI version is
//! read through a fixed-signature symbol before anything else. Each monitor
//! instance lives on a dedicated worker thread, so a poll that hangs blocks
//! only that thread: the scheduler stops waiting at the deadline and marks
//! the monitor's resources unknown. A hung thread cannot be killed; it is
//! abandoned and no further poll is sent to it until it returns.
//!
//! Libraries stay loaded for as long as an instance of theirs exists;
//! unloading one while its threads run would crash the host.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
/// directory of the running executable, then the system plugin directory.
pub fn search_path(plugin_path: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = plugin_path.to_vec();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
    {
        dirs.push(dir);
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

/// An opened, checked monitor library.
#[derive(Debug)]
pub struct Plugin {
    pub path: PathBuf,
    table: &'static VigilMonitorVtable,
    // Dropped last: the table points into it.
    _library: Arc<Library>,
}

impl Plugin {
    /// Opens `path` after the permission check, reads its ABI version, then
    /// its vtable.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        check_permissions(path)?;
        // SAFETY: loading runs the library's initialisers; the permission
        // check above is what makes running this code acceptable.
        let library = unsafe { Library::new(path) }.map_err(|e| LoadError::Open {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
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
            _library: Arc::new(library),
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
        assert!(
            err.starts_with(&format!("plugin {}: cannot open", lib.display())),
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
