//! Package parts end to end (DESIGN §5): the real `vigil` binary on one
//! node, real ext4 file systems on loop devices, real addresses on veth
//! links between network namespaces, and the real guard releasing them
//! when the host freezes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vigil_tests::*;

const WAIT: Duration = Duration::from_secs(30);

/// A mount point for the package to mount on; whatever is mounted there is
/// detached and the directory removed on drop (the test may fail with the
/// package up).
struct MountPoint {
    dir: PathBuf,
}

impl MountPoint {
    fn new(tag: &str) -> Self {
        // Not created: the part creates a missing mount point.
        Self {
            dir: std::env::temp_dir().join(unique(tag)),
        }
    }

    fn path(&self) -> &str {
        self.dir.to_str().expect("temp dir paths are UTF-8 here")
    }

    /// The source of what is mounted here, if anything.
    fn mounted(&self) -> Option<String> {
        let table = vigil_sdk::mountinfo::read().expect("mountinfo");
        vigil_sdk::mountinfo::find(&table, &self.dir).map(|e| e.source.clone())
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        while nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A process of the test's own (not the package's); killed and reaped on
/// drop.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends SIGCONT on drop, so a test that fails while the host is frozen
/// still lets it be stopped.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

/// A one-node config with package `web`: `run` writes `run` (and the
/// time) to `script.log`, `halt` likewise, and the package's parts are
/// `parts` (TOML).
fn setup(parts: &str, lease_ttl_seconds: u32) -> ConfigDir {
    let cfg = ConfigDir::new();
    cfg.write(
        "cluster.toml",
        &format!(
            "[cluster]\nname = \"test\"\nnodes = [\"node1\"]\n\n[store]\ntype = \"embedded\"\nlease_ttl_seconds = {lease_ttl_seconds}\n"
        ),
    );
    let log = cfg.path().join("script.log");
    let script = |what: &str| format!("#!/bin/sh\necho {what} >> {}\n", log.display());
    // The lan monitor publishes the subnets that [[ip]] parts need up.
    cfg.monitor(
        "lan",
        "name = \"lan\"\ntype = \"dylib\"\nplugin = \"vigil_lan\"\ninterval_seconds = 1\ntimeout_seconds = 1\n",
    );
    cfg.script("pkg/run.sh", &script("run"));
    cfg.script("pkg/halt.sh", &script("halt"));
    cfg.write(
        "packages.d/web.toml",
        &format!(
            "name = \"web\"\ntype = \"failover\"\nnodes = [\"node1\"]\nrun = [\"pkg/run.sh\"]\nhalt = [\"pkg/halt.sh\"]\n\n{parts}"
        ),
    );
    cfg
}

fn wait_state(cfg: &ConfigDir, host: &Host, state: &str) -> serde_json::Value {
    wait_for(WAIT, &format!("web to be {state}"), || {
        let p = cfg.package_status("web")?;
        if p["state"] == state {
            Ok(p)
        } else {
            let log = host.log_text();
            let parts: Vec<&str> = log.lines().filter(|l| l.contains("part")).collect();
            Err(format!("{p}\nhost log on parts:\n{}", parts.join("\n")))
        }
    })
}

fn script_log(cfg: &ConfigDir) -> Vec<String> {
    std::fs::read_to_string(cfg.path().join("script.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn require_disk_tools() {
    require_tools(&[
        ("mkfs.ext4", "e2fsprogs"),
        ("losetup", "util-linux"),
        ("fsck", "util-linux"),
        ("mount", "mount"),
    ]);
    require_loop_devices();
}

fn filesystem_part(device: &str, mount: &MountPoint) -> String {
    format!(
        "[[filesystem]]\ndevice = \"{device}\"\nmount = \"{}\"\ntype = \"ext4\"\noptions = \"noatime\"\nfsck = true\n",
        mount.path()
    )
}

#[test]
fn filesystem_part_is_mounted_before_run_and_a_process_holding_a_file_does_not_block_the_halt() {
    if !privileged("filesystem parts on loop devices") {
        return;
    }
    require_disk_tools();
    let disk = LoopDevice::new("fsa", 32 << 20);
    disk.mkfs_ext4();
    let mnt = MountPoint::new("fsa");
    let cfg = setup(&filesystem_part(&disk.device, &mnt), 10);
    // `run` proves the order: it writes into the file system.
    cfg.script(
        "pkg/run.sh",
        &format!(
            "#!/bin/sh\nset -e\necho data > {}/data\necho run >> {}\n",
            mnt.path(),
            cfg.path().join("script.log").display()
        ),
    );
    let host = cfg.start_host();
    wait_state(&cfg, &host, "up");
    assert_eq!(mnt.mounted().as_deref(), Some(disk.device.as_str()));
    assert_eq!(
        std::fs::read_to_string(mnt.dir.join("data")).unwrap(),
        "data\n"
    );

    // Someone outside the package keeps a file open and its cwd there.
    let mut holder = Holder(
        Command::new("/bin/sh")
            .args(["-c", "exec 3<data; exec sleep 1000"])
            .current_dir(&mnt.dir)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn holder"),
    );
    let out = cfg.vigil(&["pkg", "halt", "web"]);
    assert!(out.status.success(), "{out:?}");
    wait_state(&cfg, &host, "down");
    assert_eq!(mnt.mounted(), None, "unmounted on halt");
    let status = wait_for(WAIT, "the holder to be killed", || {
        holder
            .0
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or("still alive".to_owned())
    });
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGTERM),
        "the holder got SIGTERM ({status})"
    );
    assert_eq!(script_log(&cfg), ["run", "halt"]);
    assert!(
        !host.log_text().contains("MNT_DETACH"),
        "a plain unmount sufficed"
    );

    // The data is on the disk, for whoever mounts it next.
    let out = cfg.vigil(&["pkg", "run", "web"]);
    assert!(out.status.success(), "{out:?}");
    wait_state(&cfg, &host, "up");
    assert_eq!(
        std::fs::read_to_string(mnt.dir.join("data")).unwrap(),
        "data\n"
    );
    let out = cfg.vigil(&["pkg", "halt", "web"]);
    assert!(out.status.success(), "{out:?}");
    wait_state(&cfg, &host, "down");
    assert_eq!(mnt.mounted(), None);
}

#[test]
fn a_mount_that_fails_fails_the_start_and_run_never_runs() {
    if !privileged("filesystem parts on loop devices") {
        return;
    }
    require_disk_tools();
    // Not formatted: nothing to mount.
    let disk = LoopDevice::new("fsb", 8 << 20);
    let mnt = MountPoint::new("fsb");
    let parts = format!(
        "[[filesystem]]\ndevice = \"{}\"\nmount = \"{}\"\ntype = \"ext4\"\n",
        disk.device,
        mnt.path()
    );
    let cfg = setup(&parts, 10);
    let host = cfg.start_host();
    let failed = wait_state(&cfg, &host, "failed");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("filesystem {}", mnt.path())) && reason.contains("mount"),
        "{failed}"
    );
    assert_eq!(mnt.mounted(), None);
    // The manager's clean-up halt may run `halt`; `run` never ran.
    assert!(
        !script_log(&cfg).contains(&"run".to_owned()),
        "run never ran: {:?}",
        script_log(&cfg)
    );
}

