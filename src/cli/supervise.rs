//! `peapod supervise` (hidden): the per-pod supervisor process, started by `peapod run`.

use std::process::ExitCode;

use anyhow::Context;

use crate::pod::id::PodId;
use crate::supervisor::{self, SuperviseArgs as Args};

#[derive(Debug, clap::Args)]
pub struct SuperviseArgs {
    /// The pod's supervisor lock, inherited
    #[arg(long)]
    lock_fd: i32,
    /// Where readiness is reported, inherited
    #[arg(long)]
    ready_fd: i32,
    /// The API's listening socket, inherited
    #[arg(long)]
    listen_fd: i32,
    /// The pod's id
    id: String,
}

pub fn run(args: SuperviseArgs) -> anyhow::Result<ExitCode> {
    let id: PodId = args.id.parse().context("the pod id")?;
    supervisor::run(Args {
        id,
        lock_fd: args.lock_fd,
        ready_fd: args.ready_fd,
        listen_fd: args.listen_fd,
    })?;
    Ok(ExitCode::SUCCESS)
}
