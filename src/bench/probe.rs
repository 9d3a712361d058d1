//! `peapod-probe`: what a process inside a container can see of and do to the kernel it
//! runs on, for `peapod bench isolation` ([`super::isolation`]). Std, libc and nix only, so
//! that it builds as a static program (`scripts/build-guest-bins peapod-probe`) that runs in
//! any rootfs: the pod VM's busybox image, crun's bundle, the host itself.
//!
//! ```text
//! peapod-probe [--marker DIR]
//! ```
//!
//! It prints one JSON line per probe ([`ProbeLine`]), in the order of [`ProbeName::ALL`].
//!
//! Every probe is harmless, by construction rather than by luck:
//! - reads only (kernel version, `/proc`, `/sys`, the kernel log, one record of
//!   `/dev/kmsg`, the first bytes of `/proc/kcore`);
//! - calls that reach a permission check but cannot act: `init_module` of an empty image
//!   (the loader refuses it as not ELF, after the capability check), `reboot` with a wrong
//!   magic number (checked after `CAP_SYS_BOOT`), `settimeofday(NULL, NULL)` (checks
//!   `CAP_SYS_TIME` and sets nothing);
//! - opens for write that write nothing (`/proc/sysrq-trigger`, `core_pattern`);
//! - writes only under `--marker`: a mount point for a fresh, named cgroup v1 hierarchy
//!   whose `release_agent` gets a path under the marker (no cgroup is ever created in it, so
//!   the agent never runs, and the hierarchy dies with its unmount), and a mount point where
//!   the block device behind an existing mount is mounted again with that mount's own
//!   read-only/read-write state (the same superblock, so nothing is replayed or changed),
//!   listed and unmounted at once. Mount points are removed with `rmdir`, which fails on a
//!   mount point still in use, never recursively.
//!
//! No probe panics or blocks: every error becomes the probe's evidence, and each probe runs
//! under `catch_unwind` in case one does anyway.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The longest evidence a probe prints, in characters.
pub const EVIDENCE_CHARS: usize = 200;
/// How many names a list in the evidence shows before `(+N more)`.
const LIST_NAMES: usize = 8;
/// The inode numbers of the kernel's initial namespaces that are fixed (include/linux/
/// proc_ns.h); mnt and net got fixed ones in Linux 6.18, older kernels allocate them.
const INIT_PID_NS: u64 = 0xEFFF_FFFC;
const INIT_MNT_NS: u64 = 0xEFFF_FFF8;
const INIT_NET_NS: u64 = 0xEFFF_FFF9;
/// The named cgroup v1 hierarchy of the release_agent probe.
const CGROUP_NAME: &str = "peapod_probe";
/// The entries the probe may create under the marker directory.
pub const MARKER_CGROUP_DIR: &str = "cgroup-v1";
pub const MARKER_ROOTDEV_DIR: &str = "rootdev";
pub const MARKER_ROOTDEV_NODE: &str = "rootdev-node";
/// The path written into `release_agent`: it never exists, and is never run.
pub const MARKER_RELEASE_AGENT: &str = "release-agent-never-runs";

/// The probes, in the order they run and are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeName {
    Kernel,
    Pids,
    Mounts,
    BlockDevices,
    NetInterfaces,
    Kcore,
    Kmsg,
    Dmesg,
    Firmware,
    Kallsyms,
    Capabilities,
    Seccomp,
    ModuleLoad,
    Clock,
    Reboot,
    Sysrq,
    CorePattern,
    ReleaseAgent,
    RootDeviceMount,
}

impl ProbeName {
    pub const ALL: [ProbeName; 19] = [
        ProbeName::Kernel,
        ProbeName::Pids,
        ProbeName::Mounts,
        ProbeName::BlockDevices,
        ProbeName::NetInterfaces,
        ProbeName::Kcore,
        ProbeName::Kmsg,
        ProbeName::Dmesg,
        ProbeName::Firmware,
        ProbeName::Kallsyms,
        ProbeName::Capabilities,
        ProbeName::Seccomp,
        ProbeName::ModuleLoad,
        ProbeName::Clock,
        ProbeName::Reboot,
        ProbeName::Sysrq,
        ProbeName::CorePattern,
        ProbeName::ReleaseAgent,
        ProbeName::RootDeviceMount,
    ];

