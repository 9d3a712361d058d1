//! KVM's own counters for one VM, read from the host's debugfs: how many times the guest left
//! to the VMM or to KVM, and why.
//!
//! Boot time in the emulated test bed swings by a third from run to run; how often a guest
//! exits is nearly the same every boot, so these counts compare two VMMs where times cannot.
//! KVM keeps a directory per VM, `/sys/kernel/debug/kvm/<pid>-<vm fd>/`, named after the
//! thread that created the VM, with one file per counter holding a decimal number summed over
//! the VM's vCPUs (the `vcpuN/` directories below it hold no counters). It exists from
//! `KVM_CREATE_VM` until the VM's last fd closes, so a read while the guest runs gives the
//! counts since the VM was made: no snapshot before the boot is needed.
//!
//! Reading them needs nothing from the VMM (no fd, no ioctl, no change to its seccomp filter):
//! only root on the host and debugfs mounted, which [`prepare_debugfs`] does when it can.
//! KVM's binary stats interface (`KVM_GET_STATS_FD`) would need the VM's fd, which only the VMM
//! holds.

use std::path::{Path, PathBuf};

/// Where debugfs is mounted on every distribution.
pub const DEBUGFS: &str = "/sys/kernel/debug";

#[derive(Debug, thiserror::Error)]
pub enum KvmStatError {
    #[error(
        "debugfs is not mounted at {at} and mounting it needs root: run as root or mount it \
         (`mount -t debugfs none {at}`)"
    )]
    NotMountedNotRoot { at: PathBuf },
    #[error("{path} is readable only by root: run as root")]
    NotRoot { path: PathBuf },
    #[error("cannot mount debugfs at {at}: {source} (a kernel without CONFIG_DEBUG_FS has none)")]
    Mount { at: PathBuf, source: nix::Error },
    #[error("no {path}: debugfs has no KVM directory until the kvm module is loaded")]
    NoKvmDir { path: PathBuf },
    #[error("no VM of process {pid} under {kvm_dir} (no `<pid>-<fd>` directory of its threads)")]
    NoVm { pid: u32, kvm_dir: PathBuf },
    #[error("process {pid} has {count} VMs under {kvm_dir}; name the one to read")]
    SeveralVms {
        pid: u32,
        count: usize,
        kvm_dir: PathBuf,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds {text:?}, not a counter (a decimal number)")]
    NotANumber { path: PathBuf, text: String },
}

/// The counters a boot is compared by. Kernels differ in which exist (the page-fault ones
/// were renamed and added over time); a missing file is a missing value, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Counter {
    /// Every exit from the guest, whatever the reason.
    Exits,
    /// Port I/O the VMM served (serial, PCI config, ...).
    IoExits,
    /// MMIO the VMM served (virtio-mmio, ...).
    MmioExits,
    /// HLT: the vCPU had nothing to do.
    HaltExits,
    /// Instructions KVM had to decode and emulate itself.
    InsnEmulation,
    /// Page faults KVM handled (with nested paging: faults on guest-physical memory that has
    /// no host page mapped yet, i.e. first touches of guest RAM).
    PfTaken,
    /// Page faults KVM fixed by mapping a page.
    PfFixed,
    /// Page faults KVM passed on to the guest.
    PfGuest,
}

impl Counter {
    pub const ALL: [Counter; 8] = [
        Counter::Exits,
        Counter::IoExits,
        Counter::MmioExits,
        Counter::HaltExits,
        Counter::InsnEmulation,
        Counter::PfTaken,
        Counter::PfFixed,
        Counter::PfGuest,
    ];

    /// The file KVM keeps it in, which is also the name it is printed by.
    pub fn file_name(self) -> &'static str {
        match self {
            Counter::Exits => "exits",
            Counter::IoExits => "io_exits",
            Counter::MmioExits => "mmio_exits",
            Counter::HaltExits => "halt_exits",
            Counter::InsnEmulation => "insn_emulation",
            Counter::PfTaken => "pf_taken",
            Counter::PfFixed => "pf_fixed",
            Counter::PfGuest => "pf_guest",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One reading of a VM's counters; `None` where this kernel has no such file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvmCounters {
    values: [Option<u64>; Counter::ALL.len()],
}

impl KvmCounters {
    /// Reads every counter in a VM's directory (one from [`find_vm_dir`]).
    pub fn read(vm_dir: &Path) -> Result<Self, KvmStatError> {
        let mut counters = Self::default();
        for counter in Counter::ALL {
            let path = vm_dir.join(counter.file_name());
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Err(KvmStatError::NotRoot { path });
                }
                Err(source) => return Err(KvmStatError::Read { path, source }),
            };
            let value = text
                .trim()
                .parse::<u64>()
                .map_err(|_| KvmStatError::NotANumber {
                    path: path.clone(),
                    text: text.chars().take(40).collect(),
                })?;
            counters.set(counter, value);
        }
        Ok(counters)
    }

    /// The counters of process `pid`'s one VM, now, from the debugfs at [`DEBUGFS`].
    pub fn read_for_pid(pid: u32) -> Result<Self, KvmStatError> {
        Self::read(&find_vm_dir(&Path::new(DEBUGFS).join("kvm"), pid)?)
    }

    pub fn get(&self, counter: Counter) -> Option<u64> {
        self.values[counter.index()]
    }

    pub fn set(&mut self, counter: Counter, value: u64) {
        self.values[counter.index()] = Some(value);
    }
}

