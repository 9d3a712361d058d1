//! `peapod bench models`: the two isolation models side by side on the same image, in one
//! run: what a pod costs as a microVM (`peapod run --runtime vm`) and as plain containers on
//! the host's kernel (`peapod run --runtime container`), with their peers, crun on the same
//! root and QEMU `-M microvm` on the same kernel and agent initramfs.
//!
//! The image is `peapod/busybox` plus the static programs the rows run inside
//! (`/bench/peapod-probe` for the syscall and file workloads, [`super::workload`], and
//! `/bench/peapod-netbench`), built as one OCI layer and imported into the bench's private
//! `PEAPOD_ROOT` ([`BenchPods`]) as [`IMAGE`]; crun runs on the same unpacked root. Each part
//! runs its subjects interleaved (vm, container, crun, vm, container, crun, ...) for `--runs`
//! rounds; every row shows median (min–max) and its ratio to crun where crun is in the row,
//! else to the VM model. Pods run with `--network none`, as crun's container does, except in
//! the network rows.
//!
//! - **start**: command issued → the container's first output byte (`run --rm IMAGE echo`),
//!   and `run --rm IMAGE true` to its exit; QEMU microvm: spawn → the agent's ready line on
//!   the console (it gets a vhost-vsock device so that the agent can listen).
//! - **memory**: one idle pod (`sleep`) per model: the PSS (`/proc/PID/smaps_rollup`) of all
//!   its host processes: the supervisor and everything under it (VMM, or host agent and its
//!   containers) and whatever is in the pod's cgroup (`peapod.slice/pod-<id>`). For the VM,
//!   the VMM's RSS less its guest RAM mapping (the one anonymous mapping of the guest's size),
//!   and that mapping's RSS, the guest RAM touched. crun: its container's processes.
//! - **syscalls**: ns per `getpid` and per `clock_gettime` inside the container.
//! - **file I/O**: sequential and random 4 KiB write and read in MB/s, on the container's
//!   root (`/tmp`) and on an emptyDir (`/scratch`) of a YAML pod (`pod apply --runtime`);
//!   crun: its root and a bind-mounted host directory.
//! - **network**: host → pod TCP stream and 1-byte request/response with peapod-netbench
//!   ([`super::net::measure`]), a pod per model on the peapod network.
//! - **density**: `--pods N` detached pods started at once: time until `ps` lists all of
//!   them running, and the PSS of all their host processes (shared pages counted once).
//! - **surface**: the distinct host syscalls of `run --rm` of the file I/O workload under
//!   `strace -f`, and how many syscalls each model's confinement lets through.
//! - **neighbour**: `exec POD true` of an idle pod with no other pod busy, then while another
//!   pod of the same model forks 200 processes, holds 128 MiB and spins two CPUs; and the
//!   host's own `/bin/true` meanwhile.
//!
//! A cell the machine cannot fill says why. Like the other VM benches it runs itself in the
//! test bed where the host has no hardware KVM.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::isolation::{OutputFormat, PROBE_BINARY_NAME};
use super::net::{NETBENCH_BINARY_NAME, PodAddress};
use super::pod::{BenchPods, POD_MARKER, crun_spec, exit_once, pod_once};
use super::report::{Cell, Metric, Outcome, Report, Samples, Subject, interleave};
use super::workload::{FileIo, SyscallCost};
use crate::vmm::boot::linux::DEFAULT_CMDLINE;

/// The bench's image, in its private store.
pub const IMAGE: &str = "peapod-bench/models:latest";
const BASE_IMAGE: &str = "peapod/busybox:latest";
/// The subjects.
pub const VM: &str = "vm";
pub const CONTAINER: &str = "container";
pub const CRUN: &str = "crun";
pub const QEMU: &str = "qemu-microvm";
/// Where the static programs lie in the image.
const BENCH_DIR: &str = "/bench";
/// The emptyDir's mount point in the file I/O pods.
const SCRATCH: &str = "/scratch";
/// The agent's ready line on the console.
const AGENT_READY: &str = "peapod-agent: ready";
/// How long pods may take to be running.
const UP_LIMIT: Duration = Duration::from_secs(180);
/// How long an idle pod settles before its memory is read.
const SETTLE: Duration = Duration::from_secs(2);
/// Calls of each syscall per run.
const SYSCALL_ITERATIONS: u64 = 200_000;
/// The file of each file I/O run.
const FILE_MIB: u64 = 16;
/// The network rows: seconds of stream, count of request/responses.
const STREAM_SECONDS: u32 = 2;
const RR_COUNT: usize = 1000;
const NET_PORT: u16 = super::netperf::DEFAULT_PORT;
/// Where the static programs lie inside the test bed.
const MACHINE_PROBE: &str = "/opt/peapod-bench/peapod-probe";
const MACHINE_NETBENCH: &str = "/opt/peapod-bench/peapod-netbench";

/// A part of the bench (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Part {
    Start,
    Memory,
    Syscalls,
    Fileio,
    Network,
    Density,
    Surface,
    Neighbour,
}

impl Part {
    pub const ALL: [Part; 8] = [
        Part::Start,
        Part::Memory,
        Part::Syscalls,
        Part::Fileio,
        Part::Network,
        Part::Density,
        Part::Surface,
        Part::Neighbour,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Part::Start => "start",
            Part::Memory => "memory",
            Part::Syscalls => "syscalls",
            Part::Fileio => "fileio",
            Part::Network => "network",
            Part::Density => "density",
            Part::Surface => "surface",
            Part::Neighbour => "neighbour",
        }
    }
}

/// The isolation models `peapod run --runtime` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    Vm,
    Container,
}

impl Model {
    pub const BOTH: [Model; 2] = [Model::Vm, Model::Container];

    /// Its `--runtime` and its subject's name.
    pub fn name(self) -> &'static str {
        match self {
            Model::Vm => VM,
            Model::Container => CONTAINER,
        }
    }
}

pub struct ModelsBench {
    pub runs: usize,
    /// Pods of the density rows.
    pub pods: usize,
    /// The parts to run (all when empty).
    pub only: Vec<Part>,
    pub kernel: Option<PathBuf>,
    pub agent_initrd: Option<PathBuf>,
    pub output: OutputFormat,
    pub plot: Option<PathBuf>,
}

impl ModelsBench {
    fn parts(&self) -> Vec<Part> {
        let mut parts: Vec<Part> = match self.only.is_empty() {
            true => Part::ALL.to_vec(),
            false => self.only.clone(),
        };
        parts.sort();
        parts.dedup();
        parts
    }
}

/// Set when SIGINT, SIGTERM or SIGHUP reaches the bench: it stops at the next step and
/// removes its pods.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn not_interrupted() -> Result<(), String> {
    match INTERRUPTED.load(Ordering::Relaxed) {
        true => Err("interrupted; removing the bench's pods".into()),
        false => Ok(()),
    }
}

/// `e` with its causes, for a cell.
fn why(e: anyhow::Error) -> String {
    format!("{e:#}")
}

