//! A pod's containers: the cgroup and directories the agent prepares (where, the pod's
//! [`PodLayout`] says: the VM's or a host pod's), and the two helpers the agent runs as its
//! own binary again (single-threaded, so they may fork and change namespaces freely):
//!
//! * `container-init` ([`container_init_main`]): PID 1 of a new PID namespace. It
//!   unshares mount/UTS/IPC namespaces, joins the pod's network
//!   namespace, mounts the rootfs (the image read-only, a block device or on the host a
//!   directory, see [`RootfsLower`]; a tmpfs upper; an overlay), its mounts (pod volumes are bind mounts of the agent's, see
//!   [`super::volume`]), `/proc`, a minimal `/dev`, a read-only `/sys` (docker's masked and
//!   read-only paths applied, [`MASKED_PATHS`], unless privileged) and the pod's `/etc`
//!   files, makes the overlay read-only for a read-only root (the upper then only holds
//!   mount points), pivots into it and sets the hostname ([`setup_container`], unit-tested
//!   through [`Os`]); then forks the container's process (PID 2) into the container's
//!   cgroup, which confines itself ([`super::hardening`]) and waits for the agent's start
//!   byte, and reports `ready`. container-init itself stays outside that cgroup (as
//!   conmon and containerd's shims do): the cgroup is empty, and can be removed, as soon
//!   as the container's processes have ended, while container-init's exit (which takes
//!   the container's namespaces down, milliseconds) goes on. On
//!   start the process executes; container-init forwards every signal it gets to it, reaps
//!   orphans, and when the process ends reports its status and exits, which kills whatever
//!   is left in the namespace. Being a tiny init (like `docker run --init`) rather than the process
//!   itself means the process gets signals with their default actions (a shell's
//!   `kill $$` works) and orphans are reaped.
//! * `exec-init` ([`exec_init_main`]): started by the agent inside a running container's PID
//!   namespace, it joins the container's cgroup and its other namespaces and executes the
//!   process; an error is reported on its status socket, success closes it (close-on-exec).
//!
//! The helper protocol: the agent writes one JSON config on the helper's fd 3 and closes it;
//! the helper writes [`HelperEvent`] JSON lines on fd 4, a Unix socket (for a tty process,
//! first the pty master it allocated in the container's devpts, with `SCM_RIGHTS`: the
//! slave then has a name inside the container); the container's process (forked by
//! `container-init`) reads the start byte on fd 5 (end of file without a byte: abort);
//! fd 6 is the container's cgroup directory, which that process is cloned into.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

use super::hardening::{Hardening, Prepared};
use super::layout::{LayoutError, PodLayout, RootfsLower};
use super::os::{Os, PathKind, RealOs};
use super::process::{exit_status, inherited_fd, open_pty, pipe, send_fd};
use crate::protocol::{
    ContainerSpec, ContainerStats, MountSource, MountSpec, ProcessSpec, Resources,
};

/// A `PATH` for looking up programs when the process's environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Device nodes of a container's `/dev`, bound from the guest's.
const DEV_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// What docker (moby's `oci.DefaultSpec`) hides from an unprivileged container: kernel
/// memory, keys, timers and hardware it has no business reading or poking. A file gets
/// `/dev/null` bound over it, a directory an empty read-only tmpfs; a path this kernel
/// lacks is skipped.
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// What docker leaves readable but not writable for an unprivileged container: the
/// machine-wide knobs under `/proc` (sysctls, IRQ affinity, SysRq).
pub const READ_ONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Process(#[from] super::process::ProcessError),
    #[error("helper protocol: {0}")]
    Helper(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ContainerError {
    let what = what.into();
    move |source| ContainerError::Io { what, source }
}

/// What `container-init` needs, sent by the agent on fd 3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerInit {
    pub id: String,
    pub hostname: String,
    pub rootfs: InitRootfs,
    pub mounts: Vec<InitMount>,
    pub process: ProcessSpec,
    /// The container's cgroup directory (container-init gets it open as fd 6).
    pub cgroup: PathBuf,
    /// The pod's network namespace file.
    pub netns: Option<PathBuf>,
    /// Directory with the pod's `/etc` files, if any.
    pub etc: Option<PathBuf>,
    /// The container's directory under [`PodLayout::containers_dir`].
    pub dir: PathBuf,
    /// How its process is confined, and whether `/proc` and `/sys` are masked (not for a
    /// privileged container).
    pub hardening: Hardening,
}

impl ContainerInit {
    /// What `container-init` gets for `spec` in the pod laid out as `layout`: its cgroup,
    /// directory, image, the pod's network namespace and `/etc` files, all from the layout;
    /// `mounts` are `spec`'s resolved ([`super::volume::resolve_mounts`]), and the hostname
    /// is the container's own or else the pod's. Its hardening is the spec's `privileged`
    /// and the layout's seccomp switch.
    pub fn new(
        layout: &PodLayout,
        spec: &ContainerSpec,
        pod_hostname: &str,
        mounts: Vec<InitMount>,
    ) -> Result<Self, LayoutError> {
        for m in &mounts {
            layout.check_mount(&m.spec)?;
        }
        Ok(ContainerInit {
            id: spec.id.clone(),
            hostname: spec
                .hostname
                .clone()
                .unwrap_or_else(|| pod_hostname.to_string()),
            rootfs: InitRootfs {
                lower: layout.rootfs_lower(&spec.rootfs)?,
                read_only: spec.rootfs.read_only,
            },
            mounts,
            process: spec.process.clone(),
            cgroup: layout.cgroup_dir(&spec.id),
            netns: Some(layout.pod_netns.path().to_path_buf()),
            etc: Some(layout.pod_etc.clone()),
            dir: layout.container_dir(&spec.id),
            hardening: Hardening {
                privileged: spec.privileged,
                seccomp: layout.seccomp,
            },
        })
    }
}

/// The container's image as the layout resolved it ([`PodLayout::rootfs_lower`]), and
/// whether its `/` is read-only ([`crate::protocol::RootfsSpec::read_only`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRootfs {
    pub lower: RootfsLower,
    pub read_only: bool,
}

/// One of the container's mounts: the spec's, and for a pod volume what the agent
/// resolved it to ([`super::volume::resolve_mounts`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitMount {
    pub spec: MountSpec,
    #[serde(default)]
    pub bind: Option<VolumeBind>,
}

/// A pod volume's directory, or `sub_path` inside it, to bind into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeBind {
    /// The volume's directory under [`PodLayout::volumes_dir`].
    pub dir: PathBuf,
    pub sub_path: Option<PathBuf>,
    /// `sub_path` is a file (a secret's), so the mount point is a file too.
    pub file: bool,
    /// Make `sub_path`'s missing directories (an `emptyDir`'s).
    pub create: bool,
}

/// What `exec-init` needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecInit {
    /// The container's init, whose namespaces the process joins.
    pub container_pid: i32,
    pub cgroup: PathBuf,
    /// exec-init moves itself into `cgroup` (as [`ContainerInit::join_cgroup`]).
    pub join_cgroup: bool,
    pub process: ProcessSpec,
    /// The container's ([`ContainerInit::hardening`]): an exec'd process is confined as
    /// the container's own.
    pub hardening: Hardening,
}

/// A line a helper writes on its status pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HelperEvent {
    /// The container is set up and waits for its start byte.
    Ready,
    /// Setting up failed; the helper exits.
    SetupFailed { message: String },
    /// The process executes.
    Started,
    /// The process could not be executed (it exits with `code`, 126 or 127).
    ExecFailed { message: String, code: i32 },
    /// The container's process ended (the shell convention plus the signal).
    Exited { code: i32, signal: Option<i32> },
}

/// Reads the next event from a helper's status pipe; `None` at end of file.
pub fn read_event(r: &mut impl BufRead) -> Result<Option<HelperEvent>, ContainerError> {
    let mut line = String::new();
    // Bounded: a helper writes short lines; refuse anything absurd.
    let n = r
        .take(64 * 1024)
        .read_line(&mut line)
        .map_err(io_err("reading a helper's status"))?;
    if n == 0 {
        return Ok(None);
    }
    serde_json::from_str(line.trim_end())
        .map(Some)
        .map_err(|e| ContainerError::Helper(format!("bad status line {line:?}: {e}")))
}

fn write_event(w: &mut impl Write, event: &HelperEvent) {
    if let Ok(mut line) = serde_json::to_string(event) {
        line.push('\n');
        let _ = w.write_all(line.as_bytes());
    }
}