/// A node namespace `node` and a LAN namespace `lan` joined by a veth pair;
/// the node has `<net>.1/24`, the LAN side `<net>.2/24`.
struct Lan {
    node: Netns,
    lan: Netns,
    veth: Veth,
    net: String,
}

impl Lan {
    fn new(tag: &str, net: &str) -> Self {
        let node = Netns::new(&format!("{tag}n"));
        let lan = Netns::new(&format!("{tag}l"));
        let veth = Veth::new(tag, &node, &lan);
        veth.a.address(&format!("{net}.1/24"));
        veth.b.address(&format!("{net}.2/24"));
        node.ip(&["link", "set", "lo", "up"]);
        Self {
            node,
            lan,
            veth,
            net: net.to_owned(),
        }
    }

    /// A wrapper that runs the host in the node's network namespace only:
    /// `ip netns exec` would also give it a mount namespace of its own,
    /// where the test could not see its mounts.
    fn host_prefix(&self) -> Vec<String> {
        vec![
            "nsenter".to_owned(),
            format!("--net=/run/netns/{}", self.node.name),
        ]
    }

    /// The addresses on the node's end.
    fn node_addresses(&self) -> String {
        self.node
            .ip(&["-o", "addr", "show", "dev", &self.veth.a.name])
    }

    fn mac(&self) -> String {
        let text = self
            .node
            .ip(&["-o", "link", "show", "dev", &self.veth.a.name]);
        text.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .expect("a MAC")
            .to_owned()
    }
}

