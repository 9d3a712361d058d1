//! A pod VM: peapod's VMM in a child process (`peapod vm boot`, one VMM per process) with
//! the agent initramfs, the pod's disks and a hybrid-vsock socket, and a handshaken control
//! connection to its agent.
//!
//! [`PodVm::start`] spawns the VMM and connects to the agent's control port until the agent
//! answers, the VM ends, or the timeout passes; the last two are errors that carry the tail
//! of the guest's console (where the kernel and the agent say what went wrong).
//! [`PodVm::shutdown`] asks the agent to power off and waits for the VMM to exit.
//!
//! The VMM gets `SIGKILL` when the thread that started it ends (`PR_SET_PDEATHSIG`), so a
//! killed peapod leaves no VM behind; start a pod VM from a thread that outlives it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::protocol::client::{Client, ClientError, attach_stream};
use crate::protocol::{CONTROL_PORT, ProcessRef, STDIO_PORT, StreamKind};
use crate::vmm::boot::linux::DEFAULT_CMDLINE;
use crate::vmm::program::VmmProgram;
use crate::vmm::virtio::vsock::{ConnectError, connect_to_guest};

/// How long a pod VM may take from the VMM's start to the agent's answer.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the VMM may take to exit after the agent was asked to power off.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Console bytes quoted in errors.
const CONSOLE_TAIL: u64 = 3000;

