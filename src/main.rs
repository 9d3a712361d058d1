use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = peapod::cli::Cli::parse();
    peapod::cli::init_logging();
    match peapod::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("peapod: error: {}", peapod::cli::error_message(&err));
            ExitCode::from(peapod::cli::EXIT_PEAPOD_ERROR)
        }
    }
}
