//! The vsock device on mock guest memory: a test plays the guest driver (rx/tx rings written
//! by hand) and the host (Unix streams), and drives the device thread's two entry points,
//! `process_queue` and `process_host_event`, itself.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::connection::{TX_BUF_SIZE, Timeouts};
use super::packet::{
    HDR_LEN, HOST_CID, Header, MAX_PAYLOAD, Op, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::*;
use crate::vmm::memory::GuestMemory;
use crate::vmm::virtio::interrupt::{CountingLine, Interrupt};
use crate::vmm::virtio::testing::*;

const CID: u64 = 3;
const RX_SIZE: u16 = 64;
/// Where rx buffers go: header then 4 KiB payload, 8 KiB apart (Linux's layout).
const RX_BUFS: u64 = 0x1_0000;
const RX_PAYLOAD: u32 = 4096;
/// Where the tx packet is written.
const TX_BUF: u64 = 0x8_0000;

struct Harness {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    mem: GuestMemory,
    dev: Vsock,
    host: VsockHost,
    rx: DriverQueue,
    tx: DriverQueue,
    line: CountingLine,
    /// rx chain head → header address.
    rx_heads: HashMap<u16, u64>,
    rx_seen: u16,
    /// rx chains made available so far.
    rx_given: u16,
    next_rx_buf: u64,
}

fn header(op: Op, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op: op as u16,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    }
}

fn harness_with(timeouts: Timeouts) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let (dev, host) = Vsock::with_timeouts(&uds, CID, timeouts).unwrap();
    let mem = guest_memory();
    let rx = DriverQueue::new(&mem, 0x0, RX_SIZE);
    let tx = DriverQueue::new(&mem, 0x2000, 16);
    let ev = DriverQueue::new(&mem, 0x3000, 16);
    let line = CountingLine::new();
    let mut h = Harness {
        _dir: dir,
        uds,
        mem: mem.clone(),
        dev,
        host,
        rx,
        tx,
        line: line.clone(),
        rx_heads: HashMap::new(),
        rx_seen: 0,
        rx_given: 0,
        next_rx_buf: RX_BUFS,
    };
    h.dev
        .activate(Activation {
            mem,
            queues: vec![Some(h.rx.queue()), Some(h.tx.queue()), Some(ev.queue())],
            interrupt: Interrupt::new(line),
            features: 0,
        })
        .unwrap();
    h
}

fn harness() -> Harness {
    harness_with(Timeouts::default())
}

impl Harness {
    /// Tops the rx buffers available to the device up to `n` (header + 4 KiB each, as two
    /// descriptors, as Linux 6.1 lays them out) and kicks.
    fn give_rx(&mut self, n: u16) {
        while self.rx_given.wrapping_sub(self.rx.used_idx()) < n {
            self.rx_given = self.rx_given.wrapping_add(1);
            let hdr = self.next_rx_buf;
            self.next_rx_buf += 0x2000;
            if self.next_rx_buf >= TX_BUF {
                self.next_rx_buf = RX_BUFS;
            }
            let head = self
                .rx
                .add_chain(&[(hdr, HDR_LEN as u32, true), (hdr + 0x100, RX_PAYLOAD, true)]);
            self.rx_heads.insert(head, hdr);
            self.rx.publish(head);
        }
        self.dev.process_queue(0).unwrap();
    }

