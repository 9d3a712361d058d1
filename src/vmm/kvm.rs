//! Opening KVM: first ask [`HostVirt`] whether this host's `/dev/kvm` can run our guests at
//! all (absent, no permission, PVM, no VT-x/AMD-V), then open it and check the API version and
//! every capability the VMM relies on, so that a missing feature fails here with a fix rather
//! than as an obscure ioctl error halfway through building a VM.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use kvm_bindings::{CpuId, KVM_API_VERSION, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Cap;

use crate::host::{HostVirt, KvmUnusable, VirtExtension};

/// What to do when this host's KVM falls short.
const FIX: &str = "use a host kernel with full hardware KVM (Linux 5.10 or newer with kvm_intel \
                   or kvm_amd), or run inside the nested test bed: `peapod machine run -- <command>`";

/// A KVM capability the VMM needs, with what it is needed for (shown when it is missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequiredCap {
    pub cap: Cap,
    pub name: &'static str,
    pub purpose: &'static str,
}

/// Everything peapod's VMM uses, checked once when KVM is opened.
pub const REQUIRED_CAPS: &[RequiredCap] = &[
    RequiredCap {
        cap: Cap::UserMemory,
        name: "KVM_CAP_USER_MEMORY",
        purpose: "guest memory mapped from peapod's own address space",
    },
    RequiredCap {
        cap: Cap::SetTssAddr,
        name: "KVM_CAP_SET_TSS_ADDR",
        purpose: "the TSS region KVM needs on x86",
    },
    RequiredCap {
        cap: Cap::ExtCpuid,
        name: "KVM_CAP_EXT_CPUID",
        purpose: "setting the guest's CPUID (KVM_SET_CPUID2)",
    },
    RequiredCap {
        cap: Cap::Irqchip,
        name: "KVM_CAP_IRQCHIP",
        purpose: "in-kernel interrupt controllers (PIC, IOAPIC, local APIC)",
    },
    RequiredCap {
        cap: Cap::Pit2,
        name: "KVM_CAP_PIT2",
        purpose: "the in-kernel PIT timer",
    },
    RequiredCap {
        cap: Cap::Ioeventfd,
        name: "KVM_CAP_IOEVENTFD",
        purpose: "virtio queue notifications delivered to an eventfd",
    },
    RequiredCap {
        cap: Cap::Irqfd,
        name: "KVM_CAP_IRQFD",
        purpose: "device interrupts injected through an eventfd",
    },
    RequiredCap {
        cap: Cap::ImmediateExit,
        name: "KVM_CAP_IMMEDIATE_EXIT",
        purpose: "stopping a vCPU cleanly",
    },
];

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error(transparent)]
    Unusable(#[from] KvmUnusable),
    #[error(
        "cannot open {path}: {source}; check that the kvm module is loaded and the node is read-write for you"
    )]
    Open {
        path: PathBuf,
        source: vmm_sys_util::errno::Error,
    },
    #[error("KVM API version is {found}, peapod needs {expected}: {FIX}")]
    ApiVersion { found: i32, expected: i32 },
    #[error("KVM lacks {name}, needed for {purpose}: {FIX}")]
    MissingCap {
        name: &'static str,
        purpose: &'static str,
    },
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    SupportedCpuid(vmm_sys_util::errno::Error),
}

/// Checks an API version and a capability query against what the VMM needs; `has` answers
/// `KVM_CHECK_EXTENSION` (a real KVM in [`Kvm::open`], a table in tests).
pub fn check_kvm(api_version: i32, has: impl Fn(Cap) -> bool) -> Result<(), KvmError> {
    let expected = KVM_API_VERSION as i32;
    if api_version != expected {
        return Err(KvmError::ApiVersion {
            found: api_version,
            expected,
        });
    }
    match REQUIRED_CAPS.iter().find(|req| !has(req.cap)) {
        Some(req) => Err(KvmError::MissingCap {
            name: req.name,
            purpose: req.purpose,
        }),
        None => Ok(()),
    }
}

/// An open, checked `/dev/kvm`.
#[derive(Debug)]
pub struct Kvm {
    kvm: kvm_ioctls::Kvm,
    extension: VirtExtension,
}

impl Kvm {
    /// Opens this host's KVM after checking it can run peapod's guests.
    pub fn open() -> Result<Self, KvmError> {
        Self::open_on(&HostVirt::probe())
    }

    /// Opens the KVM that `host` describes, refusing with [`KvmUnusable`]'s message when the
    /// host cannot run guests directly (this happens before any ioctl is made).
    pub fn open_on(host: &HostVirt) -> Result<Self, KvmError> {
        let extension = host.hardware_kvm()?;
        let open_error = |source| KvmError::Open {
            path: host.kvm_path.clone(),
            source,
        };
        let path = CString::new(host.kvm_path.as_os_str().as_bytes())
            .map_err(|_| open_error(vmm_sys_util::errno::Error::new(libc::EINVAL)))?;
        let kvm = kvm_ioctls::Kvm::new_with_path(&path).map_err(open_error)?;
        check_kvm(kvm.get_api_version(), |cap| kvm.check_extension(cap))?;
        Ok(Kvm { kvm, extension })
    }

    /// Which hardware extension (VT-x or AMD-V) backs this KVM.
    pub fn extension(&self) -> VirtExtension {
        self.extension
    }

    /// The raw handle, for creating VMs.
    pub fn fd(&self) -> &kvm_ioctls::Kvm {
        &self.kvm
    }

    /// The CPUID leaves this KVM can give a guest (the base for a vCPU's CPUID).
    pub fn supported_cpuid(&self) -> Result<CpuId, KvmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::SupportedCpuid)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::host::KvmNode;

    fn host(kvm: KvmNode, pvm: bool, extension: Option<VirtExtension>) -> HostVirt {
        HostVirt {
            kvm_path: Path::new("/dev/kvm").to_path_buf(),
            kvm,
            pvm,
            extension,
            nested: None,
        }
    }

    #[test]
    fn pvm_and_absent_kvm_are_refused_before_any_ioctl_and_point_at_the_test_bed() {
        for h in [
            host(KvmNode::Usable, true, Some(VirtExtension::Svm)),
            host(KvmNode::Absent, false, None),
            host(KvmNode::Usable, false, None),
        ] {
            let err = Kvm::open_on(&h).unwrap_err();
            assert!(matches!(err, KvmError::Unusable(_)), "{err:?}");
            assert!(err.to_string().contains("peapod machine run"), "{err}");
        }
        let err = Kvm::open_on(&host(KvmNode::Usable, true, None)).unwrap_err();
        assert!(err.to_string().contains("PVM"), "{err}");
    }

    #[test]
    fn a_full_kvm_passes() {
        check_kvm(12, |_| true).unwrap();
    }

    #[test]
    fn a_wrong_api_version_is_refused() {
        let err = check_kvm(11, |_| true).unwrap_err();
        assert!(matches!(
            err,
            KvmError::ApiVersion {
                found: 11,
                expected: 12
            }
        ));
        assert!(err.to_string().contains("peapod machine run"), "{err}");
    }

    #[test]
    fn each_missing_capability_is_named_with_its_purpose() {
        for req in REQUIRED_CAPS {
            let err = check_kvm(12, |cap| cap != req.cap).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(req.name) && msg.contains(req.purpose), "{msg}");
            assert!(msg.contains("peapod machine run"), "{msg}");
        }
    }
}
