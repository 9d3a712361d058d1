//! `peapod bench boot`: peapod's VMM against QEMU `-M microvm`, booting the same kernel and
//! initramfs with the same vCPUs and memory, side by side in one run.
//!
//! Measured per boot: the time from starting the VMM process to the init's marker line
//! (`PEAPOD_GUEST_INIT_OK`) on the serial console, and the VMM process's resident memory
//! without guest RAM (every anonymous mapping at least as large as guest RAM counts as guest
//! RAM), read from `/proc/PID/smaps` when the marker appears; and, read at the same moment,
//! KVM's counters for the VM (exits by kind, page faults: see [`super::kvmstat`]), which vary
//! little from boot to boot where the times in an emulated test bed vary a lot. Each VMM is
//! killed after that.
//!
//! It needs hardware-assisted KVM; on a host without it, it runs itself inside the test bed
//! (`peapod machine run`), copying QEMU, its firmware, the kernel and the initramfs in.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::kvmstat::{Counter, KvmCounters, KvmStatError, median_count};
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
    /// Kernel parameters added to both VMMs' command line (`--append`), to measure what one
    /// costs or saves.
    pub append: Option<String>,
}

pub(super) struct Sample {
    pub(super) boot: Duration,
    pub(super) rss_kib: u64,
    /// KVM's counters for the VM when the marker appeared, or why they could not be read.
    pub(super) kvm: Result<KvmCounters, KvmStatError>,
}

