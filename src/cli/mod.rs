//! The command line: one file per verb. Arguments become typed configs here; errors become
//! exit codes in `main`.

mod bench;
mod doctor;
mod image;
mod machine;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status when peapod itself fails (as podman and docker do).
pub const EXIT_PEAPOD_ERROR: u8 = 125;

#[derive(Debug, Parser)]
#[command(
    name = "peapod",
    version,
    about = "Pods in KVM microVMs: the pod is the shell, the containers are the peas"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The nested host VM (L1) that gives hosts without hardware KVM a real /dev/kvm.
    #[command(subcommand)]
    Machine(machine::MachineCommand),
    /// Print what this host has for running pods, and how to fix what is missing.
    Doctor(doctor::DoctorArgs),
    /// Low-level microVM commands.
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// Benchmarks that print a table.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// OCI images: import, list, inspect, remove, prune, and guest block images.
    #[command(subcommand)]
    Image(image::ImageCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Machine(cmd) => machine::run(cmd),
        Command::Doctor(args) => doctor::run(args),
        Command::Vm(cmd) => vm::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Image(cmd) => image::run(cmd),
    }
}
