//! Seccomp allow-lists for the VMM's threads, built with rust-vmm's `seccompiler` (as
//! Firecracker does): one BPF filter per kind of thread ([`ThreadKind`]), each installed by
//! the thread itself right before guest-controlled work starts:
//!
//! | thread | installed | allowed syscalls | Firecracker's (x86_64 musl) |
//! |---|---|---|---|
//! | vCPU | just before its first `KVM_RUN` | 47 | 21 (`vcpu`) |
//! | device (virtio, vsock host sockets, net's tap) | before its event loop | 60 | 38 (`vmm`) |
//! | main | after it spawned the device and vCPU threads | 37 | 38 (`vmm`) |
//!
//! (The counts are syscall numbers with at least one allowing rule; a test keeps them true.
//! Firecracker's lists are `resources/seccomp/x86_64-unknown-linux-musl.json` in
//! firecracker-microvm/firecracker; its `vmm` thread is both our main and our device thread.)
//! Ours are longer because they are meant to be conservative: everything glibc and Rust's
//! std plausibly call on these paths is allowed (both `clock_gettime` and `gettimeofday` for
//! hosts whose clock has no vDSO, `restart_syscall` after a signal interrupts a sleep,
//! `statx`/`fstat` for std's metadata calls, ...), because a missing syscall kills every pod.
//! Two were found only by running code under the filters (the tests do, in a child
//! process): glibc's malloc opens and reads `/proc/sys/vm/overcommit_memory` the first time
//! it shrinks a thread's arena, and std checks an fd with `fcntl(F_GETFD)` when dropping it
//! in debug builds. So `open`/`openat` are allowed, read-only and close-on-exec only (as
//! Firecracker allows `open` in every thread).
//!
//! Where it is cheap and clear, arguments are restricted too: `ioctl` only with `KVM_RUN` or
//! `TUNSETOFFLOAD` (vCPU: a driver starting virtio-net runs its activation there) or
//! `FIONBIO`/`FIOCLEX` (device thread), `socket` only `AF_UNIX`, `mmap` and
//! `mprotect` never with `PROT_EXEC`, signals sent only as `SIGABRT` or the vCPU kick,
//! `rt_sigaction` only for `SIGABRT`/`SIGSEGV`/`SIGBUS`, `fcntl` only to get or set flags,
//! `open`/`openat` only read-only. Creating processes or threads (`clone`, `execve`), binding
//! or listening on sockets, and every other `ioctl` (no KVM setup call after start) are out.
//! Each allowed syscall has a one-line reason in [`allowed`].
//!
//! # What a forbidden syscall does
//!
//! Anything else kills the whole VMM process with `SIGSYS` ([`SeccompAction::KillProcess`]):
//! no handler runs and nothing is written, so the VMM sends no `exited`/`failed` event. The
//! pod runtime does not need one: it reports the VMM's exit status, "the VMM ended (signal:
//! 31 (SIGSYS)) without saying why", and the kernel's audit log (`dmesg`, `journalctl -k`)
//! names the syscall (`type=1326 ... syscall=N`). To find out which one it was in a
//! debugging session, run the VMM with `--no-seccomp` (or `"seccomp": false` in its config)
//! under `strace -f`.
//!
//! Known consequence: a panic with `RUST_BACKTRACE` set symbolizes its backtrace with calls
//! the filters were not written for and may end in `SIGSYS` (the panic message is written
//! first); use `--no-seccomp` to see backtraces.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// `KVM_RUN`: `_IO(KVMIO, 0x80)` (KVMIO is 0xAE).
pub const KVM_RUN: u64 = 0xae80;
/// `KVM_GET_REGS`: `_IOR(KVMIO, 0x81, struct kvm_regs)`.
pub const KVM_GET_REGS: u64 = 0x8090_ae81;
/// `KVM_GET_SREGS`: `_IOR(KVMIO, 0x83, struct kvm_sregs)`.
pub const KVM_GET_SREGS: u64 = 0x8138_ae83;
/// `TUNSETOFFLOAD`: `_IOW('T', 208, unsigned int)`.
pub const TUNSETOFFLOAD: u64 = libc::TUNSETOFFLOAD;

