//! Processes the agent starts, and their exit statuses.
//!
//! The agent is PID 1, so it reaps every child with one [`Reaper`] thread
//! (`waitpid(-1)`); statuses of the children it registered are kept for whoever waits on
//! them, anything else is a zombie reaped and forgotten. A child is registered while the
//! reaper's lock is held across the fork, so even a child that exits at once is never lost.
//!
//! Children are started with [`spawn_helper`]: `clone3` without a new stack (a fork that
//! can also make the child PID 1 of a new PID namespace, `CLONE_NEWPID`, and start it in its
//! container's cgroup, `CLONE_INTO_CGROUP`: moving a process into a cgroup afterwards, by
//! writing `cgroup.procs`, waits for an RCU grace period, 15-20 ms in the emulated test bed).
//! Joining a PID namespace takes a short-lived thread that enters it first
//! (`setns(CLONE_NEWPID)` only changes the PID namespace of the calling thread's future
//! children); a kernel without `clone3` gets that thread and a plain fork for both kinds,
//! and the helper moves itself into its cgroup ([`Spawned::in_cgroup`]). In the child, only
//! async-signal-safe calls (`dup2`, `execve`) until the agent binary runs again as a helper
//! (`container-init`, `exec-init`).

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sched::CloneFlags;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use crate::protocol::ExitStatus;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot {what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: Errno,
    },
    #[error("cannot open the PID namespace {path}: {source}")]
    PidNs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Zygote(#[from] super::zygote::ZygoteError),
    #[error("a helper argument or path contains a NUL byte")]
    Nul,
    #[error("the spawning thread panicked")]
    Thread,
}

fn sys(what: &'static str) -> impl FnOnce(Errno) -> ProcessError {
    move |source| ProcessError::Sys { what, source }
}

/// Exit statuses of registered children, filled by the reaper thread.
#[derive(Default)]
pub struct Reaper {
    statuses: Mutex<HashMap<i32, Option<WaitStatus>>>,
    changed: Condvar,
}

