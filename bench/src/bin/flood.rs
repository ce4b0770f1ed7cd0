//! Floods the host and prints what it costs: a streaming monitor writing
//! stderr as fast as it can, another writing `log` messages as fast as it
//! can, and 100,000 resources at 10,000 samples/s (the testkit dylib, 100k
//! resources every 10 s), for 60 s (or `--seconds N`) at the production log
//! level. Prints the host log's growth (target: at most 1 MB), the host's
//! RSS and CPU, and whether a small monitor polled every 0.5 s stayed on
//! time (samples received against expected, and the oldest its sample got).
//!
//! `cargo build --release --workspace && target/release/flood`

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RESOURCES: usize = 100_000;
const BIG_INTERVAL_S: u64 = 10;
const ON_TIME_INTERVAL_S: f64 = 0.5;

fn main() {
    let seconds: u64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .map_or(60, |s| s.parse().expect("--seconds N"));
    let vigil = vigil_bench::artifact("vigil");
    vigil_bench::artifact("libvigil_testkit.so");

    let dir = tempfile::tempdir().expect("tempdir");
    let write = |rel: &str, text: String| {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
        path
    };
    let script = |rel: &str, text: String| {
        use std::os::unix::fs::PermissionsExt;
        let path = write(rel, text);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    };
    write(
        "cluster.toml",
        vigil_tests::with_test_paths("[cluster]\nname = \"bench\"\nnodes = [\"node1\"]\n"),
    );
    let hello = |name: &str| {
        format!(
            "read -r hello\necho '{{\"type\":\"hello\",\"protocol\":1,\"publishes\":[\"/{name}/x\"],\"capabilities\":[\"stream\"]}}'\n"
        )
    };
    script(
        "stderr.sh",
        format!(
            "#!/bin/sh\n{}yes 'a line of stderr flood, written as fast as the pipe takes it' >&2\n",
            hello("stderr")
        ),
    );
    script(
        "logs.sh",
        format!(
            "#!/bin/sh\n{}yes '{{\"type\":\"log\",\"level\":\"warn\",\"message\":\"a log message flood\"}}'\n",
            hello("logs")
        ),
    );
    for name in ["stderr", "logs"] {
        write(
            &format!("monitors.d/{name}.toml"),
            format!(
                "name = \"{name}\"\ntype = \"exec\"\nmode = \"stream\"\ncommand = [\"./{name}.sh\"]\ntimeout_seconds = 5\n"
            ),
        );
    }
    write(
        "monitors.d/big.toml",
        format!(
            "name = \"big\"\ntype = \"dylib\"\nplugin = \"vigil_testkit\"\ninterval_seconds = {BIG_INTERVAL_S}\ntimeout_seconds = 5\n[params]\ninstance = \"big\"\ncount = {RESOURCES}\n"
        ),
    );
    write(
        "monitors.d/ontime.toml",
        format!(
            "name = \"ontime\"\ntype = \"dylib\"\nplugin = \"vigil_testkit\"\ninterval_seconds = {ON_TIME_INTERVAL_S}\ntimeout_seconds = 1\n[params]\ninstance = \"ontime\"\n"
        ),
    );

    let log_path = dir.path().join("host.log");
    let log = std::fs::File::create(&log_path).expect("host.log");
    let mut host = Command::new(&vigil)
        .arg("-c")
        .arg(dir.path())
        .arg("host")
        .env("VIGIL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn vigil host");
    let pid = host.id();
    let cli = |args: &[&str]| -> Option<serde_json::Value> {
        let out = Command::new(&vigil)
            .arg("-c")
            .arg(dir.path())
            .args(args)
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    let received = || {
        cli(&["monitor", "list", "--json"]).and_then(|v| {
            v["monitors"]
                .as_array()?
                .iter()
                .find(|m| m["name"] == "ontime")?["samples_received"]
                .as_u64()
        })
    };
    // Every monitor started, the big one polled once.
    std::thread::sleep(Duration::from_secs(5));
    let log0 = std::fs::metadata(&log_path).map_or(0, |m| m.len());
    let (cpu0, _) = vigil_bench::cpu_seconds(pid);
    let samples0 = received().unwrap_or(0);
    let start = Instant::now();
    let mut oldest: f64 = 0.0;
    let mut checks = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(1));
        if let Some(age) = cli(&["resls", "--json", "-r", "/testkit/ontime"])
            .and_then(|v| v["resources"].as_array()?.first()?["age_seconds"].as_f64())
        {
            oldest = oldest.max(age);
            checks += 1;
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let samples1 = received().unwrap_or(0);
    let (cpu1, _) = vigil_bench::cpu_seconds(pid);
    let log1 = std::fs::metadata(&log_path).map_or(0, |m| m.len());
    let hwm = vigil_bench::vm_mib(pid, "VmHWM");
    let rss = vigil_bench::vm_mib(pid, "VmRSS");
    let listed = cli(&["resls", "--json", "-r", "/testkit/big"])
        .and_then(|v| v["resources"].as_array().map(Vec::len))
        .unwrap_or(0);
    // SAFETY: plain signal to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = host.wait();
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let suppressed: u64 = text
        .lines()
        .filter_map(|l| l.split("suppressed=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum();

    println!(
        "flood: stderr and log floods + {RESOURCES} resources every {BIG_INTERVAL_S} s ({} samples/s), {wall:.0} s",
        RESOURCES as u64 / BIG_INTERVAL_S
    );
    println!("big monitor resources   {listed}");
    println!(
        "host log growth         {} bytes ({:.1} KiB; target <= 1 MB)",
        log1 - log0,
        (log1 - log0) as f64 / 1024.0
    );
    println!("lines suppressed        {suppressed} (whole run)");
    println!(
        "host CPU                {:.1} % of one core",
        (cpu1 - cpu0) / wall * 100.0
    );
    println!("peak RSS (VmHWM)        {hwm:.1} MiB");
    println!("RSS at end              {rss:.1} MiB");
    println!(
        "ontime monitor          {} samples in {wall:.0} s (expected about {:.0}); oldest sample seen {oldest:.2} s over {checks} checks",
        samples1.saturating_sub(samples0),
        wall / ON_TIME_INTERVAL_S
    );
}
