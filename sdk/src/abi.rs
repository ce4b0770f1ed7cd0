//! The dylib C ABI, version 1, and both of its sides.
//!
//! A monitor library exports two symbols:
//!
//! * `uint32_t vigil_monitor_abi_version(void)` — read first; the host
//!   refuses a library whose version differs from [`ABI_VERSION`];
//! * `const struct vigil_monitor_vtable *vigil_monitor_vtable(void)`.
//!
//! Only `#[repr(C)]` structs, C function pointers and byte buffers holding
//! UTF-8 JSON (see [`crate::wire`]) cross the boundary; no Rust type does,
//! so a host and a plugin built by different compilers, or in C, agree.
//! Buffers returned by the plugin are freed by the plugin's `free_buf`.
//! The host never calls one instance from two threads at once, and keeps the
//! push context alive until `stop` returns.
//!
//! Plugin side: [`export_monitor!`](crate::export_monitor) implements the
//! vtable for any [`Monitor`], catching panics so that none crosses the
//! boundary. Host side: [`AbiInstance`] wraps a vtable in a safe API; the
//! host's loader and [`crate::testing`] both use it.

use std::any::Any;
use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use crate::monitor::{Monitor, SampleSink};
use crate::resource::{ResourcePattern, Sample};
use crate::wire::{self, WireError};

/// Version of the C ABI described by `include/vigil_monitor.h`. Independent
/// of the crate version: it changes only when the vtable layout or calling
/// contract changes incompatibly.
pub const ABI_VERSION: u32 = 1;
/// Name of the version symbol, NUL-terminated for `dlsym`.
pub const ABI_VERSION_SYMBOL: &[u8] = b"vigil_monitor_abi_version\0";
/// Name of the vtable symbol, NUL-terminated for `dlsym`.
pub const VTABLE_SYMBOL: &[u8] = b"vigil_monitor_vtable\0";

/// Call succeeded.
pub const VIGIL_OK: i32 = 0;
/// Call failed; the out buffer holds a UTF-8 message.
pub const VIGIL_ERROR: i32 = 1;
/// The plugin panicked; the out buffer holds the panic message.
pub const VIGIL_PANIC: i32 = 2;

/// Largest buffer the host accepts from a plugin in one call or push.
pub const MAX_BUFFER_BYTES: usize = 8 << 20;

/// A byte buffer allocated by the plugin and released with its `free_buf`.
#[repr(C)]
#[derive(Debug)]
pub struct VigilBuf {
    pub ptr: *mut u8,
    pub len: usize,
    pub cap: usize,
}

impl VigilBuf {
    pub const fn empty() -> Self {
        Self {
            ptr: std::ptr::null_mut(),
            len: 0,
            cap: 0,
        }
    }

    fn from_vec(v: Vec<u8>) -> Self {
        let mut v = ManuallyDrop::new(v);
        Self {
            ptr: v.as_mut_ptr(),
            len: v.len(),
            cap: v.capacity(),
        }
    }
}

/// Host callback a plugin calls, from any thread, with a JSON array of samples.
pub type PushFn = unsafe extern "C" fn(ctx: *mut c_void, json: *const u8, len: usize);

/// The function table of ABI version 1. Every entry may be null in memory;
/// the host refuses a table whose required entries are null. `start` and
/// `stop` are optional (poll-only monitors).
#[repr(C)]
#[derive(Debug)]
pub struct VigilMonitorVtable {
    /// `sizeof(struct vigil_monitor_vtable)` as the plugin was built; lets a
    /// later version append entries.
    pub struct_size: u32,
    pub abi_version: u32,
    /// Parses params JSON and creates an instance; on error fills `out` with a message.
    pub create: Option<
        unsafe extern "C" fn(
            params: *const u8,
            params_len: usize,
            out_instance: *mut *mut c_void,
            out: *mut VigilBuf,
        ) -> i32,
    >,
    /// Fills `out` with a JSON array of pattern strings.
    pub declare: Option<unsafe extern "C" fn(instance: *mut c_void, out: *mut VigilBuf) -> i32>,
    /// Fills `out` with a JSON array of samples, or a message on error.
    pub poll: Option<
        unsafe extern "C" fn(instance: *mut c_void, timeout_ms: u64, out: *mut VigilBuf) -> i32,
    >,
    /// Starts pushing samples through `push(ctx, …)`.
    pub start: Option<
        unsafe extern "C" fn(
            instance: *mut c_void,
            push: PushFn,
            ctx: *mut c_void,
            out: *mut VigilBuf,
        ) -> i32,
    >,
    /// Stops pushing; after it returns the plugin never calls `push` again.
    pub stop: Option<unsafe extern "C" fn(instance: *mut c_void)>,
    pub destroy: Option<unsafe extern "C" fn(instance: *mut c_void)>,
    pub free_buf: Option<unsafe extern "C" fn(buf: *mut VigilBuf)>,
}

