//! Dylib poll dispatch cost: what one poll costs through the C ABI, with and
//! without the host's worker-thread hop.
//!
//! `cargo build --release --workspace && target/release/dispatch`

use std::time::{Duration, Instant};

use vigil_host::runtime::dylib::{DylibWorker, Plugin};
use vigil_sdk::abi::AbiInstance;

fn per_poll(n: u32, mut poll: impl FnMut()) -> f64 {
    for _ in 0..n / 10 {
        poll();
    }
    let start = Instant::now();
    for _ in 0..n {
        poll();
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let lib = vigil_bench::artifact("libvigil_testkit.so");
    println!("dylib poll dispatch ({})", lib.display());
    println!("{:<52} {:>12}", "path", "ns/poll");
    for count in [1usize, 100] {
        let plugin = Plugin::load(&lib).expect("load testkit");
        let params = format!(r#"{{"instance":"b","count":{count}}}"#);
        let mut instance = AbiInstance::create(plugin.table(), params.as_bytes()).expect("create");
        let ns = per_poll(200_000 / count as u32, || {
            let samples = instance.poll(Duration::from_secs(1)).expect("poll");
            assert_eq!(samples.len(), count);
        });
        println!(
            "{:<52} {:>12.0}",
            format!("vtable call + JSON of {count} sample(s)"),
            ns
        );
        println!(
            "{:<52} {:>12.0}",
            format!("  per sample ({count})"),
            ns / count as f64
        );
    }

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let plugin = Plugin::load(&lib).expect("load testkit");
        let params = serde_json::json!({"instance": "w", "count": 1});
        let started = DylibWorker::start("bench", plugin, &params, Duration::from_secs(5), None)
            .await
            .expect("worker");
        let n = 50_000u32;
        let start = Instant::now();
        for _ in 0..n {
            started
                .worker
                .poll(Duration::from_secs(1))
                .await
                .expect("poll");
        }
        let ns = start.elapsed().as_nanos() as f64 / n as f64;
        println!(
            "{:<52} {:>12.0}",
            "host path: worker thread hop + vtable + JSON (1)", ns
        );
    });
}
