//! One pod under supervision: its VM, its containers' stdio (logged, and copied to attached
//! clients), their exits and restarts, and the pod's state as it changes.
//!
//! The life of a pod: [`RunningPod::boot`] starts the VM, creates the sandbox (with the pod's
//! volumes: emptyDirs, secrets) and every regular container (stopped, as `docker create`)
//! and attaches their output streams; the pod is `Created`. [`RunningPod::start`] runs the
//! init containers in order, each to completion (a failing one fails the pod, naming it and
//! its exit code), then starts the containers, with a waiter thread each; the pod is
//! `Running`. A container that exits is started again inside the running VM when the pod's
//! restart policy says so, after the kubelet's backoff (10 s doubling to 5 min;
//! `PEAPOD_RESTART_BACKOFF_MS` sets the base, for tests). When the last container has
//! exited for good (or [`RunningPod::stop`] ended them), [`RunningPod::finish`] powers the
//! VM off and the pod is `Exited (N)` with the first container's code, or `Failed` when the
//! VM ended on its own.
//!
//! Secret values are read from the secret store here, when the sandbox and the containers
//! are created, and go to the guest only: they are kept in this process's memory (for
//! restarts) and never written to a file, a log or an argument list on the host.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::api::ProcessEnd;
use super::stream::{MAX_CHUNK, StreamFrame};
use crate::pod::layout::PodDirs;
use crate::pod::logs::{LogStream, LogWriter};
use crate::pod::registry::Registry;
use crate::pod::spec::{ContainerConfig, PodSpec, PodVolumeSource, RestartPolicy, SecretEnv};
use crate::pod::state::{ContainerStatus, PodState, PodStatus};
use crate::protocol::client::{Client, ClientError};
use crate::protocol::{
    ContainerSpec, ErrorKind, ExitStatus, FsType, MountSource, MountSpec, ProcessRef, ProcessSpec,
    RootfsSpec, SandboxSpec, SandboxVolume, SandboxVolumeKind, StreamKind,
};
use crate::runtime::{EndpointError, PodSandbox, RuntimeKind, SandboxConfig};
use crate::secret::SecretStore;

/// How long a container's output may trail its exit before the exit is reported anyway.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);
/// How long the VM may take to go down after its containers were killed.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// Largest container log file before rotation.
pub const LOG_MAX_BYTES: u64 = 10 << 20;
/// The kubelet's restart backoff: the first delay, doubled per restart up to the cap.
const RESTART_BACKOFF_BASE: Duration = Duration::from_secs(10);
const RESTART_BACKOFF_CAP: Duration = Duration::from_secs(300);
/// Environment variable setting the backoff's first delay in ms (tests use a short one).
pub const RESTART_BACKOFF_ENV: &str = "PEAPOD_RESTART_BACKOFF_MS";
/// Disks a pod VM can attach (virtio slots less rng and vsock).
const MAX_DISKS: usize = 17;

#[derive(Debug, thiserror::Error)]
pub enum PodRunError {
    #[error("{0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("{0}")]
    Endpoint(#[from] crate::runtime::EndpointError),
    #[error("{what}: {source}")]
    Agent {
        what: String,
        #[source]
        source: ClientError,
    },
    #[error("cannot open the log of container {container}: {source}")]
    Log {
        container: String,
        #[source]
        source: crate::pod::PodError,
    },
    #[error(
        "the pod has {0} disks (images and host snapshots), more than a pod VM can attach \
         ({MAX_DISKS}): use fewer containers or volumes"
    )]
    TooManyDisks(usize),
    #[error("{0}")]
    Secret(#[from] crate::secret::SecretError),
    #[error("{0}")]
    Spec(String),
}

fn agent(what: impl Into<String>) -> impl FnOnce(ClientError) -> PodRunError {
    let what = what.into();
    move |source| PodRunError::Agent { what, source }
}

/// One container's runtime side.
struct Container {
    name: String,
    init: bool,
    tty: bool,
    /// What the agent gets to create it (secret values resolved; kept for restarts).
    agent_spec: Mutex<Option<ContainerSpec>>,
    /// The agent's stdin (or pty) stream, when the process keeps stdin open.
    stdin: Mutex<Option<UnixStream>>,
    /// Attached clients' connections (write halves).
    attached: Mutex<Vec<UnixStream>>,
    log: Mutex<LogWriter>,
    /// Output streams still open; the exit is reported once this is 0 (or after a drain
    /// timeout).
    open_outputs: Mutex<usize>,
    outputs_closed: Condvar,
    start_error: Mutex<Option<String>>,
    /// The control connection that will wait for its process, made with it (hello sent:
    /// [`AgentEndpoint::control_ahead`]), so that a process that ends at once has its
    /// exit answered at once.
    waiter: Mutex<Option<UnixStream>>,
}

