//! The nested host VM ("L1"): `podman machine` for KVM. On hosts without usable hardware KVM
//! (no VT-x/AMD-V, or a PVM `/dev/kvm`), peapod boots a Debian kernel in QEMU with an emulated
//! AMD-V CPU; inside it `/dev/kvm` is real, and peapod's VMM and tests run there.
//!
//! One `run` boots one L1: the initramfs holds busybox, the KVM modules, peapod itself and
//! the copied paths; peapod's init (`guest`) runs the command and sends its output and exit
//! status back over the link (`link`) on the L1's second serial port. The L1's kernel console
//! goes to a log file, kept (and named) when something fails.
//!
//! A run leaves nothing behind: its QEMU dies with the thread that started it (even when
//! peapod is SIGKILLed), and a signal the caller hands over through an [`Interrupt`] stops the
//! L1 and removes the run directory. An L1 whose link goes silent (init sends a heartbeat) is
//! killed as stalled after [`MachineConfig::stall_timeout`].

pub mod assets;
pub mod guest;
pub mod initramfs;
pub mod link;
pub mod qemu;

use std::fs::File;
use std::io::{BufWriter, ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use assets::{AssetError, L1Assets};
use initramfs::{CopySpec, InitramfsError, RunSpec};
use link::{Frame, FrameDecoder, LinkError, StallWatch};
pub use qemu::{Accel, AccelChoice, AccelError};
use qemu::{QemuLaunch, choose_accel};

use crate::host::HostVirt;

/// How long the L1 may take to power off after the command's status arrived.
const POWER_OFF_GRACE: Duration = Duration::from_secs(10);
/// The shortest stall timeout: two heartbeats may be missed before the L1 counts as stalled.
const MIN_STALL_TIMEOUT: Duration = link::HEARTBEAT_INTERVAL.saturating_mul(2);
/// Lines of the console log shown when the L1 fails.
const TAIL_LINES: usize = 25;

/// One `peapod machine run`.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub cpus: u32,
    pub memory_mib: u32,
    pub accel: AccelChoice,
    pub timeout: Duration,
    /// Kill the L1 as stalled when nothing arrived on the link for this long (init sends a
    /// heartbeat every [`link::HEARTBEAT_INTERVAL`]); `None` never does.
    pub stall_timeout: Option<Duration>,
    pub copies: Vec<CopySpec>,
    /// `KEY=VALUE` pairs for the command's environment.
    pub env: Vec<String>,
    pub workdir: String,
    pub argv: Vec<String>,
    /// The QEMU that runs the L1; `None`: `$PEAPOD_QEMU`, else `qemu-system-x86_64` on PATH.
    pub qemu: Option<PathBuf>,
}

/// How a run went, for the caller and for benchmarks.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The command's exit status (128+N when killed by signal N).
    pub status: u8,
    pub accel: Accel,
    /// From starting QEMU to init's ready message (modules loaded, /dev/kvm there).
    pub boot: Duration,
    /// The L1 kernel's own uptime when init was ready.
    pub l1_uptime_at_ready: Duration,
    /// From the call to the L1's exit.
    pub total: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(transparent)]
    Assets(#[from] AssetError),
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    #[error(transparent)]
    Accel(#[from] AccelError),
    #[error("--cpus must be 1 to 64 and --memory at least 256 MiB")]
    BadSize,
    #[error(
        "--stall-timeout must be 0 (off) or at least {} s: the L1's init sends a heartbeat every {} s",
        MIN_STALL_TIMEOUT.as_secs(), link::HEARTBEAT_INTERVAL.as_secs()
    )]
    BadStallTimeout,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(
        "the L1 did not finish within {} s and was killed (raise --timeout); L1 console log: {}\n{tail}",
        .limit.as_secs(), .log.display()
    )]
    Timeout {
        limit: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "the L1 stalled: nothing arrived on its link for {} s (its init sends a heartbeat every \
         {} s), so it was killed (raise or disable with --stall-timeout); L1 console log: {}\n{tail}",
        .silent.as_secs(), link::HEARTBEAT_INTERVAL.as_secs(), .log.display()
    )]
    Stalled {
        silent: Duration,
        log: PathBuf,
        tail: String,
    },
    /// The caller's [`Interrupt`] was raised (peapod got `signal`); the L1 was stopped and the
    /// run directory removed.
    #[error("stopped by signal {signal}")]
    Interrupted { signal: i32 },
    #[error(
        "the L1 ended without the command's exit status ({reason}); L1 console log: {}\n{tail}",
        .log.display()
    )]
    Failed {
        reason: String,
        log: PathBuf,
        tail: String,
    },
}

