//! `peapod bench net`: TCP between the host and a pod VM, against the same TCP between two
//! network namespaces joined by a veth pair (what a plain container on a bridge gets, with
//! no VM in the path), measured in one run.
//!
//! Both peers run the same static `peapod-netbench` ([`super::netperf`]) as server and
//! client:
//! - **VM pod**: `peapod run -d --network peapod -v DIR:/bench:ro peapod/busybox:latest
//!   /bench/peapod-netbench server` (DIR holds only the static binary), its address read from
//!   `peapod inspect` (`[0].state.network.addresses[0]`), the client on the host, through
//!   the CNI bridge `peapod0`, the tap and the pod's virtio-net device. The pod lives in a
//!   private `PEAPOD_ROOT` and `PEAPOD_RUN_DIR` ([`BenchPods`]) and is force-removed at the
//!   end, on error too.
//! - **veth peer**: two fresh network namespaces, the server in one, the client in the other,
//!   a veth pair between them (10.213.0.1/30 and .2/30). Nothing is created in the host's
//!   namespace: the pair is made inside the client's namespace and one end moved to the
//!   server's, so everything vanishes with the namespaces when the server is killed and the
//!   bench's handles close. It takes `ip` (iproute2, or busybox's, as in the test bed, which
//!   has no `ip netns`: the bench enters the namespaces itself) and root.
//!
//! Per run, each peer gets a TCP stream of `--seconds` (Gbit/s) and `--count`
//! request/responses of 1 byte (p50 and p99 in µs), the peers interleaved (A B A B) so both
//! see the same machine; the table shows median (min–max) over the runs and the ratio of the
//! medians. A peer that cannot run here (no KVM, no pod network, not root) keeps its column,
//! which says why. Like `bench pod`, it runs itself inside the test bed where the host has no
//! hardware KVM, carrying the static netbench in; the veth peer then runs in the L1 too, so
//! both columns come from the same machine.

use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::isolation::OutputFormat;
use super::netperf::{self, Report as ClientReport};
use super::pod::BenchPods;
use super::report::{Cell, Metric, Outcome, Report, Samples, Subject};

/// Names the static `peapod-netbench` to use.
pub const NETBENCH_ENV: &str = "PEAPOD_NETBENCH";
/// The file name of the tool, also inside the pod's `/bench`.
pub const NETBENCH_BINARY_NAME: &str = "peapod-netbench";
const IMAGE: &str = "peapod/busybox:latest";
const PORT: u16 = netperf::DEFAULT_PORT;
/// Bytes of each request and each response.
const RR_SIZE: usize = 1;
/// How long the pod may take to be Running with an address.
const POD_UP_LIMIT: Duration = Duration::from_secs(120);
/// How long a Running pod may be without an address: it gets one as it starts.
const RUNNING_NO_ADDRESS: Duration = Duration::from_secs(15);
/// The veth pair: its /30 lies in the bench's own namespaces, so it cannot clash with the
/// host's addresses.
const VETH_SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const VETH_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);
const VETH_PREFIX: u8 = 30;
/// The client's end is created by this name; the kernel names its peer `veth0` in the fresh
/// namespace (busybox's `ip` ignores `peer name`), and it keeps that name when moved.
const VETH_CLIENT_DEV: &str = "nb0";
const VETH_SERVER_DEV: &str = "veth0";
/// Where the static netbench lies inside the test bed.
const MACHINE_NETBENCH: &str = "/opt/peapod-bench/peapod-netbench";
/// The subjects of the report: the pod, and the ratio's baseline.
const VM_POD: &str = "VM pod";
const VETH_PEER: &str = "veth peer";

pub struct NetBench {
    pub runs: usize,
    /// Seconds of each TCP stream.
    pub seconds: u32,
    /// Counted request/responses per run.
    pub count: usize,
    /// The pod's guest kernel and agent initramfs (default: where peapod finds them).
    pub kernel: Option<PathBuf>,
    pub agent_initrd: Option<PathBuf>,
    /// How the report is printed.
    pub output: OutputFormat,
    /// Where to write the report's chart (SVG), if anywhere.
    pub plot: Option<PathBuf>,
}

/// One run of one peer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Sample {
    pub(super) gbit_per_s: f64,
    pub(super) p50_us: f64,
    pub(super) p99_us: f64,
}