    /// The name as it appears in a probe line.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeName::Kernel => "kernel",
            ProbeName::Pids => "pids",
            ProbeName::Mounts => "mounts",
            ProbeName::BlockDevices => "block_devices",
            ProbeName::NetInterfaces => "net_interfaces",
            ProbeName::Kcore => "kcore",
            ProbeName::Kmsg => "kmsg",
            ProbeName::Dmesg => "dmesg",
            ProbeName::Firmware => "firmware",
            ProbeName::Kallsyms => "kallsyms",
            ProbeName::Capabilities => "capabilities",
            ProbeName::Seccomp => "seccomp",
            ProbeName::ModuleLoad => "module_load",
            ProbeName::Clock => "clock",
            ProbeName::Reboot => "reboot",
            ProbeName::Sysrq => "sysrq",
            ProbeName::CorePattern => "core_pattern",
            ProbeName::ReleaseAgent => "release_agent",
            ProbeName::RootDeviceMount => "root_device_mount",
        }
    }

    /// What the probe asks, for the matrix's first column.
    pub fn question(self) -> &'static str {
        match self {
            ProbeName::Kernel => "kernel seen (uname -r)",
            ProbeName::Pids => "processes of its kernel visible (/proc)",
            ProbeName::Mounts => "mount table (/proc/self/mountinfo)",
            ProbeName::BlockDevices => "block devices (/sys/block, /dev)",
            ProbeName::NetInterfaces => "network interfaces (/proc/net/dev)",
            ProbeName::Kcore => "/proc/kcore readable",
            ProbeName::Kmsg => "/dev/kmsg readable",
            ProbeName::Dmesg => "kernel log (syslog READ_ALL)",
            ProbeName::Firmware => "/sys/firmware listing",
            ProbeName::Kallsyms => "kernel addresses (/proc/kallsyms)",
            ProbeName::Capabilities => "capabilities (CapEff)",
            ProbeName::Seccomp => "seccomp filter",
            ProbeName::ModuleLoad => "load a kernel module (init_module)",
            ProbeName::Clock => "set the clock (CAP_SYS_TIME)",
            ProbeName::Reboot => "reboot (CAP_SYS_BOOT)",
            ProbeName::Sysrq => "/proc/sysrq-trigger writable",
            ProbeName::CorePattern => "core_pattern writable",
            ProbeName::ReleaseAgent => "cgroup v1 release_agent (CVE-2022-0492)",
            ProbeName::RootDeviceMount => "mount the root block device",
        }
    }
}

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The thing is there to see.
    #[serde(rename = "visible")]
    Visible,
    /// Absent, empty or masked.
    #[serde(rename = "hidden")]
    Hidden,
    /// The kernel (or a filter) said no.
    #[serde(rename = "refused")]
    Refused,
    /// The call got past its permission check.
    #[serde(rename = "allowed")]
    Allowed,
    /// A namespace, filter or reduced set of its own.
    #[serde(rename = "confined")]
    Confined,
    /// The kernel has no such thing, or the probe could not ask.
    #[serde(rename = "n/a")]
    NotApplicable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Visible => "visible",
            Outcome::Hidden => "hidden",
            Outcome::Refused => "refused",
            Outcome::Allowed => "allowed",
            Outcome::Confined => "confined",
            Outcome::NotApplicable => "n/a",
        }
    }
}

/// One line of the probe's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeLine {
    pub probe: ProbeName,
    pub outcome: Outcome,
    /// One short line ([`EVIDENCE_CHARS`] at most, no newlines).
    pub evidence: String,
}

impl ProbeLine {
    fn new(probe: ProbeName, outcome: Outcome, evidence: impl AsRef<str>) -> Self {
        ProbeLine {
            probe,
            outcome,
            evidence: one_line(evidence.as_ref()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}\nusage: peapod-probe [--marker DIR]")]
    Usage(String),
    #[error("writing the probe lines to stdout: {0}")]
    Output(io::Error),
}

/// The command line: `[--marker DIR]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Invocation {
    /// Where the probe may write (created if missing; what it creates there it removes).
    pub marker: Option<PathBuf>,
}

impl Invocation {
    pub fn parse(args: &[String]) -> Result<Self, ProbeError> {
        let mut inv = Invocation::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--marker" => {
                    let dir = args
                        .next()
                        .ok_or_else(|| ProbeError::Usage("--marker needs a directory".into()))?;
                    if !dir.starts_with('/') {
                        return Err(ProbeError::Usage(format!(
                            "--marker {dir}: give an absolute path (the release_agent probe \
                             writes it as a path)"
                        )));
                    }
                    inv.marker = Some(PathBuf::from(dir));
                }
                other => return Err(ProbeError::Usage(format!("unknown argument {other:?}"))),
            }
        }
        Ok(inv)
    }
}

/// Runs every probe and prints its line as it completes.
pub fn run(inv: &Invocation) -> Result<(), ProbeError> {
    let mut out = io::stdout().lock();
    for line in run_all(inv.marker.as_deref()) {
        let json = serde_json::to_string(&line).map_err(|e| ProbeError::Output(e.into()))?;
        writeln!(out, "{json}").map_err(ProbeError::Output)?;
        out.flush().map_err(ProbeError::Output)?;
    }
    Ok(())
}

/// Every probe's line, in [`ProbeName::ALL`]'s order. `marker`: the directory the write
/// probes may use (created if missing, and removed again if this created it); without one
/// they answer `n/a`.
pub fn run_all(marker: Option<&Path>) -> Vec<ProbeLine> {
    let marker = marker.map(Marker::open);
    let lines = ProbeName::ALL
        .iter()
        .map(|&probe| {
            std::panic::catch_unwind(|| run_one(probe, marker.as_ref())).unwrap_or_else(|_| {
                ProbeLine::new(probe, Outcome::NotApplicable, "the probe panicked")
            })
        })
        .collect();
    if let Some(marker) = marker {
        marker.close();
    }
    lines
}

/// The probe's directory for writes: usable or why not.
struct Marker {
    dir: Result<PathBuf, String>,
    created: bool,
}

impl Marker {
    fn open(dir: &Path) -> Marker {
        match fs::create_dir(dir) {
            Ok(()) => Marker {
                dir: Ok(dir.to_path_buf()),
                created: true,
            },
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Marker {
                dir: Ok(dir.to_path_buf()),
                created: false,
            },
            Err(e) => Marker {
                dir: Err(format!("marker dir {}: {}", dir.display(), errno(&e))),
                created: false,
            },
        }
    }

    fn close(self) {
        if let (Ok(dir), true) = (&self.dir, self.created) {
            let _ = fs::remove_dir(dir);
        }
    }
}

