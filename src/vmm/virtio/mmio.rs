//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2): a 4 KiB register window on the
//! MMIO bus through which the guest driver finds a device, negotiates features, sets up queues
//! and starts it.
//!
//! The window is a [`BusDevice`]. Registers below 0x100 are 32 bits wide and must be accessed
//! as aligned 32-bit words; anything else is ignored (reads return zeros). From 0x100 on is the
//! device's configuration space, accessed with any width.
//!
//! Queue notifications do not run device code on the vCPU thread: a write to QueueNotify
//! signals that queue's notify [`EventFd`], and the device thread (see [`super::event`]) serves
//! the queue. A VMM registers the same eventfds with KVM (`register_ioevent` at
//! [`MmioSlot::notify_address`], datamatch = queue index) so notifications never leave the
//! kernel; without that, the bus write below does the same job more slowly.
//!
//! Status follows §2.1 / §3.1.1: ACKNOWLEDGE, DRIVER, FEATURES_OK (refused unless the driver
//! accepted only offered features and `VIRTIO_F_VERSION_1`), DRIVER_OK (checks every ready
//! queue, then activates the device with them). Writing 0 resets. If activation or a device
//! fails, the transport sets DEVICE_NEEDS_RESET, tells the driver with a configuration-change
//! interrupt and stops serving the device until the driver resets it.
//!
//! A reset returns transport and device to where they were before the driver first touched
//! them, whatever happened since: a failed activation resets the device model at once (a
//! device may have taken queues or started connections before it failed, and must hold none
//! of them while it waits for the driver), a reset after a successful one resets it then, and
//! queue registers, features, status, interrupt status and pending queue notifications are
//! all cleared. A driver that loops "bad setup, reset" costs a rate-limited warning each time
//! and keeps nothing from one round to the next.

use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio as reg;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::device::{Activation, DeviceError, VirtioDevice};
use super::interrupt::Interrupt;
use crate::vmm::bus::BusDevice;
use crate::vmm::memory::GuestMemory;
use crate::vmm::ratelimit::limited;

/// Size of a device's register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// "virt" in little endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern (virtio 1.x) virtio-mmio layout.
pub const MMIO_VERSION: u32 = 2;
/// Vendor ID reported to the guest ("PPOD"); drivers do not look at it.
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"PPOD");
/// Offset of QueueNotify in the window.
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// Offset of the device configuration space in the window.
pub const CONFIG_SPACE_OFFSET: u64 = reg::VIRTIO_MMIO_CONFIG as u64;

/// The status bits a driver may set.
const DRIVER_STATUS_BITS: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_DRIVER_OK
    | VIRTIO_CONFIG_S_FAILED;

/// The largest queue virtio allows.
const MAX_QUEUE_SIZE: u16 = 32768;

/// Where a virtio-mmio device sits in the guest: its register window and its interrupt line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    pub base: u64,
    pub irq: u32,
}

