//! `peapod vm ...`: low-level microVM commands. (Placeholder: the VMM work replaces this file.)

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum VmCommand {}

pub fn run(cmd: VmCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
