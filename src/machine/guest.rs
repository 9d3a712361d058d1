//! peapod's init inside the L1 (`peapod machine init`, PID 1): mounts the basic file systems,
//! loads the KVM and networking modules, runs the command from the run spec with its output framed onto the
//! link (ttyS1), reports its exit status and powers the L1 off. From the moment the link is
//! open it also sends a heartbeat, so the host can tell a stalled L1 from a quiet command. It
//! never returns: PID 1 returning would panic the L1 kernel.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::mount::{MsFlags, mount};
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::termios::{self, ControlFlags, SetArg};
use nix::sys::wait::{WaitStatus, waitpid};

use super::initramfs::{BASE_SPEC, BaseSpec, GUEST_PEAPOD, RUN_SPEC, RunSpec};
use super::link::{Frame, HEARTBEAT_INTERVAL};
use crate::host::extension_from_cpuinfo;

/// The serial port that carries the link.
pub const LINK_TTY: &str = "/dev/ttyS1";
/// Status when init itself fails before or around the command.
const STATUS_INIT_FAILED: u8 = 125;
/// How long output may still arrive after the command exits (a daemon it left may hold the
/// pipes open forever).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("mount {target}: {source}")]
    Mount { target: String, source: nix::Error },
    #[error("cannot open the link {LINK_TTY}: {0}")]
    Link(std::io::Error),
    #[error("cannot read {path}: {reason}")]
    Spec { path: String, reason: String },
    #[error(
        "the L1 CPU shows neither vmx nor svm: no nested virtualization (QEMU needs -cpu ...,+svm)"
    )]
    NoVirtExtension,
    #[error("cannot load kernel module {module}: {reason}")]
    Module { module: String, reason: String },
    #[error("/dev/kvm did not appear after loading the KVM modules")]
    NoKvmDevice,
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("waiting for the command: {0}")]
    Wait(nix::Error),
}

type Link = Arc<Mutex<File>>;

/// PID 1's body. Never returns.
pub fn init_main() -> ! {
    if let Err(err) = mount_basics() {
        eprintln!("peapod init: {err}");
    }
    let link = match open_link() {
        Ok(link) => Arc::new(Mutex::new(link)),
        Err(err) => {
            eprintln!("peapod init: {err}");
            power_off(None);
        }
    };
    start_heartbeat(link.clone());
    let status = match prepare_and_run(&link) {
        Ok(status) => status,
        Err(err) => {
            eprintln!("peapod init: {err}");
            send(&link, &Frame::Error(err.to_string()));
            match err {
                GuestError::Spawn { ref source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    127
                }
                GuestError::Spawn { .. } => 126,
                _ => STATUS_INIT_FAILED,
            }
        }
    };
    send(&link, &Frame::Exit(status));
    power_off(Some(&link));
}

fn prepare_and_run(link: &Link) -> Result<u8, GuestError> {
    // Applet links for sh, ls, grep, ...; a failure only costs the applets.
    let _ = Command::new("/bin/busybox")
        .args(["--install", "-s"])
        .status();
    load_kvm_modules()?;
    // Networking is optional: a module that does not load is a warning on the command's
    // stderr, and pod networking fails later where it needs it.
    for warning in load_net_modules() {
        send(
            link,
            &Frame::Stderr(format!("peapod init: warning: {warning}\n").into_bytes()),
        );
    }
    // Loopback up, as any host has it (published ports on 127.0.0.1, local servers).
    if let Err(e) = crate::network::netns::loopback_up() {
        send(
            link,
            &Frame::Stderr(format!("peapod init: warning: cannot bring lo up: {e}\n").into_bytes()),
        );
    }
    let _ = nix::unistd::sethostname("peapod-machine");
    send(
        link,
        &Frame::Ready {
            uptime_ms: uptime_ms(),
        },
    );
    let spec: RunSpec = read_spec(RUN_SPEC)?;
    run_command(&spec, link)
}

fn mount_basics() -> Result<(), GuestError> {
    let mounts: [(&str, &str, &str, Option<&str>); 7] = [
        ("proc", "/proc", "proc", None),
        ("sysfs", "/sys", "sysfs", None),
        ("devtmpfs", "/dev", "devtmpfs", None),
        ("devpts", "/dev/pts", "devpts", Some("ptmxmode=0666")),
        ("tmpfs", "/dev/shm", "tmpfs", None),
        ("tmpfs", "/run", "tmpfs", None),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", None),
    ];
    for (source, target, fstype, data) in mounts {
        let _ = std::fs::create_dir_all(target);
        mount(Some(source), target, Some(fstype), MsFlags::empty(), data).map_err(|source| {
            GuestError::Mount {
                target: target.to_string(),
                source,
            }
        })?;
    }
    Ok(())
}

fn open_link() -> Result<File, GuestError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(LINK_TTY)
        .map_err(GuestError::Link)?;
    let mut attrs = termios::tcgetattr(&file).map_err(|e| GuestError::Link(e.into()))?;
    termios::cfmakeraw(&mut attrs);
    attrs.control_flags |= ControlFlags::CLOCAL;
    attrs.control_flags &= !ControlFlags::CRTSCTS;
    // 115200 baud, set in the CBAUD bits of c_cflag (what cfsetspeed does): the libc crate
    // binds cfsetspeed to a versioned glibc symbol that static links cannot resolve, and this
    // code is part of the static guest build too.
    let speed = (attrs.control_flags.bits() & !libc::CBAUD) | libc::B115200;
    attrs.control_flags = ControlFlags::from_bits_retain(speed);
    termios::tcsetattr(&file, SetArg::TCSANOW, &attrs).map_err(|e| GuestError::Link(e.into()))?;
    Ok(file)
}

