//! `peapod bench boot`: peapod's VMM against QEMU `-M microvm`, booting the same kernel and
//! initramfs with the same vCPUs and memory, side by side in one run.
//!
//! Measured per boot: the time from starting the VMM process to the init's marker line
//! (`PEAPOD_GUEST_INIT_OK`) on the serial console, and the VMM process's resident memory
//! without guest RAM (every anonymous mapping at least as large as guest RAM counts as guest
//! RAM), read from `/proc/PID/smaps` when the marker appears. Each VMM is killed after that.
//!
//! It needs hardware-assisted KVM; on a host without it, it runs itself inside the test bed
//! (`peapod machine run`), copying QEMU, its firmware, the kernel and the initramfs in.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{median, ratio};
use crate::vmm::boot::linux::DEFAULT_CMDLINE;

/// What the test init prints when it runs (rootfs/test-init.sh).
pub const INIT_MARKER: &str = "PEAPOD_GUEST_INIT_OK";
const BOOT_LIMIT: Duration = Duration::from_secs(60);

pub struct BootBench {
    pub runs: usize,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cpus: u32,
    pub memory_mib: u32,
}

pub(super) struct Sample {
    pub(super) boot: Duration,
    pub(super) rss_kib: u64,
}

pub fn run(bench: &BootBench) -> anyhow::Result<()> {
    if !super::kvm_here("boot")? {
        return run_in_machine(bench);
    }
    let qemu = crate::machine::assets::find_qemu()?;
    let vmm = crate::vmm::program::VmmProgram::find()?;
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    // One command line for both: peapod's default (which keeps Linux's i8042 driver from
    // probing for a keyboard and mouse that are not there; microvm has no i8042 at all)
    // plus `quiet`, so that console output costs the same on both.
    let cmdline = format!("{DEFAULT_CMDLINE} quiet");
    for i in 0..bench.runs {
        // interleaved, so both see the same machine state
        let mut vm = vmm.command();
        vm.args(["--console", "stdout"])
            .arg("--kernel")
            .arg(&bench.kernel)
            .arg("--initrd")
            .arg(&bench.initrd)
            .args(["--cpus", &bench.cpus.to_string()])
            .args(["--memory", &bench.memory_mib.to_string()])
            .arg("--cmdline")
            .arg(&cmdline);
        ours.push(boot_once(vm, bench.memory_mib).context("peapod vm boot")?);
        let mut microvm = Command::new(&qemu);
        microvm
            .args(["-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "host"])
            .args([
                "-smp",
                &bench.cpus.to_string(),
                "-m",
                &bench.memory_mib.to_string(),
            ])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .arg("-kernel")
            .arg(&bench.kernel)
            .arg("-initrd")
            .arg(&bench.initrd)
            .args(["-append", &cmdline, "-serial", "stdio"]);
        theirs.push(boot_once(microvm, bench.memory_mib).context("QEMU -M microvm")?);
        eprintln!(
            "run {}: peapod {:.0} ms, {} KiB; QEMU microvm {:.0} ms, {} KiB",
            i + 1,
            ours[i].boot.as_secs_f64() * 1e3,
            ours[i].rss_kib,
            theirs[i].boot.as_secs_f64() * 1e3,
            theirs[i].rss_kib
        );
    }
    let boot = |s: &[Sample]| median(s.iter().map(|x| x.boot).collect());
    let rss = |s: &[Sample]| {
        let mut v: Vec<u64> = s.iter().map(|x| x.rss_kib).collect();
        v.sort();
        v[v.len() / 2]
    };
    let (pb, qb) = (boot(&ours), boot(&theirs));
    let (pr, qr) = (rss(&ours), rss(&theirs));
    println!(
        "peapod bench boot: {} runs, {} vCPU, {} MiB, medians (same kernel + initramfs)",
        bench.runs, bench.cpus, bench.memory_mib
    );
    println!("| measure | peapod | QEMU -M microvm | peapod / QEMU | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| VMM start to init marker | {:.0} ms | {:.0} ms | {} | <= 0.50x |",
        pb.as_secs_f64() * 1e3,
        qb.as_secs_f64() * 1e3,
        ratio(pb, qb)
    );
    println!(
        "| VMM RSS without guest RAM | {:.1} MiB | {:.1} MiB | {:.2}x | <= 4 MiB |",
        pr as f64 / 1024.0,
        qr as f64 / 1024.0,
        pr as f64 / qr.max(1) as f64
    );
    Ok(())
}

/// Starts a VMM, waits for the init marker on its stdout, measures, kills it.
pub(super) fn boot_once(mut command: Command, memory_mib: u32) -> anyhow::Result<Sample> {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tail = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(INIT_MARKER) {
                let _ = tx.send(Ok(Instant::now()));
                return;
            }
            tail.push(line);
        }
        let start = tail.len().saturating_sub(15);
        let _ = tx.send(Err(tail[start..].join("\n")));
    });
    let result = match rx.recv_timeout(BOOT_LIMIT) {
        Ok(Ok(at)) => {
            let rss_kib = rss_without_guest_kib(child.id(), u64::from(memory_mib) * 1024);
            Ok(Sample {
                boot: at - started,
                rss_kib: rss_kib.unwrap_or(0),
            })
        }
        Ok(Err(tail)) => Err(anyhow::anyhow!(
            "no init marker; console ended with:\n{tail}"
        )),
        Err(_) => Err(anyhow::anyhow!("no init marker within {BOOT_LIMIT:?}")),
    };
    stop(&mut child);
    result
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Resident KiB of a process, minus anonymous mappings at least `guest_kib` large.
fn rss_without_guest_kib(pid: u32, guest_kib: u64) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    Some(rss_from_smaps(&smaps, guest_kib))
}

