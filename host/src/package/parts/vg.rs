//! `[[volume_group]]`: LVM activation with this node's tag, as HA-LVM
//! tagging and Serviceguard's exclusive activation do: `vgchange --addtag
//! vigil-<node>` then `vgchange -ay`; on halt `vgchange -an` then
//! `--deltag`. A start is refused while another node's `vigil-` tag is on
//! the volume group: that node activated it and has not released it.
//!
//! It does not change `lvm.conf` (`volume_list` / `auto_activation_volume_list`
//! are the operator's, as with HA-LVM) and does not judge whether the
//! tagging node is alive: a tag left by a node that died stays until an
//! operator removes it (`vgchange --deltag vigil-<node> <vg>`), which is the
//! safe side — two nodes never activate it at once.

use super::tool_ok;

/// The tag a node puts on the volume groups it activates.
pub fn tag(node: &str) -> String {
    format!("vigil-{node}")
}

/// The decision on a volume group's tags: `Err` names the other node that
/// holds it.
pub fn check_tags(tags: &[&str], node: &str) -> Result<(), String> {
    let mine = tag(node);
    match tags.iter().find(|t| t.starts_with("vigil-") && **t != mine) {
        Some(other) => Err(format!(
            "it carries the tag {other}: node {} activated it and has not released it (if that node is down for good, remove the tag with vgchange --deltag {other})",
            other.trim_start_matches("vigil-")
        )),
        None => Ok(()),
    }
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

pub fn activate(vg: &str, node: &str) -> Result<(), String> {
    let tags = tags_of(vg)?;
    check_tags(&tags.iter().map(String::as_str).collect::<Vec<_>>(), node)?;
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
    fn another_nodes_tag_refuses_activation() {
        let check = |tags: &[&str], ok: bool| {
            assert_eq!(check_tags(tags, "node1").is_ok(), ok, "{tags:?}");
        };
        check(&[], true);
        check(&["vigil-node1"], true);
        check(&["backup", "other"], true);
        check(&["vigil-node2"], false);
        check(&["vigil-node1", "vigil-node2"], false);
    }
}
