//! What `docker run` does to a container's process on top of its namespaces, so that a pod's
//! containers get the same on the host ([`super::layout::PodLayout::host`]) as under docker
//! or runc, and as much of it as makes sense inside a pod VM:
//!
//! * **Capabilities**: docker's default set ([`DEFAULT_CAPABILITIES`], moby's
//!   `daemon/pkg/oci/caps/defaults.go`). Every other capability leaves the bounding set, so no
//!   exec of a set-uid or file-capability program can get it back; a root process keeps the
//!   default set as its permitted and effective sets; a non-root process keeps none (its
//!   uid switch cleared them, as in docker). The inheritable and ambient sets are empty:
//!   docker stopped filling the inheritable set in 20.10.14 (CVE-2022-24769), since with it
//!   a non-root process could regain capabilities by running a program with inheritable
//!   file capabilities.
//! * **`no_new_privs`**: set on every unprivileged process. Unlike docker, where it is
//!   opt-in (`--security-opt no-new-privileges`): here it is what lets an unprivileged
//!   process install the seccomp filter after its capabilities are gone. Set-uid programs
//!   in an image (`su`, `sudo`) therefore run without gaining their owner's rights.
//! * **seccomp**: docker's default profile (moby's `profiles/seccomp/default.json`, read at
//!   moby commit b985e2313a86) for x86_64, as the container's default caps select it: a
//!   syscall not on the allow-list fails with `EPERM`; `clone` may not make namespaces
//!   (there is no `CAP_SYS_ADMIN`); `clone3` fails with `ENOSYS`, so that libcs fall back to
//!   `clone`, whose flags the filter can read; `personality` takes only the values docker
//!   allows; `socket` refuses `AF_ALG` and `AF_VSOCK`. Only native x86_64 calls pass: 32-bit
//!   (`int 0x80`) and x32 calls are refused, where docker allows them (seccompiler builds
//!   one-architecture filters), so 32-bit programs do not run in a hardened container.
//!   [`Hardening::seccomp`] comes from the pod's layout: off in a pod VM, as Kata's default
//!   `disable_guest_seccomp = true` (the VM is the boundary), on for host pods.
//! * **`privileged`** (`docker run --privileged`, Kubernetes' `securityContext.privileged`)
//!   turns all of this off: every capability is kept, no filter, no `no_new_privs`; the
//!   container's `/sys` is writable and no `/proc` path is masked
//!   ([`super::container::setup_container`]).
//!
//! The steps have an order around the uid switch in `prepare_process`
//! ([`super::container`]), each a method of [`Prepared`]: [`Prepared::limit_bounding_set`]
//! first (dropping needs `CAP_SETPCAP`, which a non-root uid loses), then
//! `setgroups`/`setgid`/`setuid`, then [`Prepared::set_capabilities`], then
//! [`Prepared::lock`] (`no_new_privs`, then the filter) last: the filter allows what
//! follows up to `execve` (a container's first process reads its start byte there) and
//! what a failed `execve` does (`write`, `exit_group`). The filter is compiled first
//! ([`Hardening::prepare`]), so that a build error is reported before anything changed. A
//! container's first process is forked by container-init before it reports ready and goes
//! through all of this while the supervisor attaches its stdio, so that its start is one
//! `execve`; container-init then locks itself as well. An exec'd process (`exec-init`)
//! locks itself last.

use std::collections::BTreeMap;

use caps::{CapSet, Capability, CapsHashSet};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

/// Docker's default capabilities (moby `daemon/pkg/oci/caps/defaults.go`).
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// `clone` flags that make namespaces, which docker's profile refuses without
/// `CAP_SYS_ADMIN`: `CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
/// CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWCGROUP` (0x7E020000).
pub const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// The values `personality(2)` may be called with: `PER_LINUX`, `PER_LINUX32`,
/// `UNAME26`, `PER_LINUX32 | UNAME26`, and `0xffffffff` (query).
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// `AF_ALG` and `AF_VSOCK`, the socket families the profile refuses (it allows `< 38`,
/// `== 39` and `> 40`).
const AF_ALG: u64 = 38;
const AF_VSOCK: u64 = 40;

