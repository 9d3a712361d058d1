//! The vsock muxer: every connection between guest sockets and host Unix streams, the host's
//! listening socket, and the device's queues once the driver started it.
//!
//! It is shared (behind one lock) by the two halves of the device on the device thread: the
//! [`super::Vsock`] device model, which the transport calls when the guest kicks a queue, and
//! the [`super::VsockHost`] source, called when a host descriptor is ready. All host
//! descriptors (the listener, a timer for deadlines, one stream per connection) sit in one
//! epoll set whose descriptor is the only one the device thread watches.
//!
//! Packets for the guest are produced on demand: whenever rx buffers are available the muxer
//! asks connections, round robin, for their next packet ([`Connection::next_rx`]), so data is
//! read from a host stream only when the guest has room and credit for it.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use virtio_queue::{Queue, QueueOwnedT, QueueT};

use super::connection::{Connection, Timeouts};
use super::host::host_listener_path;
use super::packet::{
    HOST_CID, Header, MAX_PAYLOAD, Op, TYPE_STREAM, read_tx, rx_payload_room, write_rx,
};
use crate::vmm::memory::GuestMemory;
use crate::vmm::virtio::interrupt::Interrupt;
use crate::vmm::virtio::queue::{QueueError, add_used, check_chain, notify_used, pop_chain};

/// The most connections at once; a guest REQUEST or host CONNECT past it is refused.
pub const MAX_CONNECTIONS: usize = 1024;
/// The most host streams that have not finished their `CONNECT` line.
const MAX_HANDSHAKES: usize = 64;
/// The most resets owed for packets that matched no connection; past it they are dropped.
const MAX_CONTROL: usize = 256;
/// The longest `CONNECT <port>` line.
const MAX_CONNECT_LINE: usize = 32;
/// Host ports given to host-initiated connections start here (as in Firecracker).
const FIRST_LOCAL_PORT: u32 = 1 << 30;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_TIMER: u64 = 1;
const FIRST_STREAM_TOKEN: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error("vsock: {path} exists and is not a socket; remove it or pass another --vsock path")]
    PathTaken { path: PathBuf },
    #[error(
        "vsock: something is listening on {path} already (another VM?); pass another --vsock \
         path"
    )]
    InUse { path: PathBuf },
    #[error("vsock: cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vsock: cannot set up the host event set ({what}): {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
}

/// The queues of a started device.
struct Queues {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    /// Held so that the driver's buffers stay ours; the device sends no events.
    _event: Queue,
    interrupt: std::sync::Arc<Interrupt>,
}

/// A host stream that has not sent its whole `CONNECT <port>\n` yet.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    timer: TimerFd,
    timeouts: Timeouts,
    next_token: u64,
    next_local_port: u32,
    handshakes: HashMap<u64, Handshake>,
    conns: HashMap<u64, Connection>,
    /// `(local port, guest port)` → token.
    by_ports: HashMap<(u32, u32), u64>,
    /// Connections that may have a packet for the guest, in the order they get rx buffers.
    rx_order: VecDeque<u64>,
    /// Resets owed for packets that matched no connection.
    control: VecDeque<Header>,
    /// One payload's worth of scratch space, both directions.
    scratch: Vec<u8>,
    queues: Option<Queues>,
}

