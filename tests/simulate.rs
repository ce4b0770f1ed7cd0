//! Data-driven `vigil simulate` tests: each directory under `tests/simulate/`
//! is a config dir with a `state.toml`, an `args` file (extra arguments, one
//! per line) and `expected.json` (placement and actions, in order). Run with
//! `UPDATE_EXPECT=1` to rewrite the expectations after a deliberate change,
//! then review the diff.

use std::path::Path;

use vigil_tests::*;

fn check_case(dir: &Path) -> Result<(), String> {
    let args: Vec<String> = std::fs::read_to_string(dir.join("args"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    let out = std::process::Command::new(vigil_bin())
        .arg("-c")
        .arg(dir)
        .arg("simulate")
        .arg("--state")
        .arg(dir.join("state.toml"))
        .arg("--json")
        .args(&args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "vigil simulate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let got: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON: {e}"))?;
    let expected_path = dir.join("expected.json");
    if std::env::var("UPDATE_EXPECT").as_deref() == Ok("1") {
        let text = serde_json::to_string_pretty(&got).map_err(|e| e.to_string())? + "\n";
        std::fs::write(&expected_path, text).map_err(|e| e.to_string())?;
        return Ok(());
    }
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&expected_path)
            .map_err(|e| format!("{}: {e}", expected_path.display()))?,
    )
    .map_err(|e| format!("{}: {e}", expected_path.display()))?;
    if got == expected {
        Ok(())
    } else {
        Err(format!(
            "expected {}\n     got {}",
            serde_json::to_string(&expected).unwrap_or_default(),
            serde_json::to_string(&got).unwrap_or_default()
        ))
    }
}

#[test]
fn simulate_cases() {
    let root = repo_root().join("tests/simulate");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .expect("tests/simulate exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 10,
        "expected the simulate cases, found {}",
        cases.len()
    );
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            check_case(case).err().map(|e| {
                format!(
                    "{}: {e}",
                    case.file_name().unwrap_or_default().to_string_lossy()
                )
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn simulate_refuses_bad_input_with_clear_errors() {
    let cfg = ConfigDir::new();
    cfg.write(
        "cluster.toml",
        "[cluster]\nname = \"t\"\nnodes = [\"node1\", \"node2\"]\n",
    );
    cfg.write("state.toml", "[nodes.node9]\nstate = \"up\"\n");
    let state = cfg.path().join("state.toml").display().to_string();
    let out = cfg.vigil(&["simulate", "--state", &state]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("node9"),
        "{out:?}"
    );
    cfg.write("state.toml", "[nodes.node1]\nstate = \"sideways\"\n");
    let out = cfg.vigil(&["simulate", "--state", &state]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sideways"),
        "{out:?}"
    );
    cfg.write("state.toml", "");
    let out = cfg.vigil(&["simulate", "--state", &state, "--node-down", "nodeX"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--node-down nodeX: not in cluster.nodes"),
        "{out:?}"
    );
    let out = cfg.vigil(&["simulate", "--state", &state, "--set", "garbage"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("garbage"),
        "{out:?}"
    );
}