fn run_one(probe: ProbeName, marker: Option<&Marker>) -> ProbeLine {
    let (outcome, evidence) = match probe {
        ProbeName::Kernel => kernel(),
        ProbeName::Pids => pids(),
        ProbeName::Mounts => mounts(),
        ProbeName::BlockDevices => block_devices(),
        ProbeName::NetInterfaces => net_interfaces(),
        ProbeName::Kcore => kcore(),
        ProbeName::Kmsg => kmsg(),
        ProbeName::Dmesg => dmesg(),
        ProbeName::Firmware => firmware(),
        ProbeName::Kallsyms => kallsyms(),
        ProbeName::Capabilities => capabilities(),
        ProbeName::Seccomp => seccomp(),
        ProbeName::ModuleLoad => module_load(),
        ProbeName::Clock => clock(),
        ProbeName::Reboot => reboot(),
        ProbeName::Sysrq => open_for_write("/proc/sysrq-trigger"),
        ProbeName::CorePattern => open_for_write("/proc/sys/kernel/core_pattern"),
        ProbeName::ReleaseAgent | ProbeName::RootDeviceMount => {
            match marker.map(|m| m.dir.as_deref()) {
                None => (Outcome::NotApplicable, "no --marker given".to_string()),
                Some(Err(why)) => (Outcome::NotApplicable, why.to_string()),
                Some(Ok(dir)) if probe == ProbeName::ReleaseAgent => release_agent(dir),
                Some(Ok(dir)) => root_device_mount(dir),
            }
        }
    };
    ProbeLine::new(probe, outcome, evidence)
}

type Found = (Outcome, String);

/// An error as its errno name (`EPERM`), or its text where it has none.
fn errno(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!("{:?}", nix::errno::Errno::from_raw(code)),
        None => e.to_string(),
    }
}

/// What a refused open or call means: absent → hidden, a permission error → refused.
fn error_outcome(e: &io::Error) -> Outcome {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::ENODEV | libc::ENXIO) => Outcome::Hidden,
        Some(libc::EPERM | libc::EACCES | libc::EROFS) => Outcome::Refused,
        _ => Outcome::NotApplicable,
    }
}

/// One line, at most [`EVIDENCE_CHARS`] characters.
pub fn one_line(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let flat = flat.trim();
    if flat.chars().count() <= EVIDENCE_CHARS {
        return flat.to_string();
    }
    let mut cut: String = flat.chars().take(EVIDENCE_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// `a, b, c (+N more)`.
fn name_list(names: &[String]) -> String {
    let shown = names
        .iter()
        .take(LIST_NAMES)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    match names.len().saturating_sub(LIST_NAMES) {
        0 => shown,
        more => format!("{shown} (+{more} more)"),
    }
}

/// Up to `max` bytes of a file (procfs files have no meaningful size).
fn read_head(path: &str, max: u64) -> io::Result<String> {
    let mut text = String::new();
    File::open(path)?.take(max).read_to_string(&mut text)?;
    Ok(text)
}

fn kernel() -> Found {
    let release = read_head("/proc/sys/kernel/osrelease", 256)
        .map(|r| r.trim().to_string())
        .or_else(|_| uname_release());
    let version = read_head("/proc/version", 1024)
        .map(|v| kernel_builder(&v))
        .unwrap_or_else(|e| format!("/proc/version: {}", errno(&e)));
    match release {
        Ok(release) => (Outcome::Visible, format!("{release}; built by {version}")),
        Err(e) => (Outcome::NotApplicable, format!("uname: {}", errno(&e))),
    }
}

/// Who built the kernel, from the first line of `/proc/version` (`Linux version R (WHO)
/// (compiler ...) #1 ...`): short, and tells a distribution's kernel from peapod's.
pub fn kernel_builder(proc_version: &str) -> String {
    let first = proc_version.lines().next().unwrap_or_default();
    first
        .split_once(" (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map_or_else(|| "unknown".to_string(), |(who, _)| who.to_string())
}

/// `uname -r`, for a root where /proc is not mounted.
fn uname_release() -> io::Result<String> {
    // SAFETY: utsname is plain old data, valid when zeroed; uname writes within it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The inode of a namespace link (`pid:[4026531836]`).
fn ns_inode(link: &str) -> Option<u64> {
    let target = fs::read_link(link).ok()?;
    let text = target.to_str()?;
    text.split_once(":[")?.1.strip_suffix(']')?.parse().ok()
}

/// Whether this process shares its kernel's initial namespace of `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsView {
    Initial,
    Own,
    Unknown,
}

impl NsView {
    fn text(self) -> &'static str {
        match self {
            NsView::Initial => "the initial namespace",
            NsView::Own => "a namespace of its own",
            NsView::Unknown => "a namespace of unknown origin",
        }
    }
}

/// Where the kernel gives the initial namespace a fixed inode, that decides; otherwise the
/// namespace of PID 1 does where PID 1 is the kernel's own init (we share the initial PID
/// namespace and PID 1 is not us); otherwise a private PID namespace says the runtime gave
/// us namespaces of our own.
pub fn ns_view(
    ours: Option<u64>,
    fixed_init: u64,
    pid1: Option<u64>,
    pid_ns_initial: bool,
) -> NsView {
    match (ours, pid1) {
        (None, _) => NsView::Unknown,
        (Some(ours), _) if ours == fixed_init => NsView::Initial,
        (Some(ours), Some(pid1)) if pid_ns_initial => {
            if ours == pid1 {
                NsView::Initial
            } else {
                NsView::Own
            }
        }
        _ if !pid_ns_initial => NsView::Own,
        _ => NsView::Unknown,
    }
}

fn pid_ns_initial() -> bool {
    ns_inode("/proc/self/ns/pid") == Some(INIT_PID_NS)
}

fn view_of(kind: &str, fixed_init: u64) -> NsView {
    let pid1 = (std::process::id() != 1)
        .then(|| ns_inode(&format!("/proc/1/ns/{kind}")))
        .flatten();
    ns_view(
        ns_inode(&format!("/proc/self/ns/{kind}")),
        fixed_init,
        pid1,
        pid_ns_initial(),
    )
}

fn view_outcome(view: NsView) -> Outcome {
    match view {
        NsView::Initial => Outcome::Visible,
        NsView::Own => Outcome::Confined,
        NsView::Unknown => Outcome::NotApplicable,
    }
}

fn pids() -> Found {
    let count = match fs::read_dir("/proc") {
        Ok(dir) => dir
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())
            })
            .count(),
        Err(e) => return (error_outcome(&e), format!("/proc: {}", errno(&e))),
    };
    let pid1 = read_head("/proc/1/comm", 64)
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|e| errno(&e));
    let us = if std::process::id() == 1 {
        " (this probe)"
    } else {
        ""
    };
    let view = ns_view(
        ns_inode("/proc/self/ns/pid"),
        INIT_PID_NS,
        None,
        pid_ns_initial(),
    );
    (
        view_outcome(view),
        format!(
            "{count} processes; PID 1 is {pid1}{us}; {}",
            view.text().replace("namespace", "PID namespace")
        ),
    )
}

