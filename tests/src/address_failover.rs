//! The two-node address failover of issue 12, shared by
//! `tests/parts_cluster.rs` (one run per case, asserted) and
//! `bench/src/bin/address_failover.rs` (several runs, medians printed):
//! each node's host in a network namespace of its own, joined by a bridge
//! in the root namespace where etcd listens, a client in a third namespace
//! polling the address every 50 ms; node1's host is killed or frozen past
//! the TTL. [`address_moves_to_node2`] panics unless the address answers
//! from node2 in the end and never from both (the client's answers never go
//! back to node1, the address is never on both nodes, the bridge's and the
//! client's neighbour tables name node2's MAC, and node1's guard released it
//! before node2 added it, by the logs' timestamps), and returns the figures.
//! Needs root, `ip`, `nsenter`, `python3` and etcd.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const WAIT: Duration = Duration::from_secs(40);
/// `[store] lease_ttl_seconds` of these clusters.
pub const TTL_SECONDS: u64 = 2;
/// The client's poll period.
pub const POLL: Duration = Duration::from_millis(50);
const PORT: u16 = 8080;

/// A link in the root namespace, deleted on drop (with its veth peer).
struct RootLink(String);

impl Drop for RootLink {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Sends SIGCONT on drop, so a test that fails while a host is frozen
/// still lets it be stopped.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

/// Unique 10.x.y per test process and test.
fn net(test: u32) -> String {
    let pid = std::process::id();
    format!("10.{}.{}", 150 + (pid % 100), (pid / 100 % 200) + test)
}

/// A bridge in the root namespace, the LAN of the cluster, with
/// `<net>.1/24` (etcd listens there).
struct Lan {
    bridge: RootLink,
    net: String,
    /// Root-side veth ends, deleted before the bridge.
    ports: Vec<RootLink>,
}

impl Lan {
    fn new(tag: &str, net: &str) -> Self {
        let name = format!("vb{}{tag}", std::process::id());
        run("ip", &["link", "add", &name, "type", "bridge"]);
        let bridge = RootLink(name);
        run(
            "ip",
            &["addr", "add", &format!("{net}.1/24"), "dev", &bridge.0],
        );
        run("ip", &["link", "set", &bridge.0, "up"]);
        Self {
            bridge,
            net: net.to_owned(),
            ports: Vec::new(),
        }
    }

    /// Joins `ns` to the bridge with `<net>.<host>/24` on its end; returns
    /// the end's name in `ns`.
    fn attach(&mut self, ns: &Netns, tag: &str, host: u8) -> String {
        let pid = std::process::id();
        let inner = format!("v{pid}{tag}i");
        let outer = format!("v{pid}{tag}o");
        run(
            "ip",
            &[
                "link", "add", &inner, "netns", &ns.name, "type", "veth", "peer", "name", &outer,
            ],
        );
        self.ports.push(RootLink(outer.clone()));
        run("ip", &["link", "set", &outer, "master", &self.bridge.0]);
        run("ip", &["link", "set", &outer, "up"]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{}.{host}/24", self.net),
            "dev",
            &inner,
        ]);
        ns.ip(&["link", "set", &inner, "up"]);
        ns.ip(&["link", "set", "lo", "up"]);
        inner
    }
}

/// The MAC address of `link` in `ns`.
fn mac_of(ns: &Netns, link: &str) -> String {
    let text = ns.ip(&["-o", "link", "show", "dev", link]);
    text.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("a MAC")
        .to_owned()
}

/// One node: its namespace, its link on the LAN, its config.
struct Node {
    name: &'static str,
    ns: Netns,
    link: String,
    mac: String,
    cfg: ConfigDir,
}

impl Node {
    fn start(&self) -> Host {
        self.cfg.start_host_as_with(
            self.name,
            &["nsenter", &format!("--net=/run/netns/{}", self.ns.name)],
        )
    }

    fn has_address(&self, vip: &str) -> bool {
        self.ns
            .ip(&["-o", "addr", "show", "dev", &self.link])
            .contains(&format!("inet {vip}/"))
    }
}

/// The cluster of the address demo: etcd on the bridge, node1 and node2,
/// package `web` with `[[ip]]` and an HTTP server bound to the address that
/// answers with its node's name.
struct AddressCluster {
    nodes: Vec<Node>,
    client: Netns,
    vip: String,
    // Dropped after the nodes (whose hosts and guards use it), before the LAN.
    _etcd: Etcd,
    lan: Lan,
}

