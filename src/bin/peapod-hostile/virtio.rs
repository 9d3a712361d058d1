//! A minimal virtio-mmio driver, enough to set a device up properly or wrongly on purpose:
//! register access, the status handshake, and split queues in [`Dma`] pages.

use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use crate::hw::{Dma, PAGE, Window};

// Register offsets (virtio 1.2 §4.2.2).
pub const MAGIC: usize = 0x000;
pub const VERSION: usize = 0x004;
pub const DEVICE_ID: usize = 0x008;
pub const VENDOR_ID: usize = 0x00c;
pub const DEVICE_FEATURES: usize = 0x010;
pub const DRIVER_FEATURES: usize = 0x020;
pub const DRIVER_FEATURES_SEL: usize = 0x024;
pub const QUEUE_SEL: usize = 0x030;
pub const QUEUE_NUM_MAX: usize = 0x034;
pub const QUEUE_NUM: usize = 0x038;
pub const QUEUE_READY: usize = 0x044;
pub const QUEUE_NOTIFY: usize = 0x050;
pub const INTERRUPT_STATUS: usize = 0x060;
pub const INTERRUPT_ACK: usize = 0x064;
pub const STATUS: usize = 0x070;
pub const QUEUE_DESC: usize = 0x080;
pub const QUEUE_AVAIL: usize = 0x090;
pub const QUEUE_USED: usize = 0x0a0;
pub const CONFIG_GENERATION: usize = 0x0fc;
pub const CONFIG: usize = 0x100;

pub const ACKNOWLEDGE: u32 = 1;
pub const DRIVER: u32 = 2;
pub const DRIVER_OK: u32 = 4;
pub const FEATURES_OK: u32 = 8;
pub const NEEDS_RESET: u32 = 0x40;

/// `VIRTIO_F_VERSION_1`, bit 32: in the high feature word.
pub const VERSION_1_HIGH: u32 = 1;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

pub const ID_BLOCK: u32 = 2;
pub const ID_RNG: u32 = 4;
pub const ID_VSOCK: u32 = 19;

/// How long a request may take in the test bed (a nested, emulated host: slow).
pub const SLOW: Duration = Duration::from_secs(5);
/// How long to wait for something that must not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// One device behind its register window.
pub struct Device {
    pub win: Window,
    pub base: u64,
    pub id: u32,
}

impl Device {
    pub fn status(&self) -> u32 {
        self.win.r32(STATUS)
    }

    pub fn set_status(&self, s: u32) {
        self.win.w32(STATUS, s)
    }

    pub fn reset(&self) {
        self.set_status(0);
        // Interrupts raised before the reset are not for the next round.
        let pending = self.win.r32(INTERRUPT_STATUS);
        self.win.w32(INTERRUPT_ACK, pending);
    }

    /// Reset, ACKNOWLEDGE, DRIVER, then accepts the features `low` (bits 0-31) and `high`
    /// (32-63) and writes FEATURES_OK. Returns the status read back.
    pub fn features(&self, low: u32, high: u32) -> u32 {
        self.reset();
        self.set_status(ACKNOWLEDGE);
        self.set_status(ACKNOWLEDGE | DRIVER);
        self.win.w32(DRIVER_FEATURES_SEL, 0);
        self.win.w32(DRIVER_FEATURES, low);
        self.win.w32(DRIVER_FEATURES_SEL, 1);
        self.win.w32(DRIVER_FEATURES, high);
        self.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK);
        self.status()
    }

    /// The proper handshake up to FEATURES_OK (only `VIRTIO_F_VERSION_1`).
    pub fn negotiate(&self) -> Result<(), String> {
        let s = self.features(0, VERSION_1_HIGH);
        if s & FEATURES_OK == 0 {
            return Err(format!("FEATURES_OK refused (status {s:#x})"));
        }
        Ok(())
    }

    /// Writes queue `index`'s registers: size and ring addresses, then QueueReady.
    pub fn setup_queue(&self, index: u32, size: u32, desc: u64, avail: u64, used: u64) {
        self.win.w32(QUEUE_SEL, index);
        self.win.w32(QUEUE_NUM, size);
        for (reg, addr) in [(QUEUE_DESC, desc), (QUEUE_AVAIL, avail), (QUEUE_USED, used)] {
            self.win.w32(reg, addr as u32);
            self.win.w32(reg + 4, (addr >> 32) as u32);
        }
        self.win.w32(QUEUE_READY, 1);
    }

    pub fn setup(&self, index: u32, q: &Virtq, dma: &Dma) {
        self.setup_queue(
            index,
            u32::from(q.size),
            dma.phys(q.desc, 0),
            dma.phys(q.avail, 0),
            dma.phys(q.used, 0),
        );
    }

    pub fn driver_ok(&self) -> Result<(), String> {
        self.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        let s = self.status();
        if s & DRIVER_OK == 0 || s & NEEDS_RESET != 0 {
            return Err(format!("the device did not start (status {s:#x})"));
        }
        Ok(())
    }

    /// The whole proper setup with `queues` as queues 0, 1, ...
    pub fn start(&self, dma: &Dma, queues: &[&Virtq]) -> Result<(), String> {
        self.negotiate()?;
        for (i, q) in queues.iter().enumerate() {
            self.setup(i as u32, q, dma);
        }
        self.driver_ok()
    }

    pub fn notify(&self, queue: u32) {
        // The rings must be in memory before the device hears of them.
        fence(Ordering::SeqCst);
        self.win.w32(QUEUE_NOTIFY, queue);
    }

    /// Waits until the device sets DEVICE_NEEDS_RESET.
    pub fn wait_needs_reset(&self) -> Result<(), String> {
        poll(SLOW, || self.status() & NEEDS_RESET != 0)
            .ok_or_else(|| format!("no DEVICE_NEEDS_RESET (status {:#x})", self.status()))
    }

    /// The device must not have set DEVICE_NEEDS_RESET.
    pub fn still_fine(&self) -> Result<(), String> {
        let s = self.status();
        if s & NEEDS_RESET != 0 || s & DRIVER_OK == 0 {
            return Err(format!("the device stopped (status {s:#x})"));
        }
        Ok(())
    }
}

