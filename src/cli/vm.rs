//! `peapod vm ...`: low-level microVM commands. One VM per process.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::vmm::boot::linux::DEFAULT_CMDLINE;
use crate::vmm::builder::{self, DEFAULT_MEMORY_MIB, DiskConfig, VsockConfig};
use crate::vmm::config::{ConsoleConfig, VmmConfig};
use crate::vmm::events::{EventSink, VmmEvent};
use crate::vmm::jail::JailConfig;
use crate::vmm::program::VmmProgram;
use crate::vmm::vcpu::VcpuStop;
use crate::vmm::virtio::net::NetConfig;
use crate::vmm::virtio::net::config::DEFAULT_MTU;
use crate::vmm::virtio::vsock::DEFAULT_GUEST_CID;

/// Exit status when the guest ended badly (triple fault, crash, failed vCPU); peapod's own
/// errors exit with [`super::EXIT_PEAPOD_ERROR`].
pub const EXIT_GUEST_FAILED: u8 = 1;

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Boot the built-in guest, which prints "hello from a peapod guest" on its serial port
    /// and halts: a check that KVM, the vCPU and the serial device work on this host.
    Hello,
    /// Boot a Linux kernel in a microVM and run it until the guest reboots (exit status 0)
    /// or fails (exit status 1, with the reason).
    Boot(BootArgs),
    /// Run CMD in a container inside its own pod VM: IMAGE_FILE (ext4 or erofs) is the
    /// container's root, read-only with a tmpfs overlay; CMD's stdout/stderr stream back and
    /// its exit status is peapod's (128+N when signal N killed it; 125 when peapod fails).
    RunContainer(RunContainerArgs),
}

/// The flags that describe the VM itself; `--config` replaces all of them.
const VM_FLAGS: [&str; 13] = [
    "kernel", "initrd", "cmdline", "cpus", "memory", "console", "disks", "rng", "vsock", "cid",
    "net_fd", "net_mac", "net_mtu",
];

#[derive(Debug, clap::Args)]
pub struct BootArgs {
    /// The whole VM as a JSON file (a `VmmConfig`, see vmm::config), instead of the flags
    /// below: how the pod runtime starts a VMM
    #[arg(long, value_name = "FILE", conflicts_with_all = VM_FLAGS)]
    config: Option<PathBuf>,
    /// Write what happens (started, running, boot_signal, exited, failed) as JSON lines to
    /// this inherited file descriptor (see vmm::events)
    #[arg(long, value_name = "N")]
    events_fd: Option<i32>,
    /// Kernel image: ELF vmlinux (PVH entry used when present) or bzImage [default: the
    /// kernel built by kernel/build.sh, or PEAPOD_GUEST_KERNEL]
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs (cpio, gzip-compressed or not) loaded at the top of RAM below 3 GiB
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line, replacing the default; `virtio_mmio.device=` entries for
    /// attached devices are appended either way
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Number of vCPUs
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// Guest RAM in MiB (above 3072, RAM continues at 4 GiB)
    #[arg(long, default_value_t = DEFAULT_MEMORY_MIB)]
    memory: u64,
    /// Where the guest's serial console goes: stdout, off, or a file path
    #[arg(long, default_value = "stdout")]
    console: ConsoleArg,
    /// A raw disk image as a virtio-blk device (/dev/vda, /dev/vdb, ... in order); append
    /// ",ro" for read-only. Repeatable.
    #[arg(long = "disk", value_name = "PATH[,ro]")]
    disks: Vec<DiskArg>,
    /// Attach a virtio-rng device (/dev/hwrng in the guest)
    #[arg(long)]
    rng: bool,
    /// Attach a virtio-vsock device whose host side is the Unix socket UDS_PATH
    /// (Firecracker's hybrid vsock): connect to it and send `CONNECT <port>\n` to reach a
    /// guest listener (the answer is `OK <host_port>\n`); a guest connect to CID 2 port P
    /// reaches a host listener on UDS_PATH_P
    #[arg(long, value_name = "UDS_PATH")]
    vsock: Option<PathBuf>,
    /// The guest's vsock CID (with --vsock)
    #[arg(long, default_value_t = DEFAULT_GUEST_CID, requires = "vsock")]
    cid: u64,
    /// Attach a virtio-net device on the tap whose descriptor this process inherited as N
    /// (created with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR; the VMM creates no network device)
    #[arg(long, value_name = "N", requires = "net_mac")]
    net_fd: Option<i32>,
    /// The guest interface's MAC address (with --net-fd), e.g. 02:00:00:00:00:01
    #[arg(long, value_name = "MAC", requires = "net_fd")]
    net_mac: Option<String>,
    /// The guest interface's MTU (with --net-fd), 68 to 65535
    #[arg(long, value_name = "M", default_value_t = DEFAULT_MTU, requires = "net_fd")]
    net_mtu: u16,
    /// Print when the guest first wrote to its console and when it wrote the boot signal
    /// (see vmm::devices::boot_signal), in ms since peapod started, on stderr at the end:
    /// `boot-timing: vcpus_started_ms=.. first_output_ms=.. boot_signal_ms=.. total_ms=..`
    #[arg(long)]
    boot_timing: bool,
    /// Run the VMM's threads without their seccomp allow-lists (for debugging, e.g. under
    /// strace; see vmm::seccomp); also turns them off for a --config file. Without it, a
    /// syscall outside a thread's list kills the VMM with SIGSYS
    #[arg(long)]
    no_seccomp: bool,
    /// Run the VMM outside its jail (for debugging only; see vmm::jail); also for a
    /// --config file. Without it the VMM, once its VM is built, moves into namespaces and
    /// an empty root of its own and drops root for a uid of its own: it must start as root
    #[arg(long)]
    no_jail: bool,
}

