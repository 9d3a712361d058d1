//! peapod-vmm: the VMM alone, one VM per process. It takes `peapod vm boot`'s options and runs
//! the same code; the pod runtime and the benchmarks start it instead of the multi-call
//! `peapod` binary, so that a VM's monitor keeps only VMM code resident (see
//! `peapod::vmm::program`).

use std::process::ExitCode;

use clap::Parser;

/// Boot a Linux kernel in a microVM and run it until the guest reboots (exit status 0) or
/// fails (exit status 1, with the reason): `peapod vm boot`, as its own program.
#[derive(Parser)]
#[command(name = "peapod-vmm", version)]
struct Args {
    #[command(flatten)]
    boot: peapod::cli::vm::BootArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Its stderr is the pod's vmm.log, which a guest can make it write to.
    peapod::cli::init_capped_logging("the VMM log");
    match peapod::cli::vm::boot(args.boot) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("peapod: error: {}", peapod::cli::error_message(&err));
            ExitCode::from(peapod::cli::EXIT_PEAPOD_ERROR)
        }
    }
}