/// A request from outside to stop a run: the caller's signal handling raises it with the
/// signal's number, and `run` stops the L1, removes its run directory and returns
/// [`MachineError::Interrupted`] (within 100 ms once QEMU runs; before that, at the next step).
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<AtomicI32>);

impl Interrupt {
    pub fn raise(&self, signal: i32) {
        // the first signal is the one reported
        let _ = self
            .0
            .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The signal that raised it.
    pub fn raised(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal),
        }
    }

    fn check(&self) -> Result<(), MachineError> {
        match self.raised() {
            Some(signal) => Err(MachineError::Interrupted { signal }),
            None => Ok(()),
        }
    }
}

impl MachineError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MachineError {
        let what = what.into();
        move |source| MachineError::Io { what, source }
    }
}

/// Boots an L1, runs the command in it, and streams its stdout and stderr to `stdout` and
/// `stderr`. `Ok` carries the command's exit status; the L1's own failures are errors.
/// Call it from a thread that lives until it returns (QEMU dies with that thread).
pub fn run(
    config: &MachineConfig,
    interrupt: &Interrupt,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<RunReport, MachineError> {
    let started = Instant::now();
    if !(1..=64).contains(&config.cpus) || config.memory_mib < 256 {
        return Err(MachineError::BadSize);
    }
    if config
        .stall_timeout
        .is_some_and(|limit| limit < MIN_STALL_TIMEOUT)
    {
        return Err(MachineError::BadStallTimeout);
    }
    for copy in &config.copies {
        std::fs::symlink_metadata(&copy.host).map_err(|source| InitramfsError::CopySource {
            path: copy.host.clone(),
            source,
        })?;
    }
    let config = &with_guest_artifacts(config);
    let accel = choose_accel(config.accel, &HostVirt::probe())?;
    let l1 = L1Assets::find_with_qemu(config.qemu.as_deref())?;
    let peapod = std::env::current_exe().map_err(MachineError::io("finding the peapod binary"))?;
    let (base, held) = initramfs::base_archive(&l1, &peapod, &crate::dirs::cache_dir())?;

    let run_dir = tempfile::Builder::new()
        .prefix("peapod-machine-")
        .tempdir()
        .map_err(MachineError::io("creating the run directory"))?;
    let initrd = run_dir.path().join("initrd.cpio");
    write_initrd(&base, &initrd, config, &held)?;
    interrupt.check()?;

    // The log a failure names exists even when the L1 is stopped before QEMU opened it.
    File::create(run_dir.path().join("console.log"))
        .map_err(MachineError::io("creating console.log"))?;
    let launch = QemuLaunch {
        qemu: l1.qemu.clone(),
        accel,
        cpus: config.cpus,
        memory_mib: config.memory_mib,
        kernel: l1.kernel.clone(),
        initrd,
        console_log: run_dir.path().join("console.log"),
        link_socket: Some(run_dir.path().join("link.sock")),
        l1_huge_pages: crate::machine::qemu::huge_pages_hold_up(&l1.qemu, accel),
    };
    let listener = UnixListener::bind(run_dir.path().join("link.sock"))
        .map_err(MachineError::io("listening on the link socket"))?;
    let qemu_log = File::create(run_dir.path().join("qemu.log"))
        .map_err(MachineError::io("creating qemu.log"))?;
    tracing::debug!(args = ?launch.args(), "starting the L1");
    let boot_started = Instant::now();
    let child = launch
        .command()
        .stdin(Stdio::null())
        .stdout(qemu_log.try_clone().map_err(MachineError::io("qemu.log"))?)
        .stderr(qemu_log)
        .spawn()
        .map_err(MachineError::io(format!("starting {}", l1.qemu.display())))?;
    let mut l1_vm = L1Process {
        child,
        dir: run_dir.path().to_path_buf(),
        interrupt: interrupt.clone(),
        deadline: started + config.timeout,
        stall: StallWatch::new(config.stall_timeout, boot_started),
        console: ConsoleWatch::new(run_dir.path().join("console.log")),
    };

    let outcome = l1_vm.serve(&listener, stdout, stderr);
    let result = match outcome {
        Ok(served) => {
            l1_vm.wait_or_kill(POWER_OFF_GRACE);
            interrupt.check()?;
            Ok(RunReport {
                status: served.status,
                accel,
                boot: served
                    .ready_at
                    .map(|t| t - boot_started)
                    .unwrap_or_default(),
                l1_uptime_at_ready: served.l1_uptime,
                total: started.elapsed(),
            })
        }
        Err(stop) => {
            l1_vm.kill();
            // a signal explains whatever else went wrong meanwhile
            let stop = match interrupt.raised() {
                Some(signal) => Stop::Interrupted(signal),
                None => stop,
            };
            let log = run_dir.path().join("console.log");
            let tail = failure_tail(run_dir.path());
            Err(match stop {
                Stop::Timeout => MachineError::Timeout {
                    limit: config.timeout,
                    log,
                    tail,
                },
                Stop::Stalled(silent) => MachineError::Stalled { silent, log, tail },
                Stop::Interrupted(signal) => MachineError::Interrupted { signal },
                Stop::Failed(reason) => MachineError::Failed { reason, log, tail },
            })
        }
    };
    if let Err(
        MachineError::Timeout { .. } | MachineError::Stalled { .. } | MachineError::Failed { .. },
    ) = result
    {
        // keep the logs the error names, and only them: the initramfs is hundreds of MB
        keep_logs_only(run_dir.path());
        let _ = run_dir.keep();
    }
    result
}

/// Removes everything in a failed L1's run directory but its `*.log` files.
fn keep_logs_only(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            continue;
        }
        let _ = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
    }
}