#[derive(Debug, Clone)]
enum ConsoleArg {
    Stdout,
    Off,
    File(PathBuf),
}

impl FromStr for ConsoleArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdout" => Ok(ConsoleArg::Stdout),
            "off" => Ok(ConsoleArg::Off),
            "" => Err("give stdout, off or a file path".into()),
            path => Ok(ConsoleArg::File(PathBuf::from(path))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct DiskArg(DiskConfig);

impl FromStr for DiskArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (path, read_only) = match s.rsplit_once(',') {
            Some((path, "ro")) => (path, true),
            Some((path, "rw")) => (path, false),
            Some((_, opt)) => {
                return Err(format!("unknown disk option `{opt}`: use PATH or PATH,ro"));
            }
            None => (s, false),
        };
        if path.is_empty() {
            return Err("the disk path is empty: use PATH or PATH,ro".into());
        }
        Ok(DiskArg(DiskConfig {
            path: PathBuf::from(path),
            read_only,
        }))
    }
}

pub fn run(cmd: VmCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        VmCommand::Hello => hello(),
        VmCommand::Boot(args) => boot(args),
        VmCommand::RunContainer(args) => run_container(args),
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

impl BootArgs {
    /// The VM these arguments describe: the `--config` file, or the flags (with the default
    /// kernel when `--kernel` is not given), checked.
    pub fn vmm_config(&self) -> anyhow::Result<VmmConfig> {
        if let Some(path) = &self.config {
            let mut config = VmmConfig::from_file(path)?;
            config.seccomp &= !self.no_seccomp;
            if self.no_jail {
                config.jail = None;
            }
            return Ok(config);
        }
        let kernel = match &self.kernel {
            Some(path) => path.clone(),
            None => crate::guest_kernel::default_kernel()?,
        };
        let config = VmmConfig {
            kernel,
            initrd: self.initrd.clone(),
            cmdline: Some(self.cmdline.clone()),
            cpus: self.cpus,
            memory_mib: self.memory,
            console: match &self.console {
                ConsoleArg::Stdout => ConsoleConfig::Stdout,
                ConsoleArg::Off => ConsoleConfig::Off,
                ConsoleArg::File(path) => ConsoleConfig::File { path: path.clone() },
            },
            disks: self.disks.iter().map(|d| d.0.clone()).collect(),
            rng: self.rng,
            vsock: self.vsock.clone().map(|uds_path| VsockConfig {
                uds_path,
                guest_cid: self.cid,
            }),
            net: self.net_fd.map(|tap_fd| NetConfig {
                tap_fd,
                mac: self.net_mac.clone().unwrap_or_default(),
                mtu: self.net_mtu,
            }),
            seccomp: !self.no_seccomp,
            jail: (!self.no_jail).then(JailConfig::default),
        };
        config.validate()?;
        Ok(config)
    }
}

pub fn boot(args: BootArgs) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let events = Arc::new(match args.events_fd {
        Some(fd) => EventSink::from_inherited_fd(fd)?,
        None => EventSink::discard(),
    });
    let booted = args.vmm_config().and_then(|config| {
        builder::boot_linux(config.into(), start, &events).context("cannot boot the VM")
    });
    let outcome = match booted {
        Ok(outcome) => outcome,
        Err(err) => {
            events.emit(&VmmEvent::Failed {
                message: super::error_message(&err),
            });
            return Err(err);
        }
    };
    let _ = std::io::stdout().flush();
    if args.boot_timing {
        eprintln!("{}", outcome.times);
    }
    if outcome.exit.is_clean() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("peapod: the VM failed: {}", outcome.exit);
    Ok(ExitCode::from(EXIT_GUEST_FAILED))
}