/// Calls `done` until it is true or `limit` passes; `Some` if it became true.
pub fn poll(limit: Duration, mut done: impl FnMut() -> bool) -> Option<()> {
    let start = Instant::now();
    loop {
        if done() {
            return Some(());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A split virtqueue in three pages of a [`Dma`]: descriptor table, available ring, used
/// ring (so at most 256 entries).
pub struct Virtq {
    pub size: u16,
    pub desc: usize,
    pub avail: usize,
    pub used: usize,
    avail_idx: u16,
    last_used: u16,
}

impl Virtq {
    /// A fresh queue of `size` entries in pages `first..first + 3`.
    pub fn new(dma: &Dma, first: usize, size: u16) -> Self {
        for p in first..first + 3 {
            dma.fill(p, 0);
        }
        Virtq {
            size,
            desc: first,
            avail: first + 1,
            used: first + 2,
            avail_idx: 0,
            last_used: 0,
        }
    }

    pub fn set_desc(&self, dma: &Dma, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let off = usize::from(i) * 16;
        if off + 16 > PAGE {
            return;
        }
        dma.write(self.desc, off, addr);
        dma.write(self.desc, off + 8, len);
        dma.write(self.desc, off + 12, flags);
        dma.write(self.desc, off + 14, next);
    }

    /// Puts `head` on the available ring (without a notification).
    pub fn publish(&mut self, dma: &Dma, head: u16) {
        let slot = usize::from(self.avail_idx % self.size.max(1));
        dma.write(self.avail, 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        fence(Ordering::SeqCst);
        dma.write(self.avail, 2, self.avail_idx);
    }

    /// Sets the available index to anything at all.
    pub fn set_avail_idx(&mut self, dma: &Dma, idx: u16) {
        self.avail_idx = idx;
        fence(Ordering::SeqCst);
        dma.write(self.avail, 2, idx);
    }

    pub fn used_idx(&self, dma: &Dma) -> u16 {
        dma.read(self.used, 2)
    }

    /// The next used element `(id, len)`, if the device returned one.
    pub fn pop_used(&mut self, dma: &Dma) -> Option<(u32, u32)> {
        if self.used_idx(dma) == self.last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let slot = usize::from(self.last_used % self.size.max(1));
        let elem = (
            dma.read(self.used, 4 + 8 * slot),
            dma.read(self.used, 8 + 8 * slot),
        );
        self.last_used = self.last_used.wrapping_add(1);
        Some(elem)
    }

    /// Waits for the next used element.
    pub fn wait_used(&mut self, dma: &Dma, limit: Duration) -> Result<(u32, u32), String> {
        let mut got = None;
        poll(limit, || {
            got = self.pop_used(dma);
            got.is_some()
        });
        got.ok_or_else(|| {
            format!(
                "no used buffer within {limit:?} (used idx {})",
                self.used_idx(dma)
            )
        })
    }
}
