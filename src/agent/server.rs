//! The agent's listeners and connections: control connections carrying
//! [`Request`]/[`Response`] frames, and stdio connections (see [`crate::protocol`] for the
//! transport). Every connection gets its own thread; the pod's state lives in [`Agent`].
//!
//! Connections are `UnixStream`s: an accepted vsock socket is wrapped in one (its fd only
//! ever sees read, write and shutdown, which any stream socket supports), so the same code
//! serves Unix sockets in the unit tests.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::container::{self, ContainerInit, ExecInit, HelperEvent, read_event};
use super::hardening::Hardening;
use super::layout::{PodLayout, PodNetns};
use super::os::Os;
use super::process::{PidNs, Reaper, exit_status, pipe, recv_fd, spawn_helper, status_channel};
use super::volume;
use super::zygote::Zygote;
use super::{init, network};
use crate::protocol::{
    ContainerSpec, ErrorKind, ExitStatus, FrameError, PROTOCOL_VERSION, ProcessRef, ProcessSpec,
    Request, Response, SandboxSpec, StreamHello, StreamKind, WireError, read_frame, validate_id,
    write_frame,
};

/// How long `Shutdown` waits for the host to read its answer before powering off.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(2);
/// How long removing a container waits for its processes to die.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Something that hands out connections.
pub trait Accept: Send + 'static {
    fn accept(&self) -> io::Result<UnixStream>;
}

impl Accept for UnixListener {
    fn accept(&self) -> io::Result<UnixStream> {
        UnixListener::accept(self).map(|(s, _)| s)
    }
}

/// A vsock listener on `VMADDR_CID_ANY`.
pub struct VsockListener(OwnedFd);

impl VsockListener {
    pub fn bind(port: u32) -> io::Result<Self> {
        use nix::sys::socket::{
            AddressFamily, Backlog, SockFlag, SockType, VsockAddr, bind, listen, socket,
        };
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(io::Error::from)?;
        bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port)).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("bind vsock port {port}: {e}"),
            )
        })?;
        listen(&fd, Backlog::new(128).map_err(io::Error::from)?).map_err(io::Error::from)?;
        Ok(VsockListener(fd))
    }
}

impl Accept for VsockListener {
    fn accept(&self) -> io::Result<UnixStream> {
        use nix::sys::socket::{SockFlag, accept4};
        let fd = accept4(&self.0, SockFlag::SOCK_CLOEXEC).map_err(io::Error::from)?;
        Ok(UnixStream::from(fd))
    }
}

