//! A hostile guest driver for one virtio-mmio device in a small guest memory.
//!
//! Queue `i`'s rings live at `i * QUEUE_SPAN` (descriptor table, available ring, used ring,
//! laid out as Linux does); buffers go from [`BUF_BASE`] to the end of memory. Linux's
//! bring-up sets the queues up once; after that [`GuestOp`]s write descriptors, ring entries
//! and bytes as the fuzzer likes, kick queues, acknowledge interrupts and reset the device.

use arbitrary::Arbitrary;
use peapod::vmm::bus::BusDevice;
use peapod::vmm::memory::GuestMemory;
use peapod::vmm::virtio::{CountingLine, Interrupt, MmioTransport, VirtioDevice};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio as reg;
use vm_memory::{Bytes, GuestAddress};

/// Guest memory size: everything at or past it is outside guest memory.
pub const MEM_SIZE: u64 = 0x2_0000;
/// Bytes of memory per queue's rings.
const QUEUE_SPAN: u64 = 0x1000;
/// Where buffers start.
pub const BUF_BASE: u64 = 0x4000;
/// The largest queue the driver sets up: its rings fit in [`QUEUE_SPAN`].
pub const MAX_QUEUE: u16 = 64;
/// Descriptor flags.
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// `size` bytes of guest RAM at guest address 0.
pub fn guest_memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("guest memory")
}

/// Where one queue's rings are.
#[derive(Clone, Copy, Debug)]
pub struct Rings {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl Rings {
    fn at(index: usize, size: u16) -> Self {
        let n = u64::from(size);
        let desc = index as u64 * QUEUE_SPAN;
        let avail = desc + 16 * n;
        let used = (avail + 6 + 2 * n).next_multiple_of(4);
        Rings {
            size,
            desc,
            avail,
            used,
        }
    }
}

/// One step of a hostile driver.
#[derive(Arbitrary, Debug)]
pub enum GuestOp {
    /// Writes descriptor `index` of a queue's table. `near` puts `addr` inside the buffer
    /// area and `short` keeps `len` below 4 KiB, so that the fuzzer reaches the device's own
    /// checks and not only the chain checks.
    Desc {
        queue: u8,
        index: u16,
        addr: u64,
        near: bool,
        len: u32,
        short: bool,
        flags: u16,
        next: u16,
    },
    /// A well-formed chain of `(length, device-writable)` buffers holding `data`, published.
    Chain {
        queue: u8,
        bufs: Vec<(u16, bool)>,
        data: Vec<u8>,
    },
    /// Puts `head` on the available ring.
    Publish { queue: u8, head: u16 },
    /// Overwrites the available ring's index.
    AvailIdx { queue: u8, idx: u16 },
    /// Writes bytes anywhere in guest memory.
    Mem { offset: u32, bytes: Vec<u8> },
    /// QueueNotify: the device serves the queue (any index, valid or not).
    Kick { queue: u8 },
    /// InterruptACK with these bits.
    Ack { bits: u32 },
    /// Status 0, then Linux's bring-up again.
    Reset,
}

/// A device behind its virtio-mmio registers, driven by a hostile guest.
pub struct Driver {
    pub mem: GuestMemory,
    pub transport: MmioTransport,
    pub rings: Vec<Rings>,
    pub line: CountingLine,
    /// Feature bits the driver accepts (of those offered).
    features: u64,
    /// Per queue: the next descriptor [`GuestOp::Chain`] uses.
    next_desc: Vec<u16>,
    /// The next buffer address [`GuestOp::Chain`] uses.
    next_buf: u64,
}

impl Driver {
    /// Wraps `device`; `sizes` picks each queue's size (a power of two up to [`MAX_QUEUE`] and
    /// the device's maximum), `features` the feature bits the driver accepts. Not yet started:
    /// call [`Driver::bring_up`].
    pub fn new(device: Box<dyn VirtioDevice>, sizes: &[u8], features: u64) -> Self {
        let mem = guest_memory();
        let rings = device
            .queue_max_sizes()
            .iter()
            .enumerate()
            .map(|(i, &max)| {
                let pick = sizes.get(i).copied().unwrap_or(4) % 7;
                Rings::at(i, (1u16 << pick).min(max).min(MAX_QUEUE))
            })
            .collect::<Vec<_>>();
        let line = CountingLine::new();
        let transport = MmioTransport::new(mem.clone(), device, Interrupt::new(line.clone()))
            .expect("a device with valid queue sizes");
        Driver {
            mem,
            transport,
            next_desc: vec![0; rings.len()],
            rings,
            line,
            features,
            next_buf: BUF_BASE,
        }
    }