/// Builds the allow-list from `libc::SYS_*` constant names.
macro_rules! libc_syscalls {
    ($($sys:ident)*) => {
        &[$((libc::$sys, stringify!($sys)),)*]
    };
}

/// Docker's unconditional allow-list, the x86_64 names of it that libc numbers (names
/// that do not exist on x86_64, such as `chown32` or `socketcall`, are left out, as
/// libseccomp leaves them out), plus what the container's default caps add: `ptrace`,
/// `process_vm_readv`, `process_vm_writev` (allowed on kernels from 4.8), `arch_prctl`,
/// `modify_ldt` (x86) and `chroot` (`CAP_SYS_CHROOT`).
const ALLOWED: &[(libc::c_long, &str)] = libc_syscalls![
    SYS_accept SYS_accept4 SYS_access SYS_adjtimex SYS_alarm SYS_bind SYS_brk SYS_capget
    SYS_capset SYS_chdir SYS_chmod SYS_chown SYS_clock_adjtime SYS_clock_getres
    SYS_clock_gettime SYS_clock_nanosleep SYS_close SYS_close_range SYS_connect
    SYS_copy_file_range SYS_creat SYS_dup SYS_dup2 SYS_dup3 SYS_epoll_create SYS_epoll_create1
    SYS_epoll_ctl SYS_epoll_ctl_old SYS_epoll_pwait SYS_epoll_pwait2 SYS_epoll_wait
    SYS_epoll_wait_old SYS_eventfd SYS_eventfd2 SYS_execve SYS_execveat SYS_exit SYS_exit_group
    SYS_faccessat SYS_faccessat2 SYS_fadvise64 SYS_fallocate SYS_fanotify_mark SYS_fchdir
    SYS_fchmod SYS_fchmodat SYS_fchmodat2 SYS_fchown SYS_fchownat SYS_fcntl SYS_fdatasync
    SYS_fgetxattr SYS_flistxattr SYS_flock SYS_fork SYS_fremovexattr SYS_fsetxattr SYS_fstat
    SYS_fstatfs SYS_fsync SYS_ftruncate SYS_futex SYS_futex_waitv SYS_futimesat SYS_getcpu
    SYS_getcwd SYS_getdents SYS_getdents64 SYS_getegid SYS_geteuid SYS_getgid SYS_getgroups
    SYS_getitimer SYS_getpeername SYS_getpgid SYS_getpgrp SYS_getpid SYS_getppid SYS_getpriority
    SYS_getrandom SYS_getresgid SYS_getresuid SYS_getrlimit SYS_get_robust_list SYS_getrusage
    SYS_getsid SYS_getsockname SYS_getsockopt SYS_get_thread_area SYS_gettid SYS_gettimeofday
    SYS_getuid SYS_getxattr SYS_inotify_add_watch SYS_inotify_init SYS_inotify_init1
    SYS_inotify_rm_watch SYS_io_cancel SYS_ioctl SYS_io_destroy SYS_io_getevents SYS_ioprio_get
    SYS_ioprio_set SYS_io_setup SYS_io_submit SYS_kill SYS_landlock_add_rule
    SYS_landlock_create_ruleset SYS_landlock_restrict_self SYS_lchown SYS_lgetxattr SYS_link
    SYS_linkat SYS_listen SYS_listxattr SYS_llistxattr SYS_lremovexattr SYS_lseek SYS_lsetxattr
    SYS_lstat SYS_madvise SYS_membarrier SYS_memfd_create SYS_memfd_secret SYS_mincore SYS_mkdir
    SYS_mkdirat SYS_mknod SYS_mknodat SYS_mlock SYS_mlock2 SYS_mlockall SYS_mmap SYS_mprotect
    SYS_mq_getsetattr SYS_mq_notify SYS_mq_open SYS_mq_timedreceive SYS_mq_timedsend
    SYS_mq_unlink SYS_mremap SYS_mseal SYS_msgctl SYS_msgget SYS_msgrcv SYS_msgsnd SYS_msync
    SYS_munlock SYS_munlockall SYS_munmap SYS_name_to_handle_at SYS_nanosleep SYS_newfstatat
    SYS_open SYS_openat SYS_openat2 SYS_pause SYS_pidfd_open SYS_pidfd_send_signal SYS_pipe
    SYS_pipe2 SYS_pkey_alloc SYS_pkey_free SYS_pkey_mprotect SYS_poll SYS_ppoll SYS_prctl
    SYS_pread64 SYS_preadv SYS_preadv2 SYS_prlimit64 SYS_process_mrelease SYS_pselect6
    SYS_pwrite64 SYS_pwritev SYS_pwritev2 SYS_read SYS_readahead SYS_readlink SYS_readlinkat
    SYS_readv SYS_recvfrom SYS_recvmmsg SYS_recvmsg SYS_remap_file_pages SYS_removexattr
    SYS_rename SYS_renameat SYS_renameat2 SYS_restart_syscall SYS_rmdir SYS_rseq
    SYS_rt_sigaction SYS_rt_sigpending SYS_rt_sigprocmask SYS_rt_sigqueueinfo SYS_rt_sigreturn
    SYS_rt_sigsuspend SYS_rt_sigtimedwait SYS_rt_tgsigqueueinfo SYS_sched_getaffinity
    SYS_sched_getattr SYS_sched_getparam SYS_sched_get_priority_max SYS_sched_get_priority_min
    SYS_sched_getscheduler SYS_sched_rr_get_interval SYS_sched_setaffinity SYS_sched_setattr
    SYS_sched_setparam SYS_sched_setscheduler SYS_sched_yield SYS_seccomp SYS_select SYS_semctl
    SYS_semget SYS_semop SYS_semtimedop SYS_sendfile SYS_sendmmsg SYS_sendmsg SYS_sendto
    SYS_setfsgid SYS_setfsuid SYS_setgid SYS_setgroups SYS_setitimer SYS_setpgid SYS_setpriority
    SYS_setregid SYS_setresgid SYS_setresuid SYS_setreuid SYS_setrlimit SYS_set_robust_list
    SYS_setsid SYS_setsockopt SYS_set_thread_area SYS_set_tid_address SYS_setuid SYS_setxattr
    SYS_shmat SYS_shmctl SYS_shmdt SYS_shmget SYS_shutdown SYS_sigaltstack SYS_signalfd
    SYS_signalfd4 SYS_socketpair SYS_splice SYS_stat SYS_statfs SYS_statx SYS_symlink
    SYS_symlinkat SYS_sync SYS_sync_file_range SYS_syncfs SYS_sysinfo SYS_tee SYS_tgkill
    SYS_time SYS_timer_create SYS_timer_delete SYS_timer_getoverrun SYS_timer_gettime
    SYS_timer_settime SYS_timerfd_create SYS_timerfd_gettime SYS_timerfd_settime SYS_times
    SYS_tkill SYS_truncate SYS_umask SYS_uname SYS_unlink SYS_unlinkat SYS_utime SYS_utimensat
    SYS_utimes SYS_vfork SYS_vmsplice SYS_wait4 SYS_waitid SYS_write SYS_writev
    SYS_process_vm_readv SYS_process_vm_writev SYS_ptrace SYS_arch_prctl SYS_modify_ldt
    SYS_chroot
];

