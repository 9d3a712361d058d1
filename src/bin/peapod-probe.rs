//! `peapod-probe`: the isolation probes of `peapod bench isolation`, run inside a container
//! (see `peapod::bench::probe` for what each probe does and why each is harmless). Built
//! static for any rootfs with `scripts/build-guest-bins peapod-probe`.

use std::process::ExitCode;

use peapod::bench::probe::{Invocation, ProbeError, run};

fn main() -> ExitCode {
    let args: Result<Vec<String>, _> = std::env::args_os()
        .skip(1)
        .map(|a| {
            a.into_string()
                .map_err(|a| ProbeError::Usage(format!("argument {a:?} is not UTF-8")))
        })
        .collect();
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