/// Generates the two exported symbols for a [`Monitor`] type.
///
/// ```
/// use std::time::Instant;
/// use vigil_sdk::{Monitor, MonitorError, ResourceName, ResourcePattern, Sample};
///
/// struct Always;
/// impl Monitor for Always {
///     fn configure(_: serde_json::Value) -> Result<Self, MonitorError> { Ok(Always) }
///     fn declare(&self) -> Vec<ResourcePattern> {
///         vec![ResourcePattern::new("/example/always/status").unwrap()]
///     }
///     fn poll(&mut self, _: Instant) -> Result<Vec<Sample>, MonitorError> {
///         Ok(vec![Sample::up(ResourceName::new("/example/always/status").unwrap())])
///     }
/// }
///
/// vigil_sdk::export_monitor!(Always);
/// # fn main() {
/// assert_eq!(vigil_monitor_abi_version(), vigil_sdk::abi::ABI_VERSION);
/// assert!(!vigil_monitor_vtable().is_null());
/// # }
/// ```
///
/// It also defines `vigil_vtable()`, a safe Rust function returning the same
/// table, so the crate's own tests can drive the monitor through the C ABI
/// with [`crate::testing`] without loading the library.
#[macro_export]
macro_rules! export_monitor {
    ($monitor:ty) => {
        static __VIGIL_VTABLE: $crate::abi::VigilMonitorVtable =
            $crate::abi::vtable_for::<$monitor>();

        /// The ABI version this library was built for.
        #[unsafe(no_mangle)]
        pub extern "C" fn vigil_monitor_abi_version() -> u32 {
            $crate::abi::ABI_VERSION
        }

        /// The monitor's function table.
        #[unsafe(no_mangle)]
        pub extern "C" fn vigil_monitor_vtable() -> *const $crate::abi::VigilMonitorVtable {
            &__VIGIL_VTABLE
        }

        /// The same table, for in-process tests.
        pub fn vigil_vtable() -> &'static $crate::abi::VigilMonitorVtable {
            &__VIGIL_VTABLE
        }
    };
}

