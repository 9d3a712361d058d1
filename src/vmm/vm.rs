//! A KVM VM: its file descriptor and the guest memory registered with it.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend as _, GuestMemoryRegion, MemoryRegionAddress};

use crate::vmm::kvm::Kvm;
use crate::vmm::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::vmm::memory::GuestMemory;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(
        "KVM_CREATE_VM failed: {0}; check that no other hypervisor holds the CPU's virtualization extension"
    )]
    Create(#[source] vmm_sys_util::errno::Error),
    #[error(
        "cannot register guest memory slot {slot} at {guest_addr:#x} (+{size:#x}) with KVM: {source}"
    )]
    RegisterMemory {
        slot: u32,
        guest_addr: u64,
        size: u64,
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    #[error("guest memory region at {0:#x} has no host mapping")]
    HostAddress(u64),
    #[error("KVM_SET_IDENTITY_MAP_ADDR or KVM_SET_TSS_ADDR failed: {0}")]
    TssAddress(#[source] vmm_sys_util::errno::Error),
    #[error("cannot create the in-kernel {what}: {source}")]
    Irqchip {
        what: &'static str,
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    #[error("KVM_CREATE_VCPU {id} failed: {source}")]
    CreateVcpu {
        id: u64,
        #[source]
        source: vmm_sys_util::errno::Error,
    },
}

/// A VM with its memory. Field order matters: the VM fd (and with it KVM's use of the memory
/// slots) is dropped before the mappings behind them.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
    memory: GuestMemory,
}

impl Vm {
    /// Creates a VM and registers every region of `memory` as a KVM memory slot.
    pub fn new(kvm: &Kvm, memory: GuestMemory) -> Result<Self, VmError> {
        let fd = kvm.fd().create_vm().map_err(VmError::Create)?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(VmError::TssAddress)?;
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(VmError::TssAddress)?;
        let vm = Vm { fd, memory };
        vm.register_memory()?;
        Ok(vm)
    }

    fn register_memory(&self) -> Result<(), VmError> {
        for (slot, region) in (0u32..).zip(self.memory.iter()) {
            let guest_addr = region.start_addr().0;
            let size = region.len();
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| VmError::HostAddress(guest_addr))?;
            let mem_region = kvm_userspace_memory_region {
                slot,
                guest_phys_addr: guest_addr,
                memory_size: size,
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: `host..host + size` is the whole mapping of `region`, which `self.memory`
            // owns and keeps mapped for as long as `self.fd` exists (fields drop in order, fd
            // first); slots are numbered by region, so none overlaps another.
            unsafe { self.fd.set_user_memory_region(mem_region) }.map_err(|source| {
                VmError::RegisterMemory {
                    slot,
                    guest_addr,
                    size,
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Adds the in-kernel PIC, IOAPIC, local APICs and PIT (for guests that take interrupts:
    /// Linux). Note: with a local APIC in the kernel, `HLT` no longer exits to the VMM.
    pub fn create_irqchip(&self) -> Result<(), VmError> {
        self.fd
            .create_irq_chip()
            .map_err(|source| VmError::Irqchip {
                what: "irqchip (PIC, IOAPIC)",
                source,
            })?;
        let pit = kvm_bindings::kvm_pit_config {
            flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(|source| VmError::Irqchip {
            what: "PIT",
            source,
        })
    }

    /// Creates vCPU `id` (create the irqchip first, if any).
    pub fn create_vcpu_fd(&self, id: u64) -> Result<VcpuFd, VmError> {
        self.fd
            .create_vcpu(id)
            .map_err(|source| VmError::CreateVcpu { id, source })
    }

    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// The raw handle, for ioctls this type does not wrap (irqfd, ioeventfd).
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }
}
