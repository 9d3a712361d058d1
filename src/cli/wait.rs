//! `peapod wait`: blocks until a pod has ended and prints its exit code.

use std::process::ExitCode;

use super::pods;
use crate::pod::state::PodStatus;
use crate::supervisor::api::ApiRequest;

#[derive(Debug, clap::Args)]
#[command(after_help = "Example:
  peapod run -d --name job peapod/busybox:latest sh -c 'sleep 2; exit 4'; peapod wait job")]
pub struct WaitArgs {
    /// The pod (name, id or id prefix)
    pod: String,
}

pub fn run(args: WaitArgs) -> anyhow::Result<ExitCode> {
    let registry = pods::registry();
    let view = pods::resolve(&registry, &args.pod)?;
    let mut status = view.state.status.clone();
    if pods::is_live(&view) {
        // The supervisor may end between the check and the call: then the state file says.
        let waited = pods::connect(&registry, &view)
            .and_then(|mut c| Ok(c.expect_state(&ApiRequest::Wait)?));
        status = match waited {
            Ok(state) => state.status,
            Err(_) => {
                pods::resolve(&registry, view.record.id.as_str())?
                    .state
                    .status
            }
        };
    }
    match status {
        PodStatus::Exited { code } => {
            println!("{code}");
            Ok(ExitCode::SUCCESS)
        }
        other => anyhow::bail!("pod {} ended {other}", view.record.name),
    }
}