    /// The packets the device put on the rx ring since the last call.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        while self.rx_seen != self.rx.used_idx() {
            let (head, len) = self.rx.used_elem(self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let at = self.rx_heads[&(head as u16)];
            let mut raw = [0u8; HDR_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(at)).unwrap();
            let hdr = Header::from_bytes(&raw);
            assert_eq!(len as usize, HDR_LEN + hdr.len as usize, "{hdr:?}");
            let mut data = vec![0u8; hdr.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(at + 0x100))
                .unwrap();
            out.push((hdr, data));
        }
        out
    }

    /// Gives rx buffers, serves the host, and returns what the guest got.
    fn host_to_guest(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.give_rx(4);
        self.host.process_host_event(0).unwrap();
        self.recv()
    }

    /// Sends a tx chain of `bufs` = (bytes, device_writable) pieces laid out at TX_BUF.
    fn send_raw(&mut self, bufs: &[(&[u8], bool)]) -> u32 {
        let mut at = TX_BUF;
        let mut descs = Vec::new();
        for (bytes, writable) in bufs {
            self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
            descs.push((at, bytes.len() as u32, *writable));
            at += (bytes.len() as u64).next_multiple_of(16) + 16;
        }
        let head = self.tx.add_chain(&descs);
        self.tx.publish(head);
        let before = self.tx.used_idx();
        self.dev.process_queue(1).unwrap();
        assert_eq!(self.tx.used_idx(), before.wrapping_add(1), "tx chain used");
        self.tx.used_elem(before).1
    }

    /// Sends one packet (header and payload in one descriptor, as Linux 6.2+ does).
    fn send(&mut self, hdr: Header, payload: &[u8]) {
        let hdr = Header {
            len: payload.len() as u32,
            ..hdr
        };
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        assert_eq!(self.send_raw(&[(&bytes, false)]), 0);
    }

    fn connections(&self) -> usize {
        self.host.muxer.lock().unwrap().connections()
    }

    /// A host-initiated connection to guest port `port`, accepted by the guest. Returns the
    /// host stream (after the OK line) and the host port the device chose.
    fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut s = UnixStream::connect(&self.uds).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        let got = self.host_to_guest();
        assert_eq!(got.len(), 1, "{got:?}");
        let req = got[0].0;
        assert_eq!(req.op(), Some(Op::Request));
        assert_eq!(
            (req.src_cid, req.dst_cid, req.dst_port),
            (HOST_CID, CID, port)
        );
        assert!(req.src_port >= 1 << 30);
        assert_eq!(req.buf_alloc, TX_BUF_SIZE);
        self.send(header(Op::Response, port, req.src_port), b"");
        let mut ok = vec![0u8; format!("OK {}\n", req.src_port).len()];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_exact(&mut ok).unwrap();
        assert_eq!(ok, format!("OK {}\n", req.src_port).into_bytes());
        (s, req.src_port)
    }
}

fn read_available(s: &mut UnixStream) -> Vec<u8> {
    s.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    s.set_nonblocking(false).unwrap();
    out
}

fn ops(packets: &[(Header, Vec<u8>)]) -> Vec<Option<Op>> {
    packets.iter().map(|(h, _)| h.op()).collect()
}

#[test]
fn config_space_holds_the_guest_cid() {
    let h = harness();
    assert_eq!(h.dev.device_type(), 19);
    assert_eq!(h.dev.queue_max_sizes().len(), 3);
    let mut cid = [0u8; 8];
    h.dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID);
    let mut high = [0xffu8; 4];
    h.dev.read_config(4, &mut high);
    assert_eq!(high, [0; 4]);
    for bad in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        let err = Vsock::new(&h.uds.with_extension("x"), bad).unwrap_err();
        assert!(matches!(err, VsockError::BadCid(c) if c == bad), "{err}");
    }
}

#[test]
fn host_connects_and_data_flows_both_ways() {
    let mut h = harness();
    let (mut s, local) = h.host_connect(52);
    assert_eq!(h.connections(), 1);

    // Host → guest: what the host wrote right after the OK line arrives.
    s.write_all(b"ping").unwrap();
    let got = h.host_to_guest();
    assert_eq!(got.len(), 1);
    let (rw, data) = &got[0];
    assert_eq!(rw.op(), Some(Op::Rw));
    assert_eq!((rw.src_port, rw.dst_port, rw.len), (local, 52, 4));
    assert_eq!(data, b"ping");

    // Guest → host.
    h.send(header(Op::Rw, 52, local), b"pong");
    let mut back = [0u8; 4];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"pong");
    assert!(h.line.count() > 0, "the guest was interrupted");
}