fn read_spec<T: serde::de::DeserializeOwned>(path: &str) -> Result<T, GuestError> {
    let text = std::fs::read(path).map_err(|e| GuestError::Spec {
        path: path.to_string(),
        reason: e.to_string(),
    })?;
    serde_json::from_slice(&text).map_err(|e| GuestError::Spec {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

/// Loads a module file; one that is loaded already is fine.
fn load_module(module: &str) -> Result<(), GuestError> {
    let module_err = |reason: String| GuestError::Module {
        module: module.to_string(),
        reason,
    };
    let file = File::open(module).map_err(|e| module_err(e.to_string()))?;
    match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) | Err(nix::Error::EEXIST) => Ok(()),
        Err(err) => Err(module_err(err.to_string())),
    }
}

/// Loads the networking modules (veth, bridge, tun, tc, nf_tables, ...); returns what
/// failed, as warnings.
fn load_net_modules() -> Vec<String> {
    let base: BaseSpec = match read_spec(BASE_SPEC) {
        Ok(base) => base,
        Err(err) => return vec![err.to_string()],
    };
    base.net_modules
        .iter()
        .filter_map(|module| load_module(module).err())
        .map(|err| format!("{err}; pod networking may not work in this L1"))
        .collect()
}

fn load_kvm_modules() -> Result<(), GuestError> {
    let base: BaseSpec = read_spec(BASE_SPEC)?;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let extension = extension_from_cpuinfo(&cpuinfo).ok_or(GuestError::NoVirtExtension)?;
    let key = match extension {
        crate::host::VirtExtension::Svm => "svm",
        crate::host::VirtExtension::Vmx => "vmx",
    };
    for module in base.kvm_modules.get(key).into_iter().flatten() {
        load_module(module)?;
    }
    // devtmpfs creates the node as the misc device registers; give it a moment.
    for _ in 0..100 {
        if Path::new("/dev/kvm").exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(GuestError::NoKvmDevice)
}

fn run_command(spec: &RunSpec, link: &Link) -> Result<u8, GuestError> {
    let program = spec.argv.first().cloned().unwrap_or_default();
    let mut command = Command::new(&program);
    command
        .args(spec.argv.iter().skip(1))
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root")
        .env("TERM", "dumb")
        .env("PEAPOD_IN_MACHINE", "1")
        .env("PEAPOD_BIN", GUEST_PEAPOD)
        .current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for pair in &spec.env {
        if let Some((key, value)) = pair.split_once('=') {
            command.env(key, value);
        }
    }
    let mut child = command.spawn().map_err(|source| GuestError::Spawn {
        program: program.clone(),
        source,
    })?;
    let (done_tx, done_rx) = mpsc::channel();
    let stdout = child
        .stdout
        .take()
        .map(|out| forward(out, link.clone(), Frame::Stdout, done_tx.clone()));
    let stderr = child
        .stderr
        .take()
        .map(|err| forward(err, link.clone(), Frame::Stderr, done_tx.clone()));
    drop(done_tx);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // As PID 1 we reap every orphan; the command's own status ends the loop.
    let status = loop {
        match waitpid(None, None).map_err(GuestError::Wait)? {
            WaitStatus::Exited(p, code) if p == pid => break code as u8,
            WaitStatus::Signaled(p, signal, _) if p == pid => break 128 + signal as u8,
            _ => {}
        }
    };
    let readers = [stdout, stderr].into_iter().flatten().count();
    for _ in 0..readers {
        if done_rx.recv_timeout(OUTPUT_GRACE).is_err() {
            break;
        }
    }
    Ok(status)
}

/// Copies a pipe into link frames on its own thread; says on `done` when the pipe closed.
fn forward(
    mut pipe: impl Read + Send + 'static,
    link: Link,
    make: fn(Vec<u8>) -> Frame,
    done: mpsc::Sender<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => send(&link, &make(buf[..n].to_vec())),
            }
        }
        let _ = done.send(());
    })
}

/// Sends [`Frame::Heartbeat`] now and every [`HEARTBEAT_INTERVAL`], on its own thread, until
/// the L1 powers off.
fn start_heartbeat(link: Link) {
    std::thread::spawn(move || {
        loop {
            send(&link, &Frame::Heartbeat);
            std::thread::sleep(HEARTBEAT_INTERVAL);
        }
    });
}

fn send(link: &Link, frame: &Frame) {
    let mut file = link.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Err(err) = frame.write_to(&mut *file) {
        eprintln!("peapod init: writing to the link: {err}");
    }
}

fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok())
        .map(|secs| (secs * 1000.0) as u64)
        .unwrap_or(0)
}

fn power_off(link: Option<&Link>) -> ! {
    if let Some(link) = link {
        let file = link.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = termios::tcdrain(&*file);
    }
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_POWER_OFF);
    // Only reached if the power-off call failed; PID 1 must not exit.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
