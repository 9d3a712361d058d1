//! Starting one of peapod's own long-lived processes (a pod's supervisor, a host pod's
//! agent) as a fork of the process that starts it, without `execve`.
//!
//! Executing `peapod` again costs its dynamic loading, relocations and argument parsing:
//! about 20-30 ms each in the test bed's emulated L1, several times on the path of a
//! container-runtime pod's start. A forked child runs the same code at once. That is only
//! sound while the parent has a single thread: a child forked from a multi-threaded
//! process inherits the locks other threads held (allocator, stdio, logging) and may run
//! only async-signal-safe code until it executes a program. So [`fork_daemon`] forks only
//! when [`single_threaded`] says so; callers start the program the classic way otherwise.
//!
//! The child is set up as an exec'd one would be: stdio from the given descriptors, every
//! other descriptor closed but those it keeps (a forked child inherits them all, close-on-
//! exec or not: an inherited lock descriptor would hold a lock its parent released), no
//! signal blocked, caught signals back to their default, optionally a session of its own
//! and a death signal. Its body's return value is its exit status; it never returns into
//! its parent's code, not even by a panic.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::unistd::{ForkResult, Pid};

/// Whether this process has exactly one thread (`/proc/self/task`), the condition for a
/// forked child to run arbitrary code. Unknown counts as no.
pub fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.take(2).count() == 1)
}

/// How a forked child starts.
pub struct DaemonSetup {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Descriptors the child keeps, at their numbers; every other one above 2 is closed.
    pub keep: Vec<RawFd>,
    /// `setsid`: no terminal's signals or hangup reach it.
    pub new_session: bool,
    /// `PR_SET_PDEATHSIG`: sent to the child when the thread that forked it ends.
    pub death_signal: Option<Signal>,
    /// Its name in `ps -e` and `top` (`PR_SET_NAME`, 15 bytes at most): a forked child
    /// keeps its parent's command line, this says what it is.
    pub name: Option<&'static std::ffi::CStr>,
}

impl DaemonSetup {
    /// stdin and stdout on `/dev/null`, stderr on `log`; no other descriptor, no session
    /// or death signal of its own (set the fields for those).
    pub fn with_log(log: &std::fs::File) -> io::Result<Self> {
        let null = || std::fs::File::open("/dev/null").map(OwnedFd::from);
        Ok(DaemonSetup {
            stdin: null()?,
            stdout: null()?,
            stderr: log.try_clone()?.into(),
            keep: Vec::new(),
            new_session: false,
            death_signal: None,
            name: None,
        })
    }
}

/// A forked peapod verb's exit status, as `main` gives it: 0, or its error on stderr and
/// [`crate::cli::EXIT_PEAPOD_ERROR`].
pub fn exit_status<E: std::fmt::Display>(result: Result<(), E>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("peapod: error: {e}");
            crate::cli::EXIT_PEAPOD_ERROR.into()
        }
    }
}

/// Forks a child that runs `body` set up by `setup`, when this process is single-threaded;
/// `Ok(None)` (nothing forked) when it is not.
pub fn fork_daemon(
    setup: DaemonSetup,
    body: impl FnOnce() -> i32,
) -> io::Result<Option<ForkedChild>> {
    if !single_threaded() || std::env::var_os("PEAPOD_FORK").is_some_and(|v| v == "0") {
        return Ok(None);
    }
    // SAFETY: this process has one thread (checked above, and nothing here starts one).
    unsafe { fork_unchecked(setup, body) }.map(Some)
}

/// [`fork_daemon`] without its check.
///
/// # Safety
/// No other thread of this process may hold a lock the child's code takes (allocator,
/// stdio, logging, the caller's own): in practice, this process has one thread.
unsafe fn fork_unchecked(
    setup: DaemonSetup,
    body: impl FnOnce() -> i32,
) -> io::Result<ForkedChild> {
    let parent = Pid::this();
    // SAFETY: the caller guarantees what the child needs (see above).
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        ForkResult::Parent { child } => Ok(ForkedChild {
            pid: child,
            status: None,
        }),
        ForkResult::Child => {
            let code = match prepare_child(&setup, parent) {
                Ok(()) => {
                    drop(setup);
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101)
                }
                Err(e) => {
                    eprintln!("peapod: setting up a forked child: {e}");
                    126
                }
            };
            std::process::exit(code)
        }
    }
}

