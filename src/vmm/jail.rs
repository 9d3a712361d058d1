//! The VMM's jail: what a VMM process gives up once its VM is built and before the guest
//! runs, so that a guest that took over the VMM holds as little as possible (Firecracker's
//! jailer does the same from outside, before `exec`; here the VMM does it to itself, after
//! it opened everything it needs, so that no file has to be copied or linked into a jail
//! directory and the dynamically linked binary keeps its libraries).
//!
//! [`enter`] runs on the main thread before any other thread exists (namespaces and
//! credentials are per thread until then) and, in order:
//! 1. new mount, IPC, UTS and network namespaces (the tap, `/dev/kvm`, disks, the vsock
//!    socket and the logs are open already; the VM needs no network of its own);
//! 2. a root of its own: an empty read-only tmpfs (mounted over the temporary directory in
//!    the private mount namespace, so nothing appears on the host), holding only bind mounts
//!    of the directories named in [`JailPaths::keep`] (the vsock socket's directory, where
//!    guest-initiated connections reach host listeners `<uds>_<port>`), then `pivot_root`
//!    into it and the old root detached: no host file is reachable by path;
//! 3. resource limits: open files, address space (guest RAM plus [`ADDRESS_SPACE_SLACK`]),
//!    no core dumps (one would hold guest RAM);
//! 4. an empty capability bounding set, no supplementary groups, then a non-root uid and
//!    gid ([`JAIL_ID_BASE`] plus the process id unless the config names them), which clears
//!    every capability; `no_new_privs`;
//! 5. the parent-death signal again (changing credentials clears it).
//!
//! A new PID namespace cannot be entered by a process itself (only its children land in
//! one), and KVM ties a VM to the process that made it, so the VMM cannot fork into one
//! after the fact: whoever spawns the VMM puts it in a new PID namespace
//! ([`crate::runtime::vm`] does, so a pod's VMM is PID 1 of its own namespace). The seccomp
//! filters ([`crate::vmm::seccomp`]) come after the jail, per thread.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::resource::{Resource, setrlimit};
use nix::unistd::{Gid, Uid};
use serde::{Deserialize, Serialize};

/// The first uid and gid of jailed VMMs; a VMM whose config names none takes this plus its
/// process id modulo 65536, so that VMMs on one host rarely share an identity.
pub const JAIL_ID_BASE: u32 = 2_000_000_000;

/// Address space a jailed VMM may map beyond guest RAM: its binary and libraries, thread
/// stacks, malloc arenas (64 MiB each reserved per thread), device buffers.
pub const ADDRESS_SPACE_SLACK: u64 = 1 << 30;

/// Open files a jailed VMM may hold: KVM, vCPU, eventfd and device descriptors plus vsock
/// connections.
pub const MAX_OPEN_FILES: u64 = 4096;

/// How the VMM confines itself (`"jail"` in its config; `null` or `--no-jail`: not at all,
/// for debugging only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// The uid to run as (not 0); default: [`JAIL_ID_BASE`] + pid mod 65536.
    #[serde(default)]
    pub uid: Option<u32>,
    /// The gid to run as (not 0); default: the uid.
    #[serde(default)]
    pub gid: Option<u32>,
}

impl JailConfig {
    /// The uid and gid for a process with id `pid`.
    pub fn identity(&self, pid: u32) -> (u32, u32) {
        let uid = self.uid.unwrap_or(JAIL_ID_BASE + pid % 65_536);
        (uid, self.gid.unwrap_or(uid))
    }
}

/// What a jail keeps and allows besides its config.
#[derive(Debug, Clone, Default)]
pub struct JailPaths {
    /// Host directories bound at the same path inside the jail (absolute).
    pub keep: Vec<PathBuf>,
    /// Guest RAM in bytes, for the address-space limit.
    pub guest_ram: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error(
        "the VMM must enter its jail before it starts threads, but {0} run; this is a peapod bug"
    )]
    Threads(usize),
    #[error(
        "cannot {what} for the VMM's jail: {source} (the jail needs root: run peapod as root, \
         or pass --no-jail / \"jail\": null to debug without it)"
    )]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("the VMM's jail refuses uid or gid 0 (it must drop root); choose another")]
    RootIdentity,
    #[error("cannot {what} for the VMM's jail: {message}")]
    Capabilities { what: &'static str, message: String },
    #[error("a directory to keep in the VMM's jail must be absolute: {0}")]
    Relative(PathBuf),
    #[error("the VMM still holds capabilities after its jail dropped root: {0:#x}")]
    CapabilitiesLeft(u64),
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Sys { what, source }
}

/// Who the VMM is once jailed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jailed {
    pub uid: u32,
    pub gid: u32,
}

