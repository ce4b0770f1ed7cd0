//! `vigil`: parses arguments, sets up logging, runs the command, maps errors
//! to exit codes (0 done, 1 refused or failed, 2 usage, 3 host unreachable). Everything else lives in the `vigil_host` library.

use clap::Parser;
use vigil_host::cli::{Cli, Command};
use vigil_host::config::{self, LogFormat};

fn main() {
    let cli = Cli::parse();
    let (format, default_level) = if matches!(cli.command, Command::Host { .. }) {
        // `[logging] format` applies to the daemon's log. An unreadable
        // cluster.toml falls back to text: the host reports it and exits.
        let dir = vigil_host::cli::absolute_config_dir(&cli.config);
        let format = config::load_cluster(&dir).map_or(LogFormat::Text, |c| c.log_format);
        (format, "info")
    } else {
        (LogFormat::Text, "error")
    };
    vigil_host::logging::init(format, default_level);
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
