//! The per-pod supervisor: one process per pod (the role of podman's conmon or Kata's
//! per-pod shim), detached from the CLI that started it.
//!
//! It owns the pod's sandbox (the VMM of a pod VM, or the host agent of a `--runtime
//! container` pod: a child that dies with it, `PR_SET_PDEATHSIG`), the control
//! connection to the agent, the containers' stdio (written to the logs in the store and
//! copied to attached clients) and the pod's state (`state.json`, in the run directory and
//! copied to the store). The CLI, and later a containerd shim, talk to it over
//! `supervisor.sock` in the pod's run directory with the versioned API of [`api`].
//!
//! Its life ([`spawn`] on the CLI side, [`run`] in the supervisor):
//! 1. The CLI creates the pod record under the registry lock and takes the pod's
//!    supervisor lock (an `flock`), then starts the supervisor in a new session with that
//!    lock's descriptor and the write end of a readiness pipe: a fork of the CLI, which has
//!    one thread then (`peapod supervise ID` executed otherwise; [`crate::runtime::fork`]).
//!    The lock belongs to the open file, which the supervisor inherits: from then on "the
//!    lock is held" means "the supervisor lives", and `peapod ps` shows a pod whose
//!    supervisor is gone as `Failed`.
//! 2. The supervisor binds its socket, boots the VM and creates the containers, then writes
//!    `ok` (or the error) on the readiness pipe. The CLI then sends `Start` (`run -d`) or
//!    `Attach { start: true }` (a foreground `run`).
//! 3. When the last container has exited (or `Stop` ended them), the VM powers off, the
//!    final state is written, a `--rm` pod is removed, and the supervisor exits.
//!
//! A CLI killed at any point leaves the pod to its supervisor. A supervisor killed with
//! SIGKILL takes its VMM with it (PDEATHSIG) and leaves its state saying `Running`, which
//! the registry's lock check turns into `Failed`.

pub mod api;
pub mod network;
pub mod pod;
pub mod stream;

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use api::{API_VERSION, ApiRequest, ApiResponse, read_request, write_response};
use pod::RunningPod;

use crate::pod::PodError;
use crate::pod::id::PodId;
use crate::pod::layout::PodDirs;
use crate::pod::registry::{self, PodRecord, Registry, SupervisorLock};
use crate::pod::state::PodStatus;
use crate::runtime::fork::{self, ChildProcess, DaemonSetup};
use crate::runtime::{HostPodConfig, PodVmConfig, RuntimeKind, SandboxConfig};

/// How long the CLI waits for a pod's VM and containers to be created.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a finished supervisor lingers for clients still waiting on the pod's end.
const LINGER: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Pod(#[from] PodError),
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the pod's supervisor ({program}): {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the pod did not start: {0}")]
    StartFailed(String),
    #[error("the pod's supervisor ended before the pod was created; its log ({log}) says:\n{tail}")]
    SupervisorDied { log: PathBuf, tail: String },
    #[error("reading the supervisor's readiness: {0}")]
    Ready(#[source] std::io::Error),
}

/// What the hidden `peapod supervise` command gets.
pub struct SuperviseArgs {
    pub id: PodId,
    /// The pod's supervisor lock, inherited from the CLI.
    pub lock_fd: RawFd,
    /// Where to write `ok\n` or `error: ...\n` once the pod is created.
    pub ready_fd: RawFd,
    /// The API's listening socket, bound by the CLI (see [`spawn`]).
    pub listen_fd: RawFd,
}

/// What the supervisor needs beyond the pod's spec, handed over in memory to a supervisor
/// the CLI forks, written as `supervisor.json` in the pod's run directory for one it
/// executes (`peapod supervise`): the guest kernel and agent initramfs of a
/// pod VM (the VMM program is found as the CLI finds it: `peapod-vmm` beside `peapod`, or
/// `PEAPOD_VMM`; the disks come from the spec), and how long the agent may take to answer.
/// A `--runtime container` pod has no kernel or initramfs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    pub agent_timeout_ms: u64,
}

