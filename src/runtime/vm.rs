//! A pod VM: peapod's VMM in a child process (`peapod-vmm`, one VMM per process) with the
//! agent initramfs, the pod's disks and a hybrid-vsock socket, and a handshaken control
//! connection to its agent.
//!
//! [`PodVm::start`] writes the VM's [`VmmConfig`] to `vmm.json` in the VM's directory,
//! starts the VMM with `--config vmm.json --events-fd 3` (fd 3 is the write end of a pipe),
//! and reads the VMM's [`VmmEvent`]s on a thread of its own into a [`VmmStatus`]. It then
//! connects to the agent's control port until the agent answers, the VM ends, or the
//! timeout passes; the last two are errors that carry the tail of the guest's console
//! (where the kernel and the agent say what went wrong). [`PodVm::shutdown`] asks the agent
//! to power off and waits for the VMM to exit; [`PodVm::try_exit`] says, without blocking,
//! whether it has and why.
//!
//! The VM's files (`vmm.json`, `vsock.sock`, `console.log`, `vmm.log`) go in
//! [`PodVmConfig::dir`] when it is given (kept: its owner, a pod's supervisor, removes it),
//! else in a temporary directory removed on drop.
//!
//! The VMM gets `SIGKILL` when the thread that started it ends (`PR_SET_PDEATHSIG`), so a
//! killed peapod leaves no VM behind; start a pod VM from a thread that outlives it.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::cgroup::{CgroupError, VmmCgroup};
use super::endpoint::{AgentEndpoint, ProcessHandle};
use crate::protocol::client::{Client, ClientError};
use crate::protocol::{CONTROL_PORT, ProcessRef, StreamKind};
use crate::vmm::boot::linux::DEFAULT_CMDLINE;
use crate::vmm::builder::{DiskConfig, VsockConfig};
use crate::vmm::config::{ConfigError, ConsoleConfig, VmmConfig};
use crate::vmm::events::{VmmEvent, read_events};
use crate::vmm::jail::JailConfig;
use crate::vmm::program::VmmProgram;
use crate::vmm::virtio::vsock::{ConnectError, DEFAULT_GUEST_CID, connect_to_guest};