#[derive(Debug, clap::Args)]
pub struct RunContainerArgs {
    /// Filesystem image (ext4 or erofs) holding the container's root
    #[arg(
        long,
        value_name = "IMAGE_FILE",
        required_unless_present = "image",
        conflicts_with = "image"
    )]
    rootfs: Option<PathBuf>,
    /// An image from the store instead (NAME[:TAG]; `peapod image pull/import` put it there,
    /// peapod/busybox:latest is built in): its cached erofs block image is the root, and its
    /// Entrypoint, Cmd, Env, WorkingDir and User apply (CMD replaces Cmd, as with docker)
    #[arg(long, value_name = "REF")]
    image: Option<String>,
    /// The image store (with --image)
    #[arg(long, env = "PEAPOD_ROOT", default_value = crate::image::store::DEFAULT_ROOT)]
    store: PathBuf,
    /// An environment variable of CMD. Repeatable.
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    env: Vec<String>,
    /// CMD's working directory (absolute) [default: the image's WorkingDir, else /]
    #[arg(long, short = 'w', value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Run CMD as this user id (and group id; default: the same as UID)
    #[arg(long, short = 'u', value_name = "UID[:GID]")]
    user: Option<UserArg>,
    /// The container's memory limit (cgroup memory.max) in MiB
    #[arg(long, value_name = "MiB")]
    memory_limit: Option<u64>,
    /// Number of vCPUs of the pod VM
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// Guest RAM of the pod VM in MiB
    #[arg(long, default_value_t = DEFAULT_MEMORY_MIB)]
    memory: u64,
    /// The agent initramfs [default: $PEAPOD_AGENT_INITRAMFS, else
    /// ~/.cache/peapod/agent/initramfs.cpio.gz from rootfs/build-agent-initramfs.sh]
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel image [default: the kernel built by kernel/build.sh, or PEAPOD_GUEST_KERNEL]
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// The pod's hostname
    #[arg(long, default_value = "peapod")]
    hostname: String,
    /// Keep stdin open and pass peapod's stdin to CMD
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Give CMD a pseudo-terminal (its stdout and stderr both come back on stdout); with
    /// -i and a terminal on stdin, that terminal goes raw so keys reach CMD as typed
    #[arg(long, short = 't')]
    tty: bool,
    /// Print the start-up split (agent ready, container started, first output, exit, VM
    /// down, in ms from the VMM's spawn) on stderr at the end
    #[arg(long)]
    timing: bool,
    /// The command and its arguments (with --image: replaces the image's Cmd; optional)
    #[arg(last = true, required_unless_present = "image", value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UserArg {
    uid: u32,
    gid: u32,
}