impl SupervisorConfig {
    /// How the pod's sandbox starts, in the runtime its spec names.
    fn sandbox(
        &self,
        spec: &crate::pod::PodSpec,
        id: &PodId,
        dirs: &PodDirs,
    ) -> Result<SandboxConfig, String> {
        let agent_timeout = Duration::from_millis(self.agent_timeout_ms);
        match spec.runtime {
            RuntimeKind::Vm => {
                let (Some(kernel), Some(initrd)) = (&self.kernel, &self.initrd) else {
                    return Err("a pod VM needs a guest kernel and an agent initramfs: \
                                supervisor.json names none"
                        .into());
                };
                Ok(SandboxConfig::Vm(PodVmConfig {
                    vmm: crate::vmm::program::VmmProgram::find().map_err(|e| e.to_string())?,
                    kernel: kernel.clone(),
                    initrd: initrd.clone(),
                    cpus: spec.vm.cpus,
                    memory_mib: spec.vm.memory_mib,
                    disks: Vec::new(),
                    agent_timeout,
                    dir: Some(dirs.run_dir(id)),
                    net: None,
                    jail: true,
                    cgroup: crate::runtime::cgroup::available().then(|| {
                        crate::agent::layout::PodLayout::host(id, &dirs.run)
                            .cgroup_parent
                            .join("vmm")
                    }),
                }))
            }
            RuntimeKind::Container => Ok(SandboxConfig::Container(HostPodConfig {
                program: std::env::current_exe()
                    .map_err(|e| format!("cannot find the peapod binary: {e}"))?,
                id: id.clone(),
                run_root: dirs.run.clone(),
                netns: None,
                agent_timeout,
                removed_after: spec.auto_remove,
            })),
        }
    }
}

fn config_path(dirs: &PodDirs, id: &PodId) -> PathBuf {
    dirs.run_dir(id).join("supervisor.json")
}

/// Starts the supervisor of a freshly created pod and waits until it has created the pod
/// (VM booted, containers created) or failed. On failure nothing of the pod is running;
/// the caller removes its record.
///
/// The API socket is bound here, before the supervisor exists, and handed to it: a client
/// can connect at once and its requests wait in the socket until the supervisor serves them
/// (once the pod is created). When `opening` has requests, this connects, says hello and
/// sends them before it waits for readiness, and returns that connection: the answers
/// follow, in order, once the pod is up ([`ApiClient::pipelined`]).
pub fn spawn(
    dirs: &PodDirs,
    record: &PodRecord,
    lock: SupervisorLock,
    config: &SupervisorConfig,
    opening: &[ApiRequest],
) -> Result<Option<UnixStream>, SupervisorError> {
    let program = std::env::current_exe().map_err(|source| SupervisorError::Spawn {
        program: "/proc/self/exe".into(),
        source,
    })?;
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SupervisorError::Spawn {
            program: program.clone(),
            source: e.into(),
        })?;
    let log_path = dirs.run_dir(&record.id).join("supervisor.log");
    let log = std::fs::File::create(&log_path).map_err(|source| SupervisorError::Spawn {
        program: program.clone(),
        source,
    })?;
    let socket = dirs.socket_path(&record.id);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|source| SupervisorError::Listen {
        path: socket.clone(),
        source,
    })?;
    let listen_fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let lock_fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
    lock.clear_cloexec()?;
    let ready_raw = std::os::fd::AsRawFd::as_raw_fd(&ready_w);
    let spawn_error = |source| SupervisorError::Spawn {
        program: program.clone(),
        source,
    };
    // Forked when this process has one thread (a CLI starting a pod has), else executed.
    let setup = DaemonSetup {
        keep: vec![lock_fd, ready_raw, listen_fd],
        new_session: true,
        name: Some(c"pod-supervisor"),
        ..DaemonSetup::with_log(&log).map_err(spawn_error)?
    };
    // A forked supervisor has the record and the config in memory already; an executed one
    // reads them from the pod's files.
    let handed = Handed {
        record: record.clone(),
        config: config.clone(),
    };
    let forked = fork::fork_daemon(setup, move || {
        let args = SuperviseArgs {
            id: handed.record.id.clone(),
            lock_fd,
            ready_fd: ready_raw,
            listen_fd,
        };
        fork::exit_status(run_with(args, Some(handed)))
    })
    .map_err(spawn_error)?;
    let inherited = Inherited {
        lock_fd,
        ready_fd: ready_raw,
        listen_fd,
    };
    let mut child = match forked {
        Some(child) => ChildProcess::Forked(child),
        None => {
            crate::pod::state::write_json_atomic(&config_path(dirs, &record.id), config)?;
            ChildProcess::Executed(exec_supervisor(&program, record, inherited, log)?)
        }
    };
    // Only the supervisor holds the lock, the pipe's write end and the listener from here on.
    drop(lock);
    drop(ready_w);
    drop(listener);
    let opened = match opening {
        [] => None,
        requests => open_early(&socket, requests),
    };
    let mut answer = String::new();
    let read = std::fs::File::from(ready_r).read_to_string(&mut answer);
    // The supervisor is a daemon: reap it in the background if it has ended already, and
    // otherwise let it be (it outlives this process and is then reparented).
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    read.map_err(SupervisorError::Ready)?;
    let answer = answer.trim();
    if answer == "ok" {
        return Ok(opened);
    }
    if let Some(why) = answer.strip_prefix("error: ") {
        return Err(SupervisorError::StartFailed(why.to_string()));
    }
    let tail = crate::logfile::tail_lines(&log_path, 20);
    Err(SupervisorError::SupervisorDied {
        log: log_path,
        tail,
    })
}