/// The allowed syscalls libc 0.2.191 has no x86_64 constant for, numbered by hand from the
/// kernel's `arch/x86/entry/syscalls/syscall_64.tbl`.
const ALLOWED_BY_NUMBER: &[(libc::c_long, &str)] = &[
    (333, "io_pgetevents"),
    (335, "uretprobe"),
    (451, "cachestat"),
    (453, "map_shadow_stack"),
    (454, "futex_wake"),
    (455, "futex_wait"),
    (456, "futex_requeue"),
    (457, "statmount"),
    (458, "listmount"),
    (463, "setxattrat"),
    (464, "getxattrat"),
    (465, "listxattrat"),
    (466, "removexattrat"),
];

#[derive(Debug, thiserror::Error)]
pub enum HardeningError {
    #[error(
        "the container seccomp profile is written for x86_64, not {0}: run the container \
         privileged, or its pod in a VM"
    )]
    Arch(&'static str),
    #[error("cannot build the container seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error(
        "cannot install the container seccomp filter: {0}; the kernel needs \
         CONFIG_SECCOMP_FILTER, or run the container privileged"
    )]
    Install(#[source] seccompiler::Error),
    #[error(
        "cannot drop {cap} from the capability bounding set: {source}; the container's \
         helper must run as root with CAP_SETPCAP"
    )]
    Bounding {
        cap: Capability,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("cannot set the {set} capabilities of the container's process: {source}")]
    Capabilities {
        set: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("cannot set no_new_privs on the container's process: {0}")]
    NoNewPrivs(#[source] nix::Error),
}