impl Reaper {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Starts the thread that reaps every child of this process.
    pub fn start(self: &Arc<Self>) {
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || me.run())
            .expect("the reaper thread starts at boot");
    }

    fn run(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), None) {
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    let mut map = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(slot) = map.get_mut(&pid.as_raw()) {
                        *slot = Some(status);
                        self.changed.notify_all();
                    }
                }
                Err(Errno::EINTR) => {}
                Err(_) => {
                    // ECHILD: no children now; wait for the next registration.
                    let map = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = self.changed.wait_timeout(map, Duration::from_millis(500));
                }
            }
        }
    }

    /// Runs `spawn` (which forks) with the registry locked, and registers the child.
    pub fn register<F>(&self, spawn: F) -> Result<Pid, ProcessError>
    where
        F: FnOnce() -> Result<Pid, ProcessError>,
    {
        let mut map = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        let pid = spawn()?;
        map.insert(pid.as_raw(), None);
        self.changed.notify_all();
        Ok(pid)
    }

    /// Blocks until `pid` (a registered child) has been reaped, and forgets it.
    pub fn wait(&self, pid: Pid) -> WaitStatus {
        let mut map = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match map.get(&pid.as_raw()) {
                Some(Some(status)) => {
                    let status = *status;
                    map.remove(&pid.as_raw());
                    return status;
                }
                Some(None) => {}
                // Not registered (a bug): report it as gone rather than hang.
                None => return WaitStatus::Exited(pid, 255),
            }
            map = self.changed.wait(map).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Like [`Reaper::wait`] but gives up after `timeout`.
    pub fn wait_timeout(&self, pid: Pid, timeout: Duration) -> Option<WaitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        let mut map = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match map.get(&pid.as_raw()) {
                Some(Some(status)) => {
                    let status = *status;
                    map.remove(&pid.as_raw());
                    return Some(status);
                }
                Some(None) => {}
                None => return None,
            }
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            map = self
                .changed
                .wait_timeout(map, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The shell convention for a wait status.
pub fn exit_status(status: WaitStatus) -> ExitStatus {
    match status {
        WaitStatus::Exited(_, code) => ExitStatus::exited(code),
        WaitStatus::Signaled(_, signal, _) => ExitStatus::signaled(signal as i32),
        // Stopped/continued are not asked for; treat anything else as a failure.
        _ => ExitStatus::exited(255),
    }
}

/// Where a spawned helper's PID namespace comes from.
pub enum PidNs {
    /// A new one; the helper is its PID 1.
    New,
    /// The one of this namespace file (`/proc/PID/ns/pid`).
    Join(PathBuf),
}

/// A helper the agent started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spawned {
    pub pid: Pid,
    /// It started in the cgroup [`spawn_helper`] was given; else it has to join it itself.
    pub in_cgroup: bool,
}

/// `clone3`'s flag that starts the child in the cgroup of `clone_args.cgroup` (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Forks and executes `/proc/self/exe ARGS...` with `fds[i]` as its file descriptor `i`
/// (0, 1, 2 and the helper's pipes), in the PID namespace `pid_ns` and, where the kernel
/// can (see [`Spawned::in_cgroup`]), in the cgroup directory `cgroup`, registering the
/// child with `reaper`. The caller's ends of the fds are not touched; drop the child's
/// ends after. With a `zygote` (whose helper must be the one `args` name) a new PID
/// namespace's helper comes from it, without `execve`; if it cannot, as without one.
pub fn spawn_helper(
    reaper: &Reaper,
    pid_ns: PidNs,
    cgroup: Option<&Path>,
    zygote: Option<&super::zygote::Zygote>,
    args: &[&str],
    fds: &[&OwnedFd],
) -> Result<Spawned, ProcessError> {
    let exe = CString::new("/proc/self/exe").map_err(|_| ProcessError::Nul)?;
    let argv: Vec<CString> = args
        .iter()
        .map(|a| CString::new(*a).map_err(|_| ProcessError::Nul))
        .collect::<Result<_, _>>()?;
    // The environment of a helper: PATH only (the agent's own is the kernel's).
    let envp =
        vec![CString::new("PATH=/usr/sbin:/usr/bin:/sbin:/bin").map_err(|_| ProcessError::Nul)?];
    // The lowest free numbers, not high fixed ones: growing the descriptor table of a
    // multi-threaded process waits for an RCU grace period (tens of ms in the test bed).
    let high = copies_above(fds, fds.len()).map_err(sys("dup a fd"))?;
    let ns_file = match &pid_ns {
        PidNs::New => None,
        PidNs::Join(path) => Some(File::open(path).map_err(|source| ProcessError::PidNs {
            path: path.clone(),
            source,
        })?),
    };
    // Opened here: the child starts in it, and a missing cgroup is the caller's error.
    let cgroup_dir = cgroup
        .map(|dir| {
            File::options()
                .read(true)
                .custom_flags(libc::O_DIRECTORY)
                .open(dir)
                .map_err(|source| ProcessError::Cgroup {
                    path: dir.to_path_buf(),
                    source,
                })
        })
        .transpose()?;
    let cgroup_fd = cgroup_dir.as_ref().map(AsRawFd::as_raw_fd);
    let raw_fds: Vec<RawFd> = high.iter().map(AsRawFd::as_raw_fd).collect();
    let child = Child {
        exe: &exe,
        argv: &argv,
        envp: &envp,
        fds: &raw_fds,
    };
    let mut in_cgroup = false;
    let pid = reaper.register(|| {
        if ns_file.is_none()
            && let Some(zygote) = zygote
        {
            let dir = cgroup_dir.as_ref().map(|f| f.as_fd());
            match zygote.spawn(libc::CLONE_NEWPID as u64, fds, dir) {
                Ok(pid) => {
                    in_cgroup = dir.is_some();
                    return Ok(pid);
                }
                Err(e) if e.made_nothing() => {
                    eprintln!("peapod-agent: {e}; executing the helper instead")
                }
                // A helper may run that nobody registered: no second one beside it.
                Err(e) => return Err(ProcessError::Zygote(e)),
            }
        }
        if ns_file.is_none()
            && let Ok(pid) = child.clone3(libc::CLONE_NEWPID as u64, cgroup_fd)
        {
            in_cgroup = cgroup_fd.is_some();
            return Ok(pid);
        }
        let (pid, placed) = std::thread::scope(|s| {
            s.spawn(|| -> Result<(Pid, bool), ProcessError> {
                match &ns_file {
                    None => nix::sched::unshare(CloneFlags::CLONE_NEWPID)
                        .map_err(sys("create a PID namespace"))?,
                    Some(f) => {
                        nix::sched::setns(f.as_fd(), CloneFlags::CLONE_NEWPID)
                            .map_err(sys("join the PID namespace"))?;
                        if let Ok(pid) = child.clone3(0, cgroup_fd) {
                            return Ok((pid, cgroup_fd.is_some()));
                        }
                    }
                }
                // No clone3 here (or not with a cgroup: before Linux 5.7): a plain fork,
                // and the helper joins its cgroup itself.
                Ok((child.fork()?, false))
            })
            .join()
            .map_err(|_| ProcessError::Thread)?
        })?;
        in_cgroup = placed;
        Ok(pid)
    })?;
    Ok(Spawned { pid, in_cgroup })
}

/// What a helper's child process executes, prepared before the fork: between the fork and
/// `execve` the child of a multi-threaded process may not allocate.
struct Child<'a> {
    exe: &'a CString,
    argv: &'a [CString],
    envp: &'a [CString],
    /// Mapped to 0.. in the child.
    fds: &'a [RawFd],
}

