//! The virtio-mmio register window as a hostile driver sees it: any sequence of reads and
//! writes of any size at any offset (registers, config space, past both), status
//! regressions, resets and queue setups pointing anywhere, interleaved with guest memory
//! writes and kicks, on each of peapod's devices. The transport must never panic and must
//! only activate a device with queues it checked.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use peapod::vmm::bus::BusDevice;
use peapod::vmm::virtio::MMIO_WINDOW_SIZE;
use peapod_fuzz::devices::AnyDevice;
use peapod_fuzz::driver::{Driver, write_mem};
use virtio_bindings::virtio_mmio as reg;

/// The registers a driver writes, so that aligned 32-bit writes reach them often.
const REGS: &[u32] = &[
    reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    reg::VIRTIO_MMIO_DRIVER_FEATURES,
    reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL,
    reg::VIRTIO_MMIO_QUEUE_SEL,
    reg::VIRTIO_MMIO_QUEUE_NUM,
    reg::VIRTIO_MMIO_QUEUE_READY,
    reg::VIRTIO_MMIO_QUEUE_NOTIFY,
    reg::VIRTIO_MMIO_INTERRUPT_ACK,
    reg::VIRTIO_MMIO_STATUS,
    reg::VIRTIO_MMIO_QUEUE_DESC_LOW,
    reg::VIRTIO_MMIO_QUEUE_DESC_HIGH,
    reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
    reg::VIRTIO_MMIO_QUEUE_USED_LOW,
    reg::VIRTIO_MMIO_QUEUE_USED_HIGH,
    reg::VIRTIO_MMIO_SHM_SEL,
    reg::VIRTIO_MMIO_GUEST_PAGE_SIZE,
    reg::VIRTIO_MMIO_QUEUE_ALIGN,
    reg::VIRTIO_MMIO_QUEUE_PFN,
    // Read-only registers and the configuration space, written anyway.
    reg::VIRTIO_MMIO_MAGIC_VALUE,
    reg::VIRTIO_MMIO_DEVICE_FEATURES,
    reg::VIRTIO_MMIO_QUEUE_NUM_MAX,
    reg::VIRTIO_MMIO_CONFIG_GENERATION,
    reg::VIRTIO_MMIO_CONFIG,
];

#[derive(Arbitrary, Debug)]
enum Op {
    /// A read of `len` bytes (any length, as the bus passes it on) at any offset.
    Read {
        offset: u16,
        len: u8,
    },
    /// A write of any bytes at any offset.
    Write {
        offset: u16,
        data: Vec<u8>,
    },
    /// An aligned 32-bit write to a known register.
    Reg {
        reg: u8,
        value: u32,
    },
    /// Linux's whole bring-up (the queues' rings at their usual places).
    BringUp,
    Mem {
        offset: u32,
        bytes: Vec<u8>,
    },
    /// The device thread serves a queue (as after a notify eventfd).
    Kick {
        queue: u8,
    },
    /// The device thread serves the device's host descriptors.
    Host,
    ConfigChanged,
}

#[derive(Arbitrary, Debug)]
struct Input {
    device: AnyDevice,
    queue_sizes: [u8; 3],
    features: u64,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    peapod_fuzz::init();
    let (device, mut host) = input.device.build();
    let mut driver = Driver::new(device, &input.queue_sizes, input.features);
    for op in input.ops.iter().take(128) {
        match op {
            Op::Read { offset, len } => {
                let mut data = vec![0u8; usize::from(*len)];
                let offset = u64::from(*offset) % MMIO_WINDOW_SIZE;
                driver.transport.read(offset, &mut data);
            }
            Op::Write { offset, data } => {
                let offset = u64::from(*offset) % MMIO_WINDOW_SIZE;
                driver.transport.write(offset, &data[..data.len().min(64)]);
            }
            Op::Reg { reg, value } => {
                let offset = REGS[usize::from(*reg) % REGS.len()];
                driver.reg_write(offset, *value);
            }
            Op::BringUp => {
                driver.bring_up();
            }
            Op::Mem { offset, bytes } => write_mem(&driver.mem, *offset, bytes),
            Op::Kick { queue } => driver.transport.process_queue(usize::from(*queue)),
            Op::Host => host.event(),
            Op::ConfigChanged => driver.transport.config_changed(),
        }
    }
});
