//! Host overhead under a realistic load: 1,000 resources from dylib monitors
//! polled every second plus 50 Nagios checks every 10 s, for 60 s (or
//! `--seconds N`). Prints the host's CPU (% of one core) and peak RSS.
//! Target: under 2 % of one core and under 40 MB.
//!
//! `cargo build --release --workspace && target/release/host_load`

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DYLIB_MONITORS: usize = 10;
const RESOURCES_EACH: usize = 100;
const NAGIOS_CHECKS: usize = 50;
const CHECK: &str = "/usr/lib/nagios/plugins/check_load";

fn main() {
    let seconds: u64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .map_or(60, |s| s.parse().expect("--seconds N"));
    assert!(
        std::path::Path::new(CHECK).exists(),
        "{CHECK} missing: install monitoring-plugins-basic"
    );
    let vigil = vigil_bench::artifact("vigil");
    vigil_bench::artifact("libvigil_testkit.so");

    let dir = tempfile::tempdir().expect("tempdir");
    let write = |rel: &str, text: String| {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    write(
        "cluster.toml",
        vigil_tests::with_test_paths("[cluster]\nname = \"bench\"\nnodes = [\"node1\"]\n"),
    );
    for i in 0..DYLIB_MONITORS {
        write(
            &format!("monitors.d/tk{i}.toml"),
            format!(
                "name = \"tk{i}\"\ntype = \"dylib\"\nplugin = \"vigil_testkit\"\ninterval_seconds = 1\ntimeout_seconds = 1\n[params]\ninstance = \"tk{i}\"\ncount = {RESOURCES_EACH}\n"
            ),
        );
    }
    for i in 0..NAGIOS_CHECKS {
        write(
            &format!("monitors.d/ng{i}.toml"),
            format!(
                "name = \"ng{i}\"\ntype = \"nagios\"\ncommand = [\"{CHECK}\", \"-w\", \"1000,1000,1000\", \"-c\", \"2000,2000,2000\"]\ninterval_seconds = 10\ntimeout_seconds = 5\n"
            ),
        );
    }

    let mut host = Command::new(&vigil)
        .arg("-c")
        .arg(dir.path())
        .arg("host")
        .env("VIGIL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn vigil host");
    let pid = host.id();
    // Let every monitor start and the first round of checks finish.
    std::thread::sleep(Duration::from_secs(3));
    let (cpu0, child0) = vigil_bench::cpu_seconds(pid);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let (cpu1, child1) = vigil_bench::cpu_seconds(pid);
    let wall = start.elapsed().as_secs_f64();
    let resls = Command::new(&vigil)
        .args(["resls", "--json", "-r", "/", "-c"])
        .arg(dir.path())
        .output()
        .expect("resls");
    let listed: serde_json::Value = serde_json::from_slice(&resls.stdout).expect("resls json");
    let resources = listed["resources"].as_array().map_or(0, Vec::len);
    let known = listed["resources"]
        .as_array()
        .map_or(0, |r| r.iter().filter(|r| r["state"] == "known").count());
    let hwm = vigil_bench::vm_mib(pid, "VmHWM");
    let rss = vigil_bench::vm_mib(pid, "VmRSS");
    // SAFETY: plain signal to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = host.wait();

    println!(
        "host load: {DYLIB_MONITORS}x{RESOURCES_EACH} dylib resources @1s + {NAGIOS_CHECKS} nagios checks @10s, {wall:.0} s"
    );
    println!("resources listed        {resources} ({known} known)");
    println!(
        "host CPU                {:.2} % of one core",
        (cpu1 - cpu0) / wall * 100.0
    );
    println!(
        "checks' own CPU         {:.2} % of one core (reaped children)",
        (child1 - child0) / wall * 100.0
    );
    println!("peak RSS (VmHWM)        {hwm:.1} MiB");
    println!("RSS at end              {rss:.1} MiB");
}