/// Set when SIGINT, SIGTERM or SIGHUP reaches the bench: it stops at the next step and
/// removes its pod and namespaces instead of dying with them in place.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn not_interrupted() -> anyhow::Result<()> {
    anyhow::ensure!(
        !INTERRUPTED.load(Ordering::Relaxed),
        "interrupted; removing the bench's pod and namespaces"
    );
    Ok(())
}

/// Writes the chart (`--plot`) and prints the report as `--output` asks.
fn emit(bench: &NetBench, report: &Report) -> anyhow::Result<()> {
    super::emit_report("net", report, bench.output, bench.plot.as_deref())
}

pub fn run(bench: &NetBench) -> anyhow::Result<()> {
    let netbench = find_netbench()?;
    let no_kvm = match super::kvm_here("net") {
        Ok(true) => None,
        Ok(false) => return run_in_machine(bench, &netbench),
        Err(why) => Some(format!("{why:#}")),
    };
    // Before any thread starts, so that all of them leave these signals to the watcher. A
    // second signal ends the bench at once.
    crate::cli::tty::forward_signals(|_| !INTERRUPTED.swap(true, Ordering::Relaxed))
        .context("watching for SIGINT")?;
    let peapod = std::env::current_exe()?;

    // Dropped on every way out of this function: the pod is removed, the server killed.
    let vm = match no_kvm {
        Some(why) => Err(why),
        None => VmPeer::start(&peapod, &netbench, bench).map_err(|e| {
            eprintln!("bench net: the VM pod does not run here: {e:#}");
            format!("{e:#}")
        }),
    };
    not_interrupted()?;
    let veth = VethPeer::start(&netbench).map_err(|e| {
        eprintln!("bench net: the veth peer does not run here: {e:#}");
        format!("{e:#}")
    });
    // A peer that did not start fails its first run with why; one that fails a run is not
    // run again and its column says so.
    let mut vm_runs = |run| {
        let at = vm.as_ref().map(|p| (None, p.addr));
        peer_run(run, VM_POD, at, &netbench, bench)
    };
    let mut veth_runs = |run| {
        let at = veth.as_ref().map(|p| (Some(&p.client_ns), p.addr()));
        peer_run(run, VETH_PEER, at, &netbench, bench)
    };
    let mut results =
        super::report::interleave_with(bench.runs, &mut [&mut vm_runs, &mut veth_runs]);
    not_interrupted()?;
    let veth = results.pop().unwrap_or_else(|| Err("no result".into()));
    let vm = results.pop().unwrap_or_else(|| Err("no result".into()));
    let report = report(bench, &vm, &veth);
    emit(bench, &report)?;
    anyhow::ensure!(
        vm.is_ok() || veth.is_ok(),
        "neither the VM pod nor the veth peer ran (the table says why)"
    );
    Ok(())
}

/// One run of one peer, or why it has none: the peer did not start (`at`'s error), the
/// bench was interrupted, or this run failed. `at` is the client's network namespace and the
/// server's address. Says how the run went on stderr.
fn peer_run(
    run: usize,
    what: &str,
    at: Result<(Option<&OwnedFd>, SocketAddr), &String>,
    netbench: &Path,
    bench: &NetBench,
) -> Result<Sample, String> {
    let (ns, addr) = at.map_err(String::clone)?;
    not_interrupted().map_err(|e| e.to_string())?;
    match measure(netbench, ns, addr, bench.seconds, bench.count) {
        Ok(s) => {
            eprintln!(
                "run {}: {what} {:.3} Gbit/s, p50 {:.1} µs, p99 {:.1} µs",
                run + 1,
                s.gbit_per_s,
                s.p50_us,
                s.p99_us
            );
            Ok(s)
        }
        Err(e) => {
            eprintln!("bench net: the {what} failed in run {}: {e:#}", run + 1);
            Err(format!("failed in run {}: {e:#}", run + 1))
        }
    }
}

