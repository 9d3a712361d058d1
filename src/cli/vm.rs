//! `peapod vm ...`: low-level microVM commands.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::vmm::builder;
use crate::vmm::vcpu::VcpuStop;

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Boot the built-in guest, which prints "hello from a peapod guest" on its serial port
    /// and halts: a check that KVM, the vCPU and the serial device work on this host.
    Hello,
}

pub fn run(cmd: VmCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        VmCommand::Hello => hello(),
    }
}

fn hello() -> anyhow::Result<ExitCode> {
    let stop = builder::run_hello(std::io::stdout()).context("cannot run the built-in guest")?;
    std::io::stdout()
        .flush()
        .context("cannot write to stdout")?;
    match stop {
        VcpuStop::Halted => Ok(ExitCode::SUCCESS),
        other => bail!("the built-in guest stopped with {other:?} instead of halting"),
    }
}
