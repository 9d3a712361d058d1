//! One container in its own pod VM: boot the VM with the image as a read-only disk, create
//! the sandbox and the container, stream its stdout/stderr, wait for its status, power the
//! VM off.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::endpoint::ProcessHandle;
use super::vm::{PodVm, PodVmConfig, PodVmError};
use crate::protocol::client::ClientError;
use crate::protocol::{
    ContainerSpec, ErrorKind, ExitStatus, FsType, ProcessRef, ProcessSpec, Resources, RootfsSpec,
    SandboxSpec, StreamKind,
};

/// Environment variable naming the agent initramfs.
pub const AGENT_INITRAMFS_ENV: &str = "PEAPOD_AGENT_INITRAMFS";
/// The container's id inside its pod.
pub const CONTAINER_ID: &str = "main";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "no agent initramfs at {0}: build it with rootfs/build-agent-initramfs.sh, or set \
         PEAPOD_AGENT_INITRAMFS or pass --initrd"
    )]
    NoAgentInitramfs(PathBuf),
    #[error("cannot read the image {path}: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} is neither an ext4 nor an erofs image (no superblock magic): give a filesystem \
         image, e.g. from `mkfs.ext4 -d DIR` or `mkfs.erofs`"
    )]
    UnknownFs(PathBuf),
    #[error(transparent)]
    Vm(#[from] PodVmError),
    #[error("cannot pass stdin to the container: {0}")]
    Stdin(String),
    #[error("{what}: {source}")]
    Agent {
        what: &'static str,
        #[source]
        source: ClientError,
    },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunContainer {
    /// The VM; the image is added as its first disk (`/dev/vda`), read-only.
    pub vm: PodVmConfig,
    /// ext4 or erofs image holding the container's root.
    pub rootfs: PathBuf,
    /// Detected from the superblock when `None`.
    pub fs_type: Option<FsType>,
    pub process: ProcessSpec,
    pub resources: Resources,
    pub hostname: String,
}

/// How the run went: the process's status, why starting it failed (it then exits 126 or
/// 127), and when each step happened.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub status: ExitStatus,
    pub start_error: Option<String>,
    pub timings: RunTimings,
}

/// Milliseconds from the VMM's spawn to each step.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunTimings {
    /// The kernel's boot: the VMM's start to the agent's boot signal (as the VMM's own boot
    /// timer saw it; known once the VM is down, `None` where the guest sent none).
    pub kernel_booted_ms: Option<f64>,
    pub agent_ready_ms: f64,
    pub sandbox_created_ms: f64,
    pub container_created_ms: f64,
    pub container_started_ms: f64,
    pub first_output_ms: Option<f64>,
    pub exited_ms: f64,
    pub vm_down_ms: f64,
}

impl std::fmt::Display for RunTimings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "run-timing: kernel_booted_ms={} agent_ready_ms={:.1} sandbox_created_ms={:.1} \
             container_created_ms={:.1} container_started_ms={:.1} first_output_ms={} \
             exited_ms={:.1} vm_down_ms={:.1}",
            self.kernel_booted_ms
                .map_or("none".into(), |ms| format!("{ms:.1}")),
            self.agent_ready_ms,
            self.sandbox_created_ms,
            self.container_created_ms,
            self.container_started_ms,
            self.first_output_ms
                .map_or("none".into(), |ms| format!("{ms:.1}")),
            self.exited_ms,
            self.vm_down_ms
        )
    }
}