/// Creates the container's cgroup under the layout's parent and writes its limits.
pub fn create_cgroup(
    os: &dyn Os,
    layout: &PodLayout,
    id: &str,
    res: &Resources,
) -> io::Result<PathBuf> {
    let dir = layout.cgroup_dir(id);
    os.mkdir_all(&dir, 0o755)?;
    if let Some(max) = res.memory_max {
        os.write_file(&dir.join("memory.max"), max.to_string().as_bytes())?;
        // The guest has no swap; say so anyway so a limit is a limit.
        let _ = os.write_file(&dir.join("memory.swap.max"), b"0");
    }
    if let Some(cpu) = res.cpu {
        os.write_file(
            &dir.join("cpu.max"),
            format!("{} {}", cpu.quota_us, cpu.period_us).as_bytes(),
        )?;
    }
    if let Some(max) = res.pids_max {
        os.write_file(&dir.join("pids.max"), max.to_string().as_bytes())?;
    }
    Ok(dir)
}

/// The container's directories under [`PodLayout::containers_dir`], made by the agent (the
/// helper mounts on them in its own mount namespace).
pub fn create_dirs(os: &dyn Os, layout: &PodLayout, id: &str) -> io::Result<PathBuf> {
    let dir = layout.container_dir(id);
    for sub in ["lower", "rw", "root"] {
        os.mkdir_all(&dir.join(sub), 0o700)?;
    }
    Ok(dir)
}

/// Removes what [`create_dirs`] and [`create_cgroup`] made (best effort, all of it).
pub fn remove_dirs(os: &dyn Os, layout: &PodLayout, id: &str) -> io::Result<()> {
    let dir = layout.container_dir(id);
    let mut result = Ok(());
    for sub in ["lower", "rw", "root", ""] {
        if let Err(e) = os.remove_dir(&dir.join(sub)) {
            result = Err(e);
        }
    }
    if let Err(e) = os.remove_dir(&layout.cgroup_dir(id)) {
        result = Err(e);
    }
    result
}

/// `oom_kill` of the cgroup's `memory.events` (0 when unreadable).
pub fn oom_kills(os: &dyn Os, cgroup: &Path) -> u64 {
    os.read_to_string(&cgroup.join("memory.events"))
        .map(|s| keyed(&s, "oom_kill"))
        .unwrap_or(0)
}

fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

fn single(os: &dyn Os, path: &Path) -> Option<u64> {
    os.read_to_string(path).ok()?.trim().parse().ok()
}

/// The container's cgroup counters.
pub fn read_stats(os: &dyn Os, cgroup: &Path) -> io::Result<ContainerStats> {
    let cpu = os.read_to_string(&cgroup.join("cpu.stat"))?;
    Ok(ContainerStats {
        memory_current: single(os, &cgroup.join("memory.current")).unwrap_or(0),
        memory_peak: single(os, &cgroup.join("memory.peak")),
        cpu_usage_usec: keyed(&cpu, "usage_usec"),
        cpu_user_usec: keyed(&cpu, "user_usec"),
        cpu_system_usec: keyed(&cpu, "system_usec"),
        pids_current: single(os, &cgroup.join("pids.current")).unwrap_or(0),
        oom_kills: oom_kills(os, cgroup),
    })
}

/// Everything `container-init` does before it forks the container's process, in order.
pub fn setup_container(os: &dyn Os, init: &ContainerInit) -> io::Result<()> {
    os.unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC)?;
    if let Some(netns) = &init.netns {
        os.setns(netns, CloneFlags::CLONE_NEWNET)?;
    }
    // Nothing mounted from here on propagates back to the agent.
    os.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    let lower = init.dir.join("lower");
    let rw = init.dir.join("rw");
    let root = init.dir.join("root");
    let nodev = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    mount_lower(os, &init.rootfs.lower, &lower)?;
    os.mount(
        Some(Path::new("tmpfs")),
        &rw,
        Some("tmpfs"),
        nodev,
        Some("mode=0755"),
    )?;
    os.mkdir_all(&rw.join("upper"), 0o755)?;
    os.mkdir_all(&rw.join("work"), 0o755)?;
    let overlay = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        rw.join("upper").display(),
        rw.join("work").display()
    );
    os.mount(
        Some(Path::new("overlay")),
        &root,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(&overlay),
    )?;
    for m in &init.mounts {
        mount_extra(os, &root, m)?;
    }
    mount_proc_dev_sys(os, &root, init.hardening.privileged)?;
    if let Some(etc) = &init.etc {
        for name in ["hosts", "resolv.conf", "hostname"] {
            let target = root.join("etc").join(name);
            os.mkdir_all(&root.join("etc"), 0o755)?;
            // The overlay is writable: make the file the bind mount needs.
            os.write_file(&target, b"")?;
            os.mount(Some(&etc.join(name)), &target, None, MsFlags::MS_BIND, None)?;
        }
    }
    if init.rootfs.read_only {
        // Every mount point exists now (made in the upper); from here on `/` itself
        // refuses writes, while the mounts on it keep their own flags.
        os.mount(
            None,
            &root,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
            None,
        )?;
    }
    os.pivot_root(&root)?;
    os.sethostname(&init.hostname)
}

/// Mounts the image on `lower`, read-only. An image's set-uid programs keep working (no
/// `MS_NOSUID`), its device nodes do not (`MS_NODEV`).
fn mount_lower(os: &dyn Os, image: &RootfsLower, lower: &Path) -> io::Result<()> {
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV;
    match image {
        RootfsLower::Device { device, fs_type } => {
            os.mount(Some(device), lower, Some(fs_type.as_str()), flags, None)
        }
        RootfsLower::Directory(dir) => {
            // A bind takes its flags only on a remount; until then nothing runs in it.
            os.mount(Some(dir), lower, None, MsFlags::MS_BIND, None)?;
            os.mount(
                None,
                lower,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
                None,
            )
        }
    }
}

/// `dest` (absolute, checked by the protocol) under `root`.
fn inside(root: &Path, dest: &Path) -> PathBuf {
    root.join(dest.strip_prefix("/").unwrap_or(dest))
}

fn mount_extra(os: &dyn Os, root: &Path, mount: &InitMount) -> io::Result<()> {
    // Mount targets are made in the container's own overlay before the pivot; a symlink in
    // the image could point one outside, but only within this container's private mount
    // namespace, and the old root is detached at the pivot.
    let m = &mount.spec;
    let target = inside(root, &m.destination);
    // Pod volumes, and a host pod's host directories: resolved to binds by the agent.
    if let Some(bind) = &mount.bind {
        return bind_volume(os, &target, bind, m.read_only);
    }
    if let MountSource::PodVolume { name, .. } = &m.source {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("pod volume {name} was not resolved by the agent"),
        ));
    }
    os.mkdir_all(&target, 0o755)?;
    let mut flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    if m.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    match &m.source {
        MountSource::Tmpfs { size_bytes } => {
            let data = match size_bytes {
                Some(n) => format!("mode=1777,size={n}"),
                None => "mode=1777".into(),
            };
            os.mount(
                Some(Path::new("tmpfs")),
                &target,
                Some("tmpfs"),
                flags,
                Some(&data),
            )
        }
        MountSource::Block { device, fs_type } => {
            os.mount(Some(device), &target, Some(fs_type.as_str()), flags, None)
        }
        // Refused above: a pod volume is always a bind.
        MountSource::PodVolume { .. } => Ok(()),
    }
}

/// Binds a pod volume (or a file or directory in it) on `target`, read-only when asked (a
/// bind mount takes `MS_RDONLY` only on a remount).
fn bind_volume(os: &dyn Os, target: &Path, bind: &VolumeBind, read_only: bool) -> io::Result<()> {
    if bind.file {
        if let Some(parent) = target.parent() {
            os.mkdir_all(parent, 0o755)?;
        }
        os.write_file(target, b"")?;
    } else {
        os.mkdir_all(target, 0o755)?;
    }
    match &bind.sub_path {
        None => os.mount(Some(&bind.dir), target, None, MsFlags::MS_BIND, None)?,
        Some(sub) => os.bind_beneath(
            &bind.dir,
            sub,
            target,
            bind.create.then_some(super::volume::EMPTY_DIR_MODE),
        )?,
    }
    if read_only {
        os.mount(
            None,
            target,
            None,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOSUID,
            None,
        )?;
    }
    Ok(())
}