#[test]
fn connect_to_guest_works_against_the_device() {
    let mut h = harness();
    let uds = h.uds.clone();
    let host = std::thread::spawn(move || {
        let mut s = connect_to_guest(&uds, 1024, Duration::from_secs(10)).unwrap();
        s.write_all(b"hi").unwrap();
        let mut reply = [0u8; 5];
        s.read_exact(&mut reply).unwrap();
        reply
    });
    // Play a guest that refuses the first attempt and accepts the second.
    let mut accepted = None;
    for _ in 0..500 {
        for (hdr, data) in h.host_to_guest() {
            match hdr.op() {
                Some(Op::Request) if accepted.is_none() && h.connections() == 1 => {
                    // First: nothing listens yet.
                    accepted = Some(0);
                    h.send(header(Op::Rst, 1024, hdr.src_port), b"");
                }
                Some(Op::Request) => {
                    accepted = Some(hdr.src_port);
                    h.send(header(Op::Response, 1024, hdr.src_port), b"");
                }
                Some(Op::Rw) => {
                    assert_eq!(data, b"hi");
                    h.send(header(Op::Rw, 1024, hdr.src_port), b"hello");
                }
                // The host got its reply and closed.
                Some(Op::Shutdown) => {}
                op => panic!("unexpected {op:?}"),
            }
        }
        if host.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(&host.join().unwrap(), b"hello");
    assert_ne!(accepted, Some(0), "the retry was accepted");
}

#[test]
fn guest_connects_to_a_host_listener() {
    let mut h = harness();
    let listener = UnixListener::bind(host_listener_path(&h.uds, 7000)).unwrap();
    h.give_rx(4);
    h.send(header(Op::Request, 3333, 7000), b"");
    let got = h.recv();
    assert_eq!(ops(&got), [Some(Op::Response)]);
    let resp = got[0].0;
    assert_eq!(
        (resp.src_cid, resp.dst_cid, resp.src_port, resp.dst_port),
        (HOST_CID, CID, 7000, 3333)
    );
    let (mut s, _) = listener.accept().unwrap();

    h.send(header(Op::Rw, 3333, 7000), b"from guest");
    let mut got = [0u8; 10];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"from guest");

    s.write_all(b"from host").unwrap();
    let got = h.host_to_guest();
    assert_eq!(ops(&got), [Some(Op::Rw)]);
    assert_eq!(got[0].1, b"from host");
}

#[test]
fn a_guest_connect_to_a_port_nobody_listens_on_is_reset() {
    let mut h = harness();
    h.give_rx(4);
    h.send(header(Op::Request, 3333, 7001), b"");
    let got = h.recv();
    assert_eq!(ops(&got), [Some(Op::Rst)]);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (7001, 3333));
    assert_eq!(h.connections(), 0);
}

#[test]
fn packets_for_unknown_connections_are_reset_and_resets_ignored() {
    let mut h = harness();
    h.give_rx(4);
    h.send(header(Op::Rw, 1, 2), b"data");
    h.send(header(Op::Shutdown, 1, 2), b"");
    h.send(header(Op::Rst, 1, 2), b"");
    let got = h.recv();
    assert_eq!(ops(&got), [Some(Op::Rst), Some(Op::Rst)]);
}

#[test]
fn a_guest_that_does_not_answer_a_connect_is_given_up_on() {
    let mut h = harness_with(Timeouts {
        connect: Duration::from_millis(50),
        ..Timeouts::default()
    });
    let mut s = UnixStream::connect(&h.uds).unwrap();
    s.write_all(b"CONNECT 9\n").unwrap();
    assert_eq!(ops(&h.host_to_guest()), [Some(Op::Request)]);
    std::thread::sleep(Duration::from_millis(80));
    // The timer is in the epoll set: the host half sees it fire.
    let got = h.host_to_guest();
    assert_eq!(ops(&got), [Some(Op::Rst)]);
    assert_eq!(h.connections(), 0);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(s.read(&mut [0u8; 8]).unwrap(), 0, "host stream closed");
}

#[test]
fn bad_connect_lines_and_connects_before_the_driver_close_the_stream() {
    let mut h = harness();
    for line in [&b"HELLO 9\n"[..], b"CONNECT x\n", &[b'1'; 100]] {
        let mut s = UnixStream::connect(&h.uds).unwrap();
        s.write_all(line).unwrap();
        h.host.process_host_event(0).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Closed; with bytes left unread, Linux reports that as a reset.
        match s.read(&mut [0u8; 8]) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("{line:?}: {other:?}"),
        }
    }
    assert!(h.recv().is_empty());

    h.dev.reset();
    let mut s = UnixStream::connect(&h.uds).unwrap();
    s.write_all(b"CONNECT 9\n").unwrap();
    h.host.process_host_event(0).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(s.read(&mut [0u8; 8]).unwrap(), 0);
}