impl FromStr for UserArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let num = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("`{v}` is not a numeric id: use UID or UID:GID (numbers)"))
        };
        match s.split_once(':') {
            Some((u, g)) => Ok(UserArg {
                uid: num(u)?,
                gid: num(g)?,
            }),
            None => {
                let uid = num(s)?;
                Ok(UserArg { uid, gid: uid })
            }
        }
    }
}

/// `--image REF`: the image's block image (built on first use, then cached; the built-in
/// peapod/busybox:latest is made on first use too) and its process, the command line's
/// CMD, --env, --workdir and --user laid over the image's config.
fn image_process(
    reference: &str,
    store: &std::path::Path,
    overrides: &crate::image::process::Overrides,
) -> anyhow::Result<(PathBuf, crate::protocol::ProcessSpec)> {
    let store = crate::image::store::Store::open(store)
        .with_context(|| format!("cannot open the image store at {}", store.display()))?;
    let (resolved, process) = crate::image::prepare_run(&store, reference, overrides)
        .with_context(|| format!("cannot prepare image {reference}"))?;
    tracing::debug!(
        image = %resolved.name,
        disk = %resolved.block_image().display(),
        cache_hit = resolved.disk.cache_hit,
        "image resolved"
    );
    let spec = process.into_spec(false, false);
    Ok((resolved.disk.path, spec))
}

