//! A virtio-mmio device's interrupt: the InterruptStatus bits the guest reads and acknowledges,
//! and the line that tells the guest to look at them.
//!
//! A VMM backs the line with a KVM irqfd (an [`EventFd`] registered with
//! `VmFd::register_irqfd` for the device's GSI); tests back it with a [`CountingLine`].

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use vmm_sys_util::eventfd::EventFd;

/// Something that raises a device's interrupt in the guest.
pub trait IrqLine: Send + Sync {
    fn trigger(&self) -> io::Result<()>;
}

/// A KVM irqfd: writing to it injects the GSI it was registered for.
impl IrqLine for EventFd {
    fn trigger(&self) -> io::Result<()> {
        self.write(1)
    }
}

/// Counts how often it was triggered (tests, and VMMs that poll instead of injecting).
#[derive(Debug, Default, Clone)]
pub struct CountingLine(Arc<AtomicUsize>);

impl CountingLine {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times the line has been triggered so far.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl IrqLine for CountingLine {
    fn trigger(&self) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A device's interrupt state, shared by the transport (which shows InterruptStatus to the
/// guest and clears it on InterruptACK) and the device (which raises it).
pub struct Interrupt {
    status: AtomicU32,
    line: Box<dyn IrqLine>,
}

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupt")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Interrupt {
    pub fn new(line: impl IrqLine + 'static) -> Arc<Self> {
        Arc::new(Interrupt {
            status: AtomicU32::new(0),
            line: Box::new(line),
        })
    }

    /// The device put buffers on a used ring (InterruptStatus bit 0).
    pub fn signal_used_buffer(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// The device's configuration space or status changed (InterruptStatus bit 1).
    pub fn signal_config_change(&self) {
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: the guest has handled `bits`.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Device reset: nothing pending.
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        // Nothing a device can do about a failed injection but say so; the guest still sees
        // the status bit the next time it looks.
        if let Err(e) = self.line.trigger() {
            crate::vmm::ratelimit::limited!(
                warn,
                "cannot inject a virtio interrupt into the guest: {e}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bits_are_raised_and_acknowledged() {
        let line = CountingLine::new();
        let irq = Interrupt::new(line.clone());
        irq.signal_used_buffer();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING);
        irq.signal_config_change();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(line.count(), 2);
        irq.acknowledge(VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
        irq.clear();
        assert_eq!(irq.status(), 0);
    }

    #[test]
    fn an_eventfd_line_is_written() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = Interrupt::new(evt.try_clone().unwrap());
        irq.signal_used_buffer();
        irq.signal_used_buffer();
        assert_eq!(evt.read().unwrap(), 2);
    }
}
