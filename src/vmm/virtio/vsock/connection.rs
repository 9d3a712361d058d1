//! One vsock stream connection between a guest socket and a host Unix stream: its state
//! machine, credit-based flow control and the bytes in flight.
//!
//! Host → guest data is never buffered: it is read from the host stream straight into a packet
//! for an rx buffer, and only as much as the guest's credit allows (`buf_alloc - (sent -
//! fwd_cnt)`, from the last header the guest sent). A guest that stops reading stops the host
//! reads; the host's writes then block in its own socket.
//!
//! Guest → host data is written to the host stream at once; what the host does not take is kept
//! in a buffer of at most [`TX_BUF_SIZE`] bytes, the credit advertised to the guest. A guest
//! that sends past that credit gets an RST. `fwd_cnt` counts the bytes actually written to the
//! host, so a host that stops reading stops the guest.
//!
//! Shutdown is per direction: the host's EOF becomes a SHUTDOWN(SEND) to the guest; the guest's
//! SHUTDOWN(SEND) becomes `shutdown(Write)` on the host stream once the buffer is flushed, and
//! SHUTDOWN(RCV) a `shutdown(Read)`. When neither side can send any more, the connection ends
//! with an RST to the guest and the host stream is closed.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::packet::{HOST_CID, Header, Op, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// The receive buffer advertised to the guest per connection (`buf_alloc`): the most guest data
/// the device holds for a host that is slow to read.
pub const TX_BUF_SIZE: u32 = 128 * 1024;

/// How long things may take before the connection is torn down.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From a host's `CONNECT` to the guest's RESPONSE.
    pub connect: Duration,
    /// From accepting a host stream to its complete `CONNECT <port>` line.
    pub handshake: Duration,
    /// From the guest's full SHUTDOWN to the last buffered byte reaching the host.
    pub drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            handshake: Duration::from_secs(5),
            drain: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The host asked for the connection; the guest has not answered the REQUEST yet.
    LocalInit,
    /// The guest asked for it and the host stream is connected; the RESPONSE is not sent yet.
    PeerInit,
    Established,
    /// Over. An RST may still be owed to the guest; then the connection is dropped.
    Closed,
}

/// What the device owes the guest besides data.
#[derive(Debug, Default, Clone, Copy)]
struct Pending {
    request: bool,
    response: bool,
    rst: bool,
    /// SHUTDOWN flags not yet sent.
    shutdown: u32,
    credit_update: bool,
}

impl Pending {
    fn any(&self) -> bool {
        self.request || self.response || self.rst || self.shutdown != 0 || self.credit_update
    }
}

pub struct Connection {
    pub local_port: u32,
    pub peer_port: u32,
    peer_cid: u64,
    stream: UnixStream,
    state: State,
    pending: Pending,
    request_sent: bool,
    deadline: Option<Instant>,
    /// Set by the rx scheduler: the connection is on its list.
    pub queued: bool,

    // Host → guest.
    /// The host stream may have data (or EOF) to read; cleared when a read would block.
    host_readable: bool,
    host_eof: bool,
    /// The host stream hung up: the host neither sends nor receives any more.
    host_hup: bool,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Payload bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    credit_request_sent: bool,
    /// SHUTDOWN flags sent to the guest.
    shutdown_sent: u32,

    // Guest → host.
    /// `OK <port>\n`, owed to the host before any guest data.
    greeting: VecDeque<u8>,
    tx_buf: VecDeque<u8>,
    /// Payload bytes received from the guest.
    recv_cnt: Wrapping<u32>,
    /// Guest bytes written to the host stream.
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    peer_shut_rcv: bool,
    peer_shut_send: bool,
    host_write_shut: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("local_port", &self.local_port)
            .field("peer_port", &self.peer_port)
            .field("state", &self.state)
            .field("tx_buf", &self.tx_buf.len())
            .finish_non_exhaustive()
    }
}

