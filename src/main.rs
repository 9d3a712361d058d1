use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = peapod::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PEAPOD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .without_time()
        .init();
    match peapod::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("peapod: error: {}", peapod::cli::error_message(&err));
            ExitCode::from(peapod::cli::EXIT_PEAPOD_ERROR)
        }
    }
}