impl std::fmt::Debug for Muxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer")
            .field("guest_cid", &self.guest_cid)
            .field("uds_path", &self.uds_path)
            .field("connections", &self.conns.len())
            .field("active", &self.queues.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

impl Muxer {
    /// Listens on `uds_path` (replacing a stale socket there) for host connections to a guest
    /// with CID `guest_cid`.
    pub fn new(uds_path: &Path, guest_cid: u64, timeouts: Timeouts) -> Result<Self, MuxerError> {
        use std::os::unix::fs::FileTypeExt;
        if let Ok(meta) = std::fs::symlink_metadata(uds_path) {
            if !meta.file_type().is_socket() {
                return Err(MuxerError::PathTaken {
                    path: uds_path.to_owned(),
                });
            }
            if UnixStream::connect(uds_path).is_ok() {
                return Err(MuxerError::InUse {
                    path: uds_path.to_owned(),
                });
            }
            // A socket left by a VMM that did not clean up.
            let _ = std::fs::remove_file(uds_path);
        }
        let bind = |source| MuxerError::Bind {
            path: uds_path.to_owned(),
            source,
        };
        let listener = UnixListener::bind(uds_path).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let setup = |what| move |source| MuxerError::Setup { what, source };
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(setup("epoll"))?;
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(setup("timerfd"))?;
        epoll
            .add(
                &listener,
                EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_LISTENER),
            )
            .map_err(setup("listener"))?;
        epoll
            .add(&timer, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_TIMER))
            .map_err(setup("timer"))?;
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_owned(),
            listener,
            epoll,
            timer,
            timeouts,
            next_token: FIRST_STREAM_TOKEN,
            next_local_port: FIRST_LOCAL_PORT,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            by_ports: HashMap::new(),
            rx_order: VecDeque::new(),
            control: VecDeque::new(),
            scratch: vec![0; MAX_PAYLOAD],
            queues: None,
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The descriptor the device thread watches: readable when any host descriptor is.
    pub fn event_fd(&self) -> BorrowedFd<'_> {
        self.epoll.0.as_fd()
    }

    /// Live connections (for tests and logs).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    pub fn is_active(&self) -> bool {
        self.queues.is_some()
    }

    /// The driver started the device: from now on packets flow.
    pub fn activate(
        &mut self,
        mem: GuestMemory,
        rx: Queue,
        tx: Queue,
        event: Queue,
        interrupt: std::sync::Arc<Interrupt>,
    ) -> Result<(), QueueError> {
        self.queues = Some(Queues {
            mem,
            rx,
            tx,
            _event: event,
            interrupt,
        });
        // The guest may have queued packets before its DRIVER_OK.
        self.process_tx()
    }

    /// The driver reset the device: every connection is forgotten (their host streams are
    /// closed) and nothing flows until it starts the device again.
    pub fn reset(&mut self) {
        self.queues = None;
        for (_, c) in self.conns.drain() {
            let _ = self.epoll.delete(c.stream());
        }
        self.by_ports.clear();
        self.rx_order.clear();
        self.control.clear();
        self.arm_timer();
    }

    /// The guest made rx buffers available.
    pub fn process_rx(&mut self) -> Result<(), QueueError> {
        self.deliver_rx()
    }

    /// Serves the packets the guest sent, then what it is owed in return.
    pub fn process_tx(&mut self) -> Result<(), QueueError> {
        let Some(mut q) = self.queues.take() else {
            return Ok(());
        };
        let result = self.drain_tx(&mut q);
        self.queues = Some(q);
        result?;
        self.deliver_rx()
    }

    fn drain_tx(&mut self, q: &mut Queues) -> Result<(), QueueError> {
        let mut used = 0;
        let mut result = Ok(());
        // A well-behaved driver has at most a queue's worth outstanding; a kick that comes
        // while we serve brings us back for the rest.
        for _ in 0..q.tx.size() {
            let chain = match pop_chain(&mut q.tx, &q.mem) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let head = chain.head_index();
            let packet = check_chain(&q.mem, chain)
                .map_err(Into::into)
                .and_then(|c| read_tx(&q.mem, c, &mut self.scratch));
            if let Err(e) = add_used(&mut q.tx, &q.mem, head, 0) {
                result = Err(e);
                break;
            }
            used += 1;
            match packet {
                Ok((hdr, len)) => {
                    let payload = std::mem::take(&mut self.scratch);
                    self.on_guest_packet(&hdr, &payload[..len]);
                    self.scratch = payload;
                }
                Err(e) => {
                    tracing::debug!("virtio-vsock: dropped a tx packet: {e}");
                    if let Some(hdr) = e.header() {
                        self.reset_named(hdr, "its packet was malformed");
                    }
                }
            }
        }
        if used > 0 {
            notify_used(&mut q.tx, &q.mem, &q.interrupt);
        }
        self.sweep();
        result
    }

    /// The connection a malformed packet named (if any) is reset.
    fn reset_named(&mut self, hdr: &Header, why: &str) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            return;
        }
        if let Some(&token) = self.by_ports.get(&(hdr.dst_port, hdr.src_port)) {
            if let Some(c) = self.conns.get_mut(&token) {
                c.kill(why);
            }
            self.schedule(token);
        } else if hdr.op() != Some(Op::Rst) {
            self.push_control(hdr.reply(Op::Rst));
        }
    }

    fn push_control(&mut self, hdr: Header) {
        if self.control.len() < MAX_CONTROL {
            self.control.push_back(hdr);
        } else {
            tracing::debug!("virtio-vsock: too many resets owed to the guest; dropping one");
        }
    }

    fn schedule(&mut self, token: u64) {
        if let Some(c) = self.conns.get_mut(&token)
            && !c.queued
            && c.has_rx()
        {
            c.queued = true;
            self.rx_order.push_back(token);
        }
    }

    /// One packet from the guest.
    fn on_guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            tracing::debug!(
                "virtio-vsock: dropped a packet from CID {} to CID {}: the guest is CID {} and \
                 may only talk to the host (CID {HOST_CID})",
                hdr.src_cid,
                hdr.dst_cid,
                self.guest_cid
            );
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            if hdr.op() != Some(Op::Rst) {
                self.push_control(hdr.reply(Op::Rst));
            }
            return;
        }
        let now = Instant::now();
        if let Some(&token) = self.by_ports.get(&(hdr.dst_port, hdr.src_port)) {
            if let Some(c) = self.conns.get_mut(&token) {
                c.on_guest(hdr, payload, now, &self.timeouts);
            }
            self.schedule(token);
            return;
        }
        match hdr.op() {
            Some(Op::Request) => self.guest_connect(hdr),
            Some(Op::Rst) => {}
            _ => self.push_control(hdr.reply(Op::Rst)),
        }
    }

    /// The guest connects to host port `hdr.dst_port`: connect to `UDS_PATH_<port>`.
    fn guest_connect(&mut self, hdr: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::debug!("virtio-vsock: refusing a guest connection: too many connections");
            return self.push_control(hdr.reply(Op::Rst));
        }
        let path = host_listener_path(&self.uds_path, hdr.dst_port);
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(
                    "virtio-vsock: guest connect to host port {} refused: {}: {e}",
                    hdr.dst_port,
                    path.display()
                );
                return self.push_control(hdr.reply(Op::Rst));
            }
        };
        let token = self.new_token();
        let flags = stream_flags();
        if let Err(e) = self.epoll.add(&stream, EpollEvent::new(flags, token)) {
            crate::vmm::ratelimit::limited!(warn, "virtio-vsock: cannot watch a host stream: {e}");
            return self.push_control(hdr.reply(Op::Rst));
        }
        let conn = Connection::new_peer(stream, hdr);
        self.by_ports
            .insert((conn.local_port, conn.peer_port), token);
        self.conns.insert(token, conn);
        self.schedule(token);
    }

    fn new_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    /// Host descriptors are ready: accept, read handshakes, move connection data, time out.
    pub fn process_host(&mut self) -> Result<(), QueueError> {
        let mut events = [EpollEvent::empty(); 32];
        // Until nothing is ready (an accepted stream's CONNECT line is usually ready at once),
        // but a bounded number of rounds: the set is level-triggered from outside, so what is
        // left wakes the device thread again.
        for _ in 0..8 {
            let n = match self.epoll.wait(&mut events, EpollTimeout::ZERO) {
                Ok(n) => n,
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    tracing::error!("virtio-vsock: epoll_wait failed: {e}");
                    break;
                }
            };
            let now = Instant::now();
            for ev in &events[..n] {
                let flags = ev.events();
                match ev.data() {
                    TOKEN_LISTENER => self.accept_all(now),
                    TOKEN_TIMER => {
                        // Non-blocking; nothing to read only means it was already consumed.
                        let _ = self.timer.wait();
                    }
                    token if self.handshakes.contains_key(&token) => {
                        self.read_handshake(token, now)
                    }
                    token => {
                        if let Some(c) = self.conns.get_mut(&token) {
                            c.on_host_event(
                                flags.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLERR),
                                flags.contains(EpollFlags::EPOLLOUT),
                                flags.contains(EpollFlags::EPOLLHUP),
                                now,
                            );
                            self.schedule(token);
                        }
                    }
                }
            }
            if n == 0 {
                break;
            }
        }
        self.check_deadlines(Instant::now());
        self.sweep();
        self.deliver_rx()
    }

    fn accept_all(&mut self, now: Instant) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(
                        "virtio-vsock: accepting on {}: {e}",
                        self.uds_path.display()
                    );
                    return;
                }
            };
            if self.handshakes.len() >= MAX_HANDSHAKES || self.conns.len() >= MAX_CONNECTIONS {
                tracing::debug!("virtio-vsock: refusing a host connection: too many");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.new_token();
            if let Err(e) = self
                .epoll
                .add(&stream, EpollEvent::new(EpollFlags::EPOLLIN, token))
            {
                crate::vmm::ratelimit::limited!(
                    warn,
                    "virtio-vsock: cannot watch a host stream: {e}"
                );
                continue;
            }
            self.handshakes.insert(
                token,
                Handshake {
                    stream,
                    line: Vec::new(),
                    deadline: now + self.timeouts.handshake,
                },
            );
        }
    }

    /// Reads a host stream's `CONNECT <port>\n`, a byte at a time so that data behind it
    /// stays in the stream for the guest.
    fn read_handshake(&mut self, token: u64, now: Instant) {
        let Some(h) = self.handshakes.get_mut(&token) else {
            return;
        };
        let done = loop {
            let mut byte = [0u8; 1];
            match h.stream.read(&mut byte) {
                Ok(0) => break Err("closed before its CONNECT line"),
                Ok(_) if byte[0] == b'\n' => break Ok(()),
                Ok(_) if h.line.len() >= MAX_CONNECT_LINE => break Err("CONNECT line too long"),
                Ok(_) => h.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break Err("read failed"),
            }
        };
        let Some(h) = self.handshakes.remove(&token) else {
            return;
        };
        let port = done.and_then(|()| parse_connect(&h.line).ok_or("not `CONNECT <port>`"));
        let port = match port {
            Ok(p) => p,
            Err(why) => {
                tracing::debug!("virtio-vsock: dropping a host stream: {why}");
                let _ = self.epoll.delete(&h.stream);
                return;
            }
        };
        if !self.is_active() {
            // No driver to ask; the host retries (`connect_to_guest` does).
            tracing::debug!("virtio-vsock: host CONNECT {port} before the guest driver is up");
            let _ = self.epoll.delete(&h.stream);
            return;
        }
        let local_port = self.allocate_local_port(port);
        let flags = stream_flags();
        if let Err(e) = self
            .epoll
            .modify(&h.stream, &mut EpollEvent::new(flags, token))
        {
            crate::vmm::ratelimit::limited!(warn, "virtio-vsock: cannot watch a host stream: {e}");
            let _ = self.epoll.delete(&h.stream);
            return;
        }
        let conn = Connection::new_local(
            h.stream,
            local_port,
            port,
            self.guest_cid,
            now + self.timeouts.connect,
        );
        self.by_ports.insert((local_port, port), token);
        self.conns.insert(token, conn);
        self.schedule(token);
    }

    fn allocate_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = match port.checked_add(1) {
                Some(p) if p != u32::MAX => p,
                _ => FIRST_LOCAL_PORT,
            };
            // At most MAX_CONNECTIONS ports are taken, so this ends.
            if !self.by_ports.contains_key(&(port, peer_port)) {
                return port;
            }
        }
    }

    fn check_deadlines(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .handshakes
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(&t, _)| t)
            .collect();
        for token in expired {
            if let Some(h) = self.handshakes.remove(&token) {
                tracing::debug!("virtio-vsock: a host stream sent no CONNECT line in time");
                let _ = self.epoll.delete(&h.stream);
            }
        }
        let due: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline().is_some_and(|d| d <= now))
            .map(|(&t, _)| t)
            .collect();
        for token in due {
            if let Some(c) = self.conns.get_mut(&token) {
                c.on_timeout(now);
            }
            self.schedule(token);
        }
    }

    /// Drops finished connections (closing their host streams) and re-arms the timer.
    fn sweep(&mut self) {
        let finished: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_finished())
            .map(|(&t, _)| t)
            .collect();
        for token in finished {
            if let Some(c) = self.conns.remove(&token) {
                let _ = self.epoll.delete(c.stream());
                self.by_ports.remove(&(c.local_port, c.peer_port));
            }
        }
        self.arm_timer();
    }

    /// Sets the timer for the earliest deadline, or disarms it.
    fn arm_timer(&mut self) {
        let next = self
            .handshakes
            .values()
            .map(|h| h.deadline)
            .chain(self.conns.values().filter_map(Connection::deadline))
            .min();
        let result = match next {
            None => self.timer.unset(),
            Some(at) => {
                // A zero expiration would disarm the timer: wait at least a millisecond.
                let wait = at
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1));
                self.timer.set(
                    Expiration::OneShot(TimeSpec::from_duration(wait)),
                    TimerSetTimeFlags::empty(),
                )
            }
        };
        if let Err(e) = result {
            tracing::warn!("virtio-vsock: cannot set the deadline timer: {e}");
        }
    }

    /// Fills the guest's rx buffers with what it is owed, as far as both go.
    fn deliver_rx(&mut self) -> Result<(), QueueError> {
        let Some(mut q) = self.queues.take() else {
            return Ok(());
        };
        let result = self.fill_rx(&mut q);
        self.queues = Some(q);
        self.sweep();
        result
    }

    fn fill_rx(&mut self, q: &mut Queues) -> Result<(), QueueError> {
        let mut used = 0;
        let mut result = Ok(());
        loop {
            if self.control.is_empty() && self.rx_order.is_empty() {
                break;
            }
            let chain = match pop_chain(&mut q.rx, &q.mem) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let head = chain.head_index();
            let len = match check_chain(&q.mem, chain) {
                Err(e) => {
                    tracing::debug!("virtio-vsock: unusable rx buffer: {e}");
                    Some(0)
                }
                Ok(c) if !c.readable.is_empty() => {
                    tracing::debug!("virtio-vsock: unusable rx buffer: it is device-readable");
                    Some(0)
                }
                Ok(c) => match rx_payload_room(&c) {
                    None => {
                        tracing::debug!("virtio-vsock: rx buffer smaller than a header");
                        Some(0)
                    }
                    Some(room) => self.next_packet(&q.mem, c, room),
                },
            };
            let Some(len) = len else {
                // Nothing to send after all: the buffer goes back for later.
                q.rx.go_to_previous_position();
                break;
            };
            if let Err(e) = add_used(&mut q.rx, &q.mem, head, len) {
                result = Err(e);
                break;
            }
            used += 1;
        }
        if used > 0 {
            notify_used(&mut q.rx, &q.mem, &q.interrupt);
        }
        result
    }

    /// Writes the next packet owed to the guest into `chain`, which has `room` bytes for a
    /// payload; `None` if nothing that fits is owed.
    ///
    /// Each queued connection is asked at most once: one that has nothing for this buffer
    /// (data but no payload room, say) goes back to the end of the line for a later one.
    fn next_packet(
        &mut self,
        mem: &GuestMemory,
        chain: crate::vmm::virtio::queue::CheckedChain,
        room: usize,
    ) -> Option<u32> {
        if let Some(hdr) = self.control.pop_front() {
            return Some(write_rx(mem, chain, &hdr, &[]).unwrap_or_else(|e| {
                tracing::debug!("virtio-vsock: writing an rx packet: {e}");
                0
            }));
        }
        for _ in 0..self.rx_order.len() {
            let Some(token) = self.rx_order.pop_front() else {
                break;
            };
            let Some(c) = self.conns.get_mut(&token) else {
                continue;
            };
            c.queued = false;
            let packet = c.next_rx(&mut self.scratch[..room]);
            let written = packet.map(|(hdr, len)| {
                write_rx(mem, chain.clone(), &hdr, &self.scratch[..len]).unwrap_or_else(|e| {
                    // The chain was checked, so this is not expected; the data is lost, so
                    // the stream cannot go on.
                    c.kill(&format!("writing an rx packet: {e}"));
                    0
                })
            });
            self.schedule(token);
            if written.is_some() {
                return written;
            }
        }
        None
    }
}