#[test]
fn the_host_closing_its_side_reaches_the_guest_as_shutdown() {
    let mut h = harness();
    let (mut s, local) = h.host_connect(52);
    s.write_all(b"last words").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let got = h.host_to_guest();
    assert_eq!(ops(&got), [Some(Op::Rw), Some(Op::Shutdown)]);
    assert_eq!(got[0].1, b"last words");
    assert_eq!(got[1].0.flags & SHUTDOWN_SEND, SHUTDOWN_SEND);
    assert_eq!(got[1].0.flags & SHUTDOWN_RCV, 0, "the host still reads");

    // The other direction still works.
    h.send(header(Op::Rw, 52, local), b"reply");
    let mut back = [0u8; 5];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"reply");

    // The guest closes too: the device ends the connection with an RST.
    let mut shut = header(Op::Shutdown, 52, local);
    shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    h.send(shut, b"");
    let got = h.host_to_guest();
    assert_eq!(ops(&got), [Some(Op::Rst)]);
    assert_eq!(h.connections(), 0);
    assert_eq!(s.read(&mut [0u8; 8]).unwrap(), 0);
}

#[test]
fn the_guest_closing_its_send_side_reaches_the_host_as_eof() {
    let mut h = harness();
    let (mut s, local) = h.host_connect(52);
    h.send(header(Op::Rw, 52, local), b"bye");
    let mut shut = header(Op::Shutdown, 52, local);
    shut.flags = SHUTDOWN_SEND;
    h.send(shut, b"");
    let mut all = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"bye");
    // The host can still send.
    s.write_all(b"still here").unwrap();
    let got = h.host_to_guest();
    assert_eq!(ops(&got), [Some(Op::Rw)]);
    assert_eq!(got[0].1, b"still here");
    // Data after the guest's own SHUTDOWN(SEND) is a protocol error: reset.
    h.send(header(Op::Rw, 52, local), b"more");
    assert_eq!(ops(&h.host_to_guest()), [Some(Op::Rst)]);
    assert_eq!(h.connections(), 0);
}

#[test]
fn host_data_waits_for_the_guests_credit() {
    let mut h = harness();
    let (mut s, local) = h.host_connect(52);
    // The guest has room for 8 bytes only.
    let mut small = header(Op::CreditUpdate, 52, local);
    small.buf_alloc = 8;
    h.send(small, b"");
    s.write_all(b"0123456789abcdefXYZ").unwrap();
    let got = h.host_to_guest();
    assert_eq!(ops(&got), [Some(Op::Rw), Some(Op::CreditRequest)]);
    assert_eq!(got[0].1, b"01234567");
    // Nothing more until the guest has read.
    assert!(h.host_to_guest().is_empty());
    let mut update = small;
    update.fwd_cnt = 8;
    h.send(update, b"");
    let got = h.host_to_guest();
    assert_eq!(got[0].1, b"89abcdef");
    assert_eq!(ops(&got), [Some(Op::Rw), Some(Op::CreditRequest)]);
    update.fwd_cnt = 16;
    update.buf_alloc = 1 << 20;
    h.send(update, b"");
    let got = h.host_to_guest();
    assert_eq!(ops(&got), [Some(Op::Rw)]);
    assert_eq!(got[0].1, b"XYZ");
}

#[test]
fn a_credit_request_is_answered() {
    let mut h = harness();
    let (_s, local) = h.host_connect(52);
    h.send(header(Op::CreditRequest, 52, local), b"");
    let got = h.host_to_guest();
    assert_eq!(ops(&got), [Some(Op::CreditUpdate)]);
    assert_eq!(got[0].0.buf_alloc, TX_BUF_SIZE);
}

