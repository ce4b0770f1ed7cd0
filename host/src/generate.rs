//! Shell completions (`vigil completions SHELL`, clap_complete) and man
//! pages (the hidden `vigil manpages DIR`, clap_mangen), both generated from
//! the clap definitions in [`crate::cli`], so they never disagree with the
//! parser. The Debian package build (`packaging/deb/build`) runs both.
//!
//! Hidden commands (`guard`, `monitor serve-dylib`, `manpages`) get no man
//! page (clap_complete still completes them). Nothing here reads the
//! configuration.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;
pub use clap_complete::Shell;

use crate::cli::Cli;

/// The completion script for `shell`.
pub fn completion_script(shell: Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "vigil", &mut out);
    out
}

/// Writes the completion script for `shell` to `out`. Generated in memory
/// first: clap_complete panics on a write error (`vigil completions bash |
/// head` closes the pipe), and here that is an error like any other.
pub fn completions(shell: Shell, out: &mut dyn Write) -> std::io::Result<()> {
    out.write_all(&completion_script(shell))?;
    out.flush()
}

/// Writes `vigil.1` and one `vigil-<command>.1` per visible (sub)command
/// into `dir`, creating it.
pub fn manpages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing man pages to {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_name_every_command() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = String::from_utf8(completion_script(shell)).unwrap();
            for command in ["host", "check", "resls", "simulate", "completions"] {
                assert!(text.contains(command), "{shell}: {command} missing");
            }
        }
    }

    #[test]
    fn man_pages_for_the_binary_and_each_visible_command() {
        let dir = tempfile::tempdir().unwrap();
        manpages(dir.path()).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for want in [
            "vigil.1",
            "vigil-host.1",
            "vigil-check.1",
            "vigil-monitor-test.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
        assert!(
            !names
                .iter()
                .any(|n| n.contains("guard") || n.contains("manpages")),
            "{names:?}"
        );
        let main = std::fs::read_to_string(dir.path().join("vigil.1")).unwrap();
        assert!(main.contains("\n.TH vigil 1 "), "{main}");
        assert!(main.contains("vigil\\-completions(1)"), "{main}");
    }
}