fn mounts() -> Found {
    let text = match fs::read_to_string("/proc/self/mountinfo") {
        Ok(t) => t,
        Err(e) => return (error_outcome(&e), format!("mountinfo: {}", errno(&e))),
    };
    let view = view_of("mnt", INIT_MNT_NS);
    (
        view_outcome(view),
        format!(
            "{} mounts; {}",
            text.lines().count(),
            view.text().replace("namespace", "mount namespace")
        ),
    )
}

fn block_devices() -> Found {
    let mut sys: Vec<String> = match fs::read_dir("/sys/block") {
        Ok(dir) => dir
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    sys.sort();
    let mut nodes = block_nodes();
    nodes.sort();
    let sys_text = match sys.is_empty() {
        true => "none".to_string(),
        false => name_list(&sys),
    };
    let dev_text = match nodes.is_empty() {
        true => "no block nodes".to_string(),
        false => format!("{} block nodes ({})", nodes.len(), name_list(&nodes)),
    };
    let outcome = if nodes.is_empty() {
        Outcome::Hidden
    } else {
        Outcome::Visible
    };
    (outcome, format!("/sys/block: {sys_text}; /dev: {dev_text}"))
}

/// The block device nodes in /dev and /dev/mapper: (name, device number).
fn block_node_entries() -> Vec<(String, u64)> {
    let mut found = Vec::new();
    for dir in ["/dev", "/dev/mapper"] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.file_type().is_block_device() {
                let name = entry.path().to_string_lossy().into_owned();
                found.push((name, meta.rdev()));
            }
        }
    }
    found
}

fn block_nodes() -> Vec<String> {
    block_node_entries()
        .into_iter()
        .map(|(name, _)| name.trim_start_matches("/dev/").to_string())
        .collect()
}

/// The interface names in a `/proc/net/dev` text.
pub fn interfaces(proc_net_dev: &str) -> Vec<String> {
    proc_net_dev
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .filter(|name| !name.is_empty() && !name.contains('|'))
        .collect()
}

fn net_interfaces() -> Found {
    let names = match fs::read_to_string("/proc/net/dev") {
        Ok(text) => interfaces(&text),
        Err(e) => return (error_outcome(&e), format!("/proc/net/dev: {}", errno(&e))),
    };
    let view = view_of("net", INIT_NET_NS);
    (
        view_outcome(view),
        format!(
            "{} interfaces ({}); {}",
            names.len(),
            name_list(&names),
            view.text().replace("namespace", "network namespace")
        ),
    )
}

fn kcore() -> Found {
    let mut head = [0u8; 4];
    match File::open("/proc/kcore").and_then(|mut f| f.read(&mut head)) {
        Ok(0) => (
            Outcome::Hidden,
            "opens but reads empty (masked)".to_string(),
        ),
        Ok(n) if head[..n].starts_with(b"\x7fELF") => {
            (Outcome::Allowed, "read its ELF header".to_string())
        }
        Ok(n) => (Outcome::Allowed, format!("read {n} bytes")),
        Err(e) => (error_outcome(&e), format!("open/read: {}", errno(&e))),
    }
}

fn kmsg() -> Found {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg");
    let mut file = match file {
        Ok(f) => f,
        Err(e) => return (error_outcome(&e), format!("open: {}", errno(&e))),
    };
    let mut record = [0u8; 8192];
    match file.read(&mut record) {
        Ok(n) => (Outcome::Allowed, format!("read a record of {n} bytes")),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
            (Outcome::Allowed, "opened; no record waiting".to_string())
        }
        Err(e) if e.raw_os_error() == Some(libc::EPIPE) => (
            Outcome::Allowed,
            "opened; its first record was overwritten (EPIPE)".to_string(),
        ),
        Err(e) => (error_outcome(&e), format!("read: {}", errno(&e))),
    }
}

fn dmesg() -> Found {
    const SYSLOG_ACTION_READ_ALL: libc::c_int = 3;
    let mut buf = vec![0u8; 16 * 1024];
    let len = libc::c_int::try_from(buf.len()).unwrap_or(libc::c_int::MAX);
    // SAFETY: READ_ALL copies at most `len` bytes into `buf`, which is that long and
    // writable; the call does not keep the pointer.
    let got = unsafe { libc::klogctl(SYSLOG_ACTION_READ_ALL, buf.as_mut_ptr().cast(), len) };
    if got < 0 {
        let e = io::Error::last_os_error();
        let outcome = match e.raw_os_error() {
            Some(libc::ENOSYS) => Outcome::NotApplicable,
            _ => error_outcome(&e),
        };
        return (outcome, format!("syslog(READ_ALL): {}", errno(&e)));
    }
    (
        Outcome::Allowed,
        format!("syslog(READ_ALL) read {got} bytes of the kernel log"),
    )
}

fn firmware() -> Found {
    match fs::read_dir("/sys/firmware") {
        Ok(dir) => {
            let mut names: Vec<String> = dir
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            match names.is_empty() {
                true => (Outcome::Hidden, "empty (masked)".to_string()),
                false => (Outcome::Visible, name_list(&names)),
            }
        }
        Err(e) => (error_outcome(&e), format!("/sys/firmware: {}", errno(&e))),
    }
}

