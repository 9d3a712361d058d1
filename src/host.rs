//! What this host offers for running VMs: `/dev/kvm`, whether that KVM is PVM
//! (paging-based nested KVM, no VT-x/AMD-V), hardware virtualization flags and nesting.
//!
//! Everything here reads files only (procfs, sysfs, the device node); no KVM ioctl is made.
//! The file system root is a parameter so that tests can point it at a fake tree.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// The hardware virtualization extension the CPU advertises in `/proc/cpuinfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtExtension {
    /// Intel VT-x (`vmx`).
    Vmx,
    /// AMD-V (`svm`).
    Svm,
}

impl VirtExtension {
    /// The KVM module that drives this extension.
    pub fn kvm_module(self) -> &'static str {
        match self {
            VirtExtension::Vmx => "kvm_intel",
            VirtExtension::Svm => "kvm_amd",
        }
    }
}

/// What opening `/dev/kvm` gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmNode {
    Absent,
    NoPermission,
    Usable,
    /// Any other open error, with its text.
    Broken(String),
}

/// Why this host's `/dev/kvm` cannot run peapod's guests directly.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvmUnusable {
    #[error(
        "{0} does not exist: this host has no KVM; load kvm_intel/kvm_amd if the CPU has VT-x/AMD-V, \
         or run inside the nested test bed: `peapod machine run -- <command>`"
    )]
    Absent(PathBuf),
    #[error("cannot open {0}: permission denied; run as root or add your user to the `kvm` group")]
    NoPermission(PathBuf),
    #[error("cannot open {path}: {reason}")]
    Broken { path: PathBuf, reason: String },
    #[error(
        "{0} is PVM (paging-based nested KVM, module kvm_pvm): a normal guest kernel would be \
         instruction-emulated about 1000x slower and can crash the emulator; run peapod's VMs \
         inside the nested test bed instead: `peapod machine run -- <command>`"
    )]
    Pvm(PathBuf),
    #[error(
        "{0} exists but the CPU shows neither vmx nor svm in /proc/cpuinfo: KVM would have no \
         hardware virtualization; run inside the nested test bed: `peapod machine run -- <command>`"
    )]
    NoHardwareVirt(PathBuf),
}

/// A snapshot of the host's virtualization facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVirt {
    pub kvm_path: PathBuf,
    pub kvm: KvmNode,
    /// The `kvm_pvm` module is loaded: `/dev/kvm` is PVM.
    pub pvm: bool,
    pub extension: Option<VirtExtension>,
    /// The `nested` parameter of kvm_intel/kvm_amd, where the module is loaded.
    pub nested: Option<bool>,
}

impl HostVirt {
    /// Probes the running host.
    pub fn probe() -> Self {
        Self::probe_at(Path::new("/"))
    }

    /// Probes a host whose file system is rooted at `root` (tests use a fake tree).
    pub fn probe_at(root: &Path) -> Self {
        let kvm_path = root.join("dev/kvm");
        let kvm = match OpenOptions::new().read(true).write(true).open(&kvm_path) {
            Ok(_) => KvmNode::Usable,
            Err(e) if e.kind() == ErrorKind::NotFound => KvmNode::Absent,
            Err(e) if e.kind() == ErrorKind::PermissionDenied => KvmNode::NoPermission,
            Err(e) => KvmNode::Broken(e.to_string()),
        };
        let pvm = root.join("sys/module/kvm_pvm").exists();
        let extension = std::fs::read_to_string(root.join("proc/cpuinfo"))
            .ok()
            .and_then(|text| extension_from_cpuinfo(&text));
        let nested = extension.and_then(|ext| {
            let param = root
                .join("sys/module")
                .join(ext.kvm_module())
                .join("parameters/nested");
            std::fs::read_to_string(param)
                .ok()
                .map(|v| matches!(v.trim(), "1" | "Y" | "y"))
        });
        HostVirt {
            kvm_path,
            kvm,
            pvm,
            extension,
            nested,
        }
    }

