//! The QEMU command line that boots the L1, and the choice of accelerator.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::host::{HostVirt, KvmUnusable};

/// What the user asked for (`--accel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM where the host has usable hardware virtualization with nesting, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

/// What the L1 runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware KVM; the L1 gets the host CPU (`-cpu host`) and nests.
    Kvm,
    /// QEMU's emulator with an emulated AMD-V CPU (svm + npt), multi-threaded.
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccelError {
    #[error("--accel kvm: {0}")]
    NoKvm(KvmUnusable),
    #[error(
        "--accel kvm: nested virtualization is off in {module}, so the L1 would have no /dev/kvm; \
         enable it (`modprobe -r {module} && modprobe {module} nested=1`) or use --accel tcg"
    )]
    NestedOff { module: &'static str },
}

/// Picks the accelerator: `auto` takes KVM only where it is hardware KVM (not PVM) with
/// nesting not known to be off.
pub fn choose_accel(choice: AccelChoice, host: &HostVirt) -> Result<Accel, AccelError> {
    let hardware = host.hardware_kvm();
    match choice {
        AccelChoice::Tcg => Ok(Accel::Tcg),
        AccelChoice::Auto => Ok(match hardware {
            Ok(_) if host.nested != Some(false) => Accel::Kvm,
            _ => Accel::Tcg,
        }),
        AccelChoice::Kvm => {
            let extension = hardware.map_err(AccelError::NoKvm)?;
            if host.nested == Some(false) {
                return Err(AccelError::NestedOff {
                    module: extension.kvm_module(),
                });
            }
            Ok(Accel::Kvm)
        }
    }
}

/// Everything the L1's QEMU command line is made of.
#[derive(Debug, Clone)]
pub struct QemuLaunch {
    pub qemu: PathBuf,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// ttyS0: the L1 kernel's console goes here.
    pub console_log: PathBuf,
    /// ttyS1: the link; peapod listens on this Unix socket and QEMU connects.
    /// `None` for an L1 without peapod's init (the bare peer in benchmarks).
    pub link_socket: Option<PathBuf>,
    /// Whether the L1 may back its guests' RAM with transparent huge pages
    /// ([`huge_pages_hold_up`]); without, its kernel gets `transparent_hugepage=never`.
    pub l1_huge_pages: bool,
}

/// The first QEMU whose TCG runs an L1 whose KVM maps its guests with 2 MiB nested page
/// entries: QEMU 7.2's stalls the whole L1 within a few pod boots once guest RAM is 2 MiB
/// aligned (docs/testbed.md); 10.0 (bookworm-backports) does not.
pub const TCG_HUGE_PAGES_SINCE: u32 = 10;

/// Whether an L1 of `qemu` under `accel` may use transparent huge pages for its guests: with
/// KVM always; with TCG from QEMU [`TCG_HUGE_PAGES_SINCE`] on (an unknown version: no).
pub fn huge_pages_hold_up(qemu: &Path, accel: Accel) -> bool {
    match accel {
        Accel::Kvm => true,
        Accel::Tcg => version_major(qemu).is_some_and(|major| major >= TCG_HUGE_PAGES_SINCE),
    }
}