#[derive(Debug, thiserror::Error)]
pub enum PodVmError {
    #[error("cannot create the pod VM's directory: {0}")]
    TempDir(#[source] std::io::Error),
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
        status: std::process::ExitStatus,
        initrd: PathBuf,
        vmm: String,
        console: String,
    },
    #[error("cannot connect to the agent: {0}")]
    Connect(#[from] ConnectError),
    #[error("{what}: {source}")]
    Agent {
        what: String,
        #[source]
        source: ClientError,
    },
    #[error("the VMM did not exit within {0:?} of the agent's shutdown; killed it")]
    ShutdownTimeout(Duration),
    #[error("the VMM failed ({status}): {vmm}")]
    VmmFailed {
        status: std::process::ExitStatus,
        vmm: String,
    },
    #[error("waiting for the VMM: {0}")]
    Wait(#[source] std::io::Error),
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
    /// The VMM's start to the agent's boot signal, from the VMM's `boot-timing:` line.
    pub boot_signal_ms: Option<f64>,
}

/// `boot_signal_ms` of the VMM's `boot-timing: ... boot_signal_ms=N ...` line (`-` or no
/// line: none).
fn boot_signal_ms(vmm_log: &str) -> Option<f64> {
    vmm_log
        .lines()
        .filter(|l| l.starts_with("boot-timing:"))
        .flat_map(str::split_whitespace)
        .find_map(|kv| kv.strip_prefix("boot_signal_ms="))?
        .parse()
        .ok()
}

/// A running pod VM with a control connection to its agent.
pub struct PodVm {
    child: Option<Child>,
    dir: tempfile::TempDir,
    uds: PathBuf,
    initrd: PathBuf,
    client: Client<UnixStream>,
    pub times: StartTimes,
}

impl PodVm {
    pub fn start(config: &PodVmConfig) -> Result<Self, PodVmError> {
        let dir = tempfile::Builder::new()
            .prefix("peapod-pod-")
            .tempdir()
            .map_err(PodVmError::TempDir)?;
        let uds = dir.path().join("vsock.sock");
        let console = dir.path().join("console.log");
        let vmm_log = File::create(dir.path().join("vmm.log")).map_err(PodVmError::TempDir)?;
        let mut cmd = config.vmm.command();
        cmd.arg("--kernel")
            .arg(&config.kernel)
            .arg("--initrd")
            .arg(&config.initrd)
            .args(["--cpus", &config.cpus.to_string()])
            .args(["--memory", &config.memory_mib.to_string()])
            .args(["--cmdline", &format!("{DEFAULT_CMDLINE} quiet")])
            .arg("--rng")
            .arg("--vsock")
            .arg(&uds)
            .arg("--console")
            .arg(&console)
            .arg("--boot-timing");
        for (path, ro) in &config.disks {
            let mut arg = path.as_os_str().to_owned();
            if *ro {
                arg.push(",ro");
            }
            cmd.arg("--disk").arg(arg);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(vmm_log));
        // SAFETY: the closure runs between fork and exec and makes only async-signal-safe
        // calls (prctl, sigprocmask) on values it owns.
        unsafe {
            cmd.pre_exec(|| {
                // The VMM dies with the thread that started it, even when that is killed
                // (a VM nobody drives would run on), and does not inherit a signal mask
                // its caller set up for forwarding.
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                nix::sys::signal::sigprocmask(
                    nix::sys::signal::SigmaskHow::SIG_SETMASK,
                    Some(&nix::sys::signal::SigSet::empty()),
                    None,
                )?;
                Ok(())
            });
        }
        let spawned = Instant::now();
        let mut child = cmd.spawn().map_err(|source| PodVmError::Spawn {
            binary: config.vmm.path.clone(),
            source,
        })?;
        let connected = wait_for_agent(&mut child, dir.path(), &uds, config).and_then(|stream| {
            Client::handshake(stream).map_err(|source| PodVmError::Agent {
                what: "handshake with the agent".into(),
                source,
            })
        });
        let client = match connected {
            Ok(client) => client,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(PodVm {
            child: Some(child),
            dir,
            uds,
            initrd: config.initrd.clone(),
            client,
            times: StartTimes {
                spawned: Some(spawned),
                agent_ready: Some(Instant::now()),
            },
        })
    }

    /// The control connection made at start.
    pub fn client(&mut self) -> &mut Client<UnixStream> {
        &mut self.client
    }

    /// One more handshaken control connection (for a blocking `wait`, say).
    pub fn control(&self) -> Result<Client<UnixStream>, PodVmError> {
        let stream = connect_to_guest(&self.uds, CONTROL_PORT, Duration::from_secs(5))?;
        Client::handshake(stream).map_err(|source| PodVmError::Agent {
            what: "handshake on a new control connection".into(),
            source,
        })
    }

    /// Attaches `stream` of `process`: a stdio connection that now carries raw bytes.
    pub fn attach(
        &self,
        process: &ProcessRef,
        stream: StreamKind,
    ) -> Result<UnixStream, PodVmError> {
        let mut conn = connect_to_guest(&self.uds, STDIO_PORT, Duration::from_secs(5))?;
        attach_stream(&mut conn, process, stream).map_err(|source| PodVmError::Agent {
            what: format!("attaching {} of {process}", stream.as_str()),
            source,
        })?;
        Ok(conn)
    }

    /// A handle that signals `process` from any thread, on a connection of its own.
    pub fn process_handle(&self, process: &ProcessRef) -> ProcessHandle {
        ProcessHandle {
            uds: self.uds.clone(),
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
        let Some(mut child) = self.child.take() else {
            return Ok(VmDown::default());
        };
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        loop {
            match child.try_wait().map_err(PodVmError::Wait)? {
                Some(status) if status.success() => {
                    let log = std::fs::read_to_string(self.dir.path().join("vmm.log"));
                    return Ok(VmDown {
                        boot_signal_ms: log.ok().as_deref().and_then(boot_signal_ms),
                    });
                }
                Some(status) => {
                    return Err(PodVmError::VmmFailed {
                        status,
                        vmm: read_tail(&self.dir.path().join("vmm.log")),
                    });
                }
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
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

    /// The directory holding the VM's sockets and logs (removed on drop).
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
        }
    }
}

/// Signals one process of a pod VM (see [`PodVm::process_handle`]).
#[derive(Debug, Clone)]
pub struct ProcessHandle {
    uds: PathBuf,
    process: ProcessRef,
}

impl ProcessHandle {
    pub fn signal(&self, signal: i32) -> Result<(), PodVmError> {
        let stream = connect_to_guest(&self.uds, CONTROL_PORT, Duration::from_secs(5))?;
        let mut client = Client::handshake(stream).map_err(|source| PodVmError::Agent {
            what: "handshake for a signal".into(),
            source,
        })?;
        client
            .signal(&self.process, signal)
            .map_err(|source| PodVmError::Agent {
                what: format!("signal {signal} to {}", self.process),
                source,
            })
    }
}

/// Connects to the agent's control port until it answers, the VMM exits or the timeout
/// passes.
fn wait_for_agent(
    child: &mut Child,
    dir: &Path,
    uds: &Path,
    config: &PodVmConfig,
) -> Result<UnixStream, PodVmError> {
    let timeout = config.agent_timeout;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().map_err(PodVmError::Wait)? {
            return Err(PodVmError::VmEnded {
                status,
                initrd: config.initrd.clone(),
                vmm: read_tail(&dir.join("vmm.log")),
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

fn read_tail(path: &Path) -> String {
    let Ok(mut f) = File::open(path) else {
        return "(none)".into();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(CONSOLE_TAIL)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
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

    #[test]
    fn the_boot_signal_time_comes_from_the_vmm_log() {
        let log =
            "some warning\nboot-timing: first_output_ms=84.1 boot_signal_ms=412.9 total_ms=530.0\n";
        assert_eq!(boot_signal_ms(log), Some(412.9));
        let none = "boot-timing: first_output_ms=84.1 boot_signal_ms=- total_ms=530.0\n";
        assert_eq!(boot_signal_ms(none), None);
        assert_eq!(boot_signal_ms("boot_signal_ms=5 outside the line"), None);
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

    #[test]
    fn a_vmm_that_ends_at_once_is_reported_with_its_console() {
        let dir = tempfile::tempdir().unwrap();
        // A stand-in "VMM" that writes a console line and exits: `sh -c` ignores the rest.
        let script = dir.path().join("fake-vmm");
        std::fs::write(
            &script,
            "#!/bin/sh\nfor a; do case $prev in --console) echo 'Kernel panic - not syncing' > \"$a\";; esac; prev=$a; done\necho 'vmm: no kvm' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let err = start_fake(&PodVmConfig {
            vmm: VmmProgram::standalone(script),
            kernel: "/k".into(),
            initrd: "/i".into(),
            cpus: 1,
            memory_mib: 64,
            disks: vec![("/img".into(), true)],
            agent_timeout: Duration::from_secs(20),
        })
        .err()
        .unwrap();
        let msg = err.to_string();
        assert!(matches!(err, PodVmError::VmEnded { .. }), "{msg}");
        assert!(msg.contains("Kernel panic"), "{msg}");
        assert!(msg.contains("vmm: no kvm"), "{msg}");
        assert!(msg.contains("agent initramfs"), "{msg}");
    }

    #[test]
    fn a_silent_guest_times_out_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-vmm");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let start = Instant::now();
        let err = start_fake(&PodVmConfig {
            vmm: VmmProgram::standalone(script),
            kernel: "/k".into(),
            initrd: "/plain.cpio.gz".into(),
            cpus: 1,
            memory_mib: 64,
            disks: vec![],
            agent_timeout: Duration::from_millis(600),
        })
        .err()
        .unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(matches!(err, PodVmError::AgentTimeout { .. }), "{err}");
        assert!(err.to_string().contains("/plain.cpio.gz"));
    }
}