impl Child<'_> {
    /// `clone3` with `flags` and no new stack: the child goes on, as after a fork, on a
    /// copy of this thread's stack; with `cgroup`, it starts in that cgroup directory.
    fn clone3(&self, flags: u64, cgroup: Option<RawFd>) -> Result<Pid, Errno> {
        let mut args = CloneArgs::forking(flags, cgroup)?;
        // SAFETY: the child only calls `exec`, which makes async-signal-safe calls on values
        // prepared before the clone, and never returns here.
        match unsafe { clone3(&mut args) }? {
            None => self.exec(),
            Some(pid) => Ok(pid),
        }
    }

    /// fork(2), then [`Child::exec`] in the child.
    fn fork(&self) -> Result<Pid, ProcessError> {
        // SAFETY: the child only calls `exec`, which makes async-signal-safe calls on
        // values prepared before the fork and never returns.
        match unsafe { nix::unistd::fork() }.map_err(sys("fork"))? {
            ForkResult::Parent { child } => Ok(child),
            ForkResult::Child => self.exec(),
        }
    }

    /// In the child: maps the fds to 0.., unblocks every signal and executes the helper.
    fn exec(&self) -> ! {
        // Only async-signal-safe calls: dup2, sigprocmask, execve and _exit, on values
        // prepared before the fork (or, for the empty signal set, built on the stack); no
        // allocation.
        for (target, fd) in self.fds.iter().enumerate() {
            // SAFETY: dup2 on descriptors this process holds; async-signal-safe.
            if unsafe { libc::dup2(*fd, target as RawFd) } < 0 {
                // SAFETY: _exit is async-signal-safe and ends the child at once.
                unsafe { libc::_exit(120) };
            }
        }
        // A helper starts with no signal blocked, whatever the agent's threads block
        // (the host agent blocks SIGTERM for its own signal thread).
        let _ = nix::sys::signal::sigprocmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&nix::sys::signal::SigSet::empty()),
            None,
        );
        let _ = nix::unistd::execve(self.exe, self.argv, self.envp);
        // SAFETY: as above.
        unsafe { libc::_exit(121) }
    }
}

/// Copies of `fds`, close-on-exec, each numbered `lowest` or above (the lowest such free
/// number): mapping copy `i` onto number `i < lowest` with `dup2` then never maps a
/// descriptor onto itself (which would keep its close-on-exec flag).
pub(super) fn copies_above(fds: &[&OwnedFd], lowest: usize) -> Result<Vec<OwnedFd>, Errno> {
    let lowest = RawFd::try_from(lowest).map_err(|_| Errno::EMFILE)?;
    fds.iter()
        .map(|fd| {
            let raw = fcntl(*fd, FcntlArg::F_DUPFD_CLOEXEC(lowest))?;
            // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(raw) })
        })
        .collect()
}

