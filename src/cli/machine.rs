//! `peapod machine ...`: the nested host VM (L1) for hosts without hardware KVM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::machine::initramfs::CopySpec;
use crate::machine::{self, AccelChoice, Interrupt, MachineConfig, MachineError};

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
    /// Kill the L1 and fail (status 125) when nothing arrived from it for this many seconds
    /// (its init sends a heartbeat every 5 s; counted from QEMU's start, so it also bounds the
    /// boot); at least 10, or 0: never.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub stall_timeout: u64,
    /// How the L1 runs: hardware KVM (nested) or QEMU's emulator with emulated AMD-V.
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    pub accel: AccelChoice,
    /// The QEMU that runs the L1 [default: $PEAPOD_QEMU, else qemu-system-x86_64 on PATH].
    #[arg(long, value_name = "PATH")]
    pub qemu: Option<PathBuf>,
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
            stall_timeout: (self.stall_timeout > 0)
                .then(|| Duration::from_secs(self.stall_timeout)),
            copies: self.copies.clone(),
            env: self.env.clone(),
            workdir: self.workdir.clone(),
            argv: self.command.clone(),
            qemu: self.qemu.clone(),
        }
    }
}

pub fn run(cmd: MachineCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        MachineCommand::Run(args) => {
            let config = args.config();
            let interrupt = stop_on_signals()?;
            let result = machine::run(
                &config,
                &interrupt,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            );
            match result {
                Ok(report) => {
                    tracing::info!(?report, "machine run done");
                    Ok(ExitCode::from(report.status))
                }
                Err(err @ MachineError::Timeout { .. }) => {
                    eprintln!("peapod: error: {err}");
                    Ok(ExitCode::from(EXIT_TIMEOUT))
                }
                Err(MachineError::Interrupted { signal }) => Ok(exit_on_signal(signal)),
                // a stalled or failed L1 is peapod's own failure: 125 (in `main`)
                Err(err) => Err(err.into()),
            }
        }
        MachineCommand::Check(args) => super::doctor::run(args),
        MachineCommand::Init => machine::guest::init_main(),
    }
}

/// An [`Interrupt`] raised by SIGINT, SIGTERM or SIGHUP (blocked in this thread and those it
/// starts from now on, and taken by a thread of their own): a machine run stops its L1 and
/// cleans up instead of dying with them.
pub fn stop_on_signals() -> anyhow::Result<Interrupt> {
    let interrupt = Interrupt::default();
    let raise = interrupt.clone();
    super::tty::forward_signals(move |signal| {
        tracing::debug!(signal, "stopping the machine run");
        raise.raise(signal);
        true
    })
    .context("cannot set up signal handling")?;
    Ok(interrupt)
}

/// The status a shell reports for a process killed by `signal`: 128+N.
pub fn exit_on_signal(signal: i32) -> ExitCode {
    ExitCode::from(128u8.saturating_add(u8::try_from(signal).unwrap_or(0)))
}