fn rss_from_smaps(smaps: &str, guest_kib: u64) -> u64 {
    let mut total = 0;
    let mut mapping_size = 0;
    let mut anonymous = false;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // a mapping header: "start-end perms offset dev inode [path]"
            anonymous = line.split_whitespace().nth(5).is_none();
            mapping_size = 0;
            continue;
        }
        let mut kib = || {
            fields
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match first {
            "Size:" => mapping_size = kib(),
            "Rss:" => {
                let rss = kib();
                if !(anonymous && mapping_size >= guest_kib) {
                    total += rss;
                }
            }
            _ => {}
        }
    }
    total
}

/// Re-runs this benchmark inside `peapod machine run`, with QEMU and the guest files copied in.
fn run_in_machine(bench: &BootBench) -> anyhow::Result<()> {
    let qemu = crate::machine::assets::find_qemu()?;
    let copies: [(&Path, &str); 4] = [
        (&qemu, "/usr/bin/qemu-system-x86_64"),
        (Path::new("/usr/share/qemu"), "/usr/share/qemu"),
        (&bench.kernel, "/opt/peapod-bench/vmlinux"),
        (&bench.initrd, "/opt/peapod-bench/initrd"),
    ];
    let args = [
        "bench",
        "boot",
        "--kernel",
        "/opt/peapod-bench/vmlinux",
        "--initrd",
        "/opt/peapod-bench/initrd",
        "--runs",
        &bench.runs.to_string(),
        "--cpus",
        &bench.cpus.to_string(),
        "--memory",
        &bench.memory_mib.to_string(),
    ]
    .map(String::from);
    super::run_inside_machine(&copies, &[], &args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ram_is_left_out_of_rss() {
        let smaps = "\
55d0-55e0 r-xp 00000000 08:01 123 /usr/bin/peapod
Size:                 64 kB
Rss:                  40 kB
7f00-8f00 rw-p 00000000 00:00 0
Size:             262144 kB
Rss:              100000 kB
7f10-7f20 rw-p 00000000 00:00 0
Size:               2048 kB
Rss:                1000 kB
7f30-7f40 rw-p 00000000 00:00 0 [heap]
Size:             300000 kB
Rss:                 300 kB
";
        // the 256 MiB anonymous mapping is guest RAM; the named [heap] is not
        assert_eq!(rss_from_smaps(smaps, 262144), 40 + 1000 + 300);
    }
}