/// `/proc`, a minimal `/dev` and `/sys` (read-only, with [`MASKED_PATHS`] and
/// [`READ_ONLY_PATHS`] applied, unless `privileged`).
fn mount_proc_dev_sys(os: &dyn Os, root: &Path, privileged: bool) -> io::Result<()> {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc = root.join("proc");
    os.mkdir_all(&proc, 0o555)?;
    os.mount(Some(Path::new("proc")), &proc, Some("proc"), hardened, None)?;

    let dev = root.join("dev");
    os.mkdir_all(&dev, 0o755)?;
    os.mount(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=65536k"),
    )?;
    for node in DEV_NODES {
        let target = dev.join(node);
        os.write_file(&target, b"")?;
        os.mount(
            Some(&Path::new("/dev").join(node)),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    }
    let pts = dev.join("pts");
    os.mkdir_all(&pts, 0o755)?;
    os.mount(
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let shm = dev.join("shm");
    os.mkdir_all(&shm, 0o1777)?;
    os.mount(
        Some(Path::new("shm")),
        &shm,
        Some("tmpfs"),
        hardened,
        Some("mode=1777,size=65536k"),
    )?;
    for (target, link) in [
        ("pts/ptmx", "ptmx"),
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ] {
        os.symlink(Path::new(target), &dev.join(link))?;
    }

    let sys = root.join("sys");
    os.mkdir_all(&sys, 0o555)?;
    let sys_flags = if privileged {
        hardened
    } else {
        hardened | MsFlags::MS_RDONLY
    };
    os.mount(
        Some(Path::new("sysfs")),
        &sys,
        Some("sysfs"),
        sys_flags,
        None,
    )?;
    if privileged {
        return Ok(());
    }
    mask_paths(os, root)
}

/// Applies [`MASKED_PATHS`] and [`READ_ONLY_PATHS`] under `root`, where `/proc` and `/sys`
/// are mounted; paths this kernel lacks are skipped.
fn mask_paths(os: &dyn Os, root: &Path) -> io::Result<()> {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for path in MASKED_PATHS {
        let target = inside(root, Path::new(path));
        match os.path_kind(&target)? {
            None => {}
            Some(PathKind::Directory) => os.mount(
                Some(Path::new("tmpfs")),
                &target,
                Some("tmpfs"),
                hardened | MsFlags::MS_RDONLY,
                None,
            )?,
            // The helper's `/dev/null`: the pivot has not happened yet.
            Some(PathKind::File) => os.mount(
                Some(Path::new("/dev/null")),
                &target,
                None,
                MsFlags::MS_BIND,
                None,
            )?,
        }
    }
    for path in READ_ONLY_PATHS {
        let target = inside(root, Path::new(path));
        if os.path_kind(&target)?.is_none() {
            continue;
        }
        // A bind takes `MS_RDONLY` only on a remount; the proc mount's own flags are kept.
        os.mount(
            Some(&target),
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        os.mount(
            None,
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | hardened,
            None,
        )?;
    }
    Ok(())
}

/// Finds `program` the way `execvp` would, in `PATH` of `env` (or a default `PATH`).
pub fn resolve_program(program: &str, env: &[String]) -> Result<PathBuf, (String, i32)> {
    let found = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return match p.metadata() {
            Ok(_) if found(&p) => Ok(p),
            Ok(_) => Err((format!("{program}: permission denied"), 126)),
            Err(e) => Err((format!("{program}: {e}"), 127)),
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| found(p))
        .ok_or_else(|| (format!("{program}: command not found in PATH {path}"), 127))
}

/// Sets the process's groups and ids, confines it ([`super::hardening`], whose steps come
/// before and after the uid switch), changes to its directory and executes it; returns
/// only on failure, with the message and exit code (126/127) to report.
/// A container's process, set up to its last step: everything it needs before `execve`
/// done (session, capabilities, ids, working directory, seccomp), arguments prepared.
struct ReadyProcess {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    program: PathBuf,
}

impl ReadyProcess {
    /// Executes it; returns only when `execve` fails: the message and exit code.
    fn exec(self) -> (String, i32) {
        let err = nix::unistd::execve(&self.path, &self.argv, &self.envp).unwrap_err();
        let code = if err == nix::errno::Errno::ENOENT {
            127
        } else {
            126
        };
        (
            format!("cannot execute {}: {err}", self.program.display()),
            code,
        )
    }
}

/// In the container's process (a child of container-init): its session and terminal,
/// program, capabilities, ids and working directory, then the seccomp lock; or why not,
/// with the exit code (126: cannot be set up or run, 127: not found).
fn prepare_process(
    p: &ProcessSpec,
    mut hardening: Prepared,
) -> Result<ReadyProcess, (String, i32)> {
    if p.tty {
        // A session of its own with the pty (fd 0) as its controlling terminal.
        if let Err(e) = nix::unistd::setsid() {
            return Err((format!("setsid: {e}"), 126));
        }
        // SAFETY: TIOCSCTTY takes an int argument (0: do not steal) and fd 0 is the
        // pseudo-terminal's slave the agent passed.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            let e = std::io::Error::last_os_error();
            return Err((format!("making the pty the controlling terminal: {e}"), 126));
        }
    }
    let program = resolve_program(&p.args[0], &p.env)?;
    hardening
        .limit_bounding_set()
        .map_err(|e| (e.to_string(), 126))?;
    let groups: Vec<Gid> = p
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups)
        .map_err(|e| (format!("setgroups {:?}: {e}", p.additional_gids), 126))?;
    nix::unistd::setgid(Gid::from_raw(p.gid))
        .map_err(|e| (format!("setgid {}: {e}", p.gid), 126))?;
    nix::unistd::setuid(Uid::from_raw(p.uid))
        .map_err(|e| (format!("setuid {}: {e}", p.uid), 126))?;
    hardening
        .set_capabilities()
        .map_err(|e| (e.to_string(), 126))?;
    nix::unistd::chdir(&p.cwd).map_err(|e| {
        (
            format!(
                "cannot change to the working directory {}: {e}",
                p.cwd.display()
            ),
            126,
        )
    })?;
    let cstr = |s: &str| CString::new(s).unwrap_or_default();
    let Ok(path) = CString::new(program.as_os_str().as_encoded_bytes()) else {
        return Err((format!("{}: NUL in path", program.display()), 127));
    };
    let argv: Vec<CString> = p.args.iter().map(|a| cstr(a)).collect();
    let envp: Vec<CString> = p.env.iter().map(|e| cstr(e)).collect();
    // Last: the filter allows what is left (read the start byte, execve, and what a
    // failed one does: write, exit_group).
    hardening.lock().map_err(|e| (e.to_string(), 126))?;
    Ok(ReadyProcess {
        path,
        argv,
        envp,
        program,
    })
}

/// `peapod-agent container-init`: see the module docs.
pub fn container_init_main() -> i32 {
    let fds = (
        inherited_fd(3),
        inherited_fd(4),
        inherited_fd(5),
        inherited_fd(6),
    );
    let (mut config, mut status, start, cgroup) = match fds {
        (Ok(c), Ok(s), Ok(st), Ok(cg)) => (File::from(c), File::from(s), File::from(st), cg),
        _ => return 120,
    };
    let mut text = String::new();
    let init: ContainerInit = match config
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str(&text).map_err(|e| e.to_string()))
    {
        Ok(init) => init,
        Err(message) => {
            write_event(&mut status, &HelperEvent::SetupFailed { message });
            return 1;
        }
    };
    drop(config);
    if let Err(e) = setup_container(&RealOs, &init) {
        write_event(
            &mut status,
            &HelperEvent::SetupFailed {
                message: e.to_string(),
            },
        );
        return 1;
    }
    if init.process.tty
        && let Err(message) = take_pty(&status)
    {
        write_event(&mut status, &HelperEvent::SetupFailed { message });
        return 1;
    }
    // container-init holds no capability its container's processes lack: they may then
    // reach their PID 1 through /proc (`echo hi > /proc/1/fd/1`, `readlink /proc/1/ns/pid`),
    // which the kernel allows only to a process whose capabilities cover the target's, as
    // they may under docker, where PID 1 is the container's own process.
    // The filter is compiled here, before anything of the process changes, so that a bad
    // filter is a setup failure.
    let mut hardening = match init.hardening.prepare().and_then(|mut hardening| {
        hardening.limit_bounding_set()?;
        hardening.set_capabilities()?;
        Ok(hardening)
    }) {
        Ok(hardening) => hardening,
        Err(e) => {
            write_event(
                &mut status,
                &HelperEvent::SetupFailed {
                    message: format!("confining container-init: {e}"),
                },
            );
            return 1;
        }
    };
    // The container's process is forked now, while the supervisor attaches its stdio: it
    // sets itself up to its last step and waits for the start byte itself, so that its
    // start costs one `execve`.
    let all = SigSet::all();
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None);
    let forked = fork_container_process(&init.process, &hardening, start, &cgroup);
    drop(cgroup);
    let (child, err_r) = match forked {
        Ok(forked) => forked,
        Err(message) => {
            write_event(&mut status, &HelperEvent::SetupFailed { message });
            return 1;
        }
    };
    write_event(&mut status, &HelperEvent::Ready);
    // Then container-init locks itself too (`no_new_privs` and the seccomp filter). What
    // it does from here (read, sigwait, kill, wait4, close, write, setpriority) is on the
    // filter's allow-list.
    let locked = hardening.lock();
    follow_container_process(child, err_r, locked, status)
}