/// The vtable implementing ABI v1 for `M`; used by [`export_monitor!`](crate::export_monitor).
pub const fn vtable_for<M: Monitor>() -> VigilMonitorVtable {
    VigilMonitorVtable {
        struct_size: std::mem::size_of::<VigilMonitorVtable>() as u32,
        abi_version: ABI_VERSION,
        create: Some(plugin::create::<M>),
        declare: Some(plugin::declare::<M>),
        poll: Some(plugin::poll::<M>),
        start: Some(plugin::start::<M>),
        stop: Some(plugin::stop::<M>),
        destroy: Some(plugin::destroy::<M>),
        free_buf: Some(plugin::free_buf),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

/// The plugin side: generic `extern "C"` functions over a [`Monitor`].
mod plugin {
    use super::*;

    /// Runs `f`, turning its result or panic into a return code and `out`.
    ///
    /// # Safety
    /// `out` must be null or point to a writable `VigilBuf`.
    unsafe fn guarded(out: *mut VigilBuf, f: impl FnOnce() -> Result<Vec<u8>, String>) -> i32 {
        let (code, bytes) = match catch_unwind(AssertUnwindSafe(f)) {
            Ok(Ok(bytes)) => (VIGIL_OK, bytes),
            Ok(Err(message)) => (VIGIL_ERROR, message.into_bytes()),
            Err(payload) => (VIGIL_PANIC, panic_message(&*payload).into_bytes()),
        };
        if !out.is_null() {
            // SAFETY: the caller guarantees a non-null `out` is writable.
            unsafe { out.write(VigilBuf::from_vec(bytes)) };
        }
        code
    }

    struct PushTarget {
        push: PushFn,
        ctx: *mut c_void,
    }
    // SAFETY: the ABI contract makes the host's push function thread-safe and
    // keeps `ctx` valid until `stop` returns.
    unsafe impl Send for PushTarget {}
    // SAFETY: as above; the target is only read.
    unsafe impl Sync for PushTarget {}

    impl PushTarget {
        fn send(&self, json: &[u8]) {
            // SAFETY: see the `Send` impl; the buffer outlives the call.
            unsafe { (self.push)(self.ctx, json.as_ptr(), json.len()) };
        }
    }

    pub(super) unsafe extern "C" fn create<M: Monitor>(
        params: *const u8,
        params_len: usize,
        out_instance: *mut *mut c_void,
        out: *mut VigilBuf,
    ) -> i32 {
        // SAFETY: the host passes valid pointers per the ABI contract.
        unsafe {
            guarded(out, || {
                if out_instance.is_null() {
                    return Err("create: null instance pointer".to_owned());
                }
                let bytes = if params.is_null() {
                    &[][..]
                } else {
                    std::slice::from_raw_parts(params, params_len)
                };
                let params: serde_json::Value = if bytes.is_empty() {
                    serde_json::Value::Object(Default::default())
                } else {
                    serde_json::from_slice(bytes).map_err(|e| format!("params: {e}"))?
                };
                let monitor = M::configure(params).map_err(|e| e.to_string())?;
                out_instance.write(Box::into_raw(Box::new(monitor)).cast());
                Ok(Vec::new())
            })
        }
    }

    pub(super) unsafe extern "C" fn declare<M: Monitor>(
        instance: *mut c_void,
        out: *mut VigilBuf,
    ) -> i32 {
        // SAFETY: `instance` came from `create::<M>` and is not used concurrently.
        unsafe {
            guarded(out, || {
                let monitor = instance
                    .cast::<M>()
                    .as_ref()
                    .ok_or("declare: null instance")?;
                Ok(wire::encode_patterns(&monitor.declare()))
            })
        }
    }

    pub(super) unsafe extern "C" fn poll<M: Monitor>(
        instance: *mut c_void,
        timeout_ms: u64,
        out: *mut VigilBuf,
    ) -> i32 {
        // SAFETY: `instance` came from `create::<M>` and is not used concurrently.
        unsafe {
            guarded(out, || {
                let monitor = instance.cast::<M>().as_mut().ok_or("poll: null instance")?;
                let deadline = Instant::now() + Duration::from_millis(timeout_ms);
                let samples = monitor.poll(deadline).map_err(|e| e.to_string())?;
                Ok(wire::encode_samples(&samples))
            })
        }
    }

    pub(super) unsafe extern "C" fn start<M: Monitor>(
        instance: *mut c_void,
        push: PushFn,
        ctx: *mut c_void,
        out: *mut VigilBuf,
    ) -> i32 {
        // SAFETY: `instance` came from `create::<M>` and is not used concurrently.
        unsafe {
            guarded(out, || {
                let monitor = instance
                    .cast::<M>()
                    .as_mut()
                    .ok_or("start: null instance")?;
                let target = PushTarget { push, ctx };
                let sink = SampleSink::new(move |samples: &[Sample]| {
                    target.send(&wire::encode_samples(samples));
                });
                monitor.start(sink).map_err(|e| e.to_string())?;
                Ok(Vec::new())
            })
        }
    }

    pub(super) unsafe extern "C" fn stop<M: Monitor>(instance: *mut c_void) {
        // SAFETY: `instance` came from `create::<M>` and is not used concurrently.
        unsafe {
            guarded(std::ptr::null_mut(), || {
                if let Some(monitor) = instance.cast::<M>().as_mut() {
                    monitor.stop();
                }
                Ok(Vec::new())
            });
        }
    }

    pub(super) unsafe extern "C" fn destroy<M: Monitor>(instance: *mut c_void) {
        // SAFETY: `instance` came from `create::<M>` and is destroyed once.
        unsafe {
            guarded(std::ptr::null_mut(), || {
                if !instance.is_null() {
                    drop(Box::from_raw(instance.cast::<M>()));
                }
                Ok(Vec::new())
            });
        }
    }

    pub(super) unsafe extern "C" fn free_buf(buf: *mut VigilBuf) {
        // SAFETY: `buf` was filled by `guarded` from a Vec of this library.
        unsafe {
            if let Some(buf) = buf.as_mut() {
                if !buf.ptr.is_null() {
                    drop(Vec::from_raw_parts(buf.ptr, buf.len, buf.cap));
                }
                *buf = VigilBuf::empty();
            }
        }
    }
}

/// Why a call through the ABI failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AbiError {
    #[error("plugin ABI version {found}, host expects {expected}")]
    Version { found: u32, expected: u32 },
    #[error("vtable is null")]
    NullVtable,
    #[error("vtable is {found} bytes, ABI v{ABI_VERSION} needs at least {needed}")]
    VtableTooSmall { found: u32, needed: u32 },
    #[error("vtable has no `{0}` entry")]
    MissingEntry(&'static str),
    #[error("{call} failed: {message}")]
    Failed { call: &'static str, message: String },
    #[error("{call} panicked: {message}")]
    Panicked { call: &'static str, message: String },
    #[error("{call} returned unknown code {code}: {message}")]
    BadCode {
        call: &'static str,
        code: i32,
        message: String,
    },
    #[error("{call} returned {len} bytes, more than the {MAX_BUFFER_BYTES} allowed")]
    TooLarge { call: &'static str, len: usize },
    #[error("{call} returned bad output: {error}")]
    BadOutput {
        call: &'static str,
        error: WireError,
    },
}

/// Checks a vtable from an untrusted library before any entry is called.
///
/// # Safety
/// `vtable` must be null or point to memory readable for `struct_size` bytes
/// for as long as the library stays loaded.
pub unsafe fn check_vtable(
    vtable: *const VigilMonitorVtable,
) -> Result<&'static VigilMonitorVtable, AbiError> {
    // SAFETY: per the contract above; the header is read first, the rest only
    // once `struct_size` says it is there.
    let header = unsafe { vtable.cast::<[u32; 2]>().as_ref() }.ok_or(AbiError::NullVtable)?;
    let [struct_size, abi_version] = *header;
    if abi_version != ABI_VERSION {
        return Err(AbiError::Version {
            found: abi_version,
            expected: ABI_VERSION,
        });
    }
    let needed = std::mem::size_of::<VigilMonitorVtable>() as u32;
    if struct_size < needed {
        return Err(AbiError::VtableTooSmall {
            found: struct_size,
            needed,
        });
    }
    // SAFETY: `struct_size` covers the whole v1 table.
    let table = unsafe { &*vtable };
    let required = [
        ("create", table.create.is_some()),
        ("declare", table.declare.is_some()),
        ("poll", table.poll.is_some()),
        ("destroy", table.destroy.is_some()),
        ("free_buf", table.free_buf.is_some()),
    ];
    if let Some((name, _)) = required.iter().find(|(_, present)| !present) {
        return Err(AbiError::MissingEntry(name));
    }
    if table.start.is_some() != table.stop.is_some() {
        return Err(AbiError::MissingEntry(if table.start.is_some() {
            "stop"
        } else {
            "start"
        }));
    }
    Ok(table)
}

/// A callback the host gives [`AbiInstance::start`]: receives each pushed
/// batch, or the reason a push was refused.
pub type PushHandler = Box<dyn Fn(Result<Vec<Sample>, AbiError>) + Send + Sync>;

struct PushContext {
    handler: PushHandler,
}

unsafe extern "C" fn host_push(ctx: *mut c_void, json: *const u8, len: usize) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the `PushContext` boxed by `AbiInstance::start`,
        // alive until `stop` returns.
        let Some(ctx) = (unsafe { ctx.cast::<PushContext>().as_ref() }) else {
            return;
        };
        let result = if len > MAX_BUFFER_BYTES {
            Err(AbiError::TooLarge { call: "push", len })
        } else if json.is_null() {
            Err(AbiError::Failed {
                call: "push",
                message: "null buffer".to_owned(),
            })
        } else {
            // SAFETY: the plugin passes `len` readable bytes for the call's duration.
            let bytes = unsafe { std::slice::from_raw_parts(json, len) };
            wire::decode_samples(bytes).map_err(|error| AbiError::BadOutput {
                call: "push",
                error,
            })
        };
        (ctx.handler)(result);
    }));
}