impl Connection {
    fn new(stream: UnixStream, local_port: u32, peer_port: u32, peer_cid: u64) -> Self {
        Connection {
            local_port,
            peer_port,
            peer_cid,
            stream,
            state: State::LocalInit,
            pending: Pending::default(),
            request_sent: false,
            deadline: None,
            queued: false,
            // Data may already wait in the stream (sent right after the CONNECT line); a read
            // that would block costs nothing.
            host_readable: true,
            host_eof: false,
            host_hup: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            credit_request_sent: false,
            shutdown_sent: 0,
            greeting: VecDeque::new(),
            tx_buf: VecDeque::new(),
            recv_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            peer_shut_rcv: false,
            peer_shut_send: false,
            host_write_shut: false,
        }
    }

    /// A connection the host asked for (after its `CONNECT <peer_port>`): a REQUEST is owed to
    /// the guest, and the guest must answer within `timeout`.
    pub fn new_local(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        peer_cid: u64,
        deadline: Instant,
    ) -> Self {
        let mut c = Connection::new(stream, local_port, peer_port, peer_cid);
        c.pending.request = true;
        c.deadline = Some(deadline);
        c
    }

    /// A connection the guest asked for with `request`, whose host stream is connected: a
    /// RESPONSE is owed to the guest.
    pub fn new_peer(stream: UnixStream, request: &Header) -> Self {
        let mut c = Connection::new(stream, request.dst_port, request.src_port, request.src_cid);
        c.state = State::PeerInit;
        c.pending.response = true;
        c.peer_buf_alloc = request.buf_alloc;
        c.peer_fwd_cnt = Wrapping(request.fwd_cnt);
        c
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Guest bytes held for the host.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len()
    }

    /// Nothing more to do: the muxer drops the connection (closing the host stream).
    pub fn is_finished(&self) -> bool {
        self.state == State::Closed && !self.pending.rst
    }

    /// Whether [`Self::next_rx`] may produce a packet.
    pub fn has_rx(&self) -> bool {
        match self.state {
            State::Closed => self.pending.rst,
            _ => self.pending.any() || self.data_ready(),
        }
    }

