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

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;

use crate::vmm::boot::LongModeEntry;
use crate::vmm::bus::{Bus, BusError};

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
            tracing::debug!(
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
            tracing::debug!("{space} write of {data:02x?} at {addr:#x}: no device, ignored");
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
}

impl Vcpu {
    pub fn new(id: u64, fd: VcpuFd, pio: Bus, mmio: Bus) -> Self {
        Vcpu { id, fd, pio, mmio }
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

    /// Runs the guest until it stops (or an exit cannot be handled). A signal that interrupts
    /// `KVM_RUN` re-enters the guest: there is no external stop request yet (the multi-vCPU
    /// step adds one, checked here, with `immediate_exit`).
    pub fn run(&mut self) -> Result<VcpuStop, VcpuError> {
        loop {
            let exit = match self.fd.run() {
                Ok(exit) => VcpuExit::from(exit),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    VcpuExit::Interrupted
                }
                Err(e) => return Err(VcpuError::Run(e)),
            };
            if let ExitAction::Stop(stop) = handle_exit(exit, &self.pio, &self.mmio)? {
                tracing::debug!("vCPU {} stopped: {stop:?}", self.id);
                return Ok(stop);
            }
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
