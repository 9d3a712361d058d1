//! A pre-forked copy of the agent that starts `container-init` without executing the agent
//! binary again.
//!
//! Every helper the agent starts is otherwise a fork of the (multi-threaded) agent that
//! executes `/proc/self/exe`: the kernel's `execve`, the dynamic loader and the runtime's
//! start, 8-9 ms of a container's start in the emulated test bed. The zygote is forked
//! while the agent still has one thread, so that it may fork again freely; asked for a
//! container-init, it `clone3`s a child straight into the container's new PID namespace
//! (`CLONE_NEWPID`; and into a cgroup where asked, `CLONE_INTO_CGROUP`: container-init is
//! not, it clones the container's process into the container's cgroup itself) as a child
//! of the agent (`CLONE_PARENT`: the agent's reaper reaps it, as any helper), maps the
//! helper's descriptors to 0.., and runs [`super::container::container_init_main`] there.
//!
//! The agent asks on a `SOCK_SEQPACKET` pair: one message with the helper's descriptors
//! (`SCM_RIGHTS`; a cgroup directory last, where asked) and the clone flags, answered
//! with the child's PID or the error number. The zygote ends when the agent closes its end
//! or dies (`PR_SET_PDEATHSIG`). Where the zygote made no child (the request did not reach
//! it, or its clone failed), the agent falls back to its usual fork and exec
//! ([`super::process::spawn_helper`]); where its answer is lost, the container fails.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::unistd::Pid;

use super::process::ArgArea;

/// The most descriptors a helper gets (container-init's seven); a request carries one
/// more where the helper is cloned into a cgroup: that cgroup's directory.
const MAX_FDS: usize = 7;

#[derive(Debug, thiserror::Error)]
pub enum ZygoteError {
    /// The request did not reach the zygote: no child was made.
    #[error("the zygote: send a request: {0}")]
    NotSent(#[source] Errno),
    /// The zygote could not make the child.
    #[error("the zygote: clone3: {0}")]
    Clone(#[source] Errno),
    /// No answer: whether a child was made is unknown.
    #[error("the zygote: read its answer: {0}")]
    NoAnswer(#[source] Errno),
    #[error("the zygote answered {0} bytes, not a PID")]
    Answer(usize),
    #[error("the zygote: {what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: Errno,
    },
}

impl ZygoteError {
    /// Whether no child was made, so that the caller may start the helper another way.
    pub fn made_nothing(&self) -> bool {
        matches!(self, ZygoteError::NotSent(_) | ZygoteError::Clone(_))
    }
}

fn sys(what: &'static str) -> impl FnOnce(Errno) -> ZygoteError {
    move |source| ZygoteError::Sys { what, source }
}

/// The agent's end of a running zygote.
pub struct Zygote {
    /// One request at a time.
    sock: Mutex<OwnedFd>,
}

impl Zygote {
    /// Forks the zygote, whose children run `helper` (their exit status is its return
    /// value). Only sound while this process has a single thread: the zygote, and every
    /// child it forks, go on running this process's code.
    pub fn start(helper: fn() -> i32) -> Result<Zygote, ZygoteError> {
        let (agent_end, zygote_end) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(sys("socketpair"))?;
        // SAFETY: the caller guarantees this process has one thread, so the child may run
        // any code; it never returns into the caller's (it exits from `serve`).
        match unsafe { nix::unistd::fork() }.map_err(sys("fork"))? {
            nix::unistd::ForkResult::Child => {
                drop(agent_end);
                let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
                // Not the command line of whoever forked the agent (a CLI's, `-e` values
                // and all), which its children would show in their containers.
                let area = ArgArea::of_this_process();
                area.rename(b"peapod-agent\0zygote\0", c"pod-zygote");
                serve(&zygote_end, helper, area);
                crate::runtime::fork::lower_priority_for_exit();
                std::process::exit(0)
            }
            nix::unistd::ForkResult::Parent { .. } => Ok(Zygote {
                sock: Mutex::new(agent_end),
            }),
        }
    }

    /// Starts a child running the helper with `fds[i]` as its descriptor `i`, cloned with
    /// `flags` (and, with `cgroup`, into that cgroup directory), as a child of this
    /// process. Call it while the reaper's lock is held (see
    /// [`super::process::Reaper::register`]), as for any fork.
    pub fn spawn(
        &self,
        flags: u64,
        fds: &[&OwnedFd],
        cgroup: Option<BorrowedFd<'_>>,
    ) -> Result<Pid, ZygoteError> {
        let mut raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let fd_count = raw.len() as u64;
        if let Some(dir) = cgroup {
            raw.push(dir.as_raw_fd());
        }
        let sock = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        let request = Request {
            flags,
            fd_count,
            cgroup: cgroup.is_some(),
        }
        .encode();
        sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&request)],
            &[ControlMessage::ScmRights(&raw)],
            // A dead zygote is an error here, not a SIGPIPE.
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(ZygoteError::NotSent)?;
        let mut answer = [0u8; 8];
        let n = nix::sys::socket::recv(sock.as_raw_fd(), &mut answer, MsgFlags::empty())
            .map_err(ZygoteError::NoAnswer)?;
        if n != answer.len() {
            return Err(ZygoteError::Answer(n));
        }
        match i64::from_le_bytes(answer) {
            pid if pid > 0 => Ok(Pid::from_raw(pid as libc::pid_t)),
            errno => Err(ZygoteError::Clone(Errno::from_raw(
                i32::try_from(-errno).unwrap_or(libc::EIO),
            ))),
        }
    }
}