/// The version `qemu --version` prints ("QEMU emulator version 7.2.19 (Debian ...)" gives
/// "7.2.19").
pub fn version(qemu: &Path) -> Option<String> {
    let out = std::process::Command::new(qemu)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// The major number of [`version`].
pub fn version_major(qemu: &Path) -> Option<u32> {
    parse_major(&version(qemu)?)
}

fn parse_version(text: &str) -> Option<String> {
    let rest = text.split("version ").nth(1)?;
    let version = rest.split_whitespace().next()?;
    parse_major(version).map(|_| version.to_string())
}

fn parse_major(version: &str) -> Option<u32> {
    version.split('.').next()?.trim().parse().ok()
}

/// The L1 kernel command line: console on ttyS0, power off instead of hanging on panic.
pub const L1_CMDLINE: &str = "console=ttyS0 panic=-1 mitigations=off";

impl QemuLaunch {
    pub fn args(&self) -> Vec<String> {
        let (accel, cpu) = match self.accel {
            Accel::Kvm => ("kvm", "host"),
            Accel::Tcg => ("tcg,thread=multi", "EPYC,+svm,+npt"),
        };
        let mut args: Vec<String> = [
            "-M",
            "q35",
            "-accel",
            accel,
            "-cpu",
            cpu,
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-nic",
            "none",
        ]
        .map(String::from)
        .to_vec();
        args.extend([
            "-smp".into(),
            self.cpus.to_string(),
            "-m".into(),
            self.memory_mib.to_string(),
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
            "-append".into(),
            if self.l1_huge_pages {
                L1_CMDLINE.to_string()
            } else {
                format!("{L1_CMDLINE} transparent_hugepage=never")
            },
            "-chardev".into(),
            format!("file,id=console,path={}", self.console_log.display()),
            "-serial".into(),
            "chardev:console".into(),
        ]);
        if let Some(socket) = &self.link_socket {
            args.extend([
                "-chardev".into(),
                format!("socket,id=link,path={}", socket.display()),
                "-serial".into(),
                "chardev:link".into(),
            ]);
        }
        args
    }

    /// QEMU's command, tied to its caller: it gets SIGKILL when the thread that spawns it
    /// ends (`PR_SET_PDEATHSIG`), so spawn it from the thread that lives for the run; even a
    /// SIGKILLed peapod leaves no L1 behind. It runs in a process group of its own, so a
    /// terminal's ^C reaches peapod, which stops it and cleans up, and not QEMU directly; and
    /// with an empty signal mask, whatever mask its caller set up for signal forwarding.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.qemu);
        command.args(self.args()).process_group(0);
        let parent = nix::unistd::getpid();
        // SAFETY: the closure runs between fork and exec and makes only async-signal-safe
        // calls (prctl, getppid, sigprocmask) on values it owns; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                // peapod died before the line above took effect: nobody would stop this L1
                if nix::unistd::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                crate::runtime::fork::unblock_all_signals()?;
                Ok(())
            });
        }
        command
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{KvmNode, VirtExtension};

    fn host(kvm: KvmNode, pvm: bool, ext: Option<VirtExtension>, nested: Option<bool>) -> HostVirt {
        HostVirt {
            kvm_path: "/dev/kvm".into(),
            kvm,
            pvm,
            extension: ext,
            nested,
        }
    }

    #[test]
    fn auto_uses_kvm_only_on_nesting_hardware() {
        let svm = Some(VirtExtension::Svm);
        let pvm_host = host(KvmNode::Usable, true, None, None);
        assert_eq!(choose_accel(AccelChoice::Auto, &pvm_host), Ok(Accel::Tcg));
        let hw = host(KvmNode::Usable, false, svm, Some(true));
        assert_eq!(choose_accel(AccelChoice::Auto, &hw), Ok(Accel::Kvm));
        let no_nest = host(KvmNode::Usable, false, svm, Some(false));
        assert_eq!(choose_accel(AccelChoice::Auto, &no_nest), Ok(Accel::Tcg));
        let absent = host(KvmNode::Absent, false, svm, None);
        assert_eq!(choose_accel(AccelChoice::Auto, &absent), Ok(Accel::Tcg));
    }

    #[test]
    fn forced_kvm_explains_why_not() {
        let pvm_host = host(KvmNode::Usable, true, None, None);
        let err = choose_accel(AccelChoice::Kvm, &pvm_host).unwrap_err();
        assert!(err.to_string().contains("PVM"), "{err}");
        let no_nest = host(
            KvmNode::Usable,
            false,
            Some(VirtExtension::Vmx),
            Some(false),
        );
        let err = choose_accel(AccelChoice::Kvm, &no_nest).unwrap_err();
        assert!(err.to_string().contains("kvm_intel"), "{err}");
        assert_eq!(choose_accel(AccelChoice::Tcg, &no_nest), Ok(Accel::Tcg));
    }

    #[test]
    fn qemu_versions_are_read_from_its_banner() {
        let banner = "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright";
        assert_eq!(parse_version(banner).as_deref(), Some("7.2.19"));
        let ten = parse_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)").unwrap();
        assert_eq!((ten.as_str(), parse_major(&ten)), ("10.0.2", Some(10)));
        assert_eq!(parse_version("not qemu"), None);
        assert_eq!(parse_version("QEMU emulator version x.y"), None);
        assert!(huge_pages_hold_up(Path::new("/no/such/qemu"), Accel::Kvm));
        assert!(!huge_pages_hold_up(Path::new("/no/such/qemu"), Accel::Tcg));
    }

    #[test]
    fn tcg_command_line_emulates_amd_v_and_splits_console_from_link() {
        let launch = QemuLaunch {
            qemu: "qemu-system-x86_64".into(),
            accel: Accel::Tcg,
            cpus: 2,
            memory_mib: 2048,
            kernel: "/boot/vmlinuz".into(),
            initrd: "/tmp/r/initrd.cpio".into(),
            console_log: "/tmp/r/console.log".into(),
            link_socket: Some("/tmp/r/link.sock".into()),
            l1_huge_pages: true,
        };
        let args = launch.args().join(" ");
        assert!(!args.contains("transparent_hugepage"), "{args}");
        let old = QemuLaunch {
            l1_huge_pages: false,
            ..launch.clone()
        };
        assert!(
            old.args()
                .join(" ")
                .contains("mitigations=off transparent_hugepage=never"),
            "{:?}",
            old.args()
        );
        assert!(
            args.contains("-accel tcg,thread=multi -cpu EPYC,+svm,+npt"),
            "{args}"
        );
        assert!(args.contains("-smp 2 -m 2048"), "{args}");
        let console = args.find("path=/tmp/r/console.log").unwrap();
        let link = args.find("socket,id=link,path=/tmp/r/link.sock").unwrap();
        assert!(
            console < link,
            "console must be ttyS0, the link ttyS1: {args}"
        );
        assert!(args.contains("-no-reboot"));
    }
}