/// Where the default guest artifacts land inside the L1.
const GUEST_ARTIFACT_DIR: &str = "/opt/peapod";

/// `config` plus the host's default guest kernel and agent initramfs, carried into the L1 and
/// named there by the variables peapod reads (`PEAPOD_GUEST_KERNEL`,
/// `PEAPOD_AGENT_INITRAMFS`), so that `peapod vm boot` and `peapod vm run-container` find them
/// inside as they do on the host. One the caller names itself (`--env VAR=...`), or the host
/// does not have, is left out; the command then gets the usual "not found" error inside.
fn with_guest_artifacts(config: &MachineConfig) -> MachineConfig {
    let mut config = config.clone();
    let defaults = [
        (
            crate::guest_kernel::GUEST_KERNEL_ENV,
            crate::guest_kernel::default_kernel().ok(),
            "vmlinux",
        ),
        (
            crate::runtime::oneshot::AGENT_INITRAMFS_ENV,
            crate::runtime::oneshot::default_agent_initramfs().ok(),
            "agent-initramfs.cpio.gz",
        ),
    ];
    for (var, host_path, name) in defaults {
        let named = config
            .env
            .iter()
            .any(|e| e.split_once('=').is_some_and(|(k, _)| k == var));
        let Some(host) = host_path else { continue };
        if named {
            continue;
        }
        let guest = format!("{GUEST_ARTIFACT_DIR}/{name}");
        tracing::debug!(var, host = %host.display(), guest, "carrying a guest artifact into the L1");
        config.env.push(format!("{var}={guest}"));
        config.copies.push(CopySpec { host, guest });
    }
    config
}

fn write_initrd(
    base: &Path,
    initrd: &Path,
    config: &MachineConfig,
    held: &std::collections::BTreeSet<String>,
) -> Result<(), MachineError> {
    let mut out = File::create(initrd).map_err(MachineError::io("creating the initrd"))?;
    let mut base_file =
        File::open(base).map_err(MachineError::io(format!("reading {}", base.display())))?;
    std::io::copy(&mut base_file, &mut out).map_err(MachineError::io("writing the initrd"))?;
    let spec = RunSpec {
        argv: config.argv.clone(),
        env: config.env.clone(),
        workdir: config.workdir.clone(),
    };
    let mut writer = BufWriter::new(out);
    initramfs::run_archive(&spec, &config.copies, held, &mut writer)?;
    writer
        .flush()
        .map_err(MachineError::io("writing the initrd"))?;
    Ok(())
}

/// Reads what the L1's console log gained, now and then, for the line of a wedged kernel: a
/// soft lockup, which the test bed's emulated KVM has been seen to enter and never leave
/// (`kvm_apic_local_deliver`, README, Tests). Its init keeps sending heartbeats then, so the
/// stall watch does not see it; without this the run waits out its whole `--timeout`.
struct ConsoleWatch {
    path: PathBuf,
    /// Bytes of the log already read.
    offset: u64,
    next_check: Option<Instant>,
}

impl ConsoleWatch {
    /// How often the log is read.
    const PERIOD: Duration = Duration::from_secs(1);
    /// At most this much of the log is read per check.
    const MAX_READ: u64 = 1 << 20;
    /// The kernel's line for a CPU stuck in the kernel for over 20 s.
    const WEDGED: &'static str = "soft lockup";