/// One request: clone flags, how many helper descriptors come, and whether the cgroup
/// directory follows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    flags: u64,
    fd_count: u64,
    cgroup: bool,
}

impl Request {
    const LEN: usize = 17;

    fn encode(self) -> [u8; Self::LEN] {
        let mut bytes = [0u8; Self::LEN];
        bytes[..8].copy_from_slice(&self.flags.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.fd_count.to_le_bytes());
        bytes[16] = u8::from(self.cgroup);
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<Request> {
        let bytes: &[u8; Self::LEN] = bytes.try_into().ok()?;
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(w)
        };
        Some(Request {
            flags: word(0),
            fd_count: word(8),
            cgroup: bytes[16] == 1,
        })
    }
}

/// The zygote's loop: one child per request, until the agent's end closes.
fn serve(sock: &OwnedFd, helper: fn() -> i32, area: ArgArea) {
    loop {
        let mut bytes = [0u8; Request::LEN];
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS + 1]);
        let mut iov = [IoSliceMut::new(&mut bytes)];
        let Ok(msg) = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) else {
            return;
        };
        if msg.bytes == 0 {
            return;
        }
        let got = msg.bytes;
        let mut fds: Vec<OwnedFd> = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for cmsg in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = cmsg {
                    // SAFETY: the kernel installed these descriptors in this process for
                    // this message; nothing else owns them.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
        }
        let answer = match Request::decode(&bytes[..got]) {
            Some(request) => clone_helper(request, &fds, helper, area),
            None => -(libc::EINVAL as i64),
        };
        drop(fds);
        if nix::sys::socket::send(
            sock.as_raw_fd(),
            &answer.to_le_bytes(),
            MsgFlags::MSG_NOSIGNAL,
        )
        .is_err()
        {
            return;
        }
    }
}

