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
//! The goal of the agent issue: agent + container add at most 50% to the bare boot. A first,
//! uncounted pod run fills the image store's block-image cache, so runs measure starts, not
//! image conversion. Like `bench boot`, it runs itself in the test bed where the host has no
//! hardware KVM (`peapod machine run` carries the guest kernel and agent initramfs in).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::boot::boot_once;
use super::{median, ratio};
use crate::vmm::boot::linux::DEFAULT_CMDLINE;

/// What the container prints.
const POD_MARKER: &str = "PEAPOD_POD_OUTPUT";
const IMAGE: &str = "peapod/busybox:latest";

pub struct PodBench {
    pub runs: usize,
    pub kernel: PathBuf,
    /// The test initramfs for the bare boot (rootfs/build-test-initramfs.sh).
    pub test_initrd: PathBuf,
    /// The agent initramfs for the pods (rootfs/build-agent-initramfs.sh).
    pub agent_initrd: PathBuf,
}

/// One pod start, in ms from spawning `peapod vm run-container`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct PodSample {
    /// Measured here: spawn → the first byte of the container's stdout.
    first_output: Duration,
    /// From the command's `--timing` line (ms from the VMM's spawn): the agent's boot signal
    /// (the kernel has booted and run init), when the guest sent one.
    kernel_booted_ms: Option<f64>,
    agent_ready_ms: f64,
    container_started_ms: f64,
}

pub fn run(bench: &PodBench) -> anyhow::Result<()> {
    if !super::kvm_here("pod")? {
        return run_in_machine(bench);
    }
    let peapod = std::env::current_exe()?;
    let vmm = crate::vmm::program::VmmProgram::find()?;
    let store = tempfile::Builder::new()
        .prefix("peapod-bench-pod-")
        .tempdir()
        .context("creating the image store")?;
    let pod_command = || {
        let mut pod = Command::new(&peapod);
        pod.args(["vm", "run-container", "--timing", "--image", IMAGE])
            .arg("--store")
            .arg(store.path())
            .arg("--kernel")
            .arg(&bench.kernel)
            .arg("--initrd")
            .arg(&bench.agent_initrd)
            .args(["--", "echo", POD_MARKER]);
        pod
    };
    pod_once(pod_command(), true).context("the warm-up pod (block image of the built-in image)")?;
    let crun = crate::machine::assets::find_in_path("crun");
    let bundle = match &crun {
        Some(_) => Some(crun_bundle(&peapod, store.path()).context("the crun bundle")?),
        None => {
            eprintln!("bench pod: no crun here (apt-get install crun): no plain-container column");
            None
        }
    };

    let cmdline = format!("{DEFAULT_CMDLINE} quiet");
    let (mut bare, mut pods, mut crun_runs) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..bench.runs {
        let mut vm = vmm.command();
        vm.args(["--console", "stdout"])
            .arg("--kernel")
            .arg(&bench.kernel)
            .arg("--initrd")
            .arg(&bench.test_initrd)
            .arg("--cmdline")
            .arg(&cmdline);
        let boot = boot_once(vm, 256).context("peapod vm boot")?.boot;
        let pod = pod_once(pod_command(), true).context("peapod vm run-container")?;
        let plain = match (&crun, &bundle) {
            (Some(crun), Some(bundle)) => {
                let mut run = Command::new(crun);
                run.arg("run");
                if std::env::var_os("PEAPOD_IN_MACHINE").is_some() {
                    run.arg("--no-pivot");
                }
                run.arg("--bundle")
                    .arg(bundle.path())
                    .arg(format!("peapod-bench-{}-{i}", std::process::id()));
                Some(pod_once(run, false).context("crun run")?.first_output)
            }
            _ => None,
        };
        eprintln!(
            "run {}: bare boot {:.0} ms; pod: agent ready {:.0} ms, container started {:.0} ms, \
             first output {:.0} ms; crun first output {}",
            i + 1,
            ms(boot),
            pod.agent_ready_ms,
            pod.container_started_ms,
            ms(pod.first_output),
            plain.map_or("-".into(), |d| format!("{:.0} ms", ms(d)))
        );
        if let Some(d) = plain {
            crun_runs.push(d);
        }
        bare.push(boot);
        pods.push(pod);
    }

    let bare = median(bare);
    let first = median(pods.iter().map(|p| p.first_output).collect());
    let mid = |f: fn(&PodSample) -> f64| {
        let mut v: Vec<f64> = pods.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (agent, started) = (mid(|p| p.agent_ready_ms), mid(|p| p.container_started_ms));
    println!(
        "peapod bench pod: {} runs, 1 vCPU, 256 MiB, medians; pod = `vm run-container --image \
         {IMAGE} -- echo`",
        bench.runs
    );
    println!("| measure | ms | vs bare boot | goal |");
    println!("|---|---|---|---|");
    println!(
        "| bare boot: VMM start to init (test initramfs) | {:.0} | 1.00x | |",
        ms(bare)
    );
    let booted: Vec<f64> = pods.iter().filter_map(|p| p.kernel_booted_ms).collect();
    if booted.len() == pods.len() {
        let mut booted = booted;
        booted.sort_by(f64::total_cmp);
        let kernel = booted[booted.len() / 2];
        println!(
            "| pod: VMM start to kernel booted (the agent's boot signal) | {kernel:.0} | {:.2}x | |",
            kernel / ms(bare).max(1.0)
        );
    }
    println!(
        "| pod: VMM spawn to agent ready | {agent:.0} | {:.2}x | |",
        agent / ms(bare).max(1.0)
    );
    println!(
        "| pod: VMM spawn to container started | {started:.0} | {:.2}x | |",
        started / ms(bare).max(1.0)
    );
    println!(
        "| pod: command to container's first output | {:.0} | {} | <= 1.50x |",
        ms(first),
        ratio(first, bare)
    );
    if !crun_runs.is_empty() {
        let plain = median(crun_runs);
        println!(
            "| plain container (crun run, no VM): command to first output | {:.0} | {} | |",
            ms(plain),
            ratio(plain, bare)
        );
        println!(
            "| pod / plain container (the price of the VM) | | {} | |",
            ratio(first, plain)
        );
    }
    Ok(())
}

/// An OCI bundle for crun: the built-in image unpacked by peapod, and crun's default spec
/// with the same command as the pods and no terminal.
fn crun_bundle(peapod: &Path, store: &Path) -> anyhow::Result<tempfile::TempDir> {
    let bundle = tempfile::Builder::new()
        .prefix("peapod-bench-crun-")
        .tempdir()?;
    let rootfs = bundle.path().join("rootfs");
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
        .current_dir(bundle.path())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "crun spec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = bundle.path().join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let process = spec
        .get_mut("process")
        .and_then(|p| p.as_object_mut())
        .context("crun's spec has no process")?;
    process.insert("terminal".into(), false.into());
    process.insert("args".into(), serde_json::json!(["echo", POD_MARKER]));
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(bundle)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs one pod; returns when its command has exited.
/// `timed`: the command is peapod's, with a `--timing` line to parse.
fn pod_once(mut command: Command, timed: bool) -> anyhow::Result<PodSample> {
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
}