/// The report: a metric per measure, the VM pod and the veth peer (the ratio's baseline) in
/// each, from the peers' samples over the runs or why they have none.
fn report(
    bench: &NetBench,
    vm: &Result<Vec<Sample>, String>,
    veth: &Result<Vec<Sample>, String>,
) -> Report {
    let mut report = Report::new(
        format!(
            "peapod bench net: {} runs (VM pod and veth peer interleaved), TCP stream of {} s, \
             {} request/responses of {RR_SIZE} byte; median (min–max)",
            bench.runs, bench.seconds, bench.count
        ),
        vec![
            Subject::new(VM_POD),
            Subject::with_detail(VETH_PEER, "no VM"),
        ],
    );
    report.notes.push(format!(
        "VM pod: host to `{IMAGE}` pod over the peapod network (bridge, tap, virtio-net); veth \
         peer: two network namespaces joined by a veth pair, no VM"
    ));
    type Measure = (&'static str, &'static str, bool, usize, fn(&Sample) -> f64);
    let measures: [Measure; 3] = [
        ("TCP stream throughput", "Gbit/s", false, 3, |s| {
            s.gbit_per_s
        }),
        ("request/response latency p50", "µs", true, 1, |s| s.p50_us),
        ("request/response latency p99", "µs", true, 1, |s| s.p99_us),
    ];
    for (name, unit, lower_is_better, decimals, value) in measures {
        let outcome = |peer: &Result<Vec<Sample>, String>| match peer {
            Ok(samples) => match Samples::from_values(samples.iter().map(value)) {
                Ok(samples) => Outcome::Measured(samples),
                Err(e) => Outcome::not_run(e.to_string()),
            },
            Err(why) => Outcome::not_run(why.clone()),
        };
        report.metrics.push(Metric {
            name: name.into(),
            unit: unit.into(),
            lower_is_better,
            decimals,
            baseline: Some(VETH_PEER.into()),
            cells: vec![
                Cell {
                    subject: VM_POD.into(),
                    outcome: outcome(vm),
                },
                Cell {
                    subject: VETH_PEER.into(),
                    outcome: outcome(veth),
                },
            ],
        });
    }
    report
}

/// One run against the server at `addr`: a stream, then the request/responses, each by a
/// `peapod-netbench client` process (in the network namespace `ns`, if given).
pub(super) fn measure(
    netbench: &Path,
    ns: Option<&OwnedFd>,
    addr: SocketAddr,
    seconds: u32,
    count: usize,
) -> anyhow::Result<Sample> {
    let addr = addr.to_string();
    let stream = client(
        netbench,
        ns,
        &[
            "--addr",
            &addr,
            "--mode",
            "stream",
            "--seconds",
            &seconds.to_string(),
        ],
    )?;
    let rr = client(
        netbench,
        ns,
        &[
            "--addr",
            &addr,
            "--mode",
            "rr",
            "--count",
            &count.to_string(),
            "--size",
            &RR_SIZE.to_string(),
        ],
    )?;
    match (stream, rr) {
        (
            ClientReport::Stream { gbit_per_s, .. },
            ClientReport::RequestResponse { p50_us, p99_us, .. },
        ) => Ok(Sample {
            gbit_per_s,
            p50_us,
            p99_us,
        }),
        (stream, rr) => anyhow::bail!("the client reported the wrong modes: {stream:?}, {rr:?}"),
    }
}