/// The directory of process `pid`'s VM under `kvm_dir` (`<debugfs>/kvm`). KVM names it after
/// the thread that created the VM, which need not be the main one, so every thread of the
/// process is a candidate.
pub fn find_vm_dir(kvm_dir: &Path, pid: u32) -> Result<PathBuf, KvmStatError> {
    let mut threads = vec![pid];
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        threads.extend(
            tasks
                .filter_map(Result::ok)
                .filter_map(|t| t.file_name().to_str()?.parse::<u32>().ok()),
        );
    }
    vm_dir_of_threads(kvm_dir, pid, &threads)
}

/// The one `<tid>-<fd>` directory under `kvm_dir` whose `tid` is in `threads`.
fn vm_dir_of_threads(kvm_dir: &Path, pid: u32, threads: &[u32]) -> Result<PathBuf, KvmStatError> {
    let entries = std::fs::read_dir(kvm_dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => KvmStatError::NoKvmDir {
            path: kvm_dir.to_path_buf(),
        },
        std::io::ErrorKind::PermissionDenied => KvmStatError::NotRoot {
            path: kvm_dir.to_path_buf(),
        },
        _ => KvmStatError::Read {
            path: kvm_dir.to_path_buf(),
            source: e,
        },
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            let Some((tid, fd)) = name.to_str().and_then(|n| n.split_once('-')) else {
                return false;
            };
            fd.parse::<u32>().is_ok()
                && tid.parse::<u32>().is_ok_and(|tid| threads.contains(&tid))
                && entry.path().is_dir()
        })
        .map(|entry| entry.path())
        .collect();
    match found.len() {
        0 => Err(KvmStatError::NoVm {
            pid,
            kvm_dir: kvm_dir.to_path_buf(),
        }),
        1 => Ok(found.remove(0)),
        count => Err(KvmStatError::SeveralVms {
            pid,
            count,
            kvm_dir: kvm_dir.to_path_buf(),
        }),
    }
}

/// Makes KVM's counters readable: mounts debugfs at [`DEBUGFS`] when it is not mounted and we
/// are root, and checks that its `kvm` directory is there. Call it before the VMs start; the
/// error says why no counters can be read.
pub fn prepare_debugfs() -> Result<(), KvmStatError> {
    let at = Path::new(DEBUGFS);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if !debugfs_mounted_at(&mounts, at) {
        if !nix::unistd::geteuid().is_root() {
            return Err(KvmStatError::NotMountedNotRoot { at: at.into() });
        }
        nix::mount::mount(
            Some("none"),
            at,
            Some("debugfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| KvmStatError::Mount {
            at: at.into(),
            source,
        })?;
    }
    let kvm_dir = at.join("kvm");
    match std::fs::metadata(&kvm_dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(KvmStatError::NotRoot { path: kvm_dir })
        }
        _ => Err(KvmStatError::NoKvmDir { path: kvm_dir }),
    }
}

/// Whether `/proc/self/mounts` text lists a debugfs mounted at `at`.
fn debugfs_mounted_at(mounts: &str, at: &Path) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next(), fields.next(), fields.next());
        fstype == Some("debugfs") && target.is_some_and(|t| Path::new(t) == at)
    })
}

