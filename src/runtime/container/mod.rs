//! The container runtime: a pod's containers directly on the host's kernel, with the same
//! agent code, protocol, supervisor, logs and state as a pod VM.
//!
//! [`HostPod::start`] starts the pod's host agent ([`agent`]: forked from the supervisor
//! while it has one thread, else `peapod host-agent` executed; [`super::fork`]), with its
//! stderr in `host-agent.log` in the pod's run directory, and connects to its control
//! socket until it answers, it exits, or the timeout passes (the last two are errors
//! quoting the log). The
//! agent ends the pod when the thread that started it dies (`PR_SET_PDEATHSIG` with SIGTERM),
//! as a VMM dies with it; whatever a killed agent leaves (its containers outlive it, unlike a
//! VM's) is removed by [`leftovers::remove`] once it has exited, here or by `peapod rm`.
//!
//! Where the VM runtime puts a kernel boundary, this one gives each container what runc and
//! docker give: its own mount, PID, UTS and IPC namespaces, the pod's network namespace, an
//! overlay root, a cgroup under `peapod.slice/pod-<id>`, and the hardening of container setup
//! (capabilities, no_new_privs, seccomp, masked paths).

pub mod agent;
pub mod leftovers;

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::endpoint::{AgentEndpoint, EndpointError};
use super::fork::{self, ChildProcess, DaemonSetup};
use super::{PodSandbox, RuntimeError, RuntimeKind};
use crate::agent::layout::PodLayout;
use crate::pod::id::PodId;
use crate::protocol::CONTROL_PORT;
use crate::protocol::client::{Client, ClientError};

/// How long the host agent may take to exit once asked to shut down.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Log lines quoted in errors.
const LOG_TAIL_LINES: usize = 20;
/// The host agent's log, in the pod's run directory.
pub const HOST_AGENT_LOG: &str = "host-agent.log";

#[derive(Debug, thiserror::Error)]
pub enum HostPodError {
    #[error(
        "the container runtime needs root (it makes namespaces, cgroups and mounts): run \
         peapod as root, or use --runtime vm"
    )]
    NotRoot,
    #[error(transparent)]
    Host(#[from] HostAgentError),
    #[error("cannot create the host agent's log {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the pod's host agent ({program}): {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the pod's host agent ended ({status}) before it answered; its log says:\n{log}")]
    Ended {
        status: std::process::ExitStatus,
        log: String,
    },
    #[error(
        "the pod's host agent did not answer within {timeout:?}; its log ({path}) says:\n{log}"
    )]
    Timeout {
        timeout: Duration,
        path: PathBuf,
        log: String,
    },
    #[error("{what}: {source}")]
    Agent {
        what: String,
        #[source]
        source: ClientError,
    },
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("waiting for the host agent: {0}")]
    Wait(#[source] std::io::Error),
    #[error("the host agent did not exit within {0:?} of its shutdown; killed it")]
    ShutdownTimeout(Duration),
    #[error(transparent)]
    Leftovers(#[from] leftovers::LeftoverError),
}

/// Whether this host can run container-runtime pods: checked before a pod is made.
pub fn check_host() -> Result<(), HostPodError> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(HostPodError::NotRoot);
    }
    agent::check_cgroup2()?;
    Ok(())
}

/// What starts a host pod.
#[derive(Debug, Clone)]
pub struct HostPodConfig {
    /// The peapod binary (`host-agent` is one of its verbs).
    pub program: PathBuf,
    pub id: PodId,
    /// [`crate::pod::PodDirs::run`]; the pod's directory `run_root/<id>` exists.
    pub run_root: PathBuf,
    /// The pod's CNI network namespace, or `None` for a loopback-only one.
    pub netns: Option<PathBuf>,
    pub agent_timeout: Duration,
    /// The pod is removed once it has ended (`run --rm`): its directories then go with its
    /// run directory, not at its shutdown.
    pub removed_after: bool,
}

impl HostPodConfig {
    fn agent_args(&self) -> agent::HostAgentArgs {
        agent::HostAgentArgs {
            id: self.id.clone(),
            run_root: self.run_root.clone(),
            netns: self.netns.clone(),
        }
    }

