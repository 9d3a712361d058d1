//! `peapod host-agent` (hidden): a host pod's agent process, the container runtime's
//! counterpart of a pod VM. It runs the guest agent's own code ([`crate::agent::server::Agent`])
//! with the pod's host [`PodLayout`], and serves the same protocol on Unix sockets in the pod's
//! run directory (see [`crate::runtime::endpoint`]).
//!
//! Before any thread starts it takes a mount namespace of its own (every mount it and its
//! containers make stays out of the host's mount table and ends with the pod), and it becomes
//! a child subreaper (processes orphaned in the pod are its to reap, as PID 1's in a VM). On a
//! host whose `/` is the initial ramfs (the test bed's L1 runs from its initramfs), where
//! `pivot_root` is refused, it first moves its root onto a bind mount of `/`, so that every
//! container still gets `pivot_root` rather than a chroot it could leave.
//!
//! When the supervisor asks it to shut down, or it gets SIGTERM (as it does when its
//! supervisor dies), it kills the pod's processes, removes the pod's cgroup
//! ([`super::leftovers`]) and exits; its answer to a shutdown comes once the cgroup is gone.
//! The pod's directories are its supervisor's (or `rm`'s) to remove.

use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};

use super::leftovers;
use crate::agent::layout::{PodLayout, PodNetns};
use crate::agent::os::{Os, RealOs};
use crate::agent::process::Reaper;
use crate::agent::server::{self, Agent};
use crate::agent::zygote::Zygote;
use crate::pod::id::PodId;
use crate::protocol::{CONTROL_PORT, STDIO_PORT};
use crate::runtime::endpoint::AgentEndpoint;

/// Where the cgroup v2 hierarchy must be mounted.
const CGROUP2_ROOT: &str = "/sys/fs/cgroup";
/// Where the agent's root is re-bound on a host that runs from its initramfs, in the pod's
/// run directory.
const BOUND_ROOT: &str = "root";

