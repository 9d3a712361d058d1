//! `peapod-probe`: the isolation probes of `peapod bench isolation`, run inside a container
//! (see `peapod::bench::probe` for what each probe does and why each is harmless). Built
//! static for any rootfs with `scripts/build-guest-bins peapod-probe`. `peapod-probe bench
//! ...` runs the workloads of `peapod bench models` instead (`peapod::bench::workload`).

use std::process::ExitCode;

use peapod::bench::probe::{Invocation, ProbeError, run};
use peapod::bench::workload::{Workload, WorkloadError};

fn main() -> ExitCode {
    let args: Result<Vec<String>, _> = std::env::args_os()
        .skip(1)
        .map(|a| {
            a.into_string()
                .map_err(|a| ProbeError::Usage(format!("argument {a:?} is not UTF-8")))
        })
        .collect();
    if let Ok(args) = &args
        && args.first().map(String::as_str) == Some("bench")
    {
        return match Workload::parse(&args[1..]).and_then(|w| w.run()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("peapod-probe: {e}");
                ExitCode::from(if matches!(e, WorkloadError::Usage(_)) {
                    2
                } else {
                    1
                })
            }
        };
    }
    match args
        .and_then(|args| Invocation::parse(&args))
        .and_then(|inv| run(&inv))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peapod-probe: {e}");
            ExitCode::from(if matches!(e, ProbeError::Usage(_)) {
                2
            } else {
                1
            })
        }
    }
}