/// How long a pod VM may take from the VMM's start to the agent's answer.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the VMM may take to exit after the agent was asked to power off.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Console bytes quoted in errors.
const CONSOLE_TAIL: u64 = 3000;
/// The descriptor the VMM writes its events to.
const EVENTS_FD: i32 = 3;
/// The descriptor number of the pod's tap in the VMM.
pub const TAP_FD: i32 = 4;
/// Descriptors handed to the VMM are first copied at or above this number, so that moving
/// them to [`EVENTS_FD`] and [`TAP_FD`] never overwrites one with another.
const HANDOFF_FD_MIN: i32 = 10;
/// How long to wait for the last events once the VMM has exited (the pipe closes with the
/// VMM unless something it started still holds it).
const EVENTS_DRAIN: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum PodVmError {
    #[error("cannot create the pod VM's directory: {0}")]
    TempDir(#[source] std::io::Error),
    #[error(
        "cannot create {path}: {source}; check that the pod's directory exists and is writable"
    )]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot set up the VMM's event pipe: {0}")]
    Events(#[source] std::io::Error),
    #[error("cannot start the VMM ({binary}): {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the pod VM's agent did not answer on vsock port {CONTROL_PORT} within {timeout:?}: is \
         {initrd} an agent initramfs (rootfs/build-agent-initramfs.sh)? Last guest console \
         output:\n{console}"
    )]
    AgentTimeout {
        timeout: Duration,
        initrd: PathBuf,
        console: String,
    },
    #[error(
        "the pod VM ended ({status}) before its agent answered on vsock port {CONTROL_PORT}: is \
         {initrd} an agent initramfs (rootfs/build-agent-initramfs.sh)? VMM errors: {vmm}\nLast \
         guest console output:\n{console}"
    )]
    VmEnded {
        status: ExitStatus,
        initrd: PathBuf,
        vmm: String,
        console: String,
    },
    #[error("cannot connect to the agent: {0}")]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Endpoint(#[from] super::endpoint::EndpointError),
    #[error("{what}: {source}")]
    Agent {
        what: String,
        #[source]
        source: ClientError,
    },
    #[error("the VMM did not exit within {0:?} of the agent's shutdown; killed it")]
    ShutdownTimeout(Duration),
    #[error("the VMM failed ({status}): {vmm}")]
    VmmFailed { status: ExitStatus, vmm: String },
    #[error("waiting for the VMM: {0}")]
    Wait(#[source] std::io::Error),
    #[error("cannot hand the pod's tap to the VMM: {0}")]
    Tap(#[source] std::io::Error),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// What a pod VM boots.
#[derive(Debug, Clone)]
pub struct PodVmConfig {
    /// The program that runs the VMM.
    pub vmm: VmmProgram,
    pub kernel: PathBuf,
    /// The agent initramfs.
    pub initrd: PathBuf,
    pub cpus: u8,
    pub memory_mib: u64,
    /// Disk images in guest order (`/dev/vda`, `/dev/vdb`, ...), with read-only flags.
    pub disks: Vec<(PathBuf, bool)>,
    pub agent_timeout: Duration,
    /// An existing directory for the VM's files (`vmm.json`, `vsock.sock`, `console.log`,
    /// `vmm.log`), left in place when the VM is gone: a pod's supervisor owns it. `None`: a
    /// temporary directory, removed with the [`PodVm`].
    pub dir: Option<PathBuf>,
    /// The pod's NIC: a tap the VMM serves as virtio-net.
    pub net: Option<PodVmNet>,
    /// Run the VMM in its jail ([`crate::vmm::jail`]) and as PID 1 of a PID namespace of
    /// its own; `false` only for debugging and for tests' stand-in VMMs.
    pub jail: bool,
    /// The cgroup the VMM runs in ([`super::cgroup`]), made here; `None`: its starter's.
    pub cgroup: Option<PathBuf>,
}

/// A pod VM's network interface: the tap (made by the caller in the pod's network
/// namespace; the VMM gets it as fd [`TAP_FD`] and makes no device of its own), the MAC the
/// guest uses and the MTU it is told.
#[derive(Debug, Clone)]
pub struct PodVmNet {
    pub tap: std::sync::Arc<std::os::fd::OwnedFd>,
    pub mac: String,
    pub mtu: u16,
}

impl PodVmConfig {
    /// The VMM's configuration for this pod VM with its files in `dir`.
    pub fn vmm_config(&self, dir: &Path) -> VmmConfig {
        VmmConfig {
            kernel: self.kernel.clone(),
            initrd: Some(self.initrd.clone()),
            cmdline: Some(format!("{DEFAULT_CMDLINE} quiet")),
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            console: ConsoleConfig::File {
                path: dir.join("console.log"),
            },
            disks: self
                .disks
                .iter()
                .map(|(path, read_only)| DiskConfig {
                    path: path.clone(),
                    read_only: *read_only,
                })
                .collect(),
            rng: true,
            vsock: Some(VsockConfig {
                uds_path: dir.join("vsock.sock"),
                guest_cid: DEFAULT_GUEST_CID,
            }),
            net: self
                .net
                .as_ref()
                .map(|n| crate::vmm::virtio::net::NetConfig {
                    tap_fd: TAP_FD,
                    mac: n.mac.clone(),
                    mtu: n.mtu,
                }),
            seccomp: true,
            jail: self.jail.then(JailConfig::default),
        }
    }
}

/// Moments of a pod VM's start, from the VMM's spawn.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartTimes {
    pub spawned: Option<Instant>,
    pub agent_ready: Option<Instant>,
}

/// What is known once a pod VM is down.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VmDown {
    /// The VMM's start to the agent's boot signal, from the VMM's events.
    pub boot_signal_ms: Option<f64>,
}

/// What a VMM's events have said so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmmStatus {
    /// From `started`: the VMM read its config and builds the VM.
    pub pid: Option<u32>,
    /// From `running`: the guest runs.
    pub running: bool,
    /// From `boot_signal` (or `exited`): the VMM's start to the guest's boot signal.
    pub boot_signal_ms: Option<f64>,
    /// From `exited` (clean or not) or `failed` (never clean): how the VM ended.
    pub ended: Option<VmEnd>,
}

/// How a VM ended, as its VMM said.
#[derive(Debug, Clone, PartialEq)]
pub struct VmEnd {
    pub reason: String,
    /// The guest ended as a healthy guest does (it rebooted or powered off).
    pub clean: bool,
}