fn address_cluster(tag: &str, test: u32) -> AddressCluster {
    require_tools(&[
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("python3", "python3"),
    ]);
    let mut lan = Lan::new(tag, &net(test));
    let etcd = Etcd::start_on(&format!("{}.1", lan.net));
    let vip = format!("{}.100", lan.net);
    let cluster = unique_name(tag);
    let mut nodes = Vec::new();
    for (i, name) in ["node1", "node2"].into_iter().enumerate() {
        let ns = Netns::new(&format!("{tag}{}", i + 1));
        let link = lan.attach(&ns, &format!("{tag}{}", i + 1), 11 + i as u8);
        let mac = mac_of(&ns, &link);
        let cfg = ConfigDir::new();
        cfg.write(
            "cluster.toml",
            &format!(
                "[cluster]\nname = \"{cluster}\"\nnodes = [\"node1\", \"node2\"]\n[store]\ntype = \"etcd\"\nendpoints = [\"{}\"]\nlease_ttl_seconds = {TTL_SECONDS}\n",
                etcd.endpoint
            ),
        );
        cfg.monitor(
            "lan",
            "name = \"lan\"\ntype = \"dylib\"\nplugin = \"vigil_lan\"\ninterval_seconds = 1\ntimeout_seconds = 1\n",
        );
        cfg.write("www/node.txt", &format!("{name}\n"));
        cfg.script("pkg/run.sh", "#!/bin/sh\nexit 0\n");
        cfg.script("pkg/halt.sh", "#!/bin/sh\nexit 0\n");
        // The package file is the same on both nodes (every host runs the
        // applied set, DESIGN §7): what is per node is in the script.
        cfg.script(
            "pkg/http.sh",
            &format!(
                "#!/bin/sh\nexec /usr/bin/python3 -m http.server --bind {vip} --directory {} {PORT}\n",
                cfg.path().join("www").display()
            ),
        );
        cfg.write(
            "packages.d/web.toml",
            &format!(
                "name = \"web\"\ntype = \"failover\"\nnodes = [\"node1\", \"node2\"]\nrun = [\"pkg/run.sh\"]\nhalt = [\"pkg/halt.sh\"]\n\n[[ip]]\naddress = \"{vip}/24\"\n\n[[service]]\nname = \"http\"\ncommand = [\"pkg/http.sh\"]\n"
            ),
        );
        nodes.push(Node {
            name,
            ns,
            link,
            mac,
            cfg,
        });
    }
    let client = Netns::new(&format!("{tag}c"));
    lan.attach(&client, &format!("{tag}c"), 20);
    AddressCluster {
        nodes,
        client,
        vip,
        _etcd: etcd,
        lan,
    }
}

fn unique_name(tag: &str) -> String {
    format!("parts-{}-{tag}", std::process::id())
}

/// What the client saw at one poll: the node that answered, or none.
#[derive(Debug, Clone)]
struct Answer {
    at: Instant,
    node: Option<String>,
}

/// A client in its own network namespace asking the address which node
/// serves it, every [`POLL`].
struct Client {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Answer>>>,
}

/// `GET /node.txt` from `addr`; the body's first line.
fn ask(addr: SocketAddr) -> Option<String> {
    let timeout = Duration::from_millis(200);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    stream
        .write_all(b"GET /node.txt HTTP/1.0\r\nHost: vip\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then(|| body.lines().next().unwrap_or_default().to_owned())
}

impl Client {
    fn start(ns: &Netns, vip: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let addr: SocketAddr = format!("{vip}:{PORT}").parse().expect("address");
        let path = format!("/run/netns/{}", ns.name);
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // Network namespaces are per thread: this one alone moves.
            let file = std::fs::File::open(&path).expect("open the client's namespace");
            // SAFETY: plain setns(2) on a descriptor we hold open.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let mut answers = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                answers.push(Answer {
                    at: started,
                    node: ask(addr),
                });
                std::thread::sleep(POLL.saturating_sub(started.elapsed()));
            }
            answers
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("joined once")
            .join()
            .expect("client thread")
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Which nodes hold the address, sampled every [`POLL`] from outside.
struct Holders {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<(Instant, bool, bool)>>>,
}