/// What the first lines of `/proc/kallsyms` show: how many symbols were read and whether
/// any address was non-zero (zeroed addresses: `kptr_restrict`, or no `CAP_SYSLOG`).
pub fn kallsyms_addresses(head: &str) -> (usize, bool) {
    let mut symbols = 0;
    let mut nonzero = false;
    for line in head.lines() {
        let Some(addr) = line.split_whitespace().next() else {
            continue;
        };
        let Ok(value) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        symbols += 1;
        nonzero |= value != 0;
    }
    (symbols, nonzero)
}

fn kallsyms() -> Found {
    match read_head("/proc/kallsyms", 16 * 1024) {
        Ok(head) => match kallsyms_addresses(&head) {
            (0, _) => (Outcome::Hidden, "no symbols".to_string()),
            (n, true) => (
                Outcome::Visible,
                format!("non-zero addresses in the first {n} symbols"),
            ),
            (n, false) => (
                Outcome::Hidden,
                format!("all {n} first addresses zeroed (kptr_restrict / no CAP_SYSLOG)"),
            ),
        },
        Err(e) => (error_outcome(&e), format!("/proc/kallsyms: {}", errno(&e))),
    }
}

/// The capability names of Linux, by bit (include/uapi/linux/capability.h).
const CAP_NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// The names of the capabilities in `mask` (bit order; `cap_N` for a bit this table does
/// not know).
pub fn decode_caps(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(|bit| match CAP_NAMES.get(bit) {
            Some(name) => (*name).to_string(),
            None => format!("cap_{bit}"),
        })
        .collect()
}

/// A field of `/proc/self/status` (`Seccomp:\t2` → `2`).
pub fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key == name).then(|| value.trim())
    })
}

/// The capability evidence: a full set, or whichever of granted and missing is shorter.
/// `last_cap`: the kernel's highest capability (`/proc/sys/kernel/cap_last_cap`).
pub fn caps_found(cap_eff: u64, last_cap: u32) -> Found {
    let all: u64 = if last_cap >= 63 {
        u64::MAX
    } else {
        (1u64 << (last_cap + 1)) - 1
    };
    let total = last_cap + 1;
    let granted = decode_caps(cap_eff & all);
    if cap_eff & all == all {
        return (
            Outcome::Allowed,
            format!("CapEff {cap_eff:016x}: all {total}"),
        );
    }
    if granted.is_empty() {
        return (Outcome::Confined, format!("CapEff {cap_eff:016x}: none"));
    }
    let missing = decode_caps(all & !cap_eff);
    let listed = if missing.len() < granted.len() {
        format!("all but {}", missing.join(","))
    } else {
        granted.join(",")
    };
    (
        Outcome::Confined,
        format!(
            "CapEff {cap_eff:016x}: {} of {total}: {listed}",
            granted.len()
        ),
    )
}

fn capabilities() -> Found {
    let status = match fs::read_to_string("/proc/self/status") {
        Ok(s) => s,
        Err(e) => {
            return (
                error_outcome(&e),
                format!("/proc/self/status: {}", errno(&e)),
            );
        }
    };
    let Some(cap_eff) =
        status_field(&status, "CapEff").and_then(|h| u64::from_str_radix(h, 16).ok())
    else {
        return (
            Outcome::NotApplicable,
            "no CapEff in /proc/self/status".into(),
        );
    };
    let last_cap = read_head("/proc/sys/kernel/cap_last_cap", 16)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(40);
    caps_found(cap_eff, last_cap)
}

/// The seccomp evidence from `/proc/self/status`.
pub fn seccomp_found(status: &str) -> Found {
    let filters = status_field(status, "Seccomp_filters");
    let filters = filters.map_or(String::new(), |n| format!(", {n} filters"));
    match status_field(status, "Seccomp") {
        None => (
            Outcome::NotApplicable,
            "no Seccomp field (kernel without seccomp)".into(),
        ),
        Some("0") => (Outcome::Allowed, "Seccomp: 0 (no filter)".into()),
        Some("1") => (Outcome::Confined, "Seccomp: 1 (strict mode)".into()),
        Some("2") => (Outcome::Confined, format!("Seccomp: 2 (filter){filters}")),
        Some(other) => (Outcome::NotApplicable, format!("Seccomp: {other}")),
    }
}

fn seccomp() -> Found {
    match fs::read_to_string("/proc/self/status") {
        Ok(status) => seccomp_found(&status),
        Err(e) => (
            error_outcome(&e),
            format!("/proc/self/status: {}", errno(&e)),
        ),
    }
}

/// A call that reached (or did not reach) its permission check: EPERM/EACCES mean refused,
/// ENOSYS that the kernel lacks it, any other error that the call got through.
pub fn gate_found(call: &str, result: Result<(), nix::errno::Errno>, through: &str) -> Found {
    use nix::errno::Errno;
    match result {
        Ok(()) => (Outcome::Allowed, format!("{call}: succeeded ({through})")),
        Err(e @ (Errno::EPERM | Errno::EACCES)) => (Outcome::Refused, format!("{call}: {e:?}")),
        Err(Errno::ENOSYS) => (
            Outcome::NotApplicable,
            format!("{call}: ENOSYS (not in this kernel)"),
        ),
        Err(e) => (
            Outcome::Allowed,
            format!("{call}: {e:?}: got past the permission check ({through})"),
        ),
    }
}

fn module_load() -> Found {
    // An empty image: after the CAP_SYS_MODULE check the loader refuses it (ENOEXEC).
    gate_found(
        "init_module(empty image)",
        nix::kmod::init_module(&[], c""),
        "nothing loaded",
    )
}

fn clock() -> Found {
    // SAFETY: settimeofday with two null pointers reads and writes no memory; the kernel
    // checks CAP_SYS_TIME and then has nothing to set.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_settimeofday,
            std::ptr::null::<libc::timeval>(),
            std::ptr::null::<libc::c_void>(),
        )
    };
    let result = match rc {
        0 => Ok(()),
        _ => Err(nix::errno::Errno::last()),
    };
    gate_found(
        "settimeofday(NULL, NULL)",
        result,
        "CAP_SYS_TIME held; nothing set",
    )
}