/// The agent initramfs used when none is given: `$PEAPOD_AGENT_INITRAMFS`, else
/// `<cache>/agent/initramfs.cpio.gz`, where rootfs/build-agent-initramfs.sh writes it.
pub fn default_agent_initramfs() -> Result<PathBuf, RunError> {
    let path = std::env::var_os(AGENT_INITRAMFS_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::dirs::cache_dir().join("agent/initramfs.cpio.gz"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(RunError::NoAgentInitramfs(path))
    }
}

/// The filesystem of an image, from its superblock's magic number.
pub fn detect_fs_type(path: &Path) -> Result<FsType, RunError> {
    let io = |source| RunError::Image {
        path: path.to_path_buf(),
        source,
    };
    let mut head = Vec::with_capacity(1084);
    File::open(path)
        .map_err(io)?
        .take(1084)
        .read_to_end(&mut head)
        .map_err(io)?;
    // erofs: 0xE0F5E1E2 at 1024; ext2/3/4: 0xEF53 at 1024 + 56.
    if head.get(1024..1028) == Some(&0xE0F5_E1E2u32.to_le_bytes()[..]) {
        return Ok(FsType::Erofs);
    }
    if head.get(1080..1082) == Some(&0xEF53u16.to_le_bytes()[..]) {
        return Ok(FsType::Ext4);
    }
    Err(RunError::UnknownFs(path.to_path_buf()))
}

fn agent(what: &'static str) -> impl FnOnce(ClientError) -> RunError {
    move |source| RunError::Agent { what, source }
}

fn host_seed() -> Vec<u8> {
    let mut seed = vec![0u8; 64];
    match File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed)) {
        Ok(()) => seed,
        Err(_) => Vec::new(),
    }
}

/// Where a container's stdio goes and comes from.
pub struct RunIo<'a> {
    /// The process's stdout (and, with a tty, all its output).
    pub stdout: &'a mut (dyn Write + Send),
    pub stderr: &'a mut (dyn Write + Send),
    /// Copied to the process's stdin (`process.stdin`) or pty (`process.tty`) on a thread
    /// of its own, which is left running if this never ends (a terminal).
    pub stdin: Option<Box<dyn Read + Send>>,
    /// Called once the process runs, with a handle that signals it from any thread.
    pub on_start: Option<Box<dyn FnOnce(ProcessHandle) + 'a>>,
}

/// Runs the container; its stdout and stderr are copied to `out` and `err` as they come.
pub fn run_container(
    run: &RunContainer,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> Result<RunOutcome, RunError> {
    run_container_io(
        run,
        RunIo {
            stdout: out,
            stderr: err,
            stdin: None,
            on_start: None,
        },
    )
}

/// [`run_container`] with stdin, a tty and a start callback.
pub fn run_container_io(run: &RunContainer, io: RunIo<'_>) -> Result<RunOutcome, RunError> {
    let RunIo {
        stdout: out,
        stderr: err,
        stdin,
        on_start,
    } = io;
    let fs_type = match run.fs_type {
        Some(t) => t,
        None => detect_fs_type(&run.rootfs)?,
    };
    if !run.vm.initrd.is_file() {
        return Err(RunError::NoAgentInitramfs(run.vm.initrd.clone()));
    }
    let mut config = run.vm.clone();
    config.disks.insert(0, (run.rootfs.clone(), true));
    let mut vm = PodVm::start(&config)?;
    let t0 = vm.times.spawned.unwrap_or_else(Instant::now);
    let ms = |t: Instant| t.duration_since(t0).as_secs_f64() * 1000.0;
    let mut timings = RunTimings {
        agent_ready_ms: vm.times.agent_ready.map_or(0.0, ms),
        ..Default::default()
    };
    vm.client()
        .create_sandbox(&SandboxSpec {
            hostname: run.hostname.clone(),
            entropy_seed: host_seed(),
            ..Default::default()
        })
        .map_err(agent("creating the pod sandbox"))?;
    timings.sandbox_created_ms = ms(Instant::now());
    let spec = ContainerSpec {
        id: CONTAINER_ID.into(),
        hostname: None,
        rootfs: RootfsSpec {
            device: "/dev/vda".into(),
            fs_type,
            read_only: false,
        },
        mounts: Vec::new(),
        process: run.process.clone(),
        resources: run.resources.clone(),
        privileged: false,
    };
    vm.client()
        .create_container(&spec)
        .map_err(agent("creating the container"))?;
    timings.container_created_ms = ms(Instant::now());
    let main = ProcessRef::container(CONTAINER_ID);
    let tty = run.process.tty;
    let (mut stdout, stderr) = if tty {
        (vm.attach(&main, StreamKind::Pty)?, None)
    } else {
        (
            vm.attach(&main, StreamKind::Stdout)?,
            Some(vm.attach(&main, StreamKind::Stderr)?),
        )
    };
    if let Some(mut input) = stdin {
        let conn = if tty {
            Some(
                stdout
                    .try_clone()
                    .map_err(|e| RunError::Stdin(e.to_string()))?,
            )
        } else if run.process.stdin {
            Some(vm.attach(&main, StreamKind::Stdin)?)
        } else {
            None
        };
        if let Some(mut conn) = conn {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut input, &mut conn);
                if !tty {
                    let _ = conn.shutdown(std::net::Shutdown::Write);
                }
            });
        }
    }
    let first_output = OnceLock::new();
    let handle = vm.process_handle(&main);
    let (status, start_error) = std::thread::scope(|s| -> Result<_, RunError> {
        let first = &first_output;
        s.spawn(move || copy_stream(&mut stdout, out, first));
        if let Some(mut stderr) = stderr {
            s.spawn(move || copy_stream(&mut stderr, err, first));
        }
        let started = vm.client().start_container(CONTAINER_ID);
        if started.is_ok()
            && let Some(f) = on_start
        {
            f(handle);
        }
        let start_error = match started {
            Ok(_) => None,
            Err(e) if e.wire_kind() == Some(ErrorKind::Setup) => Some(match e {
                ClientError::Agent { error, .. } => error.message,
                other => other.to_string(),
            }),
            Err(e) => return Err(agent("starting the container")(e)),
        };
        timings.container_started_ms = ms(Instant::now());
        let status = vm
            .client()
            .wait(&main)
            .map_err(agent("waiting for the container"))?;
        timings.exited_ms = ms(Instant::now());
        Ok((status, start_error))
    })?;
    timings.first_output_ms = first_output.get().copied().map(ms);
    match vm.shutdown() {
        Ok(down) => timings.kernel_booted_ms = down.boot_signal_ms,
        Err(e) => tracing::warn!("the pod VM did not shut down cleanly: {e}"),
    }
    timings.vm_down_ms = ms(Instant::now());
    Ok(RunOutcome {
        status,
        start_error,
        timings,
    })
}

