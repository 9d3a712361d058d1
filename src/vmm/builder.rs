//! The one place that builds VMs, in order: KVM, memory, VM, devices on the buses, guest
//! image and boot structures, vCPUs. Each step is an `attach_*`/`load_*` helper so that the
//! Linux boot (next) reuses them and differs only in what it loads.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use crate::vmm::boot::{BootError, LongModeEntry};
use crate::vmm::bus::{Bus, BusError};
use crate::vmm::devices::serial::SerialDevice;
use crate::vmm::hello::{self, HelloError};
use crate::vmm::kvm::{Kvm, KvmError};
use crate::vmm::layout::{HIMEM_START, SERIAL_COM1_PORT, SERIAL_PORT_WINDOW};
use crate::vmm::memory::{self, GuestMemory, MemoryError};
use crate::vmm::vcpu::{Vcpu, VcpuError, VcpuStop};
use crate::vmm::vm::{Vm, VmError};

/// Guest RAM for the built-in guest.
pub const HELLO_MEMORY: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    #[error("VM: {0}")]
    Vm(#[from] VmError),
    #[error("boot setup: {0}")]
    Boot(#[from] BootError),
    #[error("vCPU: {0}")]
    Vcpu(#[from] VcpuError),
    #[error("device placement: {0}")]
    Bus(#[from] BusError),
    #[error("cannot create the serial port's interrupt eventfd: {0}")]
    Serial(#[source] std::io::Error),
    #[error("built-in guest: {0}")]
    Hello(#[from] HelloError),
    #[error("cannot load {what} ({len} bytes) at guest address {addr:#x}: {source}")]
    Load {
        what: &'static str,
        addr: u64,
        len: usize,
        #[source]
        source: GuestMemoryError,
    },
}

/// Puts a UART writing to `out` at COM1 on `pio`; returns it (for its interrupt eventfd).
pub fn attach_serial<W: Write + Send + 'static>(
    pio: &mut Bus,
    out: W,
) -> Result<Arc<Mutex<SerialDevice<W>>>, BuildError> {
    let serial = Arc::new(Mutex::new(
        SerialDevice::new(out).map_err(BuildError::Serial)?,
    ));
    pio.insert(
        "serial (COM1)",
        u64::from(SERIAL_COM1_PORT),
        SERIAL_PORT_WINDOW,
        serial.clone(),
    )?;
    Ok(serial)
}

/// Copies `bytes` into guest memory at `addr`.
pub fn load_bytes(
    mem: &GuestMemory,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), BuildError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| BuildError::Load {
            what,
            addr,
            len: bytes.len(),
            source,
        })
}

/// Creates vCPU `id` with KVM's supported CPUID and puts it at `entry` in long mode.
pub fn create_long_mode_vcpu(
    kvm: &Kvm,
    vm: &Vm,
    id: u64,
    entry: &LongModeEntry,
    pio: &Bus,
    mmio: &Bus,
) -> Result<Vcpu, BuildError> {
    let vcpu = Vcpu::new(id, vm.create_vcpu_fd(id)?, pio.clone(), mmio.clone());
    vcpu.set_cpuid(&kvm.supported_cpuid()?)?;
    vcpu.enter_long_mode(entry)?;
    Ok(vcpu)
}

/// Builds a VM running the built-in guest (see [`hello`]) with its serial port writing to
/// `out`, and runs it until its vCPU stops. The guest halts after writing
/// [`hello::MESSAGE`], so a working VMM returns [`VcpuStop::Halted`].
///
/// The VM has no in-kernel irqchip, so the guest's `HLT` reaches us as an exit.
pub fn run_hello<W: Write + Send + 'static>(out: W) -> Result<VcpuStop, BuildError> {
    let kvm = Kvm::open()?;
    let memory = memory::create_guest_memory(HELLO_MEMORY)?;
    let vm = Vm::new(&kvm, memory)?;

    let mut pio = Bus::new();
    let mmio = Bus::new();
    attach_serial(&mut pio, out)?;

    let code = hello::program(SERIAL_COM1_PORT, hello::MESSAGE)?;
    load_bytes(vm.memory(), "built-in guest", HIMEM_START, &code)?;
    let entry = LongModeEntry::write(vm.memory(), HIMEM_START)?;

    let mut vcpu = create_long_mode_vcpu(&kvm, &vm, 0, &entry, &pio, &mmio)?;
    Ok(vcpu.run()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::memory::create_guest_memory;

    #[test]
    fn the_serial_port_sits_at_com1_and_prints() {
        let mut pio = Bus::new();
        let serial = attach_serial(&mut pio, Vec::new()).unwrap();
        for &b in b"ok" {
            pio.write(0x3f8, &[b]).unwrap();
        }
        assert_eq!(serial.lock().unwrap().writer().as_slice(), b"ok");
        assert_eq!(
            pio.describe(0x3ff).map(|(name, _)| name),
            Some("serial (COM1)")
        );
        assert!(pio.lookup(0x400).is_none());
        // A second COM1 is refused.
        assert!(matches!(
            attach_serial(&mut pio, Vec::new()),
            Err(BuildError::Bus(BusError::Overlap { .. }))
        ));
    }

    #[test]
    fn the_hello_image_fits_and_lands_where_the_vcpu_starts() {
        let mem = create_guest_memory(HELLO_MEMORY).unwrap();
        let code = hello::program(SERIAL_COM1_PORT, hello::MESSAGE).unwrap();
        load_bytes(&mem, "built-in guest", HIMEM_START, &code).unwrap();
        let entry = LongModeEntry::write(&mem, HIMEM_START).unwrap();
        let mut back = vec![0u8; code.len()];
        mem.read_slice(&mut back, GuestAddress(entry.rip)).unwrap();
        assert_eq!(back, code);
    }

    /// A writer whose bytes the test can read after the VM (which owns the writer) is gone.
    #[derive(Clone, Default)]
    struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Boots the built-in guest in-process on real KVM. Ignored by default (a plain
    /// `cargo test` must not need KVM); the e2e test `kvm::tiny_guest_writes_to_a_port_and_halts`
    /// covers the same path in the test bed. By hand, where hardware KVM is:
    /// `cargo test --lib -- --ignored the_built_in_guest`.
    #[test]
    #[ignore = "needs hardware KVM; covered by the e2e test bed"]
    fn the_built_in_guest_prints_its_message_and_halts_on_hardware_kvm() {
        let out = SharedBuffer::default();
        let stop = run_hello(out.clone()).unwrap();
        assert_eq!(stop, VcpuStop::Halted);
        assert_eq!(out.0.lock().unwrap().as_slice(), hello::MESSAGE);
    }

    #[test]
    fn loading_past_the_end_of_memory_is_an_error() {
        let mem = create_guest_memory(HELLO_MEMORY).unwrap();
        let err = load_bytes(&mem, "kernel", HELLO_MEMORY - 2, &[0; 4]).unwrap_err();
        assert!(err.to_string().contains("kernel"), "{err}");
    }
}
