//! virtio-net (virtio 1.2 §5.1) on a tap the VMM inherited: one receive and one transmit
//! queue, no control queue.
//!
//! - [`tap`]: the host end ([`Tap`], or any [`Backend`]) and its ioctls.
//! - [`config`]: [`NetConfig`], the device in a VMM config.
//!
//! Every frame in both directions starts with the 12-byte `virtio_net_hdr_v1`, and the tap is
//! told to use the same header (`TUNSETVNETHDRSZ`), so headers pass through unchanged: what
//! the guest says about checksums and segmentation reaches the host kernel, and what the host
//! kernel says reaches the guest. Only `num_buffers` is ours to fill in on receive (always 1:
//! without `VIRTIO_NET_F_MRG_RXBUF` a frame takes one chain).
//!
//! Features: `VERSION_1` (the transport's), `MAC`, `MTU`, `STATUS` (link always up), and the
//! offloads that need nothing but header pass-through: `CSUM` + `HOST_TSO4/6` (the guest may
//! send partially checksummed and unsegmented TCP, which the host kernel finishes) and
//! `GUEST_CSUM` + `GUEST_TSO4/6` (the host may send them to the guest; the tap is told to with
//! `TUNSETOFFLOAD`, from the features the guest accepted, when the driver starts the device).
//! A Linux guest that accepts `GUEST_TSO4/6` without `MRG_RXBUF` posts receive chains of
//! about 64 KiB ("big packets"), which any frame the tap gives fits. No UFO (deprecated in
//! Linux), no `MRG_RXBUF`, no `EVENT_IDX` (the other devices do without it too).
//!
//! The device has two halves sharing one [`NetState`], as vsock does: [`Net`], the device
//! model inside the virtio-mmio transport, and [`NetHost`], the [`HostFdSource`] the VM
//! builder adds to the device thread so that a readable tap is served there:
//!
//! ```ignore
//! let (device, host) = Net::from_config(&net_config)?;
//! attach_virtio(&vm, &mut mmio, &mut events, slot, Box::new(device))?;
//! events.add_subscriber(Arc::new(Mutex::new(HostFdHandler::new(host)?)));
//! ```
//!
//! # Receive (tap → guest)
//!
//! When the tap is readable, one frame is read into a host buffer, then copied into the next
//! receive chain. A frame that does not fit that chain is dropped and counted (the chain goes
//! back to the ring untouched); a chain that fails the checks is returned with length 0 and
//! the frame waits for the next one. With no chain left, the frame waits and the tap is no
//! longer watched (it stays readable, so watching it would spin) until the driver adds
//! buffers and notifies the receive queue. The tap sits in an epoll set of the device's own,
//! whose descriptor is what the device thread watches, so the device can stop and resume
//! watching without the event loop's help.
//!
//! # Transmit (guest → tap)
//!
//! Each chain is gathered into a host buffer and written to the tap as one frame; the used
//! length is 0 (the device writes nothing into transmit buffers). A chain that fails the
//! checks, or a frame the tap refuses, is dropped and counted.
//!
//! # What is checked
//!
//! Beyond [`check_chain`] (loops, chains longer than the queue, buffers outside guest
//! memory, readable after writable): no zero-length descriptor, only device-readable buffers
//! on transmit and only device-writable ones on receive, a transmit frame of at least a
//! header and an Ethernet header and at most [`MAX_FRAME_LEN`] after the header.

pub mod config;
pub mod tap;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueOwnedT};

pub use config::{NetConfig, NetConfigError};
pub use tap::{Backend, Tap, TapError, VNET_HDR_LEN};

use super::device::{Activation, DeviceError, HostFdSource, VirtioDevice, read_config_bytes};
use super::interrupt::Interrupt;
use super::queue::{
    BufCursor, Chain, CheckedChain, QueueError, add_used, check_chain, notify_used, pop_chain,
    serve_queue,
};
use crate::vmm::memory::GuestMemory;

const NAME: &str = "virtio-net";
/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
/// The longest frame after the virtio-net header: a 64 KiB segmentation-offload frame with
/// its Ethernet header, as Firecracker bounds it.
pub const MAX_FRAME_LEN: usize = 65550;
/// The shortest transmit frame after the header: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;
/// The most frames one call moves from the tap; the tap stays watched, so more wake the
/// device thread again after other devices had their turn.
const RX_BUDGET: usize = 256;

const RX: usize = 0;
const TX: usize = 1;