impl MmioSlot {
    /// The kernel command-line parameter that tells Linux's virtio_mmio driver where the
    /// device is (without ACPI or a device tree).
    pub fn cmdline_fragment(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            MMIO_WINDOW_SIZE >> 10,
            self.base,
            self.irq
        )
    }

    /// The guest-physical address of QueueNotify: where to register the queues' ioeventfds.
    pub fn notify_address(&self) -> u64 {
        self.base + QUEUE_NOTIFY_OFFSET
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error(
        "{device}: queue {index} declares maximum size {max}; a virtio queue size must be a \
         power of two from 1 to {MAX_QUEUE_SIZE}"
    )]
    BadMaxQueueSize {
        device: &'static str,
        index: usize,
        max: u16,
    },
    #[error("{device}: cannot create the notify eventfd for queue {index}: {source}")]
    NotifyEventFd {
        device: &'static str,
        index: usize,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{device}: the driver set queue {index} to size {size}; it must be a power of two \
         from 1 to {max}"
    )]
    QueueSize {
        device: &'static str,
        index: usize,
        size: u32,
        max: u16,
    },
    #[error("{device}: queue {index}: the {ring} at {addr:#x} is misaligned or at address 0")]
    QueueAddress {
        device: &'static str,
        index: usize,
        ring: &'static str,
        addr: u64,
    },
    #[error("{device}: queue {index}: its rings are not inside guest memory")]
    QueueOutsideMemory { device: &'static str, index: usize },
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// Queue registers as the driver wrote them; checked only at DRIVER_OK.
#[derive(Debug, Clone, Copy, Default)]
struct QueueRegs {
    max: u16,
    size: u32,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueRegs {
    fn new(max: u16) -> Self {
        QueueRegs {
            max,
            size: u32::from(max),
            ..QueueRegs::default()
        }
    }
}

/// One virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    notify: Vec<EventFd>,
    queues: Vec<QueueRegs>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    active: bool,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device", &self.device.name())
            .field("status", &self.status)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Wraps `device`; `interrupt` is the device's line to the guest (an irqfd in a VMM).
    pub fn new(
        mem: GuestMemory,
        device: Box<dyn VirtioDevice>,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, MmioError> {
        let name = device.name();
        let mut queues = Vec::new();
        let mut notify = Vec::new();
        for (index, &max) in device.queue_max_sizes().iter().enumerate() {
            if max == 0 || max > MAX_QUEUE_SIZE || !max.is_power_of_two() {
                return Err(MmioError::BadMaxQueueSize {
                    device: name,
                    index,
                    max,
                });
            }
            queues.push(QueueRegs::new(max));
            notify.push(EventFd::new(libc::EFD_NONBLOCK).map_err(|source| {
                MmioError::NotifyEventFd {
                    device: name,
                    index,
                    source,
                }
            })?);
        }
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            notify,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            active: false,
        })
    }

    /// The device's name, for messages.
    pub fn name(&self) -> &'static str {
        self.device.name()
    }

    /// One eventfd per queue, signalled when the driver notifies that queue. Register each
    /// with KVM as an ioeventfd at [`MmioSlot::notify_address`] with the queue index as
    /// datamatch, and give them to the device thread ([`super::event::MmioQueueHandler`]).
    pub fn notify_eventfds(&self) -> &[EventFd] {
        &self.notify
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the driver has started the device and it is serving its queues.
    pub fn is_active(&self) -> bool {
        self.active && self.status & VIRTIO_CONFIG_S_NEEDS_RESET == 0
    }

    /// The feature bits offered: the device's plus the transport's.
    pub fn offered_features(&self) -> u64 {
        self.device.features() | (1 << VIRTIO_F_VERSION_1)
    }

    /// Serves queue `index` after a notification. Does nothing unless the device is active.
    pub fn process_queue(&mut self, index: usize) {
        if !self.is_active() {
            return;
        }
        if let Err(e) = self.device.process_queue(index) {
            self.set_needs_reset(&MmioError::Device(e));
        }
    }

    /// The VMM changed the device's configuration space: bump ConfigGeneration and tell the
    /// driver.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt.signal_config_change();
    }

    fn set_needs_reset(&mut self, why: &MmioError) {
        // A driver can loop on "bad setup, reset": one line per round would flood vmm.log.
        limited!(
            warn,
            "{why}; the device stops until the guest driver resets it"
        );
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.interrupt.signal_config_change();
        }
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        for q in &mut self.queues {
            *q = QueueRegs::new(q.max);
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt.clear();
        // Notifications the driver sent before the reset are not for the next activation.
        for evt in &self.notify {
            let _ = evt.read();
        }
    }

    fn selected_queue(&mut self) -> Option<&mut QueueRegs> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn has_status(&self, set: u32, clear: u32) -> bool {
        self.status & set == set && self.status & clear == 0
    }

    fn read_reg(&self, offset: u32) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::VIRTIO_MMIO_MAGIC_VALUE => MAGIC_VALUE,
            reg::VIRTIO_MMIO_VERSION => MMIO_VERSION,
            reg::VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            reg::VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            reg::VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::VIRTIO_MMIO_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max)),
            reg::VIRTIO_MMIO_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready)),
            reg::VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            reg::VIRTIO_MMIO_STATUS => self.status,
            // No shared memory regions: a length of all ones says "none".
            reg::VIRTIO_MMIO_SHM_LEN_LOW
            | reg::VIRTIO_MMIO_SHM_LEN_HIGH
            | reg::VIRTIO_MMIO_SHM_BASE_LOW
            | reg::VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            reg::VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => {
                tracing::debug!(
                    "{}: guest read of write-only or unknown register {offset:#x}",
                    self.name()
                );
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u32, value: u32) {
        let features_phase = self.has_status(
            VIRTIO_CONFIG_S_DRIVER,
            VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_FAILED,
        );
        let queue_phase = self.has_status(
            VIRTIO_CONFIG_S_FEATURES_OK,
            VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED,
        );
        let ignored = match offset {
            reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL => {
                self.device_features_sel = value;
                false
            }
            reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL => {
                self.driver_features_sel = value;
                false
            }
            reg::VIRTIO_MMIO_DRIVER_FEATURES if features_phase => {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value);
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32);
                    }
                    // Feature bits past 63 do not exist; a driver may still clear them.
                    _ => {}
                }
                false
            }
            reg::VIRTIO_MMIO_QUEUE_SEL => {
                self.queue_sel = value;
                false
            }
            reg::VIRTIO_MMIO_QUEUE_NUM
            | reg::VIRTIO_MMIO_QUEUE_READY
            | reg::VIRTIO_MMIO_QUEUE_DESC_LOW
            | reg::VIRTIO_MMIO_QUEUE_DESC_HIGH
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | reg::VIRTIO_MMIO_QUEUE_USED_LOW
            | reg::VIRTIO_MMIO_QUEUE_USED_HIGH
                if queue_phase =>
            {
                match self.selected_queue() {
                    Some(q) => {
                        write_queue_reg(q, offset, value);
                        false
                    }
                    None => true,
                }
            }
            reg::VIRTIO_MMIO_QUEUE_NOTIFY => match self.notify.get(value as usize) {
                Some(evt) => {
                    if let Err(e) = evt.write(1) {
                        limited!(warn, "{}: cannot signal queue {value}: {e}", self.name());
                    }
                    false
                }
                None => true,
            },
            reg::VIRTIO_MMIO_INTERRUPT_ACK => {
                self.interrupt.acknowledge(value);
                false
            }
            reg::VIRTIO_MMIO_STATUS => {
                self.write_status(value);
                false
            }
            reg::VIRTIO_MMIO_SHM_SEL => false,
            _ => true,
        };
        if ignored {
            tracing::debug!(
                "{}: ignored guest write of {value:#x} to register {offset:#x} in status {:#x}",
                self.name(),
                self.status
            );
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // Reserved bits are dropped. DEVICE_NEEDS_RESET is the device's to set; a driver
        // writes back what it read.
        let value = (value & DRIVER_STATUS_BITS) | (old & VIRTIO_CONFIG_S_NEEDS_RESET);
        let added = value & !old;
        let refuse = |why: &str| {
            tracing::debug!(
                "{}: refused status {value:#x} (was {old:#x}): {why}",
                self.name()
            );
        };
        if value & old != old {
            return refuse("a driver cannot clear status bits except by writing 0");
        }
        if added & VIRTIO_CONFIG_S_DRIVER != 0 && value & VIRTIO_CONFIG_S_ACKNOWLEDGE == 0 {
            return refuse("DRIVER before ACKNOWLEDGE");
        }
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 && value & VIRTIO_CONFIG_S_DRIVER == 0 {
            return refuse("FEATURES_OK before DRIVER");
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 && value & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            return refuse("DRIVER_OK before FEATURES_OK");
        }
        if value & VIRTIO_CONFIG_S_FAILED != 0 {
            // The driver gave up on the device; it will reset it before trying again.
            self.status = value;
            return;
        }
        let mut value = value;
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 && !self.features_acceptable() {
            // FEATURES_OK stays clear: the driver reads it back and gives up.
            value &= !(VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
        }
        self.status = value;
        if value & added & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && let Err(e) = self.activate()
        {
            // The device may have kept part of what it was given (queues, connections made
            // while it drained the guest's first requests): it must not serve them while it
            // waits for the driver's reset.
            self.device.reset();
            self.set_needs_reset(&e);
        }
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.offered_features();
        let unoffered = self.driver_features & !offered;
        if unoffered != 0 {
            tracing::debug!(
                "{}: driver accepted features {unoffered:#x} that were not offered",
                self.name()
            );
            return false;
        }
        if self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            tracing::debug!(
                "{}: driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)",
                self.name()
            );
            return false;
        }
        true
    }

    fn activate(&mut self) -> Result<(), MmioError> {
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let queues = (0..self.queues.len())
            .map(|index| self.build_queue(index, event_idx))
            .collect::<Result<Vec<_>, _>>()?;
        self.device.activate(Activation {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            features: self.driver_features,
        })?;
        self.active = true;
        Ok(())
    }

    /// Turns queue `index`'s registers into a checked queue, or `None` if it is not ready.
    fn build_queue(&self, index: usize, event_idx: bool) -> Result<Option<Queue>, MmioError> {
        let regs = self.queues[index];
        if !regs.ready {
            return Ok(None);
        }
        let device = self.name();
        let mut queue = Queue::new(regs.max).map_err(|_| MmioError::BadMaxQueueSize {
            device,
            index,
            max: regs.max,
        })?;
        u16::try_from(regs.size)
            .ok()
            .and_then(|size| queue.try_set_size(size).ok())
            .ok_or(MmioError::QueueSize {
                device,
                index,
                size: regs.size,
                max: regs.max,
            })?;
        let bad_address = |ring, addr| MmioError::QueueAddress {
            device,
            index,
            ring,
            addr,
        };
        queue
            .try_set_desc_table_address(GuestAddress(regs.desc))
            .map_err(|_| bad_address("descriptor table", regs.desc))?;
        // virtio-queue treats an available ring at 0 as "not set up".
        if regs.avail == 0 {
            return Err(bad_address("available ring", 0));
        }
        queue
            .try_set_avail_ring_address(GuestAddress(regs.avail))
            .map_err(|_| bad_address("available ring", regs.avail))?;
        queue
            .try_set_used_ring_address(GuestAddress(regs.used))
            .map_err(|_| bad_address("used ring", regs.used))?;
        // Our own check, not `queue.is_valid`: that one writes an error line of its own
        // (target virtio_queue::queue, not rate-limited) for every bad ring, so a driver
        // looping "rings outside memory, reset" would flood vmm.log around `limited!`.
        if !rings_in_memory(&self.mem, queue.size(), regs.desc, regs.avail, regs.used) {
            return Err(MmioError::QueueOutsideMemory { device, index });
        }
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        Ok(Some(queue))
    }
}