pub fn run(bench: &BootBench) -> anyhow::Result<()> {
    if !super::kvm_here("boot")? {
        return run_in_machine(bench);
    }
    let qemu = crate::machine::assets::find_qemu()?;
    let vmm = crate::vmm::program::VmmProgram::find()?;
    // before any VM exists, so that a failure here explains the missing counters once
    let debugfs = super::kvmstat::prepare_debugfs();
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    // One command line for both: peapod's default (which keeps Linux's i8042 driver from
    // probing for a keyboard and mouse that are not there; microvm has no i8042 at all)
    // plus `quiet`, so that console output costs the same on both.
    let cmdline = match &bench.append {
        Some(extra) => format!("{DEFAULT_CMDLINE} quiet {extra}"),
        None => format!("{DEFAULT_CMDLINE} quiet"),
    };
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
        let exits = |s: &Sample| match &s.kvm {
            Ok(kvm) => kvm
                .get(Counter::Exits)
                .map_or_else(String::new, |n| format!(", {n} exits")),
            Err(_) => String::new(),
        };
        eprintln!(
            "run {}: peapod {:.0} ms, {} KiB{}; QEMU microvm {:.0} ms, {} KiB{}",
            i + 1,
            ours[i].boot.as_secs_f64() * 1e3,
            ours[i].rss_kib,
            exits(&ours[i]),
            theirs[i].boot.as_secs_f64() * 1e3,
            theirs[i].rss_kib,
            exits(&theirs[i])
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
    println!();
    match debugfs {
        Ok(()) => print!("{}", counters_table(&ours, &theirs)),
        Err(why) => println!("per boot KVM counters: not read: {why}"),
    }
    Ok(())
}

/// The second table: per counter, the median over the boots of each VMM where it was read,
/// and their ratio. Counters no VMM reported are named below it, and so is each VMM's first
/// failure to read them.
fn counters_table(ours: &[Sample], theirs: &[Sample]) -> String {
    let medians = |samples: &[Sample], counter: Counter| {
        median_count(
            samples
                .iter()
                .filter_map(|s| s.kvm.as_ref().ok()?.get(counter))
                .collect(),
        )
    };
    let cell = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let mut table = String::from(
        "per boot KVM counters (host debugfs, at the init marker, medians)\n\
         | counter | peapod | QEMU -M microvm | peapod / QEMU |\n|---|---|---|---|\n",
    );
    let mut absent = Vec::new();
    for counter in Counter::ALL {
        let (p, q) = (medians(ours, counter), medians(theirs, counter));
        if p.is_none() && q.is_none() {
            absent.push(counter.file_name());
            continue;
        }
        let ratio = match (p, q) {
            (Some(p), Some(q)) if q > 0 => format!("{:.2}x", p as f64 / q as f64),
            _ => "-".into(),
        };
        table.push_str(&format!(
            "| {} | {} | {} | {ratio} |\n",
            counter.file_name(),
            cell(p),
            cell(q)
        ));
    }
    if !absent.is_empty() {
        table.push_str(&format!(
            "not in this kernel's KVM debugfs: {}\n",
            absent.join(", ")
        ));
    }
    for (name, samples) in [("peapod", ours), ("QEMU -M microvm", theirs)] {
        let failed: Vec<&KvmStatError> = samples
            .iter()
            .filter_map(|s| s.kvm.as_ref().err())
            .collect();
        if let Some(first) = failed.first() {
            table.push_str(&format!(
                "{name}: counters not read in {} of {} boots: {first}\n",
                failed.len(),
                samples.len()
            ));
        }
    }
    table
}

/// Starts a VMM, waits for the init marker on its stdout, measures, kills it.
pub(super) fn boot_once(command: Command, memory_mib: u32) -> anyhow::Result<Sample> {
    boot_until(command, memory_mib, INIT_MARKER)
}

/// [`boot_once`] up to the first console line that contains `marker` (an init's marker, the
/// agent's ready line).
pub(super) fn boot_until(
    mut command: Command,
    memory_mib: u32,
    marker: &'static str,
) -> anyhow::Result<Sample> {
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
            if line.contains(marker) {
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
            // first, while the guest has done the least since the marker
            let kvm = KvmCounters::read_for_pid(child.id());
            let rss_kib = rss_without_guest_kib(child.id(), u64::from(memory_mib) * 1024);
            Ok(Sample {
                boot: at - started,
                rss_kib: rss_kib.unwrap_or(0),
                kvm,
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
    let mut args = [
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
    .map(String::from)
    .to_vec();
    if let Some(extra) = &bench.append {
        args.extend(["--append".to_string(), extra.clone()]);
    }
    super::run_inside_machine(&copies, &[], &args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(counters: &[(Counter, u64)]) -> Sample {
        let mut kvm = KvmCounters::default();
        for &(counter, value) in counters {
            kvm.set(counter, value);
        }
        Sample {
            boot: Duration::from_millis(1),
            rss_kib: 1,
            kvm: Ok(kvm),
        }
    }

    #[test]
    fn counter_rows_are_medians_with_ratios() {
        use Counter::*;
        let ours = [
            sample(&[(Exits, 900), (IoExits, 10), (PfFixed, 30)]),
            sample(&[(Exits, 1000), (IoExits, 12), (PfFixed, 31)]),
            sample(&[(Exits, 5000), (IoExits, 11), (PfFixed, 32)]),
        ];
        let theirs = [
            sample(&[(Exits, 2000), (IoExits, 0), (HaltExits, 4)]),
            sample(&[(Exits, 2100), (IoExits, 0), (HaltExits, 6)]),
            Sample {
                kvm: Err(KvmStatError::NoVm {
                    pid: 77,
                    kvm_dir: "/sys/kernel/debug/kvm".into(),
                }),
                ..sample(&[])
            },
        ];
        let table = counters_table(&ours, &theirs);
        let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(
            rows,
            [
                "| counter | peapod | QEMU -M microvm | peapod / QEMU |",
                // the median, not the mean: one slow boot does not move it
                "| exits | 1000 | 2100 | 0.48x |",
                // no ratio against zero
                "| io_exits | 11 | 0 | - |",
                // a counter one side lacks
                "| halt_exits | - | 6 | - |",
                "| pf_fixed | 31 | - | - |",
            ],
            "{table}"
        );
        assert!(
            table.contains(
                "not in this kernel's KVM debugfs: mmio_exits, insn_emulation, pf_taken, pf_guest"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "QEMU -M microvm: counters not read in 1 of 3 boots: no VM of process 77"
            ),
            "{table}"
        );
        assert!(!table.contains("peapod: counters not read"), "{table}");
    }

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
