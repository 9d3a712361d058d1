//! `peapod machine ...`: the nested host VM (L1) for hosts without hardware KVM.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::machine::initramfs::CopySpec;
use crate::machine::{self, AccelChoice, MachineConfig, MachineError};

/// Exit status when the L1 ran out of time (as timeout(1) does).
pub const EXIT_TIMEOUT: u8 = 124;

#[derive(Debug, Subcommand)]
pub enum MachineCommand {
    /// Boot the L1, run CMD inside it as root with /dev/kvm ready, exit with CMD's status.
    ///
    /// CMD's stdout and stderr come back on peapod's; its stdin is /dev/null. The current
    /// peapod binary is /usr/bin/peapod inside (and peapod-vmm beside it, where it is beside
    /// the current one).
    Run(RunArgs),
    /// Print what this host has for the L1 (same as `peapod doctor`).
    Check(super::doctor::DoctorArgs),
    /// peapod's PID 1 inside the L1 (not for direct use).
    #[command(hide = true)]
    Init,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// vCPUs of the L1.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Memory of the L1 in MiB (its initramfs, with the copies, lives in it).
    #[arg(long, default_value_t = 4096, value_name = "MIB")]
    pub memory: u32,
    /// Put a host file or directory into the L1 (default GUESTPATH: the same absolute path).
    #[arg(long = "copy", value_name = "HOSTPATH[:GUESTPATH]")]
    pub copies: Vec<CopySpec>,
    /// Set an environment variable for CMD.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<String>,
    /// CMD's working directory inside the L1.
    #[arg(long, default_value = "/")]
    pub workdir: String,
    /// Kill the L1 and fail after this many seconds.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub timeout: u64,
    /// How the L1 runs: hardware KVM (nested) or QEMU's emulator with emulated AMD-V.
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    pub accel: AccelChoice,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

fn parse_env(text: &str) -> Result<String, String> {
    match text.split_once('=') {
        Some((key, _)) if !key.is_empty() => Ok(text.to_string()),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

impl RunArgs {
    pub fn config(&self) -> MachineConfig {
        MachineConfig {
            cpus: self.cpus,
            memory_mib: self.memory,
            accel: self.accel,
            timeout: Duration::from_secs(self.timeout),
            copies: self.copies.clone(),
            env: self.env.clone(),
            workdir: self.workdir.clone(),
            argv: self.command.clone(),
        }
    }
}

pub fn run(cmd: MachineCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        MachineCommand::Run(args) => {
            let config = args.config();
            let result = machine::run(&config, &mut std::io::stdout(), &mut std::io::stderr());
            match result {
                Ok(report) => {
                    tracing::info!(?report, "machine run done");
                    Ok(ExitCode::from(report.status))
                }
                Err(err @ MachineError::Timeout { .. }) => {
                    eprintln!("peapod: error: {err}");
                    Ok(ExitCode::from(EXIT_TIMEOUT))
                }
                Err(err) => Err(err.into()),
            }
        }
        MachineCommand::Check(args) => super::doctor::run(args),
        MachineCommand::Init => machine::guest::init_main(),
    }
}
