//! Dylib poll dispatch cost: what one poll costs through the C ABI, with and
//! without the host's worker-thread hop, and with the plugin in a child
//! process (`isolation = "process"`: `vigil monitor serve-dylib` speaking
//! the exec protocol over a pipe).
//!
//! `cargo build --release --workspace && target/release/dispatch`

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
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

/// Median and max of `samples` in microseconds.
fn median_max(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (
        us(samples[samples.len() / 2]),
        us(samples[samples.len() - 1]),
    )
}

/// Per-poll figures of the in-process host path: each poll timed alone.
async fn in_process_polls(lib: &std::path::Path, n: usize) -> Vec<Duration> {
    let plugin = Plugin::load(lib).expect("load testkit");
    let params = serde_json::json!({"instance": "i", "count": 1});
    let started = DylibWorker::start("bench", plugin, &params, Duration::from_secs(5), None)
        .await
        .expect("worker");
    let mut times = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let start = Instant::now();
        started
            .worker
            .poll(Duration::from_secs(1))
            .await
            .expect("poll");
        if i >= n / 10 {
            times.push(start.elapsed());
        }
    }
    times
}

/// Per-poll figures of the isolated path: the child polls back to back and
/// each samples line is timed from the previous one as the host reads and
/// parses it. Returns the gaps, the child's CPU seconds and its RSS in MiB.
fn isolated_polls(
    vigil: &std::path::Path,
    lib: &std::path::Path,
    n: usize,
) -> (Vec<Duration>, f64, f64) {
    use vigil_host::runtime::exec::{ExecMessage, ExecParser};
    let argv = vigil_host::runtime::isolated::command(vigil, lib, Duration::from_secs(1));
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vigil monitor serve-dylib");
    let hello = vigil_host::runtime::exec::host_hello(
        "bench",
        vigil_sdk::proto::Mode::Stream,
        Duration::ZERO,
        &serde_json::json!({"instance": "p", "count": 1}),
    );
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(&hello)
        .expect("hello");
    let mut lines = BufReader::new(child.stdout.take().expect("piped"));
    let mut parser = ExecParser::new(vigil_sdk::proto::Mode::Stream);
    let mut line = Vec::new();
    let mut times = Vec::with_capacity(n);
    let mut last = Instant::now();
    let mut seen = 0;
    let mut cpu_start = 0.0;
    while times.len() < n {
        line.clear();
        lines.read_until(b'\n', &mut line).expect("read");
        let now = Instant::now();
        match parser.feed_bytes(line.strip_suffix(b"\n").unwrap_or(&line)) {
            Ok(ExecMessage::Samples(s)) => assert_eq!(s.len(), 1),
            Ok(ExecMessage::Hello(_)) => continue,
            other => panic!("unexpected from the child: {other:?}"),
        }
        seen += 1;
        if seen == n / 10 {
            cpu_start = vigil_bench::cpu_seconds(child.id()).0;
        }
        if seen > n / 10 {
            times.push(now - last);
        }
        last = now;
    }
    let cpu = vigil_bench::cpu_seconds(child.id()).0 - cpu_start;
    let rss = vigil_bench::vm_mib(child.id(), "VmRSS");
    let _ = child.kill();
    let _ = child.wait();
    (times, cpu, rss)
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

    // One poll at a time, timed alone: the figures a monitor sees.
    let n = 20_000;
    let (median, max) = median_max(runtime.block_on(in_process_polls(&lib, n)));
    println!();
    println!(
        "{:<52} {:>10} {:>10}",
        "per poll (count 1), µs", "median", "max"
    );
    println!(
        "{:<52} {median:>10.1} {max:>10.1}",
        "in-process (worker thread hop)"
    );
    let vigil = vigil_bench::artifact("vigil");
    let (gaps, cpu, rss) = isolated_polls(&vigil, &lib, n);
    let polls = gaps.len() as f64;
    let (median, max) = median_max(gaps);
    println!(
        "{:<52} {median:>10.1} {max:>10.1}",
        "isolated (child process, pipe, JSON line)"
    );
    println!(
        "isolated child: {:.1} µs CPU per poll in the child, RSS {rss:.1} MiB",
        cpu / polls * 1e6
    );
}