impl Holders {
    fn start(c: &AddressCluster) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let probe: Vec<(String, String)> = c
            .nodes
            .iter()
            .map(|n| (n.ns.name.clone(), n.link.clone()))
            .collect();
        let vip = c.vip.clone();
        let thread = std::thread::spawn(move || {
            let holds = |(ns, link): &(String, String)| {
                std::process::Command::new("ip")
                    .args(["-n", ns, "-o", "addr", "show", "dev", link])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("inet {vip}/")))
                    .unwrap_or(false)
            };
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                seen.push((Instant::now(), holds(&probe[0]), holds(&probe[1])));
                std::thread::sleep(POLL);
            }
            seen
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<(Instant, bool, bool)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("joined once")
            .join()
            .expect("holders thread")
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn web_on(cfg: &ConfigDir, node: &str) -> Result<(), String> {
    let p = cfg.package_status("web")?;
    if p["state"] == "up" && p["running_on"] == serde_json::json!([node]) {
        Ok(())
    } else {
        Err(p.to_string())
    }
}

/// The neighbour entry for `vip` in `ns` (the root namespace, the bridge's
/// own table, when `None`).
fn neighbour(ns: Option<&Netns>, vip: &str) -> String {
    match ns {
        Some(ns) => ns.ip(&["neigh", "show", vip]),
        None => run("ip", &["neigh", "show", vip]),
    }
}

/// The RFC 3339 UTC timestamp that starts the first line of `log`
/// containing every one of `what`, as (date, nanoseconds of the day).
fn stamp_of(log: &str, what: &[&str]) -> Option<(String, u64)> {
    let line = log.lines().find(|l| what.iter().all(|w| l.contains(w)))?;
    let stamp = line.split_whitespace().next()?;
    let (date, time) = stamp.trim_end_matches('Z').split_once('T')?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut parts = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    let nanos: u64 = format!("{frac:0<9}")[..9].parse().ok()?;
    Some((
        date.to_owned(),
        ((h * 60 + m) * 60 + s) * 1_000_000_000 + nanos,
    ))
}

/// How the owner of the address is lost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    /// SIGKILL of node1's host (its guard, which outlives it, releases).
    Kill,
    /// SIGSTOP of node1's host past the TTL, then SIGCONT.
    Freeze,
}