/// Confines the calling process as the module docs say. Must run before the process starts
/// a thread; on error the process is partly confined and should exit.
pub fn enter(config: &JailConfig, paths: &JailPaths) -> Result<Jailed, JailError> {
    let (uid, gid) = config.identity(std::process::id());
    if uid == 0 || gid == 0 {
        return Err(JailError::RootIdentity);
    }
    if let Some(dir) = paths.keep.iter().find(|d| !d.is_absolute()) {
        return Err(JailError::Relative(dir.clone()));
    }
    let threads = thread_count();
    if threads > 1 {
        return Err(JailError::Threads(threads));
    }
    let death_signal = parent_death_signal()?;

    nix::sched::unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWNET,
    )
    .map_err(sys("create namespaces"))?;
    new_root(&paths.keep)?;
    nix::unistd::sethostname("peapod-vmm").map_err(sys("set the hostname"))?;

    limit(Resource::RLIMIT_NOFILE, MAX_OPEN_FILES)?;
    limit(Resource::RLIMIT_CORE, 0)?;
    limit(
        Resource::RLIMIT_AS,
        paths.guest_ram.saturating_add(ADDRESS_SPACE_SLACK),
    )?;

    caps::clear(None, caps::CapSet::Ambient).map_err(caps_error("clear ambient capabilities"))?;
    let bounding =
        caps::read(None, caps::CapSet::Bounding).map_err(caps_error("read the bounding set"))?;
    for cap in bounding {
        caps::drop(None, caps::CapSet::Bounding, cap)
            .map_err(caps_error("empty the capability bounding set"))?;
    }
    nix::unistd::setgroups(&[]).map_err(sys("drop supplementary groups"))?;
    let (g, u) = (Gid::from_raw(gid), Uid::from_raw(uid));
    nix::unistd::setresgid(g, g, g).map_err(sys(format!("switch to gid {gid}")))?;
    nix::unistd::setresuid(u, u, u).map_err(sys(format!("switch to uid {uid}")))?;
    let left = caps::read(None, caps::CapSet::Permitted)
        .map(|set| set.iter().fold(0u64, |m, c| m | c.bitmask()))
        .unwrap_or(u64::MAX);
    if left != 0 {
        return Err(JailError::CapabilitiesLeft(left));
    }
    nix::sys::prctl::set_no_new_privs().map_err(sys("set no_new_privs"))?;
    if let Some(signal) = death_signal {
        nix::sys::prctl::set_pdeathsig(signal).map_err(sys("set the parent-death signal"))?;
    }
    Ok(Jailed { uid, gid })
}

fn caps_error(what: &'static str) -> impl FnOnce(caps::errors::CapsError) -> JailError {
    move |e| JailError::Capabilities {
        what,
        message: e.to_string(),
    }
}

/// Threads of this process, from `/proc/self/task` (taken as 1 without a /proc to read).
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count())
}

fn parent_death_signal() -> Result<Option<nix::sys::signal::Signal>, JailError> {
    nix::sys::prctl::get_pdeathsig().map_err(sys("read the parent-death signal"))
}

fn limit(resource: Resource, value: u64) -> Result<(), JailError> {
    setrlimit(resource, value, value).map_err(sys(format!("limit {resource:?} to {value}")))
}

/// Step 2 of the module docs: an empty read-only tmpfs root with `keep` bound into it.
fn new_root(keep: &[PathBuf]) -> Result<(), JailError> {
    let none: Option<&str> = None;
    nix::mount::mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(sys("make the mounts private"))?;
    // Held open from here: the tmpfs below may cover where they are (a socket in /tmp).
    let sources = keep
        .iter()
        .map(|dir| {
            nix::fcntl::open(
                dir.as_path(),
                nix::fcntl::OFlag::O_PATH
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(sys(format!("open {}", dir.display())))
        })
        .collect::<Result<Vec<OwnedFd>, _>>()?;
    let root = std::env::temp_dir();
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    nix::mount::mount(
        Some("peapod-vmm"),
        &root,
        Some("tmpfs"),
        hardened,
        Some("mode=0755,size=64k"),
    )
    .map_err(sys(format!("mount a tmpfs on {}", root.display())))?;
    for (dir, source) in keep.iter().zip(&sources) {
        let inside = root.join(dir.strip_prefix("/").unwrap_or(dir));
        std::fs::create_dir_all(&inside).map_err(|e| JailError::Sys {
            what: format!("create {}", inside.display()),
            source: io_errno(&e),
        })?;
        let source = PathBuf::from(format!("/proc/self/fd/{}", source.as_raw_fd()));
        nix::mount::mount(Some(&source), &inside, none, MsFlags::MS_BIND, none)
            .map_err(sys(format!("bind {}", dir.display())))?;
        nix::mount::mount(
            none,
            &inside,
            none,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | hardened,
            none,
        )
        .map_err(sys(format!("harden the bind of {}", dir.display())))?;
    }
    drop(sources);
    nix::unistd::chdir(&root).map_err(sys("enter the new root"))?;
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            nix::mount::umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach the old root"))?
        }
        // The root is the initramfs (the test bed's L1), which cannot be pivoted away
        // from: move the new root over it and chroot, as runc's no-pivot mode does. The
        // initramfs stays underneath, out of reach of a process without capabilities.
        Err(nix::Error::EINVAL) => {
            nix::mount::mount(Some("."), "/", none, MsFlags::MS_MOVE, none)
                .map_err(sys("move the new root over the initramfs"))?;
            nix::unistd::chroot(".").map_err(sys("chroot into the new root"))?;
        }
        Err(e) => return Err(sys("pivot_root into the new root")(e)),
    }
    nix::unistd::chdir("/").map_err(sys("enter /"))?;
    nix::mount::mount(
        none,
        "/",
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | hardened,
        none,
    )
    .map_err(sys("make the new root read-only"))
}

fn io_errno(e: &std::io::Error) -> nix::Error {
    e.raw_os_error()
        .map_or(nix::Error::EIO, nix::Error::from_raw)
}

/// Directories a VM needs inside its jail, from where its vsock socket lives.
pub fn keep_for_vsock(uds: &Path) -> Option<PathBuf> {
    let dir = uds.parent()?;
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::canonicalize(dir).ok()
}

#[cfg(test)]
mod tests;