fn reboot() -> Found {
    // SAFETY: reboot with magic 0 is refused before anything happens: EPERM without
    // CAP_SYS_BOOT, else EINVAL for the bad magic; the null argument is never read.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_reboot,
            0 as libc::c_int,
            0 as libc::c_int,
            0 as libc::c_int,
            std::ptr::null::<libc::c_void>(),
        )
    };
    let result = match rc {
        0 => Ok(()),
        _ => Err(nix::errno::Errno::last()),
    };
    gate_found("reboot(bad magic)", result, "CAP_SYS_BOOT held; no reboot")
}

/// Opens `path` for writing and closes it without writing.
fn open_for_write(path: &str) -> Found {
    match OpenOptions::new().write(true).open(path) {
        Ok(_) => (
            Outcome::Allowed,
            "opened for write (nothing written)".to_string(),
        ),
        Err(e) => (error_outcome(&e), format!("open for write: {}", errno(&e))),
    }
}

/// Mounts a fresh named cgroup v1 hierarchy under the marker and writes a path under the
/// marker into its `release_agent` (no cgroup is created, so it never runs).
fn release_agent(marker: &Path) -> Found {
    use nix::mount::{MntFlags, MsFlags};
    let dir = marker.join(MARKER_CGROUP_DIR);
    if let Err(e) = fs::create_dir(&dir) {
        return (
            Outcome::NotApplicable,
            format!("mkdir under the marker: {}", errno(&e)),
        );
    }
    let mount_v1 = |options: &str| {
        nix::mount::mount(
            Some("peapod-probe"),
            &dir,
            Some("cgroup"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(options),
        )
    };
    // A new named hierarchy; where that is refused (a cgroup namespace may not create
    // hierarchies), the existing rdma hierarchy, as in the CVE's exploit.
    let named = format!("none,name={CGROUP_NAME}");
    let mounted = mount_v1(&named).or_else(|named_err| {
        mount_v1("rdma").map_err(|rdma_err| format!("named: {named_err:?}; rdma: {rdma_err:?}"))
    });
    let refused = |why: &str| why.contains("EPERM") || why.contains("EACCES");
    let found = match mounted {
        Err(why) if refused(&why) => (Outcome::Refused, format!("mount cgroup v1: {why}")),
        Err(why) => (
            Outcome::NotApplicable,
            format!("mount cgroup v1: {why} (no cgroup v1 here?)"),
        ),
        Ok(()) => {
            let agent = marker.join(MARKER_RELEASE_AGENT);
            let wrote = OpenOptions::new()
                .write(true)
                .open(dir.join("release_agent"))
                .and_then(|mut f| f.write_all(agent.as_os_str().as_encoded_bytes()));
            let found = match wrote {
                Ok(()) => (
                    Outcome::Allowed,
                    "mounted a v1 hierarchy and wrote its release_agent (a marker path)"
                        .to_string(),
                ),
                Err(e) => (
                    error_outcome(&e),
                    format!("mounted a v1 hierarchy; release_agent write: {}", errno(&e)),
                ),
            };
            if let Err(e) = nix::mount::umount2(&dir, MntFlags::MNT_DETACH) {
                return (found.0, format!("{}; umount: {e:?}", found.1));
            }
            found
        }
    };
    let _ = fs::remove_dir(&dir);
    found
}

/// A mount backed by a block device, from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMount {
    pub major: u32,
    pub minor: u32,
    pub fstype: String,
    pub source: String,
    /// The superblock's state (`ro` in its super options).
    pub read_only: bool,
}

/// The block device behind `/`, else behind the first mount that has one (major 0 is an
/// anonymous device: overlay, tmpfs, proc...).
pub fn block_mount(mountinfo: &str) -> Option<BlockMount> {
    let parse = |line: &str| -> Option<(String, BlockMount)> {
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split_whitespace().collect();
        let (major, minor) = fields.get(2)?.split_once(':')?;
        let mount_point = fields.get(4)?.to_string();
        let mut right = right.split_whitespace();
        let fstype = right.next()?.to_string();
        let source = right.next()?.to_string();
        let options = right.next().unwrap_or_default();
        let mount = BlockMount {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
            fstype,
            source,
            read_only: options.split(',').any(|o| o == "ro"),
        };
        (mount.major != 0).then_some((mount_point, mount))
    };
    let mounts: Vec<(String, BlockMount)> = mountinfo.lines().filter_map(parse).collect();
    mounts
        .iter()
        .find(|(point, _)| point == "/")
        .or_else(|| mounts.first())
        .map(|(_, m)| m.clone())
}

/// Mounts the block device behind an existing mount again, under the marker, with its
/// superblock's own ro/rw state (the same superblock: nothing is replayed or changed),
/// lists its top directory and unmounts it.
fn root_device_mount(marker: &Path) -> Found {
    let info = match fs::read_to_string("/proc/self/mountinfo") {
        Ok(t) => t,
        Err(e) => return (error_outcome(&e), format!("mountinfo: {}", errno(&e))),
    };
    let Some(mount) = block_mount(&info) else {
        return (
            Outcome::NotApplicable,
            "no mount here is backed by a block device".into(),
        );
    };
    let what = format!(
        "{} ({} {}:{})",
        mount.source, mount.fstype, mount.major, mount.minor
    );
    let rdev = nix::sys::stat::makedev(mount.major.into(), mount.minor.into());
    let existing = block_node_entries()
        .into_iter()
        .find(|(_, dev)| *dev == rdev)
        .map(|(name, _)| PathBuf::from(name));
    let made_node = marker.join(MARKER_ROOTDEV_NODE);
    let node = match existing {
        Some(node) => node,
        None => {
            let made = nix::sys::stat::mknod(
                &made_node,
                nix::sys::stat::SFlag::S_IFBLK,
                nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
                rdev,
            );
            if let Err(e) = made {
                let outcome = match e {
                    nix::errno::Errno::EPERM | nix::errno::Errno::EACCES => Outcome::Refused,
                    _ => Outcome::NotApplicable,
                };
                return (outcome, format!("{what}: no node in /dev; mknod: {e:?}"));
            }
            made_node.clone()
        }
    };
    let found = mount_and_list(&node, marker, &mount, &what);
    if node == made_node {
        let _ = fs::remove_file(&made_node);
    }
    found
}