impl VmmStatus {
    /// Takes in one event.
    pub fn apply(&mut self, event: VmmEvent) {
        match event {
            VmmEvent::Started { pid } => self.pid = Some(pid),
            VmmEvent::Running => self.running = true,
            VmmEvent::BootSignal { ms } => self.boot_signal_ms = Some(ms),
            VmmEvent::Exited {
                reason,
                clean,
                boot_signal_ms,
                ..
            } => {
                self.boot_signal_ms = self.boot_signal_ms.or(boot_signal_ms);
                self.ended = Some(VmEnd { reason, clean });
            }
            VmmEvent::Failed { message } => {
                self.ended = Some(VmEnd {
                    reason: message,
                    clean: false,
                });
            }
        }
    }
}

/// A VMM that has exited, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct VmmExit {
    /// The VMM process's exit status.
    pub status: ExitStatus,
    /// How the VM ended, from the VMM's `exited` or `failed` event; `None` when it sent
    /// neither (it was killed or crashed: see `status`).
    pub end: Option<VmEnd>,
    /// The VMM's start to the guest's boot signal, when the guest sent one.
    pub boot_signal_ms: Option<f64>,
}

impl VmmExit {
    fn new(status: ExitStatus, events: VmmStatus) -> Self {
        VmmExit {
            status,
            end: events.ended,
            boot_signal_ms: events.boot_signal_ms,
        }
    }

    /// Whether the guest ended cleanly and the VMM exited with success.
    pub fn is_clean(&self) -> bool {
        self.status.success() && self.end.as_ref().is_some_and(|e| e.clean)
    }

    /// Why, in words: the VMM's reason, else its exit status.
    pub fn reason(&self) -> String {
        match &self.end {
            Some(end) => end.reason.clone(),
            None => format!("the VMM ended ({}) without saying why", self.status),
        }
    }
}

/// The VMM's events, read on a thread of its own into a shared [`VmmStatus`].
struct EventWatch {
    status: Arc<Mutex<VmmStatus>>,
    reader: Option<JoinHandle<()>>,
}

impl EventWatch {
    /// Reads events from `pipe` until the VMM closes its end.
    fn spawn(pipe: OwnedFd) -> std::io::Result<Self> {
        let status = Arc::new(Mutex::new(VmmStatus::default()));
        let shared = status.clone();
        let reader = std::thread::Builder::new()
            .name("vmm-events".into())
            .spawn(move || {
                let read = read_events(File::from(pipe), |event| {
                    tracing::debug!("VMM event: {event:?}");
                    shared
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .apply(event);
                });
                if let Err(e) = read {
                    tracing::warn!("reading the VMM's events: {e}");
                }
            })?;
        Ok(EventWatch {
            status,
            reader: Some(reader),
        })
    }

    fn snapshot(&self) -> VmmStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The final status once the VMM has exited: waits (up to [`EVENTS_DRAIN`]) for the
    /// reader to reach the end of the pipe, so the last events are in.
    fn finish(&mut self) -> VmmStatus {
        if let Some(reader) = self.reader.take() {
            let deadline = Instant::now() + EVENTS_DRAIN;
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if reader.is_finished() {
                let _ = reader.join();
            } else {
                tracing::warn!("the VMM's event pipe is still open after it exited");
            }
        }
        self.snapshot()
    }
}

/// Where a pod VM's files live.
enum VmDir {
    /// Created for this VM, removed on drop.
    Temp(tempfile::TempDir),
    /// Given by the caller ([`PodVmConfig::dir`]), left in place.
    Kept(PathBuf),
}

impl VmDir {
    fn path(&self) -> &Path {
        match self {
            VmDir::Temp(t) => t.path(),
            VmDir::Kept(p) => p,
        }
    }
}

/// A running pod VM with a control connection to its agent.
pub struct PodVm {
    child: Option<Child>,
    /// Set once the VMM has been reaped.
    exit: Option<VmmExit>,
    events: EventWatch,
    dir: VmDir,
    endpoint: AgentEndpoint,
    initrd: PathBuf,
    client: Client<UnixStream>,
    pub times: StartTimes,
}

/// A started VMM: the process and its events.
struct Vmm {
    child: Child,
    events: EventWatch,
}

impl Vmm {
    /// Kills the VMM (if it still runs) and reaps it.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.events.finish();
    }
}