/// `clone3(args)` with no new stack: `Some(pid)` in the parent, `None` in the child, which
/// goes on as after fork(2), on its own copy of this process's memory.
///
/// # Safety
/// As for fork(2): in a multi-threaded process the child may make only async-signal-safe
/// calls; it must not return into code that expects to run once (exit or exec instead).
/// `args` must not ask for `CLONE_VM` or a stack.
pub(super) unsafe fn clone3(args: &mut CloneArgs) -> Result<Option<Pid>, Errno> {
    // SAFETY: `args` is a valid clone_args of the size passed and lives across the call;
    // the caller answers for the child.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        0 => Ok(None),
        pid if pid > 0 => Ok(Some(Pid::from_raw(
            libc::pid_t::try_from(pid).map_err(|_| Errno::EOVERFLOW)?,
        ))),
        _ => Err(Errno::last()),
    }
}

/// The kernel's `struct clone_args` (`linux/sched.h`), as far as `cgroup` (its size then
/// is CLONE_ARGS_SIZE_VER2, 88 bytes).
#[repr(C)]
#[derive(Default)]
pub(super) struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

impl CloneArgs {
    /// A `clone3` that forks: `flags`, `SIGCHLD` to the parent at the child's exit, no new
    /// stack; with `cgroup` (a cgroup directory's descriptor), the child starts in that
    /// cgroup (`CLONE_INTO_CGROUP`).
    pub fn forking(flags: u64, cgroup: Option<RawFd>) -> Result<CloneArgs, Errno> {
        let mut args = CloneArgs {
            flags,
            exit_signal: libc::SIGCHLD as u64,
            ..CloneArgs::default()
        };
        if let Some(fd) = cgroup {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = u64::try_from(fd).map_err(|_| Errno::EBADF)?;
        }
        Ok(args)
    }
}

/// Where this process's command line lies (the kernel's `arg_start`..`arg_end`), for
/// renaming it ([`ArgArea::rename`]): the same in its forked children, which may then
/// rename themselves without reading it again.
#[derive(Debug, Clone, Copy)]
pub struct ArgArea(Option<(usize, usize)>);

impl ArgArea {
    pub fn of_this_process() -> ArgArea {
        let area = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| arg_area(&stat))
            .and_then(|(start, end)| Some((start, end.checked_sub(start).filter(|l| *l > 0)?)));
        ArgArea(area)
    }

    /// Renames the process it was read in (or a fork of it): `comm` (what `ps` shows, at
    /// most 15 bytes) and its command line (`/proc/PID/cmdline`) to `argv`, NUL-separated
    /// arguments, written over the original's bytes: cut to their length, the rest NULs.
    /// For a forked process that goes on as something else (it keeps its parent's command
    /// line otherwise). Best effort.
    pub fn rename(self, argv: &[u8], comm: &std::ffi::CStr) {
        let _ = nix::sys::prctl::set_name(comm);
        let Some((start, len)) = self.0 else {
            return;
        };
        // SAFETY: [start, start + len) is this process's argument area (the kernel's
        // arg_start and arg_end, from /proc/self/stat of this process or of the one it was
        // forked from, whose memory layout it copies): mapped and writable, on the initial
        // stack. Nothing in this process holds a Rust reference into it (the runtime keeps
        // raw argv pointers, read only by `std::env::args`, which a renamed process does
        // not call).
        let area = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, len) };
        let n = argv.len().min(len);
        area[..n].copy_from_slice(&argv[..n]);
        area[n..].fill(0);
        area[len - 1] = 0;
    }
}

/// `arg_start` and `arg_end` (fields 48 and 49) of a `/proc/PID/stat` text.
fn arg_area(stat: &str) -> Option<(usize, usize)> {
    // The fields after the command name (which may hold spaces and parentheses) start
    // with field 3.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(48 - 3);
    let start = fields.next()?.parse().ok()?;
    let end = fields.next()?.parse().ok()?;
    Some((start, end))
}

/// A pipe whose both ends close on exec.
pub fn pipe() -> Result<(OwnedFd, OwnedFd), ProcessError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("create a pipe"))
}