    fn new(path: PathBuf) -> Self {
        ConsoleWatch {
            path,
            offset: 0,
            next_check: None,
        }
    }

    /// The console's line saying the kernel is wedged, once it has appeared.
    fn wedged(&mut self, now: Instant) -> Option<String> {
        if self.next_check.is_some_and(|t| now < t) {
            return None;
        }
        self.next_check = Some(now + Self::PERIOD);
        let mut file = File::open(&self.path).ok()?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(self.offset)).ok()?;
        let mut text = Vec::new();
        file.take(Self::MAX_READ).read_to_end(&mut text).ok()?;
        // A line cut at the end is read again whole next time.
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.offset += whole as u64;
        String::from_utf8_lossy(&text[..whole])
            .lines()
            .find(|l| l.contains(Self::WEDGED))
            .map(|l| l.trim().to_string())
    }
}

/// Why serving the link stopped without an exit status.
enum Stop {
    Timeout,
    /// Nothing on the link for this long.
    Stalled(Duration),
    Interrupted(i32),
    Failed(String),
}

struct Served {
    status: u8,
    ready_at: Option<Instant>,
    l1_uptime: Duration,
}

struct L1Process {
    child: Child,
    dir: PathBuf,
    interrupt: Interrupt,
    /// When the run's --timeout is up.
    deadline: Instant,
    stall: StallWatch,
    console: ConsoleWatch,
}

impl L1Process {
    /// Accepts QEMU's link connection and relays frames until the exit status arrives.
    fn serve(
        &mut self,
        listener: &UnixListener,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<Served, Stop> {
        let mut stream = self.accept(listener)?;
        let mut decoder = FrameDecoder::default();
        let mut ready_at = None;
        let mut l1_uptime = Duration::ZERO;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => {
                    return Err(Stop::Failed(self.exit_reason("the link closed")));
                }
                Ok(n) => {
                    self.stall.seen(Instant::now());
                    decoder.push(&buf[..n]);
                    while let Some(frame) = decoder
                        .next_frame()
                        .map_err(|e: LinkError| Stop::Failed(format!("garbled link: {e}")))?
                    {
                        match frame {
                            Frame::Ready { uptime_ms } => {
                                ready_at = Some(Instant::now());
                                l1_uptime = Duration::from_millis(uptime_ms);
                            }
                            Frame::Stdout(data) => {
                                let _ = stdout.write_all(&data).and_then(|()| stdout.flush());
                            }
                            Frame::Stderr(data) => {
                                let _ = stderr.write_all(&data).and_then(|()| stderr.flush());
                            }
                            Frame::Error(text) => {
                                let _ = writeln!(stderr, "peapod machine: {text}");
                            }
                            Frame::Heartbeat => {}
                            Frame::Exit(status) => {
                                return Ok(Served {
                                    status,
                                    ready_at,
                                    l1_uptime,
                                });
                            }
                        }
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Stop::Failed(format!("reading the link: {e}"))),
            }
            self.should_stop()?;
        }
    }

    /// Why the run must stop now, if it must: a signal, a silent link, a wedged L1 kernel,
    /// or the timeout.
    fn should_stop(&mut self) -> Result<(), Stop> {
        let now = Instant::now();
        if let Some(signal) = self.interrupt.raised() {
            return Err(Stop::Interrupted(signal));
        }
        if let Some(silent) = self.stall.stalled(now) {
            return Err(Stop::Stalled(silent));
        }
        if let Some(line) = self.console.wedged(now) {
            return Err(Stop::Failed(format!(
                "the L1's kernel is wedged (its console says `{line}`; its init may still \
                 answer, but KVM inside it does not come back)"
            )));
        }
        if now >= self.deadline {
            return Err(Stop::Timeout);
        }
        Ok(())
    }

