//! What every virtio device implements, whatever transport carries it.

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use virtio_queue::Queue;

use super::interrupt::Interrupt;
use super::queue::QueueError;
use crate::vmm::memory::GuestMemory;

/// Everything a device needs to run, handed over when the driver sets DRIVER_OK.
pub struct Activation {
    pub mem: GuestMemory,
    /// One entry per queue the device declared ([`VirtioDevice::queue_max_sizes`]); `None`
    /// where the driver did not make that queue ready. Every `Some` queue has been checked:
    /// its size is a power of two no larger than the maximum and its rings lie in `mem`.
    pub queues: Vec<Option<Queue>>,
    pub interrupt: Arc<Interrupt>,
    /// The feature bits the driver accepted: a subset of what was offered, with
    /// `VIRTIO_F_VERSION_1`.
    pub features: u64,
}

impl Activation {
    /// Takes queue `index` out, failing if the driver did not set it up.
    pub fn take_queue(&mut self, device: &'static str, index: usize) -> Result<Queue, DeviceError> {
        self.queues
            .get_mut(index)
            .and_then(Option::take)
            .ok_or(DeviceError::QueueNotReady { device, index })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{device}: the driver did not set up queue {index}, which the device needs")]
    QueueNotReady { device: &'static str, index: usize },
    #[error("{device}: queue {index}: {source}")]
    Queue {
        device: &'static str,
        index: usize,
        #[source]
        source: QueueError,
    },
    #[error("{device}: {message}")]
    Other {
        device: &'static str,
        message: String,
    },
}

/// A virtio device model (virtio 1.2 §5). The transport owns it, negotiates features and sets
/// up queues; the device serves its queues once activated.
///
/// Everything the guest controls arrives here unchecked only as config-space offsets and
/// lengths, which implementations must bounds-check ([`read_config_bytes`] does).
pub trait VirtioDevice: Send {
    /// The virtio device ID (`virtio_ids::VIRTIO_ID_*`).
    fn device_type(&self) -> u32;
    /// A short name for messages, e.g. "virtio-blk".
    fn name(&self) -> &'static str;
    /// Device-specific feature bits offered to the driver; the transport adds its own
    /// (`VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64;
    /// The maximum size of each queue, one entry per queue; each a power of two ≤ 32768.
    fn queue_max_sizes(&self) -> &[u16];
    /// A guest read of the device configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// A guest write to the device configuration space at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with the queues the driver set up. An error leaves the device
    /// inactive and the transport marks it as needing a reset.
    fn activate(&mut self, activation: Activation) -> Result<(), DeviceError>;
    /// The driver notified queue `index`: serve what it made available. Requests the guest got
    /// wrong fail one by one; an error here means the device cannot go on (the transport marks
    /// it as needing a reset and stops calling it).
    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError>;
    /// Back to the state before activation: drop queues, memory and interrupt.
    fn reset(&mut self);
}

/// The host side of a device that waits on file descriptors of its own (vsock's sockets), served
/// on the device thread by a [`super::event::HostFdHandler`] next to the device's
/// [`super::event::MmioQueueHandler`].
///
/// It is a separate object from the [`VirtioDevice`] inside the transport (the two share the
/// device's state behind a lock of their own), so host I/O never takes the transport's lock and
/// the transport needs no knowledge of it.
pub trait HostFdSource: Send {
    /// A short name for messages, e.g. "virtio-vsock".
    fn name(&self) -> &'static str;
    /// The descriptors to watch for readability, fixed for the source's lifetime. A device
    /// whose set of descriptors changes (one per connection) keeps them in an epoll set of its
    /// own and returns that set's descriptor.
    fn host_fds(&self) -> Vec<BorrowedFd<'_>>;
    /// Descriptor `index` of [`Self::host_fds`] is readable. Called whether or not the driver
    /// has started the device. The descriptors are watched level-triggered: an implementation
    /// consumes the readiness or is called again at once. An error stops the watching of that
    /// descriptor.
    fn process_host_event(&mut self, index: usize) -> Result<(), DeviceError>;
}

/// Copies `config[offset..]` into `data`; bytes past the end of `config` read as zero. Any
/// offset and length are accepted.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let config = [1u8, 2, 3, 4];
        let mut data = [0xffu8; 4];
        read_config_bytes(&config, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        read_config_bytes(&config, 4, &mut data);
        assert_eq!(data, [0; 4]);
        read_config_bytes(&config, u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
        let mut empty = [];
        read_config_bytes(&config, 0, &mut empty);
    }
}
