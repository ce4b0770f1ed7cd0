//! The `shm` monitor against real segments: a POSIX segment created and
//! unlinked, a System V segment created, attached, detached and removed,
//! with the changes arriving as pushed samples.

use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use serde_json::json;
use vigil_sdk::testing::{Conformance, PushCollector};
use vigil_sdk::{Monitor, Sample};
use vigil_shm::ShmMonitor;

/// Waits up to 10 s for a pushed sample of `name` whose value reads `want`.
fn wait_pushed(pushed: &PushCollector, name: &str, want: &str) -> (Sample, Duration) {
    pushed.wait_for(name, Duration::from_secs(10), |s| {
        s.value.as_ref().map(|v| v.to_string()).as_deref() == Some(want)
    })
}

fn value_of(samples: &[Sample], name: &str) -> String {
    let sample = samples.iter().find(|s| s.name.as_str() == name);
    let sample = sample.unwrap_or_else(|| panic!("no sample {name} in {samples:?}"));
    sample
        .value
        .as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn poll(monitor: &mut ShmMonitor) -> Vec<Sample> {
    monitor
        .poll(Instant::now() + Duration::from_secs(2))
        .expect("poll")
}

/// A POSIX segment, unlinked on drop.
struct PosixSegment {
    name: String,
}

impl PosixSegment {
    fn create(name: &str) -> Self {
        let fd = nix::sys::mman::shm_open(
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .expect("shm_open");
        drop(fd);
        Self {
            name: name.to_owned(),
        }
    }
}

impl Drop for PosixSegment {
    fn drop(&mut self) {
        let _ = nix::sys::mman::shm_unlink(self.name.as_str());
    }
}

/// A System V segment, removed on drop.
struct SysvSegment {
    id: libc::c_int,
}

impl SysvSegment {
    fn create(key: u32) -> Self {
        // SAFETY: shmget takes plain integers and touches no memory of ours.
        let id = unsafe {
            libc::shmget(
                key as libc::key_t,
                4096,
                libc::IPC_CREAT | libc::IPC_EXCL | 0o600,
            )
        };
        assert!(
            id >= 0,
            "shmget({key:#x}): {}",
            std::io::Error::last_os_error()
        );
        Self { id }
    }

    fn attach(&self) -> *mut libc::c_void {
        // SAFETY: a null address lets the kernel choose where to map; the
        // mapping is only detached again, never dereferenced.
        let address = unsafe { libc::shmat(self.id, std::ptr::null(), 0) };
        assert_ne!(
            address as isize,
            -1,
            "shmat: {}",
            std::io::Error::last_os_error()
        );
        address
    }

    fn detach(address: *mut libc::c_void) {
        // SAFETY: `address` came from shmat and is detached once.
        let rc = unsafe { libc::shmdt(address) };
        assert_eq!(rc, 0, "shmdt: {}", std::io::Error::last_os_error());
    }

    fn remove(&self) {
        // SAFETY: IPC_RMID ignores the buffer argument.
        let rc = unsafe { libc::shmctl(self.id, libc::IPC_RMID, std::ptr::null_mut()) };
        assert_eq!(
            rc,
            0,
            "shmctl(IPC_RMID): {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for SysvSegment {
    fn drop(&mut self) {
        // SAFETY: as in remove; a second removal fails harmlessly.
        unsafe { libc::shmctl(self.id, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}

/// A key no other test process uses: the pid in the low bits.
fn unique_key(tag: u32) -> u32 {
    (0x76 << 24) | (tag << 22) | (std::process::id() & 0x3f_ffff)
}

fn conformance_segment() -> String {
    format!("/vigil-conformance-{}", std::process::id())
}

/// The harness's event trigger: a POSIX segment appears while the monitor
/// runs, so the run checks a real pushed change too.
fn create_conformance_segment() {
    let fd = nix::sys::mman::shm_open(
        conformance_segment().as_str(),
        OFlag::O_CREAT | OFlag::O_RDWR,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )
    .expect("shm_open");
    drop(fd);
}

#[test]
fn conformance_direct_and_through_the_abi() {
    let segment = PosixSegment {
        name: conformance_segment(),
    };
    let posix_name = format!("/shm/posix{}/present", segment.name);
    let conformance =
        Conformance::new(json!({"posix": [segment.name], "sysv": ["0x00004a20", 19000]}))
            .events(create_conformance_segment, Duration::from_millis(300))
            .bad_params(json!({}))
            .bad_params(json!({"posix": ["a/b"]}))
            .bad_params(json!({"posix": [".."]}))
            .bad_params(json!({"sysv": ["0"]}))
            .bad_params(json!({"sysv": ["zz"]}))
            .bad_params(json!({"sysv": [-1]}))
            .bad_params(json!({"sysv": "0x4a20"}));
    let runs: [&dyn Fn() -> vigil_sdk::testing::Report; 2] =
        [&|| conformance.check::<ShmMonitor>(), &|| {
            conformance.check_abi(vigil_shm::vigil_vtable())
        }];
    for run in runs {
        let _ = nix::sys::mman::shm_unlink(segment.name.as_str());
        let report = run();
        let names: Vec<&str> = report.declared.iter().map(|p| p.as_str()).collect();
        assert!(names.contains(&posix_name.as_str()), "{names:?}");
        assert!(
            names.contains(&"/shm/sysv/0x00004a20/attached"),
            "{names:?}"
        );
        assert!(
            names.contains(&"/shm/sysv/0x00004a38/present"),
            "decimal 19000 is 0x4a38: {names:?}"
        );
        assert_eq!(value_of(&report.polled, &posix_name), "no");
        let pushed: Vec<String> = report
            .pushed
            .iter()
            .filter(|s| s.name.as_str() == posix_name)
            .map(|s| s.value.as_ref().map(|v| v.to_string()).unwrap_or_default())
            .collect();
        // The first push may already see the trigger's segment (it runs as
        // soon as start returns); either way the last word must be "yes".
        assert_eq!(pushed.last().map(String::as_str), Some("yes"), "{pushed:?}");
    }
}

#[test]
fn bad_params_are_refused_with_the_param_named() {
    fn check(params: serde_json::Value, expect: &str) {
        let error = ShmMonitor::configure(params.clone())
            .expect_err("must be refused")
            .to_string();
        assert!(
            error.contains(expect),
            "{params}: {error:?} lacks {expect:?}"
        );
    }
    check(json!({}), "posix and sysv are both empty");
    check(
        json!({"posix": ["a/b"]}),
        "params.posix: segment name \"a/b\"",
    );
    check(
        json!({"posix": ["a b"]}),
        "params.posix: segment name \"a b\"",
    );
    check(
        json!({"sysv": ["4a20"]}),
        "params.sysv: key \"4a20\" is not a number",
    );
    check(json!({"sysv": ["0x100000000"]}), "does not fit in 32 bits");
    check(json!({"sysv": [0]}), "IPC_PRIVATE");
    check(json!({"sysv": [], "other": 1}), "unknown field `other`");
}

#[test]
fn posix_segment_created_and_unlinked_is_pushed() {
    let name = format!("vigil-test-{}", std::process::id());
    let resource = format!("/shm/posix/{name}/present");
    let mut monitor =
        ShmMonitor::configure(json!({"posix": [format!("/{name}")]})).expect("configure");
    let pushed = PushCollector::new();
    monitor.start(pushed.sink()).expect("start");
    wait_pushed(&pushed, &resource, "no");

    let segment = PosixSegment::create(&format!("/{name}"));
    let (_, took) = wait_pushed(&pushed, &resource, "yes");
    eprintln!("shm: POSIX create pushed after {took:?}");
    assert_eq!(value_of(&poll(&mut monitor), &resource), "yes");

    nix::sys::mman::shm_unlink(format!("/{name}").as_str()).expect("shm_unlink");
    let (_, took) = wait_pushed(&pushed, &resource, "no");
    eprintln!("shm: POSIX unlink pushed after {took:?}");
    assert_eq!(value_of(&poll(&mut monitor), &resource), "no");
    monitor.stop();
    drop(segment);
}

#[test]
fn sysv_segment_attach_detach_remove_is_pushed() {
    let key = unique_key(1);
    let hex = format!("0x{key:08x}");
    let present = format!("/shm/sysv/{hex}/present");
    let attached = format!("/shm/sysv/{hex}/attached");
    let mut monitor =
        ShmMonitor::configure(json!({"sysv": [hex.to_uppercase().replace("0X", "0x")]}))
            .expect("configure");
    let pushed = PushCollector::new();
    monitor.start(pushed.sink()).expect("start");
    wait_pushed(&pushed, &present, "no");

    let segment = SysvSegment::create(key);
    let (_, took) = wait_pushed(&pushed, &present, "yes");
    eprintln!("shm: SysV create pushed after {took:?}");
    let samples = poll(&mut monitor);
    assert_eq!(value_of(&samples, &present), "yes");
    assert_eq!(value_of(&samples, &attached), "0");

    let address = segment.attach();
    let (_, took) = wait_pushed(&pushed, &attached, "1");
    eprintln!("shm: SysV attach pushed after {took:?}");
    assert_eq!(value_of(&poll(&mut monitor), &attached), "1");

    SysvSegment::detach(address);
    wait_pushed(&pushed, &attached, "0");
    assert_eq!(value_of(&poll(&mut monitor), &attached), "0");

    segment.remove();
    let (_, took) = wait_pushed(&pushed, &present, "no");
    eprintln!("shm: SysV removal pushed after {took:?}");
    assert_eq!(value_of(&poll(&mut monitor), &present), "no");
    monitor.stop();
}

#[test]
fn default_registration_configures_and_polls() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../monitors.d/shm.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let registration: toml::Table =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(registration["name"].as_str(), Some("shm"));
    assert_eq!(registration["type"].as_str(), Some("dylib"));
    assert_eq!(registration["plugin"].as_str(), Some("vigil_shm"));
    assert!(
        registration["timeout_seconds"].as_integer()
            < registration["interval_seconds"].as_integer()
    );
    let params = serde_json::to_value(&registration["params"]).expect("params as JSON");
    let mut monitor = ShmMonitor::configure(params).expect("the default registration configures");
    let samples = monitor
        .poll(Instant::now() + Duration::from_secs(5))
        .expect("poll");
    let example = samples
        .iter()
        .find(|s| s.name.as_str() == "/shm/posix/vigil-example/present");
    assert!(example.is_some_and(|s| s.is_known()), "{samples:?}");
}
