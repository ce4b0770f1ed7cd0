//! Package parts on a two-node cluster over a real etcd (DESIGN §5, §8):
//!
//! * A relocatable address moving with its package when the owner's host
//!   is killed or frozen past the TTL ([`vigil_tests::address_failover`]):
//!   it answers from node2 in the end, never from both; the outage the
//!   client sees is printed (`bench/src/bin/address_failover.rs` prints
//!   medians over several runs).
//! * A volume group on loop devices tagged by a live node is refused; once
//!   that node's lease is gone, its tag is taken over.

use std::time::Duration;

use vigil_tests::address_failover::{Loss, TTL_SECONDS, address_moves_to_node2};
use vigil_tests::*;

const WAIT: Duration = Duration::from_secs(40);

fn unique_name(tag: &str) -> String {
    format!("parts-{}-{tag}", std::process::id())
}

#[test]
fn address_moves_to_node2_when_node1s_host_is_killed_never_answering_from_both() {
    if !privileged("two-node address failover in network namespaces") {
        return;
    }
    println!("{}", address_moves_to_node2("ak", 1, Loss::Kill));
}

#[test]
fn address_moves_to_node2_when_node1s_host_is_frozen_past_the_ttl_never_answering_from_both() {
    if !privileged("two-node address failover in network namespaces") {
        return;
    }
    println!("{}", address_moves_to_node2("af", 2, Loss::Freeze));
}

#[test]
fn volume_group_tagged_by_a_live_node_is_refused_and_taken_over_once_its_lease_is_gone() {
    if !privileged("volume group parts on loop devices") {
        return;
    }
    let scratch = ScratchVolumeGroup::new("vgc");
    let vg = &scratch.vg;
    let etcd = Etcd::start();
    let cluster = unique_name("vg");
    let cfgs: Vec<ConfigDir> = ["node1", "node2"]
        .iter()
        .map(|_| {
            let cfg = ConfigDir::new();
            cfg.write(
                "cluster.toml",
                &format!(
                    "[cluster]\nname = \"{cluster}\"\nnodes = [\"node1\", \"node2\"]\n[store]\ntype = \"etcd\"\nendpoints = [\"{}\"]\nlease_ttl_seconds = {TTL_SECONDS}\n",
                    etcd.endpoint
                ),
            );
            cfg.write(
                "packages.d/data.toml",
                &format!(
                    "name = \"data\"\ntype = \"failover\"\nnodes = [\"node1\"]\nauto_run = false\nrun = [\"/bin/true\"]\nhalt = [\"/bin/true\"]\n\n[[volume_group]]\nname = \"{}\"\n",
                    vg.name
                ),
            );
            cfg
        })
        .collect();
    // node2 activated it (as if it had run the package) and is alive.
    run("vgchange", &["--addtag", "vigil-node2", &vg.name]);
    let _host1 = cfgs[0].start_host_as("node1");
    let mut host2 = cfgs[1].start_host_as("node2");
    let nodes_up = |cfg: &ConfigDir| -> Result<(), String> {
        let out = cfg.vigil(&["status", "--json"]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        let up = v["nodes"]
            .as_array()
            .map_or(0, |n| n.iter().filter(|n| n["state"] == "up").count());
        if up == 2 { Ok(()) } else { Err(v.to_string()) }
    };
    wait_for(WAIT, "both nodes up", || nodes_up(&cfgs[0]));
    let out = cfgs[0].vigil(&["pkg", "run", "data"]);
    assert!(out.status.success(), "{out:?}");
    let state = |cfg: &ConfigDir, want: &str| {
        wait_for(WAIT, &format!("data {want}"), || {
            let p = cfg.package_status("data")?;
            if p["state"] == want {
                Ok(p)
            } else {
                Err(p.to_string())
            }
        })
    };
    let failed = state(&cfgs[0], "failed");
    assert!(
        failed["reason"].as_str().unwrap_or_default().contains(
            "it carries the tag vigil-node2: node node2 activated it, has not released it and is alive"
        ),
        "{failed}"
    );
    assert_eq!(vg.tags(), "vigil-node2", "left as it was");

    // node2 crashes: once its lease is gone, its tag no longer holds.
    host2.kill();
    wait_for(WAIT, "node2's lease to expire", || {
        let out = cfgs[0].vigil(&["status", "--json"]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        let node2 = v["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["name"] == "node2").cloned())
            .unwrap_or_default();
        if node2["state"] == "down" {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });
    // The failure on node1 is cleared, as an operator would.
    let out = cfgs[0].vigil(&["pkg", "clear", "data"]);
    assert!(out.status.success(), "{out:?}");
    let out = cfgs[0].vigil(&["pkg", "run", "data"]);
    assert!(out.status.success(), "{out:?}");
    state(&cfgs[0], "up");
    assert_eq!(vg.tags(), "vigil-node1", "node2's tag taken over");
    let out = cfgs[0].vigil(&["pkg", "halt", "data"]);
    assert!(out.status.success(), "{out:?}");
    state(&cfgs[0], "down");
    assert_eq!(vg.tags(), "");
}
