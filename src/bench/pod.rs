//! `peapod bench pod`: what the guest agent and the container add to a bare boot.
//!
//! Interleaved per run, on the same kernel:
//! - a **bare boot**: `peapod vm boot` of the test initramfs (a shell script as init), from
//!   spawning the VMM to the init's marker on the console (as `peapod bench boot` measures);
//! - a **pod start**: `peapod vm run-container --image peapod/busybox:latest --timing -- echo`,
//!   from spawning the peapod command to the container's first output byte on its stdout, with
//!   the split `--timing` reports (VMM spawned → agent ready → container created → started →
//!   first output).
//!
//! - a **plain container** (where `crun` is installed): `crun run` of the same image's
//!   unpacked root with the same `echo`, from spawning crun to the first output byte: the
//!   container-without-a-VM peer. In the test bed crun runs in the L1 (emulated by TCG, so
//!   slower than on a host; the pod VM runs one level further down with nested AMD-V), with
//!   `--no-pivot` because the L1's root is its initramfs, where pivot_root is refused.
//!
//! - **to exit**: `peapod run --rm IMAGE true` (through the pod's supervisor, until the pod
//!   is removed), `peapod vm run-container --image IMAGE -- true` and `crun run` of `true`,
//!   each from spawning the command to its exit, with the ratios of `run --rm` to the other
//!   two.
//!
//! After the runs, `peapod ps` (spawn → exit, median and range of [`PS_RUNS`]) with no pods,
//! and with `--pods-for-ps` (default 10) detached pods running (`run -d --memory 96m ...
//! sleep 600`, started one after the other); the goal is at most 50 ms with 10 pods in the test bed.
//!
//! The pods live in a private `PEAPOD_ROOT` and `PEAPOD_RUN_DIR` (a temp dir, whose root is
//! also the image store of the `vm run-container` runs), so the bench never sees a user's
//! pods; [`BenchPods`] force-removes every pod in it when it is dropped, after success, an
//! error or a panic, and SIGINT/SIGTERM/SIGHUP make the bench stop at the next step and
//! clean up rather than die.
//!
//! The goal of the agent issue: agent + container add at most 50% to the bare boot. First,
//! uncounted `vm run-container` and `run --rm` runs fill the image store's block-image cache,
//! so runs measure starts, not image conversion. Like `bench boot`, it runs itself in the test bed where the host has no
//! hardware KVM (`peapod machine run` carries the guest kernel and agent initramfs in).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::boot::boot_once;
use super::{median, ratio};
use crate::pod::id::{ID_LEN, PodId};
use crate::pod::layout::PodDirs;
use crate::vmm::boot::linux::DEFAULT_CMDLINE;

/// What the container prints.
pub(super) const POD_MARKER: &str = "PEAPOD_POD_OUTPUT";
const IMAGE: &str = "peapod/busybox:latest";
/// Timed `peapod ps` runs for each ps row.
const PS_RUNS: usize = 20;
/// How long the detached pods of the ps rows may take until all are Running.
const PODS_UP_LIMIT: Duration = Duration::from_secs(120);
/// The goal for `peapod ps` with 10 pods running, in the test bed.
const PS_GOAL: &str = "<= 50 ms";
/// The longest path a Unix socket can be bound at (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

pub struct PodBench {
    pub runs: usize,
    pub kernel: PathBuf,
    /// The test initramfs for the bare boot (rootfs/build-test-initramfs.sh).
    pub test_initrd: PathBuf,
    /// The agent initramfs for the pods (rootfs/build-agent-initramfs.sh).
    pub agent_initrd: PathBuf,
    /// Detached pods running while `peapod ps` is timed (0: no ps rows).
    pub pods_for_ps: usize,
}

/// One pod start, in ms from spawning `peapod vm run-container`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct PodSample {
    /// Measured here: spawn → the first byte of the container's stdout.
    pub(super) first_output: Duration,
    /// From the command's `--timing` line (ms from the VMM's spawn): the agent's boot signal
    /// (the kernel has booted and run init), when the guest sent one.
    kernel_booted_ms: Option<f64>,
    agent_ready_ms: f64,
    container_started_ms: f64,
}

/// Spawn → exit of one `true`, medians over the runs.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ExitTimes {
    /// `peapod run --rm IMAGE true`: through the pod's supervisor, until the pod is removed.
    run_rm: Duration,
    /// `peapod vm run-container --image IMAGE -- true`: the VM tied to the command.
    vm: Duration,
    /// `crun run` of the image's root, where crun is installed.
    crun: Option<Duration>,
}