pub struct RunningPod {
    pub spec: PodSpec,
    store_dir: std::path::PathBuf,
    registry: Registry,
    state: Mutex<PodState>,
    changed: Condvar,
    /// The pod VM, or the host agent of a container-runtime pod.
    sandbox: Mutex<Option<Box<dyn PodSandbox>>>,
    /// Init containers first, then the regular ones: the order of `state.containers`.
    containers: Vec<Container>,
    next_exec: AtomicU64,
    /// Set by `stop`: no more restarts.
    stopping: AtomicBool,
    backoff_base: Duration,
    /// Requests for the end waiting (Wait, Stop): the supervisor lingers until they have
    /// answered.
    pub waiters: Mutex<usize>,
    /// The pod's network, once attached (none with `--network none`).
    pub network: std::sync::OnceLock<super::network::PodNetwork>,
    /// An auto-remove pod's attached clients, their process's exit sent: their connections
    /// end once the pod is removed ([`RunningPod::release_clients`]), which is what a
    /// `run --rm` waits for.
    held: Mutex<Vec<UnixStream>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn device_name(index: usize) -> String {
    let letter = (b'a' + (index % 26) as u8) as char;
    format!("/dev/vd{letter}")
}

/// How the pod's sandbox ended, waiting a moment for its process to exit after the agent's
/// connection broke; what a lost connection means for the user.
fn sandbox_end(sandbox: &mut dyn PodSandbox) -> String {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(why) = sandbox.try_end() {
            return why;
        }
        if Instant::now() >= deadline {
            return format!(
                "{} still runs (its agent closed the connection)",
                sandbox.noun()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The delay before restart number `restarts + 1`.
fn backoff(base: Duration, restarts: u32) -> Duration {
    base.saturating_mul(1u32.checked_shl(restarts.min(16)).unwrap_or(u32::MAX))
        .min(RESTART_BACKOFF_CAP.max(base))
}

/// Whether a container that ended with `code` after `restarts` restarts starts again.
fn restarts_again(policy: RestartPolicy, code: i32, restarts: u32) -> bool {
    match policy {
        RestartPolicy::Never => false,
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure { max_retries } => {
            code != 0 && max_retries.is_none_or(|max| restarts < max)
        }
    }
}

/// The process with the values of its secret variables added.
fn with_secret_env(c: &ContainerConfig, secrets: &SecretStore) -> Result<ProcessSpec, PodRunError> {
    let mut process = c.process.clone();
    for entry in &c.secret_env {
        let (name, optional) = match entry {
            SecretEnv::Key {
                secret, optional, ..
            }
            | SecretEnv::All { secret, optional } => (secret, *optional),
        };
        let secret = match secrets.get(name) {
            Ok(s) => s,
            Err(crate::secret::SecretError::NotFound { .. }) if optional => continue,
            Err(e) => return Err(e.into()),
        };
        let value = |bytes: &[u8], key: &str| {
            String::from_utf8(bytes.to_vec()).map_err(|_| {
                PodRunError::Spec(format!(
                    "container {}: key {key} of secret {name} is not UTF-8 text, so it cannot \
                     be an environment variable (mount the secret as a volume instead)",
                    c.name
                ))
            })
        };
        match entry {
            SecretEnv::Key {
                env_name,
                key,
                optional,
                ..
            } => match secret.data.get(key) {
                Some(bytes) => process
                    .env
                    .push(format!("{env_name}={}", value(bytes, key)?)),
                None if *optional => {}
                None => {
                    return Err(PodRunError::Spec(format!(
                        "container {}: secret {name} has no key {key} (for {env_name})",
                        c.name
                    )));
                }
            },
            SecretEnv::All { .. } => {
                for (key, bytes) in &secret.data {
                    process.env.push(format!("{key}={}", value(bytes, key)?));
                }
            }
        }
    }
    Ok(process)
}

impl RunningPod {
    /// The pod's runtime side before its VM exists: its container logs opened. It lives
    /// as long as the supervisor process (leaked: threads of its containers hold it).
    pub fn new(
        spec: PodSpec,
        registry: Registry,
        dirs: &PodDirs,
        state: PodState,
    ) -> Result<&'static Self, PodRunError> {
        let mut containers = Vec::new();
        let all = spec
            .init_containers
            .iter()
            .map(|c| (c, true))
            .chain(spec.containers.iter().map(|c| (c, false)));
        for (c, init) in all {
            let path = dirs.container_log_path(&state.id, &c.name);
            let log =
                LogWriter::create(&path, LOG_MAX_BYTES, 1).map_err(|source| PodRunError::Log {
                    container: c.name.clone(),
                    source,
                })?;
            containers.push(Container {
                name: c.name.clone(),
                init,
                tty: c.process.tty,
                agent_spec: Mutex::new(None),
                stdin: Mutex::new(None),
                attached: Mutex::new(Vec::new()),
                log: Mutex::new(log),
                open_outputs: Mutex::new(0),
                outputs_closed: Condvar::new(),
                start_error: Mutex::new(None),
                waiter: Mutex::new(None),
            });
        }
        let backoff_base = std::env::var(RESTART_BACKOFF_ENV)
            .ok()
            .and_then(|ms| ms.parse::<u64>().ok())
            .map_or(RESTART_BACKOFF_BASE, Duration::from_millis);
        Ok(Box::leak(Box::new(RunningPod {
            store_dir: dirs.store_dir(&state.id),
            spec,
            registry,
            state: Mutex::new(state),
            changed: Condvar::new(),
            sandbox: Mutex::new(None),
            containers,
            next_exec: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            backoff_base,
            waiters: Mutex::new(0),
            network: std::sync::OnceLock::new(),
            held: Mutex::new(Vec::new()),
        })))
    }

    /// Attaches the pod's network (before [`RunningPod::boot`]); on an error nothing of it
    /// is left.
    pub fn attach_network(&self, id: &crate::pod::id::PodId, dirs: &PodDirs) -> Result<(), String> {
        let Some(network) =
            super::network::PodNetwork::set_up(&self.spec, id, dirs).map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        {
            let mut state = lock(&self.state);
            state.network = Some(network.status());
            self.save(&state);
        }
        let _ = self.network.set(network);
        Ok(())
    }

    /// Starts the pod's sandbox (its VM, or its host agent) and creates its containers; the
    /// pod is `Created` when this returns `Ok`. On an error nothing of the sandbox is left
    /// running.
    /// Starts the pod's sandbox and creates its containers. `started` runs once the
    /// sandbox's process is started (forked, for a host pod's agent: from then on this
    /// process may start threads).
    pub fn boot(
        &'static self,
        config: SandboxConfig,
        started: &dyn Fn(),
    ) -> Result<(), PodRunError> {
        let booted = self.boot_sandbox(config, started);
        if booted.is_err()
            && let Some(sandbox) = lock(&self.sandbox).take()
        {
            drop(sandbox);
        }
        booted
    }

    /// Every container's config, init containers first.
    fn configs(&self) -> impl Iterator<Item = &ContainerConfig> {
        self.spec
            .init_containers
            .iter()
            .chain(self.spec.containers.iter())
    }

    fn boot_sandbox(
        &'static self,
        mut config: SandboxConfig,
        started: &dyn Fn(),
    ) -> Result<(), PodRunError> {
        let runtime = config.kind();
        let secrets = SecretStore::new(self.registry.dirs().store.with_file_name("secrets"));
        // Disks in guest order: each container's image, then its `-v` snapshots, then the
        // pod's host snapshots.
        let mut disks = Vec::new();
        let mut specs = Vec::new();
        let mut snapshot_devices = std::collections::BTreeMap::new();
        for v in &self.spec.volumes {
            if let PodVolumeSource::HostSnapshot { disk, source } = &v.source {
                // A host pod binds the directory itself, read-only.
                let device =
                    (runtime == RuntimeKind::Container).then(|| source.display().to_string());
                snapshot_devices.insert(v.name.clone(), (disk.clone(), device));
            }
        }
        let mut roots = Vec::new();
        for c in self.configs() {
            match runtime {
                // The image is the VM's next disk.
                RuntimeKind::Vm => {
                    roots.push(device_name(disks.len()));
                    disks.push((c.disk.clone(), true));
                }
                // The unpacked image's directory, bound by the host agent.
                RuntimeKind::Container => roots.push(c.disk.display().to_string()),
            }
            let mut mounts = Vec::new();
            for v in &c.volumes {
                let device = match runtime {
                    RuntimeKind::Vm => {
                        // Snapshot disks are named relative to the pod's store directory.
                        disks.push((self.store_dir.join(&v.disk), true));
                        device_name(disks.len() - 1).into()
                    }
                    // A host pod binds the directory itself, read-only.
                    RuntimeKind::Container => v.source.clone(),
                };
                mounts.push(MountSpec {
                    destination: v.destination.clone(),
                    source: MountSource::Block {
                        device,
                        fs_type: FsType::Erofs,
                    },
                    read_only: true,
                });
            }
            specs.push(mounts);
        }
        for (disk, device) in snapshot_devices.values_mut() {
            if device.is_none() {
                *device = Some(device_name(disks.len()));
                disks.push((self.store_dir.join(&*disk), true));
            }
        }
        if disks.len() > MAX_DISKS {
            return Err(PodRunError::TooManyDisks(disks.len()));
        }
        let mut agent_specs = Vec::new();
        for ((c, root), mut mounts) in self.configs().zip(roots).zip(specs) {
            for m in &c.volume_mounts {
                let source = match snapshot_devices.get(&m.name) {
                    Some((_, Some(device))) => {
                        if m.sub_path.is_some() {
                            return Err(PodRunError::Spec(format!(
                                "container {}: subPath is not supported on the host snapshot \
                                 volume {}",
                                c.name, m.name
                            )));
                        }
                        MountSource::Block {
                            device: device.into(),
                            fs_type: FsType::Erofs,
                        }
                    }
                    _ => MountSource::PodVolume {
                        name: m.name.clone(),
                        sub_path: m.sub_path.clone(),
                    },
                };
                mounts.push(MountSpec {
                    destination: m.mount_path.clone(),
                    source,
                    read_only: m.read_only || snapshot_devices.contains_key(&m.name),
                });
            }
            agent_specs.push(ContainerSpec {
                id: c.name.clone(),
                hostname: None,
                rootfs: RootfsSpec {
                    device: root.into(),
                    fs_type: FsType::Erofs,
                    read_only: c.read_only_root,
                },
                mounts,
                process: with_secret_env(c, &secrets)?,
                resources: c.resources.clone(),
                privileged: c.privileged,
            });
        }
        let mut volumes = Vec::new();
        for v in &self.spec.volumes {
            let kind = match &v.source {
                PodVolumeSource::EmptyDir {
                    size_limit_bytes, ..
                } => SandboxVolumeKind::EmptyDir {
                    size_bytes: *size_limit_bytes,
                },
                PodVolumeSource::Secret {
                    secret_name,
                    optional,
                } => match secrets.get(secret_name) {
                    Ok(s) => SandboxVolumeKind::Secret { files: s.data },
                    Err(crate::secret::SecretError::NotFound { .. }) if *optional => {
                        SandboxVolumeKind::Secret {
                            files: Default::default(),
                        }
                    }
                    Err(e) => return Err(e.into()),
                },
                PodVolumeSource::HostSnapshot { .. } => continue,
            };
            volumes.push(SandboxVolume {
                name: v.name.clone(),
                kind,
            });
        }
        for (c, spec) in self.containers.iter().zip(agent_specs) {
            *lock(&c.agent_spec) = Some(spec);
        }

        let network = self.network.get();
        match &mut config {
            SandboxConfig::Vm(vm) => {
                vm.disks = disks;
                vm.net = network.and_then(super::network::PodNetwork::vm_net);
            }
            SandboxConfig::Container(host) => {
                host.netns = network.map(|n| n.attachment.netns.clone());
            }
        }
        let mut sandbox = crate::runtime::start(&config)?;
        started();
        {
            let mut state = lock(&self.state);
            state.vmm_pid = sandbox.pid();
            self.save(&state);
        }
        sandbox
            .client()
            .create_sandbox(&SandboxSpec {
                hostname: self.spec.hostname.clone(),
                entropy_seed: host_seed(),
                volumes,
                network: network.map(super::network::PodNetwork::sandbox),
                dns_servers: network
                    .map(super::network::PodNetwork::dns_servers)
                    .unwrap_or_default(),
                ..Default::default()
            })
            .map_err(agent("creating the pod sandbox"))?;
        if let Some(network) = network {
            network.forward_ports();
        }
        *lock(&self.sandbox) = Some(sandbox);
        for c in self.containers.iter().filter(|c| !c.init) {
            self.create_and_attach(c)?;
        }
        Ok(())
    }

    /// Creates `c` in the VM (again, for a restart) and attaches its output to its log.
    fn create_and_attach(&'static self, c: &'static Container) -> Result<(), PodRunError> {
        let spec = lock(&c.agent_spec)
            .clone()
            .ok_or_else(|| PodRunError::Spec(format!("container {} was never set up", c.name)))?;
        let mut sandbox = lock(&self.sandbox);
        let sandbox = sandbox
            .as_mut()
            .ok_or_else(|| PodRunError::Spec("the pod's sandbox is gone".into()))?;
        // The output's connections first: the agent accepts them while it creates the
        // container, and attaching them after is one round trip.
        let mut kinds = vec![StreamKind::Stdout, StreamKind::Stderr];
        if spec.process.tty {
            kinds = vec![StreamKind::Pty];
        } else if spec.process.stdin {
            kinds.push(StreamKind::Stdin);
        }
        let conns = sandbox
            .endpoint()
            .stdio_connections(kinds.len())
            .map_err(PodRunError::Endpoint)?;
        // Made here, where the agent's answer costs no wait; without it, one is made later.
        *lock(&c.waiter) = sandbox.endpoint().control_ahead().ok();
        if let Err(e) = sandbox.client().create_container(&spec) {
            return Err(match e {
                // The connection went away: say how the sandbox ended, when it did.
                ClientError::Frame { .. } => PodRunError::Spec(format!(
                    "creating container {}: {e}; {}",
                    c.name,
                    sandbox_end(sandbox.as_mut())
                )),
                other => agent(format!("creating container {}", c.name))(other),
            });
        }
        let main = ProcessRef::container(&c.name);
        let mut streams = crate::runtime::endpoint::attach_on(conns, &main, &kinds)
            .map_err(PodRunError::Endpoint)?
            .into_iter();
        if spec.process.tty {
            let Some(pty) = streams.next() else {
                return Err(PodRunError::Spec(format!(
                    "attaching the terminal of {}: the agent gave no stream",
                    c.name
                )));
            };
            let input = pty.try_clone().map_err(|e| {
                PodRunError::Spec(format!("cannot copy the pty stream of {}: {e}", c.name))
            })?;
            *lock(&c.stdin) = Some(input);
            self.pump(c, pty, LogStream::Stdout);
        } else {
            let (Some(out), Some(err)) = (streams.next(), streams.next()) else {
                return Err(PodRunError::Spec(format!(
                    "attaching the output of {}: the agent gave fewer streams than asked",
                    c.name
                )));
            };
            *lock(&c.stdin) = streams.next();
            self.pump(c, out, LogStream::Stdout);
            self.pump(c, err, LogStream::Stderr);
        }
        Ok(())
    }
    /// Copies one output stream of a container to its log and its attached clients, on a
    /// thread of its own, until the agent closes it.
    fn pump(&'static self, c: &'static Container, mut from: UnixStream, stream: LogStream) {
        *lock(&c.open_outputs) += 1;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; MAX_CHUNK];
            loop {
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let bytes = &buf[..n];
                        if let Err(e) = lock(&c.log).write(stream, bytes) {
                            tracing::warn!("cannot write the log of {}: {e}", c.name);
                        }
                        let frame = match stream {
                            LogStream::Stdout => StreamFrame::Stdout(bytes.to_vec()),
                            LogStream::Stderr => StreamFrame::Stderr(bytes.to_vec()),
                        };
                        let wire = frame.encode();
                        lock(&c.attached).retain_mut(|conn| conn.write_all(&wire).is_ok());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = lock(&c.log).finish();
            let mut open = lock(&c.open_outputs);
            *open = open.saturating_sub(1);
            c.outputs_closed.notify_all();
        });
    }

    pub fn has_container(&self, name: &str) -> bool {
        self.container(name).is_some()
    }

    fn container(&self, name: &str) -> Option<&Container> {
        self.containers.iter().find(|c| c.name == name)
    }

    fn save(&self, state: &PodState) {
        if let Err(e) = self.registry.save_state(state) {
            tracing::warn!("cannot save the pod's state: {e}");
        }
    }

    pub fn state(&self) -> PodState {
        lock(&self.state).clone()
    }

    pub fn is_down(&self) -> bool {
        matches!(
            lock(&self.state).status,
            PodStatus::Exited { .. } | PodStatus::Failed { .. }
        )
    }

    /// Blocks until the pod is down, or `timeout` passes; returns whether it is down.
    pub fn wait_down(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = lock(&self.state);
        loop {
            if matches!(
                state.status,
                PodStatus::Exited { .. } | PodStatus::Failed { .. }
            ) {
                return true;
            }
            match deadline {
                None => state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    state = self
                        .changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    /// Registers `conn` as attached to `container`'s output (and input, with `stdin`).
    pub fn attach(
        &'static self,
        container: &str,
        conn: UnixStream,
        stdin: bool,
    ) -> Result<(), String> {
        let c = self
            .container(container)
            .ok_or_else(|| format!("the pod has no container {container}"))?;
        let writer = conn
            .try_clone()
            .map_err(|e| format!("cannot attach: {e}"))?;
        lock(&c.attached).push(writer);
        let reader = conn;
        std::thread::spawn(move || self.read_client(c, reader, stdin));
        Ok(())
    }

    /// Input frames from an attached client: stdin bytes, end of stdin, signals.
    fn read_client(&self, c: &Container, mut conn: UnixStream, stdin: bool) {
        loop {
            match StreamFrame::read_from(&mut conn) {
                Ok(StreamFrame::Stdin(bytes)) if stdin => {
                    if let Some(s) = lock(&c.stdin).as_mut() {
                        let _ = s.write_all(&bytes);
                    }
                }
                Ok(StreamFrame::StdinClose) if stdin && !c.tty => {
                    if let Some(s) = lock(&c.stdin).take() {
                        let _ = s.shutdown(std::net::Shutdown::Write);
                    }
                }
                Ok(StreamFrame::Signal(sig)) => {
                    let _ = self.signal(Some(&c.name), sig);
                }
                Ok(_) => {}
                Err(_) => {
                    // A client that goes away takes its stdin with it, as docker's does:
                    // the process sees end of file.
                    if stdin
                        && !c.tty
                        && let Some(s) = lock(&c.stdin).take()
                    {
                        let _ = s.shutdown(std::net::Shutdown::Write);
                    }
                    return;
                }
            }
        }
    }

    /// Starts the pod: its init containers one after the other, each to completion, then
    /// its containers. An error carries the exit code a command that cannot run gets
    /// (126/127), or a failing init container's.
    pub fn start(&'static self) -> Result<(), (String, Option<i32>)> {
        {
            let mut state = lock(&self.state);
            if !matches!(state.status, PodStatus::Created) {
                return Err((
                    format!(
                        "the pod is {}, not Created: it was started already",
                        state.status
                    ),
                    None,
                ));
            }
            state.status = PodStatus::Running;
            state.started_at = Some(SystemTime::now());
            // Init containers may run a while: say Running at once. Without, the first
            // container's start saves it (one write less before its start).
            if self.containers.iter().any(|c| c.init) {
                self.save(&state);
            }
        }
        for (i, c) in self.containers.iter().enumerate().filter(|(_, c)| c.init) {
            if self.stopping.load(Ordering::SeqCst) {
                return Err((
                    "the pod was stopped during its init containers".into(),
                    None,
                ));
            }
            let ran = self
                .create_and_attach(c)
                .map_err(|e| (e.to_string(), None))
                .and_then(|()| self.start_one(i))
                .and_then(|()| self.run_to_completion(i));
            match ran {
                Ok(status) if status.code == 0 => {}
                Ok(status) => {
                    let why = match lock(&c.start_error).clone() {
                        Some(e) => format!("init container {} could not run: {e}", c.name),
                        None => format!("init container {} exited with {}", c.name, status.code),
                    };
                    self.finish(Some(why.clone()));
                    return Err((why, Some(status.code)));
                }
                Err((why, code)) => {
                    let why = format!("init container {}: {why}", c.name);
                    self.finish(Some(why.clone()));
                    return Err((why, code));
                }
            }
        }
        let mut first_error = None;
        for (i, c) in self.containers.iter().enumerate().filter(|(_, c)| !c.init) {
            match self.start_one(i) {
                Ok(()) => {}
                Err((message, None)) => return Err((message, None)),
                Err((message, Some(_))) => {
                    first_error.get_or_insert((i, message));
                }
            }
            match self.waiter_of(c) {
                Some(Ok(client)) => {
                    std::thread::spawn(move || self.follow_container(i, client));
                }
                Some(Err(e)) => {
                    let why = format!("cannot wait for container {}: {e}", c.name);
                    self.finish(Some(why.clone()));
                    return Err((why, None));
                }
                None => return Err(("the pod's sandbox is gone".into(), None)),
            }
        }
        self.changed.notify_all();
        match first_error {
            None => Ok(()),
            Some((i, message)) => {
                // The failed process exits at once with 126 or 127: report that code.
                let code = self.container_exit(i, Duration::from_secs(10));
                Err((message, code))
            }
        }
    }

    /// Starts container `index` (created already) and marks it Running. A command that
    /// cannot run is `Err((message, Some(_)))`: its process exits at once with 126/127.
    fn start_one(&self, index: usize) -> Result<(), (String, Option<i32>)> {
        let Some(c) = self.containers.get(index) else {
            return Err(("no such container".into(), None));
        };
        let started = {
            let mut sandbox = lock(&self.sandbox);
            let Some(vm) = sandbox.as_mut() else {
                return Err(("the pod's sandbox is gone".into(), None));
            };
            vm.client().start_container(&c.name)
        };
        let result = match started {
            Ok(_) => {
                *lock(&c.start_error) = None;
                Ok(())
            }
            Err(e) if e.wire_kind() == Some(ErrorKind::Setup) => {
                let message = match e {
                    ClientError::Agent { error, .. } => error.message,
                    other => other.to_string(),
                };
                *lock(&c.start_error) = Some(message.clone());
                Err((message, Some(127)))
            }
            Err(e) => return Err((format!("starting container {}: {e}", c.name), None)),
        };
        let mut state = lock(&self.state);
        if let Some(cs) = state.containers.get_mut(index) {
            cs.status = ContainerStatus::Running;
            cs.started_at = Some(SystemTime::now());
            cs.finished_at = None;
        }
        self.save(&state);
        self.changed.notify_all();
        result
    }

    /// Waits for container `index` (an init container) to exit, records it, and removes it
    /// from the VM.
    fn run_to_completion(&self, index: usize) -> Result<ExitStatus, (String, Option<i32>)> {
        let Some(c) = self.containers.get(index) else {
            return Err(("no such container".into(), None));
        };
        let mut client = match self.waiter_of(c) {
            Some(Ok(client)) => client,
            Some(Err(e)) => return Err((e.to_string(), None)),
            None => return Err(("the pod's sandbox is gone".into(), None)),
        };
        let status = client
            .wait(&ProcessRef::container(&c.name))
            .map_err(|e| (format!("waiting for it: {e}"), None))?;
        self.drain_outputs(c);
        self.record_exit(index, status, false);
        let _ = client.remove_container(&c.name);
        Ok(status)
    }

    /// A control connection to wait for `c`'s process on: the one made with it, or a new
    /// one (`None`: the sandbox is gone).
    fn waiter_of(&self, c: &Container) -> Option<Result<Client<UnixStream>, EndpointError>> {
        let ahead = lock(&c.waiter).take();
        if let Some(client) = ahead.and_then(|stream| Client::hello_answered(stream).ok()) {
            return Some(Ok(client));
        }
        lock(&self.sandbox).as_ref().map(|s| s.control())
    }

    /// Waits until `c`'s output streams are closed (or a drain timeout passes).
    fn drain_outputs(&self, c: &Container) {
        let deadline = Instant::now() + OUTPUT_DRAIN;
        let mut open = lock(&c.open_outputs);
        while *open > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            open = c
                .outputs_closed
                .wait_timeout(open, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Records how container `index` ended; `restarts`: it is started again.
    fn record_exit(&self, index: usize, status: ExitStatus, restarts: bool) {
        let mut state = lock(&self.state);
        if let Some(cs) = state.containers.get_mut(index) {
            cs.status = ContainerStatus::Exited {
                code: status.code,
                signal: status.signal,
                oom_killed: status.oom_killed,
            };
            cs.finished_at = Some(SystemTime::now());
        }
        let pod_ends = !restarts
            && state
                .containers
                .iter()
                .all(|c| matches!(c.status, ContainerStatus::Exited { .. }));
        if !(pod_ends && self.spec.auto_remove) {
            self.save(&state);
        }
        self.changed.notify_all();
    }

    /// The exit code of container `index` once it has exited (or `None` after `timeout`).
    fn container_exit(&self, index: usize, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        loop {
            if let Some(ContainerStatus::Exited { code, .. }) =
                state.containers.get(index).map(|c| &c.status)
            {
                return Some(*code);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Sleeps `delay`, or less when the pod is being stopped; returns whether to go on.
    fn backoff_sleep(&self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        let mut state = lock(&self.state);
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Follows container `index` until it exits for good, restarting it as the pod's
    /// policy says; the last one to exit ends the pod.
    fn follow_container(&'static self, index: usize, mut client: Client<UnixStream>) {
        let Some(c) = self.containers.get(index) else {
            return;
        };
        loop {
            let status = match client.wait(&ProcessRef::container(&c.name)) {
                Ok(s) => s,
                Err(e) => {
                    // The agent is gone: the sandbox ended under the pod.
                    let why = match lock(&self.sandbox).as_mut().and_then(|s| s.try_end()) {
                        Some(why) => why,
                        None => format!("lost the pod's agent: {e}"),
                    };
                    self.finish(Some(why));
                    return;
                }
            };
            // Output first, then the exit, as a terminal shows it.
            self.drain_outputs(c);
            let restarts = lock(&self.state)
                .containers
                .get(index)
                .map_or(0, |cs| cs.restarts);
            let again = !self.stopping.load(Ordering::SeqCst)
                && restarts_again(self.spec.restart_policy, status.code, restarts);
            self.record_exit(index, status, again);
            if again && self.backoff_sleep(backoff(self.backoff_base, restarts)) {
                match self.restart(index) {
                    Ok(()) => continue,
                    Err(e) => {
                        self.finish(Some(format!("cannot restart container {}: {e}", c.name)));
                        return;
                    }
                }
            }
            let end = ProcessEnd {
                status,
                start_error: lock(&c.start_error).clone(),
            };
            let wire = StreamFrame::Exit(end).encode();
            for mut conn in lock(&c.attached).drain(..) {
                let _ = conn.write_all(&wire);
                self.end_client(conn);
            }
            let all_exited = {
                let state = lock(&self.state);
                state
                    .containers
                    .iter()
                    .all(|c| matches!(c.status, ContainerStatus::Exited { .. }))
            };
            if all_exited {
                self.finish(None);
            }
            return;
        }
    }

    /// Starts container `index` again in the running VM: removed, created and attached
    /// afresh (a fresh writable layer, as Kubernetes does; pod volumes keep their data).
    fn restart(&'static self, index: usize) -> Result<(), String> {
        let c = self.containers.get(index).ok_or("no such container")?;
        {
            let mut sandbox = lock(&self.sandbox);
            let sandbox = sandbox.as_mut().ok_or("the pod's sandbox is gone")?;
            sandbox
                .client()
                .remove_container(&c.name)
                .map_err(|e| format!("removing it: {e}"))?;
        }
        self.create_and_attach(c).map_err(|e| e.to_string())?;
        // Its follower waits on the connection it has.
        lock(&c.waiter).take();
        {
            let mut state = lock(&self.state);
            if let Some(cs) = state.containers.get_mut(index) {
                cs.restarts = cs.restarts.saturating_add(1);
            }
        }
        match self.start_one(index) {
            Ok(()) | Err((_, Some(_))) => Ok(()),
            Err((message, None)) => Err(message),
        }
    }

    /// Sends `signal` to one container's main process, or to every running one.
    pub fn signal(&self, container: Option<&str>, signal: i32) -> Result<(), String> {
        if let Some(name) = container
            && self.container(name).is_none()
        {
            return Err(format!("the pod has no container {name}"));
        }
        let state = self.state();
        let sandbox = lock(&self.sandbox);
        let Some(vm) = sandbox.as_ref() else {
            return Err("the pod is not running".into());
        };
        let mut errors = Vec::new();
        for cs in &state.containers {
            if container.is_some_and(|n| n != cs.name)
                || !matches!(cs.status, ContainerStatus::Running)
            {
                continue;
            }
            if let Err(e) = vm
                .process_handle(&ProcessRef::container(&cs.name))
                .signal(signal)
            {
                errors.push(format!("{}: {e}", cs.name));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// SIGTERM to every container, SIGKILL after `timeout`, then the VM goes down; no
    /// container restarts after this.
    pub fn stop(&'static self, timeout: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        self.changed.notify_all();
        if matches!(lock(&self.state).status, PodStatus::Created) {
            self.finish(None);
            return;
        }
        if self.is_down() {
            return;
        }
        if !timeout.is_zero() {
            let _ = self.signal(None, libc::SIGTERM);
            if self.wait_down(Some(timeout)) {
                return;
            }
        }
        let _ = self.signal(None, libc::SIGKILL);
        if !self.wait_down(Some(KILL_GRACE)) {
            self.finish(Some(
                "the pod did not stop after SIGKILL; its VM (or host agent) was killed".into(),
            ));
        }
    }

    pub fn exec(
        &'static self,
        container: &str,
        process: ProcessSpec,
        mut conn: UnixStream,
    ) -> Result<(), String> {
        let c = self
            .container(container)
            .ok_or_else(|| format!("the pod has no container {container}"))?;
        let exec_id = format!("exec-{}", self.next_exec.fetch_add(1, Ordering::Relaxed));
        let process_ref = ProcessRef::exec(&c.name, &exec_id);
        let (mut control, mut waiter, handle) = {
            let sandbox = lock(&self.sandbox);
            let vm = sandbox.as_ref().ok_or("the pod is not running")?;
            let control = vm.control().map_err(|e| e.to_string())?;
            let waiter = vm.control().map_err(|e| e.to_string())?;
            (control, waiter, vm.process_handle(&process_ref))
        };
        let (tty, stdin) = (process.tty, process.stdin);
        let start_error = match control.exec(&c.name, &exec_id, &process) {
            Ok(_) => None,
            Err(e) if e.wire_kind() == Some(ErrorKind::Setup) => Some(match e {
                ClientError::Agent { error, .. } => error.message,
                other => other.to_string(),
            }),
            Err(e) => return Err(format!("exec in {container}: {e}")),
        };
        let mut outputs: Vec<(UnixStream, bool)> = Vec::new();
        let mut input = None;
        if start_error.is_none() {
            let sandbox = lock(&self.sandbox);
            let vm = sandbox.as_ref().ok_or("the pod is not running")?;
            let attach = |kind| vm.attach(&process_ref, kind).map_err(|e| e.to_string());
            if tty {
                let pty = attach(StreamKind::Pty)?;
                input = Some(pty.try_clone().map_err(|e| e.to_string())?);
                outputs.push((pty, false));
            } else {
                outputs.push((attach(StreamKind::Stdout)?, false));
                outputs.push((attach(StreamKind::Stderr)?, true));
                if stdin {
                    input = Some(attach(StreamKind::Stdin)?);
                }
            }
        }
        super::write_attached(&mut conn)?;
        let writer = std::sync::Arc::new(Mutex::new(conn.try_clone().map_err(|e| e.to_string())?));
        // Client → process: stdin and signals.
        let reader = conn;
        std::thread::spawn(move || {
            let mut reader = reader;
            let mut input = input;
            loop {
                match StreamFrame::read_from(&mut reader) {
                    Ok(StreamFrame::Stdin(bytes)) => {
                        if let Some(s) = input.as_mut() {
                            let _ = s.write_all(&bytes);
                        }
                    }
                    Ok(StreamFrame::StdinClose) if !tty => {
                        if let Some(s) = input.take() {
                            let _ = s.shutdown(std::net::Shutdown::Write);
                        }
                    }
                    Ok(StreamFrame::Signal(sig)) => {
                        let _ = handle.signal(sig);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let pumps: Vec<_> = outputs
            .into_iter()
            .map(|(mut from, is_err)| {
                let writer = std::sync::Arc::clone(&writer);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; MAX_CHUNK];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let frame = if is_err {
                            StreamFrame::Stderr(buf[..n].to_vec())
                        } else {
                            StreamFrame::Stdout(buf[..n].to_vec())
                        };
                        if frame.write_to(&mut *lock(&writer)).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        std::thread::spawn(move || {
            let status = waiter
                .wait(&process_ref)
                .unwrap_or(ExitStatus::exited(crate::cli::EXIT_PEAPOD_ERROR as i32));
            for p in pumps {
                let _ = p.join();
            }
            let mut conn = lock(&writer);
            let _ = StreamFrame::Exit(ProcessEnd {
                status,
                start_error,
            })
            .write_to(&mut *conn);
            let _ = conn.shutdown(std::net::Shutdown::Both);
        });
        Ok(())
    }

    /// Powers the VM off (or kills it) and records how the pod ended. `failure` makes it
    /// `Failed` with that reason; otherwise `Exited` with the first container's code.
    pub fn finish(&self, failure: Option<String>) {
        let sandbox = lock(&self.sandbox).take();
        if let Some(sandbox) = sandbox {
            if failure.is_some() {
                drop(sandbox);
            } else if let Err(e) = sandbox.shutdown() {
                tracing::warn!("the pod's sandbox did not shut down cleanly: {e}");
            }
        }
        // The sandbox is gone: release its network (CNI DEL, namespace, IP lease).
        if let Some(network) = self.network.get() {
            match network.tear_down() {
                Ok(()) => lock(&self.state).network = None,
                Err(e) => tracing::warn!("cannot release the pod's network: {e}"),
            }
        }
        for c in &self.containers {
            for conn in lock(&c.attached).drain(..) {
                self.end_client(conn);
            }
            let _ = lock(&c.log).finish();
        }
        let mut state = lock(&self.state);
        if matches!(
            state.status,
            PodStatus::Exited { .. } | PodStatus::Failed { .. }
        ) {
            return;
        }
        state.status = match failure {
            Some(reason) => {
                state.error = Some(reason.clone());
                PodStatus::Failed { reason }
            }
            None => {
                let first_regular = self.spec.init_containers.len();
                let code = state
                    .containers
                    .iter()
                    .skip(first_regular)
                    .find_map(|c| match c.status {
                        ContainerStatus::Exited { code, .. } => Some(code),
                        _ => None,
                    })
                    .unwrap_or(0);
                PodStatus::Exited { code }
            }
        };
        state.finished_at = Some(SystemTime::now());
        state.vmm_pid = None;
        // An auto-remove pod that ended as it should is removed next, without its end
        // written first ([`RunningPod::save_end`] where the removal fails).
        if !self.spec.auto_remove || state.error.is_some() {
            self.save(&state);
        }
        self.changed.notify_all();
    }

    /// Ends an attached client's connection: now, or for an auto-remove pod once it is
    /// removed.
    fn end_client(&self, conn: UnixStream) {
        match self.spec.auto_remove {
            true => lock(&self.held).push(conn),
            false => {
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// Ends the connections [`RunningPod::end_client`] held: the pod is removed (or could
    /// not be).
    pub fn release_clients(&self) {
        for conn in lock(&self.held).drain(..) {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Writes the pod's state as it is now: the end of an auto-remove pod that could not
    /// be removed.
    pub fn save_end(&self) {
        self.save(&lock(&self.state));
    }
}

/// Random bytes for the guest's entropy pool (empty if the host has none to give).
fn host_seed() -> Vec<u8> {
    let mut seed = vec![0u8; 64];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed)) {
        Ok(()) => seed,
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_are_named_in_guest_order() {
        assert_eq!(device_name(0), "/dev/vda");
        assert_eq!(device_name(3), "/dev/vdd");
    }

    #[test]
    fn restarts_follow_the_policy() {
        assert!(!restarts_again(RestartPolicy::Never, 1, 0));
        assert!(restarts_again(RestartPolicy::Always, 0, 7));
        let on_failure = RestartPolicy::OnFailure { max_retries: None };
        assert!(restarts_again(on_failure, 1, 100));
        assert!(!restarts_again(on_failure, 0, 0));
        let twice = RestartPolicy::OnFailure {
            max_retries: Some(2),
        };
        assert!(restarts_again(twice, 3, 1));
        assert!(!restarts_again(twice, 3, 2));
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(10), 0), s(10));
        assert_eq!(backoff(s(10), 1), s(20));
        assert_eq!(backoff(s(10), 4), s(160));
        assert_eq!(backoff(s(10), 5), s(300));
        assert_eq!(backoff(s(10), u32::MAX), s(300));
        assert_eq!(
            backoff(Duration::from_millis(100), 2),
            Duration::from_millis(400)
        );
    }
}
