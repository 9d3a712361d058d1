//! `peapod machine ...`.

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum MachineCommand {}

pub fn run(cmd: MachineCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