/// The device features offered (the transport adds `VERSION_1`).
pub const FEATURES: u64 = (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_NET_F_MTU)
    | (1 << VIRTIO_NET_F_STATUS)
    | (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Config(#[from] NetConfigError),
    #[error("{NAME}: cannot set up the epoll set that watches the tap: {0}")]
    Epoll(#[source] io::Error),
}

/// What the device has done, counted (frames, not bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered into the guest's receive buffers.
    pub rx_frames: u64,
    /// Frames from the tap dropped: they did not fit the receive chain, or were shorter than
    /// a header or longer than [`MAX_FRAME_LEN`].
    pub rx_dropped: u64,
    /// Receive chains that failed the checks (returned with length 0).
    pub rx_bad_chains: u64,
    /// Reads from the tap that failed with something other than "nothing to read".
    pub rx_errors: u64,
    /// Frames written to the tap.
    pub tx_frames: u64,
    /// Transmit chains that failed the checks.
    pub tx_bad_chains: u64,
    /// Frames the tap refused (or took only part of).
    pub tx_errors: u64,
}

struct Active {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<Interrupt>,
}

/// What both halves of the device share.
pub struct NetState {
    backend: Box<dyn Backend>,
    /// Holds the backend's descriptor while receiving is possible (see the module docs).
    epoll: Epoll,
    watching: bool,
    /// The backend failed for good (the tap is gone): never watched again.
    backend_broken: bool,
    active: Option<Active>,
    /// One frame read from the backend, header included: `rx_buf[..len]`.
    rx_buf: Vec<u8>,
    pending: Option<usize>,
    tx_buf: Vec<u8>,
    stats: NetStats,
}

impl std::fmt::Debug for NetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetState")
            .field("active", &self.active.is_some())
            .field("watching", &self.watching)
            .field("pending", &self.pending)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The device model: what the transport calls.
#[derive(Debug)]
pub struct Net {
    state: Arc<Mutex<NetState>>,
    /// `virtio_net_config` up to `mtu`: mac, status, max_virtqueue_pairs, mtu.
    config: [u8; 12],
}

/// The tap half, served on the device thread by a [`super::event::HostFdHandler`].
#[derive(Debug)]
pub struct NetHost {
    state: Arc<Mutex<NetState>>,
    /// A duplicate of the state's epoll descriptor, so that [`HostFdSource::host_fds`] need
    /// not hold the lock.
    epoll: OwnedFd,
}

impl Net {
    /// The device for `config`: takes its inherited tap ([`Tap::from_inherited`]).
    pub fn from_config(config: &NetConfig) -> Result<(Net, NetHost), NetError> {
        config.check_fields()?;
        let mac = config.mac_bytes()?;
        let tap = Tap::from_inherited(config.tap_fd).map_err(NetConfigError::from)?;
        Net::new(Box::new(tap), mac, config.mtu)
    }

    /// A device on any backend (tests use a socket pair).
    pub fn new(
        backend: Box<dyn Backend>,
        mac: [u8; 6],
        mtu: u16,
    ) -> Result<(Net, NetHost), NetError> {
        let epoll =
            Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| NetError::Epoll(e.into()))?;
        let epoll_dup = epoll.0.try_clone().map_err(NetError::Epoll)?;
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&mtu.to_le_bytes());
        let state = Arc::new(Mutex::new(NetState {
            backend,
            epoll,
            watching: false,
            backend_broken: false,
            active: None,
            rx_buf: vec![0; VNET_HDR_LEN + MAX_FRAME_LEN + 1],
            pending: None,
            tx_buf: vec![0; VNET_HDR_LEN + MAX_FRAME_LEN],
            stats: NetStats::default(),
        }));
        Ok((
            Net {
                state: state.clone(),
                config,
            },
            NetHost {
                state,
                epoll: epoll_dup,
            },
        ))
    }

    /// The counters so far.
    pub fn stats(&self) -> NetStats {
        lock(&self.state).map(|s| s.stats).unwrap_or_default()
    }
}

fn lock(state: &Mutex<NetState>) -> Result<MutexGuard<'_, NetState>, DeviceError> {
    state.lock().map_err(|_| DeviceError::Other {
        device: NAME,
        message: "a previous access panicked while holding the device state".into(),
    })
}

fn queue_error(index: usize) -> impl FnOnce(QueueError) -> DeviceError {
    move |source| DeviceError::Queue {
        device: NAME,
        index,
        source,
    }
}

