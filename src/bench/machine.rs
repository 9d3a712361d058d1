//! `peapod bench machine`: what the test bed costs. peapod's `machine run -- true` against a
//! bare QEMU L1 with the same kernel, CPU model and size whose busybox init only loads the KVM
//! modules and powers off: the least any L1 with a /dev/kvm can do.
//!
//! With `--versus-qemu PATH`, also two setups of the test bed against each other: the QEMU
//! `machine` uses (`$PEAPOD_QEMU`, else the one on PATH; QEMU 10 from bookworm-backports
//! after `scripts/setup` on Debian 12) and another one (Debian 12's own 7.2, say), each
//! booting an L1 that runs one pod, interleaved. Each runs as `machine` runs it: an L1 of a
//! QEMU older than 10 gets `transparent_hugepage=never` (docs/testbed.md says why).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::cpio::CpioWriter;
use crate::machine::assets::L1Assets;
use crate::machine::qemu::{Accel, AccelChoice, QemuLaunch, choose_accel, huge_pages_hold_up};
use crate::machine::{self, Interrupt, MachineConfig, MachineError};

use super::{median, ratio};

pub struct MachineBench {
    pub runs: usize,
    pub accel: AccelChoice,
    /// Stops the bench (and the L1 running) when raised.
    pub interrupt: Interrupt,
    /// Another QEMU to compare the test bed's setup with (`--versus-qemu`).
    pub versus_qemu: Option<PathBuf>,
}

/// What each setup's L1 runs in the comparison: one pod VM, booted and removed.
const POD_COMMAND: [&str; 7] = [
    "peapod",
    "run",
    "--rm",
    "--network",
    "none",
    "peapod/busybox:latest",
    "true",
];

pub fn run(bench: &MachineBench) -> anyhow::Result<()> {
    let l1 = L1Assets::find()?;
    let accel = choose_accel(bench.accel, &crate::host::HostVirt::probe())?;
    let config = MachineConfig {
        cpus: 2,
        memory_mib: 4096,
        accel: bench.accel,
        timeout: Duration::from_secs(300),
        stall_timeout: Some(Duration::from_secs(30)),
        copies: Vec::new(),
        env: Vec::new(),
        workdir: "/".into(),
        argv: vec!["true".into()],
        qemu: None,
    };
    let dir = tempfile::tempdir()?;
    let bare_initrd = dir.path().join("bare.cpio");
    write_bare_initrd(&l1, &bare_initrd)?;

    let mut peapod_total = Vec::new();
    let mut peapod_boot = Vec::new();
    let mut bare_total = Vec::new();
    // interleaved, so both see the same machine load
    for i in 0..bench.runs {
        let report = machine::run(
            &config,
            &bench.interrupt,
            &mut std::io::sink(),
            &mut std::io::stderr(),
        )?;
        anyhow::ensure!(
            report.status == 0,
            "`machine run -- true` gave status {}",
            report.status
        );
        peapod_total.push(report.total);
        peapod_boot.push(report.boot);
        bare_total.push(bare_boot(
            &l1,
            accel,
            &bare_initrd,
            dir.path(),
            &bench.interrupt,
        )?);
        eprintln!(
            "run {}: peapod {:.2} s (ready after {:.2} s), bare {:.2} s",
            i + 1,
            report.total.as_secs_f64(),
            report.boot.as_secs_f64(),
            bare_total[i].as_secs_f64()
        );
    }
    let cache_started = Instant::now();
    let peapod = std::env::current_exe()?;
    crate::machine::initramfs::base_archive(&l1, &peapod, &crate::dirs::cache_dir())?;
    let cache_hit = cache_started.elapsed();

    let (pt, pb, bt) = (
        median(peapod_total),
        median(peapod_boot),
        median(bare_total),
    );
    println!(
        "peapod bench machine: accel {accel}, {} runs, medians",
        bench.runs
    );
    println!("| measure | peapod | bare QEMU L1 | peapod / bare |");
    println!("|---|---|---|---|");
    println!(
        "| one `machine run -- true`, call to exit | {:.2} s | {:.2} s | {} |",
        pt.as_secs_f64(),
        bt.as_secs_f64(),
        ratio(pt, bt)
    );
    println!(
        "| L1 boot: QEMU start to /dev/kvm ready | {:.2} s | - | - |",
        pb.as_secs_f64()
    );
    println!(
        "| L1 base initramfs, cache hit (hash + lookup) | {} ms | - | - |",
        cache_hit.as_millis()
    );
    if let Some(versus) = &bench.versus_qemu {
        compare_setups(bench, &config, &l1.qemu, versus, accel)?;
    }
    Ok(())
}

/// One setup's times over the runs.
#[derive(Debug, Default)]
struct SetupTimes {
    boot: Vec<Duration>,
    after_ready: Vec<Duration>,
    total: Vec<Duration>,
}