/// A connection to the supervisor's API socket on which hello and `requests` were sent,
/// or `None` if that failed (the caller then connects as to any pod, which reports why).
fn open_early(socket: &std::path::Path, requests: &[ApiRequest]) -> Option<UnixStream> {
    let mut stream = UnixStream::connect(socket).ok()?;
    let hello = ApiRequest::Hello {
        version: API_VERSION,
    };
    for request in std::iter::once(&hello).chain(requests) {
        crate::protocol::frame::write_frame(&mut stream, request).ok()?;
    }
    Some(stream)
}

/// The descriptors the CLI hands its pod's supervisor (see [`spawn`]).
struct Inherited {
    lock_fd: RawFd,
    ready_fd: RawFd,
    listen_fd: RawFd,
}

/// Starts `peapod supervise` for `record`'s pod, handing it the lock, readiness and API
/// socket descriptors (see [`spawn`]).
fn exec_supervisor(
    program: &std::path::Path,
    record: &PodRecord,
    fds: Inherited,
    log: std::fs::File,
) -> Result<std::process::Child, SupervisorError> {
    let Inherited {
        lock_fd,
        ready_fd: ready_raw,
        listen_fd,
    } = fds;
    let mut cmd = Command::new(program);
    cmd.arg("supervise")
        .arg("--lock-fd")
        .arg(lock_fd.to_string())
        .arg("--ready-fd")
        .arg(ready_raw.to_string())
        .arg("--listen-fd")
        .arg(listen_fd.to_string())
        .arg(record.id.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe calls
    // (setsid, fcntl, sigprocmask) on descriptors this process owns.
    unsafe {
        cmd.pre_exec(move || {
            // A session of its own: the terminal's signals and hangup do not reach it.
            nix::unistd::setsid()?;
            // The readiness pipe's write end and the listener cross exec.
            for fd in [ready_raw, listen_fd] {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            fork::unblock_all_signals()?;
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| SupervisorError::Spawn {
        program: program.to_path_buf(),
        source,
    })
}

/// What a supervisor forked from the CLI that created its pod gets from it in memory: the
/// pod's record (its state is then [`registry::created_state`]) and its config.
struct Handed {
    record: PodRecord,
    config: SupervisorConfig,
}

/// The supervisor process: creates the pod, reports readiness, serves the API until the
/// pod is down.
pub fn run(args: SuperviseArgs) -> Result<(), SupervisorError> {
    run_with(args, None)
}

/// [`run`], with the record and config `handed` over or else read from the pod's files.
fn run_with(args: SuperviseArgs, handed: Option<Handed>) -> Result<(), SupervisorError> {
    let dirs = PodDirs::from_env();
    let registry = Registry::new(dirs.clone());
    // SAFETY: the CLI passed these three descriptors to this process for it to own (see
    // `spawn`); nothing else in this process uses their numbers.
    let (lock_fd, ready_fd, listen_fd) = unsafe {
        (
            OwnedFd::from_raw_fd(args.lock_fd),
            OwnedFd::from_raw_fd(args.ready_fd),
            OwnedFd::from_raw_fd(args.listen_fd),
        )
    };
    let listener = UnixListener::from(listen_fd);
    let _ = nix::fcntl::fcntl(
        &listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    // Not for the VMM's eyes: the CLI waits for this pipe's end of file.
    let _ = nix::fcntl::fcntl(
        &ready_fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let mut ready = std::fs::File::from(ready_fd);
    let (record, config) = handed.map(|h| (h.record, h.config)).unzip();
    let view = SupervisorLock::adopt(lock_fd).and_then(|lock| {
        let view = match record {
            Some(record) => registry::PodView {
                state: registry::created_state(&record),
                record,
            },
            None => registry.get(&args.id)?,
        };
        Ok((lock, view))
    });
    let (lock, view) = match view {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(ready, "error: {e}");
            return Err(e.into());
        }
    };
    let (record, mut state) = (view.record, view.state);
    state.supervisor_pid = Some(std::process::id());
    state.containers = record
        .spec
        .init_containers
        .iter()
        .chain(&record.spec.containers)
        .map(|c| crate::pod::state::ContainerState::created(&c.name))
        .collect();
    registry.save_state(&state)?;

    let socket = dirs.socket_path(&args.id);
    let running = match RunningPod::new(record.spec.clone(), registry.clone(), &dirs, state.clone())
    {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(ready, "error: {e}");
            return Err(SupervisorError::StartFailed(e.to_string()));
        }
    };
    // A pod VM takes seconds to boot: its API answers meanwhile. A host pod's agent starts
    // in a moment, forked from this process while it still has one thread
    // ([`crate::runtime::fork`]): its API's threads start right after that fork, and take
    // connections (the CLI's first one is waiting already, see [`spawn`]) while the pod is
    // created, but answer only once it is up (`gate`).
    let gate = Arc::new(Gate::default());
    let serve_api = {
        let gate = Arc::clone(&gate);
        move || {
            std::thread::spawn(move || {
                for conn in listener.incoming().flatten() {
                    let gate = Arc::clone(&gate);
                    std::thread::spawn(move || {
                        if gate.wait() {
                            serve(running, conn)
                        }
                    });
                }
            });
        }
    };
    let serve_api = std::sync::Mutex::new(Some(serve_api));
    let start_serving = || {
        if let Some(serve) = serve_api.lock().unwrap_or_else(|e| e.into_inner()).take() {
            serve();
        }
    };
    if record.spec.runtime == RuntimeKind::Vm {
        gate.open(true);
        start_serving();
    }
    let config = match config {
        Some(config) => Ok(config),
        None => crate::pod::state::read_json::<SupervisorConfig>(&config_path(&dirs, &args.id)),
    };
    let sandbox = config
        .map_err(|e| e.to_string())
        .and_then(|c| c.sandbox(&record.spec, &args.id, &dirs));
    let sandbox =
        sandbox.and_then(|sandbox| running.attach_network(&args.id, &dirs).map(|()| sandbox));
    let sandbox = match sandbox {
        Ok(sandbox) => sandbox,
        Err(e) => {
            running.finish(Some(e.clone()));
            let _ = writeln!(ready, "error: {e}");
            let _ = std::fs::remove_file(&socket);
            return Err(SupervisorError::StartFailed(e));
        }
    };
    let booted = running.boot(sandbox, &start_serving);
    if let Err(e) = booted {
        running.finish(Some(e.to_string()));
        let _ = writeln!(ready, "error: {e}");
        let _ = std::fs::remove_file(&socket);
        gate.open(false);
        return Err(SupervisorError::StartFailed(e.to_string()));
    }
    let _ = writeln!(ready, "ok");
    drop(ready);
    // Started by `boot` after the sandbox's fork; here where `boot` did not get that far.
    start_serving();
    gate.open(true);

    running.wait_down(None);
    // Let clients waiting for the end get their answer.
    let deadline = std::time::Instant::now() + LINGER;
    while *running.waiters.lock().unwrap_or_else(|e| e.into_inner()) > 0
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_file(&socket);
    // An auto-remove pod is gone once its record is: whoever waits for it is told then
    // (the lock, and the attached clients' connections, which `run --rm` waits on), and its
    // files are deleted after.
    let doomed = match running
        .spec
        .auto_remove
        .then(|| registry.remove_later(&args.id))
    {
        Some(Ok(doomed)) => Some(doomed),
        Some(Err(e)) => {
            tracing::warn!("cannot remove the pod: {e}");
            running.save_end();
            None
        }
        None => None,
    };
    drop(lock);
    running.release_clients();
    crate::runtime::fork::lower_priority_for_exit();
    if let Some(Err(e)) = doomed.map(registry::Doomed::delete) {
        tracing::warn!("cannot delete the removed pod's files: {e}");
    }
    Ok(())
}

/// Holds the API's connections until the pod is up (`true`: serve them) or could not be
/// created (`false`: close them).
#[derive(Default)]
struct Gate {
    open: std::sync::Mutex<Option<bool>>,
    opened: std::sync::Condvar,
}

impl Gate {
    fn open(&self, serve: bool) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = Some(serve);
        self.opened.notify_all();
    }

    /// Blocks until the gate opens; whether to serve.
    fn wait(&self) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(serve) = *open {
                return serve;
            }
            open = self.opened.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Answers `Attached` on a connection whose stream frames follow.
pub(crate) fn write_attached(conn: &mut UnixStream) -> Result<(), String> {
    write_response(conn, &ApiResponse::Attached).map_err(|e| e.to_string())
}

/// Serves one client connection.
fn serve(pod: &'static RunningPod, mut conn: UnixStream) {
    match read_request(&mut conn) {
        Ok(ApiRequest::Hello { version }) if version == API_VERSION => {
            if write_response(
                &mut conn,
                &ApiResponse::Hello {
                    version: API_VERSION,
                },
            )
            .is_err()
            {
                return;
            }
        }
        Ok(ApiRequest::Hello { version }) => {
            let _ = write_response(
                &mut conn,
                &ApiResponse::error(format!(
                    "this supervisor speaks API version {API_VERSION}, the client {version}"
                )),
            );
            return;
        }
        Ok(_) => {
            let _ = write_response(
                &mut conn,
                &ApiResponse::error("say hello first (the API handshake)"),
            );
            return;
        }
        Err(_) => return,
    }
    loop {
        let request = match read_request(&mut conn) {
            Ok(r) => r,
            Err(_) => return,
        };
        let response = match request {
            ApiRequest::Hello { .. } => ApiResponse::error("hello was said already"),
            ApiRequest::Status => ApiResponse::State(Box::new(pod.state())),
            ApiRequest::Start => match pod.start() {
                Ok(()) => ApiResponse::Ok,
                Err((message, exit_code)) => ApiResponse::Error { message, exit_code },
            },
            ApiRequest::Attach {
                container,
                stdin,
                start,
            } if pod.has_container(&container) => {
                let Ok(reply) = conn.try_clone() else {
                    return;
                };
                let mut reply = reply;
                if let Err(e) = write_attached(&mut reply) {
                    tracing::debug!("attach: {e}");
                    return;
                }
                if let Err(e) = pod.attach(&container, conn, stdin) {
                    let _ = stream::StreamFrame::Stderr(format!("peapod: {e}\n").into_bytes())
                        .write_to(&mut reply);
                    return;
                }
                match start.then(|| pod.start()) {
                    None | Some(Ok(())) => {}
                    // The container's exit frame (126/127) follows and says why.
                    Some(Err((_, Some(_)))) if !pod.is_down() => {}
                    // Nothing will run (the VM is gone, an init container failed): say why
                    // and end the pod, which closes this connection.
                    Some(Err((message, _))) => {
                        let _ = stream::StreamFrame::Stderr(
                            format!("peapod: {message}\n").into_bytes(),
                        )
                        .write_to(&mut reply);
                        pod.finish(Some(message));
                    }
                }
                return;
            }
            ApiRequest::Attach { container, .. } => {
                ApiResponse::error(format!("the pod has no container {container}"))
            }
            ApiRequest::Exec { container, process } => {
                let Ok(reply) = conn.try_clone() else {
                    return;
                };
                match pod.exec(&container, process, conn) {
                    Ok(()) => return,
                    Err(e) => {
                        conn = reply;
                        ApiResponse::error(e)
                    }
                }
            }
            ApiRequest::Signal { container, signal } => {
                match pod.signal(container.as_deref(), signal) {
                    Ok(()) => ApiResponse::Ok,
                    Err(e) => ApiResponse::error(e),
                }
            }
            ApiRequest::Stop { timeout_s } => {
                *pod.waiters.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                pod.stop(Duration::from_secs(timeout_s));
                pod.wait_down(None);
                let r = ApiResponse::State(Box::new(pod.state()));
                let _ = write_response(&mut conn, &r);
                *pod.waiters.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                continue;
            }
            ApiRequest::Wait => {
                *pod.waiters.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                pod.wait_down(None);
                let r = ApiResponse::State(Box::new(pod.state()));
                let _ = write_response(&mut conn, &r);
                *pod.waiters.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                continue;
            }
        };
        if write_response(&mut conn, &response).is_err() {
            return;
        }
    }
}

/// Whether a pod in `status` still has work for a supervisor.
pub fn is_live(status: &PodStatus) -> bool {
    matches!(status, PodStatus::Created | PodStatus::Running)
}