/// A live monitor instance behind a checked vtable: the host side of the ABI.
pub struct AbiInstance {
    table: &'static VigilMonitorVtable,
    instance: *mut c_void,
    push: Option<Box<PushContext>>,
}

// SAFETY: the ABI lets the host call an instance from any thread as long as
// calls do not overlap, which `&mut self` guarantees.
unsafe impl Send for AbiInstance {}

impl std::fmt::Debug for AbiInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbiInstance")
            .field("started", &self.push.is_some())
            .finish()
    }
}

impl AbiInstance {
    /// Creates an instance with `params` (JSON).
    pub fn create(table: &'static VigilMonitorVtable, params: &[u8]) -> Result<Self, AbiError> {
        let create = table.create.ok_or(AbiError::MissingEntry("create"))?;
        let mut instance = std::ptr::null_mut();
        let mut out = VigilBuf::empty();
        // SAFETY: valid pointers to locals and to `params` for the call.
        let code = unsafe { create(params.as_ptr(), params.len(), &mut instance, &mut out) };
        let this = Self {
            table,
            instance,
            push: None,
        };
        this.take_result("create", code, out)?;
        if this.instance.is_null() {
            return Err(AbiError::Failed {
                call: "create",
                message: "returned no instance".to_owned(),
            });
        }
        Ok(this)
    }

