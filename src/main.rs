use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = peapod::cli::Cli::parse();
    // PEAPOD_LOG takes a filter (`debug`, `peapod=trace`, ...); without it, warnings and
    // errors only, through a plain level check (a VMM process then never parses a filter).
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .without_time();
    match std::env::var("PEAPOD_LOG") {
        Ok(filter) => logs
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .init(),
        Err(_) => logs.with_max_level(tracing::Level::WARN).init(),
    }
    match peapod::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("peapod: error: {}", peapod::cli::error_message(&err));
            ExitCode::from(peapod::cli::EXIT_PEAPOD_ERROR)
        }
    }
}