pub fn run(bench: &ModelsBench) -> anyhow::Result<()> {
    let probe = super::isolation::find_probe();
    let netbench = super::net::find_netbench();
    if !super::kvm_here("models")? {
        return run_in_machine(bench, probe.ok().as_deref(), netbench.ok().as_deref());
    }
    crate::cli::tty::forward_signals(|_| !INTERRUPTED.swap(true, Ordering::Relaxed))
        .context("watching for SIGINT")?;
    let peapod = std::env::current_exe()?;
    let kernel = match &bench.kernel {
        Some(path) => path.clone(),
        None => crate::guest_kernel::default_kernel()?,
    };
    let initrd = match &bench.agent_initrd {
        Some(path) => path.clone(),
        None => crate::runtime::oneshot::default_agent_initramfs()?,
    };
    let work = tempfile::Builder::new()
        .prefix("peapod-models-")
        .tempdir()
        .context("a work directory")?;
    // Dropped before `work` (declared after it): its pods are force-removed.
    let pods = BenchPods::new(&peapod, &kernel, &initrd)?;
    let probe = probe.map_err(why);
    let netbench = netbench.map_err(why);
    let rootfs = work.path().join("rootfs");
    build_image(
        &pods,
        &rootfs,
        &work.path().join("layout"),
        &probe,
        &netbench,
    )
    .context("building the bench image")?;
    let crun = Crun::new(work.path(), &rootfs);
    if let Err(e) = &crun {
        eprintln!("bench models: no crun column: {e}");
    }
    let world = World {
        pods,
        kernel,
        initrd,
        crun,
        probe,
        netbench,
        work: work.path().to_path_buf(),
    };
    for model in Model::BOTH {
        // fills the block-image and root caches, so runs measure starts, not conversions
        if let Err(e) = exit_once(world.run_rm(model, &["true"])) {
            eprintln!(
                "bench models: the warm-up pod ({}) failed: {e:#}",
                model.name()
            );
        }
    }
    let mut report = Report::new(
        format!(
            "peapod bench models: {} runs per subject (vm, container, crun, ... interleaved); \
             median (min–max)",
            bench.runs
        ),
        vec![
            Subject::with_detail(VM, "peapod run --runtime vm"),
            Subject::with_detail(CONTAINER, "peapod run --runtime container"),
            Subject::with_detail(CRUN, "peer, same root"),
            Subject::with_detail(QEMU, "peer, same kernel + initramfs"),
        ],
    );
    report.notes.push(format!(
        "image `{IMAGE}`: {BASE_IMAGE} plus the static peapod-probe and peapod-netbench in \
         {BENCH_DIR}; pods with --network none except the network rows; ratios against crun \
         where it is in the row, else against vm"
    ));
    for part in bench.parts() {
        if not_interrupted().is_err() {
            break;
        }
        eprintln!("bench models: {}", part.as_str());
        let metrics = match part {
            Part::Start => start(&world, bench.runs),
            Part::Memory => memory(&world, bench.runs),
            Part::Syscalls => syscalls(&world, bench.runs),
            Part::Fileio => file_io(&world, bench.runs),
            Part::Network => network(&world, bench.runs),
            Part::Density => density(&world, bench.runs, bench.pods),
            Part::Surface => surface(&world, bench.runs),
            Part::Neighbour => neighbour(&world, bench.runs),
        };
        report.metrics.extend(metrics);
    }
    drop(world);
    not_interrupted().map_err(anyhow::Error::msg)?;
    emit(bench, &report)
}

/// Writes the chart (`--plot`) and prints the report as `--output` asks.
fn emit(bench: &ModelsBench, report: &Report) -> anyhow::Result<()> {
    super::emit_report("models", report, bench.output, bench.plot.as_deref())
}

/// What every part uses: the pod world, the crun peer, the static programs.
struct World {
    pods: BenchPods,
    kernel: PathBuf,
    initrd: PathBuf,
    crun: Result<Crun, String>,
    /// The static probe in the image, or why it is not there.
    probe: Result<PathBuf, String>,
    netbench: Result<PathBuf, String>,
    work: PathBuf,
}

impl World {
    /// `peapod run --rm --runtime MODEL --network none IMAGE ARGS`.
    fn run_rm(&self, model: Model, args: &[&str]) -> Command {
        let mut all = vec![
            "--rm",
            "--runtime",
            model.name(),
            "--network",
            "none",
            IMAGE,
        ];
        all.extend(args);
        self.pods.run(&all)
    }

