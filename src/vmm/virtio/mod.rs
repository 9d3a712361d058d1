//! Virtio devices on the virtio-mmio transport (virtio 1.2, modern devices only).
//!
//! - [`device`]: the [`VirtioDevice`] trait every device model implements.
//! - [`mmio`]: the virtio-mmio register window (a bus device) and its status, feature and
//!   queue-setup state machine.
//! - [`interrupt`]: InterruptStatus and the line to the guest (a KVM irqfd, or a counter).
//! - [`queue`]: popping available chains, checking every descriptor, moving their bytes.
//! - [`event`]: the device thread's subscriber that serves a queue when the guest kicks it.
//! - [`block`], [`net`], [`rng`], [`vsock`]: the devices.
//!
//! Attaching a device, as the VM builder does it:
//!
//! ```ignore
//! let slot = MmioSlot { base: 0xd000_0000, irq: 5 };
//! let irqfd = EventFd::new(libc::EFD_NONBLOCK)?;
//! vm_fd.register_irqfd(&irqfd, slot.irq)?;
//! let device = Block::open(path, read_only, "rootfs")?;
//! let transport = MmioTransport::new(mem.clone(), Box::new(device), Interrupt::new(irqfd))?;
//! for (i, evt) in transport.notify_eventfds().iter().enumerate() {
//!     vm_fd.register_ioevent(evt, &IoEventAddress::Mmio(slot.notify_address()), i as u32)?;
//! }
//! let transport = Arc::new(Mutex::new(transport));
//! mmio_bus.insert("virtio-blk", slot.base, MMIO_WINDOW_SIZE, transport.clone())?;
//! event_manager.add_subscriber(Arc::new(Mutex::new(MmioQueueHandler::new(transport)?)));
//! cmdline.insert_str(slot.cmdline_fragment())?;
//! // device thread: loop { event_manager.run()?; }
//! ```

pub mod block;
pub mod device;
pub mod event;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod rng;
#[cfg(test)]
pub(crate) mod testing;
pub mod vsock;

pub use device::{Activation, DeviceError, VirtioDevice};
pub use event::MmioQueueHandler;
pub use interrupt::{CountingLine, Interrupt, IrqLine};
pub use mmio::{MMIO_WINDOW_SIZE, MmioSlot, MmioTransport};