/// The demo: web with its address on node1, the client polling; node1's
/// host lost; the address answers from node2, never from both.
pub fn address_moves_to_node2(tag: &str, test: u32, loss: Loss) -> Figures {
    let c = address_cluster(tag, test);
    let mut host1 = c.nodes[0].start();
    wait_for(WAIT, "web up on node1", || web_on(&c.nodes[0].cfg, "node1"));
    let host2 = c.nodes[1].start();
    wait_for(WAIT, "node2 to see web on node1", || {
        web_on(&c.nodes[1].cfg, "node1")
    });
    let addr: SocketAddr = format!("{}:{PORT}", c.vip).parse().unwrap();
    // The root namespace (the bridge's address) talks to the address too,
    // so that the bridge has a neighbour entry to be moved.
    wait_for(
        WAIT,
        "the address to answer from node1 on the bridge",
        || match ask(addr) {
            Some(n) if n == "node1" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let client = Client::start(&c.client, &c.vip);
    let holders = Holders::start(&c);
    wait_for(WAIT, "the client to hear node1", || {
        match neighbour(Some(&c.client), &c.vip) {
            n if n.contains(&c.nodes[0].mac) => Ok(()),
            n => Err(n),
        }
    });
    std::thread::sleep(Duration::from_millis(500));

    let pid = host1.pid() as i32;
    let _resume = Resume(pid);
    let lost_at = Instant::now();
    match loss {
        Loss::Kill => host1.kill(),
        Loss::Freeze => kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap(),
    }
    wait_for(WAIT, "web up on node2", || web_on(&c.nodes[1].cfg, "node2"));
    wait_for(WAIT, "the address to answer from node2", || {
        match ask(addr) {
            Some(n) if n == "node2" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    if loss == Loss::Freeze {
        // The frozen host wakes up: its package is no longer its own, and
        // the address must not come back to node1.
        kill(Pid::from_raw(pid), Signal::SIGCONT).unwrap();
    }
    // Keep polling a while: no answer may come from node1 again.
    std::thread::sleep(Duration::from_secs(3));
    let answers = client.finish();
    let held = holders.finish();
    // What the hosts and node1's guard did, for a failure message.
    let story = || {
        let pick = |log: String| -> String {
            log.lines()
                .filter(|l| {
                    l.contains("vigil_host::package::manager")
                        || l.contains("vigil_host::package::parts")
                        || l.contains("lease")
                        || l.contains("vigil guard")
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        format!(
            "\nnode1's host:\n{}\nnode1's guard:\n{}\nnode2's host:\n{}",
            pick(std::fs::read_to_string(&host1.log).unwrap_or_default()),
            pick(
                std::fs::read_to_string(c.nodes[0].cfg.path().join("run/guard.log"))
                    .unwrap_or_default()
            ),
            pick(host2.log_text())
        )
    };

    let first_node2 = answers
        .iter()
        .position(|a| a.node.as_deref() == Some("node2"))
        .unwrap_or_else(|| {
            panic!(
                "the client never heard node2 ({} polls, the first from node1: {:?}); client's neighbour entry: {}{}",
                answers.len(),
                answers.first(),
                neighbour(Some(&c.client), &c.vip),
                story()
            )
        });
    let last_node1 = answers
        .iter()
        .rposition(|a| a.node.as_deref() == Some("node1"))
        .expect("the client heard node1 before the loss");
    assert!(
        last_node1 < first_node2,
        "the client heard node1 again after node2 (at poll {last_node1}, node2 first at {first_node2}){}",
        story()
    );
    assert!(
        answers[first_node2..]
            .iter()
            .all(|a| a.node.as_deref() != Some("node1")),
        "node1 answered after node2{}",
        story()
    );
    let both: Vec<_> = held.iter().filter(|(_, a, b)| *a && *b).collect();
    assert!(
        both.is_empty(),
        "the address was on both nodes at once {} times{}",
        both.len(),
        story()
    );
    assert!(
        !c.nodes[0].has_address(&c.vip),
        "node1 still has it{}",
        story()
    );
    assert!(
        c.nodes[1].has_address(&c.vip),
        "node2 does not have it{}",
        story()
    );
    // One owner in the neighbour tables: the bridge's and the client's.
    for (what, table) in [
        ("bridge", neighbour(None, &c.vip)),
        ("client", neighbour(Some(&c.client), &c.vip)),
    ] {
        assert!(
            table.contains(&c.nodes[1].mac) && !table.contains(&c.nodes[0].mac),
            "{what}'s neighbour table names node2's MAC {}: {table}",
            c.nodes[1].mac
        );
    }
    // Ordered timestamps: node1's guard released the address before node2
    // added it.
    let guard_log =
        std::fs::read_to_string(c.nodes[0].cfg.path().join("run/guard.log")).unwrap_or_default();
    let released = stamp_of(
        &guard_log,
        &[&format!("package web: releasing ip {}/24", c.vip)],
    )
    .unwrap_or_else(|| panic!("node1's guard did not release the address:\n{guard_log}"));
    let host2_log = host2.log_text();
    let added = stamp_of(
        &host2_log,
        &["part started", &format!("ip {}/24 on", c.vip)],
    )
    .unwrap_or_else(|| panic!("node2 did not log the address started"));
    assert!(
        released < added,
        "node1 released the address at {released:?}, node2 added it at {added:?}"
    );
    let fdb = run("bridge", &["fdb", "show", "br", &c.lan.bridge.0]);
    assert!(fdb.contains(&c.nodes[1].mac), "{fdb}");

    let outage = answers[first_node2].at - answers[last_node1].at;
    let from_loss = answers[first_node2].at.saturating_duration_since(lost_at);
    let failed = answers[last_node1 + 1..first_node2].len();
    Figures {
        loss,
        outage,
        from_loss,
        unanswered: failed,
        release_to_add: Duration::from_nanos(added.1.saturating_sub(released.1)),
    }
}

/// What one failover measured.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub loss: Loss,
    /// From the client's last answer from node1 to its first from node2.
    pub outage: Duration,
    /// From the loss of node1's host to node2's first answer.
    pub from_loss: Duration,
    /// Polls without an answer in the outage.
    pub unanswered: usize,
    /// From node1's guard releasing the address to node2 adding it.
    pub release_to_add: Duration,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "address failover ({:?}, lease TTL {TTL_SECONDS} s): client outage {:.2} s (last node1 answer to first node2 answer, {} polls unanswered, one every {} ms at most), {:.2} s from the loss to node2's first answer; node1's guard released the address {} ms before node2 added it",
            self.loss,
            self.outage.as_secs_f64(),
            self.unanswered,
            POLL.as_millis(),
            self.from_loss.as_secs_f64(),
            self.release_to_add.as_millis()
        )
    }
}