    /// The guest's free receive space for this connection, as of its last header.
    fn peer_credit(&self) -> u32 {
        // A guest reporting more forwarded than was sent makes `in_flight` wrap to a huge
        // value: no credit, never an overflow.
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// The host stream has something for the guest that may be read now (or a credit request
    /// is owed because the guest has no room for it).
    fn data_ready(&self) -> bool {
        self.state == State::Established
            && self.host_readable
            && !self.host_eof
            && !self.peer_shut_rcv
            && (self.peer_credit() > 0 || !self.credit_request_sent)
    }

    /// Ends the connection with an RST to the guest (unless the guest never heard of it) and
    /// drops whatever was buffered.
    pub fn kill(&mut self, why: &str) {
        tracing::debug!(
            "vsock: resetting connection host port {} <-> guest port {}: {why}",
            self.local_port,
            self.peer_port
        );
        let guest_knows = self.state != State::LocalInit || self.request_sent;
        self.state = State::Closed;
        self.pending = Pending {
            rst: guest_knows,
            ..Pending::default()
        };
        self.tx_buf = VecDeque::new();
        self.greeting.clear();
        self.deadline = None;
    }

    /// The guest reset the connection: drop it without answering.
    fn close_silently(&mut self) {
        self.state = State::Closed;
        self.pending = Pending::default();
        self.deadline = None;
    }

    /// The deadline passed (the guest did not answer a REQUEST, or a closing connection could
    /// not flush to the host in time).
    pub fn on_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| d <= now) {
            self.kill("timed out");
        }
    }

    /// A packet from the guest for this connection. `payload` is its data (RW only).
    pub fn on_guest(&mut self, hdr: &Header, payload: &[u8], now: Instant, timeouts: &Timeouts) {
        if self.state == State::Closed {
            return;
        }
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_request_sent = false;
        }
        match (self.state, hdr.op()) {
            (_, Some(Op::Rst)) => self.close_silently(),
            (State::LocalInit, Some(Op::Response)) if self.request_sent => {
                self.state = State::Established;
                self.deadline = None;
                self.greeting
                    .extend(format!("OK {}\n", self.local_port).into_bytes());
                self.flush(now);
            }
            (State::Established, Some(Op::Rw)) => self.forward(payload, now),
            (State::Established, Some(Op::Shutdown)) => {
                self.peer_shutdown(hdr.flags, now, timeouts)
            }
            (State::Established | State::PeerInit, Some(Op::CreditUpdate)) => {}
            (State::Established | State::PeerInit, Some(Op::CreditRequest)) => {
                self.pending.credit_update = true;
            }
            (state, op) => {
                let why = format!("guest sent {op:?} (op {}) in state {state:?}", hdr.op);
                self.kill(&why);
            }
        }
    }

    /// Guest data for the host.
    fn forward(&mut self, payload: &[u8], now: Instant) {
        if self.peer_shut_send {
            return self.kill("guest sent data after promising not to");
        }
        if self.tx_buf.len() + payload.len() > TX_BUF_SIZE as usize {
            return self.kill("guest sent more than its credit");
        }
        self.recv_cnt += Wrapping(payload.len() as u32);
        let mut written = 0;
        if self.tx_buf.is_empty() && self.greeting.is_empty() {
            while written < payload.len() {
                match self.stream.write(&payload[written..]) {
                    Ok(0) => return self.kill("host stream accepts no more data"),
                    Ok(n) => written += n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return self.kill(&format!("writing to the host stream: {e}")),
                }
            }
        }
        self.fwd_cnt += Wrapping(written as u32);
        self.tx_buf.extend(&payload[written..]);
        self.after_flush(now);
    }

    /// Writes what is owed to the host stream, as far as it takes it.
    fn flush(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        while !self.greeting.is_empty() {
            let (front, _) = self.greeting.as_slices();
            match self.stream.write(front) {
                Ok(0) => return self.kill("host stream accepts no more data"),
                Ok(n) => drop(self.greeting.drain(..n)),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => return self.kill(&format!("writing to the host stream: {e}")),
            }
        }
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => return self.kill("host stream accepts no more data"),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return self.kill(&format!("writing to the host stream: {e}")),
            }
        }
        self.after_flush(now);
    }

    /// After guest data moved to the host: credit updates, and the end of the guest → host
    /// direction.
    fn after_flush(&mut self, _now: Instant) {
        if self.tx_buf.is_empty() && self.tx_buf.capacity() > 64 * 1024 {
            self.tx_buf = VecDeque::new();
        }
        let drained = self.tx_buf.is_empty() && self.greeting.is_empty();
        if drained && self.peer_shut_send && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        if !self.peer_shut_send && self.fwd_cnt != self.last_fwd_cnt_sent {
            // The free space the guest believes we have; tell it more once that falls under
            // half, so that a sender is never stalled by an update we kept to ourselves.
            let held_in_guest_view = (self.recv_cnt - self.last_fwd_cnt_sent).0;
            let free_in_guest_view = TX_BUF_SIZE.saturating_sub(held_in_guest_view);
            if free_in_guest_view < TX_BUF_SIZE / 2 {
                self.pending.credit_update = true;
            }
        }
        self.check_done();
    }

    fn peer_shutdown(&mut self, flags: u32, now: Instant, timeouts: &Timeouts) {
        if flags & SHUTDOWN_RCV != 0 && !self.peer_shut_rcv {
            self.peer_shut_rcv = true;
            // The host's further writes fail (EPIPE) instead of piling up unread.
            let _ = self.stream.shutdown(Shutdown::Read);
        }
        if flags & SHUTDOWN_SEND != 0 {
            self.peer_shut_send = true;
        }
        if self.peer_shut_rcv && self.peer_shut_send && self.deadline.is_none() {
            // The guest closed: it waits for our RST, which follows the last buffered byte,
            // however slow the host.
            self.deadline = Some(now + timeouts.drain);
        }
        self.after_flush(now);
    }

    /// Ends the connection once neither direction can carry anything more.
    fn check_done(&mut self) {
        if self.state != State::Established {
            return;
        }
        let guest_to_host_done =
            self.peer_shut_send && self.tx_buf.is_empty() && self.greeting.is_empty();
        let host_to_guest_done = self.peer_shut_rcv
            || (self.host_eof && self.pending.shutdown == 0 && self.shutdown_sent != 0);
        if guest_to_host_done && host_to_guest_done {
            self.state = State::Closed;
            self.pending = Pending {
                rst: true,
                ..Pending::default()
            };
            self.deadline = None;
        }
    }

    /// Readiness of the host stream (the muxer watches it edge-triggered): `readable`
    /// covers data, EOF and errors, which a read reports; `hung_up` that the host closed both
    /// directions.
    pub fn on_host_event(&mut self, readable: bool, writable: bool, hung_up: bool, now: Instant) {
        if readable || hung_up {
            self.host_readable = true;
        }
        if hung_up {
            self.host_hup = true;
            if self.peer_shut_rcv && self.state == State::Established {
                // The guest takes no more data, so the EOF would never be read and sent.
                return self.kill("the host closed its stream");
            }
        }
        if writable {
            self.flush(now);
        }
    }

    fn header(&mut self, op: Op) -> Header {
        // Every packet tells the guest our credit.
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending.credit_update = false;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.peer_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op: op as u16,
            flags: 0,
            buf_alloc: TX_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// The next packet for the guest, its payload (for RW) read into the front of `buf`.
    /// Returns the header and the payload length, or `None` if nothing is owed. An empty `buf`
    /// (an rx buffer with room for a header only) gets header-only packets: host data stays
    /// in the stream for a buffer with room.
    pub fn next_rx(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        if self.state == State::Closed {
            if !self.pending.rst {
                return None;
            }
            self.pending.rst = false;
            return Some((self.header(Op::Rst), 0));
        }
        if self.pending.response {
            self.pending.response = false;
            self.state = State::Established;
            return Some((self.header(Op::Response), 0));
        }
        if self.pending.request {
            self.pending.request = false;
            self.request_sent = true;
            return Some((self.header(Op::Request), 0));
        }
        if self.data_ready() {
            if let Some(packet) = self.read_host(buf) {
                return Some(packet);
            }
            if self.state == State::Closed {
                return self.next_rx(buf);
            }
        }
        if self.pending.shutdown != 0 {
            let flags = std::mem::take(&mut self.pending.shutdown);
            self.shutdown_sent |= flags;
            let mut hdr = self.header(Op::Shutdown);
            hdr.flags = flags;
            self.check_done();
            return Some((hdr, 0));
        }
        if self.pending.credit_update {
            return Some((self.header(Op::CreditUpdate), 0));
        }
        None
    }

    /// Reads host data for the guest (or notices EOF).
    fn read_host(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        let credit = self.peer_credit() as usize;
        if credit == 0 {
            self.credit_request_sent = true;
            return Some((self.header(Op::CreditRequest), 0));
        }
        let max = credit.min(buf.len());
        if max == 0 {
            return None;
        }
        loop {
            match self.stream.read(&mut buf[..max]) {
                Ok(0) => {
                    self.host_eof = true;
                    let mut flags = SHUTDOWN_SEND;
                    if self.host_hup {
                        flags |= SHUTDOWN_RCV;
                    }
                    self.pending.shutdown |= flags & !self.shutdown_sent;
                    return None;
                }
                Ok(n) => {
                    self.rx_cnt += Wrapping(n as u32);
                    let mut hdr = self.header(Op::Rw);
                    hdr.len = n as u32;
                    return Some((hdr, n));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.host_readable = false;
                    return None;
                }
                Err(e) => {
                    self.kill(&format!("reading the host stream: {e}"));
                    return None;
                }
            }
        }
    }
}