/// Writes `<dir>/vmm.json` and starts the VMM on it, its events on a pipe.
fn spawn_vmm(config: &PodVmConfig, dir: &Path) -> Result<Vmm, PodVmError> {
    let config_path = dir.join("vmm.json");
    config.vmm_config(dir).write_file(&config_path)?;
    let log_path = dir.join("vmm.log");
    let vmm_log = File::create(&log_path).map_err(|source| PodVmError::File {
        path: log_path,
        source,
    })?;
    // Both ends close on exec; the child gets the write end again as fd 3 below.
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| PodVmError::Events(e.into()))?;
    let write_fd = write_end.as_raw_fd();
    // The tap, copied high (close-on-exec): the child moves it to TAP_FD after EVENTS_FD.
    let tap_copy = match &config.net {
        Some(net) => Some(
            nix::fcntl::fcntl(
                net.tap.as_ref(),
                nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(HANDOFF_FD_MIN),
            )
            .map(|fd| {
                // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
                unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
            })
            .map_err(|e| PodVmError::Tap(e.into()))?,
        ),
        None => None,
    };
    let tap_raw = tap_copy.as_ref().map(|fd| fd.as_raw_fd());
    let cgroup = config
        .cgroup
        .as_deref()
        .map(|path| VmmCgroup::create(path, config.memory_mib.saturating_mul(1 << 20)))
        .transpose()?;
    let procs_raw = cgroup.as_ref().map(|c| c.procs.as_raw_fd());
    let mut cmd = config.vmm.command();
    cmd.arg("--config")
        .arg(&config_path)
        .args(["--events-fd", &EVENTS_FD.to_string()]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(vmm_log));
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe
    // calls (prctl, sigprocmask, dup2, fcntl) on plain integers and values it owns; it
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // The VMM dies with the thread that started it, even when that is killed
            // (a VM nobody drives would run on), and does not inherit a signal mask
            // its caller set up for forwarding.
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            crate::runtime::fork::unblock_all_signals()?;
            // The event pipe's write end becomes fd 3, open across exec. dup2 onto itself
            // would keep close-on-exec, so that case clears the flag instead.
            if write_fd == EVENTS_FD {
                if libc::fcntl(EVENTS_FD, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(write_fd, EVENTS_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The tap's copy is at HANDOFF_FD_MIN or above, so neither dup2 overwrote it;
            // dup2 leaves the new TAP_FD open across exec.
            if let Some(tap) = tap_raw
                && libc::dup2(tap, TAP_FD) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // Into the VM's cgroup before the VMM maps guest RAM ("0": this process).
            if let Some(procs) = procs_raw
                && libc::write(procs, b"0".as_ptr().cast(), 1) != 1
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = if config.jail {
        spawn_in_new_pid_namespace(&mut cmd)
    } else {
        cmd.spawn()
    };
    let child = spawned.map_err(|source| PodVmError::Spawn {
        binary: config.vmm.path.clone(),
        source,
    })?;
    drop(cgroup);
    // Only the VMM may hold the write end, or the reader never sees the end of the pipe.
    drop(write_end);
    drop(tap_copy);
    let events = match EventWatch::spawn(read_end) {
        Ok(events) => events,
        Err(e) => {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            return Err(PodVmError::Events(e));
        }
    };
    Ok(Vmm { child, events })
}

/// Spawns `cmd` as PID 1 of a new PID namespace: this thread's children go there from
/// `unshare` until `setns` puts them back in its own, right after the fork. (Not from a
/// thread of its own: the VMM's parent-death signal follows the thread that forked it.)
fn spawn_in_new_pid_namespace(cmd: &mut std::process::Command) -> std::io::Result<Child> {
    let own = File::open("/proc/thread-self/ns/pid")?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)?;
    let spawned = cmd.spawn();
    let back = nix::sched::setns(&own, nix::sched::CloneFlags::CLONE_NEWPID);
    match (spawned, back) {
        (Ok(child), Ok(())) => Ok(child),
        (Ok(mut child), Err(e)) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(std::io::Error::other(format!(
                "cannot return to this process's PID namespace after starting the VMM: {e}"
            )))
        }
        (Err(e), _) => Err(e),
    }
}

impl PodVm {
    pub fn start(config: &PodVmConfig) -> Result<Self, PodVmError> {
        let dir = match &config.dir {
            Some(dir) => VmDir::Kept(dir.clone()),
            None => VmDir::Temp(
                tempfile::Builder::new()
                    .prefix("peapod-pod-")
                    .tempdir()
                    .map_err(PodVmError::TempDir)?,
            ),
        };
        let uds = dir.path().join("vsock.sock");
        let spawned = Instant::now();
        let mut vmm = spawn_vmm(config, dir.path())?;
        let connected = wait_for_agent(&mut vmm, dir.path(), &uds, config).and_then(|stream| {
            Client::handshake(stream).map_err(|source| PodVmError::Agent {
                what: "handshake with the agent".into(),
                source,
            })
        });
        let client = match connected {
            Ok(client) => client,
            Err(e) => {
                vmm.kill();
                return Err(e);
            }
        };
        Ok(PodVm {
            child: Some(vmm.child),
            exit: None,
            events: vmm.events,
            dir,
            endpoint: AgentEndpoint::Vsock { uds },
            initrd: config.initrd.clone(),
            client,
            times: StartTimes {
                spawned: Some(spawned),
                agent_ready: Some(Instant::now()),
            },
        })
    }

