use std::process::ExitCode;

fn main() -> ExitCode {
    // The container runtime's host agent starts the agent's helpers as `/proc/self/exe
    // container-init|exec-init`, like the guest agent does: they are not CLI verbs.
    if let Some(code) = peapod::agent::helper_main() {
        return ExitCode::from(u8::try_from(code).unwrap_or(255));
    }
    let cli = match peapod::cli::Cli::try_parse_args() {
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