/// `peapod ps` (spawn → exit) with no pods and with `pods` pods running.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PsTimes {
    pods: usize,
    empty: Spread,
    full: Spread,
}

/// The median of some durations and their range.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Spread {
    median: Duration,
    min: Duration,
    max: Duration,
}

impl Spread {
    /// Zeros for no samples.
    fn of(samples: &[Duration]) -> Spread {
        Spread {
            median: median(samples.to_vec()),
            min: samples.iter().min().copied().unwrap_or_default(),
            max: samples.iter().max().copied().unwrap_or_default(),
        }
    }

    /// `12.3 (10.1–15.0)`, in ms.
    fn ms_text(&self) -> String {
        format!(
            "{:.1} ({:.1}–{:.1})",
            ms(self.median),
            ms(self.min),
            ms(self.max)
        )
    }
}

/// Set when SIGINT, SIGTERM or SIGHUP reaches the bench: it stops at the next step and
/// removes its pods instead of dying with them running (the signal's default action).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn not_interrupted() -> anyhow::Result<()> {
    anyhow::ensure!(
        !INTERRUPTED.load(Ordering::Relaxed),
        "interrupted; removing the bench's pods"
    );
    Ok(())
}

pub fn run(bench: &PodBench) -> anyhow::Result<()> {
    if !super::kvm_here("pod")? {
        return run_in_machine(bench);
    }
    // Before any thread starts, so that all of them leave these signals to the watcher. A
    // second signal ends the bench at once (a child that ignores the first may hang it).
    crate::cli::tty::forward_signals(|_| !INTERRUPTED.swap(true, Ordering::Relaxed))
        .context("watching for SIGINT")?;
    let peapod = std::env::current_exe()?;
    let vmm = crate::vmm::program::VmmProgram::find()?;
    // Dropped on every way out of this function (after what is declared below it): its
    // pods are force-removed.
    let pods = BenchPods::new(&peapod, &bench.kernel, &bench.agent_initrd)?;
    let store = pods.root();
    let pod_command = |timing: bool, command: &[&str]| {
        let mut pod = Command::new(&peapod);
        pod.args(["vm", "run-container"]);
        if timing {
            pod.arg("--timing");
        }
        pod.args(["--image", IMAGE])
            .arg("--store")
            .arg(&store)
            .arg("--kernel")
            .arg(&bench.kernel)
            .arg("--initrd")
            .arg(&bench.agent_initrd)
            .arg("--")
            .args(command);
        pod
    };
    pod_once(pod_command(true, &["echo", POD_MARKER]), true)
        .context("the warm-up pod (block image of the built-in image)")?;
    exit_once(pods.run(&["--rm", IMAGE, "true"]))
        .context("the warm-up `peapod run --rm` (in a private PEAPOD_ROOT)")?;
    let crun = crate::machine::assets::find_in_path("crun");
    let bundles = match &crun {
        Some(_) => Some(crun_bundles(&peapod, &store).context("the crun bundles")?),
        None => {
            eprintln!("bench pod: no crun here (apt-get install crun): no plain-container column");
            None
        }
    };
    let crun_run = |bundle: &Path, name: String| {
        let mut run = Command::new(crun.as_deref().unwrap_or(Path::new("crun")));
        run.arg("run");
        if std::env::var_os("PEAPOD_IN_MACHINE").is_some() {
            run.arg("--no-pivot");
        }
        run.arg("--bundle").arg(bundle).arg(name);
        run
    };

    let cmdline = format!("{DEFAULT_CMDLINE} quiet");
    let (mut bare, mut pod_runs, mut crun_runs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut run_rm_exits, mut vm_exits, mut crun_exits) = (Vec::new(), Vec::new(), Vec::new());
    let pid = std::process::id();
    for i in 0..bench.runs {
        not_interrupted()?;
        let mut vm = vmm.command();
        vm.args(["--console", "stdout"])
            .arg("--kernel")
            .arg(&bench.kernel)
            .arg("--initrd")
            .arg(&bench.test_initrd)
            .arg("--cmdline")
            .arg(&cmdline);
        let boot = boot_once(vm, 256).context("peapod vm boot")?.boot;
        let pod = pod_once(pod_command(true, &["echo", POD_MARKER]), true)
            .context("peapod vm run-container")?;
        let plain = match &bundles {
            Some(b) => Some(
                pod_once(
                    crun_run(b.echo.path(), format!("peapod-bench-{pid}-{i}")),
                    false,
                )
                .context("crun run")?
                .first_output,
            ),
            None => None,
        };
        not_interrupted()?;
        let (run_rm, _) =
            exit_once(pods.run(&["--rm", IMAGE, "true"])).context("peapod run --rm")?;
        let (vm_true, _) =
            exit_once(pod_command(false, &["true"])).context("peapod vm run-container -- true")?;
        let crun_true = match &bundles {
            Some(b) => Some(
                exit_once(crun_run(
                    b.true_.path(),
                    format!("peapod-bench-true-{pid}-{i}"),
                ))
                .context("crun run (true)")?
                .0,
            ),
            None => None,
        };
        let opt_ms = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.0} ms", ms(d)));
        eprintln!(
            "run {}: bare boot {:.0} ms; pod: agent ready {:.0} ms, container started {:.0} ms, \
             first output {:.0} ms; crun first output {}; to exit: run --rm {:.0} ms, \
             vm run-container {:.0} ms, crun {}",
            i + 1,
            ms(boot),
            pod.agent_ready_ms,
            pod.container_started_ms,
            ms(pod.first_output),
            opt_ms(plain),
            ms(run_rm),
            ms(vm_true),
            opt_ms(crun_true),
        );
        if let Some(d) = plain {
            crun_runs.push(d);
        }
        if let Some(d) = crun_true {
            crun_exits.push(d);
        }
        bare.push(boot);
        pod_runs.push(pod);
        run_rm_exits.push(run_rm);
        vm_exits.push(vm_true);
    }
    let exits = ExitTimes {
        run_rm: median(run_rm_exits),
        vm: median(vm_exits),
        crun: (!crun_exits.is_empty()).then(|| median(crun_exits)),
    };
    let ps = match bench.pods_for_ps {
        0 => None,
        n => Some(ps_times(&pods, n)?),
    };

    let bare = median(bare);
    println!(
        "peapod bench pod: {} runs, 1 vCPU, 256 MiB, medians; pod = `vm run-container --image \
         {IMAGE} -- echo`",
        bench.runs
    );
    println!("| measure | ms | vs bare boot | goal |");
    println!("|---|---|---|---|");
    let rows = start_rows(bare, &pod_runs, crun_runs)
        .into_iter()
        .chain(exit_rows(&exits, bare))
        .chain(ps.as_ref().map(ps_rows).unwrap_or_default());
    for line in rows {
        println!("{line}");
    }
    Ok(())
}

