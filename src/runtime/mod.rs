//! Runtimes on the host: how peapod runs pods. A pod's supervisor runs its pod in one of two
//! isolation models, behind one trait, [`PodSandbox`]:
//!
//! - [`vm`]: a pod VM, peapod's VMM in a child process with the agent initramfs; the agent
//!   answers over vsock. The containers share the guest's kernel, never the host's.
//! - [`container`]: the same agent code run on the host (`peapod host-agent`, one process per
//!   pod, in a mount namespace of its own) with a host [`crate::agent::layout::PodLayout`];
//!   it answers on Unix sockets. The containers share the host's kernel, as runc's and crun's
//!   do.
//!
//! Both speak the same [`crate::protocol`] ([`endpoint`]), so the supervisor creates
//! sandboxes, containers, execs and streams the same way in either model; only starting the
//! sandbox, telling how it ended and taking it down differ.
//!
//! [`oneshot`] is `peapod vm run-container`: one container in its own pod VM, its stdio
//! streamed, callable from other code.

pub mod cgroup;
pub mod container;
pub mod endpoint;
pub mod fork;
pub mod oneshot;
pub mod vm;

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

pub use container::{HostPod, HostPodConfig, HostPodError};
pub use endpoint::{AgentEndpoint, EndpointError, ProcessHandle};
pub use oneshot::{
    RunContainer, RunError, RunIo, RunOutcome, default_agent_initramfs, run_container,
    run_container_io,
};
pub use vm::{PodVm, PodVmConfig, PodVmError, PodVmNet, VmDown, VmEnd, VmmExit, VmmStatus};

use crate::protocol::client::Client;
use crate::protocol::{ProcessRef, StreamKind};

/// Which isolation model runs a pod (`peapod run --runtime`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    /// A microVM per pod: the containers share the guest's kernel.
    #[default]
    Vm,
    /// Plain containers on the host's kernel (namespaces, cgroups, seccomp).
    Container,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Vm => "vm",
            RuntimeKind::Container => "container",
        }
    }

    /// `vm` or `container`, as `--runtime` and the pod YAML annotation write it.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "vm" => Some(RuntimeKind::Vm),
            "container" => Some(RuntimeKind::Container),
            _ => None,
        }
    }
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Vm(#[from] PodVmError),
    #[error(transparent)]
    Container(#[from] HostPodError),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
}

/// What starts a pod's sandbox in either model.
#[derive(Debug, Clone)]
pub enum SandboxConfig {
    Vm(PodVmConfig),
    Container(HostPodConfig),
}

impl SandboxConfig {
    pub fn kind(&self) -> RuntimeKind {
        match self {
            SandboxConfig::Vm(_) => RuntimeKind::Vm,
            SandboxConfig::Container(_) => RuntimeKind::Container,
        }
    }
}

/// Starts a sandbox: its agent runs and a control connection is handshaken when this
/// returns; on an error nothing of it is left running.
pub fn start(config: &SandboxConfig) -> Result<Box<dyn PodSandbox>, RuntimeError> {
    Ok(match config {
        SandboxConfig::Vm(c) => Box::new(PodVm::start(c)?),
        SandboxConfig::Container(c) => Box::new(HostPod::start(c)?),
    })
}

/// A running pod sandbox (a pod VM, or a host pod's agent process) with a handshaken
/// control connection to its agent.
pub trait PodSandbox: Send {
    fn kind(&self) -> RuntimeKind;
    /// The process that holds the pod (the VMM, or the host agent) until it is reaped.
    fn pid(&self) -> Option<u32>;
    /// Where the agent answers.
    fn endpoint(&self) -> &AgentEndpoint;
    /// The control connection made at start.
    fn client(&mut self) -> &mut Client<UnixStream>;
    /// Without blocking: `None` while the sandbox runs, else how it ended, in words.
    fn try_end(&mut self) -> Option<String>;
    /// Asks the agent to end the pod, waits for the process, and removes what the sandbox
    /// left on the host.
    fn shutdown(self: Box<Self>) -> Result<(), RuntimeError>;

    /// One more handshaken control connection.
    fn control(&self) -> Result<Client<UnixStream>, EndpointError> {
        self.endpoint().control()
    }

    /// Attaches `stream` of `process`.
    fn attach(
        &self,
        process: &ProcessRef,
        stream: StreamKind,
    ) -> Result<UnixStream, EndpointError> {
        self.endpoint().attach(process, stream)
    }

    /// A handle that signals `process` from any thread.
    fn process_handle(&self, process: &ProcessRef) -> ProcessHandle {
        ProcessHandle {
            endpoint: self.endpoint().clone(),
            process: process.clone(),
        }
    }

    /// What the pod is, in words ("the pod VM", "the pod's host agent").
    fn noun(&self) -> &'static str {
        match self.kind() {
            RuntimeKind::Vm => "the pod VM",
            RuntimeKind::Container => "the pod's host agent",
        }
    }
}

/// Reads `stream` to its end: true when it ends within `timeout`; false on a timeout or an
/// error (what it reads is dropped).
pub fn closes_within(stream: &UnixStream, timeout: Duration) -> bool {
    use std::io::Read;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match (&mut &*stream).read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_closes_within_its_time_once_the_peer_is_gone() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        std::io::Write::write_all(&mut &theirs, b"last words").unwrap();
        drop(theirs);
        assert!(closes_within(&ours, Duration::from_secs(5)));
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let started = Instant::now();
        assert!(!closes_within(&ours, Duration::from_millis(50)));
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn runtime_kinds_read_and_write_one_word() {
        for kind in [RuntimeKind::Vm, RuntimeKind::Container] {
            assert_eq!(RuntimeKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
        }
        assert_eq!(RuntimeKind::parse("kata"), None);
        assert_eq!(RuntimeKind::default(), RuntimeKind::Vm);
    }
}