#[test]
fn guest_data_is_limited_by_the_devices_credit_and_credit_returns_as_the_host_reads() {
    let mut h = harness();
    let (mut s, local) = h.host_connect(52);
    let chunk = vec![0x5a; MAX_PAYLOAD];
    // Send as the guest's driver would: only while our credit allows.
    let (mut sent, mut fwd_cnt) = (0u32, 0u32);
    let mut stalled = false;
    for _ in 0..64 {
        let credit = TX_BUF_SIZE - (sent - fwd_cnt);
        if credit < chunk.len() as u32 {
            stalled = true;
            break;
        }
        h.send(header(Op::Rw, 52, local), &chunk);
        sent += chunk.len() as u32;
        for (hdr, _) in h.host_to_guest() {
            assert_ne!(hdr.op(), Some(Op::Rst));
            fwd_cnt = hdr.fwd_cnt;
        }
    }
    assert!(stalled, "the host never reads, so the credit must run out");

    // The host reads everything: the device flushes the rest, and credit updates give the
    // guest room for at least another full packet.
    let mut got = read_available(&mut s).len() as u32;
    for _ in 0..50 {
        for (hdr, _) in h.host_to_guest() {
            assert_eq!(hdr.op(), Some(Op::CreditUpdate));
            fwd_cnt = hdr.fwd_cnt;
        }
        got += read_available(&mut s).len() as u32;
        if got == sent {
            break;
        }
    }
    assert_eq!(got, sent);
    assert!(
        TX_BUF_SIZE - (sent - fwd_cnt) >= TX_BUF_SIZE / 2,
        "sent {sent}, the guest was told {fwd_cnt}"
    );
}

#[test]
fn a_guest_that_ignores_the_credit_is_reset() {
    let mut h = harness();
    let (_s, local) = h.host_connect(52);
    let chunk = vec![0x5a; MAX_PAYLOAD];
    let mut reset = false;
    for _ in 0..64 {
        h.send(header(Op::Rw, 52, local), &chunk);
        if ops(&h.host_to_guest()).contains(&Some(Op::Rst)) {
            reset = true;
            break;
        }
    }
    assert!(reset);
    assert_eq!(h.connections(), 0);
}

#[test]
fn malformed_tx_packets_fail_alone() {
    let mut h = harness();
    let (mut s, local) = h.host_connect(52);
    let good = header(Op::Rw, 52, local);
    h.give_rx(8);

    // Shorter than a header.
    assert_eq!(h.send_raw(&[(&good.to_bytes()[..20], false)]), 0);
    // A tx chain with a device-writable buffer.
    let bytes = good.to_bytes();
    assert_eq!(h.send_raw(&[(&bytes, false), (&[0u8; 16], true)]), 0);
    // A buffer outside guest memory.
    let head = h.tx.add_chain(&[(MEM_SIZE - 8, 64, false)]);
    h.tx.publish(head);
    h.dev.process_queue(1).unwrap();
    // A chain that loops.
    let head = h.tx.add_chain(&[(TX_BUF, 44, false)]);
    h.tx.write_desc(head, TX_BUF, 44, F_NEXT, head);
    h.tx.publish(head);
    h.dev.process_queue(1).unwrap();
    // Wrong source CID or destination: dropped without an answer.
    h.send(Header { src_cid: 9, ..good }, b"spoof");
    h.send(Header { dst_cid: 7, ..good }, b"elsewhere");
    assert!(h.recv().is_empty());
    assert_eq!(h.connections(), 1);

    // A connect to a host port nobody listens on, a packet of another socket type (as Linux
    // does) and an unknown op for an unknown connection: each gets a reset.
    h.send(header(Op::Request, 1, 2), b"");
    let mut seqpacket = header(Op::Request, 4, 5);
    seqpacket.type_ = 2;
    h.send(seqpacket, b"");
    let mut weird = header(Op::Rw, 6, 7);
    weird.op = 99;
    h.send(weird, b"");
    let got = h.recv();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|(hdr, _)| hdr.op() == Some(Op::Rst)));

    // None of this touched the connection's stream.
    h.send(good, b"ok");
    let mut two = [0u8; 2];
    s.read_exact(&mut two).unwrap();
    assert_eq!(&two, b"ok");
    assert_eq!(read_available(&mut s), b"");

    // A length that lies about the buffers: the packet is dropped, and the connection, whose
    // stream now has a hole, is reset.
    let mut liar = good;
    liar.len = 100;
    let mut bytes = liar.to_bytes().to_vec();
    bytes.extend_from_slice(b"short");
    assert_eq!(h.send_raw(&[(&bytes, false)]), 0);
    assert_eq!(ops(&h.recv()), [Some(Op::Rst)]);
    assert_eq!(h.connections(), 0);
}