    /// The pod's layout, as its host agent uses it.
    pub fn layout(&self) -> PodLayout {
        agent::layout(&self.agent_args())
    }
}

/// A running host pod: its agent process and a control connection to it.
pub struct HostPod {
    child: Option<ChildProcess>,
    ended: Option<String>,
    endpoint: AgentEndpoint,
    client: Client<UnixStream>,
    layout: PodLayout,
    log: PathBuf,
    /// [`HostPodConfig::removed_after`].
    removed_after: bool,
}

impl HostPod {
    pub fn start(config: &HostPodConfig) -> Result<Self, HostPodError> {
        let layout = config.layout();
        let dir = layout.run_dir.clone();
        let log = dir.join(HOST_AGENT_LOG);
        let log_file = std::fs::File::create(&log).map_err(|source| HostPodError::Log {
            path: log.clone(),
            source,
        })?;
        // The agent's sockets are bound here and handed to it: the first connection is made
        // at once and answered as soon as the agent serves, with nothing to poll for.
        let listeners = agent::Listeners::bind(&dir)?;
        let mut child = spawn_agent(config, log_file, listeners)?;
        let endpoint = AgentEndpoint::Unix { dir };
        match wait_for_agent(&mut child, &endpoint, &log, config.agent_timeout) {
            Ok(client) => Ok(HostPod {
                child: Some(child),
                ended: None,
                endpoint,
                client,
                layout,
                log,
                removed_after: config.removed_after,
            }),
            Err(e) => {
                // Killing an agent that has exited already does nothing.
                let _ = child.kill();
                let _ = child.wait();
                if let Err(left) = leftovers::remove(&layout) {
                    tracing::warn!("{left}");
                }
                Err(e)
            }
        }
    }

    /// Reaps the agent if it has exited; then removes what it left.
    fn poll_end(&mut self) -> Option<String> {
        if let Some(ended) = &self.ended {
            return Some(ended.clone());
        }
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        let mut why = format!("the pod's host agent ended ({status})");
        if !status.success() {
            let tail = crate::logfile::tail_lines(&self.log, 5);
            if !tail.trim().is_empty() {
                why.push_str(&format!("; its log says: {}", tail.trim()));
            }
        }
        if let Err(e) = leftovers::remove(&self.layout) {
            tracing::warn!("{e}");
        }
        self.ended = Some(why.clone());
        Some(why)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(e) = leftovers::remove(&self.layout) {
            tracing::warn!("{e}");
        }
    }
}