    /// Copies a plugin buffer and frees it with the plugin's allocator.
    fn take_buf(&self, call: &'static str, mut out: VigilBuf) -> Result<Vec<u8>, AbiError> {
        let bytes = if out.ptr.is_null() {
            Ok(Vec::new())
        } else if out.len > MAX_BUFFER_BYTES {
            Err(AbiError::TooLarge { call, len: out.len })
        } else {
            // SAFETY: the plugin filled `out` with `len` readable bytes.
            Ok(unsafe { std::slice::from_raw_parts(out.ptr, out.len) }.to_vec())
        };
        if let Some(free) = self.table.free_buf {
            // SAFETY: `out` was filled by this plugin and is freed once.
            unsafe { free(&mut out) };
        }
        bytes
    }

    fn take_result(
        &self,
        call: &'static str,
        code: i32,
        out: VigilBuf,
    ) -> Result<Vec<u8>, AbiError> {
        let bytes = self.take_buf(call, out)?;
        let text = || {
            let mut s = String::from_utf8_lossy(&bytes).into_owned();
            s.truncate(1024);
            s
        };
        match code {
            VIGIL_OK => Ok(bytes),
            VIGIL_ERROR => Err(AbiError::Failed {
                call,
                message: text(),
            }),
            VIGIL_PANIC => Err(AbiError::Panicked {
                call,
                message: text(),
            }),
            code => Err(AbiError::BadCode {
                call,
                code,
                message: text(),
            }),
        }
    }

    pub fn declare(&mut self) -> Result<Vec<ResourcePattern>, AbiError> {
        let declare = self
            .table
            .declare
            .ok_or(AbiError::MissingEntry("declare"))?;
        let mut out = VigilBuf::empty();
        // SAFETY: live instance, exclusive access, valid out pointer.
        let code = unsafe { declare(self.instance, &mut out) };
        let bytes = self.take_result("declare", code, out)?;
        wire::decode_patterns(&bytes).map_err(|error| AbiError::BadOutput {
            call: "declare",
            error,
        })
    }

    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<Sample>, AbiError> {
        let poll = self.table.poll.ok_or(AbiError::MissingEntry("poll"))?;
        let mut out = VigilBuf::empty();
        let timeout_ms = timeout.as_millis().min(u64::MAX as u128) as u64;
        // SAFETY: live instance, exclusive access, valid out pointer.
        let code = unsafe { poll(self.instance, timeout_ms, &mut out) };
        let bytes = self.take_result("poll", code, out)?;
        wire::decode_samples(&bytes).map_err(|error| AbiError::BadOutput {
            call: "poll",
            error,
        })
    }

    /// True when the plugin can push samples on its own.
    pub fn can_push(&self) -> bool {
        self.table.start.is_some()
    }

    /// Starts event pushing; `handler` runs on the plugin's threads.
    pub fn start(&mut self, handler: PushHandler) -> Result<(), AbiError> {
        let Some(start) = self.table.start else {
            return Ok(());
        };
        self.stop();
        let ctx = Box::new(PushContext { handler });
        let ctx_ptr = (&*ctx as *const PushContext).cast_mut().cast::<c_void>();
        self.push = Some(ctx);
        let mut out = VigilBuf::empty();
        // SAFETY: live instance; `ctx_ptr` stays valid until `stop` (the box
        // is only dropped after the plugin's stop returns).
        let code = unsafe { start(self.instance, host_push, ctx_ptr, &mut out) };
        self.take_result("start", code, out).map(drop)
    }

    /// Stops event pushing; after it returns the handler is never called again.
    pub fn stop(&mut self) {
        if self.push.is_none() {
            return;
        }
        if let Some(stop) = self.table.stop {
            // SAFETY: live instance, exclusive access.
            unsafe { stop(self.instance) };
        }
        self.push = None;
    }
}

impl Drop for AbiInstance {
    fn drop(&mut self) {
        self.stop();
        if let Some(destroy) = self.table.destroy {
            // SAFETY: the instance is live and destroyed exactly once.
            unsafe { destroy(self.instance) };
        }
    }
}
