use super::*;

/// Plays parts from a script: records every call, fails the starts and
/// stops of the parts named in `fail_start` / `fail_stop`, and fills in an
/// address's interface as the real one does.
#[derive(Default)]
struct Scripted {
    calls: Vec<String>,
    fail_start: Vec<&'static str>,
    fail_stop: Vec<&'static str>,
}

fn label(part: &Part) -> String {
    match part {
        Part::VolumeGroup { name } => format!("vg:{name}"),
        Part::Filesystem { mount, .. } => format!("fs:{}", mount.display()),
        Part::Ip { address, .. } => format!("ip:{address}"),
        Part::Agent(a) => format!("agent:{}", a.name),
    }
}

impl PartOps for Scripted {
    fn start(&mut self, part: &Part) -> Result<Part, PartError> {
        let l = label(part);
        self.calls.push(format!("start {l}"));
        if self.fail_start.contains(&l.as_str()) {
            return Err(PartError::new(part, "refused"));
        }
        Ok(match part {
            Part::Ip {
                address,
                prefix,
                interface: None,
            } => Part::Ip {
                address: *address,
                prefix: *prefix,
                interface: Some("eth0".into()),
            },
            other => other.clone(),
        })
    }

    fn stop(&mut self, part: &Part) -> Result<(), PartError> {
        let l = label(part);
        self.calls.push(format!("stop {l}"));
        if self.fail_stop.contains(&l.as_str()) {
            return Err(PartError::new(part, "stuck"));
        }
        Ok(())
    }
}

/// Parts from short labels: `vg:x`, `fs:/x`, `ip:192.0.2.1`, `agent:x`.
fn parts(labels: &[&str]) -> Vec<Part> {
    labels
        .iter()
        .map(|l| {
            let (kind, name) = l.split_once(':').expect("kind:name");
            match kind {
                "vg" => Part::VolumeGroup { name: name.into() },
                "fs" => Part::Filesystem {
                    device: "/dev/x".into(),
                    mount: name.into(),
                    fstype: "ext4".into(),
                    options: None,
                    fsck: false,
                },
                "ip" => Part::Ip {
                    address: name.parse().expect("address"),
                    prefix: 24,
                    interface: None,
                },
                "agent" => Part::Agent(AgentPart {
                    name: name.into(),
                    agent: "ocf:heartbeat:Dummy".into(),
                    params: BTreeMap::new(),
                    monitor_interval_ms: None,
                    timeouts_ms: BTreeMap::new(),
                }),
                other => panic!("unknown kind {other}"),
            }
        })
        .collect()
}

/// Starts `configured` (file order), then — when the start succeeded —
/// halts what was started; compares every call, the recorded progress and
/// the outcome.
fn check(
    configured: &[&str],
    fail_start: &[&'static str],
    fail_stop: &[&'static str],
    expect_calls: &[&str],
    expect_progress: &[usize],
    expect_errors: &[&str],
) {
    let mut ops = Scripted {
        fail_start: fail_start.to_vec(),
        fail_stop: fail_stop.to_vec(),
        ..Scripted::default()
    };
    let mut progress = Vec::new();
    let mut errors = Vec::new();
    match start_all(&parts(configured), &mut ops, |p| progress.push(p.len())) {
        Ok(started) => {
            // What is recorded of an address names its interface.
            assert!(started.iter().all(|p| !matches!(
                p,
                Part::Ip {
                    interface: None,
                    ..
                }
            )));
            errors.extend(stop_all(&started, &mut ops).iter().map(|e| e.to_string()));
        }
        Err(failure) => {
            errors.push(failure.error.to_string());
            errors.extend(failure.undo_errors.iter().map(|e| e.to_string()));
        }
    }
    assert_eq!(ops.calls, expect_calls, "calls for {configured:?}");
    assert_eq!(progress, expect_progress, "progress for {configured:?}");
    assert_eq!(errors, expect_errors, "errors for {configured:?}");
}

#[test]
fn parts_start_by_kind_in_file_order_and_halt_in_reverse() {
    check(
        &[
            "agent:b",
            "ip:192.0.2.1",
            "fs:/a",
            "agent:a",
            "vg:v",
            "fs:/b",
        ],
        &[],
        &[],
        &[
            "start vg:v",
            "start fs:/a",
            "start fs:/b",
            "start ip:192.0.2.1",
            "start agent:b",
            "start agent:a",
            "stop agent:a",
            "stop agent:b",
            "stop ip:192.0.2.1",
            "stop fs:/b",
            "stop fs:/a",
            "stop vg:v",
        ],
        &[1, 2, 3, 4, 5, 6],
        &[],
    );
    check(&[], &[], &[], &[], &[], &[]);
}

#[test]
fn a_part_that_fails_to_start_undoes_the_started_ones_in_reverse() {
    check(
        &["ip:192.0.2.1", "fs:/a", "vg:v", "agent:x"],
        &["ip:192.0.2.1"],
        &[],
        &[
            "start vg:v",
            "start fs:/a",
            "start ip:192.0.2.1",
            "stop fs:/a",
            "stop vg:v",
        ],
        // The record is emptied once the undo is done.
        &[1, 2, 0],
        &["ip 192.0.2.1/24: refused"],
    );
    // The first part failing leaves nothing to undo.
    check(
        &["fs:/a", "vg:v"],
        &["vg:v"],
        &[],
        &["start vg:v"],
        &[0],
        &["volume group v: refused"],
    );
    // An undo that fails is reported after the cause, and the rest is
    // still undone.
    check(
        &["fs:/a", "vg:v", "agent:x"],
        &["agent:x"],
        &["fs:/a"],
        &[
            "start vg:v",
            "start fs:/a",
            "start agent:x",
            "stop fs:/a",
            "stop vg:v",
        ],
        // The part that could not be undone stays recorded.
        &[1, 2, 1],
        &[
            "agent x (ocf:heartbeat:Dummy): refused",
            "filesystem /a (/dev/x): stuck",
        ],
    );
}

#[test]
fn a_part_that_fails_to_stop_does_not_keep_the_others_up() {
    check(
        &["fs:/a", "ip:192.0.2.1", "vg:v"],
        &[],
        &["fs:/a"],
        &[
            "start vg:v",
            "start fs:/a",
            "start ip:192.0.2.1",
            "stop ip:192.0.2.1",
            "stop fs:/a",
            "stop vg:v",
        ],
        &[1, 2, 3],
        &["filesystem /a (/dev/x): stuck"],
    );
}

#[test]
fn a_started_address_is_the_same_part_as_the_configured_one() {
    let configured = &parts(&["ip:192.0.2.1"])[0];
    let started = Scripted::default().start(configured).expect("starts");
    assert_ne!(configured, &started);
    assert!(configured.same_part(&started));
    assert!(!configured.same_part(&parts(&["ip:192.0.2.2"])[0]));
}
