use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match peapod::cli::Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print and succeed; a usage error is peapod's own error and
        // exits 125, as docker's and podman's do.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(peapod::cli::EXIT_PEAPOD_ERROR);
        }
    };
    match cli.capped_log() {
        Some(what) => peapod::cli::init_capped_logging(what),
        None => peapod::cli::init_logging(),
    }
    match peapod::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("peapod: error: {}", peapod::cli::error_message(&err));
            ExitCode::from(peapod::cli::EXIT_PEAPOD_ERROR)
        }
    }
}