    pub fn reg_read(&mut self, offset: u32) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(u64::from(offset), &mut data);
        u32::from_le_bytes(data)
    }

    pub fn reg_write(&mut self, offset: u32, value: u32) {
        self.transport
            .write(u64::from(offset), &value.to_le_bytes());
    }

    fn add_status(&mut self, bit: u32) {
        let status = self.reg_read(reg::VIRTIO_MMIO_STATUS);
        self.reg_write(reg::VIRTIO_MMIO_STATUS, status | bit);
    }

    /// Linux's probe: reset, acknowledge, negotiate features, zero and set up every queue,
    /// DRIVER_OK. Returns whether the device ended up active.
    pub fn bring_up(&mut self) -> bool {
        self.reg_write(reg::VIRTIO_MMIO_STATUS, 0);
        self.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.add_status(VIRTIO_CONFIG_S_DRIVER);
        self.reg_write(reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let mut offered = u64::from(self.reg_read(reg::VIRTIO_MMIO_DEVICE_FEATURES)) << 32;
        self.reg_write(reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        offered |= u64::from(self.reg_read(reg::VIRTIO_MMIO_DEVICE_FEATURES));
        // VERSION_1 always: without it a modern device refuses, and nothing further runs.
        let accepted = offered & (self.features | 1 << 32);
        self.reg_write(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.reg_write(reg::VIRTIO_MMIO_DRIVER_FEATURES, (accepted >> 32) as u32);
        self.reg_write(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.reg_write(reg::VIRTIO_MMIO_DRIVER_FEATURES, accepted as u32);
        self.add_status(VIRTIO_CONFIG_S_FEATURES_OK);
        for i in 0..self.rings.len() {
            let q = self.rings[i];
            let end = q.used + 6 + 8 * u64::from(q.size);
            let zeros = vec![0u8; (end - q.desc) as usize];
            self.mem
                .write_slice(&zeros, GuestAddress(q.desc))
                .expect("rings inside guest memory");
            self.next_desc[i] = 0;
            self.reg_write(reg::VIRTIO_MMIO_QUEUE_SEL, i as u32);
            self.reg_write(reg::VIRTIO_MMIO_QUEUE_NUM, u32::from(q.size));
            for (low, addr) in [
                (reg::VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc),
                (reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.avail),
                (reg::VIRTIO_MMIO_QUEUE_USED_LOW, q.used),
            ] {
                self.reg_write(low, addr as u32);
                self.reg_write(low + 4, (addr >> 32) as u32);
            }
            self.reg_write(reg::VIRTIO_MMIO_QUEUE_READY, 1);
        }
        self.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
        self.transport.is_active()
    }

    fn rings_of(&self, queue: u8) -> Option<Rings> {
        let n = self.rings.len();
        (n > 0).then(|| self.rings[usize::from(queue) % n])
    }

    fn publish(&self, q: Rings, head: u16) {
        let Ok(idx) = self.mem.read_obj::<u16>(GuestAddress(q.avail + 2)) else {
            return;
        };
        let slot = q.avail + 4 + 2 * u64::from(idx % q.size);
        let _ = self.mem.write_obj(head, GuestAddress(slot));
        let _ = self
            .mem
            .write_obj(idx.wrapping_add(1), GuestAddress(q.avail + 2));
    }

    fn write_desc(&self, q: Rings, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = q.desc + 16 * u64::from(index % q.size);
        let _ = self.mem.write_obj(addr, GuestAddress(at));
        let _ = self.mem.write_obj(len, GuestAddress(at + 8));
        let _ = self.mem.write_obj(flags, GuestAddress(at + 12));
        let _ = self.mem.write_obj(next, GuestAddress(at + 14));
    }

    /// Memory for a buffer of `len` bytes in the buffer area (reused round robin).
    fn alloc(&mut self, len: u64) -> u64 {
        if self.next_buf + len > MEM_SIZE {
            self.next_buf = BUF_BASE;
        }
        let at = self.next_buf;
        self.next_buf = (at + len).next_multiple_of(8);
        at
    }

    pub fn apply(&mut self, op: &GuestOp) {
        match *op {
            GuestOp::Desc {
                queue,
                index,
                addr,
                near,
                len,
                short,
                flags,
                next,
            } => {
                let Some(q) = self.rings_of(queue) else {
                    return;
                };
                let addr = if near {
                    BUF_BASE + addr % (MEM_SIZE - BUF_BASE)
                } else {
                    addr
                };
                let len = if short { len % 4096 } else { len };
                self.write_desc(q, index, addr, len, flags, next);
            }
            GuestOp::Chain {
                queue,
                ref bufs,
                ref data,
            } => {
                let Some(q) = self.rings_of(queue) else {
                    return;
                };
                let qi = usize::from(queue) % self.rings.len();
                let bufs = &bufs[..bufs.len().min(usize::from(q.size))];
                if bufs.is_empty() {
                    return;
                }
                if usize::from(self.next_desc[qi]) + bufs.len() > usize::from(q.size) {
                    self.next_desc[qi] = 0;
                }
                let head = self.next_desc[qi];
                let mut data = &data[..];
                for (i, &(len, writable)) in bufs.iter().enumerate() {
                    let len = u32::from(len % 0x2000);
                    let addr = self.alloc(u64::from(len));
                    let n = data.len().min(len as usize);
                    let _ = self.mem.write_slice(&data[..n], GuestAddress(addr));
                    data = &data[n..];
                    let index = head + i as u16;
                    let mut flags = if writable { F_WRITE } else { 0 };
                    if i + 1 < bufs.len() {
                        flags |= F_NEXT;
                    }
                    self.write_desc(q, index, addr, len, flags, index + 1);
                }
                self.next_desc[qi] += bufs.len() as u16;
                self.publish(q, head);
            }
            GuestOp::Publish { queue, head } => {
                if let Some(q) = self.rings_of(queue) {
                    self.publish(q, head);
                }
            }
            GuestOp::AvailIdx { queue, idx } => {
                if let Some(q) = self.rings_of(queue) {
                    let _ = self.mem.write_obj(idx, GuestAddress(q.avail + 2));
                }
            }
            GuestOp::Mem { offset, ref bytes } => write_mem(&self.mem, offset, bytes),
            GuestOp::Kick { queue } => {
                // One index past the device's queues too: a driver may notify any number.
                let index = usize::from(queue) % (self.rings.len() + 1);
                self.reg_write(reg::VIRTIO_MMIO_QUEUE_NOTIFY, index as u32);
                self.transport.process_queue(index);
            }
            GuestOp::Ack { bits } => self.reg_write(reg::VIRTIO_MMIO_INTERRUPT_ACK, bits),
            GuestOp::Reset => {
                self.bring_up();
            }
        }
    }
}

/// Writes `bytes` at `offset` (taken modulo the memory size), cut at the end of memory.
pub fn write_mem(mem: &GuestMemory, offset: u32, bytes: &[u8]) {
    let at = u64::from(offset) % MEM_SIZE;
    let n = bytes.len().min((MEM_SIZE - at) as usize);
    let _ = mem.write_slice(&bytes[..n], GuestAddress(at));
}