/// The `TUN_F_*` offloads that match the accepted `features`: the tap may hand us what the
/// guest said it takes. (The kernel ignores the TSO flags without `TUN_F_CSUM`.)
pub fn tun_offload_flags(features: u64) -> u32 {
    let has = |bit: u32| features & (1 << bit) != 0;
    let mut flags = 0;
    if has(VIRTIO_NET_F_GUEST_CSUM) {
        flags |= libc::TUN_F_CSUM;
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            flags |= libc::TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            flags |= libc::TUN_F_TSO6;
        }
    }
    flags
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn name(&self) -> &'static str {
        NAME
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // The MAC is writable only in legacy devices; ours is not one.
        tracing::debug!(
            "{NAME}: ignored guest write to config offset {offset:#x}; it is read-only"
        );
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), DeviceError> {
        let rx = activation.take_queue(NAME, RX)?;
        let tx = activation.take_queue(NAME, TX)?;
        let mut state = lock(&self.state)?;
        let offload = tun_offload_flags(activation.features);
        // Not fatal: without offloads the host sends whole, checksummed frames, which a
        // guest that accepted offloads takes as well.
        if let Err(e) = state.backend.set_offload(offload) {
            tracing::warn!("{NAME}: cannot set the tap's offloads to {offload:#x}: {e}");
        }
        state.pending = None;
        state.active = Some(Active {
            mem: activation.mem,
            rx,
            tx,
            interrupt: activation.interrupt,
        });
        state.watch();
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError> {
        let mut state = lock(&self.state)?;
        match index {
            RX => {
                // The driver added receive buffers: receive again.
                state.watch();
                state.process_rx().map_err(queue_error(RX))
            }
            TX => state.process_tx().map_err(queue_error(TX)),
            _ => Ok(()),
        }
    }

    fn reset(&mut self) {
        match lock(&self.state) {
            Ok(mut s) => {
                s.unwatch();
                s.active = None;
                s.pending = None;
            }
            Err(e) => tracing::error!("{e}"),
        }
    }
}

impl HostFdSource for NetHost {
    fn name(&self) -> &'static str {
        NAME
    }

    fn host_fds(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.epoll.as_fd()]
    }

    fn process_host_event(&mut self, _index: usize) -> Result<(), DeviceError> {
        let mut state = lock(&self.state)?;
        if let Err(e) = state.process_rx() {
            // The receive ring is broken: stop until the driver resets the device (the
            // transport only learns of it through its own calls).
            tracing::error!(
                "{NAME}: receive queue: {e}; the device stops until the guest resets it"
            );
            state.unwatch();
            state.active = None;
            state.pending = None;
        }
        Ok(())
    }
}

/// Why a frame did not go into a receive chain.
enum RxMiss {
    /// The chain failed the checks: it is used with length 0, the frame waits.
    BadChain(String),
    /// The frame does not fit: it is dropped, the chain goes back.
    TooBig { frame: usize, room: u64 },
}

impl NetState {
    /// Starts watching the backend if the device is active and not already watching.
    fn watch(&mut self) {
        if self.watching || self.backend_broken || self.active.is_none() {
            return;
        }
        let event = EpollEvent::new(EpollFlags::EPOLLIN, 0);
        match self.epoll.add(self.backend.fd(), event) {
            Ok(()) => self.watching = true,
            Err(e) => tracing::error!("{NAME}: cannot watch the tap; nothing is received: {e}"),
        }
    }

    fn unwatch(&mut self) {
        if self.watching {
            if let Err(e) = self.epoll.delete(self.backend.fd()) {
                tracing::warn!("{NAME}: cannot stop watching the tap: {e}");
            }
            self.watching = false;
        }
    }