/// How a container's process is confined, sent to the helpers in
/// [`super::container::ContainerInit`] and [`super::container::ExecInit`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hardening {
    /// Keep every capability, no seccomp filter, no `no_new_privs`
    /// ([`crate::protocol::ContainerSpec::privileged`]).
    pub privileged: bool,
    /// Install docker's seccomp profile ([`super::layout::PodLayout::seccomp`]); never for a
    /// privileged container.
    pub seccomp: bool,
}

impl Hardening {
    /// Compiles what [`Prepared`] applies: the seccomp filters, if any.
    pub fn prepare(self) -> Result<Prepared, HardeningError> {
        let filters = if self.privileged || !self.seccomp {
            Vec::new()
        } else {
            default_filters()?
        };
        Ok(Prepared {
            privileged: self.privileged,
            filters,
            bounded: false,
            locked: false,
        })
    }
}

/// A [`Hardening`] ready to apply, in the order its methods are listed.
#[derive(Debug, Clone)]
pub struct Prepared {
    privileged: bool,
    /// Installed in this order (see [`default_filters`]).
    filters: Vec<BpfProgram>,
    /// [`Prepared::limit_bounding_set`] has run in this process (or in the one it was
    /// forked from: the bounding set is inherited).
    bounded: bool,
    /// [`Prepared::lock`] has run in this process (or in the one it was forked from: a
    /// child inherits `no_new_privs` and the filters, and keeps them across `execve`).
    locked: bool,
}

impl Prepared {
    /// Whether [`Prepared::lock`] installs a seccomp filter.
    pub fn has_filter(&self) -> bool {
        !self.filters.is_empty()
    }

    /// Step 1, before the uid switch: drops every capability but
    /// [`DEFAULT_CAPABILITIES`] from the bounding set, once (as [`Prepared::lock`]).
    pub fn limit_bounding_set(&mut self) -> Result<(), HardeningError> {
        if self.privileged || self.bounded {
            return Ok(());
        }
        let keep = default_set();
        for cap in caps::all().difference(&keep) {
            // A capability this kernel does not know is in no set: nothing to drop.
            if caps::has_cap(None, CapSet::Bounding, *cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, *cap)
                    .map_err(|source| HardeningError::Bounding { cap: *cap, source })?;
            }
        }
        self.bounded = true;
        Ok(())
    }

    /// Step 2, after the uid switch: a root process keeps the default capabilities it has
    /// as its effective and permitted sets; for any process the inheritable and ambient
    /// sets are emptied (a non-root process's effective and permitted sets are empty
    /// already: `setuid` cleared them).
    pub fn set_capabilities(&self) -> Result<(), HardeningError> {
        if self.privileged {
            return Ok(());
        }
        let err = |set| move |source| HardeningError::Capabilities { set, source };
        if nix::unistd::geteuid().is_root() {
            let permitted = caps::read(None, CapSet::Permitted).map_err(err("permitted"))?;
            let keep: CapsHashSet = default_set().intersection(&permitted).copied().collect();
            // Effective first: it must stay within the permitted set at every step.
            caps::set(None, CapSet::Effective, &keep).map_err(err("effective"))?;
            caps::set(None, CapSet::Permitted, &keep).map_err(err("permitted"))?;
        }
        caps::clear(None, CapSet::Inheritable).map_err(err("inheritable"))?;
        caps::clear(None, CapSet::Ambient).map_err(err("ambient"))
    }

    /// Step 3, the last before `execve`: sets `no_new_privs` and installs the filters,
    /// once: a second call (here, or in a child forked after the first) does nothing, so
    /// that container-init can lock itself while it waits for its start and its child does
    /// not stack a second copy of the filters.
    pub fn lock(&mut self) -> Result<(), HardeningError> {
        if self.privileged || self.locked {
            return Ok(());
        }
        nix::sys::prctl::set_no_new_privs().map_err(HardeningError::NoNewPrivs)?;
        for filter in &self.filters {
            seccompiler::apply_filter(filter).map_err(HardeningError::Install)?;
        }
        self.locked = true;
        Ok(())
    }
}