/// Serves `listener` forever, one thread per connection.
pub fn serve<L: Accept>(listener: L, handle: impl Fn(UnixStream) + Send + Sync + Clone + 'static) {
    loop {
        match listener.accept() {
            Ok(conn) => {
                let handle = handle.clone();
                std::thread::spawn(move || handle(conn));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("peapod-agent: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn err(kind: ErrorKind, message: impl Into<String>) -> WireError {
    WireError::new(kind, message)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One process: a container's own (its init's pid) or an exec.
struct Proc {
    pid: Pid,
    /// Host-side ends of its stdio waiting for an attach.
    streams: Mutex<HashMap<StreamKind, OwnedFd>>,
    attached: Mutex<HashSet<StreamKind>>,
    exit: Mutex<Option<ExitStatus>>,
    exited: Condvar,
}

impl Proc {
    fn new(pid: Pid, streams: HashMap<StreamKind, OwnedFd>) -> Arc<Self> {
        Arc::new(Proc {
            pid,
            streams: Mutex::new(streams),
            attached: Mutex::new(HashSet::new()),
            exit: Mutex::new(None),
            exited: Condvar::new(),
        })
    }

    fn finish(&self, status: ExitStatus) {
        *lock(&self.exit) = Some(status);
        self.exited.notify_all();
    }

    fn status(&self) -> Option<ExitStatus> {
        *lock(&self.exit)
    }

    fn wait(&self) -> ExitStatus {
        let mut exit = lock(&self.exit);
        loop {
            if let Some(status) = *exit {
                return status;
            }
            exit = self.exited.wait(exit).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let exit = lock(&self.exit);
        let (exit, _) = self
            .exited
            .wait_timeout_while(exit, timeout, |e| e.is_none())
            .unwrap_or_else(|e| e.into_inner());
        *exit
    }
}

/// A flag set once, waited for by others.
#[derive(Default)]
struct Latch {
    set: Mutex<bool>,
    changed: Condvar,
}

impl Latch {
    fn set(&self) {
        *lock(&self.set) = true;
        self.changed.notify_all();
    }

    /// Whether it is set within `timeout`.
    fn wait_timeout(&self, timeout: Duration) -> bool {
        let set = lock(&self.set);
        let (set, _) = self
            .changed
            .wait_timeout_while(set, timeout, |set| !*set)
            .unwrap_or_else(|e| e.into_inner());
        *set
    }
}

enum Phase {
    /// Set up, waiting for its start byte.
    Created {
        start: OwnedFd,
        events: Events,
    },
    Started,
}

struct Container {
    cgroup: PathBuf,
    /// Set once its init has been reaped: the process's end is known before (from init's
    /// last event), while init's own exit may still be taking the container's namespaces
    /// down.
    init_gone: Latch,
    /// The container's, for its exec'd processes too.
    hardening: Hardening,
    phase: Mutex<Phase>,
    main: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
}

impl Container {
    /// What `exec-init` gets to run `process` in this container: confined as the
    /// container's own process; `join_cgroup`: it was not started in the container's
    /// cgroup ([`super::process::Spawned::in_cgroup`]).
    fn exec_init(&self, process: ProcessSpec, join_cgroup: bool) -> ExecInit {
        ExecInit {
            container_pid: self.main.pid.as_raw(),
            cgroup: self.cgroup.clone(),
            join_cgroup,
            process,
            hardening: self.hardening,
        }
    }
}

#[derive(Default)]
struct State {
    sandbox: Option<SandboxSpec>,
    containers: HashMap<String, Arc<Container>>,
}

/// The pod's state and what the requests do to it.
pub struct Agent {
    os: Arc<dyn Os>,
    reaper: Arc<Reaper>,
    state: Mutex<State>,
    /// Where the pod's containers live and which machine-wide steps are the agent's.
    layout: PodLayout,
    /// The thread making the pod's network namespace ([`PodNetns::Make`]), started with the
    /// agent; joined by `CreateSandbox`.
    netns_maker: Mutex<Option<std::thread::JoinHandle<Result<(), init::InitError>>>>,
    /// Starts `container-init`s without executing the agent again, where there is one.
    zygote: Option<Zygote>,
}

/// The stdio of a process about to start: the child's ends and the host's.
struct Stdio {
    child: [OwnedFd; 3],
    host: HashMap<StreamKind, OwnedFd>,
}

fn stdio_for(p: &ProcessSpec) -> Result<Stdio, WireError> {
    let internal = |e: &dyn std::fmt::Display| err(ErrorKind::Internal, e.to_string());
    let mut host = HashMap::new();
    if p.tty {
        // The helper allocates the pty in the container's devpts and sends its master
        // back (see `events_of`); until then the process's stdio is /dev/null.
        let null = || -> Result<OwnedFd, WireError> {
            Ok(File::open("/dev/null").map_err(|e| internal(&e))?.into())
        };
        return Ok(Stdio {
            child: [null()?, null()?, null()?],
            host,
        });
    }
    let stdin = if p.stdin {
        let (r, w) = pipe().map_err(|e| internal(&e))?;
        host.insert(StreamKind::Stdin, w);
        r
    } else {
        File::open("/dev/null").map_err(|e| internal(&e))?.into()
    };
    let (out_r, out_w) = pipe().map_err(|e| internal(&e))?;
    let (err_r, err_w) = pipe().map_err(|e| internal(&e))?;
    host.insert(StreamKind::Stdout, out_r);
    host.insert(StreamKind::Stderr, err_r);
    Ok(Stdio {
        child: [stdin, out_w, err_w],
        host,
    })
}

/// A helper's status events.
type Events = BufReader<Box<dyn Read + Send>>;

/// The events of a helper's status channel, after taking the pty master a tty process's
/// helper sends first (a helper that failed before sends a line instead).
fn events_of(status: OwnedFd, tty: bool) -> (Events, Option<OwnedFd>) {
    let mut prefix = Vec::new();
    let mut pty = None;
    if tty && let Ok((byte, fd)) = recv_fd(&status) {
        match fd {
            Some(fd) => pty = Some(fd),
            None => prefix.extend(byte),
        }
    }
    let reader: Box<dyn Read + Send> = Box::new(io::Cursor::new(prefix).chain(File::from(status)));
    (BufReader::new(reader), pty)
}

impl Agent {
    /// An agent for the pod laid out as `layout` ([`PodLayout::guest`] in a pod VM). With
    /// [`PodNetns::Make`], making the pod's network namespace starts right away.
    pub fn new(os: Arc<dyn Os>, reaper: Arc<Reaper>, layout: PodLayout) -> Arc<Self> {
        Self::with_zygote(os, reaper, layout, None)
    }

    /// [`Agent::new`], with a [`Zygote`] of `container-init` for starting containers.
    pub fn with_zygote(
        os: Arc<dyn Os>,
        reaper: Arc<Reaper>,
        layout: PodLayout,
        zygote: Option<Zygote>,
    ) -> Arc<Self> {
        let netns_maker = match &layout.pod_netns {
            PodNetns::Make(path) => Some(init::spawn_pod_netns(path)),
            PodNetns::Given(_) => None,
        };
        Arc::new(Agent {
            os,
            reaper,
            state: Mutex::new(State::default()),
            layout,
            netns_maker: Mutex::new(netns_maker),
            zygote,
        })
    }

    /// The pod's layout.
    pub fn layout(&self) -> &PodLayout {
        &self.layout
    }

    /// Serves one control connection until it closes; returns true when the host asked
    /// for a shutdown (answered already; the caller powers off). `before_shutdown` runs
    /// before that answer, so that the answer means it is done (the host agent removes
    /// the pod's cgroup there); its error is the answer.
    pub fn serve_control(
        &self,
        conn: &mut UnixStream,
        before_shutdown: &dyn Fn() -> Result<(), String>,
    ) -> bool {
        let mut greeted = false;
        loop {
            let request: Request = match read_frame(conn) {
                Ok(r) => r,
                Err(FrameError::Closed) => return false,
                Err(e) => {
                    let _ = write_frame(
                        conn,
                        &Response::Error(err(ErrorKind::InvalidArgument, e.to_string())),
                    );
                    return false;
                }
            };
            let response = match request {
                Request::Hello { version } if version == PROTOCOL_VERSION => {
                    greeted = true;
                    Response::Hello {
                        version: PROTOCOL_VERSION,
                        agent: format!("peapod-agent {}", env!("CARGO_PKG_VERSION")),
                    }
                }
                Request::Hello { version } => {
                    let _ = write_frame(
                        conn,
                        &Response::Error(err(
                            ErrorKind::VersionMismatch {
                                agent: PROTOCOL_VERSION,
                                host: version,
                            },
                            format!(
                                "this agent speaks protocol version {PROTOCOL_VERSION}, the host {version}"
                            ),
                        )),
                    );
                    return false;
                }
                _ if !greeted => Response::Error(err(
                    ErrorKind::HandshakeRequired,
                    "send hello with the protocol version first",
                )),
                Request::Shutdown => {
                    let answer = match before_shutdown() {
                        Ok(()) => Response::Ok,
                        Err(e) => Response::Error(err(ErrorKind::Internal, e)),
                    };
                    if write_frame(conn, &answer).is_ok() {
                        // Let the answer reach the host before the VM goes away: wait
                        // until the host closes (or a moment passes).
                        let _ = conn.shutdown(Shutdown::Write);
                        let _ = conn.set_read_timeout(Some(SHUTDOWN_LINGER));
                        let _ = conn.read(&mut [0u8; 1]);
                    }
                    return true;
                }
                other => match self.handle(other) {
                    Ok(r) => r,
                    Err(e) => Response::Error(e),
                },
            };
            if write_frame(conn, &response).is_err() {
                return false;
            }
        }
    }

    /// Serves one stdio connection: its hello, then bytes until either side ends.
    pub fn serve_stream(&self, mut conn: UnixStream) {
        let hello: StreamHello = match read_frame(&mut conn) {
            Ok(h) => h,
            Err(e) => {
                let _ = write_frame(
                    &mut conn,
                    &Response::Error(err(ErrorKind::InvalidArgument, e.to_string())),
                );
                return;
            }
        };
        let fd = match self.take_stream(&hello) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = write_frame(&mut conn, &Response::Error(e));
                return;
            }
        };
        if write_frame(&mut conn, &Response::Ok).is_err() {
            return;
        }
        let mut pipe = File::from(fd);
        match hello.stream {
            StreamKind::Stdin => {
                let _ = io::copy(&mut conn, &mut pipe);
                // Dropping the pipe gives the process end of file.
            }
            StreamKind::Pty => {
                // Host keystrokes go in on a thread of their own; output goes out until the
                // terminal's last user is gone (the master then reads EIO).
                if let (Ok(mut master_in), Ok(mut conn_in)) = (pipe.try_clone(), conn.try_clone()) {
                    std::thread::spawn(move || {
                        let _ = io::copy(&mut conn_in, &mut master_in);
                    });
                }
                let _ = io::copy(&mut pipe, &mut conn);
                let _ = conn.shutdown(Shutdown::Write);
            }
            StreamKind::Stdout | StreamKind::Stderr => {
                let _ = io::copy(&mut pipe, &mut conn);
                let _ = conn.shutdown(Shutdown::Write);
            }
        }
    }

    fn take_stream(&self, hello: &StreamHello) -> Result<OwnedFd, WireError> {
        if hello.version != PROTOCOL_VERSION {
            return Err(err(
                ErrorKind::VersionMismatch {
                    agent: PROTOCOL_VERSION,
                    host: hello.version,
                },
                format!(
                    "this agent speaks protocol version {PROTOCOL_VERSION}, the host {}",
                    hello.version
                ),
            ));
        }
        let proc = self.process(&hello.process)?;
        if let Some(fd) = lock(&proc.streams).remove(&hello.stream) {
            lock(&proc.attached).insert(hello.stream);
            return Ok(fd);
        }
        if lock(&proc.attached).contains(&hello.stream) {
            return Err(err(
                ErrorKind::AlreadyExists,
                format!(
                    "{} of {} is attached already",
                    hello.stream.as_str(),
                    hello.process
                ),
            ));
        }
        Err(err(
            ErrorKind::InvalidArgument,
            format!(
                "{} has no {} stream (stdin needs stdin: true, pty needs tty: true, and a \
                 tty process has no other streams)",
                hello.process,
                hello.stream.as_str()
            ),
        ))
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, WireError> {
        lock(&self.state)
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| {
                err(
                    ErrorKind::NotFound,
                    format!("no container {id:?} in this pod"),
                )
            })
    }

    fn process(&self, p: &ProcessRef) -> Result<Arc<Proc>, WireError> {
        let c = self.container(&p.container_id)?;
        match &p.exec_id {
            None => Ok(Arc::clone(&c.main)),
            Some(e) => lock(&c.execs)
                .get(e)
                .cloned()
                .ok_or_else(|| err(ErrorKind::NotFound, format!("no {p}"))),
        }
    }

    /// Everything but `Hello` and `Shutdown`.
    pub fn handle(&self, request: Request) -> Result<Response, WireError> {
        match request {
            Request::Hello { .. } | Request::Shutdown => Err(err(
                ErrorKind::Internal,
                "hello and shutdown are handled by the connection",
            )),
            Request::CreateSandbox(spec) => self.create_sandbox(spec).map(|_| Response::Ok),
            Request::CreateContainer(spec) => self.create_container(spec).map(|_| Response::Ok),
            Request::StartContainer { container_id } => self.start(&container_id),
            Request::Exec {
                container_id,
                exec_id,
                process,
            } => self.exec(&container_id, &exec_id, process),
            Request::Wait { process } => Ok(Response::Exited(self.process(&process)?.wait())),
            Request::Signal { process, signal } => self.signal(&process, signal),
            Request::Stats { container_id } => {
                let c = self.container(&container_id)?;
                container::read_stats(self.os.as_ref(), &c.cgroup)
                    .map(Response::Stats)
                    .map_err(|e| err(ErrorKind::Internal, format!("stats of {container_id}: {e}")))
            }
            Request::RemoveContainer { container_id } => {
                self.remove(&container_id).map(|_| Response::Ok)
            }
        }
    }

    fn create_sandbox(&self, mut spec: SandboxSpec) -> Result<(), WireError> {
        spec.validate()?;
        let mut state = lock(&self.state);
        if state.sandbox.is_some() {
            return Err(err(ErrorKind::InvalidState, "the sandbox exists already"));
        }
        let layout = &self.layout;
        if !layout.write_sysctls && !spec.sysctls.is_empty() {
            return Err(err(
                ErrorKind::InvalidArgument,
                "sandbox: this runtime cannot set a pod's sysctls (they would be the host's): \
                 remove them or run the pod in a VM",
            ));
        }
        let setup = |e: &dyn std::fmt::Display| err(ErrorKind::Setup, format!("sandbox: {e}"));
        // The machine's hostname is the VM's; elsewhere only the containers' UTS namespaces
        // get the pod's hostname (container-init sets it after unsharing).
        if layout.set_hostname_of_machine {
            self.os.sethostname(&spec.hostname).map_err(|e| setup(&e))?;
        }
        init::write_pod_etc(self.os.as_ref(), layout, &spec).map_err(|e| setup(&e))?;
        if layout.seed_entropy {
            self.os
                .seed_entropy(&spec.entropy_seed)
                .map_err(|e| setup(&e))?;
        }
        if let Some(maker) = lock(&self.netns_maker).take() {
            maker
                .join()
                .map_err(|_| setup(&"the network namespace thread panicked"))?
                .map_err(|e| setup(&e))?;
        }
        if layout.configure_network
            && let Some(network) = &spec.network
        {
            network::configure_pod_network(self.os.as_ref(), layout.pod_netns.path(), network)
                .map_err(|e| setup(&e))?;
        }
        volume::create_volumes(self.os.as_ref(), layout, &spec.volumes).map_err(|e| setup(&e))?;
        volume::forget_secret_bytes(&mut spec.volumes);
        state.sandbox = Some(spec);
        Ok(())
    }

    fn create_container(&self, spec: ContainerSpec) -> Result<(), WireError> {
        self.layout.validate_container(&spec)?;
        // Held throughout: creates are rare and short, and this keeps ids unique.
        let mut state = lock(&self.state);
        let Some(sandbox) = &state.sandbox else {
            return Err(err(
                ErrorKind::InvalidState,
                "create the sandbox before its containers",
            ));
        };
        if state.containers.contains_key(&spec.id) {
            return Err(err(
                ErrorKind::AlreadyExists,
                format!("container {:?} exists already", spec.id),
            ));
        }
        let invalid = |e: &dyn std::fmt::Display| {
            err(
                ErrorKind::InvalidArgument,
                format!("container {}: {e}", spec.id),
            )
        };
        let layout = &self.layout;
        let mounts = volume::resolve_mounts(layout, &sandbox.volumes, &spec.mounts)
            .map_err(|e| invalid(&e))?;
        let init = ContainerInit::new(layout, &spec, &sandbox.hostname, mounts)
            .map_err(|e| invalid(&e))?;
        let id = spec.id.clone();
        let setup = |what: &str, e: &dyn std::fmt::Display| {
            err(ErrorKind::Setup, format!("container {id}: {what}: {e}"))
        };
        let os = self.os.as_ref();
        let cgroup = container::create_cgroup(os, layout, &id, &spec.resources)
            .map_err(|e| setup("cgroup", &e))?;
        if let Err(e) = container::create_dirs(os, layout, &id) {
            let _ = container::remove_dirs(os, layout, &id);
            return Err(setup("directories", &e));
        }
        match self.launch_container(&init) {
            Ok((pid, streams, start, events)) => {
                state.containers.insert(
                    id,
                    Arc::new(Container {
                        cgroup,
                        init_gone: Latch::default(),
                        hardening: init.hardening,
                        phase: Mutex::new(Phase::Created { start, events }),
                        main: Proc::new(pid, streams),
                        execs: Mutex::new(HashMap::new()),
                    }),
                );
                Ok(())
            }
            Err(e) => {
                let _ = container::remove_dirs(os, layout, &id);
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn launch_container(
        &self,
        init: &ContainerInit,
    ) -> Result<(Pid, HashMap<StreamKind, OwnedFd>, OwnedFd, Events), WireError> {
        let internal = |e: &dyn std::fmt::Display| err(ErrorKind::Internal, e.to_string());
        let stdio = stdio_for(&init.process)?;
        let (cfg_r, cfg_w) = pipe().map_err(|e| internal(&e))?;
        let (status_r, status_w) = status_channel().map_err(|e| internal(&e))?;
        let (start_r, start_w) = pipe().map_err(|e| internal(&e))?;
        // container-init stays outside the container's cgroup and forks the container's
        // process into it: the cgroup is empty, and can go, once the process has ended,
        // while container-init's own exit still takes the container's namespaces down.
        let cgroup: OwnedFd = File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&init.cgroup)
            .map_err(|e| {
                err(
                    ErrorKind::Setup,
                    format!("container {}: open {}: {e}", init.id, init.cgroup.display()),
                )
            })?
            .into();
        let [stdin, stdout, stderr] = &stdio.child;
        let spawned = spawn_helper(
            &self.reaper,
            PidNs::New,
            None,
            self.zygote.as_ref(),
            &["peapod-agent", "container-init"],
            &[stdin, stdout, stderr, &cfg_r, &status_w, &start_r, &cgroup],
        )
        .map_err(|e| err(ErrorKind::Setup, format!("container {}: {e}", init.id)))?;
        let pid = spawned.pid;
        drop((stdio.child, cfg_r, status_w, start_r, cgroup));
        let mut host = stdio.host;
        let sent = serde_json::to_vec(init)
            .map_err(|e| internal(&e))
            .and_then(|json| File::from(cfg_w).write_all(&json).map_err(|e| internal(&e)));
        let (mut events, pty) = events_of(status_r, init.process.tty);
        if let Some(master) = pty {
            host.insert(StreamKind::Pty, master);
        }
        let outcome = sent.and_then(|_| {
            read_event(&mut events).map_err(|e| err(ErrorKind::Setup, e.to_string()))
        });
        match outcome {
            Ok(Some(HelperEvent::Ready)) => Ok((pid, host, start_w, events)),
            other => {
                drop(start_w);
                let ws = self.reaper.wait_timeout(pid, REMOVE_TIMEOUT);
                let why = match other {
                    Ok(Some(HelperEvent::SetupFailed { message })) => message,
                    Ok(Some(e)) => format!("unexpected {e:?}"),
                    Ok(None) => format!("the container's init ended early ({ws:?})"),
                    Err(e) => e.message,
                };
                Err(err(
                    ErrorKind::Setup,
                    format!("setting up container {} failed: {why}", init.id),
                ))
            }
        }
    }

    fn start(&self, id: &str) -> Result<Response, WireError> {
        let c = self.container(id)?;
        let mut phase = lock(&c.phase);
        let Phase::Created { .. } = &*phase else {
            return Err(err(
                ErrorKind::InvalidState,
                format!("container {id} was started already"),
            ));
        };
        let Phase::Created { start, mut events } = std::mem::replace(&mut *phase, Phase::Started)
        else {
            unreachable!("checked just above")
        };
        drop(phase);
        let wrote = File::from(start).write_all(&[1]);
        let first = match wrote {
            Ok(()) => read_event(&mut events).ok().flatten(),
            Err(_) => None,
        };
        let failure = match &first {
            Some(HelperEvent::Started) => None,
            Some(HelperEvent::ExecFailed { message, .. }) => Some(message.clone()),
            other => Some(format!(
                "the container's init ended before starting it ({other:?})"
            )),
        };
        let last = match first {
            Some(HelperEvent::Started) => None,
            Some(HelperEvent::ExecFailed { code, .. }) => Some(ExitStatus::exited(code)),
            _ => None,
        };
        self.monitor_container(Arc::clone(&c), events, last);
        match failure {
            None => Ok(Response::Started {
                pid: c.main.pid.as_raw() as u32,
            }),
            Some(message) => Err(err(ErrorKind::Setup, format!("container {id}: {message}"))),
        }
    }

    /// Follows the container's init until it ends and records the process's status: as
    /// soon as init reports it (`last`: known already), not once init's own exit has taken
    /// the container's namespaces down (milliseconds); from init's exit where it reported
    /// nothing.
    fn monitor_container(&self, c: Arc<Container>, mut events: Events, last: Option<ExitStatus>) {
        let reaper = Arc::clone(&self.reaper);
        let os = Arc::clone(&self.os);
        std::thread::spawn(move || {
            let finish = |mut status: ExitStatus| {
                status.oom_killed = status.signal == Some(Signal::SIGKILL as i32)
                    && container::oom_kills(os.as_ref(), &c.cgroup) > 0;
                c.main.finish(status);
            };
            let mut reported = last.is_some();
            if let Some(status) = last {
                finish(status);
            }
            while !reported {
                match read_event(&mut events) {
                    Ok(Some(HelperEvent::Exited { code, signal })) => {
                        finish(ExitStatus {
                            code,
                            signal,
                            oom_killed: false,
                        });
                        reported = true;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            let ws = reaper.wait(c.main.pid);
            if !reported {
                finish(exit_status(ws));
            }
            c.init_gone.set();
        });
    }

    fn exec(&self, id: &str, exec_id: &str, process: ProcessSpec) -> Result<Response, WireError> {
        validate_id("exec id", exec_id)?;
        process.validate()?;
        let c = self.container(id)?;
        if matches!(*lock(&c.phase), Phase::Created { .. }) || c.main.status().is_some() {
            return Err(err(
                ErrorKind::InvalidState,
                format!("container {id} is not running: exec needs a started, running container"),
            ));
        }
        let mut execs = lock(&c.execs);
        if execs.contains_key(exec_id) {
            return Err(err(
                ErrorKind::AlreadyExists,
                format!("exec {exec_id} of container {id} exists already"),
            ));
        }
        let internal = |e: &dyn std::fmt::Display| err(ErrorKind::Internal, e.to_string());
        let stdio = stdio_for(&process)?;
        let (cfg_r, cfg_w) = pipe().map_err(|e| internal(&e))?;
        let (status_r, status_w) = status_channel().map_err(|e| internal(&e))?;
        let [stdin, stdout, stderr] = &stdio.child;
        let ns = Path::new("/proc")
            .join(c.main.pid.as_raw().to_string())
            .join("ns/pid");
        let spawned = spawn_helper(
            &self.reaper,
            PidNs::Join(ns),
            Some(&c.cgroup),
            None,
            &["peapod-agent", "exec-init"],
            &[stdin, stdout, stderr, &cfg_r, &status_w],
        )
        .map_err(|e| err(ErrorKind::Setup, format!("exec {exec_id} in {id}: {e}")))?;
        let pid = spawned.pid;
        drop((stdio.child, cfg_r, status_w));
        let baseline = container::oom_kills(self.os.as_ref(), &c.cgroup);
        let config = c.exec_init(process, !spawned.in_cgroup);
        let sent = serde_json::to_vec(&config)
            .map_err(|e| internal(&e))
            .and_then(|json| File::from(cfg_w).write_all(&json).map_err(|e| internal(&e)));
        let tty = config.process.tty;
        let (mut events, pty) = events_of(status_r, tty);
        let mut host = stdio.host;
        if let Some(master) = pty {
            host.insert(StreamKind::Pty, master);
        }
        let failure = match sent {
            Err(e) => Some(e.message),
            Ok(()) => match read_event(&mut events) {
                Ok(None) => None,
                Ok(Some(HelperEvent::ExecFailed { message, .. }))
                | Ok(Some(HelperEvent::SetupFailed { message })) => Some(message),
                Ok(Some(other)) => Some(format!("unexpected {other:?}")),
                Err(e) => Some(e.to_string()),
            },
        };
        let proc = Proc::new(pid, host);
        execs.insert(exec_id.to_string(), Arc::clone(&proc));
        drop(execs);
        let reaper = Arc::clone(&self.reaper);
        let os = Arc::clone(&self.os);
        let cgroup = c.cgroup.clone();
        let watched = Arc::clone(&proc);
        std::thread::spawn(move || {
            let ws = reaper.wait(watched.pid);
            let mut status = exit_status(ws);
            status.oom_killed = matches!(ws, WaitStatus::Signaled(_, Signal::SIGKILL, _))
                && container::oom_kills(os.as_ref(), &cgroup) > baseline;
            watched.finish(status);
        });
        match failure {
            None => Ok(Response::Started {
                pid: pid.as_raw() as u32,
            }),
            Some(message) => Err(err(
                ErrorKind::Setup,
                format!("exec {exec_id} in container {id}: {message}"),
            )),
        }
    }

    fn signal(&self, p: &ProcessRef, signal: i32) -> Result<Response, WireError> {
        let sig = Signal::try_from(signal).map_err(|_| {
            err(
                ErrorKind::InvalidArgument,
                format!("{signal} is not a Linux signal number"),
            )
        })?;
        let proc = self.process(p)?;
        if proc.status().is_some() {
            return Err(err(ErrorKind::InvalidState, format!("{p} has exited")));
        }
        kill(proc.pid, sig)
            .map_err(|e| err(ErrorKind::Internal, format!("signal {sig} to {p}: {e}")))?;
        Ok(Response::Ok)
    }

    fn remove(&self, id: &str) -> Result<(), WireError> {
        let c = self.container(id)?;
        {
            let mut phase = lock(&c.phase);
            if let Phase::Created { .. } = &*phase {
                // Dropping the start pipe makes the waiting init exit.
                *phase = Phase::Started;
                drop(phase);
                let ws = self.reaper.wait_timeout(c.main.pid, REMOVE_TIMEOUT);
                c.main
                    .finish(ws.map_or(ExitStatus::signaled(9), exit_status));
                c.init_gone.set();
            }
        }
        if c.main.status().is_none() {
            let _ = kill(c.main.pid, Signal::SIGKILL);
            if c.main.wait_timeout(REMOVE_TIMEOUT).is_none() {
                return Err(err(
                    ErrorKind::Internal,
                    format!("container {id} did not die within {REMOVE_TIMEOUT:?} of SIGKILL"),
                ));
            }
        }
        // The process has ended; its init may still be leaving (with it go the container's
        // mounts and its place in the cgroup).
        if !c.init_gone.wait_timeout(REMOVE_TIMEOUT) {
            return Err(err(
                ErrorKind::Internal,
                format!("the init of container {id} did not end within {REMOVE_TIMEOUT:?}"),
            ));
        }
        // Execs die with the PID namespace; give the cgroup a moment to empty.
        let os = self.os.as_ref();
        let mut result = container::remove_dirs(os, &self.layout, id);
        for _ in 0..50 {
            if result.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            result = container::remove_dirs(os, &self.layout, id);
        }
        lock(&self.state).containers.remove(id);
        result.map_err(|e| err(ErrorKind::Internal, format!("removing container {id}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::os::{Call, RecordingOs};
    use crate::protocol::client::{Client, ClientError, attach_stream};
    use crate::protocol::message::tests::{sample_container, sample_volumes};
    use crate::protocol::{MountSource, SandboxVolumeKind};

    /// The guest's layout with the pod's network namespace given rather than made: unit
    /// tests are not root.
    fn test_layout() -> PodLayout {
        let guest = PodLayout::guest();
        PodLayout {
            pod_netns: PodNetns::Given(guest.pod_netns.path().into()),
            ..guest
        }
    }

    fn cgroup_dir(id: &str) -> PathBuf {
        test_layout().cgroup_dir(id)
    }

    fn agent(os: Arc<RecordingOs>) -> (Arc<Agent>, Client<UnixStream>) {
        agent_with(os, test_layout())
    }

    fn agent_with(os: Arc<RecordingOs>, layout: PodLayout) -> (Arc<Agent>, Client<UnixStream>) {
        let agent = Agent::new(os, Reaper::new(), layout);
        let (host, mut guest) = UnixStream::pair().unwrap();
        let a = Arc::clone(&agent);
        std::thread::spawn(move || a.serve_control(&mut guest, &|| Ok(())));
        (agent, Client::handshake(host).unwrap())
    }

    #[test]
    fn an_exec_is_confined_as_its_container() {
        for hardening in [
            Hardening {
                privileged: true,
                seccomp: true,
            },
            Hardening {
                privileged: false,
                seccomp: true,
            },
            Hardening::default(),
        ] {
            let c = Container {
                cgroup: cgroup_dir("web"),
                init_gone: Latch::default(),
                hardening,
                phase: Mutex::new(Phase::Started),
                main: Proc::new(Pid::from_raw(42), HashMap::new()),
                execs: Mutex::new(HashMap::new()),
            };
            let exec = c.exec_init(sample_container("web").process, true);
            assert_eq!(exec.hardening, hardening);
            assert_eq!(exec.container_pid, 42);
            // The helper reads it back as sent.
            let json = serde_json::to_string(&exec).unwrap();
            assert_eq!(serde_json::from_str::<ExecInit>(&json).unwrap(), exec);
        }
    }

    #[test]
    fn a_shutdown_is_answered_after_the_pods_end_and_with_its_error() {
        for failing in [false, true] {
            let agent = Agent::new(Arc::new(RecordingOs::new()), Reaper::new(), test_layout());
            let (host, mut guest) = UnixStream::pair().unwrap();
            let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let a = Arc::clone(&agent);
            let e = Arc::clone(&ended);
            let t = std::thread::spawn(move || {
                a.serve_control(&mut guest, &|| {
                    std::thread::sleep(Duration::from_millis(50));
                    e.store(true, std::sync::atomic::Ordering::SeqCst);
                    match failing {
                        false => Ok(()),
                        true => Err("the cgroup is busy".into()),
                    }
                })
            });
            let mut c = Client::handshake(host).unwrap();
            let answer = c.shutdown();
            assert!(
                ended.load(std::sync::atomic::Ordering::SeqCst),
                "answered before"
            );
            match failing {
                false => answer.unwrap(),
                true => assert!(answer.unwrap_err().to_string().contains("cgroup is busy")),
            }
            drop(c);
            assert!(t.join().unwrap(), "a shutdown either way");
        }
    }

    #[test]
    fn requests_before_hello_are_refused_and_a_wrong_version_is_named() {
        let agent = Agent::new(Arc::new(RecordingOs::new()), Reaper::new(), test_layout());
        let (mut host, mut guest) = UnixStream::pair().unwrap();
        let a = Arc::clone(&agent);
        let t = std::thread::spawn(move || a.serve_control(&mut guest, &|| Ok(())));
        write_frame(
            &mut host,
            &Request::Stats {
                container_id: "x".into(),
            },
        )
        .unwrap();
        let r: Response = read_frame(&mut host).unwrap();
        assert!(matches!(
            r,
            Response::Error(WireError {
                kind: ErrorKind::HandshakeRequired,
                ..
            })
        ));
        write_frame(&mut host, &Request::Hello { version: 99 }).unwrap();
        let r: Response = read_frame(&mut host).unwrap();
        assert!(matches!(
            r,
            Response::Error(WireError {
                kind: ErrorKind::VersionMismatch {
                    agent: PROTOCOL_VERSION,
                    host: 99
                },
                ..
            })
        ));
        assert!(!t.join().unwrap(), "the connection closes after a mismatch");
        let err = Client::handshake({
            let (host, mut guest) = UnixStream::pair().unwrap();
            std::thread::spawn(move || {
                let _: Request = read_frame(&mut guest).unwrap();
                write_frame(
                    &mut guest,
                    &Response::Hello {
                        version: 0,
                        agent: "old".into(),
                    },
                )
                .unwrap();
            });
            host
        })
        .unwrap_err();
        assert!(matches!(err, ClientError::VersionMismatch { agent: 0, .. }));
    }

    #[test]
    fn the_sandbox_comes_first_and_only_once() {
        let os = Arc::new(RecordingOs::new());
        let (_agent, mut c) = agent(Arc::clone(&os));
        let err = c.create_container(&sample_container("web")).unwrap_err();
        assert_eq!(err.wire_kind(), Some(ErrorKind::InvalidState));
        let spec = SandboxSpec {
            hostname: "pod".into(),
            ..Default::default()
        };
        c.create_sandbox(&spec).unwrap();
        assert!(os.calls().contains(&Call::Sethostname("pod".into())));
        assert_eq!(
            c.create_sandbox(&spec).unwrap_err().wire_kind(),
            Some(ErrorKind::InvalidState)
        );
        let bad = SandboxSpec {
            hostname: "no spaces".into(),
            ..Default::default()
        };
        assert_eq!(
            c.create_sandbox(&bad).unwrap_err().wire_kind(),
            Some(ErrorKind::InvalidArgument)
        );
    }

    #[test]
    fn the_sandbox_sets_up_its_network_after_etc_and_before_volumes() {
        use crate::protocol::message::tests::sample_network;
        let mac = "02:42:0a:58:00:05".parse().unwrap();
        let os = Arc::new(RecordingOs::new().with_nic(mac, 2));
        let (_agent, mut c) = agent(Arc::clone(&os));
        c.create_sandbox(&SandboxSpec {
            hostname: "p".into(),
            volumes: sample_volumes(),
            network: Some(sample_network()),
            ..Default::default()
        })
        .unwrap();
        let calls = os.calls();
        let position = |pred: &dyn Fn(&Call) -> bool| calls.iter().position(pred).unwrap();
        let hosts = position(&|c| matches!(c, Call::WriteFile(p, _) if p.ends_with("hosts")));
        let lookup = position(&|c| matches!(c, Call::LinkByMac(_)));
        let moved = position(
            &|c| matches!(c, Call::MoveLink { index: 2, netns } if netns == Path::new("/run/peapod/netns")),
        );
        let configured = position(&|c| matches!(c, Call::ConfigureInterface(..)));
        let route = position(&|c| matches!(c, Call::AddRoute(..)));
        let volume = position(&|c| matches!(c, Call::Mount { .. }));
        assert!(hosts < lookup && lookup < moved && moved < configured && configured < route);
        assert!(route < volume);
        let Call::WriteFile(_, hosts) = &calls[hosts] else {
            unreachable!()
        };
        assert!(hosts.contains("10.88.0.5\tp\n"), "{hosts}");
    }

    #[test]
    fn a_host_sandbox_never_names_seeds_or_rewires_the_machine() {
        use crate::protocol::message::tests::sample_network;
        let id = crate::pod::PodId::parse(&"5".repeat(64)).unwrap();
        let host = PodLayout::host(&id, Path::new("/run/peapod"));
        let mac = "02:42:0a:58:00:05".parse().unwrap();
        let spec = SandboxSpec {
            hostname: "p".into(),
            entropy_seed: vec![7; 32],
            volumes: sample_volumes(),
            network: Some(sample_network()),
            ..Default::default()
        };
        // The same spec in the guest names the VM, feeds its pool and moves its NIC...
        let os = Arc::new(RecordingOs::new().with_nic(mac, 2));
        let (_agent, mut c) = agent(Arc::clone(&os));
        c.create_sandbox(&spec).unwrap();
        let calls = os.calls();
        assert!(calls.contains(&Call::Sethostname("p".into())));
        assert!(calls.contains(&Call::SeedEntropy(32)));
        assert!(calls.iter().any(|c| matches!(c, Call::MoveLink { .. })));

        // ...and on the host does none of that: the CNI configured the given namespace.
        let os = Arc::new(RecordingOs::new().with_nic(mac, 2));
        let (agent, mut c) = agent_with(Arc::clone(&os), host.clone());
        assert_eq!(agent.layout(), &host);
        c.create_sandbox(&spec).unwrap();
        let calls = os.calls();
        assert!(
            !calls.iter().any(|c| matches!(
                c,
                Call::Sethostname(_)
                    | Call::SeedEntropy(_)
                    | Call::LinkByMac(_)
                    | Call::MoveLink { .. }
                    | Call::ConfigureInterface(..)
                    | Call::AddRoute(..)
            )),
            "{calls:#?}"
        );
        // The pod's /etc files and volumes are its own, and /etc/hosts still names its
        // address.
        let hosts = host.pod_etc.join("hosts");
        assert!(calls.iter().any(|c| matches!(c, Call::WriteFile(p, text)
            if p == &hosts && text.contains("10.88.0.5\tp\n"))));
        for name in ["cache", "scratch", "tls"] {
            let dir = host.volume_dir(name);
            assert!(
                calls
                    .iter()
                    .any(|c| matches!(c, Call::Mount { target, .. } if target == &dir)),
                "{name}"
            );
        }
        for call in &calls {
            if let Call::WriteFile(p, _) | Call::MkdirAll(p, _) | Call::Mount { target: p, .. } =
                call
            {
                assert!(
                    p.starts_with(&host.run_dir),
                    "{} is not the pod's",
                    p.display()
                );
            }
        }

        // A container's cgroup and directories are the pod's too.
        let before = calls.len();
        let mut web = sample_container("web");
        web.mounts
            .retain(|m| !matches!(m.source, MountSource::Block { .. }));
        web.rootfs.device = "/var/lib/peapod/images/abc/rootfs".into();
        assert_eq!(
            c.create_container(&web).unwrap_err().wire_kind(),
            Some(ErrorKind::Setup),
            "gets as far as the (fake) setup"
        );
        let calls = os.calls();
        assert_eq!(calls[before], Call::MkdirAll(host.cgroup_dir("web"), 0o755));
        assert!(calls[before..].contains(&Call::RemoveDir(host.container_dir("web"))));
        assert!(calls[before..].contains(&Call::RemoveDir(host.cgroup_dir("web"))));
    }

    #[test]
    fn a_host_sandbox_with_sysctls_or_a_container_with_a_block_mount_is_refused() {
        let id = crate::pod::PodId::parse(&"6".repeat(64)).unwrap();
        let host = PodLayout::host(&id, Path::new("/run/peapod"));
        let os = Arc::new(RecordingOs::new());
        let (_agent, mut c) = agent_with(Arc::clone(&os), host);
        let mut spec = SandboxSpec {
            hostname: "p".into(),
            ..Default::default()
        };
        spec.sysctls
            .insert("net.ipv4.ip_forward".into(), "1".into());
        let e = c.create_sandbox(&spec).unwrap_err();
        assert_eq!(e.wire_kind(), Some(ErrorKind::InvalidArgument));
        assert!(e.to_string().contains("sysctls"), "{e}");
        assert!(os.calls().is_empty(), "refused before anything is written");
        spec.sysctls.clear();
        spec.volumes = sample_volumes();
        c.create_sandbox(&spec).unwrap();
        let before = os.calls().len();
        let e = c.create_container(&sample_container("web")).unwrap_err();
        assert_eq!(e.wire_kind(), Some(ErrorKind::InvalidArgument));
        assert!(e.to_string().contains("/dev/vdc"), "{e}");
        assert_eq!(os.calls().len(), before, "no cgroup, no directories");
    }

    #[test]
    fn a_sandbox_whose_nic_is_missing_fails_naming_the_mac() {
        use crate::protocol::message::tests::sample_network;
        let os = Arc::new(RecordingOs::new());
        let (_agent, mut c) = agent(Arc::clone(&os));
        let spec = SandboxSpec {
            hostname: "p".into(),
            network: Some(sample_network()),
            ..Default::default()
        };
        let err = c.create_sandbox(&spec).unwrap_err();
        assert_eq!(err.wire_kind(), Some(ErrorKind::Setup));
        assert!(err.to_string().contains("02:42:0a:58:00:05"), "{err}");
        let mut bad = spec.clone();
        bad.network.as_mut().unwrap().interfaces[0].mtu = 20;
        assert_eq!(
            c.create_sandbox(&bad).unwrap_err().wire_kind(),
            Some(ErrorKind::InvalidArgument)
        );
    }

    #[test]
    fn unknown_containers_and_bad_arguments_are_typed_errors() {
        let (_agent, mut c) = agent(Arc::new(RecordingOs::new()));
        let web = ProcessRef::container("web");
        assert_eq!(
            c.start_container("web").unwrap_err().wire_kind(),
            Some(ErrorKind::NotFound)
        );
        assert_eq!(
            c.wait(&web).unwrap_err().wire_kind(),
            Some(ErrorKind::NotFound)
        );
        assert_eq!(
            c.stats("web").unwrap_err().wire_kind(),
            Some(ErrorKind::NotFound)
        );
        assert_eq!(
            c.remove_container("web").unwrap_err().wire_kind(),
            Some(ErrorKind::NotFound)
        );
        assert_eq!(
            c.signal(&web, 9999).unwrap_err().wire_kind(),
            Some(ErrorKind::InvalidArgument)
        );
        let mut spec = sample_container("../x");
        assert_eq!(
            c.create_container(&spec).unwrap_err().wire_kind(),
            Some(ErrorKind::InvalidArgument)
        );
        spec = sample_container("web");
        assert_eq!(
            c.exec("web", "e/1", &spec.process).unwrap_err().wire_kind(),
            Some(ErrorKind::InvalidArgument)
        );
    }

    #[test]
    fn a_tty_process_gets_its_pty_from_the_helper_and_pipes_otherwise() {
        let mut p = sample_container("web").process;
        p.stdin = false;
        let pipes = stdio_for(&p).unwrap();
        let mut kinds: Vec<_> = pipes.host.keys().copied().collect();
        kinds.sort();
        assert_eq!(kinds, [StreamKind::Stdout, StreamKind::Stderr]);
        p.stdin = true;
        assert!(stdio_for(&p).unwrap().host.contains_key(&StreamKind::Stdin));
        p.tty = true;
        // The pty comes from the helper, inside the container; until then: nothing.
        let pty = stdio_for(&p).unwrap();
        assert!(pty.host.is_empty());
        assert!(!nix::unistd::isatty(&pty.child[1]).unwrap());
        let (status, helper) = status_channel().unwrap();
        let (master, _slave) = crate::agent::process::open_pty().unwrap();
        crate::agent::process::send_fd(&helper, &master).unwrap();
        File::from(helper).write_all(b"\"ready\"\n").unwrap();
        let (mut events, got) = events_of(status, true);
        assert!(got.is_some());
        assert_eq!(read_event(&mut events).unwrap(), Some(HelperEvent::Ready));
    }

    #[test]
    fn a_failing_setup_is_reported_and_cleaned_up() {
        let os = Arc::new(
            RecordingOs::new()
                .failing(|c| matches!(c, Call::MkdirAll(p, _) if p.ends_with("lower"))),
        );
        let (_agent, mut c) = agent(Arc::clone(&os));
        c.create_sandbox(&SandboxSpec {
            hostname: "p".into(),
            volumes: sample_volumes(),
            ..Default::default()
        })
        .unwrap();
        let err = c.create_container(&sample_container("web")).unwrap_err();
        assert_eq!(err.wire_kind(), Some(ErrorKind::Setup));
        assert!(err.to_string().contains("directories"), "{err}");
        assert!(
            os.calls()
                .contains(&Call::RemoveDir("/sys/fs/cgroup/peapod/web".into()))
        );
        assert_eq!(
            c.start_container("web").unwrap_err().wire_kind(),
            Some(ErrorKind::NotFound)
        );
    }

    #[test]
    fn the_sandbox_makes_the_pod_volumes_and_keeps_no_secret_bytes() {
        let os = Arc::new(RecordingOs::new());
        let (agent, mut c) = agent(Arc::clone(&os));
        c.create_sandbox(&SandboxSpec {
            hostname: "p".into(),
            volumes: sample_volumes(),
            ..Default::default()
        })
        .unwrap();
        let calls = os.calls();
        for name in ["cache", "scratch", "tls"] {
            let dir = Path::new("/run/peapod/volumes").join(name);
            assert!(
                calls
                    .iter()
                    .any(|c| matches!(c, Call::Mount { target, fstype: Some(t), .. }
                    if target == &dir && t == "tmpfs")),
                "{name}"
            );
        }
        let state = lock(&agent.state);
        let kept = &state.sandbox.as_ref().unwrap().volumes;
        let SandboxVolumeKind::Secret { files } = &kept[2].kind else {
            panic!("the third sample volume is the secret")
        };
        assert_eq!(files.len(), 3);
        assert!(files.values().all(Vec::is_empty), "only the names stay");
    }

    #[test]
    fn a_container_mounting_a_volume_the_pod_lacks_is_refused_before_any_setup() {
        let os = Arc::new(RecordingOs::new());
        let (_agent, mut c) = agent(Arc::clone(&os));
        c.create_sandbox(&SandboxSpec {
            hostname: "p".into(),
            ..Default::default()
        })
        .unwrap();
        let before = os.calls().len();
        let err = c.create_container(&sample_container("web")).unwrap_err();
        assert_eq!(err.wire_kind(), Some(ErrorKind::InvalidArgument));
        assert!(err.to_string().contains("\"cache\""), "{err}");
        assert_eq!(os.calls().len(), before, "no cgroup, no directories");
        let mut spec = sample_container("web");
        spec.mounts
            .retain(|m| !matches!(m.source, MountSource::PodVolume { .. }));
        assert_eq!(
            c.create_container(&spec).unwrap_err().wire_kind(),
            Some(ErrorKind::Setup),
            "the same container without them gets as far as the (fake) setup"
        );
    }

    /// The latch of a container whose init has been reaped.
    fn gone() -> Latch {
        let latch = Latch::default();
        latch.set();
        latch
    }

    /// A container whose process has exited, with its stdout still to attach.
    fn exited_container(agent: &Agent, id: &str, code: i32) -> OwnedFd {
        let (out_r, out_w) = pipe().unwrap();
        let main = Proc::new(
            Pid::from_raw(i32::MAX),
            HashMap::from([(StreamKind::Stdout, out_r)]),
        );
        main.finish(ExitStatus::exited(code));
        lock(&agent.state).containers.insert(
            id.into(),
            Arc::new(Container {
                cgroup: cgroup_dir(id),
                init_gone: gone(),
                hardening: Hardening::default(),
                phase: Mutex::new(Phase::Started),
                main,
                execs: Mutex::new(HashMap::new()),
            }),
        );
        out_w
    }

    #[test]
    fn a_container_is_removed_once_its_init_is_gone_not_when_its_process_ended() {
        let os = Arc::new(RecordingOs::new());
        let (agent, mut c) = agent(Arc::clone(&os));
        let main = Proc::new(Pid::from_raw(i32::MAX), HashMap::new());
        main.finish(ExitStatus::exited(0));
        let web = Arc::new(Container {
            cgroup: cgroup_dir("web"),
            init_gone: Latch::default(),
            hardening: Hardening::default(),
            phase: Mutex::new(Phase::Started),
            main,
            execs: Mutex::new(HashMap::new()),
        });
        lock(&agent.state)
            .containers
            .insert("web".into(), Arc::clone(&web));
        let removals = |os: &RecordingOs| {
            os.calls()
                .iter()
                .filter(|c| matches!(c, Call::RemoveDir(_)))
                .count()
        };
        let leaving = {
            let os = Arc::clone(&os);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                let before = removals(&os);
                web.init_gone.set();
                before
            })
        };
        c.remove_container("web").unwrap();
        assert_eq!(
            leaving.join().unwrap(),
            0,
            "nothing removed before init was gone"
        );
        assert!(os.calls().contains(&Call::RemoveDir(cgroup_dir("web"))));
        assert_eq!(
            c.wait(&ProcessRef::container("web"))
                .unwrap_err()
                .wire_kind(),
            Some(ErrorKind::NotFound)
        );
    }

    #[test]
    fn a_restart_frees_the_id_and_its_leftovers_and_keeps_the_volumes() {
        // Stop the second create right after its cgroup, before a helper would be spawned
        // (the unit tests cannot run one): the first create was not made through the OS.
        let os = Arc::new(
            RecordingOs::new()
                .failing(|c| matches!(c, Call::MkdirAll(p, _) if p.ends_with("web/lower"))),
        );
        let (agent, mut c) = agent(Arc::clone(&os));
        c.create_sandbox(&SandboxSpec {
            hostname: "p".into(),
            volumes: sample_volumes(),
            ..Default::default()
        })
        .unwrap();
        let out_w = exited_container(&agent, "web", 3);
        let web = ProcessRef::container("web");
        let attach = |kind| {
            let (mut host, guest) = UnixStream::pair().unwrap();
            let a = Arc::clone(&agent);
            std::thread::spawn(move || a.serve_stream(guest));
            attach_stream(&mut host, &web, kind).map(|_| host)
        };
        let mut out = attach(StreamKind::Stdout).unwrap();
        drop(out_w);
        let mut rest = Vec::new();
        out.read_to_end(&mut rest).unwrap();
        assert_eq!(c.wait(&web).unwrap(), ExitStatus::exited(3));
        assert_eq!(
            c.create_container(&sample_container("web"))
                .unwrap_err()
                .wire_kind(),
            Some(ErrorKind::AlreadyExists),
            "the id is taken until the container is removed"
        );

        let before = os.calls().len();
        c.remove_container("web").unwrap();
        let c_dir = Path::new("/run/peapod/containers/web");
        assert_eq!(
            os.calls()[before..],
            [
                Call::RemoveDir(c_dir.join("lower")),
                Call::RemoveDir(c_dir.join("rw")),
                Call::RemoveDir(c_dir.join("root")),
                Call::RemoveDir(c_dir.join("")),
                Call::RemoveDir(cgroup_dir("web")),
            ],
            "the container's directories and cgroup go; the pod's volumes stay"
        );
        for gone in [
            c.wait(&web).unwrap_err().wire_kind(),
            attach(StreamKind::Stdout).unwrap_err().wire_kind(),
            c.start_container("web").unwrap_err().wire_kind(),
        ] {
            assert_eq!(gone, Some(ErrorKind::NotFound));
        }

        let before = os.calls().len();
        let err = c.create_container(&sample_container("web")).unwrap_err();
        assert_eq!(err.wire_kind(), Some(ErrorKind::Setup), "{err}");
        let again = &os.calls()[before..];
        assert_eq!(again[0], Call::MkdirAll(cgroup_dir("web"), 0o755));
        assert!(
            again.contains(&Call::RemoveDir(cgroup_dir("web"))),
            "cleaned up"
        );
        assert!(!os.calls().iter().any(|call| matches!(call,
            Call::UmountDetach(p) | Call::RemoveDir(p) if p.starts_with("/run/peapod/volumes"))));

        // A new process of the same id gets fresh streams, attachable once more.
        let _out_w = exited_container(&agent, "web", 0);
        assert!(attach(StreamKind::Stdout).is_ok());
        assert_eq!(c.wait(&web).unwrap(), ExitStatus::exited(0));
    }

    #[test]
    fn streams_attach_once_and_carry_bytes() {
        let agent = Agent::new(Arc::new(RecordingOs::new()), Reaper::new(), test_layout());
        let (out_r, out_w) = pipe().unwrap();
        let (in_r, in_w) = pipe().unwrap();
        let mut streams = HashMap::new();
        streams.insert(StreamKind::Stdout, out_r);
        streams.insert(StreamKind::Stdin, in_w);
        agent.state.lock().unwrap().containers.insert(
            "web".into(),
            Arc::new(Container {
                cgroup: cgroup_dir("web"),
                init_gone: gone(),
                hardening: Hardening::default(),
                phase: Mutex::new(Phase::Started),
                main: Proc::new(Pid::from_raw(1), streams),
                execs: Mutex::new(HashMap::new()),
            }),
        );
        let web = ProcessRef::container("web");
        let connect = |kind| {
            let (mut host, guest) = UnixStream::pair().unwrap();
            let a = Arc::clone(&agent);
            std::thread::spawn(move || a.serve_stream(guest));
            attach_stream(&mut host, &web, kind).map(|_| host)
        };
        let mut out = connect(StreamKind::Stdout).unwrap();
        File::from(out_w).write_all(b"hello\n").unwrap();
        let mut got = String::new();
        out.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello\n", "end of file once the writer is gone");
        let again = connect(StreamKind::Stdout).unwrap_err();
        assert_eq!(again.wire_kind(), Some(ErrorKind::AlreadyExists));
        assert_eq!(
            connect(StreamKind::Stderr).unwrap_err().wire_kind(),
            Some(ErrorKind::InvalidArgument)
        );
        let mut input = connect(StreamKind::Stdin).unwrap();
        input.write_all(b"typed").unwrap();
        input.shutdown(Shutdown::Write).unwrap();
        let mut typed = String::new();
        File::from(in_r).read_to_string(&mut typed).unwrap();
        assert_eq!(typed, "typed");
    }
}
