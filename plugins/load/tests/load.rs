//! The load monitor against this machine's real `/proc`: the conformance
//! harness (directly and through the C ABI), value ranges, and the CPU
//! figure following a real busy loop.

use std::time::{Duration, Instant};

use serde_json::json;
use vigil_load::LoadMonitor;
use vigil_sdk::testing::{Conformance, Report};
use vigil_sdk::{Monitor, Sample};

fn value(samples: &[Sample], name: &str) -> (f64, Option<String>) {
    let s = samples
        .iter()
        .find(|s| s.name.as_str() == name)
        .unwrap_or_else(|| panic!("no sample {name} in {samples:?}"));
    let v = s
        .value
        .as_ref()
        .unwrap_or_else(|| panic!("{name} unknown: {:?}", s.reason));
    let number = v
        .as_number()
        .unwrap_or_else(|| panic!("{name} is not a number: {v}"));
    (number, v.unit().map(str::to_owned))
}

fn check_ranges(samples: &[Sample]) {
    for period in ["1min", "5min", "15min"] {
        let (load, unit) = value(samples, &format!("/system/load/{period}"));
        assert!(load >= 0.0, "load {period} = {load}");
        assert_eq!(unit, None, "load averages have no unit");
    }
    let (cpu, unit) = value(samples, "/system/cpu/used_percent");
    assert!((0.0..=100.0).contains(&cpu), "cpu {cpu}");
    assert_eq!(unit.as_deref(), Some("%"));
    let (mem, unit) = value(samples, "/system/memory/avail_percent");
    assert!(mem > 0.0 && mem <= 100.0, "memory available {mem}");
    assert_eq!(unit.as_deref(), Some("%"));
    assert_eq!(samples.len(), 5, "exactly the five declared resources");
}

fn conformance() -> Conformance {
    Conformance::new(json!({}))
        .bad_params(json!({"interval": 5}))
        .bad_params(json!(["x"]))
        .bad_params(json!("cpu"))
}

#[test]
fn load_conformance_direct_and_abi() {
    let check = |report: Report| {
        assert_eq!(report.declared.len(), 5);
        assert!(report.pushed.is_empty(), "load is polled only");
        check_ranges(&report.polled);
    };
    check(conformance().check::<LoadMonitor>());
    check(conformance().check_abi(vigil_load::vigil_vtable()));
    // No params at all (an absent [params] table) is fine too.
    check(Conformance::new(serde_json::Value::Null).check::<LoadMonitor>());
}

#[test]
fn unknown_params_are_refused_by_name() {
    let err = LoadMonitor::configure(json!({"cpus": 2})).expect_err("load takes no params");
    assert!(
        err.to_string().contains("takes no params") && err.to_string().contains("cpus"),
        "{err}"
    );
}

#[test]
fn repeated_polls_stay_in_range_and_see_a_busy_cpu() {
    let mut monitor = LoadMonitor::configure(json!({})).expect("configure");
    let poll = |m: &mut LoadMonitor| {
        m.poll(Instant::now() + Duration::from_secs(2))
            .expect("poll")
    };
    check_ranges(&poll(&mut monitor));
    // Back to back (possibly within one clock tick): still a valid figure.
    check_ranges(&poll(&mut monitor));

    // Keep every CPU busy for a while: the figure over that window is > 0.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let busy_until = Instant::now() + Duration::from_millis(500);
    std::thread::scope(|scope| {
        for _ in 0..cpus {
            scope.spawn(|| {
                let mut x = 0u64;
                while Instant::now() < busy_until {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            });
        }
    });
    let samples = poll(&mut monitor);
    check_ranges(&samples);
    let (cpu, _) = value(&samples, "/system/cpu/used_percent");
    assert!(
        cpu > 0.0,
        "a busy loop on every cpu shows as used cpu, got {cpu}"
    );
}
