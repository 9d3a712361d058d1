//! `peapod bench ...`: benchmarks that print a table.

use std::process::ExitCode;

use clap::Subcommand;

use std::path::PathBuf;

use crate::bench::boot::BootBench;
use crate::bench::isolation::OutputFormat;
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
        /// Also compare the test bed's QEMU with this one (e.g. Debian 12's 7.2 against the
        /// backports' 10), each L1 running one pod.
        #[arg(long, value_name = "QEMU")]
        versus_qemu: Option<PathBuf>,
    },
    /// Guest boot: peapod's VMM against QEMU -M microvm, same kernel and initramfs: time to the
    /// init's marker, VMM RSS, and KVM's per boot counters from the host's debugfs (root).
    /// Runs in the test bed where the host has no hardware KVM.
    Boot {
        /// Boots of each VMM.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Guest kernel (default: the one kernel/build.sh built).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// An initramfs whose init prints PEAPOD_GUEST_INIT_OK (rootfs/build-test-initramfs.sh).
        #[arg(long)]
        initrd: PathBuf,
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        #[arg(long, default_value_t = 256, value_name = "MIB")]
        memory: u32,
        /// Kernel parameters to add to both VMMs' command line (e.g. "no_timer_check"), to
        /// measure what they cost or save.
        #[arg(long, value_name = "PARAMS")]
        append: Option<String>,
    },
    /// Pod start: a bare boot against `vm run-container --image peapod/busybox:latest -- echo`
    /// (command to the container's first output, split into agent ready and container
    /// started), on the same kernel; `run --rm IMAGE true` against `vm run-container` and crun
    /// (command to exit); `ps` with no pods and with --pods-for-ps pods running. Pods live in
    /// a private PEAPOD_ROOT and PEAPOD_RUN_DIR. Runs in the test bed where the host has no
    /// hardware KVM.
    Pod {
        /// Runs of each kind.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Guest kernel (default: the one kernel/build.sh built).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// The bare boot's initramfs, whose init prints PEAPOD_GUEST_INIT_OK
        /// (rootfs/build-test-initramfs.sh).
        #[arg(long)]
        test_initrd: PathBuf,
        /// The pods' agent initramfs [default: $PEAPOD_AGENT_INITRAMFS, else the one
        /// rootfs/build-agent-initramfs.sh built].
        #[arg(long)]
        agent_initrd: Option<PathBuf>,
        /// Detached pods (96 MiB each) running while `peapod ps` is timed; 0: no ps rows.
        #[arg(long, default_value_t = 10, value_name = "N")]
        pods_for_ps: usize,
    },
    /// Images: import + conversion of a 3-layer image to an erofs block image against
    /// `umoci unpack` + `mkfs.erofs` by hand, block image sizes, and the second conversion
    /// (a cache hit).
    Image {
        /// Conversions of each kind.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Bench this OCI layout (DIR[:REF]) instead of the generated 3-layer image.
        #[arg(long, value_name = "DIR[:REF]")]
        layout: Option<String>,
        /// Where to put the stores, bundles and block images [default: the temp dir].
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
    /// Pod networking: TCP stream throughput and 1-byte request/response latency from the
    /// host to a pod VM on the peapod network, against the same between two network
    /// namespaces joined by a veth pair (no VM), runs interleaved; both ends run the static
    /// peapod-netbench [$PEAPOD_NETBENCH, else the one scripts/setup built]. Needs root;
    /// runs in the test bed where the host has no hardware KVM.
    Net {
        /// Runs of each peer (interleaved: pod, veth, pod, veth, ...).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seconds of each TCP stream.
        #[arg(long, default_value_t = 3)]
        seconds: u32,
        /// Counted request/responses (1 byte each way) in each run.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// The pod's guest kernel (default: the one kernel/build.sh built).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// The pod's agent initramfs [default: $PEAPOD_AGENT_INITRAMFS, else the one
        /// rootfs/build-agent-initramfs.sh built].
        #[arg(long)]
        agent_initrd: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Markdown)]
        output: OutputFormat,
        /// Also draw the report as a chart into FILE (SVG): a panel per measure, a bar per
        /// peer at its median, whiskers over min–max.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
    },
    /// The two isolation models side by side on the same image: `peapod run --runtime vm`
    /// and `--runtime container`, with crun on the same root and QEMU -M microvm on the same
    /// kernel and agent initramfs as peers, runs interleaved: start, host memory per idle pod,
    /// syscall cost, file I/O on the root and an emptyDir, pod network, density. Median
    /// (min–max) per row; a row the machine cannot fill says why. The static peapod-probe
    /// [$PEAPOD_PROBE] and peapod-netbench [$PEAPOD_NETBENCH] go into the image. Needs root;
    /// runs in the test bed where the host has no hardware KVM.
    Models {
        /// Runs of each subject (interleaved: vm, container, crun, vm, ...).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Pods started at once in the density rows.
        #[arg(long, default_value_t = 4, value_name = "N")]
        pods: usize,
        /// Run only these parts [default: all].
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<crate::bench::models::Part>,
        /// The pods' guest kernel (default: the one kernel/build.sh built).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// The pods' agent initramfs [default: $PEAPOD_AGENT_INITRAMFS, else the one
        /// rootfs/build-agent-initramfs.sh built].
        #[arg(long)]
        agent_initrd: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Markdown)]
        output: OutputFormat,
        /// Also draw the report as a chart into FILE (SVG): a panel per row, a bar per
        /// subject at its median, whiskers over min–max.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
    },
    /// Isolation: what a process in a container sees of and can do to the kernel under it,
    /// per model: the host itself (reference), a plain container on the host kernel (crun,
    /// default and privileged) and a pod VM (`peapod run`); the static peapod-probe
    /// [$PEAPOD_PROBE, else the one scripts/setup built] runs in each and the matrix shows
    /// probe × model (outcome: evidence). Every probe is harmless (see `peapod::bench::probe`);
    /// what the privileged ones try is printed first. Needs root; runs in the test bed where
    /// the host has no hardware KVM.
    Isolation {
        #[arg(long, value_enum, default_value_t = OutputFormat::Markdown)]
        output: OutputFormat,
        /// Leave out the privileged columns.
        #[arg(long)]
        no_privileged: bool,
        /// The pod's guest kernel (default: the one kernel/build.sh built).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// The pod's agent initramfs [default: $PEAPOD_AGENT_INITRAMFS, else the one
        /// rootfs/build-agent-initramfs.sh built].
        #[arg(long)]
        agent_initrd: Option<PathBuf>,
    },
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Machine {
            runs,
            accel,
            versus_qemu,
        } => {
            anyhow::ensure!(runs >= 1, "--runs must be at least 1");
            let interrupt = super::machine::stop_on_signals()?;
            let bench = MachineBench {
                runs,
                accel,
                interrupt: interrupt.clone(),
                versus_qemu,
            };
            if let Err(err) = crate::bench::machine::run(&bench) {
                // stopped by a signal: its L1s and files are gone; exit as the signal would
                return match interrupt.raised() {
                    Some(signal) => Ok(super::machine::exit_on_signal(signal)),
                    None => Err(err),
                };
            }
        }
        BenchCommand::Boot {
            runs,
            kernel,
            initrd,
            cpus,
            memory,
            append,
        } => {
            anyhow::ensure!(runs >= 1, "--runs must be at least 1");
            let kernel = match kernel {
                Some(kernel) => kernel,
                None => crate::guest_kernel::default_kernel()?,
            };
            anyhow::ensure!(
                initrd.is_file(),
                "--initrd {} does not exist",
                initrd.display()
            );
            crate::bench::boot::run(&BootBench {
                runs,
                kernel,
                initrd,
                cpus,
                memory_mib: memory,
                append,
            })?;
        }
        BenchCommand::Pod {
            runs,
            kernel,
            test_initrd,
            agent_initrd,
            pods_for_ps,
        } => {
            anyhow::ensure!(runs >= 1, "--runs must be at least 1");
            let kernel = match kernel {
                Some(kernel) => kernel,
                None => crate::guest_kernel::default_kernel()?,
            };
            let agent_initrd = match agent_initrd {
                Some(path) => path,
                None => crate::runtime::oneshot::default_agent_initramfs()?,
            };
            for path in [&test_initrd, &agent_initrd] {
                anyhow::ensure!(path.is_file(), "{} does not exist", path.display());
            }
            crate::bench::pod::run(&crate::bench::pod::PodBench {
                runs,
                kernel,
                test_initrd,
                agent_initrd,
                pods_for_ps,
            })?;
        }
        BenchCommand::Image {
            runs,
            layout,
            work_dir,
        } => {
            anyhow::ensure!(runs >= 1, "--runs must be at least 1");
            crate::bench::image::run(&crate::bench::image::ImageBench {
                runs,
                layout,
                work_dir,
            })?;
        }
        BenchCommand::Net {
            runs,
            seconds,
            count,
            kernel,
            agent_initrd,
            output,
            plot,
        } => {
            anyhow::ensure!(runs >= 1, "--runs must be at least 1");
            anyhow::ensure!((1..=3600).contains(&seconds), "--seconds must be 1 to 3600");
            anyhow::ensure!(count >= 1, "--count must be at least 1");
            crate::bench::net::run(&crate::bench::net::NetBench {
                runs,
                seconds,
                count,
                kernel,
                agent_initrd,
                output,
                plot,
            })?;
        }
        BenchCommand::Models {
            runs,
            pods,
            only,
            kernel,
            agent_initrd,
            output,
            plot,
        } => {
            anyhow::ensure!(runs >= 1, "--runs must be at least 1");
            anyhow::ensure!((1..=64).contains(&pods), "--pods must be 1 to 64");
            crate::bench::models::run(&crate::bench::models::ModelsBench {
                runs,
                pods,
                only,
                kernel,
                agent_initrd,
                output,
                plot,
            })?;
        }
        BenchCommand::Isolation {
            output,
            no_privileged,
            kernel,
            agent_initrd,
        } => {
            crate::bench::isolation::run(&crate::bench::isolation::IsolationBench {
                output,
                no_privileged,
                kernel,
                agent_initrd,
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