/// The pod-start rows: the bare boot, the split of `vm run-container`'s start, its first
/// output, and crun's (where it ran).
fn start_rows(bare: Duration, pod_runs: &[PodSample], crun_runs: Vec<Duration>) -> Vec<String> {
    let mut rows = Vec::new();
    let first = median(pod_runs.iter().map(|p| p.first_output).collect());
    let mid = |f: fn(&PodSample) -> f64| {
        let mut v: Vec<f64> = pod_runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (agent, started) = (mid(|p| p.agent_ready_ms), mid(|p| p.container_started_ms));
    rows.push(row(
        "bare boot: VMM start to init (test initramfs)",
        &format!("{:.0}", ms(bare)),
        "1.00x",
        "",
    ));
    let booted: Vec<f64> = pod_runs.iter().filter_map(|p| p.kernel_booted_ms).collect();
    if booted.len() == pod_runs.len() {
        let mut booted = booted;
        booted.sort_by(f64::total_cmp);
        let kernel = booted[booted.len() / 2];
        rows.push(row(
            "pod: VMM start to kernel booted (the agent's boot signal)",
            &format!("{kernel:.0}"),
            &format!("{:.2}x", kernel / ms(bare).max(1.0)),
            "",
        ));
    }
    rows.push(row(
        "pod: VMM spawn to agent ready",
        &format!("{agent:.0}"),
        &format!("{:.2}x", agent / ms(bare).max(1.0)),
        "",
    ));
    rows.push(row(
        "pod: VMM spawn to container started",
        &format!("{started:.0}"),
        &format!("{:.2}x", started / ms(bare).max(1.0)),
        "",
    ));
    rows.push(row(
        "pod: command to container's first output",
        &format!("{:.0}", ms(first)),
        &ratio(first, bare),
        "<= 1.50x",
    ));
    if !crun_runs.is_empty() {
        let plain = median(crun_runs);
        rows.push(row(
            "plain container (crun run, no VM): command to first output",
            &format!("{:.0}", ms(plain)),
            &ratio(plain, bare),
            "",
        ));
        rows.push(row(
            "pod / plain container (the price of the VM)",
            "",
            &ratio(first, plain),
            "",
        ));
    }
    rows
}

/// One row of the table: `| measure | ms | vs bare boot (or the ratio the measure names) |
/// goal |`, an empty cell as `| |`.
fn row(measure: &str, ms: &str, ratio: &str, goal: &str) -> String {
    let cells = [measure, ms, ratio, goal].map(|c| match c {
        "" => " ".to_string(),
        c => format!(" {c} "),
    });
    format!("|{}|", cells.join("|"))
}

/// The rows of `true` run to its exit: `run --rm`, `vm run-container`, crun, and the ratios
/// of `run --rm` to the other two.
fn exit_rows(t: &ExitTimes, bare: Duration) -> Vec<String> {
    let ms0 = |d: Duration| format!("{:.0}", ms(d));
    let mut rows = vec![
        row(
            &format!("`run --rm {IMAGE} true`: command to exit"),
            &ms0(t.run_rm),
            &ratio(t.run_rm, bare),
            "",
        ),
        row(
            &format!("`vm run-container --image {IMAGE} -- true`: command to exit"),
            &ms0(t.vm),
            &ratio(t.vm, bare),
            "",
        ),
    ];
    if let Some(crun) = t.crun {
        rows.push(row(
            "plain container (crun run `true`, no VM): command to exit",
            &ms0(crun),
            &ratio(crun, bare),
            "",
        ));
    }
    rows.push(row(
        "run --rm / vm run-container (the price of the supervisor)",
        "",
        &ratio(t.run_rm, t.vm),
        "",
    ));
    if let Some(crun) = t.crun {
        rows.push(row(
            "run --rm / plain container",
            "",
            &ratio(t.run_rm, crun),
            "",
        ));
    }
    rows
}

/// The `peapod ps` rows: median (min–max) with none and with `pods` pods running, and their
/// ratio. The goal is set for 10 pods.
fn ps_rows(p: &PsTimes) -> Vec<String> {
    let runs = format!("median (min–max) of {PS_RUNS}");
    vec![
        row(
            &format!("`ps` with 0 pods: command to exit, {runs}"),
            &p.empty.ms_text(),
            "",
            "",
        ),
        row(
            &format!("`ps` with {} pods running: command to exit, {runs}", p.pods),
            &p.full.ms_text(),
            "",
            if p.pods == 10 { PS_GOAL } else { "" },
        ),
        row(
            &format!("ps {} pods / ps 0 pods", p.pods),
            "",
            &ratio(p.full.median, p.empty.median),
            "",
        ),
    ]
}

/// Times `peapod ps` with no pods, starts `n` detached pods, waits until `ps`
/// lists all of them Running, times `ps` again, and removes them (as `pods` does on error).
fn ps_times(pods: &BenchPods, n: usize) -> anyhow::Result<PsTimes> {
    let left = pods
        .remove_all()
        .context("removing pods before the ps rows")?;
    if left > 0 {
        eprintln!("bench pod: `run --rm` left {left} pods behind (removed)");
    }
    let empty = time_ps(pods).context("peapod ps with no pods")?;
    let names: Vec<String> = (0..n).map(|i| format!("bench-ps{i}")).collect();
    // One after the other: `ps` is what is measured, and ten pod VMs booting at once have
    // been seen to lock up the emulated test bed's L1 (a soft lockup in its KVM).
    for name in &names {
        not_interrupted()?;
        let out = pods
            .run(&[
                "-d", "--memory", "96m", "--name", name, IMAGE, "sleep", "600",
            ])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("peapod run -d --name {name}"))?;
        anyhow::ensure!(
            out.status.success(),
            "peapod run -d --name {name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let deadline = Instant::now() + PODS_UP_LIMIT;
    loop {
        not_interrupted()?;
        let listed = pods.output(&["ps", "--format", "json"])?;
        let running = running_in_ps_json(&listed)?;
        if running == n {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{running} of {n} pods Running after {PODS_UP_LIMIT:?}; ps:\n{listed}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let full = time_ps(pods).with_context(|| format!("peapod ps with {n} pods"))?;
    pods.remove_all()
        .context("removing the pods of the ps rows")?;
    Ok(PsTimes {
        pods: n,
        empty,
        full,
    })
}

/// `PS_RUNS` runs of `peapod ps`, spawn → exit.
fn time_ps(pods: &BenchPods) -> anyhow::Result<Spread> {
    let mut samples = Vec::with_capacity(PS_RUNS);
    for _ in 0..PS_RUNS {
        not_interrupted()?;
        samples.push(exit_once(pods.peapod(&["ps"]))?.0);
    }
    Ok(Spread::of(&samples))
}

/// How many pods `ps --format json` lists as Running: one object per line, whose `status`
/// is the serialized `PodStatus` (`"running"`; `{"exited":{"code":0}}` for an exited pod).
pub(super) fn running_in_ps_json(text: &str) -> anyhow::Result<usize> {
    let mut running = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let pod: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("ps printed a line that is not JSON: {line}"))?;
        if pod.get("status") == Some(&serde_json::Value::from("running")) {
            running += 1;
        }
    }
    Ok(running)
}

/// A pod world of the bench's own: its `PEAPOD_ROOT` (also the image store of every peapod
/// command here) and `PEAPOD_RUN_DIR` in a temp dir, so it never sees or touches a user's
/// pods. Dropping it (after success, an error or a panic) force-removes every pod still in
/// it; where that fails, the temp dir is kept and named so that the pods can be removed by
/// hand.
pub(super) struct BenchPods {
    peapod: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    dir: tempfile::TempDir,
}

impl BenchPods {
    pub(super) fn new(peapod: &Path, kernel: &Path, initrd: &Path) -> anyhow::Result<Self> {
        // A short name: the supervisors' sockets lie three levels below.
        let dir = tempfile::Builder::new()
            .prefix("pbench-")
            .tempdir()
            .context("creating the bench's pod root")?;
        let pods = BenchPods {
            peapod: peapod.to_path_buf(),
            kernel: kernel.to_path_buf(),
            initrd: initrd.to_path_buf(),
            dir,
        };
        check_socket_room(&pods.run_dir())?;
        Ok(pods)
    }

    pub(super) fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub(super) fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// `peapod ARGS` in this pod world.
    pub(super) fn peapod(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.peapod);
        c.args(args)
            .env("PEAPOD_ROOT", self.root())
            .env("PEAPOD_RUN_DIR", self.run_dir());
        c
    }

    /// `peapod run` on the bench's kernel and agent initramfs, then ARGS.
    pub(super) fn run(&self, args: &[&str]) -> Command {
        let mut c = self.peapod(&["run"]);
        c.arg("--kernel")
            .arg(&self.kernel)
            .arg("--initrd")
            .arg(&self.initrd)
            .args(args);
        c
    }

    /// The stdout of `peapod ARGS`, which must succeed.
    pub(super) fn output(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .peapod(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running peapod {}", args.join(" ")))?;
        anyhow::ensure!(
            out.status.success(),
            "peapod {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `rm -f` of every pod here, running or not; how many there were.
    pub(super) fn remove_all(&self) -> anyhow::Result<usize> {
        let listed = self.output(&["ps", "-aq"])?;
        let ids: Vec<&str> = listed.split_whitespace().collect();
        if !ids.is_empty() {
            let mut rm = vec!["rm", "-f"];
            rm.extend(&ids);
            self.output(&rm)?;
        }
        Ok(ids.len())
    }
}

impl Drop for BenchPods {
    fn drop(&mut self) {
        if let Err(e) = self.remove_all() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "bench: cannot remove the bench's pods: {e:#}\n  remove them with: \
                 export PEAPOD_ROOT={} PEAPOD_RUN_DIR={}; peapod rm -f $(peapod ps -aq)",
                self.root().display(),
                self.run_dir().display()
            );
        }
    }
}

/// Refuses a run directory too deep for the supervisors' sockets (`RUN/<id>/supervisor.sock`).
fn check_socket_room(run_dir: &Path) -> anyhow::Result<()> {
    let any_id = PodId::parse(&"0".repeat(ID_LEN)).expect("a valid id");
    let socket = PodDirs::new(run_dir, "/").socket_path(&any_id);
    let len = socket.as_os_str().len();
    anyhow::ensure!(
        len <= MAX_SOCKET_PATH,
        "the pods' sockets under {} would be {len} bytes long, more than a Unix socket takes \
         ({MAX_SOCKET_PATH}): set TMPDIR to a shorter directory",
        run_dir.display()
    );
    Ok(())
}

/// The crun bundles: the built-in image unpacked by peapod once, and crun's default spec
/// with no terminal and the pods' commands.
struct CrunBundles {
    /// `echo POD_MARKER`, with the unpacked root.
    echo: tempfile::TempDir,
    /// `true`, on the same root.
    true_: tempfile::TempDir,
}

fn crun_bundles(peapod: &Path, store: &Path) -> anyhow::Result<CrunBundles> {
    let bundle = || {
        tempfile::Builder::new()
            .prefix("peapod-bench-crun-")
            .tempdir()
    };
    let (echo, true_) = (bundle()?, bundle()?);
    let rootfs = echo.path().join("rootfs");
    let out = Command::new(peapod)
        .args(["image", "unpack", "--root"])
        .arg(store)
        .arg(IMAGE)
        .arg(&rootfs)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "peapod image unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("crun")
        .arg("spec")
        .current_dir(echo.path())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "crun spec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = echo.path().join("config.json");
    let default: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let echo_spec = crun_spec(default.clone(), &["echo", POD_MARKER], None)?;
    std::fs::write(&path, serde_json::to_vec_pretty(&echo_spec)?)?;
    let true_spec = crun_spec(default, &["true"], Some(&rootfs))?;
    std::fs::write(
        true_.path().join("config.json"),
        serde_json::to_vec_pretty(&true_spec)?,
    )?;
    Ok(CrunBundles { echo, true_ })
}

/// crun's default spec with no terminal, `args` as the process, and `root` as its root
/// (default: the bundle's `rootfs`).
pub(super) fn crun_spec(
    mut spec: serde_json::Value,
    args: &[&str],
    root: Option<&Path>,
) -> anyhow::Result<serde_json::Value> {
    let process = spec
        .get_mut("process")
        .and_then(|p| p.as_object_mut())
        .context("crun's spec has no process")?;
    process.insert("terminal".into(), false.into());
    process.insert("args".into(), serde_json::json!(args));
    if let Some(root) = root {
        let root_entry = spec
            .get_mut("root")
            .and_then(|r| r.as_object_mut())
            .context("crun's spec has no root")?;
        root_entry.insert("path".into(), root.to_string_lossy().into_owned().into());
    }
    Ok(spec)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `command` to its exit: the time from spawning it to its exit (its output is read to
/// the end on threads, not timed), and its stdout. It must succeed.
pub(super) fn exit_once(mut command: Command) -> anyhow::Result<(Duration, String)> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command.spawn()?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let status = child.wait()?;
    let took = started.elapsed();
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    anyhow::ensure!(status.success(), "it failed ({status}); stderr:\n{stderr}");
    Ok((took, stdout))
}

/// Runs one pod; returns when its command has exited.
/// `timed`: the command is peapod's, with a `--timing` line to parse.
pub(super) fn pod_once(mut command: Command, timed: bool) -> anyhow::Result<PodSample> {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let mut stderr_pipe = child.stderr.take().context("no stderr")?;
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let mut output = vec![0u8; 1];
    let got = stdout.read(&mut output)?;
    let first_output = started.elapsed();
    output.truncate(got);
    stdout.read_to_end(&mut output)?;
    let status = child.wait()?;
    let stderr = stderr_reader.join().unwrap_or_default();
    anyhow::ensure!(
        status.success() && String::from_utf8_lossy(&output).contains(POD_MARKER),
        "the pod failed ({status}); stderr:\n{stderr}"
    );
    if !timed {
        return Ok(PodSample {
            first_output,
            ..PodSample::default()
        });
    }
    let mut sample = parse_timing(&stderr)
        .with_context(|| format!("no run-timing line in its stderr:\n{stderr}"))?;
    sample.first_output = first_output;
    Ok(sample)
}

/// The split from `run-timing: agent_ready_ms=.. container_created_ms=.. ...`.
fn parse_timing(stderr: &str) -> Option<PodSample> {
    let line = stderr.lines().find(|l| l.starts_with("run-timing:"))?;
    let field = |name: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    Some(PodSample {
        first_output: Duration::ZERO,
        kernel_booted_ms: field("kernel_booted_ms"),
        agent_ready_ms: field("agent_ready_ms")?,
        container_started_ms: field("container_started_ms")?,
    })
}

/// Re-runs this benchmark inside `peapod machine run` with the test initramfs copied in (the
/// guest kernel and agent initramfs are carried in by default; here they are named anyway so
/// that the ones given on this command line are used).
fn run_in_machine(bench: &PodBench) -> anyhow::Result<()> {
    let crun = crate::machine::assets::find_in_path("crun");
    let mut copies: Vec<(&Path, &str)> = vec![
        (&bench.kernel, "/opt/peapod-bench/vmlinux"),
        (&bench.test_initrd, "/opt/peapod-bench/test-initrd"),
        (&bench.agent_initrd, "/opt/peapod-bench/agent-initrd"),
    ];
    if let Some(crun) = &crun {
        copies.push((crun, "/usr/bin/crun"));
    }
    let env = [
        "PEAPOD_GUEST_KERNEL=/opt/peapod-bench/vmlinux",
        "PEAPOD_AGENT_INITRAMFS=/opt/peapod-bench/agent-initrd",
    ]
    .map(String::from);
    let args = [
        "bench",
        "pod",
        "--kernel",
        "/opt/peapod-bench/vmlinux",
        "--test-initrd",
        "/opt/peapod-bench/test-initrd",
        "--agent-initrd",
        "/opt/peapod-bench/agent-initrd",
        "--runs",
        &bench.runs.to_string(),
        "--pods-for-ps",
        &bench.pods_for_ps.to_string(),
    ]
    .map(String::from);
    super::run_inside_machine(&copies, &env, &args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timing_line_is_parsed() {
        let stderr = "something\nrun-timing: agent_ready_ms=1997.4 container_created_ms=2370.5 \
                      container_started_ms=2489.9 first_output_ms=2612.0 exited_ms=2671.9 \
                      vm_down_ms=2887.5\n";
        let s = parse_timing(stderr).unwrap();
        assert_eq!(s.agent_ready_ms, 1997.4);
        assert_eq!(s.kernel_booted_ms, None);
        let with_boot =
            "run-timing: kernel_booted_ms=1500.5 agent_ready_ms=1 container_started_ms=2";
        assert_eq!(
            parse_timing(with_boot).unwrap().kernel_booted_ms,
            Some(1500.5)
        );
        assert_eq!(s.container_started_ms, 2489.9);
        assert!(parse_timing("no timing here").is_none());
        assert!(parse_timing("run-timing: agent_ready_ms=x").is_none());
    }

    const fn msd(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_spread_is_the_median_and_the_range() {
        let s = Spread::of(&[msd(12), msd(30), msd(10), msd(11), msd(13)]);
        assert_eq!((s.median, s.min, s.max), (msd(12), msd(10), msd(30)));
        assert_eq!(s.ms_text(), "12.0 (10.0–30.0)");
        assert_eq!(Spread::of(&[]), Spread::default());
    }

    #[test]
    fn exit_rows_compare_run_rm_with_vm_run_container_and_crun() {
        let t = ExitTimes {
            run_rm: msd(3000),
            vm: msd(2000),
            crun: Some(msd(150)),
        };
        let rows = exit_rows(&t, msd(1500));
        assert_eq!(
            rows,
            [
                "| `run --rm peapod/busybox:latest true`: command to exit | 3000 | 2.00x | |",
                "| `vm run-container --image peapod/busybox:latest -- true`: command to exit \
                 | 2000 | 1.33x | |",
                "| plain container (crun run `true`, no VM): command to exit | 150 | 0.10x | |",
                "| run --rm / vm run-container (the price of the supervisor) | | 1.50x | |",
                "| run --rm / plain container | | 20.00x | |",
            ]
        );
        let no_crun = exit_rows(&ExitTimes { crun: None, ..t }, msd(1500));
        assert_eq!(no_crun.len(), 3);
        assert!(
            !no_crun
                .iter()
                .any(|r| r.contains("crun") || r.contains("plain"))
        );
    }

    #[test]
    fn ps_rows_show_median_and_range_and_the_goal_at_ten_pods() {
        let p = PsTimes {
            pods: 10,
            empty: Spread::of(&[msd(4), msd(5), msd(6)]),
            full: Spread::of(&[msd(9), msd(10), msd(14)]),
        };
        let rows = ps_rows(&p);
        assert_eq!(
            rows,
            [
                "| `ps` with 0 pods: command to exit, median (min–max) of 20 \
                 | 5.0 (4.0–6.0) | | |",
                "| `ps` with 10 pods running: command to exit, median (min–max) of 20 \
                 | 10.0 (9.0–14.0) | | <= 50 ms |",
                "| ps 10 pods / ps 0 pods | | 2.00x | |",
            ]
        );
        let three = ps_rows(&PsTimes { pods: 3, ..p });
        assert!(three[1].contains("with 3 pods") && !three[1].contains("50 ms"));
    }

    #[test]
    fn running_pods_are_counted_from_ps_json() {
        let listed = r#"{"id":"a","name":"bench-ps0","status":"running","status_text":"Up 1 second"}
{"id":"b","name":"bench-ps1","status":"created","status_text":"Created"}
{"id":"c","name":"bench-ps2","status":{"exited":{"code":0}},"status_text":"Exited (0)"}
{"id":"d","name":"bench-ps3","status":"running","status_text":"Up 2 seconds"}
"#;
        assert_eq!(running_in_ps_json(listed).unwrap(), 2);
        assert_eq!(running_in_ps_json("").unwrap(), 0);
        assert!(running_in_ps_json("POD ID  NAME\n").is_err());
    }

    #[test]
    fn ps_json_status_is_what_the_pod_state_serializes() {
        // running_in_ps_json matches this text; a change in PodStatus must show here.
        let running = serde_json::to_value(crate::pod::state::PodStatus::Running).unwrap();
        assert_eq!(running, serde_json::Value::from("running"));
    }

    #[test]
    fn crun_specs_get_the_command_and_a_shared_root() {
        let default = serde_json::json!({
            "process": {"terminal": true, "args": ["sh"]},
            "root": {"path": "rootfs", "readonly": true}
        });
        let echo = crun_spec(default.clone(), &["echo", "hi"], None).unwrap();
        assert_eq!(echo["process"]["args"], serde_json::json!(["echo", "hi"]));
        assert_eq!(echo["process"]["terminal"], false);
        assert_eq!(echo["root"]["path"], "rootfs");
        let shared = crun_spec(default, &["true"], Some(Path::new("/b/rootfs"))).unwrap();
        assert_eq!(shared["root"]["path"], "/b/rootfs");
        assert_eq!(shared["root"]["readonly"], true);
        assert!(crun_spec(serde_json::json!({}), &["true"], None).is_err());
    }

    #[test]
    fn a_run_dir_too_deep_for_the_sockets_is_refused() {
        assert!(check_socket_room(Path::new("/tmp/pbench-abcdef/run")).is_ok());
        let deep = format!("/tmp/{}/run", "d".repeat(40));
        let e = check_socket_room(Path::new(&deep)).unwrap_err().to_string();
        assert!(e.contains("TMPDIR"), "{e}");
    }

    #[test]
    fn start_rows_keep_their_columns() {
        let pod = |first, kernel| PodSample {
            first_output: msd(first),
            kernel_booted_ms: kernel,
            agent_ready_ms: 1000.0,
            container_started_ms: 1200.0,
        };
        let runs = [pod(1800, Some(700.0)), pod(2000, Some(800.0))];
        let rows = start_rows(msd(1600), &runs, vec![msd(160), msd(200)]);
        assert_eq!(
            rows,
            [
                "| bare boot: VMM start to init (test initramfs) | 1600 | 1.00x | |",
                "| pod: VMM start to kernel booted (the agent's boot signal) | 800 | 0.50x | |",
                "| pod: VMM spawn to agent ready | 1000 | 0.62x | |",
                "| pod: VMM spawn to container started | 1200 | 0.75x | |",
                "| pod: command to container's first output | 2000 | 1.25x | <= 1.50x |",
                "| plain container (crun run, no VM): command to first output | 200 | 0.12x | |",
                "| pod / plain container (the price of the VM) | | 10.00x | |",
            ]
        );
        let without = start_rows(msd(1600), &[pod(1800, None)], Vec::new());
        assert_eq!(without.len(), 4, "no kernel-booted row, no crun rows");
    }
}
