//! `vigil`: parses arguments, sets up logging, runs the command, maps errors
//! to exit codes (0 done, 1 refused or failed, 2 usage, 3 host unreachable). Everything else lives in the `vigil_host` library.

use clap::Parser;
use tracing_subscriber::EnvFilter;
use vigil_host::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Host { .. }) {
        "info"
    } else {
        "error"
    };
    let filter =
        EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let code = match vigil_host::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vigil: {e:#}");
            vigil_host::cli::exit_code(&e)
        }
    };
    // `exit` runs no destructors: flush what is still buffered.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::process::exit(code);
}
