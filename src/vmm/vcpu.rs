//! vCPUs: setting up a vCPU's registers and running it, with exit handling as a plain
//! function ([`handle_exit`]) over our own [`VcpuExit`] so that it is unit-tested with
//! synthetic exits, no KVM needed.
//!
//! Port and MMIO accesses are dispatched through [`Bus`]es. What happens on each exit:
//!
//! | exit | action |
//! |---|---|
//! | port/MMIO access to a device on the bus | the device handles it; continue |
//! | port/MMIO read where no device is | the guest reads all ones (as on an empty ISA/PCI bus); continue |
//! | port/MMIO write where no device is | ignored (logged at debug); continue |
//! | `HLT` | stop: [`VcpuStop::Halted`] |
//! | shutdown (x86 triple fault, also how some guests reboot) | stop: [`VcpuStop::Shutdown`] |
//! | system event (PSCI/ACPI shutdown, reset, crash) | stop: [`VcpuStop::SystemEvent`] |
//! | interrupted (`KVM_EXIT_INTR`, `EINTR`) | continue |
//! | failed entry, internal error, anything else | error naming the exit |

use kvm_bindings::{Msrs, kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;

use crate::vmm::boot::{LongModeEntry, PvhEntry};
use crate::vmm::bus::{Bus, BusError};
use crate::vmm::ratelimit::limited;
use crate::vmm::stop::{FaultReport, VmStop};
use crate::vmm::vcpu_stats::VcpuStats;

/// Model-specific registers set at boot, and their values (as Firecracker and QEMU do): the
/// system-call MSRs cleared, the TSC at 0, fast string operations on, MTRRs on with
/// write-back as the default memory type.
pub mod msr {
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    /// IA32_MISC_ENABLE: fast string operations.
    pub const MISC_ENABLE_FAST_STRING: u64 = 1;
    /// MTRRdefType: MTRRs enabled (bit 11), default type write-back (6).
    pub const MTRR_ENABLE_WRITE_BACK: u64 = (1 << 11) | 6;
}

/// The boot MSRs (see [`msr`]).
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    use msr::*;
    [
        (IA32_SYSENTER_CS, 0),
        (IA32_SYSENTER_ESP, 0),
        (IA32_SYSENTER_EIP, 0),
        (STAR, 0),
        (CSTAR, 0),
        (KERNEL_GS_BASE, 0),
        (SYSCALL_MASK, 0),
        (LSTAR, 0),
        (IA32_TSC, 0),
        (IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MTRR_DEF_TYPE, MTRR_ENABLE_WRITE_BACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Local APIC register offsets and LVT delivery modes.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (dst, src) in lapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = src as std::os::raw::c_char;
    }
}

/// Wires the local APIC's LINT0 to the PIC (ExtINT) and LINT1 to NMI, as a PC's firmware does
/// (and as the MP table says): the delivery-mode field (bits 8..=10) of each LVT entry.
pub fn set_lint_modes(lapic: &mut kvm_lapic_state) {
    for (offset, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        let value = lapic_reg(lapic, offset);
        set_lapic_reg(lapic, offset, (value & !0x700) | (mode << 8));
    }
}

/// The vCPU exits peapod tells apart; borrowed data points into the vCPU's `kvm_run` page
/// (what a read fills in goes back to the guest on the next `KVM_RUN`).
#[derive(Debug)]
pub enum VcpuExit<'a> {
    /// `in` from `port`: fill `data` (for string I/O, `count * size` bytes).
    IoIn { port: u16, data: &'a mut [u8] },
    /// `out` of `data` to `port`.
    IoOut { port: u16, data: &'a [u8] },
    /// A read of guest-physical `addr` that no memory slot backs: fill `data`.
    MmioRead { addr: u64, data: &'a mut [u8] },
    /// A write of `data` to guest-physical `addr` that no memory slot backs.
    MmioWrite { addr: u64, data: &'a [u8] },
    /// The guest ran `HLT` (only exits to us without an in-kernel local APIC).
    Hlt,
    /// The guest triple-faulted (x86).
    Shutdown,
    /// A system event (`KVM_SYSTEM_EVENT_*`: shutdown, reset, crash...).
    SystemEvent { kind: u32 },
    /// KVM could not enter the guest; `reason` is the hardware's reason code.
    FailEntry { reason: u64, cpu: u32 },
    /// KVM hit an internal error (often an instruction it cannot emulate).
    InternalError,
    /// `KVM_RUN` returned early because of a signal or `immediate_exit`.
    Interrupted,
    /// Any other exit, by its KVM name.
    Other(&'static str),
}

impl<'a> From<kvm_ioctls::VcpuExit<'a>> for VcpuExit<'a> {
    fn from(exit: kvm_ioctls::VcpuExit<'a>) -> Self {
        use kvm_ioctls::VcpuExit as K;
        match exit {
            K::IoIn(port, data) => VcpuExit::IoIn { port, data },
            K::IoOut(port, data) => VcpuExit::IoOut { port, data },
            K::MmioRead(addr, data) => VcpuExit::MmioRead { addr, data },
            K::MmioWrite(addr, data) => VcpuExit::MmioWrite { addr, data },
            K::Hlt => VcpuExit::Hlt,
            K::Shutdown => VcpuExit::Shutdown,
            K::SystemEvent(kind, _) => VcpuExit::SystemEvent { kind },
            K::FailEntry(reason, cpu) => VcpuExit::FailEntry { reason, cpu },
            K::InternalError => VcpuExit::InternalError,
            K::Intr => VcpuExit::Interrupted,
            K::Unknown => VcpuExit::Other("KVM_EXIT_UNKNOWN"),
            K::Exception => VcpuExit::Other("KVM_EXIT_EXCEPTION"),
            K::Hypercall(_) => VcpuExit::Other("KVM_EXIT_HYPERCALL"),
            K::Debug(_) => VcpuExit::Other("KVM_EXIT_DEBUG"),
            K::IrqWindowOpen => VcpuExit::Other("KVM_EXIT_IRQ_WINDOW_OPEN"),
            K::SetTpr => VcpuExit::Other("KVM_EXIT_SET_TPR"),
            K::TprAccess => VcpuExit::Other("KVM_EXIT_TPR_ACCESS"),
            K::Nmi => VcpuExit::Other("KVM_EXIT_NMI"),
            K::IoapicEoi(_) => VcpuExit::Other("KVM_EXIT_IOAPIC_EOI"),
            K::Hyperv => VcpuExit::Other("KVM_EXIT_HYPERV"),
            K::X86Rdmsr(_) => VcpuExit::Other("KVM_EXIT_X86_RDMSR"),
            K::X86Wrmsr(_) => VcpuExit::Other("KVM_EXIT_X86_WRMSR"),
            K::MemoryFault { .. } => VcpuExit::Other("KVM_EXIT_MEMORY_FAULT"),
            _ => VcpuExit::Other("an exit reason peapod does not know"),
        }
    }
}

/// Why a vCPU stopped running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuStop {
    /// The guest ran `HLT`.
    Halted,
    /// The guest triple-faulted.
    Shutdown,
    /// The guest asked for a shutdown, reset or similar (`KVM_SYSTEM_EVENT_*` kind).
    SystemEvent(u32),
}

/// What the run loop does after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitAction {
    /// Enter the guest again.
    Continue,
    /// Stop running this vCPU.
    Stop(VcpuStop),
}

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error(
        "KVM could not enter the guest on vCPU {cpu} (hardware entry failure reason {reason:#x}): \
         the vCPU's registers are invalid for this CPU"
    )]
    FailEntry { reason: u64, cpu: u32 },
    #[error(
        "KVM reported an internal error (often an instruction it cannot emulate); on PVM or \
         other emulating KVMs run inside the nested test bed: `peapod machine run -- <command>`"
    )]
    InternalError,
    #[error("unhandled vCPU exit {0}")]
    Unhandled(&'static str),
    #[error("device access failed: {0}")]
    Device(#[source] BusError),
    #[error("KVM_RUN failed: {0}")]
    Run(#[source] vmm_sys_util::errno::Error),
    #[error("cannot set up the vCPU: {what} failed: {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: vmm_sys_util::errno::Error,
    },
}

/// Decides what one exit means, dispatching I/O to the buses. Never panics on guest input.
pub fn handle_exit(exit: VcpuExit<'_>, pio: &Bus, mmio: &Bus) -> Result<ExitAction, VcpuError> {
    match exit {
        VcpuExit::IoIn { port, data } => {
            bus_read(pio, "port", u64::from(port), data)?;
        }
        VcpuExit::IoOut { port, data } => {
            bus_write(pio, "port", u64::from(port), data)?;
        }
        VcpuExit::MmioRead { addr, data } => {
            bus_read(mmio, "MMIO", addr, data)?;
        }
        VcpuExit::MmioWrite { addr, data } => {
            bus_write(mmio, "MMIO", addr, data)?;
        }
        VcpuExit::Hlt => return Ok(ExitAction::Stop(VcpuStop::Halted)),
        VcpuExit::Shutdown => return Ok(ExitAction::Stop(VcpuStop::Shutdown)),
        VcpuExit::SystemEvent { kind } => {
            return Ok(ExitAction::Stop(VcpuStop::SystemEvent(kind)));
        }
        VcpuExit::Interrupted => {}
        VcpuExit::FailEntry { reason, cpu } => {
            return Err(VcpuError::FailEntry { reason, cpu });
        }
        VcpuExit::InternalError => return Err(VcpuError::InternalError),
        VcpuExit::Other(name) => return Err(VcpuError::Unhandled(name)),
    }
    Ok(ExitAction::Continue)
}

fn bus_read(bus: &Bus, space: &str, addr: u64, data: &mut [u8]) -> Result<(), VcpuError> {
    match bus.read(addr, data) {
        Ok(()) => Ok(()),
        Err(BusError::NoDevice(_)) => {
            // A guest can probe absent ports without end: limited, as every line it causes.
            limited!(
                debug,
                "{space} read of {} bytes at {addr:#x}: no device",
                data.len()
            );
            data.fill(0xff);
            Ok(())
        }
        Err(e) => Err(VcpuError::Device(e)),
    }
}

fn bus_write(bus: &Bus, space: &str, addr: u64, data: &[u8]) -> Result<(), VcpuError> {
    match bus.write(addr, data) {
        Ok(()) => Ok(()),
        Err(BusError::NoDevice(_)) => {
            limited!(
                debug,
                "{space} write of {data:02x?} at {addr:#x}: no device, ignored"
            );
            Ok(())
        }
        Err(e) => Err(VcpuError::Device(e)),
    }
}

/// One vCPU of a VM, with the buses its exits go to.
#[derive(Debug)]
pub struct Vcpu {
    id: u64,
    fd: VcpuFd,
    pio: Bus,
    mmio: Bus,
    /// KVM's counters for this vCPU, for a fault report (`None` on kernels without them).
    stats: Option<VcpuStats>,
    /// Exits that came to the VMM (port and MMIO accesses, halts, events).
    vmm_exits: u64,
    first_entry: Option<std::time::Instant>,
}

/// The register state KVM gives a vCPU at reset (and, on AMD, after a shutdown: KVM
/// re-initialises the vCPU, so the registers of the fault are gone).
const RESET_RIP: u64 = 0xfff0;
const RESET_CS_BASE: u64 = 0xffff_0000;

impl Vcpu {
    pub fn new(id: u64, fd: VcpuFd, pio: Bus, mmio: Bus) -> Self {
        let stats = VcpuStats::open(&fd)
            .map_err(|e| tracing::debug!("vCPU {id}: no KVM statistics: {e}"))
            .ok();
        Vcpu {
            id,
            fd,
            pio,
            mmio,
            stats,
            vmm_exits: 0,
            first_entry: None,
        }
    }

    /// What this vCPU can tell about a triple fault it just stopped for: its exit counts
    /// (KVM's and the VMM's), how long it ran, and its registers as KVM gives them now.
    pub fn fault_report(&self) -> FaultReport {
        let kvm = self.stats.as_ref().and_then(|s| {
            s.read()
                .map_err(|e| tracing::warn!("vCPU {}: {e}", self.id))
                .ok()
        });
        let ran_ms = self.first_entry.map_or(0, |t| {
            u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
        });
        FaultReport {
            vmm_exits: self.vmm_exits,
            kvm,
            ran_ms,
            registers: self.registers_now(),
        }
    }

    fn registers_now(&self) -> Option<String> {
        let regs = self.fd.get_regs().ok()?;
        let sregs = self.fd.get_sregs().ok()?;
        let reset = if regs.rip == RESET_RIP && sregs.cs.base == RESET_CS_BASE {
            " (the reset state: KVM on AMD re-initialises a vCPU that shut down, so these \
             say nothing of the fault)"
        } else {
            ""
        };
        Some(format!(
            "rip {:#x} rsp {:#x} rflags {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} \
             efer {:#x} cs {:#x}{reset}",
            regs.rip,
            regs.rsp,
            regs.rflags,
            sregs.cr0,
            sregs.cr2,
            sregs.cr3,
            sregs.cr4,
            sregs.efer,
            sregs.cs.selector,
        ))
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The raw handle, for ioctls this type does not wrap.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Gives the vCPU these CPUID leaves (usually KVM's supported set, filtered).
    pub fn set_cpuid(&self, cpuid: &kvm_bindings::CpuId) -> Result<(), VcpuError> {
        self.fd
            .set_cpuid2(cpuid)
            .map_err(|source| VcpuError::Setup {
                what: "KVM_SET_CPUID2",
                source,
            })
    }

    /// Puts the vCPU in 64-bit long mode at `entry` (segments, paging, registers and a clean
    /// FPU); the GDT and page tables must already be in guest memory (see [`crate::vmm::boot`]).
    pub fn enter_long_mode(&self, entry: &LongModeEntry) -> Result<(), VcpuError> {
        let mut sregs: kvm_sregs = self.fd.get_sregs().map_err(|source| VcpuError::Setup {
            what: "KVM_GET_SREGS",
            source,
        })?;
        entry.apply_to_sregs(&mut sregs);
        self.fd
            .set_sregs(&sregs)
            .map_err(|source| VcpuError::Setup {
                what: "KVM_SET_SREGS",
                source,
            })?;
        let regs: kvm_regs = entry.regs();
        self.fd.set_regs(&regs).map_err(|source| VcpuError::Setup {
            what: "KVM_SET_REGS",
            source,
        })?;
        let fpu: kvm_fpu = crate::vmm::boot::initial_fpu();
        self.fd.set_fpu(&fpu).map_err(|source| VcpuError::Setup {
            what: "KVM_SET_FPU",
            source,
        })
    }

    /// Puts the vCPU at a PVH entry point: 32-bit protected mode, paging off, `ebx` at the
    /// start info, a clean FPU. The PVH GDT must be in guest memory ([`PvhEntry::write`]).
    pub fn enter_pvh(&self, entry: &PvhEntry) -> Result<(), VcpuError> {
        let mut sregs: kvm_sregs = self.fd.get_sregs().map_err(|source| VcpuError::Setup {
            what: "KVM_GET_SREGS",
            source,
        })?;
        entry.apply_to_sregs(&mut sregs);
        self.fd
            .set_sregs(&sregs)
            .map_err(|source| VcpuError::Setup {
                what: "KVM_SET_SREGS",
                source,
            })?;
        self.fd
            .set_regs(&entry.regs())
            .map_err(|source| VcpuError::Setup {
                what: "KVM_SET_REGS",
                source,
            })?;
        self.fd
            .set_fpu(&crate::vmm::boot::initial_fpu())
            .map_err(|source| VcpuError::Setup {
                what: "KVM_SET_FPU",
                source,
            })
    }

    /// Sets the [`boot_msrs`].
    pub fn set_boot_msrs(&self) -> Result<(), VcpuError> {
        let entries = boot_msrs();
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Setup {
            what: "building the MSR list",
            source: vmm_sys_util::errno::Error::new(libc::E2BIG),
        })?;
        let set = self.fd.set_msrs(&msrs).map_err(|source| VcpuError::Setup {
            what: "KVM_SET_MSRS",
            source,
        })?;
        if set != entries.len() {
            let refused = entries.get(set).map_or(0, |e| e.index);
            tracing::warn!(
                "vCPU {}: KVM set only {set} of {} boot MSRs (refused {refused:#x})",
                self.id,
                entries.len()
            );
        }
        Ok(())
    }

    /// LINT0 ExtINT, LINT1 NMI on the in-kernel local APIC (see [`set_lint_modes`]).
    pub fn set_lint_modes(&self) -> Result<(), VcpuError> {
        let mut lapic = self.fd.get_lapic().map_err(|source| VcpuError::Setup {
            what: "KVM_GET_LAPIC",
            source,
        })?;
        set_lint_modes(&mut lapic);
        self.fd
            .set_lapic(&lapic)
            .map_err(|source| VcpuError::Setup {
                what: "KVM_SET_LAPIC",
                source,
            })
    }

    /// Runs the guest until it stops (or an exit cannot be handled). A signal that interrupts
    /// `KVM_RUN` re-enters the guest (this loop has no stop request; see [`Vcpu::run_until`]).
    pub fn run(&mut self) -> Result<VcpuStop, VcpuError> {
        loop {
            if let Some(stop) = self.run_once()? {
                return Ok(stop);
            }
        }
    }

    /// Runs the guest until it stops, an exit cannot be handled, or `stop` is requested (by
    /// another vCPU, a device, or the VMM), which is checked before every entry. `None` means
    /// the VM was stopped from outside. Whoever requests a stop kicks this thread out of
    /// `KVM_RUN` with a signal; a kick that lands just before `KVM_RUN` is lost, so the kicker
    /// repeats it until the thread has left.
    pub fn run_until(&mut self, stop: &VmStop) -> Result<Option<VcpuStop>, VcpuError> {
        while !stop.is_requested() {
            if let Some(stopped) = self.run_once()? {
                return Ok(Some(stopped));
            }
        }
        Ok(None)
    }

    fn run_once(&mut self) -> Result<Option<VcpuStop>, VcpuError> {
        self.first_entry.get_or_insert_with(std::time::Instant::now);
        let exit = match self.fd.run() {
            Ok(exit) => {
                self.vmm_exits += 1;
                VcpuExit::from(exit)
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                VcpuExit::Interrupted
            }
            Err(e) => return Err(VcpuError::Run(e)),
        };
        match handle_exit(exit, &self.pio, &self.mmio)? {
            ExitAction::Stop(stop) => {
                tracing::debug!("vCPU {} stopped: {stop:?}", self.id);
                Ok(Some(stop))
            }
            ExitAction::Continue => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::bus::tests::recorder;

    fn buses() -> (Bus, Bus) {
        (Bus::new(), Bus::new())
    }

    #[test]
    fn port_writes_reach_the_device_on_the_pio_bus() {
        let (mut pio, mmio) = buses();
        let serial = recorder(0);
        pio.insert("serial", 0x3f8, 8, serial.clone()).unwrap();
        for &b in b"hi" {
            let exit = VcpuExit::IoOut {
                port: 0x3f8,
                data: &[b],
            };
            assert_eq!(
                handle_exit(exit, &pio, &mmio).unwrap(),
                ExitAction::Continue
            );
        }
        let exit = VcpuExit::IoOut {
            port: 0x3fb,
            data: &[0x80],
        };
        handle_exit(exit, &pio, &mmio).unwrap();
        assert_eq!(
            serial.lock().unwrap().writes,
            vec![(0, vec![b'h']), (0, vec![b'i']), (3, vec![0x80])]
        );
    }

    #[test]
    fn port_reads_are_filled_by_the_device() {
        let (mut pio, mmio) = buses();
        pio.insert("dev", 0x60, 4, recorder(0x42)).unwrap();
        let mut data = [0u8; 2];
        let exit = VcpuExit::IoIn {
            port: 0x61,
            data: &mut data,
        };
        assert_eq!(
            handle_exit(exit, &pio, &mmio).unwrap(),
            ExitAction::Continue
        );
        assert_eq!(data, [0x42, 0x42]);
    }

    #[test]
    fn accesses_where_no_device_is_read_ones_and_drop_writes() {
        let (pio, mmio) = buses();
        let mut data = [0u8; 4];
        let exit = VcpuExit::IoIn {
            port: 0x80,
            data: &mut data,
        };
        assert_eq!(
            handle_exit(exit, &pio, &mmio).unwrap(),
            ExitAction::Continue
        );
        assert_eq!(data, [0xff; 4]);
        let mut data = [0u8; 8];
        let exit = VcpuExit::MmioRead {
            addr: 0xd000_0000,
            data: &mut data,
        };
        handle_exit(exit, &pio, &mmio).unwrap();
        assert_eq!(data, [0xff; 8]);
        for exit in [
            VcpuExit::IoOut {
                port: 0x80,
                data: &[1],
            },
            VcpuExit::MmioWrite {
                addr: 0xfee0_0000,
                data: &[1, 2, 3, 4],
            },
        ] {
            assert_eq!(
                handle_exit(exit, &pio, &mmio).unwrap(),
                ExitAction::Continue
            );
        }
    }

    #[test]
    fn mmio_goes_to_the_mmio_bus_not_the_pio_bus() {
        let (mut pio, mut mmio) = buses();
        let port_dev = recorder(0);
        let mmio_dev = recorder(0x11);
        pio.insert("port", 0x3f8, 8, port_dev.clone()).unwrap();
        mmio.insert("virtio", 0xd000_0000, 0x1000, mmio_dev.clone())
            .unwrap();
        let mut data = [0u8; 4];
        let exit = VcpuExit::MmioRead {
            addr: 0xd000_0070,
            data: &mut data,
        };
        handle_exit(exit, &pio, &mmio).unwrap();
        assert_eq!(data, [0x11; 4]);
        let exit = VcpuExit::MmioWrite {
            addr: 0xd000_0050,
            data: &[0, 0, 0, 0],
        };
        handle_exit(exit, &pio, &mmio).unwrap();
        // An MMIO address that happens to equal a port number does not reach the port device.
        let exit = VcpuExit::MmioWrite {
            addr: 0x3f8,
            data: &[1],
        };
        handle_exit(exit, &pio, &mmio).unwrap();
        assert!(port_dev.lock().unwrap().writes.is_empty());
        let dev = mmio_dev.lock().unwrap();
        assert_eq!(dev.reads, vec![(0x70, 4)]);
        assert_eq!(dev.writes, vec![(0x50, vec![0; 4])]);
    }

    #[test]
    fn halt_shutdown_and_system_events_stop_the_vcpu() {
        let (pio, mmio) = buses();
        let cases = [
            (VcpuExit::Hlt, VcpuStop::Halted),
            (VcpuExit::Shutdown, VcpuStop::Shutdown),
            (
                VcpuExit::SystemEvent {
                    kind: kvm_bindings::KVM_SYSTEM_EVENT_RESET,
                },
                VcpuStop::SystemEvent(kvm_bindings::KVM_SYSTEM_EVENT_RESET),
            ),
        ];
        for (exit, stop) in cases {
            assert_eq!(
                handle_exit(exit, &pio, &mmio).unwrap(),
                ExitAction::Stop(stop)
            );
        }
        assert_eq!(
            handle_exit(VcpuExit::Interrupted, &pio, &mmio).unwrap(),
            ExitAction::Continue
        );
    }

    #[test]
    fn failures_and_unknown_exits_are_errors_not_panics() {
        let (pio, mmio) = buses();
        let err = handle_exit(
            VcpuExit::FailEntry {
                reason: 0x21,
                cpu: 0,
            },
            &pio,
            &mmio,
        )
        .unwrap_err();
        assert!(err.to_string().contains("0x21"), "{err}");
        assert!(matches!(
            handle_exit(VcpuExit::InternalError, &pio, &mmio),
            Err(VcpuError::InternalError)
        ));
        let err = handle_exit(VcpuExit::Other("KVM_EXIT_DEBUG"), &pio, &mmio).unwrap_err();
        assert!(err.to_string().contains("KVM_EXIT_DEBUG"), "{err}");
    }

    #[test]
    fn a_poisoned_device_fails_the_exit() {
        let (mut pio, mmio) = buses();
        let dev = recorder(0);
        pio.insert("dev", 0x3f8, 8, dev.clone()).unwrap();
        let _ = std::thread::spawn(move || {
            let _guard = dev.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        let exit = VcpuExit::IoOut {
            port: 0x3f8,
            data: &[1],
        };
        assert!(matches!(
            handle_exit(exit, &pio, &mmio),
            Err(VcpuError::Device(BusError::Poisoned(_)))
        ));
    }

    #[test]
    fn boot_msrs_enable_fast_strings_and_write_back_mtrrs() {
        let msrs = boot_msrs();
        let get = |index| msrs.iter().find(|e| e.index == index).map(|e| e.data);
        assert_eq!(get(msr::IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(msr::MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(get(msr::LSTAR), Some(0));
        assert_eq!(get(msr::IA32_TSC), Some(0));
        let mut indices: Vec<_> = msrs.iter().map(|e| e.index).collect();
        indices.dedup();
        assert_eq!(indices.len(), msrs.len(), "no MSR twice");
    }

    #[test]
    fn lint0_is_extint_and_lint1_is_nmi_other_bits_kept() {
        let mut lapic = kvm_lapic_state::default();
        // KVM's reset value: masked (bit 16), mode fixed.
        set_lapic_reg(&mut lapic, APIC_LVT_LINT0, 0x1_0000);
        set_lapic_reg(&mut lapic, APIC_LVT_LINT1, 0x1_0000 | 0x500);
        set_lapic_reg(&mut lapic, 0x340, 0xdead_beef);
        set_lint_modes(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT_LINT0), 0x1_0700);
        assert_eq!(lapic_reg(&lapic, APIC_LVT_LINT1), 0x1_0400);
        assert_eq!(
            lapic_reg(&lapic, 0x340),
            0xdead_beef,
            "neighbours untouched"
        );
    }

    #[test]
    fn kvm_exits_convert_to_ours() {
        let data = [b'h'];
        assert!(matches!(
            VcpuExit::from(kvm_ioctls::VcpuExit::IoOut(0x3f8, &data)),
            VcpuExit::IoOut {
                port: 0x3f8,
                data: [b'h']
            }
        ));
        let mut buf = [0u8; 4];
        assert!(matches!(
            VcpuExit::from(kvm_ioctls::VcpuExit::MmioRead(0x1000, &mut buf)),
            VcpuExit::MmioRead { addr: 0x1000, .. }
        ));
        assert!(matches!(
            VcpuExit::from(kvm_ioctls::VcpuExit::Hlt),
            VcpuExit::Hlt
        ));
        assert!(matches!(
            VcpuExit::from(kvm_ioctls::VcpuExit::FailEntry(7, 1)),
            VcpuExit::FailEntry { reason: 7, cpu: 1 }
        ));
        assert!(matches!(
            VcpuExit::from(kvm_ioctls::VcpuExit::Unsupported(999)),
            VcpuExit::Other(_)
        ));
    }
}