#[derive(Debug, thiserror::Error)]
pub enum HostAgentError {
    #[error(
        "this host has no cgroup v2 hierarchy at {CGROUP2_ROOT} (cgroup v1 or none): the \
         container runtime needs the unified hierarchy; boot the host with \
         systemd.unified_cgroup_hierarchy=1, or run the pod in a VM (--runtime vm)"
    )]
    NoCgroup2,
    #[error("cannot {what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> HostAgentError {
    let what = what.into();
    move |e| HostAgentError::Sys {
        what,
        source: e.into(),
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HostAgentError {
    let what = what.into();
    move |source| HostAgentError::Sys { what, source }
}

/// What `peapod host-agent` gets from the supervisor.
#[derive(Debug, Clone)]
pub struct HostAgentArgs {
    pub id: PodId,
    /// [`crate::pod::PodDirs::run`]: the pod's directory is `run_root/<id>`.
    pub run_root: PathBuf,
    /// The pod's CNI network namespace; `None`: the agent makes a loopback-only one.
    pub netns: Option<PathBuf>,
}

/// The host agent's two listening sockets, bound by its supervisor at the paths its
/// endpoint names ([`AgentEndpoint::unix_socket`]) and handed to it.
pub struct Listeners {
    pub control: UnixListener,
    pub stdio: UnixListener,
}

impl Listeners {
    /// Binds both in the pod's directory `dir` (stale sockets there are replaced).
    pub fn bind(dir: &Path) -> Result<Listeners, HostAgentError> {
        let listen = |port| {
            let path = AgentEndpoint::unix_socket(dir, port);
            let _ = std::fs::remove_file(&path);
            UnixListener::bind(&path).map_err(io(format!("listen on {}", path.display())))
        };
        Ok(Listeners {
            control: listen(CONTROL_PORT)?,
            stdio: listen(STDIO_PORT)?,
        })
    }

    /// Their descriptor numbers: control, stdio.
    pub fn raw_fds(&self) -> [RawFd; 2] {
        [self.control.as_raw_fd(), self.stdio.as_raw_fd()]
    }

    /// Takes the two descriptors a supervisor passed to an executed `peapod host-agent`.
    ///
    /// # Safety
    /// Both must be open listening Unix sockets that nothing else in this process owns.
    pub unsafe fn from_raw_fds(control: RawFd, stdio: RawFd) -> Listeners {
        // SAFETY: the caller's guarantee.
        let (control, stdio) = unsafe {
            (
                UnixListener::from_raw_fd(control),
                UnixListener::from_raw_fd(stdio),
            )
        };
        for l in [&control, &stdio] {
            let _ = nix::fcntl::fcntl(
                l,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
        }
        Listeners { control, stdio }
    }
}

/// The pod's layout as the host agent uses it.
pub fn layout(args: &HostAgentArgs) -> PodLayout {
    let mut layout = PodLayout::host(&args.id, &args.run_root);
    layout.pod_netns = match &args.netns {
        Some(path) => PodNetns::Given(path.clone()),
        None => PodNetns::Make(layout.run_dir.join("netns")),
    };
    layout
}

/// The container runtime's cgroups are cgroup v2's.
pub fn check_cgroup2() -> Result<(), HostAgentError> {
    match Path::new(CGROUP2_ROOT).join("cgroup.controllers").exists() {
        true => Ok(()),
        false => Err(HostAgentError::NoCgroup2),
    }
}

/// Runs the host agent on `listeners`; returns only on a setup error (the agent exits when
/// shut down).
pub fn run(args: HostAgentArgs, listeners: Listeners) -> Result<(), HostAgentError> {
    check_cgroup2()?;
    let layout = layout(&args);
    // Still one thread: the mount namespace is the whole process's.
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(sys("unshare the mount namespace"))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("make the mounts private"))?;
    if root_is_initramfs() {
        enter_bound_root(&layout.run_dir.join(BOUND_ROOT))?;
    }
    nix::sys::prctl::set_child_subreaper(true).map_err(sys("become a child subreaper"))?;
    // Still one thread, in the pod's mount namespace and root, no signal blocked: what a
    // container-init needs of its parent. Without a zygote, the agent executes itself.
    let zygote = if crate::runtime::fork::single_threaded() {
        match Zygote::start(crate::agent::container::container_init_main) {
            Ok(zygote) => Some(zygote),
            Err(e) => {
                eprintln!("peapod host-agent: no zygote ({e}); containers start by execve");
                None
            }
        }
    } else {
        None
    };
    // SIGTERM (also what the agent gets when its supervisor dies: PR_SET_PDEATHSIG) ends the
    // pod as a shutdown does. Blocked before any thread starts, so that only the thread
    // below takes it; the helpers the agent starts unblock everything before they exec.
    let mut term = SigSet::empty();
    term.add(Signal::SIGTERM);
    term.thread_block().map_err(sys("block SIGTERM"))?;
    let os: Arc<dyn Os> = Arc::new(RealOs);
    crate::agent::init::prepare_pod(os.as_ref(), &layout)
        .map_err(io("prepare the pod's cgroup and directories"))?;
    let reaper = Reaper::new();
    {
        let layout = layout.clone();
        std::thread::spawn(move || {
            if term.wait().is_ok() {
                eprintln!("peapod host-agent: SIGTERM: ending the pod");
                end(&layout);
            }
        });
    }
    let agent = Agent::with_zygote(os, Arc::clone(&reaper), layout.clone(), zygote);
    let Listeners { control, stdio } = listeners;
    let serve_control = {
        let agent = Arc::clone(&agent);
        move |mut conn: UnixStream| {
            // The answer to a shutdown says the pod's processes and cgroup are gone.
            let cgroup = agent.layout().cgroup_parent.clone();
            let remove_cgroup = || leftovers::remove_cgroup(&cgroup).map_err(|e| e.to_string());
            if agent.serve_control(&mut conn, &remove_cgroup) {
                end(agent.layout());
            }
        }
    };
    // The supervisor connected as soon as the sockets were bound and waits for its hello's
    // answer: that connection is served before the agent's other threads start (a thread
    // start costs about a millisecond in the test bed), which then start meanwhile. Nothing
    // the agent does for it waits on them: a process the reaper has not seen yet is reaped
    // once it runs, a stdio connection waits in its listener's backlog.
    if let Ok((first, _)) = control.accept() {
        let serve_first = serve_control.clone();
        std::thread::spawn(move || serve_first(first));
    }
    reaper.start();
    let a = Arc::clone(&agent);
    std::thread::spawn(move || server::serve(stdio, move |conn| a.serve_stream(conn)));
    eprintln!(
        "peapod host-agent: ready for pod {} in {}",
        args.id.short(),
        layout.run_dir.display()
    );
    server::serve(control, serve_control);
    end(&layout)
}

/// Kills the pod's processes and removes its cgroup, then exits. The pod's directories are
/// left to the supervisor (or `rm`), which sees them from the host's mount namespace: here
/// the pod's volumes are still mounted on them.
fn end(layout: &PodLayout) -> ! {
    // Nobody waits for what is left (a shutdown was answered once the cgroup was gone; a
    // SIGTERM comes from a supervisor that died): it yields the CPU.
    crate::runtime::fork::lower_priority_for_exit();
    let code = match leftovers::remove_cgroup(&layout.cgroup_parent) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("peapod host-agent: {e}");
            1
        }
    };
    for port in [CONTROL_PORT, STDIO_PORT] {
        let _ = std::fs::remove_file(AgentEndpoint::unix_socket(&layout.run_dir, port));
    }
    let _ = std::fs::remove_dir(layout.run_dir.join(BOUND_ROOT));
    std::process::exit(code)
}