    /// Moves frames from the backend into receive chains until the backend has none, no
    /// chain is left (then stops watching), or [`RX_BUDGET`] frames were moved.
    fn process_rx(&mut self) -> Result<(), QueueError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let mem = &active.mem;
        let mut used = 0usize;
        let mut result = Ok(());
        let mut stop_watching = false;
        for _ in 0..RX_BUDGET {
            let len = match self.pending {
                Some(len) => len,
                None => match self.backend.recv(&mut self.rx_buf) {
                    Ok(len) if len < VNET_HDR_LEN || len >= self.rx_buf.len() => {
                        // Nothing a guest could take: no header, or cut short.
                        self.stats.rx_dropped += 1;
                        continue;
                    }
                    Ok(len) => len,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.stats.rx_errors += 1;
                        if backend_gone(&e) {
                            tracing::error!(
                                "{NAME}: reading the tap failed: {e}; nothing more is received"
                            );
                            self.backend_broken = true;
                            stop_watching = true;
                            break;
                        }
                        tracing::debug!("{NAME}: reading the tap failed: {e}; frame dropped");
                        continue;
                    }
                },
            };
            self.pending = Some(len);
            let chain = match pop_chain(&mut active.rx, mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => {
                    // No buffers: the frame waits, and the tap is left alone until the
                    // driver adds some.
                    stop_watching = true;
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let head = chain.head_index();
            let frame = &mut self.rx_buf[..len];
            // Ours to fill in: one chain per frame.
            frame[VNET_HDR_LEN - 2..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
            match deliver(mem, chain, frame) {
                Ok(written) => {
                    self.pending = None;
                    self.stats.rx_frames += 1;
                    if let Err(e) = add_used(&mut active.rx, mem, head, written) {
                        result = Err(e);
                        break;
                    }
                    used += 1;
                }
                Err(RxMiss::BadChain(e)) => {
                    tracing::debug!("{NAME}: receive chain {head} failed: {e}");
                    self.stats.rx_bad_chains += 1;
                    if let Err(e) = add_used(&mut active.rx, mem, head, 0) {
                        result = Err(e);
                        break;
                    }
                    used += 1;
                }
                Err(RxMiss::TooBig { frame, room }) => {
                    tracing::debug!(
                        "{NAME}: dropped a {frame}-byte frame: the receive chain holds {room}"
                    );
                    self.pending = None;
                    self.stats.rx_dropped += 1;
                    active.rx.go_to_previous_position();
                }
            }
        }
        if used > 0 {
            notify_used(&mut active.rx, mem, &active.interrupt);
        }
        if stop_watching {
            self.unwatch();
        }
        result
    }

    /// Writes every frame the driver made available to the backend.
    fn process_tx(&mut self) -> Result<(), QueueError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let mem = &active.mem;
        let (backend, buf, stats) = (&mut self.backend, &mut self.tx_buf, &mut self.stats);
        serve_queue(&mut active.tx, mem, &active.interrupt, |chain| {
            match gather(mem, chain, buf) {
                Ok(len) => match backend.send(&buf[..len]) {
                    Ok(n) if n == len => stats.tx_frames += 1,
                    Ok(n) => {
                        tracing::debug!("{NAME}: the tap took {n} of {len} bytes");
                        stats.tx_errors += 1;
                    }
                    Err(e) => {
                        tracing::debug!("{NAME}: writing a frame to the tap failed: {e}");
                        stats.tx_errors += 1;
                    }
                },
                Err(e) => {
                    tracing::debug!("{NAME}: transmit request failed: {e}");
                    stats.tx_bad_chains += 1;
                }
            }
            0
        })
        .map(|_| ())
    }
}

/// Errors after which the tap will never work again.
fn backend_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::EBADFD | libc::EIO | libc::ENODEV | libc::ENXIO)
    )
}

/// The checks both directions share: [`check_chain`] and no zero-length descriptor.
fn check_net_chain(mem: &GuestMemory, chain: Chain<'_>) -> Result<CheckedChain, String> {
    let chain = check_chain(mem, chain).map_err(|e| e.to_string())?;
    if chain
        .readable
        .iter()
        .chain(&chain.writable)
        .any(|b| b.len == 0)
    {
        return Err(format!("chain {} has a zero-length descriptor", chain.head));
    }
    Ok(chain)
}

/// Copies `frame` into a receive chain; returns the bytes written.
fn deliver(mem: &GuestMemory, chain: Chain<'_>, frame: &[u8]) -> Result<u32, RxMiss> {
    let chain = check_net_chain(mem, chain).map_err(RxMiss::BadChain)?;
    if !chain.readable.is_empty() {
        return Err(RxMiss::BadChain(format!(
            "receive chain {} has device-readable buffers",
            chain.head
        )));
    }
    let mut out = BufCursor::new(mem, chain.writable);
    if out.remaining() < frame.len() as u64 {
        return Err(RxMiss::TooBig {
            frame: frame.len(),
            room: out.remaining(),
        });
    }
    out.write_from_slice(frame)
        .map_err(|e| RxMiss::BadChain(e.to_string()))?;
    // At most the size of the receive buffer.
    Ok(frame.len() as u32)
}

/// Copies a transmit chain into `buf`; returns the frame's length, header included.
fn gather(mem: &GuestMemory, chain: Chain<'_>, buf: &mut [u8]) -> Result<usize, String> {
    let chain = check_net_chain(mem, chain)?;
    if !chain.writable.is_empty() {
        return Err(format!(
            "transmit chain {} has device-writable buffers",
            chain.head
        ));
    }
    let mut input = BufCursor::new(mem, chain.readable);
    let len = input.remaining();
    let min = (VNET_HDR_LEN + MIN_FRAME_LEN) as u64;
    let max = (VNET_HDR_LEN + MAX_FRAME_LEN) as u64;
    if len < min || len > max || len > buf.len() as u64 {
        return Err(format!(
            "transmit chain {} holds {len} bytes; a frame with its header is {min} to {max}",
            chain.head
        ));
    }
    // Fits in usize: at most `buf.len()`.
    let len = len as usize;
    input
        .read_to_slice(&mut buf[..len])
        .map_err(|e| e.to_string())?;
    Ok(len)
}

#[cfg(test)]
mod tests;
