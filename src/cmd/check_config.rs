//! `fwd check-config FILE`: validates a configuration without touching the system, so it can run
//! before a deploy or a reload.

use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code of an invalid configuration (clap uses the same for usage errors).
const EXIT_INVALID: u8 = 2;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The TOML configuration file.
    pub file: PathBuf,
}

/// Prints the summary (stdout) and warnings (stderr) and returns success, or prints the error
/// (stderr) and returns exit code 2.
pub fn run(args: &Args) -> ExitCode {
    match fwd_control::config::load_config(&args.file) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            println!("{}", loaded.config.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}