/// The median of some counts, `None` for none.
pub fn median_count(mut values: Vec<u64>) -> Option<u64> {
    values.sort_unstable();
    values.get(values.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake `<debugfs>/kvm` with VMs named `<tid>-<fd>` holding `files`.
    fn fake_vm(kvm_dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let vm = kvm_dir.join(name);
        std::fs::create_dir_all(vm.join("vcpu0")).unwrap();
        for (file, text) in files {
            std::fs::write(vm.join(file), text).unwrap();
        }
        vm
    }

    #[test]
    fn counters_are_read_and_missing_files_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let vm = fake_vm(
            dir.path(),
            "4242-11",
            &[
                ("exits", "1750\n"),
                ("io_exits", "312\n"),
                ("mmio_exits", "0\n"),
                ("halt_exits", "7\n"),
                ("insn_emulation", "25\n"),
                ("pf_fixed", "19\n"),
                ("pf_guest", "3\n"),
                ("remote_tlb_flush", "5\n"),
            ],
        );
        let counters = KvmCounters::read(&vm).unwrap();
        assert_eq!(counters.get(Counter::Exits), Some(1750));
        assert_eq!(counters.get(Counter::IoExits), Some(312));
        assert_eq!(counters.get(Counter::MmioExits), Some(0));
        assert_eq!(counters.get(Counter::HaltExits), Some(7));
        assert_eq!(counters.get(Counter::InsnEmulation), Some(25));
        assert_eq!(counters.get(Counter::PfFixed), Some(19));
        assert_eq!(counters.get(Counter::PfGuest), Some(3));
        // an older kernel without pf_taken
        assert_eq!(counters.get(Counter::PfTaken), None);
    }

    #[test]
    fn a_file_that_is_not_a_number_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let vm = fake_vm(
            dir.path(),
            "4242-11",
            &[("exits", "12\n"), ("io_exits", "lots\n")],
        );
        let err = KvmCounters::read(&vm).unwrap_err();
        assert!(
            matches!(&err, KvmStatError::NotANumber { path, text }
                if path.ends_with("io_exits") && text == "lots\n"),
            "{err:?}"
        );
        assert!(err.to_string().contains("io_exits"), "{err}");
        for bad in ["-1\n", "", "18446744073709551616\n", "1 2\n"] {
            std::fs::write(vm.join("io_exits"), bad).unwrap();
            assert!(
                matches!(KvmCounters::read(&vm), Err(KvmStatError::NotANumber { .. })),
                "{bad:?} was taken for a counter"
            );
        }
    }

    #[test]
    fn the_vm_dir_is_found_by_any_thread_of_the_process() {
        let dir = tempfile::tempdir().unwrap();
        fake_vm(dir.path(), "100-9", &[]);
        let other = fake_vm(dir.path(), "205-12", &[]);
        std::fs::write(dir.path().join("205-13"), "a file, not a VM").unwrap();
        fake_vm(dir.path(), "205-x", &[]);
        // the VM was made by thread 205 of process 200
        assert_eq!(
            vm_dir_of_threads(dir.path(), 200, &[200, 205]).unwrap(),
            other
        );
        // 2050 is not 205
        assert!(matches!(
            vm_dir_of_threads(dir.path(), 2050, &[2050]),
            Err(KvmStatError::NoVm { pid: 2050, .. })
        ));
        fake_vm(dir.path(), "200-14", &[]);
        assert!(matches!(
            vm_dir_of_threads(dir.path(), 200, &[200, 205]),
            Err(KvmStatError::SeveralVms { count: 2, .. })
        ));
        assert!(matches!(
            vm_dir_of_threads(&dir.path().join("nope"), 200, &[200]),
            Err(KvmStatError::NoKvmDir { .. })
        ));
    }

    #[test]
    fn find_vm_dir_looks_at_the_threads_of_a_live_process() {
        let dir = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        // a VM made by this test's thread (under libtest, not the process's main one)
        let tid = nix::unistd::gettid().as_raw() as u32;
        let vm = fake_vm(dir.path(), &format!("{tid}-10"), &[]);
        assert_eq!(find_vm_dir(dir.path(), pid).unwrap(), vm);
    }

    #[test]
    fn debugfs_is_recognised_only_at_its_mount_point() {
        let mounts = "\
sysfs /sys sysfs rw,nosuid 0 0
debugfs /sys/kernel/debug/tracing debugfs rw 0 0
none /sys/kernel/debug debugfs rw,relatime 0 0
";
        assert!(debugfs_mounted_at(mounts, Path::new(DEBUGFS)));
        assert!(!debugfs_mounted_at(
            "sysfs /sys sysfs rw 0 0\ntracefs /sys/kernel/debug tracefs rw 0 0\n",
            Path::new(DEBUGFS)
        ));
        assert!(!debugfs_mounted_at("", Path::new(DEBUGFS)));
    }

    #[test]
    fn median_count_takes_the_middle() {
        assert_eq!(median_count(vec![9, 1, 5]), Some(5));
        assert_eq!(median_count(vec![]), None);
    }
}