/// Takes a descriptor the agent passed to this helper process, marking it close-on-exec.
pub fn inherited_fd(fd: RawFd) -> Result<OwnedFd, ProcessError> {
    // SAFETY: F_GETFD only reads the descriptor's flags, whether or not it is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(ProcessError::Sys {
            what: "take an inherited fd",
            source: Errno::last(),
        });
    }
    // SAFETY: the descriptor is open (checked above): the agent dup2'd it into this helper
    // before executing it, and nothing else in this process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(sys("take an inherited fd"))?;
    Ok(owned)
}

/// A helper's status channel: a connected pair of close-on-exec Unix stream sockets that
/// carries [`super::container::HelperEvent`] lines, and, for a tty process, the pty master
/// first ([`send_fd`]).
pub fn status_channel() -> Result<(OwnedFd, OwnedFd), ProcessError> {
    let (a, b) = UnixStream::pair().map_err(|e| ProcessError::Sys {
        what: "create a socket pair",
        source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    Ok((a.into(), b.into()))
}

/// Sends one marker byte with `fd` attached (`SCM_RIGHTS`).
pub fn send_fd(sock: &impl AsRawFd, fd: &impl AsRawFd) -> std::io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
    let fds = [fd.as_raw_fd()];
    sendmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &[std::io::IoSlice::new(FD_MARKER)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map(|_| ())
    .map_err(std::io::Error::from)
}

/// The byte [`send_fd`] sends.
pub const FD_MARKER: &[u8] = b"F";

/// Receives one byte and the descriptor attached to it, if any (a helper that failed
/// before it could send one writes an event line instead: its first byte is returned).
pub fn recv_fd(sock: &impl AsRawFd) -> std::io::Result<(Option<u8>, Option<OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixAddr, recvmsg};
    let mut byte = [0u8; 1];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let msg = recvmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let got = msg.bytes;
    let mut fd = None;
    for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for raw in fds {
                // SAFETY: the kernel installed this descriptor in our table for this
                // message; nothing else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                if fd.is_none() {
                    fd = Some(owned);
                }
            }
        }
    }
    Ok(((got == 1).then_some(byte[0]), fd))
}