    /// Whether guests can run here directly on hardware-assisted KVM; the error says why not.
    pub fn hardware_kvm(&self) -> Result<VirtExtension, KvmUnusable> {
        let path = self.kvm_path.clone();
        match &self.kvm {
            KvmNode::Absent => return Err(KvmUnusable::Absent(path)),
            KvmNode::NoPermission => return Err(KvmUnusable::NoPermission(path)),
            KvmNode::Broken(reason) => {
                return Err(KvmUnusable::Broken {
                    path,
                    reason: reason.clone(),
                });
            }
            KvmNode::Usable => {}
        }
        if self.pvm {
            return Err(KvmUnusable::Pvm(path));
        }
        self.extension.ok_or(KvmUnusable::NoHardwareVirt(path))
    }
}

/// Finds `vmx` or `svm` in the first `flags` line of a `/proc/cpuinfo` text.
pub fn extension_from_cpuinfo(cpuinfo: &str) -> Option<VirtExtension> {
    let flags = cpuinfo
        .lines()
        .find(|line| line.starts_with("flags"))?
        .split_once(':')?
        .1;
    flags.split_whitespace().find_map(|flag| match flag {
        "vmx" => Some(VirtExtension::Vmx),
        "svm" => Some(VirtExtension::Svm),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_host(kvm: bool, pvm: bool, flags: &str, nested: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::create_dir_all(root.join("proc")).unwrap();
        if kvm {
            std::fs::write(root.join("dev/kvm"), b"").unwrap();
        }
        if pvm {
            std::fs::create_dir_all(root.join("sys/module/kvm_pvm")).unwrap();
        }
        std::fs::write(
            root.join("proc/cpuinfo"),
            format!("processor\t: 0\nflags\t\t: fpu sse2 {flags} lm\n"),
        )
        .unwrap();
        if let Some(value) = nested {
            let dir = root.join("sys/module/kvm_amd/parameters");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("nested"), value).unwrap();
        }
        dir
    }

    #[test]
    fn cpuinfo_flags_name_the_extension() {
        assert_eq!(
            extension_from_cpuinfo("flags\t: fpu vmx sse\n"),
            Some(VirtExtension::Vmx)
        );
        assert_eq!(
            extension_from_cpuinfo("model\t: x\nflags : svm npt\n"),
            Some(VirtExtension::Svm)
        );
        assert_eq!(extension_from_cpuinfo("flags : fpu hypervisor\n"), None);
        // a flag that merely contains the letters does not count
        assert_eq!(extension_from_cpuinfo("flags : svm_lock vmxx\n"), None);
        assert_eq!(extension_from_cpuinfo(""), None);
    }

    #[test]
    fn pvm_host_is_refused_with_a_pointer_to_machine() {
        let dir = fake_host(true, true, "hypervisor", None);
        let host = HostVirt::probe_at(dir.path());
        assert!(host.pvm);
        let err = host.hardware_kvm().unwrap_err();
        assert!(matches!(err, KvmUnusable::Pvm(_)));
        assert!(err.to_string().contains("peapod machine run"));
    }

    #[test]
    fn missing_kvm_is_reported_as_absent() {
        let dir = fake_host(false, false, "svm", None);
        let err = HostVirt::probe_at(dir.path()).hardware_kvm().unwrap_err();
        assert!(matches!(err, KvmUnusable::Absent(_)), "{err}");
    }

    #[test]
    fn kvm_without_cpu_flags_is_not_hardware() {
        let dir = fake_host(true, false, "hypervisor", None);
        let err = HostVirt::probe_at(dir.path()).hardware_kvm().unwrap_err();
        assert!(matches!(err, KvmUnusable::NoHardwareVirt(_)), "{err}");
    }

    #[test]
    fn hardware_kvm_with_nesting_is_usable() {
        let dir = fake_host(true, false, "svm npt", Some("1\n"));
        let host = HostVirt::probe_at(dir.path());
        assert_eq!(host.hardware_kvm(), Ok(VirtExtension::Svm));
        assert_eq!(host.nested, Some(true));
    }
}
