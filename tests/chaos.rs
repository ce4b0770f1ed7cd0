//! The short chaos run of CI: one trial of each fault kind (a seed fixed by
//! `VIGIL_CHAOS_SEED`, default 1) on a real etcd with three real hosts; see
//! `vigil_tests::chaos`. The long run is `bench/src/bin/chaos.rs`.

use vigil_tests::chaos::{Chaos, FaultKind, Options};

#[test]
fn chaos_every_fault_kind_once_no_overlap_no_lost_package_no_dead_host() {
    let seed = std::env::var("VIGIL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let options = Options::new(
        FaultKind::ALL.len(),
        seed,
        env!("CARGO_BIN_EXE_chaos_beat").into(),
    );
    let mut chaos = Chaos::new(options);
    let mut failures = Vec::new();
    let summary = chaos.run(|report| {
        eprintln!("{report}");
        if report.failed() {
            failures.push(format!("{report}\n{}", report.diagnostics));
        }
    });
    drop(chaos);
    eprintln!("{}", summary.table());
    assert!(
        summary.clean(),
        "seed {seed}: {}\n{}",
        summary.table(),
        failures.join("\n\n")
    );
    assert_eq!(
        summary.kinds(),
        FaultKind::ALL.to_vec(),
        "every fault kind ran: {}",
        summary.table()
    );
}

/// The detector is not blind: with the guard off, a host frozen past its
/// lease keeps its services running while another node starts them too,
/// and the beats show it.
#[test]
fn chaos_without_the_guard_a_frozen_host_overlaps() {
    let mut options = Options::new(1, 1, env!("CARGO_BIN_EXE_chaos_beat").into());
    options.kinds = vec![FaultKind::StopLong];
    options.guard = false;
    let mut chaos = Chaos::new(options);
    let mut reports = Vec::new();
    let summary = chaos.run(|report| reports.push(report.to_string()));
    drop(chaos);
    assert_eq!(summary.trials, 1, "{reports:#?}");
    assert!(summary.overlaps > 0, "{}\n{reports:#?}", summary.table());
}