/// Unique 10.x.y per test process and test, so runs never share a subnet
/// (they are in namespaces of their own anyway).
fn net(test: u32) -> String {
    let pid = std::process::id();
    format!("10.{}.{}", 100 + (pid % 100), (pid / 100 % 200) + test)
}

fn require_net_tools() {
    require_tools(&[("ip", "iproute2")]);
}

#[test]
fn ip_part_is_added_on_the_subnets_interface_announced_and_removed_on_halt() {
    if !privileged("address parts in network namespaces") {
        return;
    }
    require_net_tools();
    let lan = Lan::new("ia", &net(1));
    let vip = format!("{}.50", lan.net);
    // A stale neighbour entry on the LAN side: the gratuitous ARP must
    // update it to the node's MAC.
    lan.lan.ip(&[
        "neigh",
        "replace",
        &vip,
        "lladdr",
        "02:00:00:00:00:01",
        "dev",
        &lan.veth.b.name,
        "nud",
        "stale",
    ]);
    let cfg = setup(&format!("[[ip]]\naddress = \"{vip}/24\"\n"), 10);
    let prefix = lan.host_prefix();
    let host = cfg.start_host_with(&prefix.iter().map(String::as_str).collect::<Vec<_>>());
    wait_state(&cfg, &host, "up");
    assert!(
        lan.node_addresses().contains(&format!("inet {vip}/24")),
        "{}",
        lan.node_addresses()
    );
    let mac = lan.mac();
    wait_for(WAIT, "the LAN's neighbour entry to name the node", || {
        let neigh = lan
            .lan
            .ip(&["neigh", "show", &vip, "dev", &lan.veth.b.name]);
        if neigh.contains(&mac) {
            Ok(())
        } else {
            Err(neigh)
        }
    });

    // why shows the part as started and the subnet it needs, implied.
    let why = why_json(&cfg);
    assert_eq!(why["parts"][0]["state"], "up", "{why}");
    assert_eq!(
        why["parts"][0]["started"],
        format!("ip {vip}/24 on {}", lan.veth.a.name),
        "{why}"
    );
    let subnet = format!("/net/subnets/{}.0_24/status", lan.net);
    let implied = why["resources"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == subnet.as_str()))
        .unwrap_or_else(|| panic!("{subnet} not in why: {why}"));
    assert_eq!(implied["state"], "up", "{why}");
    assert_eq!(implied["implied_by"], format!("ip {vip}/24"), "{why}");

    let out = cfg.vigil(&["pkg", "halt", "web"]);
    assert!(out.status.success(), "{out:?}");
    wait_state(&cfg, &host, "down");
    assert!(
        !lan.node_addresses().contains(&vip),
        "{}",
        lan.node_addresses()
    );
    assert_eq!(script_log(&cfg), ["run", "halt"]);
    assert_eq!(why_json(&cfg)["parts"][0]["state"], "down");
}