fn run_container(args: RunContainerArgs) -> anyhow::Result<ExitCode> {
    use crate::protocol::{ProcessSpec, Resources};
    use crate::runtime::{self, RunContainer};

    let kernel = match args.kernel {
        Some(path) => path,
        None => crate::guest_kernel::default_kernel()?,
    };
    let initrd = match args.initrd {
        Some(path) => path,
        None => runtime::default_agent_initramfs()?,
    };
    let (interactive, tty) = (args.interactive, args.tty);
    let (rootfs, mut process) = match &args.image {
        Some(reference) => {
            let overrides = crate::image::process::Overrides {
                entrypoint: None,
                command: args.command,
                env: args.env,
                workdir: args.workdir.map(|d| d.display().to_string()),
                user: args.user.map(|u| format!("{}:{}", u.uid, u.gid)),
            };
            image_process(reference, &args.store, &overrides)?
        }
        None => {
            let user = args.user.unwrap_or(UserArg { uid: 0, gid: 0 });
            let rootfs = args
                .rootfs
                .context("give --rootfs IMAGE_FILE or --image REF")?;
            let process = ProcessSpec {
                args: args.command,
                env: args.env,
                cwd: args.workdir.unwrap_or_else(|| PathBuf::from("/")),
                uid: user.uid,
                gid: user.gid,
                additional_gids: Vec::new(),
                tty: false,
                stdin: false,
            };
            (rootfs, process)
        }
    };
    process.stdin = interactive;
    process.tty = tty;
    process
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid command: {e}"))?;
    let resources = Resources {
        memory_max: args.memory_limit.map(|mib| mib << 20),
        ..Default::default()
    };
    resources
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid limits: {e}"))?;
    let run = RunContainer {
        vm: runtime::PodVmConfig {
            vmm: VmmProgram::find().context("cannot find the peapod binary")?,
            kernel,
            initrd,
            cpus: args.cpus,
            memory_mib: args.memory,
            disks: Vec::new(),
            agent_timeout: runtime::oneshot::agent_timeout_from_env(),
            dir: None,
            net: None,
            jail: true,
            cgroup: None,
        },
        rootfs,
        fs_type: None,
        process,
        resources,
        hostname: args.hostname,
    };
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let forward = std::sync::Arc::new(std::sync::Mutex::new(None::<crate::runtime::ProcessHandle>));
    let target = std::sync::Arc::clone(&forward);
    super::tty::forward_signals(move |sig| {
        let handle = target.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match handle {
            Some(h) => {
                if let Err(e) = h.signal(sig) {
                    tracing::warn!("cannot forward signal {sig} to the container: {e}");
                }
                true
            }
            // Before the container runs, a signal ends peapod (and the VM with it).
            None => false,
        }
    })
    .context("cannot set up signal forwarding")?;
    let raw = (tty && interactive)
        .then(super::tty::RawTerminal::enter)
        .flatten();
    let outcome = runtime::run_container_io(
        &run,
        runtime::RunIo {
            stdout: &mut stdout,
            stderr: &mut stderr,
            stdin: interactive.then(|| Box::new(std::io::stdin()) as Box<dyn std::io::Read + Send>),
            on_start: Some(Box::new(move |handle| {
                *forward.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
            })),
        },
    );
    drop(raw);
    let outcome = outcome.context("cannot run the container")?;
    if let Some(why) = &outcome.start_error {
        eprintln!("peapod: {why}");
    }
    let status = outcome.status;
    if status.oom_killed {
        eprintln!(
            "peapod: the container was killed by the kernel's OOM killer (its memory limit is \
             too low for it)"
        );
    } else if let Some(sig) = status.signal {
        let name = nix::sys::signal::Signal::try_from(sig).map_or("?", |s| s.as_str());
        eprintln!("peapod: the container was killed by signal {sig} ({name})");
    }
    if args.timing {
        eprintln!("{}", outcome.timings);
    }
    Ok(ExitCode::from(u8::try_from(status.code).unwrap_or(255)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_arguments_parse_with_their_mode() {
        let d = |s: &str| s.parse::<DiskArg>().map(|d| d.0);
        assert_eq!(
            d("/img/root.ext4").unwrap(),
            DiskConfig {
                path: "/img/root.ext4".into(),
                read_only: false
            }
        );
        assert_eq!(
            d("/img/a,b.erofs,ro").unwrap(),
            DiskConfig {
                path: "/img/a,b.erofs".into(),
                read_only: true
            }
        );
        assert!(!d("x,rw").unwrap().read_only);
        assert!(d("/img,readonly").unwrap_err().contains("PATH,ro"));
        assert!(d(",ro").is_err());
    }

    #[test]
    fn console_arguments_parse() {
        assert!(matches!("stdout".parse(), Ok(ConsoleArg::Stdout)));
        assert!(matches!("off".parse(), Ok(ConsoleArg::Off)));
        assert!(
            matches!("/tmp/c.log".parse(), Ok(ConsoleArg::File(p)) if p == std::path::Path::new("/tmp/c.log"))
        );
        assert!("".parse::<ConsoleArg>().is_err());
    }

    #[derive(clap::Parser)]
    struct Boot {
        #[command(flatten)]
        args: BootArgs,
    }

    fn boot_args(args: &[&str]) -> Result<BootArgs, clap::Error> {
        use clap::Parser;
        Boot::try_parse_from(std::iter::once("boot").chain(args.iter().copied())).map(|b| b.args)
    }

    #[test]
    fn boot_flags_build_a_vmm_config() {
        let args = boot_args(&[
            "--kernel",
            "/k",
            "--initrd",
            "/i",
            "--cpus",
            "2",
            "--memory",
            "512",
            "--console",
            "/tmp/c.log",
            "--disk",
            "/a.erofs,ro",
            "--disk",
            "/b.ext4",
            "--rng",
            "--vsock",
            "/tmp/v.sock",
            "--cid",
            "7",
            "--events-fd",
            "3",
        ])
        .unwrap();
        assert_eq!(args.events_fd, Some(3));
        let config = args.vmm_config().unwrap();
        assert_eq!(
            config,
            VmmConfig {
                kernel: "/k".into(),
                initrd: Some("/i".into()),
                cmdline: Some(DEFAULT_CMDLINE.into()),
                cpus: 2,
                memory_mib: 512,
                console: ConsoleConfig::File {
                    path: "/tmp/c.log".into()
                },
                disks: vec![
                    DiskConfig {
                        path: "/a.erofs".into(),
                        read_only: true
                    },
                    DiskConfig {
                        path: "/b.ext4".into(),
                        read_only: false
                    },
                ],
                rng: true,
                vsock: Some(VsockConfig {
                    uds_path: "/tmp/v.sock".into(),
                    guest_cid: 7
                }),
                net: None,
                seccomp: true,
                jail: Some(JailConfig::default()),
            }
        );
        let unjailed = boot_args(&["--kernel", "/k", "--no-jail"]).unwrap();
        assert_eq!(unjailed.vmm_config().unwrap().jail, None);
        let off = boot_args(&["--kernel", "/k", "--no-seccomp"]).unwrap();
        assert!(!off.vmm_config().unwrap().seccomp);
        let bad = boot_args(&["--kernel", "/k", "--cpus", "0"]).unwrap();
        assert!(bad.vmm_config().unwrap_err().to_string().contains("--cpus"));
    }

    #[test]
    fn net_flags_build_a_net_config() {
        use std::os::fd::AsRawFd;
        // Not a tap: the flags parse into the config, and validation names the problem.
        let (r, _w) = std::io::pipe().unwrap();
        let fd = r.as_raw_fd().to_string();
        let args = boot_args(&[
            "--kernel",
            "/k",
            "--net-fd",
            &fd,
            "--net-mac",
            "02:00:00:00:00:07",
            "--net-mtu",
            "9000",
        ])
        .unwrap();
        assert_eq!(
            args.net_fd
                .map(|tap_fd| (tap_fd, args.net_mac.clone(), args.net_mtu)),
            Some((r.as_raw_fd(), Some("02:00:00:00:00:07".to_string()), 9000))
        );
        let err = args.vmm_config().unwrap_err().to_string();
        assert!(
            err.contains("not a tap") && err.contains("--net-fd"),
            "{err}"
        );
        let bad_mac = boot_args(&["--kernel", "/k", "--net-fd", &fd, "--net-mac", "x"]).unwrap();
        let err = bad_mac.vmm_config().unwrap_err().to_string();
        assert!(err.contains("--net-mac"), "{err}");
        // --net-fd needs --net-mac, and the others need --net-fd.
        for argv in [
            &["--kernel", "/k", "--net-fd", "3"][..],
            &["--kernel", "/k", "--net-mac", "02:00:00:00:00:01"],
            &["--kernel", "/k", "--net-mtu", "1400"],
        ] {
            let err = boot_args(argv).err().unwrap();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::MissingRequiredArgument,
                "{argv:?}"
            );
        }
        // No --net-fd, no device.
        let none = boot_args(&["--kernel", "/k"]).unwrap();
        assert_eq!(none.vmm_config().unwrap().net, None);
    }

    #[test]
    fn a_config_file_replaces_the_vm_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.json");
        let mut config = VmmConfig::new("/k".into());
        config.rng = true;
        config.write_file(&path).unwrap();
        let path_arg = path.to_str().unwrap();
        let args = boot_args(&["--config", path_arg, "--boot-timing"]).unwrap();
        assert_eq!(args.vmm_config().unwrap(), config);
        // --no-seccomp is not a VM flag: it turns the filters off for a config file too.
        let args = boot_args(&["--config", path_arg, "--no-seccomp"]).unwrap();
        assert!(!args.vmm_config().unwrap().seccomp);
        for flag in [
            &["--cpus", "2"][..],
            &["--kernel", "/k"],
            &["--rng"],
            &["--net-fd", "3", "--net-mac", "02:00:00:00:00:01"],
        ] {
            let mut argv = vec!["--config", path_arg];
            argv.extend_from_slice(flag);
            let err = boot_args(&argv).err().unwrap();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{flag:?}"
            );
        }
        std::fs::write(&path, br#"{"kernel": "/k", "cpu": 2}"#).unwrap();
        let err = boot_args(&["--config", path_arg])
            .unwrap()
            .vmm_config()
            .unwrap_err();
        let msg = super::super::error_message(&err);
        assert!(
            msg.contains(path_arg) && msg.contains("unknown field `cpu`"),
            "{msg}"
        );
    }

    #[test]
    fn user_arguments_parse() {
        assert_eq!(
            "1000".parse::<UserArg>().unwrap(),
            UserArg {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(
            "1000:50".parse::<UserArg>().unwrap(),
            UserArg { uid: 1000, gid: 50 }
        );
        assert!("root".parse::<UserArg>().unwrap_err().contains("numeric"));
        assert!("1:x".parse::<UserArg>().is_err());
    }
}