/// What the container's process says on its error pipe when the agent ends its start pipe
/// without the start byte (the container is removed unstarted).
const NEVER_STARTED: &str = "never-started";

/// Forks the container's process into the container's cgroup (`cgroup`, its directory;
/// container-init itself stays outside it) and has it [`prepare_process`], then wait for
/// the start byte on `start`, then `execve`; returns it and the read end of the pipe on
/// which it writes why it could not run (end of file without a word: it runs). Signals are
/// blocked in the caller and unblocked in the child.
fn fork_container_process(
    process: &ProcessSpec,
    hardening: &Prepared,
    mut start: File,
    cgroup: &OwnedFd,
) -> Result<(Pid, OwnedFd), String> {
    let (err_r, err_w) = pipe().map_err(|e| e.to_string())?;
    match fork_into_cgroup(cgroup) {
        Ok(Forked::Child { in_cgroup }) => {
            drop(err_r);
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
            let ready = match in_cgroup {
                true => Ok(()),
                false => join_cgroup(cgroup),
            }
            .and_then(|()| prepare_process(process, hardening.clone()));
            let mut byte = [0u8; 1];
            if !matches!(start.read(&mut byte), Ok(1)) {
                // Never started: the agent removes the container.
                let _ = File::from(err_w).write_all(NEVER_STARTED.as_bytes());
                std::process::exit(0);
            }
            drop(start);
            let (message, code) = match ready {
                Ok(ready) => ready.exec(),
                Err(why) => why,
            };
            let mut w = File::from(err_w);
            let _ = write!(w, "{code} {message}");
            std::process::exit(code);
        }
        Ok(Forked::Parent(child)) => Ok((child, err_r)),
        Err(e) => Err(format!("fork: {e}")),
    }
}

/// Which side of [`fork_into_cgroup`] this is.
enum Forked {
    Parent(Pid),
    /// `in_cgroup`: it started in the cgroup; if not, it is to join it itself.
    Child {
        in_cgroup: bool,
    },
}

/// A fork whose child starts in the cgroup directory `cgroup` (`clone3` with
/// `CLONE_INTO_CGROUP`: nothing to move later, a move costing an RCU grace period), or,
/// where the kernel cannot (before Linux 5.7), a plain fork.
fn fork_into_cgroup(cgroup: &OwnedFd) -> Result<Forked, Errno> {
    use std::os::fd::AsRawFd;
    let mut args = super::process::CloneArgs::forking(0, Some(cgroup.as_raw_fd()))?;
    // SAFETY: container-init is single-threaded (it never starts a thread), so the child
    // may do anything a normal process does; the arguments ask for no stack and no
    // CLONE_VM: the child goes on as after a fork.
    match unsafe { super::process::clone3(&mut args) } {
        Ok(None) => return Ok(Forked::Child { in_cgroup: true }),
        Ok(Some(pid)) => return Ok(Forked::Parent(pid)),
        Err(_) => {}
    }
    // SAFETY: as above.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Child => Ok(Forked::Child { in_cgroup: false }),
        ForkResult::Parent { child } => Ok(Forked::Parent(child)),
    }
}

/// Moves this process into the cgroup directory `cgroup`.
fn join_cgroup(cgroup: &OwnedFd) -> Result<(), (String, i32)> {
    let failed = |e: &dyn std::fmt::Display| (format!("joining the container's cgroup: {e}"), 126);
    let procs = nix::fcntl::openat(
        cgroup,
        "cgroup.procs",
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| failed(&e))?;
    File::from(procs).write_all(b"0").map_err(|e| failed(&e))
}

/// Reports how the start of `child` went (its `execve`, or why it could not run), then
/// forwards every signal to it, reaps orphans, and reports how it ended. `locked`:
/// whether container-init could lock itself; if not, the process is killed and that is
/// its failure.
fn follow_container_process(
    child: Pid,
    err_r: OwnedFd,
    locked: Result<(), super::hardening::HardeningError>,
    mut status: File,
) -> i32 {
    let mut failure = String::new();
    // Waits for the start: the child closes its end when it executes, or writes why not.
    let _ = File::from(err_r).read_to_string(&mut failure);
    if failure == NEVER_STARTED {
        let _ = waitpid(child, None);
        return 0;
    }
    if let Err(e) = locked {
        let _ = kill(child, Signal::SIGKILL);
        let message = e.to_string();
        write_event(&mut status, &HelperEvent::ExecFailed { message, code: 126 });
        return 126;
    }
    match failure.split_once(' ') {
        Some((code, message)) => write_event(
            &mut status,
            &HelperEvent::ExecFailed {
                message: message.into(),
                code: code.parse().unwrap_or(127),
            },
        ),
        None => write_event(&mut status, &HelperEvent::Started),
    }
    let all = SigSet::all();
    loop {
        let Ok(sig) = all.wait() else { continue };
        if sig != Signal::SIGCHLD {
            let _ = kill(child, sig);
            continue;
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(ws) if ws.pid() == Some(child) => {
                    let end = exit_status(ws);
                    close_stdio();
                    write_event(
                        &mut status,
                        &HelperEvent::Exited {
                            code: end.code,
                            signal: end.signal,
                        },
                    );
                    // Nobody waits for the rest of its exit (the container's cgroup is
                    // empty already): it yields the CPU to those who wait for the pod.
                    crate::runtime::fork::lower_priority_for_exit();
                    return end.code;
                }
                Ok(_) => {}
            }
        }
    }
}

/// Closes container-init's copies of the container's stdio once its process has ended, so
/// that the output's readers see its end now, rather than once container-init's own exit
/// has taken the container's namespaces down (milliseconds). Processes the container left
/// behind keep theirs until the end of the PID namespace ends them.
fn close_stdio() {
    for fd in 0..=2 {
        // SAFETY: nothing in container-init owns these inherited descriptors, and it
        // neither reads nor writes its stdio after this point.
        unsafe { libc::close(fd) };
    }
}

/// Joins the namespaces of the container whose init is `pid` (mount last: it changes what
/// `/proc` is).
pub fn join_container(os: &dyn Os, exec: &ExecInit) -> io::Result<()> {
    if exec.join_cgroup {
        os.write_file(&exec.cgroup.join("cgroup.procs"), b"0")?;
    }
    let proc = Path::new("/proc").join(exec.container_pid.to_string());
    let ns = proc.join("ns");
    for (name, kind) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
    ] {
        os.setns(&ns.join(name), kind)?;
    }
    // The container's root is its init's (after its pivot_root), wherever the namespace's
    // first mount is.
    os.join_mount_namespace(&ns.join("mnt"), &proc.join("root"))?;
    os.chdir(Path::new("/"))
}

/// `peapod-agent exec-init`: see the module docs.
pub fn exec_init_main() -> i32 {
    let (mut config, mut status) = match (inherited_fd(3), inherited_fd(4)) {
        (Ok(c), Ok(s)) => (File::from(c), File::from(s)),
        _ => return 120,
    };
    let mut text = String::new();
    let exec: ExecInit = match config
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str(&text).map_err(|e| e.to_string()))
    {
        Ok(exec) => exec,
        Err(message) => {
            write_event(&mut status, &HelperEvent::SetupFailed { message });
            return 126;
        }
    };
    drop(config);
    if let Err(e) = join_container(&RealOs, &exec) {
        write_event(
            &mut status,
            &HelperEvent::SetupFailed {
                message: e.to_string(),
            },
        );
        return 126;
    }
    if exec.process.tty
        && let Err(message) = take_pty(&status)
    {
        write_event(&mut status, &HelperEvent::SetupFailed { message });
        return 126;
    }
    // Compiled before anything changes, so that a bad filter changes nothing.
    let (message, code) = match exec.hardening.prepare() {
        Ok(hardening) => match prepare_process(&exec.process, hardening) {
            Ok(ready) => ready.exec(),
            Err(why) => why,
        },
        Err(e) => (e.to_string(), 126),
    };
    write_event(&mut status, &HelperEvent::ExecFailed { message, code });
    code
}