/// Whether a split queue of `size` entries with its rings at these addresses lies in guest
/// memory: the checks of virtio-queue's `is_valid` (virtio 1.2 §2.7: 16 bytes per
/// descriptor, 6 + 2 per entry of the available ring, 6 + 8 per entry of the used ring,
/// event-index fields included), without its logging.
fn rings_in_memory(mem: &GuestMemory, size: u16, desc: u64, avail: u64, used: u64) -> bool {
    let size = usize::from(size);
    [
        (desc, 16 * size),
        (avail, 6 + 2 * size),
        (used, 6 + 8 * size),
    ]
    .into_iter()
    .all(|(addr, len)| GuestMemoryBackend::check_range(mem, GuestAddress(addr), len))
}

fn write_queue_reg(q: &mut QueueRegs, offset: u32, value: u32) {
    let low = |addr: &mut u64| *addr = (*addr & !0xffff_ffff) | u64::from(value);
    let high = |addr: &mut u64| *addr = (*addr & 0xffff_ffff) | (u64::from(value) << 32);
    match offset {
        reg::VIRTIO_MMIO_QUEUE_NUM => q.size = value,
        reg::VIRTIO_MMIO_QUEUE_READY => q.ready = value == 1,
        reg::VIRTIO_MMIO_QUEUE_DESC_LOW => low(&mut q.desc),
        reg::VIRTIO_MMIO_QUEUE_DESC_HIGH => high(&mut q.desc),
        reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW => low(&mut q.avail),
        reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH => high(&mut q.avail),
        reg::VIRTIO_MMIO_QUEUE_USED_LOW => low(&mut q.used),
        reg::VIRTIO_MMIO_QUEUE_USED_HIGH => high(&mut q.used),
        _ => {}
    }
}