/// `vigil why web --json`, parsed.
fn why_json(cfg: &ConfigDir) -> serde_json::Value {
    let out = cfg.vigil(&["why", "web", "--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("why --json is JSON")
}

#[test]
fn an_address_whose_subnet_is_not_up_here_waits_for_it_and_why_names_the_implied_requirement() {
    if !privileged("address parts in network namespaces") {
        return;
    }
    require_net_tools();
    let lan = Lan::new("is", &net(6));
    // A subnet no interface of the node has yet.
    let other = net(7);
    let vip = format!("{other}.50");
    let cfg = setup(
        &format!(
            "[[ip]]\naddress = \"{vip}/24\"\ninterface = \"{}\"\n",
            lan.veth.a.name
        ),
        10,
    );
    let prefix = lan.host_prefix();
    let host = cfg.start_host_with(&prefix.iter().map(String::as_str).collect::<Vec<_>>());
    let subnet = format!("/net/subnets/{other}.0_24/status");
    let why = wait_for(WAIT, "why to show the subnet down", || {
        let why = why_json(&cfg);
        let text = why["text"].as_str().unwrap_or_default();
        if text.contains(&format!(
            "resource {subnet} (implied by ip {vip}/24 on {}) is down",
            lan.veth.a.name
        )) {
            Ok(why)
        } else {
            Err(why.to_string())
        }
    });
    assert!(
        why["text"]
            .as_str()
            .unwrap()
            .contains(&format!("no interface has an address in {other}.0/24")),
        "{why}"
    );
    assert_eq!(why["parts"][0]["state"], "down", "{why}");
    let status = cfg.package_status("web").unwrap();
    assert_eq!(status["state"], "down", "not started: {status}");
    assert!(script_log(&cfg).is_empty(), "{:?}", script_log(&cfg));
    assert!(!lan.node_addresses().contains(&vip));

    // The subnet comes up on the node: the package starts there.
    lan.node.ip(&[
        "addr",
        "add",
        &format!("{other}.1/24"),
        "dev",
        &lan.veth.a.name,
    ]);
    wait_state(&cfg, &host, "up");
    assert!(
        lan.node_addresses().contains(&format!("inet {vip}/24")),
        "{}",
        lan.node_addresses()
    );
}

#[test]
fn an_address_already_answering_on_the_lan_fails_the_start_with_the_reason() {
    if !privileged("address parts in network namespaces") {
        return;
    }
    require_net_tools();
    let lan = Lan::new("ib", &net(2));
    let taken = format!("{}.60", lan.net);
    lan.lan.ip(&[
        "addr",
        "add",
        &format!("{taken}/24"),
        "dev",
        &lan.veth.b.name,
    ]);
    let cfg = setup(&format!("[[ip]]\naddress = \"{taken}/24\"\n"), 10);
    let prefix = lan.host_prefix();
    let host = cfg.start_host_with(&prefix.iter().map(String::as_str).collect::<Vec<_>>());
    let failed = wait_state(&cfg, &host, "failed");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("{taken} is already in use on the LAN")),
        "{failed}"
    );
    assert!(
        !lan.node_addresses().contains(&taken),
        "{}",
        lan.node_addresses()
    );
    assert!(
        !script_log(&cfg).contains(&"run".to_owned()),
        "{:?}",
        script_log(&cfg)
    );
    // why names the part that blocked the start, and why.
    let why = why_json(&cfg);
    let failure = why["part_failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains(&format!("ip {taken}/24"))
            && failure.contains(&format!("{taken} is already in use on the LAN")),
        "{why}"
    );
    assert!(
        why["text"]
            .as_str()
            .unwrap()
            .contains("the last start here failed on a part: ip"),
        "{why}"
    );
}

/// RFC 3339 timestamp at the start of a guard log line containing `what`.
fn guard_line(log: &str, what: &str) -> Option<String> {
    log.lines()
        .find(|l| l.contains(what))
        .and_then(|l| l.split(' ').next())
        .map(str::to_owned)
}

#[test]
fn the_guard_of_a_frozen_host_releases_its_address_and_mount() {
    if !privileged("guard releasing parts") {
        return;
    }
    require_disk_tools();
    require_net_tools();
    let disk = LoopDevice::new("gr", 32 << 20);
    disk.mkfs_ext4();
    let mnt = MountPoint::new("gr");
    let lan = Lan::new("gr", &net(3));
    let vip = format!("{}.70", lan.net);
    let parts = format!(
        "{}\n[[ip]]\naddress = \"{vip}/24\"\n",
        filesystem_part(&disk.device, &mnt)
    );
    // Lease TTL 2 s: the guard acts after 1 s of silence.
    let cfg = setup(&parts, 2);
    let prefix = lan.host_prefix();
    let host = cfg.start_host_with(&prefix.iter().map(String::as_str).collect::<Vec<_>>());
    let _resume = Resume(host.pid() as i32);
    wait_state(&cfg, &host, "up");
    assert!(mnt.mounted().is_some());
    assert!(lan.node_addresses().contains(&vip));
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(cfg.path().join("run/packages/web.json")).expect("run record"),
    )
    .unwrap();
    let kinds: Vec<&str> = record["parts"]
        .as_array()
        .expect("parts in the run record")
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["filesystem", "ip"], "{record}");

    kill(Pid::from_raw(host.pid() as i32), Signal::SIGSTOP).unwrap();
    let guard_log = |cfg: &ConfigDir| {
        std::fs::read_to_string(cfg.path().join("run/guard.log")).unwrap_or_default()
    };
    wait_for(WAIT, "the guard to release the parts", || {
        let log = guard_log(&cfg);
        if log.contains("package web: parts released") {
            Ok(())
        } else {
            Err(log)
        }
    });
    // Released while the host is still frozen.
    assert_eq!(mnt.mounted(), None);
    assert!(
        !lan.node_addresses().contains(&vip),
        "{}",
        lan.node_addresses()
    );
    let log = guard_log(&cfg);
    let halt = guard_line(&log, "package web: running halt").expect("halt line");
    let ip = guard_line(&log, &format!("package web: releasing ip {vip}/24")).expect("ip line");
    let released = guard_line(&log, "package web: parts released").expect("released line");
    assert!(halt <= ip && ip <= released, "{log}");
    // Addresses go before file systems (reverse start order).
    let order: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("releasing"))
        .map(|l| {
            if l.contains("releasing ip") {
                "ip"
            } else {
                "fs"
            }
        })
        .collect();
    assert_eq!(order, ["ip", "fs"], "{log}");
}