/// Allocates the process's pty in the container's own devpts (so that `tty` and
/// `ttyname` name it there), makes its slave this helper's stdin/stdout/stderr (the
/// process inherits them) and sends the master to the agent on the status channel.
fn take_pty(status: &File) -> Result<(), String> {
    let (master, slave) = open_pty().map_err(|e| format!("allocating a pty: {e}"))?;
    nix::unistd::dup2_stdin(&slave)
        .and_then(|_| nix::unistd::dup2_stdout(&slave))
        .and_then(|_| nix::unistd::dup2_stderr(&slave))
        .map_err(|e| format!("making the pty the process's stdio: {e}"))?;
    send_fd(status, &master).map_err(|e| format!("passing the pty to the agent: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::os::{Call, RecordingOs};
    use crate::protocol::message::tests::{sample_container, sample_volumes};
    use crate::protocol::{CpuMax, FsType};

    fn guest() -> PodLayout {
        PodLayout::guest()
    }

    fn init() -> ContainerInit {
        let layout = guest();
        ContainerInit {
            id: "web".into(),
            hostname: "pod".into(),
            rootfs: InitRootfs {
                lower: RootfsLower::Device {
                    device: "/dev/vdb".into(),
                    fs_type: FsType::Erofs,
                },
                read_only: false,
            },
            mounts: vec![InitMount {
                spec: MountSpec {
                    destination: "/data".into(),
                    source: MountSource::Tmpfs {
                        size_bytes: Some(4096),
                    },
                    read_only: false,
                },
                bind: None,
            }],
            process: ProcessSpec {
                args: vec!["/bin/sh".into()],
                env: vec![],
                cwd: "/".into(),
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                tty: false,
                stdin: false,
            },
            cgroup: layout.cgroup_dir("web"),
            netns: Some(layout.pod_netns.path().into()),
            etc: Some(layout.pod_etc.clone()),
            dir: layout.container_dir("web"),
            hardening: Hardening::default(),
        }
    }

    fn mount_targets(calls: &[Call]) -> Vec<String> {
        calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount { target, .. } => Some(target.display().to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn setup_unshares_namespaces_then_mounts_then_pivots() {
        let os = RecordingOs::new();
        setup_container(&os, &init()).unwrap();
        let calls = os.calls();
        assert_eq!(
            calls[0],
            Call::Unshare(
                CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC
            )
        );
        assert_eq!(
            calls[1],
            Call::Setns("/run/peapod/netns".into(), CloneFlags::CLONE_NEWNET)
        );
        assert!(matches!(&calls[2], Call::Mount { target, flags, .. }
            if target == Path::new("/") && flags.contains(MsFlags::MS_PRIVATE | MsFlags::MS_REC)));
        let c = "/run/peapod/containers/web";
        let targets = mount_targets(&calls);
        assert_eq!(
            &targets[1..4],
            [format!("{c}/lower"), format!("{c}/rw"), format!("{c}/root")]
        );
        assert!(targets.contains(&format!("{c}/root/data")));
        assert!(targets.contains(&format!("{c}/root/proc")));
        assert!(targets.contains(&format!("{c}/root/dev/null")));
        assert!(targets.contains(&format!("{c}/root/etc/resolv.conf")));
        // The image is read-only, /sys too, and the overlay has its dirs.
        assert!(calls.iter().any(
            |call| matches!(call, Call::Mount { source: Some(s), flags, fstype: Some(t), .. }
            if s == Path::new("/dev/vdb") && t == "erofs" && flags.contains(MsFlags::MS_RDONLY))
        ));
        assert!(calls.iter().any(
            |call| matches!(call, Call::Mount { fstype: Some(t), flags, .. }
            if t == "sysfs" && flags.contains(MsFlags::MS_RDONLY))
        ));
        assert!(
            calls
                .iter()
                .any(|call| matches!(call, Call::Mount { data: Some(d), .. }
            if d == &format!("lowerdir={c}/lower,upperdir={c}/rw/upper,workdir={c}/rw/work")))
        );
        let n = calls.len();
        assert_eq!(calls[n - 2], Call::PivotRoot(format!("{c}/root").into()));
        assert_eq!(calls[n - 1], Call::Sethostname("pod".into()));
    }

    /// A host pod's layout and its `web` container: the image a directory, the sample's
    /// mounts without its block device (a host pod has none).
    fn host_init() -> (PodLayout, ContainerInit) {
        let id = crate::pod::PodId::parse(&"7".repeat(64)).unwrap();
        let layout = PodLayout::host(&id, Path::new("/run/peapod"));
        let mut spec = sample_container("web");
        spec.rootfs.device = "/var/lib/peapod/images/abc/rootfs".into();
        spec.mounts
            .retain(|m| !matches!(m.source, MountSource::Block { .. }));
        let mounts =
            crate::agent::volume::resolve_mounts(&layout, &sample_volumes(), &spec.mounts).unwrap();
        let init = ContainerInit::new(&layout, &spec, "pod", mounts).unwrap();
        (layout, init)
    }

    #[test]
    fn a_host_container_names_only_its_own_uts_namespace_and_joins_the_given_netns() {
        let (layout, init) = host_init();
        let os = RecordingOs::new();
        setup_container(&os, &init).unwrap();
        let calls = os.calls();
        let netns = format!("/run/netns/peapod-{}", "7".repeat(64));
        assert_eq!(
            layout.cgroup_dir("web"),
            Path::new(&format!(
                "/sys/fs/cgroup/peapod.slice/pod-{}/web",
                "7".repeat(64)
            ))
        );
        assert_eq!(
            calls[0],
            Call::Unshare(
                CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC
            )
        );
        assert_eq!(
            calls[1],
            Call::Setns(netns.into(), CloneFlags::CLONE_NEWNET)
        );
        // The hostname is set once, last: inside the new UTS namespace, after the pivot.
        let named: Vec<_> = calls
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c, Call::Sethostname(_)))
            .collect();
        assert_eq!(named, [(calls.len() - 1, &Call::Sethostname("pod".into()))]);
        assert!(!calls.iter().any(|c| matches!(c, Call::SeedEntropy(_))));
        // The image directory is bound on lower and made read-only before the overlay.
        let c = layout.container_dir("web");
        let lower = c.join("lower");
        let bound = calls
            .iter()
            .position(|call| {
                call == &Call::Mount {
                    source: Some("/var/lib/peapod/images/abc/rootfs".into()),
                    target: lower.clone(),
                    fstype: None,
                    flags: MsFlags::MS_BIND,
                    data: None,
                }
            })
            .unwrap();
        assert_eq!(
            calls[bound + 1],
            remount_ro(&lower, MsFlags::MS_NODEV),
            "{calls:#?}"
        );
        let overlay = calls
            .iter()
            .position(|call| matches!(call, Call::Mount { fstype: Some(t), .. } if t == "overlay"))
            .unwrap();
        assert!(bound < overlay);
        // Every mount lands in the pod's own container directory; volumes and /etc files
        // come from the pod's own directories.
        for target in mount_targets(&calls).iter().filter(|t| *t != "/") {
            assert!(Path::new(target).starts_with(&c), "{target}");
        }
        assert!(
            calls
                .iter()
                .any(|call| matches!(call, Call::BindBeneath { base, .. }
            if base == &layout.volume_dir("cache")))
        );
        assert!(
            calls
                .iter()
                .any(|call| matches!(call, Call::Mount { source: Some(s), .. }
            if s == &layout.pod_etc.join("hosts")))
        );
        assert!(
            !calls
                .iter()
                .any(|call| matches!(call, Call::Mount { source: Some(s), .. }
                if s.starts_with("/run/peapod/containers") || s.starts_with("/run/peapod/etc")
                    || s.starts_with("/run/peapod/volumes")))
        );
    }

    #[test]
    fn the_helpers_config_carries_the_specs_privileged_and_the_layouts_seccomp() {
        let id = crate::pod::PodId::parse(&"7".repeat(64)).unwrap();
        let host = PodLayout::host(&id, Path::new("/run/peapod"));
        let mut spec = sample_container("web");
        spec.mounts.clear();
        for (layout, privileged, want) in [
            (guest(), false, (false, false)),
            (guest(), true, (true, false)),
            (host.clone(), false, (false, true)),
            (host.clone(), true, (true, true)),
        ] {
            spec.privileged = privileged;
            if layout == host {
                spec.rootfs.device = "/var/lib/peapod/images/abc/rootfs".into();
            }
            let init = ContainerInit::new(&layout, &spec, "pod", vec![]).unwrap();
            assert_eq!(
                (init.hardening.privileged, init.hardening.seccomp),
                want,
                "{layout:?}"
            );
            // container-init reads it back as the agent wrote it.
            let json = serde_json::to_string(&init).unwrap();
            assert_eq!(serde_json::from_str::<ContainerInit>(&json).unwrap(), init);
        }
    }

    /// A recording OS on which `root`'s `/proc` and `/sys` have what a kernel has: the
    /// masked paths (directories and files as on Linux) except `/proc/timer_stats`, which
    /// kernels since 4.11 lack, and the read-only ones.
    fn os_with_proc_and_sys(root: &Path) -> RecordingOs {
        let mut os = RecordingOs::new();
        for dir in [
            "proc/acpi",
            "proc/asound",
            "proc/scsi",
            "sys/firmware",
            "sys/devices/virtual/powercap",
            "proc/bus",
            "proc/fs",
            "proc/irq",
            "proc/sys",
        ] {
            os = os.with_dir(root.join(dir));
        }
        for file in [
            "proc/kcore",
            "proc/keys",
            "proc/latency_stats",
            "proc/timer_list",
            "proc/sched_debug",
            "proc/sysrq-trigger",
        ] {
            os = os.with_file(root.join(file), "");
        }
        os
    }

    #[test]
    fn proc_and_sys_paths_are_masked_or_read_only_unless_privileged() {
        let root = guest().container_dir("web").join("root");
        let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let os = os_with_proc_and_sys(&root);
        setup_container(&os, &init()).unwrap();
        let calls = os.calls();
        let at = |call: &Call| {
            calls
                .iter()
                .position(|c| c == call)
                .unwrap_or_else(|| panic!("no {call:?} in {calls:#?}"))
        };
        let sysfs = at(&Call::Mount {
            source: Some("sysfs".into()),
            target: root.join("sys"),
            fstype: Some("sysfs".into()),
            flags: hardened | MsFlags::MS_RDONLY,
            data: None,
        });
        let pivot = at(&Call::PivotRoot(root.clone()));
        let tmpfs_over = |dir: &str| Call::Mount {
            source: Some("tmpfs".into()),
            target: root.join(dir),
            fstype: Some("tmpfs".into()),
            flags: hardened | MsFlags::MS_RDONLY,
            data: None,
        };
        let null_over = |file: &str| Call::Mount {
            source: Some("/dev/null".into()),
            target: root.join(file),
            fstype: None,
            flags: MsFlags::MS_BIND,
            data: None,
        };
        for dir in [
            "proc/acpi",
            "proc/asound",
            "proc/scsi",
            "sys/firmware",
            "sys/devices/virtual/powercap",
        ] {
            let i = at(&tmpfs_over(dir));
            assert!(sysfs < i && i < pivot, "{dir}");
        }
        for file in [
            "proc/kcore",
            "proc/keys",
            "proc/latency_stats",
            "proc/timer_list",
            "proc/sched_debug",
        ] {
            let i = at(&null_over(file));
            assert!(sysfs < i && i < pivot, "{file}");
        }
        // What this kernel lacks is looked for and skipped.
        let missing = root.join("proc/timer_stats");
        at(&Call::PathKind(missing.clone()));
        assert!(!mount_targets(&calls).contains(&missing.display().to_string()));
        for path in READ_ONLY_PATHS {
            let target = inside(&root, Path::new(path));
            let bound = at(&Call::Mount {
                source: Some(target.clone()),
                target: target.clone(),
                fstype: None,
                flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                data: None,
            });
            assert_eq!(
                calls[bound + 1],
                remount_ro(&target, hardened),
                "{path} is made read-only right after its bind"
            );
            assert!(sysfs < bound && bound < pivot, "{path}");
        }

        // Privileged: a writable /sys, nothing looked up, masked or remounted.
        let os = os_with_proc_and_sys(&root);
        let mut privileged = init();
        privileged.hardening.privileged = true;
        setup_container(&os, &privileged).unwrap();
        let calls = os.calls();
        assert!(calls.contains(&Call::Mount {
            source: Some("sysfs".into()),
            target: root.join("sys"),
            fstype: Some("sysfs".into()),
            flags: hardened,
            data: None,
        }));
        assert!(!calls.iter().any(|c| matches!(c, Call::PathKind(_))));
        for path in MASKED_PATHS.iter().chain(&READ_ONLY_PATHS) {
            let target = inside(&root, Path::new(path)).display().to_string();
            assert!(!mount_targets(&calls).contains(&target), "{path}");
        }
    }

    /// On a real kernel (root only): a fresh `/proc` and `/sys` under a directory, in a
    /// mount namespace of a thread's own, masked as a container's are.
    #[test]
    fn masks_hide_and_freeze_a_real_proc_and_sys() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (mounts /proc and /sys)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let checked = std::thread::spawn(move || -> Result<(), String> {
            let os = RealOs;
            let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            // unshare(CLONE_NEWNS) is per thread: the namespace ends with this thread.
            os.unshare(CloneFlags::CLONE_NEWNS)
                .and_then(|_| {
                    os.mount(
                        None,
                        Path::new("/"),
                        None,
                        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                        None,
                    )
                })
                .map_err(|e| format!("skipped: no private mount namespace: {e}"))?;
            for (fs, flags) in [("proc", hardened), ("sys", hardened | MsFlags::MS_RDONLY)] {
                let fstype = if fs == "sys" { "sysfs" } else { "proc" };
                os.mkdir_all(&root.join(fs), 0o555)
                    .and_then(|_| {
                        os.mount(
                            Some(Path::new(fstype)),
                            &root.join(fs),
                            Some(fstype),
                            flags,
                            None,
                        )
                    })
                    .map_err(|e| e.to_string())?;
            }
            mask_paths(&os, &root).map_err(|e| e.to_string())?;
            // A masked file reads as /dev/null, a masked directory is empty.
            let mut masked = 0;
            for path in MASKED_PATHS {
                let p = inside(&root, Path::new(path));
                let empty = match std::fs::symlink_metadata(&p) {
                    Err(_) => continue,
                    Ok(m) if m.is_dir() => std::fs::read_dir(&p).map(|d| d.count() == 0),
                    Ok(_) => std::fs::read(&p).map(|b| b.is_empty()),
                };
                assert!(empty.map_err(|e| format!("{path}: {e}"))?, "{path}");
                masked += 1;
            }
            assert!(masked > 0, "this kernel has none of the masked paths");
            // Sysctls and SysRq are read-only, still readable.
            let hostname = root.join("proc/sys/kernel/hostname");
            assert!(std::fs::read_to_string(&hostname).is_ok());
            let e = std::fs::write(&hostname, "x").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
            let sysrq = root.join("proc/sysrq-trigger");
            if sysrq.exists() {
                let e = std::fs::write(&sysrq, "h").unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
            }
            Ok(())
        })
        .join()
        .expect("the checks run");
        match checked {
            Err(e) if e.starts_with("skipped") => eprintln!("{e}"),
            other => other.unwrap(),
        }
    }

    /// Root only: `prepare_process` itself, in a re-run of this test binary, readies a real
    /// dynamically linked program under the container's hardening, as root and as nobody,
    /// and it executes.
    #[test]
    fn a_real_program_runs_confined_after_prepare_process() {
        const NAME: &str =
            "agent::container::tests::a_real_program_runs_confined_after_prepare_process";
        const CHILD: &str = "PEAPOD_EXEC_PROCESS_TEST_CHILD";
        if let Ok(role) = std::env::var(CHILD) {
            let uid = if role == "root" || role == "privileged" {
                0
            } else {
                65534
            };
            let process = ProcessSpec {
                args: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "grep -E '^(CapBnd|CapEff|NoNewPrivs|Seccomp|Seccomp_filters):' \
                     /proc/self/status"
                        .into(),
                ],
                env: vec!["PATH=/usr/bin:/bin".into()],
                uid,
                gid: uid,
                ..init().process
            };
            let mut hardening = Hardening {
                privileged: role == "privileged",
                seccomp: true,
            }
            .prepare()
            .unwrap();
            if role == "locked-first" {
                // A copy of a Prepared that locked already does not install the filters a
                // second time.
                hardening.lock().unwrap();
            }
            let (message, code) = match prepare_process(&process, hardening) {
                Ok(ready) => ready.exec(),
                Err(why) => why,
            };
            eprintln!("prepare_process or exec failed: {message}");
            std::process::exit(code);
        }
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (switches uids and drops capabilities)");
            return;
        }
        let run = |role: &str| {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
                .env(CHILD, role)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{role}: {:?}\n{text}", out.status);
            let field = |key: &str| {
                text.lines()
                    .find_map(|l| l.split_once(key)?.1.strip_prefix(':'))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_else(|| panic!("{role}: no {key} in {text}"))
            };
            (
                field("CapBnd"),
                field("CapEff"),
                field("NoNewPrivs"),
                field("Seccomp"),
                field("Seccomp_filters"),
            )
        };
        let mask = format!("{:016x}", crate::agent::hardening::default_mask());
        let (bnd, eff, nnp, seccomp, filters) = run("root");
        assert_eq!(
            (
                bnd.as_str(),
                nnp.as_str(),
                seccomp.as_str(),
                filters.as_str()
            ),
            (mask.as_str(), "1", "2", "2")
        );
        assert_eq!(
            u64::from_str_radix(&eff, 16).unwrap() & !crate::agent::hardening::default_mask(),
            0
        );
        for role in ["nobody", "locked-first"] {
            let (bnd, eff, nnp, seccomp, filters) = run(role);
            assert_eq!(
                (bnd.as_str(), eff.as_str()),
                (mask.as_str(), "0000000000000000"),
                "{role}"
            );
            // Locked before the uid switch or after it: the same two filters, once.
            assert_eq!(
                (nnp.as_str(), seccomp.as_str(), filters.as_str()),
                ("1", "2", "2"),
                "{role}"
            );
        }
        let ours = std::fs::read_to_string("/proc/self/status").unwrap();
        let (bnd, _, nnp, seccomp, _) = run("privileged");
        assert!(ours.contains(&format!("CapBnd:\t{bnd}")), "{bnd}");
        assert_eq!((nnp.as_str(), seccomp.as_str()), ("0", "0"));
    }

    #[test]
    fn a_failing_mask_stops_setup_before_the_pivot() {
        let root = guest().container_dir("web").join("root");
        let kcore = root.join("proc/kcore");
        let os = os_with_proc_and_sys(&root)
            .failing(move |c| matches!(c, Call::Mount { target, .. } if *target == kcore));
        assert!(setup_container(&os, &init()).is_err());
        assert!(!os.calls().iter().any(|c| matches!(c, Call::PivotRoot(_))));
    }

    #[test]
    fn a_host_container_with_a_block_mount_or_a_relative_image_is_refused() {
        let id = crate::pod::PodId::parse(&"7".repeat(64)).unwrap();
        let layout = PodLayout::host(&id, Path::new("/run/peapod"));
        let spec = sample_container("web");
        let mounts =
            crate::agent::volume::resolve_mounts(&layout, &sample_volumes(), &spec.mounts).unwrap();
        let e = ContainerInit::new(&layout, &spec, "pod", mounts).unwrap_err();
        assert!(matches!(e, LayoutError::HostBlockMount { .. }), "{e}");
        let mut spec = sample_container("web");
        spec.mounts.clear();
        spec.rootfs.device = "rootfs".into();
        assert!(matches!(
            ContainerInit::new(&layout, &spec, "pod", vec![]),
            Err(LayoutError::RelativeImageDir(_))
        ));
        // The guest's layout takes the same spec's device as it always did.
        spec.rootfs.device = "/dev/vdb".into();
        let guest = ContainerInit::new(&guest(), &spec, "pod", vec![]).unwrap();
        assert_eq!(
            guest,
            ContainerInit {
                process: spec.process.clone(),
                mounts: vec![],
                ..init()
            }
        );
    }

    fn remount_ro(target: &Path, extra: MsFlags) -> Call {
        Call::Mount {
            source: None,
            target: target.into(),
            fstype: None,
            flags: MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | extra,
            data: None,
        }
    }

    /// `init()` with the sample container's mounts, resolved against the sample volumes.
    fn init_with_volumes() -> ContainerInit {
        let mut mounts = sample_container("web").mounts;
        mounts.push(MountSpec {
            destination: "/shared".into(),
            source: MountSource::PodVolume {
                name: "cache".into(),
                sub_path: None,
            },
            read_only: true,
        });
        ContainerInit {
            mounts: crate::agent::volume::resolve_mounts(&guest(), &sample_volumes(), &mounts)
                .unwrap(),
            ..init()
        }
    }

    #[test]
    fn pod_volumes_are_bound_beneath_their_dir_and_read_only_by_remount() {
        let os = RecordingOs::new();
        setup_container(&os, &init_with_volumes()).unwrap();
        let calls = os.calls();
        let root = guest().container_dir("web").join("root");
        let vols = guest().volumes_dir;
        let at = |call: &Call| {
            calls
                .iter()
                .position(|c| c == call)
                .unwrap_or_else(|| panic!("no {call:?} in {calls:#?}"))
        };
        // An emptyDir's sub_path: made if missing, never through a symlink; writable.
        let cache = root.join("cache");
        let bind_cache = at(&Call::BindBeneath {
            base: vols.join("cache"),
            sub: "web/tmp".into(),
            target: cache.clone(),
            create: Some(0o777),
        });
        assert!(at(&Call::MkdirAll(cache.clone(), 0o755)) < bind_cache);
        assert!(!calls.contains(&remount_ro(&cache, MsFlags::MS_NODEV | MsFlags::MS_NOSUID)));
        // A secret's file: a file mount point, bound, then read-only.
        let key = root.join("etc/tls/key.pem");
        let made = at(&Call::WriteFile(key.clone(), String::new()));
        let bound = at(&Call::BindBeneath {
            base: vols.join("tls"),
            sub: "key.pem".into(),
            target: key.clone(),
            create: None,
        });
        let ro = at(&remount_ro(&key, MsFlags::MS_NODEV | MsFlags::MS_NOSUID));
        assert!(made < bound && bound < ro);
        // A whole volume: a plain bind of its directory, then read-only as asked.
        let shared = root.join("shared");
        let bound = at(&Call::Mount {
            source: Some(vols.join("cache")),
            target: shared.clone(),
            fstype: None,
            flags: MsFlags::MS_BIND,
            data: None,
        });
        assert!(bound < at(&remount_ro(&shared, MsFlags::MS_NODEV | MsFlags::MS_NOSUID)));
        // The root stays writable unless asked.
        assert!(!calls.contains(&remount_ro(&root, MsFlags::MS_NODEV)));
    }

    #[test]
    fn an_unresolved_pod_volume_is_an_error_not_a_guess() {
        let mut i = init_with_volumes();
        i.mounts[2].bind = None;
        let err = setup_container(&RecordingOs::new(), &i).unwrap_err();
        assert!(err.to_string().contains("pod volume cache"), "{err}");
    }

    #[test]
    fn a_read_only_root_is_made_read_only_after_every_mount_point_and_before_the_pivot() {
        let os = RecordingOs::new();
        let mut i = init_with_volumes();
        i.rootfs.read_only = true;
        setup_container(&os, &i).unwrap();
        let calls = os.calls();
        let root = guest().container_dir("web").join("root");
        let n = calls.len();
        assert_eq!(calls[n - 3], remount_ro(&root, MsFlags::MS_NODEV));
        assert_eq!(calls[n - 2], Call::PivotRoot(root.clone()));
        // Still an overlay (its upper holds the mount points), and no /tmp appears.
        assert!(
            calls
                .iter()
                .any(|c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "overlay"))
        );
        assert!(!mount_targets(&calls).contains(&root.join("tmp").display().to_string()));
    }

    #[test]
    fn a_restart_removes_the_first_containers_leftovers_and_makes_them_again() {
        // What the agent does for RemoveContainer then CreateContainer with the same id:
        // the helper's mounts live in its own namespace and die with it, so the agent
        // removes directories and the cgroup, then makes them again.
        let os = RecordingOs::new();
        let create = |os: &RecordingOs| {
            create_cgroup(os, &guest(), "web", &Resources::default()).unwrap();
            create_dirs(os, &guest(), "web").unwrap();
            setup_container(os, &init_with_volumes()).unwrap();
        };
        create(&os);
        let first = os.calls().len();
        remove_dirs(&os, &guest(), "web").unwrap();
        create(&os);
        let calls = os.calls();
        let c = guest().container_dir("web");
        let cgroup = guest().cgroup_dir("web");
        let removed = &calls[first..first + 5];
        assert_eq!(
            removed,
            [
                Call::RemoveDir(c.join("lower")),
                Call::RemoveDir(c.join("rw")),
                Call::RemoveDir(c.join("root")),
                Call::RemoveDir(c.join("")),
                Call::RemoveDir(cgroup.clone()),
            ]
        );
        // The second create makes the cgroup and the directories again, then mounts the
        // same things in the same order as the first.
        let second = &calls[first + 5..];
        assert_eq!(second[0], Call::MkdirAll(cgroup.clone(), 0o755));
        assert_eq!(second[1], Call::MkdirAll(c.join("lower"), 0o700));
        assert_eq!(second, &calls[..first]);
        assert_eq!(mount_targets(second), mount_targets(&calls[..first]));
        // The pod's volumes are never unmounted or removed: an emptyDir's files survive.
        assert!(!calls.iter().any(|call| matches!(call,
            Call::UmountDetach(p) | Call::RemoveDir(p) if p.starts_with(guest().volumes_dir))));
        assert_eq!(
            calls
                .iter()
                .filter(|call| matches!(call, Call::BindBeneath { base, .. }
                    if base == &guest().volume_dir("cache")))
                .count(),
            2,
            "each create binds the same emptyDir"
        );
    }

    #[test]
    fn a_failing_mount_stops_setup_before_the_pivot() {
        let os = RecordingOs::new()
            .failing(|c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "overlay"));
        let err = setup_container(&os, &init()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        assert!(!os.calls().iter().any(|c| matches!(c, Call::PivotRoot(_))));
    }

    #[test]
    fn no_pod_netns_or_etc_means_no_setns_or_binds() {
        let os = RecordingOs::new();
        let mut i = init();
        i.netns = None;
        i.etc = None;
        setup_container(&os, &i).unwrap();
        let calls = os.calls();
        assert!(!calls.iter().any(|c| matches!(c, Call::Setns(..))));
        assert!(!mount_targets(&calls).iter().any(|t| t.contains("/etc/")));
    }

    #[test]
    fn cgroup_limits_are_written_in_cgroup_v2_syntax() {
        let os = RecordingOs::new();
        let dir = create_cgroup(
            &os,
            &guest(),
            "web",
            &Resources {
                memory_max: Some(32 << 20),
                cpu: Some(CpuMax {
                    quota_us: 50_000,
                    period_us: 100_000,
                }),
                pids_max: Some(64),
            },
        )
        .unwrap();
        assert_eq!(dir, Path::new("/sys/fs/cgroup/peapod/web"));
        let writes: Vec<_> = os
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::WriteFile(p, s) => {
                    Some((p.file_name().unwrap().to_str().unwrap().to_string(), s))
                }
                _ => None,
            })
            .collect();
        assert!(writes.contains(&("memory.max".into(), "33554432".into())));
        assert!(writes.contains(&("cpu.max".into(), "50000 100000".into())));
        assert!(writes.contains(&("pids.max".into(), "64".into())));
        let os = RecordingOs::new();
        create_cgroup(&os, &guest(), "idle", &Resources::default()).unwrap();
        assert_eq!(os.calls().len(), 1, "no limits, no writes");
    }

    #[test]
    fn stats_and_oom_kills_come_from_the_cgroup_files() {
        let cg = guest().cgroup_dir("web");
        let os = RecordingOs::new()
            .with_file(cg.join("memory.current"), "4096\n")
            .with_file(cg.join("memory.peak"), "8192\n")
            .with_file(
                cg.join("cpu.stat"),
                "usage_usec 30\nuser_usec 20\nsystem_usec 10\nnr_periods 0\n",
            )
            .with_file(cg.join("pids.current"), "2\n")
            .with_file(
                cg.join("memory.events"),
                "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n",
            );
        let stats = read_stats(&os, &cg).unwrap();
        assert_eq!(
            stats,
            ContainerStats {
                memory_current: 4096,
                memory_peak: Some(8192),
                cpu_usage_usec: 30,
                cpu_user_usec: 20,
                cpu_system_usec: 10,
                pids_current: 2,
                oom_kills: 1,
            }
        );
        assert_eq!(oom_kills(&RecordingOs::new(), &cg), 0);
    }

    /// container-init never moves itself into the container's cgroup (its process is
    /// cloned into it); an exec-init the agent started there (`CLONE_INTO_CGROUP`) does not
    /// move itself there again: a write to `cgroup.procs` costs an RCU grace period even
    /// when it moves nothing.
    #[test]
    fn helpers_do_not_join_the_cgroup_they_were_started_in_or_stay_out_of() {
        let writes_procs = |calls: &[Call]| {
            calls
                .iter()
                .any(|c| matches!(c, Call::WriteFile(p, _) if p.ends_with("cgroup.procs")))
        };
        let os = RecordingOs::new();
        setup_container(&os, &init()).unwrap();
        let calls = os.calls();
        assert!(!writes_procs(&calls), "{calls:#?}");

        let os = RecordingOs::new();
        let exec = |join_cgroup| ExecInit {
            container_pid: 77,
            cgroup: guest().cgroup_dir("web"),
            join_cgroup,
            process: init().process,
            hardening: Hardening::default(),
        };
        join_container(&os, &exec(false)).unwrap();
        let calls = os.calls();
        assert!(!writes_procs(&calls), "{calls:#?}");
        assert_eq!(
            calls.last(),
            Some(&Call::Chdir("/".into())),
            "it still joins the container"
        );
        let os = RecordingOs::new();
        join_container(&os, &exec(true)).unwrap();
        assert!(writes_procs(&os.calls()));
    }

    #[test]
    fn a_process_not_cloned_into_its_cgroup_joins_it_through_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let open = || OwnedFd::from(File::open(dir.path()).unwrap());
        let e = join_cgroup(&open()).unwrap_err();
        assert!(e.0.contains("joining the container's cgroup"), "{e:?}");
        assert_eq!(e.1, 126);
        std::fs::write(dir.path().join("cgroup.procs"), "").unwrap();
        join_cgroup(&open()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cgroup.procs")).unwrap(),
            "0"
        );
    }

    #[test]
    fn exec_joins_every_namespace_with_mount_last() {
        let os = RecordingOs::new();
        join_container(
            &os,
            &ExecInit {
                container_pid: 77,
                cgroup: guest().cgroup_dir("web"),
                join_cgroup: true,
                process: init().process,
                hardening: Hardening::default(),
            },
        )
        .unwrap();
        let calls = os.calls();
        assert!(matches!(&calls[0], Call::WriteFile(p, _) if p.ends_with("web/cgroup.procs")));
        assert_eq!(
            calls[4],
            Call::JoinMountNamespace {
                ns: "/proc/77/ns/mnt".into(),
                root: "/proc/77/root".into(),
            }
        );
        assert_eq!(calls[5], Call::Chdir("/".into()));
    }

    #[test]
    fn helper_events_are_json_lines() {
        let mut buf = Vec::new();
        write_event(&mut buf, &HelperEvent::Ready);
        write_event(
            &mut buf,
            &HelperEvent::Exited {
                code: 137,
                signal: Some(9),
            },
        );
        let mut r = &buf[..];
        assert_eq!(read_event(&mut r).unwrap(), Some(HelperEvent::Ready));
        assert!(matches!(
            read_event(&mut r).unwrap(),
            Some(HelperEvent::Exited { code: 137, .. })
        ));
        assert_eq!(read_event(&mut r).unwrap(), None);
        assert!(read_event(&mut &b"garbage\n"[..]).is_err());
    }

    #[test]
    fn programs_are_found_like_execvp() {
        assert_eq!(
            resolve_program("sh", &["PATH=/nonexistent:/bin".into()]).unwrap(),
            Path::new("/bin/sh")
        );
        assert_eq!(
            resolve_program("no-such-program-x", &[]).unwrap_err().1,
            127
        );
        assert_eq!(resolve_program("/etc/passwd", &[]).unwrap_err().1, 126);
        assert_eq!(resolve_program("/no/such", &[]).unwrap_err().1, 127);
    }
}
