//! Test doubles: guest memory and the driver's side of a split virtqueue, written field by
//! field so that a test can build any chain a hostile guest could.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio as reg;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::vmm::bus::BusDevice;
use crate::vmm::memory::GuestMemory;

/// Size of [`guest_memory`]: everything at or past this address is outside guest memory.
pub const MEM_SIZE: u64 = 0x10_0000;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

/// 1 MiB of guest memory at guest address 0.
pub fn guest_memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// The driver's view of a split queue in guest memory.
pub struct DriverQueue {
    mem: GuestMemory,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_free: u16,
}

impl DriverQueue {
    /// Lays a queue of `size` out at `base`: descriptor table, then available ring, then used
    /// ring.
    pub fn new(mem: &GuestMemory, base: u64, size: u16) -> Self {
        let n = u64::from(size);
        let desc = base;
        let avail = desc + 16 * n;
        let used = (avail + 6 + 2 * n).next_multiple_of(4);
        let end = used + 6 + 8 * n;
        mem.write_slice(&vec![0u8; (end - base) as usize], GuestAddress(base))
            .unwrap();
        DriverQueue {
            mem: mem.clone(),
            size,
            desc,
            avail,
            used,
            next_free: 0,
        }
    }

    /// A device-side queue for these rings, as the transport would build it.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        assert!(q.is_valid(&self.mem));
        q
    }

    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.desc + 16 * u64::from(index);
        self.mem.write_obj(addr, GuestAddress(at)).unwrap();
        self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }

    /// Writes a well-formed chain of `(addr, len, device_writable)` buffers into free
    /// descriptors and returns its head (not yet published). Descriptors are reused round
    /// robin, so serve chains before adding more than a table's worth.
    pub fn add_chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        assert!(bufs.len() <= usize::from(self.size));
        if usize::from(self.next_free) + bufs.len() > usize::from(self.size) {
            self.next_free = 0;
        }
        let head = self.next_free;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let index = head + i as u16;
            let mut flags = if writable { F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= F_NEXT;
            }
            self.write_desc(index, addr, len, flags, index + 1);
        }
        self.next_free += bufs.len() as u16;
        head
    }

    /// Puts `head` on the available ring.
    pub fn publish(&self, head: u16) {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.avail + 2)).unwrap();
        let slot = self.avail + 4 + 2 * u64::from(idx % self.size);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Overwrites the available ring's index (to corrupt it).
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used ring entry `i`: (descriptor head, bytes written).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        (
            self.mem.read_obj(GuestAddress(at)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }
}

/// Guest register access as Linux's virtio_mmio driver does it: aligned 32-bit words.
pub fn reg_read(dev: &mut dyn BusDevice, offset: u32) -> u32 {
    let mut data = [0u8; 4];
    dev.read(u64::from(offset), &mut data);
    u32::from_le_bytes(data)
}

pub fn reg_write(dev: &mut dyn BusDevice, offset: u32, value: u32) {
    dev.write(u64::from(offset), &value.to_le_bytes());
}

/// Adds `bit` to the status register the way Linux does (read, or in, write back).
pub fn add_status(dev: &mut dyn BusDevice, bit: u32) {
    let status = reg_read(dev, reg::VIRTIO_MMIO_STATUS);
    reg_write(dev, reg::VIRTIO_MMIO_STATUS, status | bit);
}

/// Linux's probe up to FEATURES_OK: checks the identity registers, resets, acknowledges,
/// reads the offered features and accepts `accept(offered)`. Returns the status read back
/// (FEATURES_OK is clear if the device refused the features).
pub fn linux_negotiate(dev: &mut dyn BusDevice, accept: impl Fn(u64) -> u64) -> u32 {
    assert_eq!(reg_read(dev, reg::VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(reg_read(dev, reg::VIRTIO_MMIO_VERSION), 2);
    assert_ne!(reg_read(dev, reg::VIRTIO_MMIO_DEVICE_ID), 0);
    reg_write(dev, reg::VIRTIO_MMIO_STATUS, 0);
    add_status(dev, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    add_status(dev, VIRTIO_CONFIG_S_DRIVER);
    reg_write(dev, reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    let mut offered = u64::from(reg_read(dev, reg::VIRTIO_MMIO_DEVICE_FEATURES)) << 32;
    reg_write(dev, reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    offered |= u64::from(reg_read(dev, reg::VIRTIO_MMIO_DEVICE_FEATURES));
    let accepted = accept(offered);
    reg_write(dev, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    reg_write(
        dev,
        reg::VIRTIO_MMIO_DRIVER_FEATURES,
        (accepted >> 32) as u32,
    );
    reg_write(dev, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    reg_write(dev, reg::VIRTIO_MMIO_DRIVER_FEATURES, accepted as u32);
    add_status(dev, VIRTIO_CONFIG_S_FEATURES_OK);
    reg_read(dev, reg::VIRTIO_MMIO_STATUS)
}

/// Linux's `vm_setup_vq` for queue `index` with the rings of `q`.
pub fn linux_setup_queue(dev: &mut dyn BusDevice, index: u32, q: &DriverQueue) {
    reg_write(dev, reg::VIRTIO_MMIO_QUEUE_SEL, index);
    assert_eq!(reg_read(dev, reg::VIRTIO_MMIO_QUEUE_READY), 0);
    let max = reg_read(dev, reg::VIRTIO_MMIO_QUEUE_NUM_MAX);
    assert!(max >= u32::from(q.size), "queue {index}: max {max}");
    reg_write(dev, reg::VIRTIO_MMIO_QUEUE_NUM, u32::from(q.size));
    for (low, addr) in [
        (reg::VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc),
        (reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.avail),
        (reg::VIRTIO_MMIO_QUEUE_USED_LOW, q.used),
    ] {
        reg_write(dev, low, addr as u32);
        reg_write(dev, low + 4, (addr >> 32) as u32);
    }
    reg_write(dev, reg::VIRTIO_MMIO_QUEUE_READY, 1);
}

/// The whole of Linux's bring-up with the default feature choice (everything offered),
/// setting up `queues[i]` as queue `i`. Returns the final status.
pub fn linux_bring_up(dev: &mut dyn BusDevice, queues: &[&DriverQueue]) -> u32 {
    let status = linux_negotiate(dev, |offered| offered);
    assert_ne!(status & VIRTIO_CONFIG_S_FEATURES_OK, 0, "features refused");
    for (i, q) in queues.iter().enumerate() {
        linux_setup_queue(dev, i as u32, q);
    }
    add_status(dev, VIRTIO_CONFIG_S_DRIVER_OK);
    reg_read(dev, reg::VIRTIO_MMIO_STATUS)
}