#[test]
fn oversized_and_unknown_op_packets_reset_their_connection() {
    let mut h = harness();
    let (_s, local) = h.host_connect(52);
    let mut huge = header(Op::Rw, 52, local);
    huge.len = MAX_PAYLOAD as u32 + 1;
    let bytes = huge.to_bytes();
    h.send_raw(&[(&bytes, false)]);
    h.give_rx(1);
    assert_eq!(ops(&h.recv()), [Some(Op::Rst)]);

    let (_s, local) = h.host_connect(53);
    let mut weird = header(Op::Rw, 53, local);
    weird.op = 0;
    h.send(weird, b"");
    h.give_rx(1);
    assert_eq!(ops(&h.recv()), [Some(Op::Rst)]);
    assert_eq!(h.connections(), 0);
}

#[test]
fn unusable_rx_buffers_are_returned_empty() {
    let mut h = harness();
    let mut s = UnixStream::connect(&h.uds).unwrap();
    s.write_all(b"CONNECT 9\n").unwrap();
    h.host.process_host_event(0).unwrap();
    // A read-only rx buffer, a too-small one, then a good one: the REQUEST lands in the last.
    let ro = h.rx.add_chain(&[(RX_BUFS, 64, false)]);
    h.rx.publish(ro);
    let small = h.rx.add_chain(&[(RX_BUFS + 0x100, 20, true)]);
    h.rx.publish(small);
    h.rx_given = 2;
    h.dev.process_queue(0).unwrap();
    assert_eq!(
        h.rx.used_idx(),
        2,
        "both bad buffers used, nothing else yet"
    );
    // The REQUEST still waits, for a good buffer.
    h.rx_seen = 2;
    h.give_rx(1);
    assert_eq!(h.rx.used_elem(0), (u32::from(ro), 0));
    assert_eq!(h.rx.used_elem(1), (u32::from(small), 0));
    assert_eq!(ops(&h.recv()), [Some(Op::Request)]);
}

#[test]
fn a_device_reset_closes_every_host_stream() {
    let mut h = harness();
    let (mut s, _) = h.host_connect(52);
    h.dev.reset();
    assert_eq!(h.connections(), 0);
    assert_eq!(s.read(&mut [0u8; 8]).unwrap(), 0);
}

#[test]
fn the_device_thread_wakes_for_host_connections() {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

    use crate::vmm::virtio::event::HostFdHandler;

    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let (_dev, host) = Vsock::new(&uds, CID).unwrap();
    let muxer = host.muxer.clone();
    let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    manager.add_subscriber(Arc::new(Mutex::new(HostFdHandler::new(host).unwrap())));
    assert_eq!(manager.run_with_timeout(0).unwrap(), 0);
    let mut s = UnixStream::connect(&uds).unwrap();
    s.write_all(b"CONNECT 5\n").unwrap();
    assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
    // The driver is not up, so the stream was closed rather than kept.
    assert!(!muxer.lock().unwrap().is_active());
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(s.read(&mut [0u8; 8]).unwrap(), 0);
}