/// Whether `/` is the kernel's initial ramfs (`rootfs` in the mount table), where
/// `pivot_root` is refused.
fn root_is_initramfs() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| root_fs_type(&info) == Some("rootfs"))
        .unwrap_or(false)
}

/// The filesystem type of the mount at `/` in a mountinfo text (the last one mounted
/// there).
fn root_fs_type(mountinfo: &str) -> Option<&str> {
    mountinfo
        .lines()
        .rev()
        .filter(|l| l.split(' ').nth(4) == Some("/"))
        .find_map(|l| l.split(" - ").nth(1)?.split(' ').next())
}

/// Binds `/` (recursively) on `at` and makes that this process's root: a root with a parent
/// mount, from which its containers can `pivot_root`.
fn enter_bound_root(at: &Path) -> Result<(), HostAgentError> {
    std::fs::create_dir_all(at).map_err(io(format!("create {}", at.display())))?;
    nix::mount::mount(
        Some("/"),
        at,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys(format!("bind / on {}", at.display())))?;
    nix::unistd::chroot(at).map_err(sys(format!("change root to {}", at.display())))?;
    nix::unistd::chdir("/").map_err(sys("change to the new root"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_filesystem_type_is_the_last_mount_on_slash() {
        let initramfs = "1 1 0:2 / / rw - rootfs rootfs rw\n\
                         22 1 0:20 / /proc rw,nosuid - proc proc rw\n";
        assert_eq!(root_fs_type(initramfs), Some("rootfs"));
        let disk = "1 1 0:2 / / rw - rootfs rootfs rw\n\
                    25 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n";
        assert_eq!(root_fs_type(disk), Some("ext4"));
        assert_eq!(root_fs_type(""), None);
    }

    #[test]
    fn a_pod_without_a_network_gets_a_namespace_of_its_own_in_its_directory() {
        let id = PodId::parse(&"d".repeat(64)).unwrap();
        let run = Path::new("/run/peapod");
        let own = layout(&HostAgentArgs {
            id: id.clone(),
            run_root: run.into(),
            netns: None,
        });
        assert_eq!(
            own.pod_netns,
            PodNetns::Make(run.join(id.as_str()).join("netns"))
        );
        let cni = layout(&HostAgentArgs {
            id,
            run_root: run.into(),
            netns: Some("/run/netns/peapod-x".into()),
        });
        assert_eq!(cni.pod_netns, PodNetns::Given("/run/netns/peapod-x".into()));
        assert!(!cni.set_hostname_of_machine && !cni.seed_entropy);
    }
}