/// The test bed with `ours` (the QEMU `machine` picks) against `versus`, runs interleaved,
/// each L1 running [`POD_COMMAND`]; prints a table with ratios ours / versus.
fn compare_setups(
    bench: &MachineBench,
    base: &MachineConfig,
    ours: &Path,
    versus: &Path,
    accel: Accel,
) -> anyhow::Result<()> {
    let versus = crate::machine::assets::find_in_path(&versus.to_string_lossy())
        .ok_or_else(|| anyhow::anyhow!("--versus-qemu {}: no such file", versus.display()))?;
    let setups = [ours.to_path_buf(), versus];
    let labels = setups.clone().map(|q| setup_label(&q, accel));
    let mut times = [SetupTimes::default(), SetupTimes::default()];
    for run in 0..bench.runs {
        for ((qemu, label), t) in setups.iter().zip(&labels).zip(times.iter_mut()) {
            let config = MachineConfig {
                argv: POD_COMMAND.iter().map(|a| a.to_string()).collect(),
                qemu: Some(qemu.clone()),
                ..base.clone()
            };
            let mut stderr = Vec::new();
            let report =
                machine::run(&config, &bench.interrupt, &mut std::io::sink(), &mut stderr)?;
            anyhow::ensure!(
                report.status == 0,
                "the pod in the L1 of {} gave status {}: {}",
                qemu.display(),
                report.status,
                String::from_utf8_lossy(&stderr)
            );
            eprintln!(
                "run {}: {}: ready after {:.2} s, whole run {:.2} s",
                run + 1,
                label,
                report.boot.as_secs_f64(),
                report.total.as_secs_f64()
            );
            t.boot.push(report.boot);
            t.after_ready.push(report.total.saturating_sub(report.boot));
            t.total.push(report.total);
        }
    }
    let [ours_t, versus_t] = times;
    println!();
    println!(
        "Test-bed setups, {} runs each interleaved, medians; each L1 runs `{}`",
        bench.runs,
        POD_COMMAND.join(" ")
    );
    println!("| measure | {} | {} | ratio |", labels[0], labels[1]);
    println!("|---|---|---|---|");
    let rows = [
        (
            "L1 boot: QEMU start to /dev/kvm ready",
            ours_t.boot,
            versus_t.boot,
        ),
        (
            "the pod in the L1 (ready to the L1's exit)",
            ours_t.after_ready,
            versus_t.after_ready,
        ),
        ("whole `machine run`", ours_t.total, versus_t.total),
    ];
    for (name, a, b) in rows {
        let (a, b) = (median(a), median(b));
        println!(
            "| {name} | {:.2} s | {:.2} s | {} |",
            a.as_secs_f64(),
            b.as_secs_f64(),
            ratio(a, b)
        );
    }
    Ok(())
}

/// "QEMU 10.0.2 (L1 huge pages on)": a setup as the comparison's columns name it.
fn setup_label(qemu: &Path, accel: Accel) -> String {
    let version =
        crate::machine::qemu::version(qemu).unwrap_or_else(|| "of unknown version".into());
    let pages = if huge_pages_hold_up(qemu, accel) {
        "L1 huge pages on"
    } else {
        "L1 transparent_hugepage=never"
    };
    format!("QEMU {version} ({pages})")
}

/// busybox + the KVM modules + an init that loads them and powers off.
fn write_bare_initrd(l1: &L1Assets, path: &std::path::Path) -> anyhow::Result<()> {
    let mut cpio = CpioWriter::new(BufWriter::new(File::create(path)?));
    cpio.file_from("/bin/busybox", 0o755, &l1.busybox)?;
    cpio.dir("/proc", 0o755)?;
    cpio.dir("/sys", 0o755)?;
    cpio.dir("/dev", 0o755)?;
    cpio.char_device("/dev/console", 0o600, 5, 1)?;
    let mut script = String::from(
        "#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t devtmpfs dev /dev\n",
    );
    let modules = l1.kvm_modules()?;
    for (extension, files) in &modules {
        script.push_str(&format!(
            "if /bin/busybox grep -q -w {extension} /proc/cpuinfo; then\n"
        ));
        for (i, file) in files.iter().enumerate() {
            let guest = format!("/m/{extension}/{i}.ko");
            cpio.file_from(&guest, 0o644, file)?;
            script.push_str(&format!("  /bin/busybox insmod {guest}\n"));
        }
        script.push_str("fi\n");
    }
    script.push_str("[ -e /dev/kvm ] && echo BARE_KVM_READY\n/bin/busybox poweroff -f\n");
    cpio.file("/init", 0o755, script.as_bytes())?;
    cpio.finish()?;
    Ok(())
}

/// One bare L1 boot to power-off; fails if /dev/kvm did not come up. QEMU dies with this
/// thread, and is killed when `interrupt` is raised.
fn bare_boot(
    l1: &L1Assets,
    accel: Accel,
    initrd: &std::path::Path,
    dir: &std::path::Path,
    interrupt: &Interrupt,
) -> anyhow::Result<Duration> {
    let console = dir.join("bare-console.log");
    let launch = QemuLaunch {
        qemu: l1.qemu.clone(),
        accel,
        cpus: 2,
        memory_mib: 4096,
        kernel: l1.kernel.clone(),
        initrd: initrd.to_path_buf(),
        console_log: console.clone(),
        link_socket: None,
        l1_huge_pages: crate::machine::qemu::huge_pages_hold_up(&l1.qemu, accel),
    };
    let started = Instant::now();
    let mut child = launch
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(signal) = interrupt.raised() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(MachineError::Interrupted { signal }.into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = started.elapsed();
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    anyhow::ensure!(
        status.success() && log.contains("BARE_KVM_READY"),
        "the bare L1 did not get /dev/kvm ({status}); console:\n{log}"
    );
    Ok(elapsed)
}
