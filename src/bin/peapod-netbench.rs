//! `peapod-netbench`: the TCP server and client of `peapod bench net` (see
//! `peapod::bench::netperf` for the commands and the protocol). Built static for pods with
//! `scripts/build-guest-bins peapod-netbench`.

use std::process::ExitCode;

use peapod::bench::netperf::{Invocation, NetperfError, run};

fn main() -> ExitCode {
    let args: Result<Vec<String>, _> = std::env::args_os()
        .skip(1)
        .map(|a| {
            a.into_string()
                .map_err(|a| NetperfError::Usage(format!("argument {a:?} is not UTF-8")))
        })
        .collect();
    match args.and_then(|args| Invocation::parse(&args)).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peapod-netbench: {e}");
            ExitCode::from(if matches!(e, NetperfError::Usage(_)) {
                2
            } else {
                1
            })
        }
    }
}