/// The register at `offset` if the access is an aligned 32-bit word in the register area.
fn register(offset: u64, len: usize) -> Option<u32> {
    (offset < CONFIG_SPACE_OFFSET && offset.is_multiple_of(4) && len == 4).then_some(offset as u32)
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.device.read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        match register(offset, data.len()) {
            Some(r) => data.copy_from_slice(&self.read_reg(r).to_le_bytes()),
            None => {
                tracing::debug!(
                    "{}: ignored {}-byte guest read at register offset {offset:#x}",
                    self.name(),
                    data.len()
                );
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.device.write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        match (register(offset, data.len()), <[u8; 4]>::try_from(data)) {
            (Some(r), Ok(bytes)) => self.write_reg(r, u32::from_le_bytes(bytes)),
            _ => tracing::debug!(
                "{}: ignored {}-byte guest write at register offset {offset:#x}",
                self.name(),
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};

    use super::*;
    use crate::vmm::virtio::interrupt::CountingLine;
    use crate::vmm::virtio::testing::*;

    const MOCK_ID: u32 = 0x2a;
    /// A device feature in each half of the feature word.
    const MOCK_FEATURES: u64 = (1 << 3) | (1 << 40);

    #[derive(Default)]
    struct MockState {
        /// Per activation: which queues were handed over, and the accepted features.
        activations: Vec<(Vec<bool>, u64)>,
        processed: Vec<usize>,
        resets: usize,
        /// The queues the device holds now (taken at activation, dropped at reset), as a
        /// device that fails part-way through its activation (vsock draining the guest's
        /// first packets) still holds what it took.
        held: Vec<bool>,
        config: [u8; 8],
        fail_activate: bool,
        fail_process: bool,
    }

    struct MockDevice {
        state: Arc<Mutex<MockState>>,
        max_sizes: Vec<u16>,
    }

    impl VirtioDevice for MockDevice {
        fn device_type(&self) -> u32 {
            MOCK_ID
        }
        fn name(&self) -> &'static str {
            "mock"
        }
        fn features(&self) -> u64 {
            MOCK_FEATURES
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.max_sizes
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            crate::vmm::virtio::device::read_config_bytes(
                &self.state.lock().unwrap().config,
                offset,
                data,
            );
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            let mut s = self.state.lock().unwrap();
            for (i, b) in data.iter().enumerate() {
                if let Some(slot) = s.config.get_mut(offset as usize + i) {
                    *slot = *b;
                }
            }
        }
        fn activate(&mut self, a: Activation) -> Result<(), DeviceError> {
            let mut s = self.state.lock().unwrap();
            s.held = a.queues.iter().map(Option::is_some).collect();
            if s.fail_activate {
                return Err(DeviceError::QueueNotReady {
                    device: "mock",
                    index: 0,
                });
            }
            s.activations
                .push((a.queues.iter().map(Option::is_some).collect(), a.features));
            Ok(())
        }
        fn process_queue(&mut self, index: usize) -> Result<(), DeviceError> {
            let mut s = self.state.lock().unwrap();
            s.processed.push(index);
            if s.fail_process {
                return Err(DeviceError::Other {
                    device: "mock",
                    message: "broken".into(),
                });
            }
            Ok(())
        }
        fn reset(&mut self) {
            let mut s = self.state.lock().unwrap();
            s.resets += 1;
            s.held.clear();
        }
    }

    struct Fixture {
        mem: GuestMemory,
        transport: MmioTransport,
        state: Arc<Mutex<MockState>>,
        line: CountingLine,
    }

    fn fixture(max_sizes: &[u16]) -> Fixture {
        let mem = guest_memory();
        let state = Arc::new(Mutex::new(MockState::default()));
        let line = CountingLine::new();
        let device = MockDevice {
            state: state.clone(),
            max_sizes: max_sizes.to_vec(),
        };
        let transport =
            MmioTransport::new(mem.clone(), Box::new(device), Interrupt::new(line.clone()))
                .unwrap();
        Fixture {
            mem,
            transport,
            state,
            line,
        }
    }

    #[test]
    fn identity_registers() {
        let mut f = fixture(&[16]);
        let t = &mut f.transport;
        assert_eq!(reg_read(t, reg::VIRTIO_MMIO_MAGIC_VALUE), MAGIC_VALUE);
        assert_eq!(reg_read(t, reg::VIRTIO_MMIO_VERSION), 2);
        assert_eq!(reg_read(t, reg::VIRTIO_MMIO_DEVICE_ID), MOCK_ID);
        assert_eq!(reg_read(t, reg::VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
        assert_eq!(reg_read(t, reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
        assert_eq!(reg_read(t, reg::VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
        assert_eq!(reg_read(t, reg::VIRTIO_MMIO_CONFIG_GENERATION), 0);
        // Write-only registers read as zero.
        assert_eq!(reg_read(t, reg::VIRTIO_MMIO_QUEUE_NOTIFY), 0);
    }

    #[test]
    fn linux_bring_up_activates_with_the_ready_queues_only() {
        let mut f = fixture(&[16, 8]);
        let q0 = DriverQueue::new(&f.mem, 0x1000, 16);
        // Linux would set up both; set up only queue 0 to see that queue 1 is left out.
        let status = linux_bring_up(&mut f.transport, &[&q0]);
        assert_eq!(
            status,
            VIRTIO_CONFIG_S_ACKNOWLEDGE
                | VIRTIO_CONFIG_S_DRIVER
                | VIRTIO_CONFIG_S_FEATURES_OK
                | VIRTIO_CONFIG_S_DRIVER_OK
        );
        assert!(f.transport.is_active());
        let s = f.state.lock().unwrap();
        assert_eq!(
            s.activations,
            vec![(vec![true, false], MOCK_FEATURES | (1 << VIRTIO_F_VERSION_1))]
        );
    }

    #[test]
    fn features_are_offered_in_two_pages() {
        let mut f = fixture(&[16]);
        let t = &mut f.transport;
        reg_write(t, reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        assert_eq!(reg_read(t, reg::VIRTIO_MMIO_DEVICE_FEATURES), 1 << 3);
        reg_write(t, reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            reg_read(t, reg::VIRTIO_MMIO_DEVICE_FEATURES),
            (1 << (VIRTIO_F_VERSION_1 - 32)) | (1 << 8)
        );
        reg_write(t, reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
        assert_eq!(reg_read(t, reg::VIRTIO_MMIO_DEVICE_FEATURES), 0);
    }

    #[test]
    fn features_without_version_1_or_not_offered_are_refused() {
        let mut f = fixture(&[16]);
        let status = linux_negotiate(&mut f.transport, |o| o & !(1 << VIRTIO_F_VERSION_1));
        assert_eq!(status & VIRTIO_CONFIG_S_FEATURES_OK, 0);
        let status = linux_negotiate(&mut f.transport, |o| o | (1 << 7));
        assert_eq!(status & VIRTIO_CONFIG_S_FEATURES_OK, 0);
        // DRIVER_OK without FEATURES_OK does nothing.
        add_status(&mut f.transport, VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(f.transport.status() & VIRTIO_CONFIG_S_DRIVER_OK, 0);
        assert!(!f.transport.is_active());
        // Accepting a subset is fine.
        let status = linux_negotiate(&mut f.transport, |_| 1 << VIRTIO_F_VERSION_1);
        assert_ne!(status & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    }

    #[test]
    fn status_steps_cannot_be_skipped_or_undone() {
        let mut f = fixture(&[16]);
        let t = &mut f.transport;
        reg_write(t, reg::VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
        assert_eq!(t.status(), 0);
        reg_write(t, reg::VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        reg_write(
            t,
            reg::VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_FEATURES_OK,
        );
        assert_eq!(t.status(), VIRTIO_CONFIG_S_ACKNOWLEDGE);
        add_status(t, VIRTIO_CONFIG_S_DRIVER);
        // Clearing a bit is refused.
        reg_write(t, reg::VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
        assert_eq!(
            t.status(),
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
        );
        // The driver cannot set NEEDS_RESET.
        add_status(t, VIRTIO_CONFIG_S_NEEDS_RESET);
        assert_eq!(
            t.status(),
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
        );
        // FAILED is always accepted.
        add_status(t, VIRTIO_CONFIG_S_FAILED);
        assert_ne!(t.status() & VIRTIO_CONFIG_S_FAILED, 0);
    }

    #[test]
    fn writes_outside_their_phase_are_ignored() {
        let mut f = fixture(&[16]);
        let q = DriverQueue::new(&f.mem, 0x1000, 16);
        let t = &mut f.transport;
        // Queue registers before FEATURES_OK.
        reg_write(t, reg::VIRTIO_MMIO_QUEUE_SEL, 0);
        reg_write(t, reg::VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(reg_read(t, reg::VIRTIO_MMIO_QUEUE_READY), 0);
        linux_bring_up(t, &[&q]);
        // Driver features and queue registers after DRIVER_OK.
        reg_write(t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        reg_write(t, reg::VIRTIO_MMIO_DRIVER_FEATURES, 0);
        reg_write(t, reg::VIRTIO_MMIO_QUEUE_READY, 0);
        assert_eq!(reg_read(t, reg::VIRTIO_MMIO_QUEUE_READY), 1);
        assert_eq!(
            t.driver_features & (1 << VIRTIO_F_VERSION_1),
            1 << VIRTIO_F_VERSION_1
        );
        assert!(t.is_active());
    }

    /// Brings a one-queue device up with queue registers changed by `tweak` after Linux set
    /// them, and returns the fixture.
    fn bring_up_with(tweak: impl Fn(&mut MmioTransport)) -> Fixture {
        let mut f = fixture(&[16]);
        let q = DriverQueue::new(&f.mem, 0x1000, 16);
        linux_negotiate(&mut f.transport, |o| o);
        linux_setup_queue(&mut f.transport, 0, &q);
        tweak(&mut f.transport);
        add_status(&mut f.transport, VIRTIO_CONFIG_S_DRIVER_OK);
        f
    }

    fn assert_needs_reset(f: &Fixture) {
        assert!(!f.transport.is_active());
        assert_ne!(f.transport.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert!(f.state.lock().unwrap().activations.is_empty());
        assert_eq!(f.line.count(), 1, "config-change interrupt");
        assert_eq!(f.transport.interrupt.status(), VIRTIO_MMIO_INT_CONFIG);
    }

    #[test]
    fn bad_queue_setups_are_refused_at_driver_ok() {
        let bad_size =
            |size| move |t: &mut MmioTransport| reg_write(t, reg::VIRTIO_MMIO_QUEUE_NUM, size);
        for tweak in [bad_size(0), bad_size(12), bad_size(32), bad_size(0x1_0010)] {
            assert_needs_reset(&bring_up_with(tweak));
        }
        let set = |offset, value| move |t: &mut MmioTransport| reg_write(t, offset, value);
        // Misaligned descriptor table, available ring at 0, used ring outside memory, a ring
        // that starts inside memory and runs past its end, an address above 4 GiB.
        for tweak in [
            set(reg::VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1008),
            set(reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0),
            set(reg::VIRTIO_MMIO_QUEUE_USED_LOW, MEM_SIZE as u32),
            set(reg::VIRTIO_MMIO_QUEUE_DESC_LOW, MEM_SIZE as u32 - 0x80),
            set(reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 1),
        ] {
            assert_needs_reset(&bring_up_with(tweak));
        }
    }

    /// Found by the hostile guest (tests/e2e, `blk_rings_outside_ram`): rings outside guest
    /// memory cost two lines in vmm.log, ours (rate-limited) and one that virtio-queue's
    /// `Queue::is_valid` logs itself on every call, which no limit covered. Each bad
    /// activation must cost at most our one line, and a driver looping on it no more than
    /// the limit.
    #[test]
    fn rings_outside_memory_log_only_our_limited_line() {
        // virtio-queue logs through `log`: route its records into tracing, where
        // `capture_logs` sees them (another test may have done it already).
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .with_max_level(tracing::Level::TRACE)
            .try_init();
        let text = crate::vmm::ratelimit::capture_logs(|| {
            let set = |offset, value| move |t: &mut MmioTransport| reg_write(t, offset, value);
            for tweak in [
                set(reg::VIRTIO_MMIO_QUEUE_DESC_LOW, MEM_SIZE as u32),
                set(reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 1),
                set(reg::VIRTIO_MMIO_QUEUE_USED_LOW, MEM_SIZE as u32 - 0x40),
            ] {
                assert_needs_reset(&bring_up_with(tweak));
            }
        });
        // Ours may be fewer than three: other tests share its call site's limit.
        assert!(
            !text.contains("virtio_queue") && text.lines().count() <= 3,
            "lines beyond our one limited warning per bad activation:\n{text}"
        );
    }

    #[test]
    fn rings_in_memory_counts_every_ring_byte() {
        let mem = guest_memory();
        let (desc, avail, used) = (0x1000, 0x2000, 0x3000);
        assert!(rings_in_memory(&mem, 16, desc, avail, used));
        // Each ring exactly at the end of memory fits; one byte further does not.
        for (ring, len) in [(0, 16 * 16), (1, 6 + 2 * 16), (2, 6 + 8 * 16)] {
            let mut addrs = [desc, avail, used];
            addrs[ring] = MEM_SIZE - len;
            assert!(rings_in_memory(&mem, 16, addrs[0], addrs[1], addrs[2]));
            addrs[ring] += 2;
            assert!(!rings_in_memory(&mem, 16, addrs[0], addrs[1], addrs[2]));
        }
        assert!(!rings_in_memory(&mem, 16, u64::MAX - 8, avail, used));
    }

    #[test]
    fn a_failed_activation_needs_reset_and_reset_recovers() {
        let mut f = fixture(&[16]);
        let q = DriverQueue::new(&f.mem, 0x1000, 16);
        f.state.lock().unwrap().fail_activate = true;
        linux_bring_up(&mut f.transport, &[&q]);
        assert_needs_reset(&f);
        // Notifications to a device that needs a reset go nowhere.
        f.transport.process_queue(0);
        assert!(f.state.lock().unwrap().processed.is_empty());
        f.state.lock().unwrap().fail_activate = false;
        linux_bring_up(&mut f.transport, &[&q]);
        assert!(f.transport.is_active());
        assert_eq!(
            f.transport.interrupt.status(),
            0,
            "reset clears InterruptStatus"
        );
    }

    /// Issue #12 (8): a reset after a failed activation must leave nothing of it behind, in
    /// the transport or in the device.
    #[test]
    fn a_reset_after_a_failed_activation_starts_from_scratch() {
        let mut f = fixture(&[16, 8]);
        let q0 = DriverQueue::new(&f.mem, 0x1000, 16);
        let q1 = DriverQueue::new(&f.mem, 0x3000, 8);

        // A bad queue setup: queue 1 is ready but its used ring lies outside guest memory.
        linux_negotiate(&mut f.transport, |o| o);
        linux_setup_queue(&mut f.transport, 0, &q0);
        linux_setup_queue(&mut f.transport, 1, &q1);
        reg_write(&mut f.transport, reg::VIRTIO_MMIO_QUEUE_SEL, 1);
        reg_write(
            &mut f.transport,
            reg::VIRTIO_MMIO_QUEUE_USED_LOW,
            MEM_SIZE as u32,
        );
        reg_write(&mut f.transport, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        add_status(&mut f.transport, VIRTIO_CONFIG_S_DRIVER_OK);
        assert_ne!(f.transport.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert!(!f.transport.is_active());

        // The driver resets: the queue registers, the features and the pending
        // notification are gone.
        reg_write(&mut f.transport, reg::VIRTIO_MMIO_STATUS, 0);
        assert_eq!(f.transport.status(), 0);
        assert_eq!(f.transport.driver_features, 0);
        for index in [0, 1] {
            reg_write(&mut f.transport, reg::VIRTIO_MMIO_QUEUE_SEL, index);
            assert_eq!(reg_read(&mut f.transport, reg::VIRTIO_MMIO_QUEUE_READY), 0);
        }
        assert!(
            f.transport.notify_eventfds()[1].read().is_err(),
            "stale kick"
        );

        // A device that fails after taking its queues holds none of them once the
        // activation failed, and a reset does not bring them back.
        f.state.lock().unwrap().fail_activate = true;
        linux_bring_up(&mut f.transport, &[&q0, &q1]);
        assert_ne!(f.transport.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert_eq!(
            f.state.lock().unwrap().held,
            Vec::<bool>::new(),
            "the device kept the queues of a failed activation"
        );
        reg_write(&mut f.transport, reg::VIRTIO_MMIO_STATUS, 0);
        assert!(f.state.lock().unwrap().held.is_empty());

        // A correct setup of queue 0 only now activates cleanly, without the old queue 1.
        f.state.lock().unwrap().fail_activate = false;
        linux_bring_up(&mut f.transport, &[&q0]);
        assert!(f.transport.is_active());
        let s = f.state.lock().unwrap();
        assert_eq!(s.held, vec![true, false]);
        assert_eq!(
            s.activations,
            vec![(vec![true, false], MOCK_FEATURES | (1 << VIRTIO_F_VERSION_1))]
        );
    }

    /// Issue #12 (6): a driver that loops on a bad setup and a reset makes the VMM warn a
    /// bounded number of times, not once per round.
    #[test]
    fn a_driver_looping_on_failed_setups_cannot_flood_the_log() {
        let mut f = fixture(&[16]);
        let q = DriverQueue::new(&f.mem, 0x1000, 16);
        f.state.lock().unwrap().fail_activate = true;
        let text = crate::vmm::ratelimit::capture_logs(|| {
            for _ in 0..1000 {
                linux_bring_up(&mut f.transport, &[&q]);
                assert_ne!(f.transport.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
            }
        });
        let warnings = text.matches("the device stops until").count();
        // Other tests share this call site's limit, so a window may be spent already; at
        // most two windows' worth while the loop runs.
        let most = 2 * crate::vmm::ratelimit::BURST as usize;
        assert!(warnings <= most, "{warnings} warnings:\n{text}");
    }

    #[test]
    fn a_failing_device_is_marked_and_no_longer_served() {
        let mut f = fixture(&[16]);
        let q = DriverQueue::new(&f.mem, 0x1000, 16);
        linux_bring_up(&mut f.transport, &[&q]);
        f.transport.process_queue(0);
        f.state.lock().unwrap().fail_process = true;
        f.transport.process_queue(0);
        f.transport.process_queue(0);
        assert_eq!(f.state.lock().unwrap().processed, vec![0, 0]);
        assert_ne!(f.transport.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert_eq!(f.line.count(), 1);
        // Linux writes back what it reads, NEEDS_RESET included; that is not an error.
        add_status(&mut f.transport, VIRTIO_CONFIG_S_FAILED);
        assert_ne!(f.transport.status() & VIRTIO_CONFIG_S_FAILED, 0);
    }

    #[test]
    fn reset_returns_everything_to_the_start() {
        let mut f = fixture(&[16]);
        let q = DriverQueue::new(&f.mem, 0x1000, 16);
        linux_bring_up(&mut f.transport, &[&q]);
        f.transport.interrupt.signal_used_buffer();
        let t = &mut f.transport;
        reg_write(t, reg::VIRTIO_MMIO_STATUS, 0);
        assert_eq!(t.status(), 0);
        assert!(!t.is_active());
        assert_eq!(reg_read(t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert_eq!(reg_read(t, reg::VIRTIO_MMIO_QUEUE_READY), 0);
        assert_eq!(t.driver_features, 0);
        assert_eq!(f.state.lock().unwrap().resets, 1);
        // A second reset of an inactive device does not reset the device model again.
        reg_write(&mut f.transport, reg::VIRTIO_MMIO_STATUS, 0);
        assert_eq!(f.state.lock().unwrap().resets, 1);
    }

    #[test]
    fn notify_signals_the_queue_eventfd_and_ack_clears_status() {
        let mut f = fixture(&[16, 16]);
        let t = &mut f.transport;
        reg_write(t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        reg_write(t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        reg_write(t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 7); // no such queue: ignored
        assert_eq!(t.notify_eventfds()[1].read().unwrap(), 2);
        assert!(
            t.notify_eventfds()[0].read().is_err(),
            "queue 0 not signalled"
        );

        t.interrupt.signal_used_buffer();
        t.interrupt.signal_config_change();
        assert_eq!(
            reg_read(t, reg::VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG
        );
        reg_write(t, reg::VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
        assert_eq!(
            reg_read(t, reg::VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_CONFIG
        );
    }

    #[test]
    fn config_space_is_passed_through_at_any_width() {
        let mut f = fixture(&[16]);
        f.state.lock().unwrap().config = [1, 2, 3, 4, 5, 6, 7, 8];
        let t = &mut f.transport;
        let mut b = [0u8; 1];
        t.read(0x103, &mut b);
        assert_eq!(b, [4]);
        let mut w = [0u8; 8];
        t.read(0x100, &mut w);
        assert_eq!(w, [1, 2, 3, 4, 5, 6, 7, 8]);
        t.write(0x106, &[0xaa, 0xbb, 0xcc]); // runs past the end: the tail is dropped
        t.read(0x104, &mut w[..4]);
        assert_eq!(w[..4], [5, 6, 0xaa, 0xbb]);
        // Far past the config space, and at the very end of the window.
        t.read(0xffc, &mut w[..4]);
        assert_eq!(w[..4], [0; 4]);
        t.write(0xfff, &[1, 2, 3, 4]);
    }

    #[test]
    fn odd_register_accesses_are_ignored() {
        let mut f = fixture(&[16]);
        let t = &mut f.transport;
        let mut two = [0xffu8; 2];
        t.read(0, &mut two);
        assert_eq!(two, [0, 0]);
        let mut four = [0xffu8; 4];
        t.read(2, &mut four);
        assert_eq!(four, [0; 4]);
        let mut eight = [0xffu8; 8];
        t.read(0, &mut eight);
        assert_eq!(eight, [0; 8]);
        t.read(0, &mut []);
        // A byte-wide status write does nothing.
        t.write(
            u64::from(reg::VIRTIO_MMIO_STATUS),
            &[VIRTIO_CONFIG_S_ACKNOWLEDGE as u8],
        );
        t.write(u64::from(reg::VIRTIO_MMIO_STATUS) + 1, &[1, 0, 0, 0]);
        t.write(0, &[]);
        assert_eq!(t.status(), 0);
    }

    #[test]
    fn random_register_traffic_never_panics() {
        let mut f = fixture(&[16, 4]);
        let q = DriverQueue::new(&f.mem, 0x1000, 16);
        linux_bring_up(&mut f.transport, &[&q]);
        // A small deterministic generator (xorshift) over offsets, widths and values.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let r = next();
            let offset = (r % 0x1100) & !(r >> 40 & 3);
            let len = [0usize, 1, 2, 4, 8][(r >> 20) as usize % 5];
            let value = next();
            let mut data = value.to_le_bytes();
            if r & 1 == 0 {
                f.transport.read(offset, &mut data[..len]);
            } else {
                // Bias towards small values so that status and queue writes mean something.
                let v = if r & 2 == 0 { value % 16 } else { value };
                f.transport.write(offset, &v.to_le_bytes()[..len]);
            }
            f.transport.process_queue((r >> 50) as usize % 3);
        }
    }

    #[test]
    fn a_bad_declared_queue_size_is_an_error() {
        let state = Arc::new(Mutex::new(MockState::default()));
        for max in [0, 3, 65535] {
            let device = MockDevice {
                state: state.clone(),
                max_sizes: vec![16, max],
            };
            let err = MmioTransport::new(
                guest_memory(),
                Box::new(device),
                Interrupt::new(CountingLine::new()),
            )
            .unwrap_err();
            assert!(
                matches!(err, MmioError::BadMaxQueueSize { index: 1, .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn slot_gives_cmdline_and_notify_address() {
        let slot = MmioSlot {
            base: 0xd000_1000,
            irq: 6,
        };
        assert_eq!(
            slot.cmdline_fragment(),
            "virtio_mmio.device=4K@0xd0001000:6"
        );
        assert_eq!(slot.notify_address(), 0xd000_1050);
    }
}