/// The child's side of [`fork_daemon`], before its body runs.
fn prepare_child(setup: &DaemonSetup, parent: Pid) -> io::Result<()> {
    if let Some(signal) = setup.death_signal {
        nix::sys::prctl::set_pdeathsig(signal)?;
        // The parent may have ended before the death signal was armed.
        if nix::unistd::getppid() != parent {
            return Err(io::Error::other(
                "the parent ended before the child started",
            ));
        }
    }
    if setup.new_session {
        nix::unistd::setsid()?;
    }
    if let Some(name) = setup.name {
        nix::sys::prctl::set_name(name)?;
    }
    for (fd, target) in [(&setup.stdin, 0), (&setup.stdout, 1), (&setup.stderr, 2)] {
        // SAFETY: dup2 onto 0-2 of descriptors this child owns; nothing else in this
        // single-threaded child holds those numbers as objects that would be confused.
        if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let mut keep = setup.keep.clone();
    keep.extend([
        setup.stdin.as_raw_fd(),
        setup.stdout.as_raw_fd(),
        setup.stderr.as_raw_fd(),
    ]);
    close_all_but(&keep)?;
    for n in 1..32 {
        let Ok(signal) = Signal::try_from(n) else {
            continue;
        };
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: querying a disposition by setting it and restoring what it was; the child
        // has one thread and runs no handler meanwhile (every signal is blocked below only
        // after, but a caught signal would run the parent's handler either way).
        let previous = unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) }?;
        if matches!(previous, SigHandler::SigIgn) {
            // SAFETY: as above; an ignored signal stays ignored, as across exec.
            unsafe { nix::sys::signal::signal(signal, SigHandler::SigIgn) }?;
        }
    }
    unblock_all_signals()?;
    Ok(())
}

/// Unblocks every signal: what a child of peapod starts with, whatever mask its parent's
/// threads set up for forwarding. Async-signal-safe (one `sigprocmask`), so it may run
/// between `fork` and `exec` (`pre_exec`).
pub fn unblock_all_signals() -> nix::Result<()> {
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
}

/// Lowers every thread of this process to the lowest CPU priority (nice 19), for a process
/// about to exit that nobody waits for (a host pod's agent and its supervisor, their work
/// done): the kernel's teardown of it (its memory, its threads, its mount namespace:
/// milliseconds in the emulated test bed) then yields the CPU to the processes somebody
/// does wait for, a `peapod run --rm` that is removing the pod and exiting. (Also
/// container-init once it has reported its process's end, and the zygote.)
pub fn lower_priority_for_exit() {
    // This thread first: all a single-threaded process needs, /proc or not.
    // SAFETY: setpriority takes plain integers; lowering a priority needs no privilege.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    let tids = tasks
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::id_t>().ok());
    for tid in tids {
        // SAFETY: setpriority takes plain integers; a thread gone since gives ESRCH, and
        // lowering a priority needs no privilege.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 19) };
    }
}

/// Closes every descriptor above 2 but `keep`.
fn close_all_but(keep: &[RawFd]) -> io::Result<()> {
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closing by number in a single-threaded child that holds no object for
            // these descriptors it will use again (the directory's own descriptor, listed
            // too, is closed already and gives EBADF).
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// A child made by [`fork_daemon`], with `std::process::Child`'s methods.
#[derive(Debug)]
pub struct ForkedChild {
    pid: Pid,
    status: Option<ExitStatus>,
}

impl ForkedChild {
    pub fn id(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    fn reap(&mut self, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let mut raw = 0;
        loop {
            // SAFETY: waitpid on this process's own child, with a valid status pointer.
            let pid = unsafe { libc::waitpid(self.pid.as_raw(), &mut raw, flags) };
            if pid < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if pid == 0 {
                return Ok(None);
            }
            let status = ExitStatus::from_raw(raw);
            self.status = Some(status);
            return Ok(Some(status));
        }
    }

    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.reap(libc::WNOHANG)
    }

    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        self.reap(0)?
            .ok_or_else(|| io::Error::other("waitpid returned no status"))
    }

    /// SIGKILL, unless it has been reaped already.
    pub fn kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        kill(self.pid, Signal::SIGKILL).map_err(io::Error::from)
    }
}

/// A child process started either way: executed (`std::process::Child`) or forked.
#[derive(Debug)]
pub enum ChildProcess {
    Executed(Child),
    Forked(ForkedChild),
}