#[test]
fn hostile_queues_and_packets_never_panic() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _round in 0..100 {
        let mut h = harness();
        // A live connection for packets to land on, and a host listener for REQUESTs.
        let (mut s, local) = h.host_connect(52);
        let _listener = UnixListener::bind(host_listener_path(&h.uds, 7)).unwrap();
        s.write_all(&[1; 3000]).unwrap();
        for i in 0..16u16 {
            let r = next();
            let addr = match r % 4 {
                0 => next(),
                1 => MEM_SIZE - (next() % 64),
                _ => TX_BUF + 0x100 * u64::from(i),
            };
            let len = if r & 0x10 == 0 {
                next() as u32
            } else {
                (next() % 512) as u32
            };
            h.tx.write_desc(i, addr, len, (next() % 8) as u16, (next() % 20) as u16);
            // Mostly headers that name the connection (or a neighbour), with any op, type,
            // length and flags.
            let hdr = Header {
                src_cid: if r & 0x20 == 0 { CID } else { next() % 5 },
                dst_cid: if r & 0x40 == 0 { HOST_CID } else { next() % 5 },
                src_port: [52, 53, 7][(next() % 3) as usize],
                dst_port: [local, 7, 8][(next() % 3) as usize],
                len: if r & 0x80 == 0 {
                    (next() % 600) as u32
                } else {
                    next() as u32
                },
                type_: if r & 0x100 == 0 { TYPE_STREAM } else { 2 },
                op: (next() % 9) as u16,
                flags: (next() % 4) as u32,
                buf_alloc: next() as u32,
                fwd_cnt: next() as u32,
            };
            let at = TX_BUF + 0x100 * u64::from(i);
            h.mem
                .write_slice(&hdr.to_bytes(), GuestAddress(at))
                .unwrap();
        }
        for _ in 0..(next() % 20) {
            h.tx.publish((next() % 18) as u16);
        }
        // Hostile rx descriptors too, next to the well-formed ones at the front.
        for i in 32..RX_SIZE {
            let r = next();
            let addr = if r & 1 == 0 {
                next()
            } else {
                RX_BUFS + next() % 0x1000
            };
            h.rx.write_desc(
                i,
                addr,
                next() as u32 % 8192,
                (next() % 8) as u16,
                (next() % 70) as u16,
            );
        }
        for _ in 0..(next() % 8) {
            h.rx.publish(32 + (next() % 34) as u16);
        }
        // Served (each bad packet failing alone) or declared broken; never a panic or hang.
        let _ = h.dev.process_queue(1);
        let _ = h.dev.process_queue(0);
        let _ = h.host.process_host_event(0);
    }
}

#[test]
fn a_header_only_rx_buffer_carries_no_data_and_does_not_spin_the_device() {
    let mut h = harness();
    // An rx chain of one descriptor with room for a header and nothing else.
    let give_header_only = |h: &mut Harness, at: u64| {
        let head = h.rx.add_chain(&[(at, HDR_LEN as u32, true)]);
        h.rx_heads.insert(head, at);
        h.rx.publish(head);
        h.rx_given = h.rx_given.wrapping_add(1);
    };
    let mut s = UnixStream::connect(&h.uds).unwrap();
    s.write_all(b"CONNECT 52\n").unwrap();
    h.host.process_host_event(0).unwrap();
    give_header_only(&mut h, RX_BUFS);
    h.dev.process_queue(0).unwrap();
    let got = h.recv();
    assert_eq!(ops(&got), [Some(Op::Request)]);
    let local = got[0].0.src_port;
    h.send(header(Op::Response, 52, local), b"");
    let mut ok = vec![0u8; format!("OK {local}\n").len()];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.read_exact(&mut ok).unwrap();

    // Host data waits while the guest's only buffer has no room for it.
    s.write_all(b"ping").unwrap();
    give_header_only(&mut h, RX_BUFS + 0x2000);
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        h.host.process_host_event(0).unwrap();
        h.dev.process_queue(0).unwrap();
        let _ = done.send(h);
    });
    let mut h = finished
        .recv_timeout(Duration::from_secs(10))
        .expect("the device thread spins on an rx buffer with no payload room");
    assert_eq!(h.recv(), [], "no data packet in a header-only buffer");
    assert_eq!(h.connections(), 1);

    // A header-only packet may use it; the data goes to the next buffer with room.
    h.send(header(Op::CreditRequest, 52, local), b"");
    assert_eq!(ops(&h.recv()), [Some(Op::CreditUpdate)]);
    h.give_rx(1);
    let got = h.recv();
    assert_eq!(ops(&got), [Some(Op::Rw)]);
    assert_eq!(got[0].1, b"ping");
}