fn mount_and_list(node: &Path, marker: &Path, mount: &BlockMount, what: &str) -> Found {
    use nix::mount::{MntFlags, MsFlags};
    let dir = marker.join(MARKER_ROOTDEV_DIR);
    if let Err(e) = fs::create_dir(&dir) {
        return (
            Outcome::NotApplicable,
            format!("mkdir under the marker: {}", errno(&e)),
        );
    }
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if mount.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let Ok(fstype) = CString::new(mount.fstype.as_str()) else {
        let _ = fs::remove_dir(&dir);
        return (Outcome::NotApplicable, format!("{what}: odd fs type"));
    };
    let mounted = nix::mount::mount(
        Some(node),
        &dir,
        Some(fstype.as_c_str()),
        flags,
        None::<&str>,
    );
    let found = match mounted {
        Err(e) => {
            let outcome = match e {
                nix::errno::Errno::EPERM | nix::errno::Errno::EACCES => Outcome::Refused,
                _ => Outcome::NotApplicable,
            };
            (outcome, format!("mount {what}: {e:?}"))
        }
        Ok(()) => {
            let mut names: Vec<String> = fs::read_dir(&dir)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            let found = (
                Outcome::Allowed,
                format!("mounted {what}: {}", name_list(&names)),
            );
            if let Err(e) = nix::mount::umount2(&dir, MntFlags::MNT_DETACH) {
                // the mount point stays; rmdir below fails on it rather than recurse
                return (found.0, format!("{}; umount: {e:?}", found.1));
            }
            found
        }
    };
    let _ = fs::remove_dir(&dir);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_decode_to_names() {
        assert_eq!(decode_caps(0), Vec::<String>::new());
        assert_eq!(decode_caps(1), ["chown"]);
        assert_eq!(
            decode_caps(1 << 21 | 1 << 40),
            ["sys_admin", "checkpoint_restore"]
        );
        assert_eq!(decode_caps(1 << 45), ["cap_45"]);
        // Docker's default set
        let docker = 0x00000000a80425fb;
        assert_eq!(
            decode_caps(docker).join(","),
            "chown,dac_override,fowner,fsetid,kill,setgid,setuid,setpcap,net_bind_service,\
             net_raw,sys_chroot,mknod,audit_write,setfcap"
        );
        let (outcome, evidence) = caps_found(docker, 40);
        assert_eq!(outcome, Outcome::Confined);
        assert!(
            evidence.starts_with("CapEff 00000000a80425fb: 14 of 41: chown,"),
            "{evidence}"
        );
        assert_eq!(
            caps_found(0x1ff_ffff_ffff, 40),
            (Outcome::Allowed, "CapEff 000001ffffffffff: all 41".into())
        );
        // all but one: the missing one is named
        let (outcome, evidence) = caps_found(0x1fffeffffff, 40);
        assert_eq!(outcome, Outcome::Confined);
        assert!(
            evidence.ends_with("40 of 41: all but sys_resource"),
            "{evidence}"
        );
        assert_eq!(caps_found(0, 40).1, "CapEff 0000000000000000: none");
        // bits above the kernel's last capability do not count
        assert_eq!(caps_found(u64::MAX, 40).0, Outcome::Allowed);
        assert_eq!(caps_found(u64::MAX, 63).0, Outcome::Allowed);
    }

    #[test]
    fn seccomp_and_status_fields() {
        let status = "Name:\tsh\nCapEff:\t00000000a80425fb\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        assert_eq!(status_field(status, "CapEff"), Some("00000000a80425fb"));
        assert_eq!(status_field(status, "Seccomp"), Some("2"));
        assert_eq!(status_field(status, "Missing"), None);
        assert_eq!(
            seccomp_found(status),
            (Outcome::Confined, "Seccomp: 2 (filter), 1 filters".into())
        );
        assert_eq!(
            seccomp_found("Seccomp:\t0\nSeccomp_filters:\t0\n").0,
            Outcome::Allowed
        );
        assert_eq!(seccomp_found("Name: x\n").0, Outcome::NotApplicable);
    }

    #[test]
    fn gates_tell_refused_from_through() {
        use nix::errno::Errno;
        assert_eq!(gate_found("x", Err(Errno::EPERM), "t").0, Outcome::Refused);
        assert_eq!(gate_found("x", Err(Errno::EACCES), "t").0, Outcome::Refused);
        let (o, e) = gate_found("init_module", Err(Errno::ENOEXEC), "nothing loaded");
        assert_eq!(o, Outcome::Allowed);
        assert!(e.contains("ENOEXEC") && e.contains("nothing loaded"), "{e}");
        assert_eq!(
            gate_found("x", Err(Errno::ENOSYS), "t").0,
            Outcome::NotApplicable
        );
        assert_eq!(gate_found("x", Ok(()), "t").0, Outcome::Allowed);
    }

    #[test]
    fn namespace_views() {
        // the fixed initial inode decides
        assert_eq!(
            ns_view(Some(INIT_MNT_NS), INIT_MNT_NS, None, false),
            NsView::Initial
        );
        // PID 1's namespace, where PID 1 is the kernel's init
        assert_eq!(
            ns_view(Some(5), INIT_MNT_NS, Some(5), true),
            NsView::Initial
        );
        assert_eq!(ns_view(Some(5), INIT_MNT_NS, Some(6), true), NsView::Own);
        // a private PID namespace
        assert_eq!(ns_view(Some(5), INIT_MNT_NS, Some(5), false), NsView::Own);
        assert_eq!(ns_view(Some(5), INIT_MNT_NS, None, true), NsView::Unknown);
        assert_eq!(ns_view(None, INIT_MNT_NS, None, true), NsView::Unknown);
    }

    #[test]
    fn proc_parsers() {
        let dev = "Inter-|   Receive |  Transmit\n face |bytes packets|bytes\n    lo: 1 2 3\n  \
                   eth0: 4 5 6\n";
        assert_eq!(interfaces(dev), ["lo", "eth0"]);
        assert_eq!(
            kallsyms_addresses("0000000000000000 T _text\n0000000000000000 t x\n"),
            (2, false)
        );
        assert_eq!(
            kallsyms_addresses("ffffffff81000000 T _text\ngarbage\n"),
            (1, true)
        );
        assert_eq!(kallsyms_addresses(""), (0, false));
        let info = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                    27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n\
                    28 27 8:1 / /data ro - xfs /dev/sda1 ro\n";
        assert_eq!(
            block_mount(info),
            Some(BlockMount {
                major: 254,
                minor: 0,
                fstype: "ext4".into(),
                source: "/dev/vda".into(),
                read_only: false,
            })
        );
        let overlay_root = "1 0 0:45 / / rw - overlay overlay rw\n\
                            2 1 8:1 /x /etc/hosts ro - ext4 /dev/sda1 ro,relatime\n";
        let m = block_mount(overlay_root).unwrap();
        assert_eq!((m.major, m.minor, m.read_only), (8, 1, true));
        assert_eq!(block_mount("1 0 0:45 / / rw - overlay overlay rw\n"), None);
        assert_eq!(block_mount("garbage\n1 2 3\n"), None);
    }

    #[test]
    fn the_kernel_builder() {
        let debian = "Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org) \
                      (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld 2.40) #1 SMP\n";
        assert_eq!(kernel_builder(debian), "debian-kernel@lists.debian.org");
        assert_eq!(
            kernel_builder("Linux version 6.1.192 (peapod@peapod) (gcc)"),
            "peapod@peapod"
        );
        assert_eq!(kernel_builder(""), "unknown");
    }

    #[test]
    fn evidence_is_one_short_line() {
        assert_eq!(one_line(" a\nb\t"), "a b");
        let long = one_line(&"x".repeat(500));
        assert_eq!(long.chars().count(), EVIDENCE_CHARS);
        assert!(long.ends_with('…'));
        let names: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        assert_eq!(name_list(&names), "0, 1, 2, 3, 4, 5, 6, 7 (+2 more)");
    }

    #[test]
    fn the_command_line() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(Invocation::parse(&[]).unwrap(), Invocation::default());
        assert_eq!(
            Invocation::parse(&args(&["--marker", "/m"]))
                .unwrap()
                .marker,
            Some(PathBuf::from("/m"))
        );
        assert!(Invocation::parse(&args(&["--marker"])).is_err());
        assert!(Invocation::parse(&args(&["--marker", "rel"])).is_err());
        assert!(Invocation::parse(&args(&["--nope"])).is_err());
    }

    /// Every mount point under `dir`, from this process's mount table.
    fn mounts_under(dir: &Path) -> Vec<String> {
        let prefix = format!("{}/", dir.display());
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|p| p.starts_with(&prefix) || *p == dir.display().to_string())
            .collect()
    }

    #[test]
    fn every_probe_runs_on_this_host_and_leaves_nothing_behind() {
        // kept, and removed with rmdir at the end: a recursive removal would follow a mount
        // the probe failed to undo
        let parent = tempfile::tempdir().unwrap().keep();
        let marker = parent.join("marker");
        let lines = run_all(Some(&marker));
        for line in &lines {
            eprintln!(
                "{} {} {}",
                line.probe.as_str(),
                line.outcome.as_str(),
                line.evidence
            );
        }
        assert_eq!(
            lines.iter().map(|l| l.probe).collect::<Vec<_>>(),
            ProbeName::ALL
        );
        for line in &lines {
            assert!(!line.evidence.is_empty(), "{line:?}");
            assert!(line.evidence.chars().count() <= EVIDENCE_CHARS, "{line:?}");
            assert!(!line.evidence.contains("panicked"), "{line:?}");
            // each line is what the parser takes back
            let json = serde_json::to_string(line).unwrap();
            assert_eq!(&serde_json::from_str::<ProbeLine>(&json).unwrap(), line);
        }
        let kernel = &lines[0];
        assert_eq!(kernel.outcome, Outcome::Visible);
        assert!(kernel.evidence.contains("; built by "), "{kernel:?}");
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert!(kernel.evidence.starts_with(release.trim()), "{kernel:?}");
        // no mount is left, the marker it created is gone, nothing else was written
        assert!(mounts_under(&parent).is_empty());
        assert!(
            !marker.exists(),
            "the probe leaves its marker dir as it found it"
        );
        assert_eq!(fs::read_dir(&parent).unwrap().count(), 0);
        // an existing marker dir stays, empty
        fs::create_dir(&marker).unwrap();
        let _ = run_all(Some(&marker));
        assert_eq!(fs::read_dir(&marker).unwrap().count(), 0);
        assert!(mounts_under(&parent).is_empty());
        fs::remove_dir(&marker).unwrap();
        fs::remove_dir(&parent).unwrap();
        // without a marker, the write probes do not run
        let lines = run_all(None);
        let agent = lines
            .iter()
            .find(|l| l.probe == ProbeName::ReleaseAgent)
            .unwrap();
        assert_eq!(agent.outcome, Outcome::NotApplicable);
    }
}
