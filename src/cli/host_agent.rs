//! `peapod host-agent` (hidden): a host pod's agent, started by the pod's supervisor for the
//! container runtime (see [`crate::runtime::container::agent`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::pod::id::PodId;
use crate::runtime::container::agent::{self, HostAgentArgs as Args};

#[derive(Debug, clap::Args)]
pub struct HostAgentArgs {
    /// The pods' run root (the pod's directory is RUN_ROOT/ID)
    #[arg(long)]
    run_root: PathBuf,
    /// The pod's network namespace (default: a loopback-only one of its own)
    #[arg(long)]
    netns: Option<PathBuf>,
    /// The control socket's listener, bound by the supervisor, inherited
    #[arg(long)]
    control_fd: i32,
    /// The stdio socket's listener, bound by the supervisor, inherited
    #[arg(long)]
    stdio_fd: i32,
    /// The pod's id
    id: String,
}

pub fn run(args: HostAgentArgs) -> anyhow::Result<ExitCode> {
    let id: PodId = args.id.parse().context("the pod id")?;
    // SAFETY: the supervisor bound these listeners for this process and handed them over
    // at these numbers (see `runtime::container`); nothing else here owns them.
    let listeners = unsafe { agent::Listeners::from_raw_fds(args.control_fd, args.stdio_fd) };
    agent::run(
        Args {
            id,
            run_root: args.run_root,
            netns: args.netns,
        },
        listeners,
    )?;
    Ok(ExitCode::SUCCESS)
}