/// The kinds of VMM threads, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread: `KVM_RUN` and the device models its exits reach (serial console, i8042,
    /// virtio-mmio registers: a driver starting or resetting a device runs that device's
    /// code here, e.g. vsock connecting to host sockets).
    Vcpu,
    /// The device thread: the event loop serving virtio queues and vsock's host sockets.
    Device,
    /// The main thread once the VM runs: waits, kicks and joins the other threads, writes
    /// events and logs, tears the VM down and exits.
    Main,
}

impl ThreadKind {
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Device => "device",
            ThreadKind::Main => "main",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {thread} thread's seccomp filter: {source}")]
    Build {
        thread: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error(
        "cannot install the {thread} thread's seccomp filter: {source}; run with --no-seccomp \
         on kernels without seccomp"
    )]
    Install {
        thread: &'static str,
        #[source]
        source: seccompiler::Error,
    },
    #[error("seccomp filters are only written for x86_64, not {0}; run with --no-seccomp")]
    Arch(&'static str),
}

/// One allowed syscall: its number, name, why it is allowed, and on which arguments (no
/// rules: any arguments).
#[derive(Debug, Clone)]
pub struct Allowed {
    pub nr: i64,
    pub name: &'static str,
    pub why: &'static str,
    rules: Vec<SeccompRule>,
}

fn any(nr: libc::c_long, name: &'static str, why: &'static str) -> Allowed {
    Allowed {
        nr,
        name,
        why,
        rules: Vec::new(),
    }
}

fn when(
    nr: libc::c_long,
    name: &'static str,
    why: &'static str,
    rules: Vec<SeccompRule>,
) -> Allowed {
    Allowed {
        nr,
        name,
        why,
        rules,
    }
}

/// A rule matching when argument `arg` (32 bits) equals `value`.
fn arg_eq(arg: u8, value: u64) -> SeccompRule {
    rule(arg, SeccompCmpOp::Eq, value)
}

/// One rule per value: argument `arg` is one of `values`.
fn arg_in(arg: u8, values: &[u64]) -> Vec<SeccompRule> {
    values.iter().map(|&v| arg_eq(arg, v)).collect()
}

/// A rule matching when none of `bits` are set in argument `arg`.
fn arg_without(arg: u8, bits: u64) -> SeccompRule {
    rule(arg, SeccompCmpOp::MaskedEq(bits), 0)
}

fn rule(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompRule {
    // Both only fail on an argument index above 5 or an empty condition list, which the
    // callers above never give.
    let condition = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
        .expect("argument index 0..=5");
    SeccompRule::new(vec![condition]).expect("one condition")
}

/// The signal numbers a thread may send: `SIGABRT` (glibc's `abort`, on a panic with
/// `panic = "abort"`) and `kick` (the vCPU kick).
fn signals(kick: i32) -> Vec<u64> {
    vec![libc::SIGABRT as u64, kick as u64]
}

/// What every thread needs: the allocator, locks, time, logging, signals for kicks and
/// aborts, thread and process exit.
fn runtime(kick: i32) -> Vec<Allowed> {
    use libc::*;
    let no_exec = || vec![arg_without(2, PROT_EXEC as u64)];
    vec![
        any(SYS_brk, "brk", "malloc grows the main heap"),
        when(
            SYS_mmap,
            "mmap",
            "malloc's large blocks and per-thread arenas (never executable)",
            no_exec(),
        ),
        when(
            SYS_mprotect,
            "mprotect",
            "malloc grows a thread's arena (never executable)",
            no_exec(),
        ),
        any(
            SYS_munmap,
            "munmap",
            "free; dropping a vCPU's kvm_run page and guest memory",
        ),
        any(SYS_mremap, "mremap", "realloc of large blocks (Vec growth)"),
        any(
            SYS_madvise,
            "madvise",
            "malloc trims arenas; glibc releases an exiting thread's stack",
        ),
        any(
            SYS_futex,
            "futex",
            "Mutex, Condvar, thread join (glibc and std)",
        ),
        any(
            SYS_sched_yield,
            "sched_yield",
            "spin-then-yield loops in std's sync primitives",
        ),
        any(
            SYS_getrandom,
            "getrandom",
            "the first HashMap of a thread seeds its hasher",
        ),
        any(
            SYS_clock_gettime,
            "clock_gettime",
            "Instant::now when the clock has no vDSO",
        ),
        any(
            SYS_gettimeofday,
            "gettimeofday",
            "SystemTime::now when the clock has no vDSO",
        ),
        any(SYS_nanosleep, "nanosleep", "std::thread::sleep"),
        any(
            SYS_clock_nanosleep,
            "clock_nanosleep",
            "std::thread::sleep (newer glibc)",
        ),
        any(
            SYS_restart_syscall,
            "restart_syscall",
            "a sleep or wait interrupted by a signal resumes",
        ),
        any(
            SYS_write,
            "write",
            "logs (stderr), events (pipe), console, eventfd signals, frames to net's tap",
        ),
        any(SYS_writev, "writev", "vectored writes of std's writers"),
        any(SYS_close, "close", "dropping files, sockets, eventfds"),
        any(
            SYS_fstat,
            "fstat",
            "std and glibc ask an open file's metadata",
        ),
        any(
            SYS_newfstatat,
            "newfstatat",
            "fstat as newer glibc makes it",
        ),
        any(SYS_statx, "statx", "std's File::metadata"),
        any(
            SYS_unlink,
            "unlink",
            "the vsock device removes its socket file when dropped (any thread may drop it last)",
        ),
        any(SYS_unlinkat, "unlinkat", "unlink as newer glibc makes it"),
        any(
            SYS_sched_getaffinity,
            "sched_getaffinity",
            "std::thread::available_parallelism",
        ),
        any(
            SYS_rt_sigreturn,
            "rt_sigreturn",
            "return from a signal handler (the vCPU kick)",
        ),
        any(
            SYS_rt_sigprocmask,
            "rt_sigprocmask",
            "glibc blocks signals in pthread_kill and abort",
        ),
        when(
            SYS_rt_sigaction,
            "rt_sigaction",
            "abort resets SIGABRT; std's stack-overflow handler resets SIGSEGV/SIGBUS",
            arg_in(0, &[SIGABRT as u64, SIGSEGV as u64, SIGBUS as u64]),
        ),
        any(
            SYS_sigaltstack,
            "sigaltstack",
            "std removes a thread's signal stack when it exits",
        ),
        any(SYS_getpid, "getpid", "glibc's pthread_kill and raise"),
        any(SYS_gettid, "gettid", "glibc's raise"),
        when(
            SYS_tgkill,
            "tgkill",
            "abort raises SIGABRT; the main thread kicks vCPUs",
            arg_in(2, &signals(kick)),
        ),
        when(
            SYS_tkill,
            "tkill",
            "tgkill as other libcs make it",
            arg_in(1, &signals(kick)),
        ),
        any(SYS_exit, "exit", "a thread ends"),
        any(SYS_exit_group, "exit_group", "the VMM ends"),
        any(
            SYS_read,
            "read",
            "eventfds, /dev/urandom for virtio-rng, host streams, frames from net's tap; glibc \
             reads the file below",
        ),
        when(
            SYS_openat,
            "openat",
            "read-only, close-on-exec only: glibc's malloc reads /proc/sys/vm/overcommit_memory \
             the first time it shrinks a thread's arena",
            vec![arg_eq(2, (O_RDONLY | O_CLOEXEC) as u64)],
        ),
        when(
            SYS_open,
            "open",
            "openat as other libcs make it (read-only, close-on-exec only)",
            vec![arg_eq(1, (O_RDONLY | O_CLOEXEC) as u64)],
        ),
        when(
            SYS_fcntl,
            "fcntl",
            "get and set fd flags; std checks an fd is open (F_GETFD) when dropping it in \
             debug builds",
            arg_in(
                1,
                &[
                    F_GETFD as u64,
                    F_SETFD as u64,
                    F_GETFL as u64,
                    F_SETFL as u64,
                ],
            ),
        ),
    ]
}

/// What device code needs on the threads that run it (the device thread, and vCPU threads
/// through MMIO registers): reading queue eventfds and host streams, vsock's host sockets.
fn device_io() -> Vec<Allowed> {
    use libc::*;
    vec![
        any(SYS_readv, "readv", "vectored reads of std's readers"),
        any(
            SYS_recvfrom,
            "recvfrom",
            "std reads a Unix stream with recv",
        ),
        any(SYS_sendto, "sendto", "std's send on a Unix stream"),
        when(
            SYS_socket,
            "socket",
            "vsock connects to host listeners (AF_UNIX only)",
            vec![arg_eq(0, AF_UNIX as u64)],
        ),
        any(
            SYS_connect,
            "connect",
            "vsock connects to host listeners (<uds>_<port>)",
        ),
        any(SYS_shutdown, "shutdown", "vsock half-closes host streams"),
        any(
            SYS_epoll_ctl,
            "epoll_ctl",
            "vsock watches and forgets host streams; net stops and resumes watching its tap",
        ),
        any(
            SYS_timerfd_settime,
            "timerfd_settime",
            "vsock arms its deadline timer",
        ),
    ]
}

/// The syscalls `kind` may make, each with its reason; `kick` is the vCPU kick signal.
pub fn allowed(kind: ThreadKind, kick: i32) -> Vec<Allowed> {
    use libc::*;
    let mut list = runtime(kick);
    match kind {
        ThreadKind::Vcpu => {
            list.extend(device_io());
            list.push(when(
                SYS_ioctl,
                "ioctl",
                "KVM_RUN; TUNSETOFFLOAD when the guest driver starts virtio-net (the tap \
                 gets the offloads the guest accepted); KVM_GET_REGS and KVM_GET_SREGS for \
                 a triple fault's report",
                arg_in(1, &[KVM_RUN, TUNSETOFFLOAD, KVM_GET_REGS, KVM_GET_SREGS]),
            ));
            list.push(any(
                SYS_pread64,
                "pread64",
                "a triple fault's report reads the vCPU's KVM statistics",
            ));
        }
        ThreadKind::Device => {
            list.extend(device_io());
            list.extend([
                any(
                    SYS_epoll_wait,
                    "epoll_wait",
                    "the event loop and vsock's host set",
                ),
                any(
                    SYS_epoll_pwait,
                    "epoll_pwait",
                    "epoll_wait as newer glibc makes it",
                ),
                any(SYS_accept4, "accept4", "vsock accepts host connections"),
                any(SYS_accept, "accept", "accept as other libcs make it"),
                any(
                    SYS_timerfd_gettime,
                    "timerfd_gettime",
                    "vsock's deadline timer",
                ),
                any(SYS_lseek, "lseek", "virtio-blk seeks to a request's sector"),
                any(SYS_pread64, "pread64", "positioned disk reads"),
                any(SYS_pwrite64, "pwrite64", "positioned disk writes"),
                any(SYS_preadv, "preadv", "vectored disk reads"),
                any(SYS_pwritev, "pwritev", "vectored disk writes"),
                any(SYS_fsync, "fsync", "virtio-blk flush"),
                any(
                    SYS_fdatasync,
                    "fdatasync",
                    "virtio-blk flush (File::sync_data)",
                ),
                any(SYS_sendmsg, "sendmsg", "vectored socket writes"),
                any(SYS_recvmsg, "recvmsg", "vectored socket reads"),
                when(
                    SYS_ioctl,
                    "ioctl",
                    "FIONBIO (set_nonblocking on accepted streams), FIOCLEX",
                    arg_in(1, &[FIONBIO, FIOCLEX]),
                ),
            ]);
        }
        ThreadKind::Main => {}
    }
    list
}

/// The allowed syscalls of `kind` as seccompiler's rule map (rules of a syscall listed twice
/// are merged; one allowed without rules allows any arguments).
fn rule_map(kind: ThreadKind, kick: i32) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut unrestricted = Vec::new();
    for a in allowed(kind, kick) {
        if a.rules.is_empty() {
            unrestricted.push(a.nr);
        }
        map.entry(a.nr).or_default().extend(a.rules);
    }
    for nr in unrestricted {
        map.insert(nr, Vec::new());
    }
    map
}

/// How many distinct syscalls `kind` may make.
pub fn allowed_count(kind: ThreadKind, kick: i32) -> usize {
    rule_map(kind, kick).len()
}

/// Compiles `kind`'s filter: the allowed syscalls pass, anything else kills the process.
pub fn filter(kind: ThreadKind, kick: i32) -> Result<BpfProgram, SeccompError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH))?;
    let build = |source| SeccompError::Build {
        thread: kind.name(),
        source,
    };
    SeccompFilter::new(
        rule_map(kind, kick),
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .and_then(BpfProgram::try_from)
    .map_err(build)
}

/// Installs `program` (from [`filter`]) on the calling thread, for good (it also sets the
/// thread's no-new-privileges bit, which seccomp requires of unprivileged callers).
pub fn install(kind: ThreadKind, program: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
        thread: kind.name(),
        source,
    })
}

#[cfg(test)]
mod tests;
