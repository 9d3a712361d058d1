//! `peapod stop`: SIGTERM to a pod's containers, SIGKILL after a grace period, the VM
//! powered off.

use std::process::ExitCode;

use super::pods;
use crate::supervisor::api::ApiRequest;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  peapod stop web
  peapod stop -t 0 web db")]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL
    #[arg(short = 't', long = "time", default_value_t = 10)]
    time: u64,
    /// The pods (names, ids or id prefixes)
    #[arg(required = true)]
    pods: Vec<String>,
}

pub fn run(args: StopArgs) -> anyhow::Result<ExitCode> {
    let registry = pods::registry();
    Ok(pods::for_each_name(&args.pods, |query| {
        let view = pods::resolve(&registry, query)?;
        if pods::is_live(&view) {
            let mut client = pods::connect(&registry, &view)?;
            client.expect_state(&ApiRequest::Stop {
                timeout_s: args.time,
            })?;
        }
        Ok(())
    }))
}