/// Copies a stdio stream to `to` until end of file, noting when the first byte came.
fn copy_stream(from: &mut impl Read, to: &mut (dyn Write + Send), first: &OnceLock<Instant>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let _ = first.set(Instant::now());
                if to.write_all(&buf[..n]).and_then(|_| to.flush()).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// A default for the agent timeout that the tests can shorten.
pub fn agent_timeout_from_env() -> Duration {
    std::env::var("PEAPOD_AGENT_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(super::vm::DEFAULT_AGENT_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_with(offset: usize, magic: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut data = vec![0u8; 4096];
        data[offset..offset + magic.len()].copy_from_slice(magic);
        f.write_all(&data).unwrap();
        f
    }

    #[test]
    fn filesystems_are_told_apart_by_their_magic() {
        let ext4 = image_with(1080, &[0x53, 0xEF]);
        assert_eq!(detect_fs_type(ext4.path()).unwrap(), FsType::Ext4);
        let erofs = image_with(1024, &[0xE2, 0xE1, 0xF5, 0xE0]);
        assert_eq!(detect_fs_type(erofs.path()).unwrap(), FsType::Erofs);
        let neither = image_with(0, b"hello");
        assert!(matches!(
            detect_fs_type(neither.path()),
            Err(RunError::UnknownFs(_))
        ));
        let short = tempfile::NamedTempFile::new().unwrap();
        assert!(detect_fs_type(short.path()).is_err());
        assert!(matches!(
            detect_fs_type(Path::new("/no/such/image")),
            Err(RunError::Image { .. })
        ));
    }

    #[test]
    fn timings_print_on_one_line() {
        let t = RunTimings {
            agent_ready_ms: 1.0,
            first_output_ms: Some(2.5),
            ..Default::default()
        };
        let line = t.to_string();
        assert!(line.starts_with("run-timing: kernel_booted_ms=none agent_ready_ms=1.0"));
        assert!(line.contains("first_output_ms=2.5"));
    }
}