impl ChildProcess {
    pub fn id(&self) -> u32 {
        match self {
            ChildProcess::Executed(c) => c.id(),
            ChildProcess::Forked(c) => c.id(),
        }
    }

    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        match self {
            ChildProcess::Executed(c) => c.try_wait(),
            ChildProcess::Forked(c) => c.try_wait(),
        }
    }

    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            ChildProcess::Executed(c) => c.wait(),
            ChildProcess::Forked(c) => c.wait(),
        }
    }

    pub fn kill(&mut self) -> io::Result<()> {
        match self {
            ChildProcess::Executed(c) => c.kill(),
            ChildProcess::Forked(c) => c.kill(),
        }
    }

    /// Blocks until the child has exited or `timeout` passes, without reaping it (the next
    /// [`ChildProcess::try_wait`] does): on its pidfd, which becomes readable when the
    /// process exits, rather than waking every few milliseconds to look.
    pub fn wait_exited(&self, timeout: Duration) -> io::Result<()> {
        let Some(pidfd) = pidfd_open(self.id()) else {
            // Linux before 5.3: look again in a moment.
            std::thread::sleep(timeout.min(EXIT_POLL));
            return Ok(());
        };
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// How often [`ChildProcess::wait_exited`] looks where the kernel has no pidfds.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// A pidfd for `pid` (a child of this process, so its number is not reused before it is
/// reaped), or `None` where the kernel has none.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel just gave this process the descriptor; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn null() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn waiting_for_an_exit_returns_when_the_child_ends_and_does_not_reap_it() {
        let mut running = ChildProcess::Executed(
            std::process::Command::new("sleep")
                .arg("10")
                .spawn()
                .unwrap(),
        );
        running
            .wait_exited(std::time::Duration::from_millis(30))
            .unwrap();
        assert!(running.try_wait().unwrap().is_none(), "it still runs");
        running.kill().unwrap();
        let started = std::time::Instant::now();
        running
            .wait_exited(std::time::Duration::from_secs(20))
            .unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        let status = running
            .try_wait()
            .unwrap()
            .expect("exited, reaped only now");
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    /// The test harness runs tests on threads: a forked child is refused there, and the
    /// caller falls back to executing.
    #[test]
    fn a_multi_threaded_process_does_not_fork() {
        let handle = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(1)));
        assert!(!single_threaded());
        let setup = DaemonSetup {
            stdin: null(),
            stdout: null(),
            stderr: null(),
            keep: Vec::new(),
            new_session: false,
            death_signal: None,
            name: None,
        };
        assert!(fork_daemon(setup, || 0).unwrap().is_none());
        handle.join().unwrap();
    }

    /// In a re-run of this test binary with one thread: the child's status, its stdout,
    /// its kept and closed descriptors, and its signal mask are as an exec'd child's.
    #[test]
    fn a_forked_child_keeps_only_what_it_is_given() {
        const NAME: &str = "runtime::fork::tests::a_forked_child_keeps_only_what_it_is_given";
        const CHILD: &str = "PEAPOD_FORK_TEST_CHILD";
        if std::env::var(CHILD).is_ok() {
            let (r, w) = nix::unistd::pipe().unwrap();
            let (kept_r, kept_w) = nix::unistd::pipe().unwrap();
            let (_other_r, other_w) = nix::unistd::pipe().unwrap();
            let other = other_w.as_raw_fd();
            let kept = kept_w.as_raw_fd();
            let mut blocked = SigSet::empty();
            blocked.add(Signal::SIGUSR1);
            blocked.thread_block().unwrap();
            let setup = DaemonSetup {
                stdin: null(),
                stdout: w,
                stderr: null(),
                keep: vec![kept],
                new_session: true,
                death_signal: Some(Signal::SIGTERM),
                name: Some(c"fork-test"),
            };
            let body = move || {
                // SAFETY: F_GETFD only asks whether the number is an open descriptor.
                let open = |fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
                let mask = SigSet::thread_get_mask().unwrap();
                let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
                println!(
                    "kept={} other={} usr1-blocked={} own-session={} name={}",
                    open(kept),
                    open(other),
                    mask.contains(Signal::SIGUSR1),
                    nix::unistd::getsid(None).unwrap() == Pid::this(),
                    comm.trim()
                );
                7
            };
            // SAFETY: the harness's main thread only waits for this test's result, holding
            // no lock the child takes (libtest runs even a single test on a thread).
            let child = unsafe { fork_unchecked(setup, body) };
            let mut child = child.unwrap();
            drop(kept_w);
            drop(other_w);
            let mut out = String::new();
            std::fs::File::from(r).read_to_string(&mut out).unwrap();
            drop(kept_r);
            let status = child.wait().unwrap();
            assert_eq!(status.code(), Some(7));
            assert_eq!(
                out.trim(),
                "kept=true other=false usr1-blocked=false own-session=true name=fork-test"
            );
            println!("checked");
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("checked"), "{text}");
    }
}
