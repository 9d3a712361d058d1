//! virtio-vsock (virtio 1.2 §5.10) with Firecracker's hybrid host side: guest streams become
//! host Unix-socket streams.
//!
//! - [`host`]: the host's end of the protocol: [`connect_to_guest`] and the paths of the Unix
//!   sockets.
//! - [`packet`]: the packet header and reading/writing packets from/to descriptor chains.
//! - [`connection`]: one stream's state machine and credit-based flow control.
//! - [`muxer`]: all connections, the listening socket and the queues.
//!
//! The device has two halves sharing one [`Muxer`]: [`Vsock`], the device model inside the
//! virtio-mmio transport (rx, tx and event queues; config space = the guest's CID), and
//! [`VsockHost`], the [`HostFdSource`] the VM builder adds to the device thread so that host
//! sockets are served there too:
//!
//! ```ignore
//! let (device, host) = Vsock::new(&uds_path, guest_cid)?;
//! attach_virtio(&vm, &mut mmio, &mut events, slot, Box::new(device))?;
//! events.add_subscriber(Arc::new(Mutex::new(HostFdHandler::new(host)?)));
//! ```

pub mod connection;
pub mod host;
pub mod muxer;
pub mod packet;

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;

pub use host::{ConnectError, connect_to_guest, host_listener_path};
pub use muxer::{Muxer, MuxerError};

use super::device::{Activation, DeviceError, HostFdSource, VirtioDevice, read_config_bytes};
use super::queue::QueueError;
use connection::Timeouts;

const NAME: &str = "virtio-vsock";
/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
/// The guest CID unless told otherwise.
pub const DEFAULT_GUEST_CID: u64 = 3;

const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error(
        "vsock: guest CID {0} is not usable: give 3 to 4294967294 (0-2 are reserved, \
         4294967295 means any)"
    )]
    BadCid(u64),
    #[error(transparent)]
    Muxer(#[from] MuxerError),
}

/// The device model: what the transport calls.
#[derive(Debug)]
pub struct Vsock {
    muxer: Arc<Mutex<Muxer>>,
    config: [u8; 8],
}

/// The host-socket half, served on the device thread by a
/// [`super::event::HostFdHandler`].
#[derive(Debug)]
pub struct VsockHost {
    muxer: Arc<Mutex<Muxer>>,
    /// A duplicate of the muxer's epoll descriptor, so that [`HostFdSource::host_fds`] need not
    /// hold the lock.
    epoll: std::os::fd::OwnedFd,
}

impl Vsock {
    /// A vsock device for a guest with CID `guest_cid`, listening for host connections on
    /// `uds_path` (see [`host`]).
    pub fn new(uds_path: &Path, guest_cid: u64) -> Result<(Vsock, VsockHost), VsockError> {
        Self::with_timeouts(uds_path, guest_cid, Timeouts::default())
    }

    pub fn with_timeouts(
        uds_path: &Path,
        guest_cid: u64,
        timeouts: Timeouts,
    ) -> Result<(Vsock, VsockHost), VsockError> {
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::BadCid(guest_cid));
        }
        let muxer = Muxer::new(uds_path, guest_cid, timeouts)?;
        let epoll = muxer
            .event_fd()
            .try_clone_to_owned()
            .map_err(|source| MuxerError::Bind {
                path: uds_path.to_owned(),
                source,
            })?;
        let muxer = Arc::new(Mutex::new(muxer));
        Ok((
            Vsock {
                muxer: muxer.clone(),
                config: guest_cid.to_le_bytes(),
            },
            VsockHost { muxer, epoll },
        ))
    }

    fn muxer(&self) -> Result<MutexGuard<'_, Muxer>, DeviceError> {
        lock(&self.muxer)
    }
}

fn lock(muxer: &Mutex<Muxer>) -> Result<MutexGuard<'_, Muxer>, DeviceError> {
    muxer.lock().map_err(|_| DeviceError::Other {
        device: NAME,
        message: "a previous access panicked while holding the connections".into(),
    })
}

fn queue_error(index: usize) -> impl FnOnce(QueueError) -> DeviceError {
    move |source| DeviceError::Queue {
        device: NAME,
        index,
        source,
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn name(&self) -> &'static str {
        NAME
    }

    fn features(&self) -> u64 {
        // Streams only: no VIRTIO_VSOCK_F_SEQPACKET.
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        tracing::debug!(
            "{NAME}: ignored guest write to config offset {offset:#x}; it is read-only"
        );
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), DeviceError> {
        let rx = activation.take_queue(NAME, RX)?;
        let tx = activation.take_queue(NAME, TX)?;
        let event = activation.take_queue(NAME, EVENT)?;
        self.muxer()?
            .activate(activation.mem, rx, tx, event, activation.interrupt)
            .map_err(queue_error(TX))
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError> {
        let mut muxer = self.muxer()?;
        match index {
            RX => muxer.process_rx().map_err(queue_error(RX)),
            TX => muxer.process_tx().map_err(queue_error(TX)),
            // The driver's event buffers stay with us: the device sends no events.
            _ => Ok(()),
        }
    }

    fn reset(&mut self) {
        match self.muxer() {
            Ok(mut m) => m.reset(),
            Err(e) => tracing::error!("{e}"),
        }
    }
}

impl HostFdSource for VsockHost {
    fn name(&self) -> &'static str {
        NAME
    }

    fn host_fds(&self) -> Vec<BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        vec![self.epoll.as_fd()]
    }

    fn process_host_event(&mut self, _index: usize) -> Result<(), DeviceError> {
        let mut muxer = lock(&self.muxer)?;
        if let Err(e) = muxer.process_host() {
            // Keep serving the host (other connections' streams are closed cleanly on the
            // driver's reset); the queues are broken until then.
            crate::vmm::ratelimit::limited!(
                error,
                "{NAME}: {e}; the device stops until the guest resets it"
            );
            muxer.reset();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