/// Runs `peapod-netbench client ARGS` to its end and reads its report.
fn client(netbench: &Path, ns: Option<&OwnedFd>, args: &[&str]) -> anyhow::Result<ClientReport> {
    let mut command = Command::new(netbench);
    command.arg("client").args(args).stdin(Stdio::null());
    if let Some(ns) = ns {
        in_netns_on_exec(&mut command, ns, false);
    }
    let out = command
        .output()
        .with_context(|| format!("running {}", netbench.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "peapod-netbench client {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    parse_report(&String::from_utf8_lossy(&out.stdout))
}

/// The report on the client's last stdout line.
fn parse_report(stdout: &str) -> anyhow::Result<ClientReport> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("the client printed no report")?;
    serde_json::from_str(line).with_context(|| format!("the client's report {line:?}"))
}

/// The pod of the VM column: the netbench server in a busybox pod on the peapod network.
struct VmPeer {
    pods: BenchPods,
    name: String,
    addr: SocketAddr,
    /// The directory the pod gets as `/bench` (the static netbench alone).
    _bench_dir: tempfile::TempDir,
}

impl VmPeer {
    fn start(peapod: &Path, netbench: &Path, bench: &NetBench) -> anyhow::Result<Self> {
        let kernel = match &bench.kernel {
            Some(path) => path.clone(),
            None => crate::guest_kernel::default_kernel()?,
        };
        let initrd = match &bench.agent_initrd {
            Some(path) => path.clone(),
            None => crate::runtime::oneshot::default_agent_initramfs()?,
        };
        let pods = BenchPods::new(peapod, &kernel, &initrd)?;
        let bench_dir = tempfile::Builder::new()
            .prefix("peapod-netbench-")
            .tempdir()
            .context("a directory for the pod's /bench")?;
        std::fs::copy(netbench, bench_dir.path().join(NETBENCH_BINARY_NAME))
            .with_context(|| format!("copying {}", netbench.display()))?;
        let name = format!("bench-net-{:08x}", random_u32());
        let volume = format!("{}:/bench:ro", bench_dir.path().display());
        let port = PORT.to_string();
        let out = pods
            .run(&[
                "-d",
                "--name",
                &name,
                "--network",
                "peapod",
                "-v",
                &volume,
                IMAGE,
                &format!("/bench/{NETBENCH_BINARY_NAME}"),
                "server",
                "--port",
                &port,
            ])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("peapod run -d --name {name}"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = stderr.trim().trim_start_matches("peapod: error: ");
            anyhow::bail!("peapod run of the pod failed ({}): {why}", out.status);
        }
        // From here on, dropping `peer` removes the pod.
        let mut peer = VmPeer {
            pods,
            name,
            addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)),
            _bench_dir: bench_dir,
        };
        peer.addr.set_ip(peer.wait_for_address()?.into());
        Ok(peer)
    }

    /// Polls `peapod inspect` until the pod is Running with an address.
    fn wait_for_address(&self) -> anyhow::Result<Ipv4Addr> {
        let started = Instant::now();
        let mut running_since = None;
        loop {
            not_interrupted()?;
            let inspect = self.pods.output(&["inspect", &self.name])?;
            let waited = match pod_address(&inspect)? {
                PodAddress::Assigned(ip) => return Ok(ip),
                PodAddress::Starting => started.elapsed() >= POD_UP_LIMIT,
                PodAddress::RunningWithout => {
                    running_since.get_or_insert_with(Instant::now).elapsed() >= RUNNING_NO_ADDRESS
                }
            };
            anyhow::ensure!(
                !waited,
                "pod {} has no address in `peapod inspect` (state.network.addresses) after {:.0?}: \
                 is the pod network set up (CNI plugins, bridge peapod0)?\n{inspect}",
                self.name,
                started.elapsed()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for VmPeer {
    fn drop(&mut self) {
        // BenchPods removes whatever is left after this, too
        if let Err(e) = self.pods.output(&["rm", "-f", &self.name]) {
            eprintln!("bench net: removing pod {}: {e:#}", self.name);
        }
    }
}

/// What `peapod inspect` says of a pod's address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum PodAddress {
    Assigned(Ipv4Addr),
    /// Created: its network may come with its start.
    Starting,
    /// Running without one (yet, or at all where the pod network is missing).
    RunningWithout,
}

/// From `peapod inspect NAME`'s JSON (`[0].state.network.addresses[0]`, like
/// `10.88.0.5/16`): the pod's IPv4 address, or why there is none yet; an error once the pod
/// has stopped without one.
pub(super) fn pod_address(inspect: &str) -> anyhow::Result<PodAddress> {
    let pods: serde_json::Value =
        serde_json::from_str(inspect).context("peapod inspect printed no JSON")?;
    let state = &pods[0]["state"];
    if let Some(cidr) = state["network"]["addresses"][0].as_str() {
        let ip = cidr.split('/').next().unwrap_or_default();
        return ip
            .parse()
            .map(PodAddress::Assigned)
            .with_context(|| format!("the pod's address {cidr:?} is not IPv4/PREFIX"));
    }
    match &state["status"] {
        serde_json::Value::String(s) if s == "created" => Ok(PodAddress::Starting),
        serde_json::Value::String(s) if s == "running" => Ok(PodAddress::RunningWithout),
        serde_json::Value::Null => anyhow::bail!("peapod inspect shows no pod state"),
        status => anyhow::bail!(
            "the pod stopped with no address (status {status}): {}",
            state["error"].as_str().unwrap_or("no error recorded")
        ),
    }
}

/// The veth column: the netbench server in a network namespace of its own, a second one
/// for the clients, a veth pair between them.
struct VethPeer {
    /// Dies with the bench's main thread too (PDEATHSIG).
    server: Child,
    client_ns: OwnedFd,
    server_ns: OwnedFd,
}

impl VethPeer {
    fn start(netbench: &Path) -> anyhow::Result<Self> {
        let new_ns = || {
            new_netns().context(
                "creating a network namespace (unshare(CLONE_NEWNET) needs CAP_SYS_ADMIN: run \
                 as root)",
            )
        };
        let (server_ns, client_ns) = (new_ns()?, new_ns()?);
        let mut server = Command::new(netbench);
        server
            .args(["server", "--port", &PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        in_netns_on_exec(&mut server, &server_ns, true);
        let server = server
            .spawn()
            .with_context(|| format!("starting {} server", netbench.display()))?;
        // From here on, dropping `peer` kills the server; the links go with the namespaces.
        let peer = VethPeer {
            server,
            client_ns,
            server_ns,
        };
        let server_pid = peer.server.id().to_string();
        let client_cidr = format!("{VETH_CLIENT_IP}/{VETH_PREFIX}");
        let server_cidr = format!("{VETH_SERVER_IP}/{VETH_PREFIX}");
        let (client, server) = (&peer.client_ns, &peer.server_ns);
        ip_in(client, &["link", "add", VETH_CLIENT_DEV, "type", "veth"])?;
        ip_in(
            client,
            &["link", "set", VETH_SERVER_DEV, "netns", &server_pid],
        )?;
        ip_in(
            client,
            &["addr", "add", &client_cidr, "dev", VETH_CLIENT_DEV],
        )?;
        ip_in(client, &["link", "set", VETH_CLIENT_DEV, "up"])?;
        ip_in(
            server,
            &["addr", "add", &server_cidr, "dev", VETH_SERVER_DEV],
        )?;
        ip_in(server, &["link", "set", VETH_SERVER_DEV, "up"])?;
        Ok(peer)
    }

    /// The server's address, from the client's namespace.
    fn addr(&self) -> SocketAddr {
        SocketAddr::from((VETH_SERVER_IP, PORT))
    }
}

impl Drop for VethPeer {
    fn drop(&mut self) {
        // SIGKILL: the server inherits the bench's blocked SIGINT/SIGTERM
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// A new network namespace with only a loopback device (down), held by the returned fd: it
/// lives while the fd or a process in it does. Made on a thread of its own, which ends
/// right after, so that no thread of this process changes namespace.
fn new_netns() -> std::io::Result<OwnedFd> {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(File::open("/proc/thread-self/ns/net")?.into())
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
}

/// Makes `command` enter the network namespace `ns` before it runs (the caller keeps `ns`
/// open until it has spawned), with no signals blocked (the bench blocks the ones it
/// forwards); with `die_with_parent`, it gets SIGKILL when the spawning thread ends.
fn in_netns_on_exec(command: &mut Command, ns: &OwnedFd, die_with_parent: bool) {
    let ns = ns.as_raw_fd();
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe calls
    // (prctl, sigprocmask, setns) on plain integers and values it owns; it allocates
    // nothing (an io::Error from errno holds no heap). `ns` is open in the child because the
    // caller holds its OwnedFd across the spawn.
    unsafe {
        command.pre_exec(move || {
            if die_with_parent {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            }
            crate::runtime::fork::unblock_all_signals()?;
            if libc::setns(ns, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `ip ARGS` inside the network namespace `ns`; it must succeed.
fn ip_in(ns: &OwnedFd, args: &[&str]) -> anyhow::Result<()> {
    let mut command = Command::new("ip");
    command.args(args).stdin(Stdio::null());
    in_netns_on_exec(&mut command, ns, false);
    let out = command
        .output()
        .context("running ip (install iproute2, or busybox with its ip applet)")?;
    anyhow::ensure!(
        out.status.success(),
        "ip {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The static `peapod-netbench`: `$PEAPOD_NETBENCH`, else the one scripts/setup puts into
/// peapod's cache (`$CACHE/netbench/peapod-netbench`). It must be static: the pod's busybox
/// image has no glibc to load.
pub fn find_netbench() -> anyhow::Result<PathBuf> {
    super::find_static_program(NETBENCH_ENV, &default_netbench_path(), NETBENCH_BINARY_NAME)
}

/// Where scripts/setup installs the static netbench.
pub fn default_netbench_path() -> PathBuf {
    crate::dirs::cache_dir()
        .join("netbench")
        .join(NETBENCH_BINARY_NAME)
}

/// Whether the 64-bit little-endian ELF file starting with `head` asks for a program
/// interpreter (a dynamic loader: `PT_INTERP`); `None` when it is not one or its program
/// headers lie beyond `head`.
pub(super) fn elf_interpreter(head: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if head.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(head.get(at..at + 2)?.try_into().ok()?));
    let phoff = usize::try_from(u64::from_le_bytes(head.get(0x20..0x28)?.try_into().ok()?)).ok()?;
    let (phentsize, phnum) = (usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
    for i in 0..phnum {
        let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let p_type = u32::from_le_bytes(head.get(at..at.checked_add(4)?)?.try_into().ok()?);
        if p_type == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

/// A random number for the pod's name (std's hasher keys are random per process).
fn random_u32() -> u32 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish() as u32
}

/// Re-runs this benchmark inside `peapod machine run`, with the static netbench (and the
/// kernel and agent initramfs, where named on the command line) copied in. For `--output
/// json` or `--plot` it asks for JSON inside and renders the report here, so that the chart
/// lands on the host.
fn run_in_machine(bench: &NetBench, netbench: &Path) -> anyhow::Result<()> {
    let mut copies: Vec<(&Path, &str)> = vec![(netbench, MACHINE_NETBENCH)];
    let mut env = vec![format!("{NETBENCH_ENV}={MACHINE_NETBENCH}")];
    let mut args: Vec<String> = [
        "bench",
        "net",
        "--runs",
        &bench.runs.to_string(),
        "--seconds",
        &bench.seconds.to_string(),
        "--count",
        &bench.count.to_string(),
    ]
    .map(String::from)
    .into();
    super::carry_guest_artifacts(
        bench.kernel.as_deref(),
        bench.agent_initrd.as_deref(),
        &mut copies,
        &mut env,
        &mut args,
    );
    super::report_from_machine(
        "net",
        &copies,
        &env,
        args,
        bench.output,
        bench.plot.as_deref(),
    )
}

/// The report [`Report::json`] printed in `stdout` (from its first line `{` to the end), if
/// any.
pub(super) fn report_in(stdout: &str) -> Option<Result<Report, super::report::ReportError>> {
    let start = stdout
        .match_indices('{')
        .map(|(at, _)| at)
        .find(|&at| at == 0 || stdout[..at].ends_with('\n'))?;
    Some(Report::from_json(stdout[start..].trim_end()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(gbit_per_s: f64, p50_us: f64, p99_us: f64) -> Sample {
        Sample {
            gbit_per_s,
            p50_us,
            p99_us,
        }
    }

    fn bench() -> NetBench {
        NetBench {
            runs: 3,
            seconds: 3,
            count: 2000,
            kernel: None,
            agent_initrd: None,
            output: OutputFormat::Markdown,
            plot: None,
        }
    }

    fn table(vm: &Result<Vec<Sample>, String>, veth: &Result<Vec<Sample>, String>) -> Vec<String> {
        report(&bench(), vm, veth).markdown_table().unwrap()
    }

    #[test]
    fn the_table_shows_median_range_and_ratio() {
        let vm = Ok(vec![
            sample(2.0, 60.0, 120.0),
            sample(3.0, 50.0, 100.0),
            sample(2.5, 55.0, 300.0),
        ]);
        let veth = Ok(vec![
            sample(20.0, 10.0, 20.0),
            sample(25.0, 11.0, 30.0),
            sample(30.0, 12.0, 25.0),
        ]);
        assert_eq!(
            table(&vm, &veth),
            [
                "| measure | VM pod | veth peer (no VM) | VM pod / veth peer |",
                "|---|---|---|---|",
                "| TCP stream throughput (Gbit/s) | 2.500 (2.000–3.000) | 25.000 (20.000–30.000) \
                 | 0.10x |",
                "| request/response latency p50 (µs) | 55.0 (50.0–60.0) | 11.0 (10.0–12.0) \
                 | 5.00x |",
                "| request/response latency p99 (µs) | 120.0 (100.0–300.0) | 25.0 (20.0–30.0) \
                 | 4.80x |",
            ]
        );
        // above the table: the two lines it always had, then the date and machine
        let md = report(&bench(), &vm, &veth).markdown().unwrap();
        let lines: Vec<&str> = md.lines().collect();
        assert!(lines[0].starts_with("peapod bench net: 3 runs (VM pod and veth peer"));
        assert!(lines[1].starts_with("VM pod: host to `peapod/busybox:latest` pod"));
        assert_eq!(
            lines[3],
            "| measure | VM pod | veth peer (no VM) | VM pod / veth peer |"
        );
    }

    #[test]
    fn a_peer_that_did_not_run_says_why_in_its_cells() {
        let veth = Ok(vec![sample(20.0, 10.0, 20.0)]);
        let vm = Err("no usable KVM inside the test bed: /dev/kvm | missing\nmore detail".into());
        let rows = table(&vm, &veth);
        assert_eq!(
            rows[2],
            "| TCP stream throughput (Gbit/s) | not run: no usable KVM inside the test bed: \
             /dev/kvm / missing | 20.000 (20.000–20.000) | - |"
        );
        assert!(
            rows[3..]
                .iter()
                .all(|r| r.contains("not run: no usable KVM"))
        );
        let both = table(&vm, &Ok(Vec::new()));
        assert!(both[4].contains("not run: no runs") && both[4].ends_with("| - |"));
    }

    #[test]
    fn a_failed_run_ends_its_peer() {
        let no_pod = "no KVM".to_string();
        let bench = bench();
        let netbench = Path::new("/nonexistent/peapod-netbench");
        assert_eq!(
            peer_run(0, VM_POD, Err(&no_pod), netbench, &bench),
            Err("no KVM".into())
        );
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
        let failed = peer_run(1, VETH_PEER, Ok((None, addr)), netbench, &bench).unwrap_err();
        assert!(
            failed.starts_with("failed in run 2: running /nonexistent"),
            "{failed}"
        );
    }

    #[test]
    fn a_zero_peer_median_gives_no_ratio() {
        let zero = Ok(vec![sample(0.0, 0.0, 0.0)]);
        let rows = table(&zero.clone(), &zero);
        assert!(rows[2..].iter().all(|r| r.ends_with("| - |")), "{rows:?}");
    }

    #[test]
    fn the_report_comes_back_from_the_test_bed() {
        let report = report(&bench(), &Ok(vec![sample(1.0, 2.0, 3.0)]), &Err("x".into()));
        let stdout = format!("boot noise {{\n{}\n", report.json().unwrap());
        assert_eq!(report_in(&stdout).unwrap().unwrap(), report);
        assert!(report_in("no report here\n").is_none());
        assert!(report_in("{\"broken\": 1}\n").unwrap().is_err());
        // the chart names the peers and has a bar for each measure of the one that ran
        let svg = report.svg().unwrap();
        assert!(svg.contains("\nVM pod\n") && svg.contains("\nveth peer\n"));
        assert_eq!(svg.matches("not run: x").count(), 3);
    }

    #[test]
    fn the_pod_address_comes_from_inspect() {
        let inspect = |state: serde_json::Value| {
            serde_json::json!([{"id": "abc", "name": "bench-net-1", "state": state}]).to_string()
        };
        let running = inspect(serde_json::json!({
            "status": "running",
            "network": {"addresses": ["10.88.0.5/16"]},
        }));
        assert_eq!(
            pod_address(&running).unwrap(),
            PodAddress::Assigned(Ipv4Addr::new(10, 88, 0, 5))
        );
        let starting = inspect(serde_json::json!({"status": "created"}));
        assert_eq!(pod_address(&starting).unwrap(), PodAddress::Starting);
        let no_address_yet =
            inspect(serde_json::json!({"status": "running", "network": {"addresses": []}}));
        assert_eq!(
            pod_address(&no_address_yet).unwrap(),
            PodAddress::RunningWithout
        );
        let no_network = inspect(serde_json::json!({"status": "running"}));
        assert_eq!(
            pod_address(&no_network).unwrap(),
            PodAddress::RunningWithout
        );
        let failed = inspect(serde_json::json!({
            "status": {"failed": {"reason": "CNI plugin bridge not found"}},
            "error": "CNI plugin bridge not found in /opt/cni/bin",
        }));
        let e = pod_address(&failed).unwrap_err().to_string();
        assert!(e.contains("/opt/cni/bin"), "{e}");
        let exited = inspect(serde_json::json!({"status": {"exited": {"code": 1}}}));
        assert!(pod_address(&exited).is_err());
        let v6 = inspect(serde_json::json!({"network": {"addresses": ["fd00::5/64"]}}));
        assert!(pod_address(&v6).is_err());
        assert!(pod_address("not json").is_err());
        assert!(pod_address("[]").is_err());
    }

    #[test]
    fn the_pod_status_strings_are_what_the_state_serializes() {
        // pod_address matches these; a change in PodStatus must show here
        use crate::pod::state::PodStatus;
        assert_eq!(
            serde_json::to_value(PodStatus::Running).unwrap(),
            serde_json::Value::from("running")
        );
        assert_eq!(
            serde_json::to_value(PodStatus::Created).unwrap(),
            serde_json::Value::from("created")
        );
    }

    #[test]
    fn the_client_report_is_its_last_line() {
        let out = "noise\n{\"mode\":\"rr\",\"count\":5,\"p50_us\":1.0,\"p99_us\":2.0,\
                   \"mean_us\":1.5}\n\n";
        assert!(matches!(
            parse_report(out).unwrap(),
            ClientReport::RequestResponse { count: 5, .. }
        ));
        assert!(parse_report("").is_err());
        assert!(parse_report("{\"mode\":\"udp\"}").is_err());
    }

    #[test]
    fn static_and_dynamic_programs_are_told_apart() {
        let head = |path: &str| {
            let mut head = Vec::new();
            File::open(path)
                .unwrap()
                .take(64 * 1024)
                .read_to_end(&mut head)
                .unwrap();
            head
        };
        // the test binary itself is static (.cargo/config.toml: crt-static)
        let me = std::env::current_exe().unwrap();
        assert_eq!(elf_interpreter(&head(me.to_str().unwrap())), Some(false));
        // the shell is a dynamic program on Debian (dash); not where sh is busybox (static)
        let sh = crate::machine::assets::find_in_path("sh").expect("a shell in PATH");
        let sh = std::fs::canonicalize(sh).unwrap();
        if sh.ends_with("busybox") {
            eprintln!("skipped the dynamic half: {} is busybox", sh.display());
        } else {
            assert_eq!(elf_interpreter(&head(sh.to_str().unwrap())), Some(true));
        }
        assert_eq!(elf_interpreter(b"#!/bin/sh\n"), None);
        let mut truncated = head(me.to_str().unwrap());
        truncated.truncate(0x30);
        assert_eq!(elf_interpreter(&truncated), None);
    }

    #[test]
    fn the_veth_peer_carries_a_real_stream() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: the veth peer needs root (network namespaces, veth links)");
            return;
        }
        if crate::machine::assets::find_in_path("ip").is_none() {
            eprintln!("skipped: no `ip` in PATH (apt-get install iproute2)");
            return;
        }
        // the host build of the tool (the same code), which `cargo test` builds beside its
        // test binaries (target/debug/deps/..)
        let exe = std::env::current_exe().unwrap();
        let Some(netbench) = exe
            .parent()
            .and_then(Path::parent)
            .map(|dir| dir.join(NETBENCH_BINARY_NAME))
            .filter(|p| p.is_file())
        else {
            eprintln!(
                "skipped: no {NETBENCH_BINARY_NAME} beside the test binaries: build it with \
                 `cargo build --bin {NETBENCH_BINARY_NAME}` (`cargo test` without --lib does)"
            );
            return;
        };
        let netbench = netbench.as_path();
        let peer = VethPeer::start(netbench).unwrap();
        let bench = NetBench {
            runs: 1,
            seconds: 1,
            count: 50,
            ..bench()
        };
        let s = measure(
            netbench,
            Some(&peer.client_ns),
            peer.addr(),
            bench.seconds,
            bench.count,
        )
        .unwrap();
        assert!(s.gbit_per_s > 0.0, "{s:?}");
        assert!(0.0 < s.p50_us && s.p50_us <= s.p99_us, "{s:?}");
        // nothing in the host's namespace: the pair lives in the bench's namespaces only
        for dev in [VETH_CLIENT_DEV, VETH_SERVER_DEV] {
            let shown = Command::new("ip")
                .args(["link", "show", dev])
                .output()
                .unwrap();
            assert!(!shown.status.success(), "{dev} is in the host's namespace");
        }
        let server_pid = peer.server.id() as i32;
        drop(peer);
        // the server is gone (killed and reaped), so its namespace and the links with it
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(server_pid), None);
        assert_eq!(gone, Err(nix::errno::Errno::ESRCH));
    }
}