    /// `peapod run -d --runtime MODEL --network NETWORK --name NAME IMAGE ARGS`, which must
    /// succeed.
    fn run_detached(
        &self,
        model: Model,
        network: &str,
        name: &str,
        args: &[&str],
    ) -> anyhow::Result<()> {
        let mut all = vec![
            "-d",
            "--runtime",
            model.name(),
            "--network",
            network,
            "--name",
            name,
            IMAGE,
        ];
        all.extend(args);
        let out = self.pods.run(&all).stdin(Stdio::null()).output()?;
        anyhow::ensure!(
            out.status.success(),
            "peapod run -d --runtime {} --name {name} failed ({}): {}",
            model.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// `peapod pod apply` of `yaml` in `model`, which must succeed.
    fn apply(&self, model: Model, yaml: &str) -> anyhow::Result<()> {
        let file = self.work.join("pod.yaml");
        fs::write(&file, yaml)?;
        let out = self
            .pods
            .peapod(&["pod", "apply", "--runtime", model.name()])
            .args(["--network", "none", "-f"])
            .arg(&file)
            .arg("--kernel")
            .arg(&self.kernel)
            .arg("--initrd")
            .arg(&self.initrd)
            .stdin(Stdio::null())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "peapod pod apply --runtime {} failed ({}): {}",
            model.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// `peapod rm -f NAMES`.
    fn remove(&self, names: &[String]) {
        let mut args = vec!["rm", "-f"];
        args.extend(names.iter().map(String::as_str));
        if let Err(e) = self.pods.output(&args) {
            eprintln!("bench models: {e:#}");
        }
    }

    /// Waits until `ps` lists all of `names` running.
    fn wait_running(&self, names: &[String]) -> anyhow::Result<()> {
        let deadline = Instant::now() + UP_LIMIT;
        loop {
            not_interrupted().map_err(anyhow::Error::msg)?;
            let listed = self.pods.output(&["ps", "-a", "--format", "json"])?;
            let states = pod_states(&listed)?;
            let mut up = 0;
            for name in names {
                match states.get(name).map(String::as_str) {
                    Some("running") => up += 1,
                    Some("created") | None => {}
                    Some(other) => anyhow::bail!("pod {name} is {other}, not running: {listed}"),
                }
            }
            if up == names.len() {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{up} of {} pods running after {UP_LIMIT:?}",
                names.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn inspect(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        let text = self.pods.output(&["inspect", name])?;
        let value: serde_json::Value =
            serde_json::from_str(&text).context("peapod inspect printed no JSON")?;
        Ok(value[0].clone())
    }

    fn probe(&self) -> Result<(), String> {
        self.probe.as_ref().map(drop).map_err(Clone::clone)
    }
}

/// Unpacks the base image into `rootfs`, adds the static programs under `/bench`, and
/// imports it as one layer as [`IMAGE`].
fn build_image(
    pods: &BenchPods,
    rootfs: &Path,
    layout: &Path,
    probe: &Result<PathBuf, String>,
    netbench: &Result<PathBuf, String>,
) -> anyhow::Result<()> {
    let out = pods
        .peapod(&["image", "unpack", "--root"])
        .arg(pods.root())
        .arg(BASE_IMAGE)
        .arg(rootfs)
        .stdin(Stdio::null())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "peapod image unpack {BASE_IMAGE}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let bench_dir = rootfs.join(BENCH_DIR.trim_start_matches('/'));
    fs::create_dir_all(&bench_dir)?;
    for (program, name) in [(probe, PROBE_BINARY_NAME), (netbench, NETBENCH_BINARY_NAME)] {
        match program {
            Ok(path) => {
                fs::copy(path, bench_dir.join(name))
                    .with_context(|| format!("copying {}", path.display()))?;
            }
            Err(e) => eprintln!("bench models: no {name} in the image: {e}"),
        }
    }
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all(".", rootfs)
        .context("the image's layer")?;
    let layer = tar.into_inner()?;
    let config = serde_json::json!({
        "Cmd": ["sh"],
        "Env": [crate::image::import::DEFAULT_PATH],
    });
    crate::image::layout::write_oci_layout(layout, &[layer], config, "latest")?;
    let out = pods
        .peapod(&["image", "import", "--name", IMAGE])
        .arg(layout)
        .stdin(Stdio::null())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "peapod image import: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The crun peer: Debian's crun with its default spec on the bench image's unpacked root.
struct Crun {
    program: PathBuf,
    /// `crun spec`'s default config.
    default: serde_json::Value,
    rootfs: PathBuf,
    bundles: PathBuf,
}

impl Crun {
    fn new(work: &Path, rootfs: &Path) -> Result<Crun, String> {
        let program = crate::machine::assets::find_in_path("crun")
            .ok_or("no crun here (apt-get install crun)")?;
        let bundles = work.join("crun");
        fs::create_dir_all(&bundles).map_err(|e| e.to_string())?;
        let out = Command::new(&program)
            .arg("spec")
            .current_dir(&bundles)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("crun spec: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "crun spec: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let config = bundles.join("config.json");
        let text = fs::read(&config).map_err(|e| e.to_string())?;
        let _ = fs::remove_file(&config);
        let default = serde_json::from_slice(&text).map_err(|e| format!("crun spec: {e}"))?;
        Ok(Crun {
            program,
            default,
            rootfs: rootfs.to_path_buf(),
            bundles,
        })
    }

    /// `crun run` (`--detach` where asked) of `args` in a bundle named `name`; `writable`:
    /// a writable root; `scratch`: a host directory bind-mounted at [`SCRATCH`].
    fn command(
        &self,
        name: &str,
        args: &[&str],
        writable: bool,
        scratch: Option<&Path>,
        detach: bool,
    ) -> anyhow::Result<Command> {
        let bundle = self.bundles.join(name);
        fs::create_dir_all(&bundle)?;
        let mut spec = crun_spec(self.default.clone(), args, Some(&self.rootfs))?;
        if writable {
            spec["root"]["readonly"] = false.into();
        }
        if let Some(dir) = scratch
            && let Some(mounts) = spec["mounts"].as_array_mut()
        {
            mounts.push(serde_json::json!({
                "destination": SCRATCH, "type": "bind", "source": dir,
                "options": ["rbind", "rw", "nosuid", "nodev", "rprivate"],
            }));
        }
        fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&spec)?,
        )?;
        let mut run = Command::new(&self.program);
        run.arg("run");
        if detach {
            run.arg("--detach");
        }
        if std::env::var_os("PEAPOD_IN_MACHINE").is_some() {
            // the L1's root is its initramfs, where pivot_root is refused
            run.arg("--no-pivot");
        }
        run.arg("--bundle").arg(&bundle).arg(name);
        Ok(run)
    }

    /// `crun delete -f NAME`.
    fn delete(&self, name: &str) {
        let _ = Command::new(&self.program)
            .args(["delete", "-f", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A unique container name for crun.
fn crun_name(what: &str, run: usize) -> String {
    format!("pbm-{what}-{}-{run}", std::process::id())
}

/// A subject's function for [`interleave`]: one value per run, or why not.
type Runner<'a> = Box<dyn FnMut(usize) -> Result<f64, String> + 'a>;
/// A subject's function for [`measure_rows`]: a value per row per run, or why not.
type RowsRunner<'a, const N: usize> = Box<dyn FnMut(usize) -> Result<[f64; N], String> + 'a>;

/// A metric of `cells` (subject, outcome).
fn metric(
    name: &str,
    unit: &str,
    lower_is_better: bool,
    decimals: usize,
    cells: Vec<(&str, Outcome)>,
) -> Metric {
    let subjects: Vec<&str> = cells.iter().map(|(s, _)| *s).collect();
    let baseline = match (subjects.contains(&CRUN), subjects.contains(&VM)) {
        (true, _) => Some(CRUN.to_string()),
        (false, true) => Some(VM.to_string()),
        _ => None,
    };
    Metric {
        name: name.into(),
        unit: unit.into(),
        lower_is_better,
        decimals,
        baseline,
        cells: cells
            .into_iter()
            .map(|(subject, outcome)| Cell {
                subject: subject.into(),
                outcome,
            })
            .collect(),
    }
}

/// Runs `subjects` interleaved and pairs each with its outcome.
fn measure<'a>(runs: usize, subjects: Vec<(&'a str, Runner<'_>)>) -> Vec<(&'a str, Outcome)> {
    let (names, fns): (Vec<&str>, Vec<Runner>) = subjects.into_iter().unzip();
    let mut fns: Vec<Runner> = names
        .iter()
        .zip(fns)
        .map(|(name, f)| said(name, f))
        .collect();
    let mut refs: Vec<&mut dyn FnMut(usize) -> Result<f64, String>> =
        fns.iter_mut().map(|f| f.as_mut() as _).collect();
    let outcomes = interleave(runs, &mut refs);
    names.into_iter().zip(outcomes).collect()
}

/// `f`, saying on stderr what each of its runs gave and how long it took.
fn said<'f, T: std::fmt::Debug + 'f>(
    name: &str,
    mut f: Box<dyn FnMut(usize) -> Result<T, String> + 'f>,
) -> Box<dyn FnMut(usize) -> Result<T, String> + 'f> {
    let name = name.to_string();
    Box::new(move |run| {
        let started = Instant::now();
        let result = f(run);
        if let Ok(value) = &result {
            eprintln!(
                "bench models: run {}: {name}: {value:.1?} ({:.1} s)",
                run + 1,
                started.elapsed().as_secs_f64()
            );
        }
        result
    })
}

/// Runs that return several values per run (one per row), interleaved: per subject, per
/// row, the outcome.
fn measure_rows<'a, const N: usize>(
    runs: usize,
    subjects: Vec<(&'a str, RowsRunner<'_, N>)>,
) -> [Vec<(&'a str, Outcome)>; N] {
    let (names, fns): (Vec<&str>, Vec<_>) = subjects.into_iter().unzip();
    let mut fns: Vec<_> = names
        .iter()
        .zip(fns)
        .map(|(name, f)| said(name, f))
        .collect();
    let mut refs: Vec<&mut dyn FnMut(usize) -> Result<[f64; N], String>> =
        fns.iter_mut().map(|f| f.as_mut() as _).collect();
    let results = super::report::interleave_with(runs, &mut refs);
    std::array::from_fn(|row| {
        names
            .iter()
            .zip(&results)
            .map(|(name, result)| (*name, row_outcome(result, row)))
            .collect()
    })
}

/// Row `row` of a subject's runs, or why it has none.
fn row_outcome<const N: usize>(result: &Result<Vec<[f64; N]>, String>, row: usize) -> Outcome {
    match result {
        Ok(runs) => match Samples::from_values(runs.iter().map(|values| values[row])) {
            Ok(samples) => Outcome::Measured(samples),
            Err(e) => Outcome::not_run(e.to_string()),
        },
        Err(why) => Outcome::not_run(why.clone()),
    }
}

/// `e` as a subject's failure in `run`, said on stderr too.
fn failed(subject: &str, run: usize, e: anyhow::Error) -> String {
    eprintln!("bench models: {subject} failed in run {}: {e:#}", run + 1);
    format!("failed in run {}: {e:#}", run + 1)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---- start ----

fn start(world: &World, runs: usize) -> Vec<Metric> {
    let qemu = qemu_microvm(world);
    let mut first: Vec<(&str, Runner)> = Vec::new();
    for model in Model::BOTH {
        first.push((
            model.name(),
            Box::new(move |run| {
                not_interrupted()?;
                pod_once(world.run_rm(model, &["echo", POD_MARKER]), false)
                    .map(|s| ms(s.first_output))
                    .map_err(|e| failed(model.name(), run, e))
            }),
        ));
    }
    first.push((
        CRUN,
        Box::new(|run| {
            let crun = world.crun.as_ref().map_err(Clone::clone)?;
            let name = crun_name("echo", run);
            let command = crun
                .command(&name, &["echo", POD_MARKER], false, None, false)
                .map_err(|e| failed(CRUN, run, e))?;
            let result = pod_once(command, false);
            crun.delete(&name);
            result
                .map(|s| ms(s.first_output))
                .map_err(|e| failed(CRUN, run, e))
        }),
    ));
    first.push((
        QEMU,
        Box::new(|run| {
            let command = qemu.as_ref().map_err(Clone::clone)?(run);
            super::boot::boot_until(command, QEMU_MEMORY_MIB, AGENT_READY)
                .map(|s| ms(s.boot))
                .map_err(|e| failed(QEMU, run, e))
        }),
    ));
    let first = measure(runs, first);

    let mut exit: Vec<(&str, Runner)> = Vec::new();
    for model in Model::BOTH {
        exit.push((
            model.name(),
            Box::new(move |run| {
                not_interrupted()?;
                exit_once(world.run_rm(model, &["true"]))
                    .map(|(took, _)| ms(took))
                    .map_err(|e| failed(model.name(), run, e))
            }),
        ));
    }
    exit.push((
        CRUN,
        Box::new(|run| {
            let crun = world.crun.as_ref().map_err(Clone::clone)?;
            let name = crun_name("true", run);
            let command = crun
                .command(&name, &["true"], false, None, false)
                .map_err(|e| failed(CRUN, run, e))?;
            let result = exit_once(command);
            crun.delete(&name);
            result
                .map(|(took, _)| ms(took))
                .map_err(|e| failed(CRUN, run, e))
        }),
    ));
    let exit = measure(runs, exit);
    vec![
        metric("start: command to first output", "ms", true, 0, first),
        metric("start: `run --rm IMAGE true` to exit", "ms", true, 0, exit),
    ]
}

/// Guest RAM of the QEMU peer (a pod VM's default).
const QEMU_MEMORY_MIB: u32 = crate::vmm::builder::DEFAULT_MEMORY_MIB as u32;

/// The QEMU microvm peer's command for a run, or why it cannot run here: QEMU on the same
/// kernel and agent initramfs, with a vhost-vsock device (the agent listens on vsock and
/// stops the VM without one).
fn qemu_microvm(world: &World) -> Result<impl Fn(usize) -> Command + '_, String> {
    let qemu = crate::machine::assets::find_qemu().map_err(|e| e.to_string())?;
    if !Path::new("/dev/vhost-vsock").exists() {
        return Err(
            "no /dev/vhost-vsock here (modprobe vhost_vsock): the agent needs vsock".into(),
        );
    }
    let cmdline = format!("{DEFAULT_CMDLINE} quiet");
    Ok(move |run: usize| {
        // a guest CID of its own: the pods' VMs take theirs from peapod's range
        let cid = 0x5000_0000u32 + (std::process::id() % 0x10000) * 64 + run as u32 % 64;
        let mut microvm = Command::new(&qemu);
        microvm
            .args(["-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "host"])
            .args(["-smp", "1", "-m", &QEMU_MEMORY_MIB.to_string()])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-no-reboot"])
            .args(["-device", &format!("vhost-vsock-device,guest-cid={cid}")])
            .arg("-kernel")
            .arg(&world.kernel)
            .arg("-initrd")
            .arg(&world.initrd)
            .args(["-append", &cmdline, "-serial", "stdio"]);
        microvm
    })
}

// ---- memory ----

/// What one idle pod costs the host, in MiB.
#[derive(Debug, Clone, PartialEq)]
struct PodMemory {
    pss_mib: f64,
    /// VM pods: the VMM's RSS less its guest RAM, and the guest RAM touched.
    vmm: Option<Result<VmmMemory, String>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct VmmMemory {
    overhead_mib: f64,
    guest_touched_mib: f64,
}

fn memory(world: &World, runs: usize) -> Vec<Metric> {
    // per model: [pss, vmm overhead, guest touched] (NaN where the pod has no VMM)
    let vmm_why: std::cell::RefCell<BTreeMap<&str, String>> = Default::default();
    let mut subjects: Vec<(&str, RowsRunner<3>)> = Vec::new();
    for model in Model::BOTH {
        let vmm_why = &vmm_why;
        subjects.push((
            model.name(),
            Box::new(move |run| {
                not_interrupted()?;
                let m = pod_memory(world, model, run).map_err(|e| failed(model.name(), run, e))?;
                let (overhead, touched) = match m.vmm {
                    Some(Ok(v)) => (v.overhead_mib, v.guest_touched_mib),
                    Some(Err(why)) => {
                        vmm_why.borrow_mut().insert(model.name(), why);
                        (0.0, 0.0)
                    }
                    None => (0.0, 0.0),
                };
                Ok([m.pss_mib, overhead, touched])
            }),
        ));
    }
    subjects.push((
        CRUN,
        Box::new(|run| {
            let crun = world.crun.as_ref().map_err(Clone::clone)?;
            crun_memory(crun, run)
                .map(|pss| [pss, 0.0, 0.0])
                .map_err(|e| failed(CRUN, run, e))
        }),
    ));
    let [pss, overhead, touched] = measure_rows(runs, subjects);
    let vmm_why = vmm_why.into_inner();
    // the VM's cells alone; a run whose VMM could not be split fails them
    fn vm_only<'a>(
        rows: Vec<(&'a str, Outcome)>,
        vmm_why: &BTreeMap<&str, String>,
    ) -> Vec<(&'a str, Outcome)> {
        rows.into_iter()
            .filter(|(s, _)| *s == VM)
            .map(|(s, o)| match vmm_why.get(s) {
                Some(why) if matches!(o, Outcome::Measured(_)) => (s, Outcome::not_run(why)),
                _ => (s, o),
            })
            .collect()
    }
    vec![
        metric(
            "memory: PSS of an idle pod's host processes",
            "MiB",
            true,
            1,
            pss,
        ),
        metric(
            "memory: VMM RSS less guest RAM",
            "MiB",
            true,
            1,
            vm_only(overhead, &vmm_why),
        ),
        metric(
            "memory: guest RAM touched",
            "MiB",
            true,
            1,
            vm_only(touched, &vmm_why),
        ),
    ]
}

/// Starts an idle pod, lets it settle, reads its host memory, removes it.
fn pod_memory(world: &World, model: Model, run: usize) -> anyhow::Result<PodMemory> {
    let name = format!("mem-{}-{run}", model.name());
    let names = [name.clone()];
    let result = (|| {
        world.run_detached(model, "none", &name, &["sleep", "100000"])?;
        world.wait_running(&names)?;
        std::thread::sleep(SETTLE);
        let pod = world.inspect(&name)?;
        let (pids, sandbox) = pod_pids(&pod, &process_parents())?;
        let pss_kib: u64 = pids.iter().filter_map(|&p| pss_kib(p)).sum();
        anyhow::ensure!(pss_kib > 0, "no PSS read for the pod's processes {pids:?}");
        let vmm = match (model, sandbox) {
            (Model::Vm, Some(pid)) => {
                let guest_kib = pod["vm"]["memory_mib"].as_u64().unwrap_or(0) * 1024;
                Some(
                    fs::read_to_string(format!("/proc/{pid}/smaps"))
                        .map_err(|e| format!("reading the VMM's smaps: {e}"))
                        .and_then(|smaps| vmm_memory(&smaps, guest_kib)),
                )
            }
            (Model::Vm, None) => Some(Err("inspect shows no VMM pid".into())),
            (Model::Container, _) => None,
        };
        Ok(PodMemory {
            pss_mib: pss_kib as f64 / 1024.0,
            vmm,
        })
    })();
    world.remove(&names);
    result
}

/// The host processes of the pod `inspect` shows: its supervisor and what it started, its
/// VMM or host agent, and the processes in its cgroup (a host pod's containers); and the
/// sandbox's pid.
fn pod_pids(
    pod: &serde_json::Value,
    parents: &BTreeMap<u32, u32>,
) -> anyhow::Result<(BTreeSet<u32>, Option<u32>)> {
    let id = pod["id"].as_str().context("inspect shows no id")?;
    let state = &pod["state"];
    let supervisor = state["supervisor_pid"]
        .as_u64()
        .context("inspect shows no supervisor_pid")? as u32;
    let sandbox = state["vmm_pid"].as_u64().map(|p| p as u32);
    let cgroup = PathBuf::from(format!("/sys/fs/cgroup/peapod.slice/pod-{id}"));
    let mut pids = descendants(&[supervisor], parents);
    pids.extend(sandbox);
    pids.extend(cgroup_pids(&cgroup));
    Ok((pids, sandbox))
}

/// A detached crun container's PSS (its processes), in MiB.
fn crun_memory(crun: &Crun, run: usize) -> anyhow::Result<f64> {
    let name = crun_name("mem", run);
    let result = (|| {
        // the container keeps crun's stdio: pipes would stay open as long as it runs
        let status = crun
            .command(&name, &["sleep", "100000"], false, None, true)?
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("crun run --detach")?;
        anyhow::ensure!(status.success(), "crun run --detach failed ({status})");
        std::thread::sleep(SETTLE);
        let (_, state) = exit_once({
            let mut c = Command::new(&crun.program);
            c.args(["state", &name]);
            c
        })?;
        let state: serde_json::Value = serde_json::from_str(&state).context("crun state")?;
        let pid = state["pid"].as_u64().context("crun state shows no pid")? as u32;
        let pids = descendants(&[pid], &process_parents());
        let pss_kib: u64 = pids.iter().filter_map(|&p| pss_kib(p)).sum();
        anyhow::ensure!(pss_kib > 0, "no PSS read for the container's processes");
        Ok(pss_kib as f64 / 1024.0)
    })();
    crun.delete(&name);
    result
}

/// Every process's parent, from `/proc/*/stat`.
fn process_parents() -> BTreeMap<u32, u32> {
    let mut parents = BTreeMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return parents;
    };
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(ppid) = fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| stat_ppid(&s))
        {
            parents.insert(pid, ppid);
        }
    }
    parents
}

/// The parent pid from a `/proc/PID/stat` line: the field after the state, after the
/// command's closing `)` (the command may hold spaces and parentheses).
fn stat_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// `roots` and all their descendants in `parents` (pid → parent).
fn descendants(roots: &[u32], parents: &BTreeMap<u32, u32>) -> BTreeSet<u32> {
    let mut found: BTreeSet<u32> = roots.iter().copied().collect();
    loop {
        let more: Vec<u32> = parents
            .iter()
            .filter(|(pid, parent)| found.contains(parent) && !found.contains(pid))
            .map(|(pid, _)| *pid)
            .collect();
        if more.is_empty() {
            return found;
        }
        found.extend(more);
    }
}

/// The pids in a cgroup and all cgroups below it (none where it does not exist).
fn cgroup_pids(dir: &Path) -> BTreeSet<u32> {
    let mut pids = BTreeSet::new();
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(cgroup_pids(&entry.path()));
            }
        }
    }
    pids
}

/// A process's PSS in KiB (`None` where it has gone or has no memory, like a kernel thread).
fn pss_kib(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    kib_field(&text, "Pss:")
}

/// `NAME   123 kB` from smaps-like text.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The VMM's RSS less its guest RAM, and the guest RAM touched, from its smaps: the guest
/// RAM is the one anonymous mapping of exactly `guest_kib` (a pod VM below the 3 GiB MMIO
/// gap has one RAM range); its RSS is what the guest touched.
fn vmm_memory(smaps: &str, guest_kib: u64) -> Result<VmmMemory, String> {
    if guest_kib == 0 {
        return Err("inspect shows no guest memory size".into());
    }
    let (mut total, mut guest, mut guest_maps) = (0u64, 0u64, 0usize);
    let mut size = 0u64;
    let mut anonymous = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            anonymous = line.split_whitespace().nth(5).is_none();
            size = 0;
            continue;
        }
        let value = || {
            line.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match first {
            "Size:" => size = value(),
            "Rss:" => {
                let rss = value();
                total += rss;
                if anonymous && size == guest_kib {
                    guest += rss;
                    guest_maps += 1;
                }
            }
            _ => {}
        }
    }
    match guest_maps {
        1 => Ok(VmmMemory {
            overhead_mib: (total - guest) as f64 / 1024.0,
            guest_touched_mib: guest as f64 / 1024.0,
        }),
        n => Err(format!(
            "{n} anonymous mappings of the guest's {guest_kib} KiB in the VMM: cannot tell guest \
             RAM from the VMM's own"
        )),
    }
}

// ---- syscalls ----

fn syscalls(world: &World, runs: usize) -> Vec<Metric> {
    let iterations = SYSCALL_ITERATIONS.to_string();
    let probe = format!("{BENCH_DIR}/{PROBE_BINARY_NAME}");
    let args = [
        probe.as_str(),
        "bench",
        "syscalls",
        "--iterations",
        &iterations,
    ];
    let parse = |stdout: &str| -> anyhow::Result<[f64; 2]> {
        let cost: SyscallCost = super::workload::parse_line(stdout)?;
        Ok([cost.getpid_ns, cost.clock_gettime_ns])
    };
    let mut subjects: Vec<(&str, RowsRunner<2>)> = Vec::new();
    for model in Model::BOTH {
        subjects.push((
            model.name(),
            Box::new(move |run| {
                not_interrupted()?;
                world.probe()?;
                exit_once(world.run_rm(model, &args))
                    .and_then(|(_, out)| parse(&out))
                    .map_err(|e| failed(model.name(), run, e))
            }),
        ));
    }
    subjects.push((
        CRUN,
        Box::new(move |run| {
            let crun = world.crun.as_ref().map_err(Clone::clone)?;
            world.probe()?;
            let name = crun_name("sys", run);
            let result = crun
                .command(&name, &args, false, None, false)
                .and_then(exit_once)
                .and_then(|(_, out)| parse(&out));
            crun.delete(&name);
            result.map_err(|e| failed(CRUN, run, e))
        }),
    ));
    let [getpid, clock] = measure_rows(runs, subjects);
    vec![
        metric("syscalls: getpid", "ns/call", true, 0, getpid),
        metric("syscalls: clock_gettime", "ns/call", true, 0, clock),
    ]
}

// ---- file I/O ----

/// The pod of the file I/O rows: an idle container with an emptyDir at [`SCRATCH`].
fn fileio_pod_yaml(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  \
         - name: main\n    image: {IMAGE}\n    command: [\"sleep\", \"100000\"]\n    \
         volumeMounts:\n    - name: scratch\n      mountPath: {SCRATCH}\n  volumes:\n  \
         - name: scratch\n    emptyDir: {{}}\n"
    )
}

/// The four rates of a run on the root, then the four on the emptyDir.
fn fileio_values(root: &FileIo, scratch: &FileIo) -> [f64; 8] {
    [
        root.seq_write_mb_s,
        root.seq_read_mb_s,
        root.rand_write_mb_s,
        root.rand_read_mb_s,
        scratch.seq_write_mb_s,
        scratch.seq_read_mb_s,
        scratch.rand_write_mb_s,
        scratch.rand_read_mb_s,
    ]
}

fn fileio_args(dir: &str) -> Vec<String> {
    [
        format!("{BENCH_DIR}/{PROBE_BINARY_NAME}"),
        "bench".into(),
        "fileio".into(),
        "--dir".into(),
        dir.into(),
        "--mib".into(),
        FILE_MIB.to_string(),
    ]
    .into()
}

fn file_io(world: &World, runs: usize) -> Vec<Metric> {
    type Run<'a> = Box<dyn FnMut(usize) -> Result<[f64; 8], String> + 'a>;
    let mut subjects: Vec<(&str, Run)> = Vec::new();
    for model in Model::BOTH {
        subjects.push((
            model.name(),
            Box::new(move |run| {
                not_interrupted()?;
                world.probe()?;
                pod_fileio(world, model, run).map_err(|e| failed(model.name(), run, e))
            }),
        ));
    }
    subjects.push((
        CRUN,
        Box::new(|run| {
            let crun = world.crun.as_ref().map_err(Clone::clone)?;
            world.probe()?;
            crun_fileio(world, crun, run).map_err(|e| failed(CRUN, run, e))
        }),
    ));
    let rows = measure_rows(runs, subjects);
    let names = [
        "file I/O: root, sequential write",
        "file I/O: root, sequential read",
        "file I/O: root, random 4 KiB write",
        "file I/O: root, random 4 KiB read",
        "file I/O: emptyDir, sequential write",
        "file I/O: emptyDir, sequential read",
        "file I/O: emptyDir, random 4 KiB write",
        "file I/O: emptyDir, random 4 KiB read",
    ];
    names
        .into_iter()
        .zip(rows)
        .map(|(name, cells)| metric(name, "MB/s", false, 0, cells))
        .collect()
}

/// A YAML pod with an emptyDir; the workload on its root and on the emptyDir by `exec`.
fn pod_fileio(world: &World, model: Model, run: usize) -> anyhow::Result<[f64; 8]> {
    let name = format!("fio-{}-{run}", model.name());
    let names = [name.clone()];
    let result = (|| {
        world.apply(model, &fileio_pod_yaml(&name))?;
        world.wait_running(&names)?;
        let exec = |dir: &str| -> anyhow::Result<FileIo> {
            let mut args = vec!["exec".to_string(), name.clone(), "--".to_string()];
            args.extend(fileio_args(dir));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (_, out) = exit_once(world.pods.peapod(&args))?;
            Ok(super::workload::parse_line(&out)?)
        };
        let root = exec("/tmp")?;
        let scratch = exec(SCRATCH)?;
        Ok(fileio_values(&root, &scratch))
    })();
    world.remove(&names);
    result
}

/// crun: the workload on its (writable) root, then on a bind-mounted host directory.
fn crun_fileio(world: &World, crun: &Crun, run: usize) -> anyhow::Result<[f64; 8]> {
    let scratch = tempfile::Builder::new()
        .prefix("scratch-")
        .tempdir_in(&world.work)?;
    let once = |dir: &str, what: &str| -> anyhow::Result<FileIo> {
        let name = crun_name(what, run);
        let args = fileio_args(dir);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let result = crun
            .command(&name, &args, true, Some(scratch.path()), false)
            .and_then(exit_once)
            .and_then(|(_, out)| Ok(super::workload::parse_line(&out)?));
        crun.delete(&name);
        result
    };
    let root = once("/tmp", "fio-root")?;
    let scratch = once(SCRATCH, "fio-scratch")?;
    Ok(fileio_values(&root, &scratch))
}

// ---- host kernel surface ----

/// How much of the host's kernel each model puts in a pod's reach: the distinct syscalls the
/// pod's host processes make while a workload runs (`strace -f -c` of `run --rm` of the file
/// I/O workload: the CLI, supervisor, VMM or host agent, and for the container runtime and
/// crun the workload's own processes, which run on the host's kernel; a pod VM's guest makes
/// its syscalls to the guest's kernel), and how many syscalls the pod's confinement lets
/// through at all (the VMM's seccomp allow-lists, all threads; docker's profile for the
/// container runtime's containers; crun's default spec has no filter).
fn surface(world: &World, runs: usize) -> Vec<Metric> {
    let strace = crate::machine::assets::find_in_path("strace")
        .ok_or_else(|| "no strace here (apt-get install strace)".to_string());
    let args = fileio_args("/tmp");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut subjects: Vec<(&str, RowsRunner<2>)> = Vec::new();
    let vmm_allowed = vmm_allow_list_size() as f64;
    let docker_allowed = crate::agent::hardening::allowed_names().count() as f64;
    for (model, allowed) in [(Model::Vm, vmm_allowed), (Model::Container, docker_allowed)] {
        let (strace, args) = (strace.clone(), args.clone());
        subjects.push((
            model.name(),
            Box::new(move |run| {
                not_interrupted()?;
                world.probe()?;
                let strace = strace.as_ref().map_err(Clone::clone)?;
                traced_syscalls(strace, world.run_rm(model, &args), &world.work, run)
                    .map(|made| [made as f64, allowed])
                    .map_err(|e| failed(model.name(), run, e))
            }),
        ));
    }
    subjects.push((
        CRUN,
        Box::new(move |run| {
            let crun = world.crun.as_ref().map_err(Clone::clone)?;
            world.probe()?;
            let strace = strace.as_ref().map_err(Clone::clone)?;
            let name = crun_name("surface", run);
            let result = crun
                .command(&name, &args, true, None, false)
                .and_then(|command| traced_syscalls(strace, command, &world.work, run));
            crun.delete(&name);
            // crun's default spec installs no seccomp filter (its second row says so).
            result
                .map(|made| [made as f64, 0.0])
                .map_err(|e| failed(CRUN, run, e))
        }),
    ));
    let [made, allowed] = measure_rows(runs, subjects);
    let allowed = allowed
        .into_iter()
        .map(|(name, outcome)| match name {
            CRUN => (
                name,
                Outcome::not_run("no limit: crun's default spec has no seccomp filter"),
            ),
            _ => (name, outcome),
        })
        .collect();
    vec![
        metric(
            "host kernel surface: distinct host syscalls of `run --rm` of the file I/O \
             workload (strace -f)",
            "syscalls",
            true,
            0,
            made,
        ),
        metric(
            "host kernel surface: syscalls the confinement allows (VMM seccomp, all threads; \
             docker's profile)",
            "syscalls",
            true,
            0,
            allowed,
        ),
    ]
}

/// Distinct syscall numbers the VMM's threads may make, all thread kinds together.
fn vmm_allow_list_size() -> usize {
    use crate::vmm::seccomp::{ThreadKind, allowed};
    [ThreadKind::Vcpu, ThreadKind::Device, ThreadKind::Main]
        .into_iter()
        .flat_map(|kind| allowed(kind, libc::SIGRTMIN()))
        .map(|a| a.nr)
        .collect::<BTreeSet<_>>()
        .len()
}

/// Runs `command` under `strace -f -c` (it and every process it starts, until all have
/// exited); the number of distinct syscalls they made.
fn traced_syscalls(
    strace: &Path,
    command: Command,
    work: &Path,
    run: usize,
) -> anyhow::Result<usize> {
    let summary = work.join(format!("strace-{}-{run}.txt", std::process::id()));
    let mut traced = Command::new(strace);
    traced
        .args(["-f", "-qq", "-c", "-o"])
        .arg(&summary)
        .arg("--")
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => traced.env(key, value),
            None => traced.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        traced.current_dir(dir);
    }
    exit_once(traced)?;
    let text = fs::read_to_string(&summary).context("reading strace's summary")?;
    let _ = fs::remove_file(&summary);
    let names = strace_summary_syscalls(&text);
    anyhow::ensure!(!names.is_empty(), "strace counted no syscalls: {text}");
    Ok(names.len())
}

/// The syscall names of a `strace -c` summary table (its rows between the dashed lines,
/// the `total` row left out).
fn strace_summary_syscalls(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('%') && !l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .filter(|name| {
            *name != "total" && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(str::to_string)
        .collect()
}

// ---- a noisy neighbour ----

/// What the noisy pod does: forks [`NOISY_PROCESSES`] sleeping processes, holds 128 MiB
/// (`tail -c` keeps what it reads) and spins two CPUs, until it is removed. Bounded on
/// purpose: the bench shows how far each model's confinement reaches, never by exhausting
/// the host.
const NOISY_SCRIPT: &str = "i=0; while [ $i -lt 200 ]; do sleep 100000 & i=$((i+1)); done; \
     head -c 134217728 /dev/zero | tail -c 134217727 > /dev/null & \
     while :; do :; done & while :; do :; done & wait";
/// The noisy pod's sleeping processes.
const NOISY_PROCESSES: usize = 200;
/// Timed `exec ... true` of the neighbour per phase (the median is kept).
const NEIGHBOUR_PROBES: usize = 3;

/// Does a pod's neighbour (and the host) keep working while another pod of the same model
/// forks, allocates and spins? The median time of `peapod exec NEIGHBOUR -- true` with the
/// noisy pod absent and present, and of the host's own `/bin/true` while it runs.
fn neighbour(world: &World, runs: usize) -> Vec<Metric> {
    let mut subjects: Vec<(&str, RowsRunner<3>)> = Vec::new();
    for model in Model::BOTH {
        subjects.push((
            model.name(),
            Box::new(move |run| {
                not_interrupted()?;
                neighbour_once(world, model, run).map_err(|e| failed(model.name(), run, e))
            }),
        ));
    }
    let [idle, loaded, host] = measure_rows(runs, subjects);
    let load =
        format!("another pod forks {NOISY_PROCESSES} processes, holds 128 MiB and spins 2 CPUs");
    vec![
        metric(
            "neighbour: `exec POD true` of an idle pod, no other pod busy",
            "ms",
            true,
            0,
            idle,
        ),
        metric(
            &format!("neighbour: the same while {load}"),
            "ms",
            true,
            0,
            loaded,
        ),
        metric(
            &format!("neighbour: the host's /bin/true while {load}"),
            "ms",
            true,
            1,
            host,
        ),
    ]
}

fn neighbour_once(world: &World, model: Model, run: usize) -> anyhow::Result<[f64; 3]> {
    let quiet = format!("nb-{}-{run}", model.name());
    let noisy = format!("noisy-{}-{run}", model.name());
    let names = [quiet.clone(), noisy.clone()];
    let result = (|| {
        world.run_detached(model, "none", &quiet, &["sleep", "100000"])?;
        world.wait_running(&names[..1])?;
        let exec_ms = || -> anyhow::Result<f64> {
            let mut times = Vec::new();
            for _ in 0..NEIGHBOUR_PROBES {
                let (took, _) = exit_once(world.pods.peapod(&["exec", &quiet, "--", "true"]))?;
                times.push(ms(took));
            }
            median_of(times)
        };
        let idle = exec_ms()?;
        world.run_detached(model, "none", &noisy, &["sh", "-c", NOISY_SCRIPT])?;
        world.wait_running(&names[1..])?;
        std::thread::sleep(SETTLE);
        let loaded = exec_ms()?;
        let mut host = Vec::new();
        for _ in 0..NEIGHBOUR_PROBES {
            let (took, _) = exit_once(Command::new("true"))?;
            host.push(ms(took));
        }
        Ok([idle, loaded, median_of(host)?])
    })();
    world.remove(&names);
    result
}

/// The median of a few timings.
fn median_of(values: Vec<f64>) -> anyhow::Result<f64> {
    Samples::from_values(values)
        .ok()
        .and_then(|s| s.median())
        .context("no timings")
}

// ---- network ----

fn network(world: &World, runs: usize) -> Vec<Metric> {
    let mut subjects: Vec<(&str, RowsRunner<3>)> = Vec::new();
    let mut servers = Vec::new();
    for model in Model::BOTH {
        let name = format!("net-{}", model.name());
        let server = match &world.netbench {
            Err(e) => Err(e.clone()),
            Ok(netbench) => net_server(world, model, &name)
                .map(|addr| (netbench.clone(), addr))
                .map_err(|e| {
                    eprintln!("bench models: no {} network pod: {e:#}", model.name());
                    why(e)
                }),
        };
        servers.push(name);
        subjects.push((
            model.name(),
            Box::new(move |run| {
                not_interrupted()?;
                let (netbench, addr) = server.as_ref().map_err(Clone::clone)?;
                super::net::measure(netbench, None, *addr, STREAM_SECONDS, RR_COUNT)
                    .map(|s| [s.gbit_per_s, s.p50_us, s.p99_us])
                    .map_err(|e| failed(model.name(), run, e))
            }),
        ));
    }
    let [stream, p50, p99] = measure_rows(runs, subjects);
    world.remove(&servers);
    vec![
        metric(
            "network: host to pod TCP stream",
            "Gbit/s",
            false,
            3,
            stream,
        ),
        metric("network: request/response p50", "µs", true, 1, p50),
        metric("network: request/response p99", "µs", true, 1, p99),
    ]
}

/// A netbench server pod on the peapod network; its address once it has one.
fn net_server(world: &World, model: Model, name: &str) -> anyhow::Result<std::net::SocketAddr> {
    let port = NET_PORT.to_string();
    let server = format!("{BENCH_DIR}/{NETBENCH_BINARY_NAME}");
    world.run_detached(model, "peapod", name, &[&server, "server", "--port", &port])?;
    let deadline = Instant::now() + UP_LIMIT;
    loop {
        not_interrupted().map_err(anyhow::Error::msg)?;
        let inspect = world.pods.output(&["inspect", name])?;
        match super::net::pod_address(&inspect)? {
            PodAddress::Assigned(ip) => return Ok((ip, NET_PORT).into()),
            _ if Instant::now() >= deadline => anyhow::bail!(
                "pod {name} has no address after {UP_LIMIT:?}: is the pod network set up (CNI \
                 plugins, bridge peapod0)?"
            ),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

// ---- density ----

fn density(world: &World, runs: usize, pods: usize) -> Vec<Metric> {
    let mut subjects: Vec<(&str, RowsRunner<2>)> = Vec::new();
    for model in Model::BOTH {
        subjects.push((
            model.name(),
            Box::new(move |run| {
                not_interrupted()?;
                density_once(world, model, run, pods).map_err(|e| failed(model.name(), run, e))
            }),
        ));
    }
    let [up, used] = measure_rows(runs, subjects);
    vec![
        metric(
            &format!("density: {pods} pods started at once, until all Up"),
            "s",
            true,
            2,
            up,
        ),
        metric(
            &format!("density: host memory (PSS) of {pods} idle pods"),
            "MiB",
            true,
            0,
            used,
        ),
    ]
}

/// Starts `n` detached pods at once; seconds until all are running, and the MiB of PSS of
/// all their host processes (read after they settle).
fn density_once(world: &World, model: Model, run: usize, n: usize) -> anyhow::Result<[f64; 2]> {
    let names: Vec<String> = (0..n)
        .map(|i| format!("dens-{}-{run}-{i}", model.name()))
        .collect();
    let started = Instant::now();
    let result = (|| {
        let children: Vec<_> = names
            .iter()
            .map(|name| {
                let mut args = vec![
                    "-d",
                    "--runtime",
                    model.name(),
                    "--network",
                    "none",
                    "--name",
                    name,
                ];
                args.extend([IMAGE, "sleep", "100000"]);
                world
                    .pods
                    .run(&args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        for child in children {
            let out = child.wait_with_output()?;
            anyhow::ensure!(
                out.status.success(),
                "peapod run -d failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        world.wait_running(&names)?;
        let up = started.elapsed().as_secs_f64();
        std::thread::sleep(SETTLE);
        // PSS over all the pods' processes: what they share (the peapod binary, the VMM's
        // code) is counted once, as the host pays for it once.
        let parents = process_parents();
        let mut pids = BTreeSet::new();
        for name in &names {
            pids.extend(pod_pids(&world.inspect(name)?, &parents)?.0);
        }
        let pss_kib: u64 = pids.iter().filter_map(|&p| pss_kib(p)).sum();
        anyhow::ensure!(pss_kib > 0, "no PSS read for the pods' processes {pids:?}");
        Ok([up, pss_kib as f64 / 1024.0])
    })();
    world.remove(&names);
    result
}

/// Each pod's name and status word (`running`, `created`, `exited`, ...) from `ps --format
/// json` (one object per line; an exited pod's status is an object named by its state).
fn pod_states(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut states = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let pod: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("ps printed a line that is not JSON: {line}"))?;
        let name = pod["name"].as_str().unwrap_or_default().to_string();
        let status = match &pod["status"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(o) => o.keys().next().cloned().unwrap_or_default(),
            other => other.to_string(),
        };
        states.insert(name, status);
    }
    Ok(states)
}

// ---- the test bed ----

/// Re-runs this benchmark inside `peapod machine run` with the static programs and
/// QEMU copied in; for `--output json` or `--plot` it asks for JSON inside and renders the
/// report here, so that the chart lands on the host.
fn run_in_machine(
    bench: &ModelsBench,
    probe: Option<&Path>,
    netbench: Option<&Path>,
) -> anyhow::Result<()> {
    let qemu = crate::machine::assets::find_qemu().ok();
    let mut copies: Vec<(&Path, &str)> = Vec::new();
    let mut env = Vec::new();
    if let Some(probe) = probe {
        copies.push((probe, MACHINE_PROBE));
        env.push(format!("{}={MACHINE_PROBE}", super::isolation::PROBE_ENV));
    }
    if let Some(netbench) = netbench {
        copies.push((netbench, MACHINE_NETBENCH));
        env.push(format!("{}={MACHINE_NETBENCH}", super::net::NETBENCH_ENV));
    }
    // crun and strace: every L1 carries them where this host has them.
    if let Some(qemu) = &qemu {
        copies.push((qemu, "/usr/bin/qemu-system-x86_64"));
        copies.push((Path::new("/usr/share/qemu"), "/usr/share/qemu"));
    }
    let only: Vec<&str> = bench.parts().iter().map(|p| p.as_str()).collect();
    let mut args: Vec<String> = [
        "bench",
        "models",
        "--runs",
        &bench.runs.to_string(),
        "--pods",
        &bench.pods.to_string(),
        "--only",
        &only.join(","),
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
        "models",
        &copies,
        &env,
        args,
        bench.output,
        bench.plot.as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_strace_summary_gives_its_distinct_syscalls() {
        let text = "% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 40.00    0.000040           4        10           read
 30.00    0.000030           3        10         2 openat
 30.00    0.000030          30         1           clone3
------ ----------- ----------- --------- --------- ----------------
100.00    0.000100           4        21         2 total
";
        let names: Vec<String> = strace_summary_syscalls(text).into_iter().collect();
        assert_eq!(names, ["clone3", "openat", "read"]);
        assert!(strace_summary_syscalls("").is_empty());
    }

    #[test]
    fn the_vmm_allows_some_tens_of_syscalls() {
        let n = vmm_allow_list_size();
        assert!((10..200).contains(&n), "{n}");
    }

    fn measured(values: &[f64]) -> Outcome {
        Outcome::Measured(Samples::from_values(values.iter().copied()).unwrap())
    }

    #[test]
    fn parts_default_to_all_in_order_once() {
        let mut bench = ModelsBench {
            runs: 1,
            pods: 2,
            only: Vec::new(),
            kernel: None,
            agent_initrd: None,
            output: OutputFormat::Markdown,
            plot: None,
        };
        assert_eq!(bench.parts(), Part::ALL);
        bench.only = vec![Part::Syscalls, Part::Start, Part::Syscalls];
        assert_eq!(bench.parts(), [Part::Start, Part::Syscalls]);
    }

    #[test]
    fn the_ppid_comes_after_the_command() {
        assert_eq!(stat_ppid("42 (sleep) S 7 42 42 0 -1"), Some(7));
        assert_eq!(stat_ppid("43 (a) b) (c) R 9 1 1"), Some(9));
        assert_eq!(stat_ppid("44 (x"), None);
        assert_eq!(stat_ppid(""), None);
    }

    #[test]
    fn descendants_follow_the_tree() {
        let parents: BTreeMap<u32, u32> = [(2, 1), (3, 2), (4, 3), (5, 1), (6, 99), (7, 6)].into();
        assert_eq!(descendants(&[2], &parents), [2, 3, 4].into());
        assert_eq!(descendants(&[6, 5], &parents), [5, 6, 7].into());
        assert_eq!(descendants(&[50], &parents), [50].into());
    }

    #[test]
    fn pss_and_meminfo_fields_read_in_kib() {
        let rollup = "00400000-7fff [rollup]\nRss:     3000 kB\nPss:     1234 kB\n\
                      Pss_Anon:  1000 kB\n";
        assert_eq!(kib_field(rollup, "Pss:"), Some(1234));
        assert_eq!(kib_field(rollup, "Pss_Anon:"), Some(1000));
        assert_eq!(kib_field(rollup, "Swap:"), None);
        assert_eq!(kib_field("MemAvailable:   x kB", "MemAvailable:"), None);
    }

    const SMAPS: &str = "\
55d0-55e0 r-xp 00000000 fd:01 123 /usr/bin/peapod-vmm
Size:               4096 kB
Rss:                2000 kB
7f00-7f10 rw-p 00000000 00:00 0
Size:             262144 kB
Rss:               40960 kB
7f20-7f30 rw-p 00000000 00:00 0
Size:               8192 kB
Rss:                1024 kB
";

    #[test]
    fn the_guest_ram_mapping_is_told_from_the_vmm() {
        let m = vmm_memory(SMAPS, 262_144).unwrap();
        assert_eq!(m.guest_touched_mib, 40.0);
        assert_eq!(m.overhead_mib, 3024.0 / 1024.0);
        let e = vmm_memory(SMAPS, 100).unwrap_err();
        assert!(e.contains("0 anonymous mappings"), "{e}");
        let twice = format!("{SMAPS}7f40-7f50 rw-p 00000000 00:00 0\nSize: 262144 kB\nRss: 1 kB\n");
        assert!(
            vmm_memory(&twice, 262_144)
                .unwrap_err()
                .contains("2 anonymous")
        );
        assert!(vmm_memory(SMAPS, 0).is_err());
        // a file mapping of the guest's size is not guest RAM
        let file = SMAPS.replace("4096 kB\nRss:                2000", "262144 kB\nRss: 2000");
        assert_eq!(vmm_memory(&file, 262_144).unwrap().guest_touched_mib, 40.0);
    }

    #[test]
    fn ps_json_gives_each_pods_status_word() {
        let listed = r#"{"id":"a","name":"p0","status":"running","status_text":"Up"}
{"id":"b","name":"p1","status":"created","status_text":"Created"}
{"id":"c","name":"p2","status":{"exited":{"code":0}},"status_text":"Exited (0)"}
"#;
        let states = pod_states(listed).unwrap();
        assert_eq!(states["p0"], "running");
        assert_eq!(states["p1"], "created");
        assert_eq!(states["p2"], "exited");
        assert!(pod_states("POD ID NAME").is_err());
        assert!(pod_states("").unwrap().is_empty());
    }

    #[test]
    fn rows_take_crun_as_baseline_where_it_is_in_them_else_the_vm() {
        let m = metric(
            "start",
            "ms",
            true,
            0,
            vec![(VM, measured(&[10.0])), (CRUN, measured(&[5.0]))],
        );
        assert_eq!(m.baseline.as_deref(), Some(CRUN));
        assert_eq!(m.ratio(VM, CRUN), Some(2.0));
        let m = metric(
            "net",
            "µs",
            true,
            0,
            vec![(VM, measured(&[1.0])), (CONTAINER, measured(&[1.0]))],
        );
        assert_eq!(m.baseline.as_deref(), Some(VM));
        assert_eq!(metric("x", "s", true, 0, vec![]).baseline, None);
    }

    #[test]
    fn several_rows_per_run_split_into_metrics() {
        let mut a = 0.0;
        let rows = measure_rows::<2>(
            3,
            vec![
                (
                    VM,
                    Box::new(move |_| {
                        a += 1.0;
                        Ok([a, a * 10.0])
                    }),
                ),
                (CRUN, Box::new(|_| Err("no crun here".to_string()))),
            ],
        );
        assert_eq!(rows[0][0], (VM, measured(&[1.0, 2.0, 3.0])));
        assert_eq!(rows[1][0], (VM, measured(&[10.0, 20.0, 30.0])));
        assert_eq!(rows[1][1], (CRUN, Outcome::not_run("no crun here")));
        let nan = row_outcome::<1>(&Ok(vec![[f64::NAN]]), 0);
        assert!(matches!(nan, Outcome::NotRun { .. }));
    }

    #[test]
    fn a_report_of_the_rows_renders() {
        let mut report = Report::new(
            "t",
            vec![
                Subject::new(VM),
                Subject::new(CONTAINER),
                Subject::new(CRUN),
                Subject::new(QEMU),
            ],
        );
        report.metrics.push(metric(
            "start: command to first output",
            "ms",
            true,
            0,
            vec![
                (VM, measured(&[900.0, 1000.0, 1100.0])),
                (CONTAINER, measured(&[100.0])),
                (CRUN, measured(&[50.0])),
                (QEMU, Outcome::not_run("no /dev/vhost-vsock here")),
            ],
        ));
        report.metrics.push(metric(
            "memory: guest RAM touched",
            "MiB",
            true,
            1,
            vec![(VM, measured(&[40.0]))],
        ));
        let table = report.markdown_table().unwrap();
        assert_eq!(
            table[2],
            "| start: command to first output (ms) | 1000 (900–1100) | 100 (100–100) | 50 (50–50) \
             | not run: no /dev/vhost-vsock here | 20.00x | 2.00x | - |"
        );
        assert_eq!(
            table[3],
            "| memory: guest RAM touched (MiB) | 40.0 (40.0–40.0) | - | - | - | - | - | - |"
        );
        assert!(report.svg().unwrap().contains("</svg>"));
    }

    #[test]
    fn the_fileio_pod_is_a_pod_with_an_empty_dir() {
        let yaml = fileio_pod_yaml("fio-vm-0");
        let docs = crate::pod::kube::parse_documents(&yaml).unwrap();
        assert_eq!(docs.pods.len(), 1);
        assert_eq!(docs.pods[0].name, "fio-vm-0");
        assert!(yaml.contains("emptyDir: {}") && yaml.contains(SCRATCH));
    }
}