#[test]
fn volume_group_part_is_tagged_while_active_and_refused_while_a_foreign_node_holds_it() {
    if !privileged("volume group parts on loop devices") {
        return;
    }
    let scratch = ScratchVolumeGroup::new("vga");
    let vg = &scratch.vg;
    let cfg = setup(&format!("[[volume_group]]\nname = \"{}\"\n", vg.name), 10);
    let host = cfg.start_host();
    wait_state(&cfg, &host, "up");
    assert_eq!(vg.tags(), "vigil-node1");
    let out = cfg.vigil(&["pkg", "halt", "web"]);
    assert!(out.status.success(), "{out:?}");
    wait_state(&cfg, &host, "down");
    assert_eq!(vg.tags(), "", "the tag goes on halt");

    // A node of another cluster sharing the disks activated it: never
    // taken over (tests/parts_cluster.rs has the live and the dead node of
    // this cluster).
    run("vgchange", &["--addtag", "vigil-node2", &vg.name]);
    let out = cfg.vigil(&["pkg", "run", "web"]);
    assert!(out.status.success(), "{out:?}");
    let failed = wait_state(&cfg, &host, "failed");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("it carries the tag vigil-node2: node2 is not a node of this cluster"),
        "{failed}"
    );
    assert_eq!(vg.tags(), "vigil-node2", "left as it was");
}

fn require_dummy_agent() {
    require_tool("/usr/lib/ocf/resource.d/heartbeat/Dummy", "resource-agents");
}

/// The value of the resource and its reason, as `resls` shows them.
fn resource_value(cfg: &ConfigDir, name: &str) -> Result<(String, String), String> {
    let r = cfg.resource(name)?;
    Ok((
        r["value"].as_str().unwrap_or("").to_owned(),
        r["reason"].as_str().unwrap_or("").to_owned(),
    ))
}