    fn accept(&mut self, listener: &UnixListener) -> Result<UnixStream, Stop> {
        let failed = |what: &str, e: std::io::Error| Stop::Failed(format!("{what}: {e}"));
        listener
            .set_nonblocking(true)
            .map_err(|e| failed("link socket", e))?;
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream
                        .set_nonblocking(false)
                        .and_then(|()| stream.set_read_timeout(Some(Duration::from_millis(100))))
                        .map_err(|e| failed("link socket", e))?;
                    return Ok(stream);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if let Ok(Some(_)) = self.child.try_wait() {
                        return Err(Stop::Failed(
                            self.exit_reason("QEMU exited before connecting the link"),
                        ));
                    }
                    self.should_stop()?;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(failed("accepting the link", e)),
            }
        }
    }

    /// `what`, with QEMU's exit status when it has one.
    fn exit_reason(&mut self, what: &str) -> String {
        std::thread::sleep(Duration::from_millis(100));
        match self.child.try_wait() {
            Ok(Some(status)) => format!(
                "{what}; QEMU {status}; its messages: {}",
                self.dir.join("qemu.log").display()
            ),
            _ => what.to_string(),
        }
    }

    /// Waits for the L1 to power off; kills it after `grace`, or at once on an interrupt.
    fn wait_or_kill(&mut self, grace: Duration) {
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            if self.interrupt.raised().is_some() {
                self.kill();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!("the L1 did not power off in time; killing it");
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for L1Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// The last lines of the console log and of QEMU's own messages.
fn failure_tail(dir: &Path) -> String {
    let mut text = String::new();
    for (name, label) in [("console.log", "L1 console"), ("qemu.log", "QEMU")] {
        let content = std::fs::read(dir.join(name)).unwrap_or_default();
        let content = String::from_utf8_lossy(&content);
        // QEMU's TCG lists every CPUID feature of the EPYC model it cannot emulate: noise here
        let lines: Vec<&str> = content
            .lines()
            .filter(|line| !line.contains("TCG doesn't support requested feature"))
            .collect();
        if lines.is_empty() {
            continue;
        }
        let start = lines.len().saturating_sub(TAIL_LINES);
        text.push_str(&format!("--- last lines of the {label} ---\n"));
        for line in &lines[start..] {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_soft_lockup_on_the_console_is_a_wedged_l1() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut watch = ConsoleWatch::new(log.clone());
        let t0 = Instant::now();
        // No log yet, then a quiet one.
        assert_eq!(watch.wedged(t0), None);
        std::fs::write(
            &log,
            "[ 1.0] kvm: Nested Virtualization enabled\n[ 2.0] watchdog: BUG: soft lo",
        )
        .unwrap();
        assert_eq!(watch.wedged(t0 + Duration::from_secs(1)), None);
        // Not read again within the period; the cut line is read whole later.
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut f, b"ckup - CPU#0 stuck for 22s! [vcpu0:116]\n").unwrap();
        assert_eq!(
            watch.wedged(t0 + Duration::from_millis(1500)),
            None,
            "checked within the period"
        );
        assert_eq!(
            watch.wedged(t0 + Duration::from_secs(3)).as_deref(),
            Some("[ 2.0] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [vcpu0:116]")
        );
    }

    #[test]
    fn a_failed_l1_keeps_its_logs_and_not_its_initramfs() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["console.log", "qemu.log", "initrd.cpio", "link.sock"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        keep_logs_only(dir.path());
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["console.log", "qemu.log"]);
    }

    fn config(stall_timeout: Option<Duration>) -> MachineConfig {
        MachineConfig {
            cpus: 1,
            memory_mib: 256,
            accel: AccelChoice::Tcg,
            timeout: Duration::from_secs(1),
            stall_timeout,
            copies: vec![CopySpec {
                host: "/no/such/path/for/peapod".into(),
                guest: "/x".into(),
            }],
            env: Vec::new(),
            workdir: "/".into(),
            argv: vec!["true".into()],
            qemu: None,
        }
    }

    #[test]
    fn interrupt_reports_the_first_signal() {
        let interrupt = Interrupt::default();
        assert_eq!(interrupt.raised(), None);
        let handed_out = interrupt.clone();
        handed_out.raise(15);
        handed_out.raise(2);
        assert_eq!(interrupt.raised(), Some(15));
        assert!(matches!(
            interrupt.check(),
            Err(MachineError::Interrupted { signal: 15 })
        ));
    }

    #[test]
    fn a_stall_timeout_below_two_heartbeats_is_refused_before_anything_runs() {
        let mut sink = Vec::new();
        let mut sink2 = Vec::new();
        let quiet = Interrupt::default();
        let err = run(
            &config(Some(Duration::from_secs(9))),
            &quiet,
            &mut sink,
            &mut sink2,
        )
        .unwrap_err();
        assert!(matches!(err, MachineError::BadStallTimeout), "{err}");
        // 10 s, and none at all, pass that check (and fail at the missing copy source)
        for ok in [Some(Duration::from_secs(10)), None] {
            let err = run(&config(ok), &quiet, &mut sink, &mut sink2).unwrap_err();
            assert!(matches!(err, MachineError::Initramfs(_)), "{err}");
        }
    }
}