/// [`DEFAULT_CAPABILITIES`] as a set.
pub fn default_set() -> CapsHashSet {
    DEFAULT_CAPABILITIES.into_iter().collect()
}

/// [`DEFAULT_CAPABILITIES`] as the bit mask `/proc/PID/status` shows (`CapBnd`, `CapEff`).
pub fn default_mask() -> u64 {
    DEFAULT_CAPABILITIES.iter().fold(0, |m, c| m | c.bitmask())
}

/// One condition on 32-bit argument `arg` (the arguments ruled on are `int`s or flags in
/// the low 32 bits: the kernel reads only those of `clone`'s flags and `personality`).
fn rule(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompRule, HardeningError> {
    let condition = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)?;
    Ok(SeccompRule::new(vec![condition])?)
}

/// The main filter's rules: syscall number to the rules allowing it (none: any
/// arguments; several: any of them).
fn allow_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, HardeningError> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED
        .iter()
        .chain(ALLOWED_BY_NUMBER)
        .map(|(nr, _)| (*nr, Vec::new()))
        .collect();
    map.insert(
        libc::SYS_socket,
        vec![
            rule(0, SeccompCmpOp::Lt, AF_ALG)?,
            rule(0, SeccompCmpOp::Eq, AF_ALG + 1)?,
            rule(0, SeccompCmpOp::Gt, AF_VSOCK)?,
        ],
    );
    map.insert(
        libc::SYS_personality,
        PERSONALITIES
            .iter()
            .map(|p| rule(0, SeccompCmpOp::Eq, *p))
            .collect::<Result<_, _>>()?,
    );
    map.insert(
        libc::SYS_clone,
        vec![rule(0, SeccompCmpOp::MaskedEq(CLONE_NAMESPACE_FLAGS), 0)?],
    );
    // Passed here; the second filter answers it.
    map.insert(libc::SYS_clone3, Vec::new());
    Ok(map)
}

/// Docker's profile as two filters, both run on every syscall (the kernel takes the most
/// restrictive answer): the allow-list, whose default is `EPERM`, and one that answers
/// `clone3` with `ENOSYS` (a seccompiler filter has one action for all its rules).
pub fn default_filters() -> Result<Vec<BpfProgram>, HardeningError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .ok()
        .filter(|a| matches!(a, TargetArch::x86_64))
        .ok_or(HardeningError::Arch(std::env::consts::ARCH))?;
    let allow = SeccompFilter::new(
        allow_rules()?,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    Ok(vec![allow.try_into()?, clone3.try_into()?])
}

/// The names of the syscalls the profile allows with any arguments (tests, docs).
pub fn allowed_names() -> impl Iterator<Item = &'static str> {
    ALLOWED
        .iter()
        .map(|(_, name)| name.trim_start_matches("SYS_"))
        .chain(ALLOWED_BY_NUMBER.iter().map(|(_, name)| *name))
}

#[cfg(test)]
mod tests;