#[test]
fn ocf_dummy_agent_starts_stops_and_its_monitor_saying_not_running_fails_the_package() {
    if !privileged("OCF agents as package parts") {
        return;
    }
    require_dummy_agent();
    let state = std::env::temp_dir().join(format!("{}.state", unique("dummy")));
    let cfg = setup(
        &format!(
            "[[agent]]\nname = \"dummy\"\nagent = \"ocf:heartbeat:Dummy\"\nparams = {{ state = \"{}\" }}\nmonitor_interval_seconds = 0.3\n",
            state.display()
        ),
        10,
    );
    let resource = "/package/web/agent/dummy/status";
    let host = cfg.start_host();
    wait_state(&cfg, &host, "up");
    assert!(state.exists(), "Dummy start wrote its state file");
    // `vigil status` shows the parts up on this node.
    let status = String::from_utf8_lossy(&cfg.vigil(&["status"]).stdout).into_owned();
    assert!(
        status.contains("part agent dummy (ocf:heartbeat:Dummy)") && status.contains("up on node1"),
        "{status}"
    );
    assert_eq!(
        cfg.package_status("web").unwrap()["parts_here"],
        serde_json::json!([{"kind": "agent", "part": "agent dummy (ocf:heartbeat:Dummy)"}])
    );
    wait_for(
        WAIT,
        "the agent's monitor to say up",
        || match resource_value(&cfg, resource)? {
            (v, _) if v == "up" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    // Halt stops it; run starts it again.
    let out = cfg.vigil(&["pkg", "halt", "web"]);
    assert!(out.status.success(), "{out:?}");
    wait_state(&cfg, &host, "down");
    assert!(!state.exists(), "Dummy stop removed its state file");
    let out = cfg.vigil(&["pkg", "run", "web"]);
    assert!(out.status.success(), "{out:?}");
    wait_state(&cfg, &host, "up");
    assert!(state.exists());

    // The resource behind the agent's back goes away: monitor says 7.
    std::fs::remove_file(&state).unwrap();
    let failed = wait_state(&cfg, &host, "failed");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(resource), "{failed}");
    // Halted and failed here: the agent is no longer judged on this node.
    wait_for(
        WAIT,
        "the agent's status to be stopped",
        || match resource_value(&cfg, resource)? {
            (v, _) if v == "stopped" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let _ = std::fs::remove_file(&state);
}

#[test]
fn template_prints_an_agents_parameters_from_its_meta_data() {
    require_dummy_agent();
    let cfg = ConfigDir::new();
    let out = cfg.vigil(&["template", "package", "--agent", "ocf:heartbeat:Dummy"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("agent = \"ocf:heartbeat:Dummy\""), "{text}");
    assert!(
        text.contains("# state = \"/run/resource-agents/Dummy-RESOURCE_ID.state\"  # State file"),
        "{text}"
    );
    assert!(
        text.contains("# Timeouts from the agent's meta-data: start 20 s, stop 20 s, monitor 20 s"),
        "{text}"
    );
    let missing = cfg.vigil(&[
        "template",
        "package",
        "--agent",
        "ocf:heartbeat:NoSuchAgent",
    ]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("NoSuchAgent"),
        "{missing:?}"
    );
}

#[test]
fn check_refuses_a_missing_agent_and_two_packages_with_one_address() {
    let cfg = setup(
        "[[agent]]\nname = \"x\"\nagent = \"ocf:heartbeat:NoSuchAgent\"\n\n[[ip]]\naddress = \"192.0.2.50/24\"\n",
        10,
    );
    cfg.write(
        "packages.d/other.toml",
        "name = \"other\"\ntype = \"failover\"\nnodes = [\"node1\"]\nrun = [\"/bin/true\"]\nhalt = [\"/bin/true\"]\n\n[[ip]]\naddress = \"192.0.2.50/24\"\n",
    );
    let out = cfg.vigil(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("web.toml:8: package web: agent x (ocf:heartbeat:NoSuchAgent): /usr/lib/ocf/resource.d/heartbeat/NoSuchAgent"),
        "{text}"
    );
    assert!(
        text.contains("web.toml:12: address 192.0.2.50 is already claimed by package \"other\""),
        "{text}"
    );
}

#[test]
fn ocf_ipaddr2_agent_adds_and_removes_its_address() {
    if !privileged("OCF IPaddr2 in a network namespace") {
        return;
    }
    require_tool(
        "/usr/lib/ocf/resource.d/heartbeat/IPaddr2",
        "resource-agents",
    );
    require_net_tools();
    let lan = Lan::new("ra", &net(4));
    let vip = format!("{}.80", lan.net);
    let cfg = setup(
        &format!(
            "[[agent]]\nname = \"vip\"\nagent = \"ocf:heartbeat:IPaddr2\"\nparams = {{ ip = \"{vip}\", cidr_netmask = 24, nic = \"{}\" }}\nmonitor_interval_seconds = 1\n",
            lan.veth.a.name
        ),
        10,
    );
    let prefix = lan.host_prefix();
    let host = cfg.start_host_with(&prefix.iter().map(String::as_str).collect::<Vec<_>>());
    wait_state(&cfg, &host, "up");
    assert!(
        lan.node_addresses().contains(&format!("inet {vip}/24")),
        "{}",
        lan.node_addresses()
    );
    wait_for(
        WAIT,
        "IPaddr2's monitor to say up",
        || match resource_value(&cfg, "/package/web/agent/vip/status")? {
            (v, _) if v == "up" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let out = cfg.vigil(&["pkg", "halt", "web"]);
    assert!(out.status.success(), "{out:?}");
    wait_state(&cfg, &host, "down");
    assert!(
        !lan.node_addresses().contains(&vip),
        "{}",
        lan.node_addresses()
    );
}

#[test]
fn a_restarted_host_re_adopts_the_parts_and_releases_them_on_halt() {
    if !privileged("filesystem parts on loop devices") {
        return;
    }
    require_disk_tools();
    let disk = LoopDevice::new("ad", 32 << 20);
    disk.mkfs_ext4();
    let mnt = MountPoint::new("ad");
    let cfg = setup(&filesystem_part(&disk.device, &mnt), 10);
    let mut host = cfg.start_host();
    let up = wait_state(&cfg, &host, "up");
    assert!(host.stop().unwrap().success());
    // Stopping the host does not stop packages: the mount stays.
    assert!(mnt.mounted().is_some());
    let host = cfg.start_host();
    let again = wait_state(&cfg, &host, "up");
    assert!(
        again["reason"].as_str().unwrap().contains("re-adopted"),
        "{again}"
    );
    assert_eq!(again["fence_token"], up["fence_token"]);
    assert_eq!(script_log(&cfg), ["run"], "run ran once");
    let out = cfg.vigil(&["pkg", "halt", "web"]);
    assert!(out.status.success(), "{out:?}");
    wait_state(&cfg, &host, "down");
    assert_eq!(mnt.mounted(), None, "the adopted mount is released");
}

#[test]
fn ipv6_part_waits_for_duplicate_address_detection_and_fails_on_a_duplicate() {
    if !privileged("IPv6 address parts in network namespaces") {
        return;
    }
    require_net_tools();
    let lan = Lan::new("i6", &net(5));
    let prefix = format!("fd00:{:x}:{:x}::", std::process::id() % 0xffff, 5);
    for (ns, end, host) in [
        (&lan.node, &lan.veth.a.name, 1),
        (&lan.lan, &lan.veth.b.name, 2),
    ] {
        ns.ip(&[
            "addr",
            "add",
            &format!("{prefix}{host}/64"),
            "dev",
            end,
            "nodad",
        ]);
    }
    let taken = format!("{prefix}99");
    lan.lan.ip(&[
        "addr",
        "add",
        &format!("{taken}/64"),
        "dev",
        &lan.veth.b.name,
        "nodad",
    ]);
    let vip = format!("{prefix}50");
    let cfg = setup(&format!("[[ip]]\naddress = \"{vip}/64\"\n"), 10);
    cfg.write(
        "packages.d/dup.toml",
        &format!(
            "name = \"dup\"\ntype = \"failover\"\nnodes = [\"node1\"]\nrun = [\"/bin/true\"]\nhalt = [\"/bin/true\"]\n\n[[ip]]\naddress = \"{taken}/64\"\n"
        ),
    );
    let host_prefix = lan.host_prefix();
    let host = cfg.start_host_with(&host_prefix.iter().map(String::as_str).collect::<Vec<_>>());
    wait_state(&cfg, &host, "up");
    let shown = lan
        .node
        .ip(&["-6", "-o", "addr", "show", "dev", &lan.veth.a.name]);
    let line = shown
        .lines()
        .find(|l| l.contains(&format!("{vip}/64")))
        .unwrap_or_else(|| panic!("{vip} not on the node: {shown}"));
    assert!(!line.contains("tentative"), "DAD done before run: {line}");
    let dup = wait_for(WAIT, "dup to fail", || {
        let out = cfg.vigil(&["status", "--json"]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        v["packages"]
            .as_array()
            .and_then(|p| {
                p.iter()
                    .find(|p| p["name"] == "dup" && p["state"] == "failed")
                    .cloned()
            })
            .ok_or_else(|| v.to_string())
    });
    assert!(
        dup["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("IPv6 duplicate address detection failed"),
        "{dup}"
    );
    let shown = lan
        .node
        .ip(&["-6", "-o", "addr", "show", "dev", &lan.veth.a.name]);
    assert!(
        !shown.contains(&taken),
        "the duplicate was removed: {shown}"
    );
    let out = cfg.vigil(&["pkg", "halt", "web"]);
    assert!(out.status.success(), "{out:?}");
    wait_state(&cfg, &host, "down");
    let shown = lan
        .node
        .ip(&["-6", "-o", "addr", "show", "dev", &lan.veth.a.name]);
    assert!(!shown.contains(&vip), "{shown}");
}
