//! `peapod bench ...`: benchmarks that print a table.

use std::process::ExitCode;

use clap::Subcommand;

use crate::bench::machine::MachineBench;
use crate::machine::AccelChoice;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The test bed: L1 boot time and the cost of one `machine run`, against a bare QEMU L1.
    Machine {
        /// Boots of each kind.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
        accel: AccelChoice,
    },
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Machine { runs, accel } => {
            anyhow::ensure!(runs >= 1, "--runs must be at least 1");
            crate::bench::machine::run(&MachineBench { runs, accel })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