/// Starts the pod's host agent with its stderr in `log`: forked from this process when it
/// has one thread (a supervisor starting a container pod does: [`super::fork`]), else
/// executed as `peapod host-agent`. Either way it gets SIGTERM when the thread that
/// started it ends.
fn spawn_agent(
    config: &HostPodConfig,
    log: File,
    listeners: agent::Listeners,
) -> Result<ChildProcess, HostPodError> {
    let spawn_error = |source| HostPodError::Spawn {
        program: config.program.clone(),
        source,
    };
    let [control_fd, stdio_fd] = listeners.raw_fds();
    let setup = DaemonSetup {
        death_signal: Some(nix::sys::signal::Signal::SIGTERM),
        name: Some(c"pod-host-agent"),
        keep: vec![control_fd, stdio_fd],
        ..DaemonSetup::with_log(&log).map_err(spawn_error)?
    };
    let args = config.agent_args();
    // Forked or not, this process's copies of the listeners close when this returns.
    let mut listeners = Some(listeners);
    let forked = fork::fork_daemon(setup, || {
        let Some(listeners) = listeners.take() else {
            return 1;
        };
        fork::exit_status(agent::run(args, listeners))
    });
    if let Some(child) = forked.map_err(spawn_error)? {
        return Ok(ChildProcess::Forked(child));
    }
    let mut cmd = Command::new(&config.program);
    cmd.arg("host-agent")
        .arg("--run-root")
        .arg(&config.run_root)
        .arg("--control-fd")
        .arg(control_fd.to_string())
        .arg("--stdio-fd")
        .arg(stdio_fd.to_string());
    if let Some(netns) = &config.netns {
        cmd.arg("--netns").arg(netns);
    }
    cmd.arg(config.id.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe
    // calls (prctl, sigprocmask) on plain values; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // The agent ends the pod when the thread that started it dies (SIGTERM: it
            // kills its containers first, which a VMM's death does by itself); and starts
            // with no signal mask its caller set up for forwarding.
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
            fork::unblock_all_signals()?;
            // The listeners cross exec.
            for fd in [control_fd, stdio_fd] {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(spawn_error)?;
    drop(listeners);
    Ok(ChildProcess::Executed(child))
}

/// Connects and handshakes: the agent's socket is there from the start (bound for it), and
/// answers once the agent serves. An error says whether the agent ended (quoting its log)
/// or did not answer within `timeout`.
fn wait_for_agent(
    child: &mut ChildProcess,
    endpoint: &AgentEndpoint,
    log: &std::path::Path,
    timeout: Duration,
) -> Result<Client<UnixStream>, HostPodError> {
    let deadline = Instant::now() + timeout;
    // One try: the socket is there, and refuses only once the agent is gone.
    let handshake = endpoint
        .connect(CONTROL_PORT, Duration::ZERO)
        .map_err(HostPodError::from)
        .and_then(|stream| {
            Client::handshake_within(stream, timeout).map_err(|source| HostPodError::Agent {
                what: "handshake with the host agent".into(),
                source,
            })
        });
    let failed = match handshake {
        Ok(client) => return Ok(client),
        Err(e) => e,
    };
    // An agent that died closed its listener (the handshake then fails at once): give it
    // a moment to be reaped, and say so with its log.
    let _ = child.wait_exited(Duration::from_millis(500));
    if let Some(status) = child.try_wait().map_err(HostPodError::Wait)? {
        return Err(HostPodError::Ended {
            status,
            log: crate::logfile::tail_lines(log, LOG_TAIL_LINES),
        });
    }
    if Instant::now() >= deadline {
        return Err(HostPodError::Timeout {
            timeout,
            path: log.to_path_buf(),
            log: crate::logfile::tail_lines(log, LOG_TAIL_LINES),
        });
    }
    Err(failed)
}

impl PodSandbox for HostPod {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Container
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildProcess::id)
    }

    fn endpoint(&self) -> &AgentEndpoint {
        &self.endpoint
    }

    fn client(&mut self) -> &mut Client<UnixStream> {
        &mut self.client
    }

    fn try_end(&mut self) -> Option<String> {
        self.poll_end()
    }

    fn shutdown(mut self: Box<Self>) -> Result<(), RuntimeError> {
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        // The agent answers once the pod's processes and cgroup are gone, then ends. It is
        // reaped on a thread of its own: its exit takes its mount namespace down
        // (milliseconds, a bound root's every mount in the test bed).
        let asked = self.client.shutdown();
        let left = deadline.saturating_duration_since(Instant::now());
        if asked.is_ok() && super::closes_within(self.client.stream(), left) {
            // The agent ends once this connection closes (it waits a moment for that): not
            // before this process exits, so that its end does not take the CPU from what
            // follows here (a pod's removal, a `run --rm` waiting for it).
            let open = self.client.stream().try_clone().ok();
            if let Some(mut child) = self.child.take() {
                std::thread::spawn(move || {
                    let _ = child.wait();
                    drop(open);
                });
            }
            match self.removed_after {
                true => leftovers::remove_cgroup(&self.layout.cgroup_parent),
                false => leftovers::remove(&self.layout),
            }
            .map_err(HostPodError::from)?;
            return Ok(());
        }
        let _ = self.client.stream().shutdown(std::net::Shutdown::Both);
        while self.child.is_some() {
            if self.poll_end().is_some() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.kill();
                asked.map_err(|source| HostPodError::Agent {
                    what: "asking the host agent to shut down".into(),
                    source,
                })?;
                return Err(HostPodError::ShutdownTimeout(SHUTDOWN_TIMEOUT).into());
            }
            if let Some(child) = &self.child {
                child.wait_exited(left).map_err(HostPodError::Wait)?;
            }
        }
        // The agent removed its leftovers; this finds nothing, or what a failed agent left.
        leftovers::remove(&self.layout).map_err(HostPodError::from)?;
        Ok(())
    }
}

impl Drop for HostPod {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
    }
}

pub use agent::{HostAgentArgs, HostAgentError};