    /// The VMM's process id, until it has exited and been reaped (by [`PodVm::try_exit`]
    /// or [`PodVm::shutdown`]).
    pub fn vmm_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the VMM's events have said so far.
    pub fn vmm_status(&self) -> VmmStatus {
        self.events.snapshot()
    }

    /// Whether the VMM has exited, and why, without blocking: `None` while it runs. Once it
    /// has exited this reaps it and keeps answering the same.
    pub fn try_exit(&mut self) -> Option<VmmExit> {
        match self.poll_exit() {
            Ok(exit) => exit,
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }

    fn poll_exit(&mut self) -> Result<Option<VmmExit>, PodVmError> {
        if let Some(exit) = &self.exit {
            return Ok(Some(exit.clone()));
        }
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let Some(status) = child.try_wait().map_err(PodVmError::Wait)? else {
            return Ok(None);
        };
        self.child = None;
        let exit = VmmExit::new(status, self.events.finish());
        self.exit = Some(exit.clone());
        Ok(Some(exit))
    }

    /// The control connection made at start.
    pub fn client(&mut self) -> &mut Client<UnixStream> {
        &mut self.client
    }

    /// One more handshaken control connection (for a blocking `wait`, say).
    pub fn control(&self) -> Result<Client<UnixStream>, PodVmError> {
        Ok(self.endpoint.control()?)
    }

    /// Attaches `stream` of `process`: a stdio connection that now carries raw bytes.
    pub fn attach(
        &self,
        process: &ProcessRef,
        stream: StreamKind,
    ) -> Result<UnixStream, PodVmError> {
        Ok(self.endpoint.attach(process, stream)?)
    }

    /// A handle that signals `process` from any thread, on a connection of its own.
    pub fn process_handle(&self, process: &ProcessRef) -> ProcessHandle {
        ProcessHandle {
            endpoint: self.endpoint.clone(),
            process: process.clone(),
        }
    }

    /// The end of the guest console (kernel and agent messages).
    pub fn console_tail(&self) -> String {
        console_tail(&self.dir.path().join("console.log"))
    }

    /// Asks the agent to power the VM off and waits for the VMM to exit.
    pub fn shutdown(mut self) -> Result<VmDown, PodVmError> {
        let asked = self.client.shutdown();
        // The agent powers off once this connection closes (or after a linger).
        let _ = self.client.stream().shutdown(std::net::Shutdown::Both);
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        loop {
            match self.poll_exit()? {
                Some(exit) if exit.status.success() => {
                    return Ok(VmDown {
                        boot_signal_ms: exit.boot_signal_ms,
                    });
                }
                Some(exit) => {
                    return Err(PodVmError::VmmFailed {
                        status: exit.status,
                        vmm: vmm_story(exit.end.as_ref(), self.dir.path()),
                    });
                }
                None if self.child.is_none() => return Ok(VmDown::default()),
                None if Instant::now() >= deadline => {
                    if let Some(mut child) = self.child.take() {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                    asked.map_err(|source| PodVmError::Agent {
                        what: "asking the agent to shut down".into(),
                        source,
                    })?;
                    return Err(PodVmError::ShutdownTimeout(SHUTDOWN_TIMEOUT));
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// The directory holding the VM's sockets and logs (removed on drop unless it was
    /// [`PodVmConfig::dir`]).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The initramfs this VM booted.
    pub fn initrd(&self) -> &Path {
        &self.initrd
    }
}

impl Drop for PodVm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.events.finish();
        }
    }
}

impl super::PodSandbox for PodVm {
    fn kind(&self) -> super::RuntimeKind {
        super::RuntimeKind::Vm
    }

    fn pid(&self) -> Option<u32> {
        self.vmm_pid()
    }

    fn endpoint(&self) -> &AgentEndpoint {
        &self.endpoint
    }

    fn client(&mut self) -> &mut Client<UnixStream> {
        PodVm::client(self)
    }

    fn try_end(&mut self) -> Option<String> {
        self.try_exit()
            .map(|exit| format!("the pod VM ended: {}", exit.reason()))
    }

    fn shutdown(self: Box<Self>) -> Result<(), super::RuntimeError> {
        PodVm::shutdown(*self).map(drop).map_err(Into::into)
    }
}

/// Connects to the agent's control port until it answers, the VMM exits or the timeout
/// passes.
fn wait_for_agent(
    vmm: &mut Vmm,
    dir: &Path,
    uds: &Path,
    config: &PodVmConfig,
) -> Result<UnixStream, PodVmError> {
    let timeout = config.agent_timeout;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = vmm.child.try_wait().map_err(PodVmError::Wait)? {
            let events = vmm.events.finish();
            return Err(PodVmError::VmEnded {
                status,
                initrd: config.initrd.clone(),
                vmm: vmm_story(events.ended.as_ref(), dir),
                console: console_tail(&dir.join("console.log")),
            });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(PodVmError::AgentTimeout {
                timeout,
                initrd: config.initrd.clone(),
                console: console_tail(&dir.join("console.log")),
            });
        }
        match connect_to_guest(uds, CONTROL_PORT, left.min(Duration::from_millis(250))) {
            Ok(stream) => return Ok(stream),
            Err(ConnectError::TimedOut { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// What the VMM said about its end: its `exited`/`failed` reason, then its log's tail.
fn vmm_story(end: Option<&VmEnd>, dir: &Path) -> String {
    let log = read_tail(&dir.join("vmm.log"));
    match end {
        Some(end) => format!("{}; VMM log: {log}", end.reason),
        None => log,
    }
}

fn read_tail(path: &Path) -> String {
    // Bounded even if the file grows while it is read.
    let Ok(buf) = crate::logfile::read_tail(path, CONSOLE_TAIL) else {
        return "(none)".into();
    };
    let text = String::from_utf8_lossy(&buf).trim().to_string();
    if text.is_empty() {
        "(none)".into()
    } else {
        text
    }
}

fn console_tail(path: &Path) -> String {
    let tail = read_tail(path);
    tail.lines()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{read_frame, write_frame};
    use crate::protocol::{PROTOCOL_VERSION, Request, Response};
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    /// Issue #12 (6): the tail of a VM's log is read with a bound, even from a file that
    /// keeps growing while it is read (here a FIFO that a writer fills with 1 MiB).
    #[test]
    fn log_tails_are_read_with_a_bound() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("vmm.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let mut f = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
                let line = [b'x'; 1023];
                for _ in 0..1024 {
                    // The reader may stop early: a broken pipe ends the writer.
                    if f.write_all(&line)
                        .and_then(|()| f.write_all(b"\n"))
                        .is_err()
                    {
                        break;
                    }
                }
            })
        };
        let tail = read_tail(&fifo);
        writer.join().unwrap();
        assert!(
            tail.len() as u64 <= CONSOLE_TAIL,
            "read {} bytes of the log",
            tail.len()
        );
    }

    #[test]
    fn the_status_follows_the_events() {
        let mut s = VmmStatus::default();
        s.apply(VmmEvent::Started { pid: 9 });
        s.apply(VmmEvent::Running);
        assert_eq!(s.pid, Some(9));
        assert!(s.running && s.boot_signal_ms.is_none() && s.ended.is_none());
        s.apply(VmmEvent::BootSignal { ms: 412.9 });
        s.apply(VmmEvent::Exited {
            reason: "the guest rebooted".into(),
            clean: true,
            first_output_ms: Some(80.0),
            boot_signal_ms: Some(412.9),
            total_ms: 900.0,
        });
        assert_eq!(s.boot_signal_ms, Some(412.9));
        assert_eq!(
            s.ended,
            Some(VmEnd {
                reason: "the guest rebooted".into(),
                clean: true
            })
        );

        // An exit event alone still carries the boot signal time.
        let mut late = VmmStatus::default();
        late.apply(VmmEvent::Exited {
            reason: "r".into(),
            clean: false,
            first_output_ms: None,
            boot_signal_ms: Some(5.0),
            total_ms: 6.0,
        });
        assert_eq!(late.boot_signal_ms, Some(5.0));

        let mut failed = VmmStatus::default();
        failed.apply(VmmEvent::Failed {
            message: "no KVM".into(),
        });
        assert_eq!(
            failed.ended.map(|e| (e.reason, e.clean)),
            Some(("no KVM".into(), false))
        );
    }

    #[test]
    fn the_vmm_config_puts_the_vms_files_in_its_directory() {
        let c = fake_config("/bin/true".into(), Duration::from_secs(1));
        let v = c.vmm_config(Path::new("/run/pod1"));
        assert_eq!(
            v.console,
            ConsoleConfig::File {
                path: "/run/pod1/console.log".into()
            }
        );
        assert_eq!(
            v.vsock.map(|v| v.uds_path),
            Some(PathBuf::from("/run/pod1/vsock.sock"))
        );
        assert_eq!(v.initrd, Some(PathBuf::from("/i")));
        assert!(v.rng);
        assert_eq!(
            v.disks,
            [DiskConfig {
                path: "/img".into(),
                read_only: true
            }]
        );
    }

    /// `PodVm::start` with a script as the VMM, tried again while exec says ETXTBSY: a test
    /// thread forking at the moment the script was written keeps its write descriptor open
    /// in the child until that child execs.
    fn start_fake(config: &PodVmConfig) -> Result<PodVm, PodVmError> {
        for _ in 0..50 {
            match PodVm::start(config) {
                Err(PodVmError::Spawn { source, .. })
                    if source.raw_os_error() == Some(libc::ETXTBSY) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
        PodVm::start(config)
    }

    /// A shell script standing in for the VMM. `$cfg` is its `--config` file and `$dir` the
    /// directory it sits in; fd 3 is the event pipe.
    fn fake_vmm(dir: &Path, body: &str) -> PathBuf {
        let script = dir.join("fake-vmm");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nfor a; do case $prev in --config) cfg=$a;; esac; prev=$a; done\n\
                 dir=$(dirname \"$cfg\")\n{body}"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        script
    }

    fn fake_config(vmm: PathBuf, agent_timeout: Duration) -> PodVmConfig {
        PodVmConfig {
            vmm: VmmProgram::standalone(vmm),
            kernel: "/k".into(),
            initrd: "/i".into(),
            cpus: 1,
            memory_mib: 64,
            disks: vec![("/img".into(), true)],
            agent_timeout,
            dir: None,
            net: None,
            jail: false,
            cgroup: None,
        }
    }

    #[test]
    fn a_vmm_that_ends_at_once_is_reported_with_its_console_and_events() {
        let dir = tempfile::tempdir().unwrap();
        // Writes a console line where the config says, a `failed` event, and exits.
        let script = fake_vmm(
            dir.path(),
            r#"console=$(sed -n 's/.*"path": *"\([^"]*console.log\)".*/\1/p' "$cfg")
echo 'Kernel panic - not syncing' > "$console"
echo '{"event":"failed","message":"cannot open /dev/kvm"}' >&3
echo 'vmm: no kvm' >&2
exit 1
"#,
        );
        let err = start_fake(&fake_config(script, Duration::from_secs(20)))
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(matches!(err, PodVmError::VmEnded { .. }), "{msg}");
        assert!(msg.contains("Kernel panic"), "{msg}");
        assert!(msg.contains("cannot open /dev/kvm"), "{msg}");
        assert!(msg.contains("vmm: no kvm"), "{msg}");
        assert!(msg.contains("agent initramfs"), "{msg}");
    }

    #[test]
    fn a_silent_guest_times_out_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let script = fake_vmm(dir.path(), "exec sleep 30\n");
        let start = Instant::now();
        let mut config = fake_config(script, Duration::from_millis(600));
        config.initrd = "/plain.cpio.gz".into();
        let err = start_fake(&config).err().unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(matches!(err, PodVmError::AgentTimeout { .. }), "{err}");
        assert!(err.to_string().contains("/plain.cpio.gz"));
    }

    /// Plays the VMM's vsock socket and the agent on `uds`: answers `CONNECT`, the
    /// handshake, and `Shutdown` (then creates `<dir>/off`, which the fake VMM waits for).
    fn fake_agent(dir: &Path) -> std::thread::JoinHandle<()> {
        let listener = UnixListener::bind(dir.join("vsock.sock")).unwrap();
        let off = dir.join("off");
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert_eq!(line, format!("CONNECT {CONTROL_PORT}\n"));
            let mut stream = stream;
            stream.write_all(b"OK 1234\n").unwrap();
            loop {
                let Ok(request) = read_frame::<_, Request>(&mut reader) else {
                    return;
                };
                let response = match request {
                    Request::Hello { .. } => Response::Hello {
                        version: PROTOCOL_VERSION,
                        agent: "fake".into(),
                    },
                    Request::Shutdown => Response::Ok,
                    other => panic!("unexpected {other:?}"),
                };
                write_frame(&mut stream, &response).unwrap();
                if response == Response::Ok {
                    std::fs::write(&off, b"").unwrap();
                }
            }
        })
    }

    #[test]
    fn a_pod_vm_in_a_given_directory_reports_through_events_and_keeps_its_files() {
        let bin = tempfile::tempdir().unwrap();
        let pod = tempfile::tempdir().unwrap();
        let script = fake_vmm(
            bin.path(),
            r#"echo "{\"event\":\"started\",\"pid\":$$}" >&3
echo '{"event":"running"}' >&3
echo 'garbage' >&3
echo '{"event":"boot_signal","ms":41.5}' >&3
while [ ! -e "$dir/off" ]; do sleep 0.02; done
echo '{"event":"exited","reason":"the guest rebooted","clean":true,"first_output_ms":3.0,"boot_signal_ms":41.5,"total_ms":50.0}' >&3
exit 0
"#,
        );
        let agent = fake_agent(pod.path());
        let mut config = fake_config(script, Duration::from_secs(20));
        config.dir = Some(pod.path().to_owned());
        let mut vm = start_fake(&config).unwrap();
        assert_eq!(vm.dir(), pod.path());
        let pid = vm.vmm_pid().unwrap();
        assert_eq!(vm.try_exit(), None);
        // The first events arrive while the VMM runs.
        let deadline = Instant::now() + Duration::from_secs(10);
        while vm.vmm_status().boot_signal_ms.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = vm.vmm_status();
        assert_eq!(status.pid, Some(pid));
        assert!(status.running);
        assert_eq!(status.boot_signal_ms, Some(41.5));
        assert_eq!(status.ended, None);

        let down = vm.shutdown().unwrap();
        assert_eq!(down.boot_signal_ms, Some(41.5));
        agent.join().unwrap();
        let json = std::fs::read(pod.path().join("vmm.json")).unwrap();
        let written = VmmConfig::from_json(&json, Path::new("vmm.json")).unwrap();
        assert_eq!(written, config.vmm_config(pod.path()));
        assert!(pod.path().join("vmm.log").exists());
    }

    #[test]
    fn try_exit_says_why_the_vmm_ended_without_blocking() {
        let bin = tempfile::tempdir().unwrap();
        let pod = tempfile::tempdir().unwrap();
        let script = fake_vmm(
            bin.path(),
            r#"while [ ! -e "$dir/crash" ]; do sleep 0.02; done
echo '{"event":"exited","reason":"vCPU 0 triple-faulted","clean":false,"first_output_ms":null,"boot_signal_ms":null,"total_ms":50.0}' >&3
exit 1
"#,
        );
        let _agent = fake_agent(pod.path());
        let mut config = fake_config(script, Duration::from_secs(20));
        config.dir = Some(pod.path().to_owned());
        let mut vm = start_fake(&config).unwrap();
        assert_eq!(vm.try_exit(), None);
        std::fs::write(pod.path().join("crash"), b"").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let exit = loop {
            if let Some(exit) = vm.try_exit() {
                break exit;
            }
            assert!(Instant::now() < deadline, "the fake VMM did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(exit.status.code(), Some(1));
        assert!(!exit.is_clean());
        assert!(
            exit.reason().contains("triple-faulted"),
            "{}",
            exit.reason()
        );
        assert_eq!(vm.vmm_pid(), None);
        assert_eq!(vm.try_exit(), Some(exit));
        drop(vm);
        // A given directory outlives the VM.
        assert!(pod.path().join("vmm.json").exists());
    }

    #[test]
    fn a_vmm_killed_without_a_word_has_no_reason() {
        let bin = tempfile::tempdir().unwrap();
        let pod = tempfile::tempdir().unwrap();
        let script = fake_vmm(bin.path(), "exec sleep 30\n");
        let _agent = fake_agent(pod.path());
        let mut config = fake_config(script, Duration::from_secs(20));
        config.dir = Some(pod.path().to_owned());
        let mut vm = start_fake(&config).unwrap();
        let pid = vm.vmm_pid().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let exit = loop {
            if let Some(exit) = vm.try_exit() {
                break exit;
            }
            assert!(Instant::now() < deadline, "the fake VMM did not die");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(exit.end, None);
        assert!(
            exit.reason().contains("without saying why"),
            "{}",
            exit.reason()
        );
    }
}