/// Clones the helper's process for `request` with the received `fds`: its PID, or the
/// negated error number.
fn clone_helper(request: Request, fds: &[OwnedFd], helper_fn: fn() -> i32, area: ArgArea) -> i64 {
    let helper_fds = usize::try_from(request.fd_count).unwrap_or(usize::MAX);
    let wanted = helper_fds.saturating_add(usize::from(request.cgroup));
    if wanted != fds.len() || helper_fds > MAX_FDS {
        return -(libc::EBADF as i64);
    }
    let cgroup = request.cgroup.then(|| fds[helper_fds].as_raw_fd());
    let flags = request.flags | libc::CLONE_PARENT as u64;
    let mut args = match super::process::CloneArgs::forking(flags, cgroup) {
        Ok(args) => args,
        Err(e) => return -(e as i64),
    };
    // With CLONE_PARENT the child's exit signal is the zygote's own (SIGCHLD).
    args.exit_signal = 0;
    let helper: Vec<&OwnedFd> = fds[..helper_fds].iter().collect();
    let high = match super::process::copies_above(&helper, MAX_FDS) {
        Ok(high) => high,
        Err(e) => return -(e as i64),
    };
    // SAFETY: this process (the zygote) is single-threaded, so the child may run any code;
    // it never returns here (it exits from `run_helper`).
    match unsafe { super::process::clone3(&mut args) } {
        Ok(None) => run_helper(&high, helper_fn, area),
        Ok(Some(pid)) => i64::from(pid.as_raw()),
        Err(e) => -(e as i64),
    }
}

/// In the cloned child: descriptors 0.. from `fds`, every other one closed, no signal
/// blocked; then the helper, whose return value is the exit status.
fn run_helper(fds: &[OwnedFd], helper: fn() -> i32, area: ArgArea) -> ! {
    for (target, fd) in fds.iter().enumerate() {
        // SAFETY: dup2 onto a number this process may use; `fd` is open.
        if unsafe { libc::dup2(fd.as_raw_fd(), target as RawFd) } < 0 {
            std::process::exit(120);
        }
    }
    // Everything else the zygote held (its socket, the high copies) goes.
    // SAFETY: close_range on numbers from fds.len() up; nothing above is used here.
    if unsafe { libc::syscall(libc::SYS_close_range, fds.len() as u32, u32::MAX, 0u32) } < 0 {
        std::process::exit(120);
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    // As an executed helper reads in /proc/PID/cmdline (the container's PID 1 shows it).
    area.rename(b"peapod-agent\0container-init\0", c"container-init");
    std::process::exit(helper())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn requests_read_back_as_written_and_short_ones_are_refused() {
        let r = Request {
            flags: libc::CLONE_NEWPID as u64,
            fd_count: 6,
            cgroup: true,
        };
        assert_eq!(Request::decode(&r.encode()), Some(r));
        assert_eq!(Request::decode(&r.encode()[..10]), None);
    }

    /// What the zygote's children run in the test below: read fd 0, write it to fd 1
    /// with a suffix, exit 7.
    fn echo_helper() -> i32 {
        let mut input = String::new();
        // SAFETY: the zygote mapped the request's descriptors to 0 and 1; nothing else in
        // this child owns them.
        let (mut stdin, mut stdout) =
            unsafe { (std::fs::File::from_raw_fd(0), std::fs::File::from_raw_fd(1)) };
        let _ = stdin.read_to_string(&mut input);
        let _ = write!(stdout, "{input}, from the zygote's child");
        7
    }

    /// Unprivileged: no new PID namespace and no cgroup, but the descriptors, the parent
    /// (this process) and the exit status as in the agent. The harness's threads make
    /// the fork unsound only for code that takes locks another thread may hold; the
    /// zygote and its child here only use their own.
    #[test]
    fn a_child_gets_its_descriptors_and_is_this_process_s_child() {
        let zygote = Zygote::start(echo_helper).unwrap();
        let (in_r, in_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let pid = zygote.spawn(0, &[&in_r, &out_w], None).unwrap();
        drop((in_r, out_w));
        std::fs::File::from(in_w).write_all(b"hello").unwrap();
        let mut out = String::new();
        std::fs::File::from(out_r).read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello, from the zygote's child");
        assert_eq!(
            nix::sys::wait::waitpid(pid, None).unwrap(),
            nix::sys::wait::WaitStatus::Exited(pid, 7)
        );
        // Too many descriptors for the count it says: refused, and the zygote goes on.
        let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let refused = zygote.spawn(0, &[&null; MAX_FDS + 1], None);
        assert!(refused.is_err(), "{refused:?}");
    }
}