/// Watching a connection's stream: edge-triggered, for data, room to write, and hang-ups.
fn stream_flags() -> EpollFlags {
    EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET
}

/// `CONNECT <port>` (decimal, u32) → the port.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.strip_prefix("CONNECT ")?.trim_end_matches('\r');
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// Connects to the Unix socket at `path` without blocking the device thread (a full backlog
/// is a refusal, not a wait).
fn connect_nonblocking(path: &Path) -> Result<UnixStream, nix::Error> {
    let fd: OwnedFd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    use std::os::fd::AsRawFd;
    socket::connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_are_parsed_strictly() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        for bad in [
            &b"CONNECT 4294967296"[..],
            b"CONNECT",
            b"CONNECT ",
            b"CONNECT -1",
            b"CONNECT +1",
            b"connect 1",
            b"CONNECT 1 2",
            b"\xff",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_path_that_is_not_a_socket_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, b"keep").unwrap();
        let err = Muxer::new(&path, 3, Timeouts::default()).unwrap_err();
        assert!(matches!(err, MuxerError::PathTaken { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
    }

    #[test]
    fn a_socket_in_use_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let _live = UnixListener::bind(&path).unwrap();
        let err = Muxer::new(&path, 3, Timeouts::default()).unwrap_err();
        assert!(matches!(err, MuxerError::InUse { .. }), "{err}");
    }

    #[test]
    fn a_stale_socket_is_replaced_and_the_socket_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let muxer = Muxer::new(&path, 3, Timeouts::default()).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        drop(muxer);
        assert!(!path.exists());
    }
}