/// Opens a pseudo-terminal in the devpts of the calling process's mount namespace (so that
/// its slave has a name there), 80x24; returns (master, slave).
pub fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    use std::os::fd::IntoRawFd;
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname_r(&master)?;
    let slave: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&name)?
        .into();
    let size = libc::winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize that outlives the call, on a tty we own.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: into_raw_fd gave up ownership of this open descriptor to us.
    let master = unsafe { OwnedFd::from_raw_fd(master.into_raw_fd()) };
    Ok((master, slave))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn wait_statuses_follow_the_shell_convention() {
        let pid = Pid::from_raw(5);
        assert_eq!(
            exit_status(WaitStatus::Exited(pid, 7)),
            ExitStatus::exited(7)
        );
        let killed = exit_status(WaitStatus::Signaled(pid, Signal::SIGKILL, false));
        assert_eq!(killed.code, 137);
        assert_eq!(killed.signal, Some(9));
    }

    #[test]
    fn a_pty_master_travels_over_the_status_channel() {
        let (a, b) = status_channel().unwrap();
        let (master, slave) = open_pty().unwrap();
        send_fd(&a, &master).unwrap();
        drop(master);
        let (byte, fd) = recv_fd(&b).unwrap();
        assert_eq!(byte, Some(FD_MARKER[0]));
        let master = std::fs::File::from(fd.unwrap());
        let mut s = std::fs::File::from(slave);
        std::io::Write::write_all(&mut s, b"x").unwrap();
        let mut buf = [0u8; 1];
        std::io::Read::read_exact(&mut &master, &mut buf).unwrap();
        assert_eq!(&buf, b"x");
        // A helper that writes a line instead: the first byte comes back, no fd.
        std::io::Write::write_all(&mut std::fs::File::from(a), b"{").unwrap();
        let (byte, fd) = recv_fd(&b).unwrap();
        assert_eq!((byte, fd.is_none()), (Some(b'{'), true));
    }

    #[test]
    fn registered_statuses_are_kept_until_waited_for() {
        let reaper = Reaper::new();
        let pid = reaper.register(|| Ok(Pid::from_raw(42))).unwrap();
        {
            let mut map = reaper.statuses.lock().unwrap();
            *map.get_mut(&42).unwrap() = Some(WaitStatus::Exited(pid, 3));
        }
        assert_eq!(
            reaper.wait_timeout(pid, Duration::from_millis(10)),
            Some(WaitStatus::Exited(pid, 3))
        );
        assert_eq!(reaper.wait_timeout(pid, Duration::from_millis(10)), None);
        let other = reaper.register(|| Ok(Pid::from_raw(43))).unwrap();
        assert_eq!(reaper.wait_timeout(other, Duration::from_millis(10)), None);
    }

    /// Runs `sh -c script` as a helper child started by `start`, its stdout a pipe;
    /// returns what it wrote and its wait status.
    fn run_child(
        script: &str,
        start: impl Fn(&Child) -> Result<Pid, Errno>,
    ) -> Result<(String, WaitStatus), Errno> {
        let exe = CString::new("/bin/sh").unwrap();
        let argv = ["sh", "-c", script].map(|a| CString::new(a).unwrap());
        let envp = [CString::new("PATH=/usr/bin:/bin").unwrap()];
        let (out_r, out_w) = pipe().unwrap();
        let null = OwnedFd::from(File::open("/dev/null").unwrap());
        // Above the targets 0..3, as spawn_helper makes them.
        let high = copies_above(&[&null, &out_w, &out_w], 3).unwrap();
        let raw: Vec<RawFd> = high.iter().map(AsRawFd::as_raw_fd).collect();
        let child = Child {
            exe: &exe,
            argv: &argv,
            envp: &envp,
            fds: &raw,
        };
        let pid = start(&child)?;
        drop((high, out_w));
        let mut out = String::new();
        std::io::Read::read_to_string(&mut File::from(out_r), &mut out).unwrap();
        Ok((out, waitpid(pid, None).unwrap()))
    }

    #[test]
    fn a_cloned_helper_child_gets_its_descriptors_and_runs() {
        let forked = run_child("echo forked; exit 7", |c| {
            c.fork().map_err(|e| match e {
                ProcessError::Sys { source, .. } => source,
                _ => Errno::EIO,
            })
        })
        .unwrap();
        assert_eq!(forked.0, "forked\n");
        assert!(
            matches!(forked.1, WaitStatus::Exited(_, 7)),
            "{:?}",
            forked.1
        );
        match run_child("echo cloned; exit 9", |c| c.clone3(0, None)) {
            Ok((out, status)) => {
                assert_eq!(out, "cloned\n");
                assert!(matches!(status, WaitStatus::Exited(_, 9)), "{status:?}");
            }
            // A sandbox (a container's seccomp profile) without clone3: spawn_helper forks.
            Err(Errno::ENOSYS | Errno::EPERM) => {}
            Err(e) => panic!("clone3: {e}"),
        }
    }

    #[test]
    fn the_argument_area_is_read_after_the_command_name() {
        let fields: Vec<String> = (3..=52).map(|i| (i * 10).to_string()).collect();
        let stat = format!("77 (a (b) c) {}", fields.join(" "));
        assert_eq!(arg_area(&stat), Some((480, 490)));
        assert_eq!(arg_area("77 (x) R 1 2"), None);
    }

    /// In a child of this test process: its /proc/self/cmdline and comm read as renamed.
    #[test]
    fn a_renamed_process_shows_its_new_command_line() {
        // SAFETY: the child only reads files and renames itself (glibc's fork leaves the
        // allocator usable), then _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            ForkResult::Child => {
                ArgArea::of_this_process().rename(b"peapod-agent\0renamed\0", c"renamed-test");
                let line = std::fs::read("/proc/self/cmdline").unwrap_or_default();
                let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
                let ok = line.starts_with(b"peapod-agent\0renamed\0")
                    && line.iter().skip(22).all(|b| *b == 0)
                    && comm.trim() == "renamed-test";
                // SAFETY: _exit ends the forked child without running the harness's code.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            ForkResult::Parent { child } => {
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            }
        }
    }

    #[test]
    fn clone_args_are_the_kernels_second_version() {
        // CLONE_ARGS_SIZE_VER2 in linux/sched.h: the first with `cgroup`.
        assert_eq!(std::mem::size_of::<CloneArgs>(), 88);
    }
}
