//! `[[volume_group]]`: LVM activation with this node's tag, as HA-LVM
//! tagging and Serviceguard's exclusive activation do: `vgchange --addtag
//! vigil-<node>` then `vgchange -ay`; on halt `vgchange -an` then
//! `--deltag`. A start is refused while another node's `vigil-` tag is on
//! the volume group while that node is alive in the cluster: it activated
//! it and has not released it.
//!
//! A tag left by a node that is *not* alive (its liveness lease is gone: it
//! crashed, or froze past the TTL, and its guard has released the parts
//! before the lease could expire — DESIGN §8 invariant 1) is taken over:
//! deleted, then this node's added, so that a crash does not block the
//! failover. When liveness is not known (no cluster view yet) every other
//! node's tag refuses, the safe side.
//!
//! It does not change `lvm.conf` (`volume_list` / `auto_activation_volume_list`
//! are the operator's, as with HA-LVM).

use super::{ClusterLiveness, tool_ok};

/// The tag a node puts on the volume groups it activates.
pub fn tag(node: &str) -> String {
    format!("vigil-{node}")
}

/// The decision on a volume group's tags, given the nodes alive in the
/// cluster (`None`: not known): `Ok` with the tags of dead nodes to take
/// over, or `Err` naming the live node that holds it.
pub fn check_tags(
    tags: &[&str],
    node: &str,
    live: Option<&ClusterLiveness>,
) -> Result<Vec<String>, String> {
    let mine = tag(node);
    let mut stale = Vec::new();
    for other in tags
        .iter()
        .filter(|t| t.starts_with("vigil-") && **t != mine)
    {
        let holder = other.trim_start_matches("vigil-");
        match live {
            Some(l) if l.members.contains(holder) && !l.alive.contains(holder) => {
                stale.push((*other).to_owned());
            }
            Some(l) if l.alive.contains(holder) => {
                return Err(format!(
                    "it carries the tag {other}: node {holder} activated it, has not released it and is alive"
                ));
            }
            Some(_) => {
                return Err(format!(
                    "it carries the tag {other}: {holder} is not a node of this cluster (another cluster sharing the disks?); if it is down for good, remove the tag with vgchange --deltag {other}"
                ));
            }
            None => {
                return Err(format!(
                    "it carries the tag {other}: node {holder} activated it and has not released it, and whether {holder} is alive is not known yet"
                ));
            }
        }
    }
    Ok(stale)
}

fn tags_of(vg: &str) -> Result<Vec<String>, String> {
    let out = tool_ok(
        "vgs",
        &["--noheadings", "-o", "vg_tags", "--separator", ",", vg],
    )?;
    Ok(out
        .stdout
        .trim()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect())
}

pub fn activate(vg: &str, node: &str, live: Option<&ClusterLiveness>) -> Result<(), String> {
    let tags = tags_of(vg)?;
    let stale = check_tags(
        &tags.iter().map(String::as_str).collect::<Vec<_>>(),
        node,
        live,
    )?;
    for other in &stale {
        tracing::warn!(vg, tag = %other, "taking over a volume group tagged by a node that is not alive");
        // A dead node may have left it active here too (shared storage seen
        // by both): LVM activates per host, so only the tag moves.
        tool_ok("vgchange", &["--deltag", other, vg])?;
    }
    let mine = tag(node);
    if !tags.contains(&mine) {
        tool_ok("vgchange", &["--addtag", &mine, vg])?;
    }
    if let Err(e) = tool_ok("vgchange", &["-ay", vg]) {
        let _ = tool_ok("vgchange", &["--deltag", &mine, vg]);
        return Err(e);
    }
    Ok(())
}

pub fn deactivate(vg: &str, node: &str) -> Result<(), String> {
    tool_ok("vgchange", &["-an", vg])?;
    let mine = tag(node);
    if tags_of(vg)?.contains(&mine) {
        tool_ok("vgchange", &["--deltag", &mine, vg])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_nodes_tag_refuses_activation_a_dead_nodes_is_taken_over() {
        let set = |nodes: &[&str]| nodes.iter().map(|n| n.to_string()).collect();
        let both_alive = ClusterLiveness {
            members: set(&["node1", "node2"]),
            alive: set(&["node1", "node2"]),
        };
        let node2_dead = ClusterLiveness {
            members: set(&["node1", "node2"]),
            alive: set(&["node1"]),
        };
        let check = |tags: &[&str], live: Option<&ClusterLiveness>, want: Option<&[&str]>| {
            let got = check_tags(tags, "node1", live);
            match want {
                Some(stale) => assert_eq!(
                    got,
                    Ok(stale.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
                    "{tags:?} {live:?}"
                ),
                None => assert!(got.is_err(), "{tags:?} {live:?}: {got:?}"),
            }
        };
        check(&[], Some(&both_alive), Some(&[]));
        check(&["vigil-node1"], Some(&both_alive), Some(&[]));
        check(&["backup", "other"], None, Some(&[]));
        check(&["vigil-node2"], Some(&both_alive), None);
        check(&["vigil-node1", "vigil-node2"], Some(&both_alive), None);
        // node2's lease is gone: its tag is taken over.
        check(&["vigil-node2"], Some(&node2_dead), Some(&["vigil-node2"]));
        // Not a node of this cluster: never taken over.
        check(&["vigil-nodex"], Some(&node2_dead), None);
        // Liveness not known: refused, the safe side.
        check(&["vigil-node2"], None, None);
    }
}
