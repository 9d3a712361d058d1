//! virtio-net on mock guest memory, with a `SOCK_SEQPACKET` socket pair in place of the tap
//! (one frame per message, like a tap), and on a real tap in a fresh network namespace.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_mmio as reg;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::vmm::bus::BusDevice;
use crate::vmm::virtio::interrupt::CountingLine;
use crate::vmm::virtio::mmio::MmioTransport;
use crate::vmm::virtio::testing::*;

const MAC: [u8; 6] = [0x02, 0, 0, 0xab, 0xcd, 0xef];
const MTU: u16 = 1400;
/// Rings: receive queue at 0, transmit queue at 0x4000; buffers from 0x1_0000.
const RXQ: u64 = 0;
const TXQ: u64 = 0x4000;
const BUF: u64 = 0x1_0000;

/// The device's end of a socket pair; remembers the offloads it was given.
struct PairBackend {
    sock: OwnedFd,
    offloads: Arc<Mutex<Vec<u32>>>,
}

impl Backend for PairBackend {
    fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        nix::unistd::read(&self.sock, buf).map_err(io::Error::from)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        nix::unistd::write(&self.sock, frame).map_err(io::Error::from)
    }

    fn set_offload(&mut self, tun_flags: u32) -> io::Result<()> {
        self.offloads.lock().unwrap().push(tun_flags);
        Ok(())
    }
}

struct Fixture {
    mem: GuestMemory,
    dev: Net,
    host: NetHost,
    /// The host network's end of the pair (non-blocking).
    peer: OwnedFd,
    offloads: Arc<Mutex<Vec<u32>>>,
    rx: DriverQueue,
    tx: DriverQueue,
    line: CountingLine,
}

fn fixture() -> Fixture {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let offloads = Arc::new(Mutex::new(Vec::new()));
    let backend = PairBackend {
        sock: a,
        offloads: offloads.clone(),
    };
    let (dev, host) = Net::new(Box::new(backend), MAC, MTU).unwrap();
    let mem = guest_memory();
    let rx = DriverQueue::new(&mem, RXQ, 16);
    let tx = DriverQueue::new(&mem, TXQ, 16);
    Fixture {
        mem,
        dev,
        host,
        peer: b,
        offloads,
        rx,
        tx,
        line: CountingLine::new(),
    }
}

/// A started device (all features accepted).
fn active() -> Fixture {
    let mut f = fixture();
    let features = FEATURES | (1 << VIRTIO_F_VERSION_1);
    f.dev
        .activate(Activation {
            mem: f.mem.clone(),
            queues: vec![Some(f.rx.queue()), Some(f.tx.queue())],
            interrupt: Interrupt::new(f.line.clone()),
            features,
        })
        .unwrap();
    f
}

impl Fixture {
    /// The host sends a frame towards the guest.
    fn inject(&self, frame: &[u8]) {
        assert_eq!(nix::unistd::write(&self.peer, frame).unwrap(), frame.len());
    }

    /// The next frame the device wrote, if any.
    fn sent(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70_000];
        match nix::unistd::read(&self.peer, &mut buf) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(nix::errno::Errno::EAGAIN) => None,
            Err(e) => panic!("{e}"),
        }
    }

    fn tap_readable(&mut self) {
        self.host.process_host_event(0).unwrap();
    }

    fn watching(&self) -> bool {
        self.dev.state.lock().unwrap().watching
    }

    /// Whether the descriptor the device thread watches would wake it now.
    fn host_fd_ready(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let fds = self.host.host_fds();
        let mut pfd = [PollFd::new(fds[0], PollFlags::POLLIN)];
        poll(&mut pfd, PollTimeout::ZERO).unwrap() == 1
    }
}

/// A frame with a header whose fields are all set, then `payload_len` bytes.
fn frame(payload_len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![1u8, 4, 0x36, 0, 0xa8, 0x05, 0x22, 0, 0x10, 0, 0, 0];
    f.extend((0..payload_len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

fn read_mem(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
    out
}

#[test]
fn a_transmitted_frame_reaches_the_tap_exactly() {
    let mut f = active();
    let want = frame(100, 3);
    // Header and frame split across three descriptors, as a driver may.
    f.mem.write_slice(&want[..12], GuestAddress(BUF)).unwrap();
    f.mem
        .write_slice(&want[12..50], GuestAddress(BUF + 0x1000))
        .unwrap();
    f.mem
        .write_slice(&want[50..], GuestAddress(BUF + 0x2000))
        .unwrap();
    let head = f.tx.add_chain(&[
        (BUF, 12, false),
        (BUF + 0x1000, 38, false),
        (BUF + 0x2000, 62, false),
    ]);
    f.tx.publish(head);
    f.dev.process_queue(TX).unwrap();
    assert_eq!(f.sent(), Some(want));
    assert_eq!(f.sent(), None);
    assert_eq!(f.tx.used_elem(0), (u32::from(head), 0));
    assert_eq!(f.line.count(), 1);
    assert_eq!(f.dev.stats().tx_frames, 1);
}

#[test]
fn a_received_frame_lands_in_a_chain_with_one_buffer_counted() {
    let mut f = active();
    let mut injected = frame(200, 9);
    // A tap leaves num_buffers alone; the device fills it in.
    injected[10..12].copy_from_slice(&[0xee, 0xee]);
    f.inject(&injected);
    let head =
        f.rx.add_chain(&[(BUF, 12, true), (BUF + 0x1000, 1514, true)]);
    f.rx.publish(head);
    f.tap_readable();
    assert_eq!(f.rx.used_elem(0), (u32::from(head), 212));
    let mut want = injected.clone();
    want[10..12].copy_from_slice(&1u16.to_le_bytes());
    let mut got = read_mem(&f.mem, BUF, 12);
    got.extend(read_mem(&f.mem, BUF + 0x1000, 200));
    assert_eq!(got, want);
    // Nothing past the frame was written.
    assert_eq!(read_mem(&f.mem, BUF + 0x1000 + 200, 16), [0u8; 16]);
    assert_eq!(f.line.count(), 1);
    assert_eq!(f.dev.stats().rx_frames, 1);
    assert!(f.watching(), "still watching: the tap may have more");
}

#[test]
fn a_frame_too_big_for_the_chain_is_dropped_without_touching_memory() {
    let mut f = active();
    let sentinel = [0x5au8; 64];
    f.mem.write_slice(&sentinel, GuestAddress(BUF)).unwrap();
    f.mem
        .write_slice(&sentinel, GuestAddress(BUF + 64))
        .unwrap();
    f.inject(&frame(500, 1));
    let small = frame(20, 2);
    f.inject(&small);
    let head = f.rx.add_chain(&[(BUF, 64, true)]);
    f.rx.publish(head);
    f.tap_readable();
    let stats = f.dev.stats();
    assert_eq!((stats.rx_dropped, stats.rx_frames), (1, 1), "{stats:?}");
    // The big frame was dropped and the chain went back to the ring: the small one took it.
    assert_eq!(f.rx.used_idx(), 1);
    assert_eq!(f.rx.used_elem(0), (u32::from(head), 32));
    let mut want = small.clone();
    want[10..12].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(read_mem(&f.mem, BUF, 32), want);
    assert_eq!(read_mem(&f.mem, BUF + 32, 96), [0x5a; 96]);
}

#[test]
fn hostile_transmit_chains_fail_alone() {
    let mut f = active();
    let good = frame(50, 4);
    f.mem.write_slice(&good, GuestAddress(BUF)).unwrap();
    let total = good.len() as u32;
    let big = (VNET_HDR_LEN + MAX_FRAME_LEN + 1) as u32;
    let heads = [
        // A zero-length descriptor.
        f.tx.add_chain(&[(BUF, 12, false), (BUF + 12, 0, false)]),
        // A device-writable descriptor.
        f.tx.add_chain(&[(BUF, total, false), (BUF + 0x8000, 16, true)]),
        // Outside guest memory.
        f.tx.add_chain(&[(MEM_SIZE - 16, 64, false)]),
        // Shorter than a header and an Ethernet header.
        f.tx.add_chain(&[(BUF, 25, false)]),
        // Longer than the largest frame.
        f.tx.add_chain(&[(BUF, big, false)]),
    ];
    for &h in &heads {
        f.tx.publish(h);
    }
    // A loop (descriptors 8 to 13): longer than the queue.
    for i in 8..14 {
        f.tx.write_desc(i, BUF, 64, F_NEXT, if i == 13 { 8 } else { i + 1 });
    }
    f.tx.publish(8);
    // Next past the table.
    f.tx.write_desc(14, BUF, 64, F_NEXT, 16);
    f.tx.publish(14);
    f.dev.process_queue(TX).unwrap();
    assert_eq!(f.sent(), None, "nothing bad reached the tap");
    assert_eq!(f.tx.used_idx(), 7);
    for i in 0..7 {
        assert_eq!(f.tx.used_elem(i).1, 0);
    }
    assert_eq!(f.dev.stats().tx_bad_chains, 7);

    // The queue still works.
    let head = f.tx.add_chain(&[(BUF, total, false)]);
    f.tx.publish(head);
    f.dev.process_queue(TX).unwrap();
    assert_eq!(f.sent(), Some(good));
    assert_eq!(f.dev.stats().tx_frames, 1);
}

#[test]
fn the_largest_frame_is_transmitted() {
    let mut f = active();
    let len = VNET_HDR_LEN + MAX_FRAME_LEN;
    let want = frame(MAX_FRAME_LEN, 5);
    f.mem.write_slice(&want, GuestAddress(BUF)).unwrap();
    let head = f.tx.add_chain(&[(BUF, len as u32, false)]);
    f.tx.publish(head);
    f.dev.process_queue(TX).unwrap();
    assert_eq!(f.sent().map(|s| s.len()), Some(len));
}

#[test]
fn hostile_receive_chains_fail_alone_and_the_frame_waits_for_a_good_one() {
    let mut f = active();
    let injected = frame(40, 6);
    f.inject(&injected);
    let heads = [
        // A device-readable descriptor.
        f.rx.add_chain(&[(BUF, 12, false), (BUF + 0x100, 100, true)]),
        // A zero-length descriptor.
        f.rx.add_chain(&[(BUF, 0, true), (BUF + 0x100, 100, true)]),
        // Outside guest memory.
        f.rx.add_chain(&[(MEM_SIZE - 8, 100, true)]),
    ];
    for &h in &heads {
        f.rx.publish(h);
    }
    // A loop.
    f.rx.write_desc(10, BUF, 64, F_WRITE | F_NEXT, 11);
    f.rx.write_desc(11, BUF, 64, F_WRITE | F_NEXT, 10);
    f.rx.publish(10);
    let good = f.rx.add_chain(&[(BUF + 0x2000, 100, true)]);
    f.rx.publish(good);
    f.tap_readable();
    let stats = f.dev.stats();
    assert_eq!((stats.rx_bad_chains, stats.rx_frames), (4, 1), "{stats:?}");
    assert_eq!(f.rx.used_idx(), 5);
    for i in 0..4 {
        assert_eq!(f.rx.used_elem(i).1, 0);
    }
    assert_eq!(f.rx.used_elem(4), (u32::from(good), 52));
    assert_eq!(read_mem(&f.mem, BUF + 0x2000 + 12, 40), injected[12..]);
    // Nothing written where the bad chains pointed.
    assert_eq!(read_mem(&f.mem, BUF, 0x200), vec![0u8; 0x200]);
}

#[test]
fn receiving_stalls_without_buffers_and_resumes_on_notify() {
    let mut f = active();
    let first = frame(30, 7);
    let second = frame(31, 8);
    f.inject(&first);
    f.inject(&second);
    assert!(f.host_fd_ready());
    f.tap_readable();
    // No buffers: nothing used, the tap no longer wakes the device thread although it has
    // frames.
    assert_eq!(f.rx.used_idx(), 0);
    assert!(!f.watching());
    assert!(!f.host_fd_ready(), "the device thread would spin");
    assert_eq!(f.dev.stats(), NetStats::default());

    // The driver adds one buffer and notifies: the waiting frame goes in, the tap is watched
    // again (and still has the second frame).
    let head = f.rx.add_chain(&[(BUF, 256, true)]);
    f.rx.publish(head);
    f.dev.process_queue(RX).unwrap();
    assert_eq!(f.rx.used_elem(0), (u32::from(head), 42));
    assert_eq!(read_mem(&f.mem, BUF + 12, 30), first[12..]);
    assert_eq!(f.dev.stats().rx_frames, 1);
    assert!(!f.watching(), "the second frame found no buffer");

    let head = f.rx.add_chain(&[(BUF + 0x1000, 256, true)]);
    f.rx.publish(head);
    f.dev.process_queue(RX).unwrap();
    assert_eq!(f.rx.used_elem(1), (u32::from(head), 43));
    assert_eq!(f.dev.stats().rx_frames, 2);
    assert!(f.watching());
    assert!(!f.host_fd_ready(), "the tap is drained");
    f.inject(&first);
    assert!(f.host_fd_ready());
}

#[test]
fn nothing_is_watched_before_activation_or_after_reset() {
    let mut f = fixture();
    f.inject(&frame(20, 0));
    assert!(!f.host_fd_ready());
    f.tap_readable(); // harmless
    f.dev.process_queue(RX).unwrap();
    f.dev.process_queue(TX).unwrap();
    assert!(!f.watching());

    let mut f = active();
    assert!(f.watching());
    f.inject(&frame(20, 0));
    assert!(f.host_fd_ready());
    f.dev.reset();
    assert!(!f.watching());
    assert!(!f.host_fd_ready());
}

#[test]
fn short_frames_from_the_host_are_dropped() {
    let mut f = active();
    f.inject(&[0u8; 5]);
    let head = f.rx.add_chain(&[(BUF, 256, true)]);
    f.rx.publish(head);
    f.tap_readable();
    assert_eq!(f.rx.used_idx(), 0);
    assert_eq!(f.dev.stats().rx_dropped, 1);
}

#[test]
fn config_space_and_features_as_a_linux_driver_sees_them() {
    let f = fixture();
    let offloads = f.offloads.clone();
    let mut t = MmioTransport::new(
        f.mem.clone(),
        Box::new(f.dev),
        Interrupt::new(CountingLine::new()),
    )
    .unwrap();
    assert_eq!(reg_read(&mut t, reg::VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_NET);
    let mut config = [0u8; 12];
    for (i, word) in config.chunks_mut(4).enumerate() {
        let v = reg_read(&mut t, reg::VIRTIO_MMIO_CONFIG + 4 * i as u32);
        word.copy_from_slice(&v.to_le_bytes());
    }
    assert_eq!(config[..6], MAC);
    assert_eq!(
        u16::from_le_bytes([config[6], config[7]]),
        VIRTIO_NET_S_LINK_UP as u16
    );
    assert_eq!(u16::from_le_bytes([config[10], config[11]]), MTU);
    // Byte reads, as Linux reads the MAC.
    let mut byte = [0u8; 1];
    t.read(0x100 + 5, &mut byte);
    assert_eq!(byte[0], MAC[5]);
    // Past the end reads as zero.
    assert_eq!(reg_read(&mut t, reg::VIRTIO_MMIO_CONFIG + 12), 0);

    // Everything offered, everything accepted: the tap may send checksum and TSO offloads.
    let seen = std::cell::Cell::new(0);
    let status = linux_negotiate(&mut t, |offered| {
        seen.set(offered);
        offered
    });
    let seen = seen.get();
    assert_ne!(
        status & virtio_bindings::virtio_config::VIRTIO_CONFIG_S_FEATURES_OK,
        0
    );
    assert_eq!(seen, FEATURES | (1 << VIRTIO_F_VERSION_1));
    for bit in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
    ] {
        assert_ne!(seen & (1 << bit), 0, "bit {bit}");
    }
    assert_eq!(
        seen & (1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF),
        0
    );
    assert_eq!(
        seen & (1 << virtio_bindings::virtio_net::VIRTIO_NET_F_CTRL_VQ),
        0
    );
    let rx = DriverQueue::new(&f.mem, RXQ, 16);
    let tx = DriverQueue::new(&f.mem, TXQ, 16);
    linux_setup_queue(&mut t, 0, &rx);
    linux_setup_queue(&mut t, 1, &tx);
    add_status(
        &mut t,
        virtio_bindings::virtio_config::VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert!(t.is_active());
    let all = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    assert_eq!(*offloads.lock().unwrap(), vec![all]);
}

#[test]
fn offloads_follow_the_accepted_features() {
    let bit = |b: u32| 1u64 << b;
    assert_eq!(tun_offload_flags(bit(VIRTIO_F_VERSION_1)), 0);
    // Host-side offloads are the guest's to send; they ask nothing of the tap.
    assert_eq!(
        tun_offload_flags(bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4)),
        0
    );
    assert_eq!(
        tun_offload_flags(bit(VIRTIO_NET_F_GUEST_CSUM)),
        libc::TUN_F_CSUM
    );
    assert_eq!(
        tun_offload_flags(bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO6)),
        libc::TUN_F_CSUM | libc::TUN_F_TSO6
    );
    // TSO without checksum offload makes no sense and is not passed on.
    assert_eq!(tun_offload_flags(bit(VIRTIO_NET_F_GUEST_TSO4)), 0);
}

#[test]
fn hostile_descriptor_tables_never_panic() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _round in 0..200 {
        let mut f = active();
        for q in [&f.rx, &f.tx] {
            for i in 0..16 {
                let r = next();
                let addr = match r % 4 {
                    0 => next(),
                    1 => MEM_SIZE - (next() % 64),
                    _ => BUF + next() % 0x8000,
                };
                let len = if r & 0x10 == 0 {
                    next() as u32
                } else {
                    (next() % 2048) as u32
                };
                q.write_desc(i, addr, len, (next() % 8) as u16, (next() % 20) as u16);
            }
            for _ in 0..(next() % 20) {
                q.publish((next() % 18) as u16);
            }
        }
        for _ in 0..(next() % 4) {
            f.inject(&frame((next() % 3000) as usize, 1));
        }
        let _ = f.dev.process_queue(TX);
        let _ = f.host.process_host_event(0);
        let _ = f.dev.process_queue(RX);
    }
}

/// Runs `f` on a thread of its own in a fresh network namespace, where it may create taps;
/// `None` (with the reason printed) when this process cannot.
fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::spawn(move || {
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            eprintln!("skipped: cannot make a network namespace ({e}); needs root");
            return None;
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            eprintln!("skipped: no /dev/net/tun");
            return None;
        }
        Some(f())
    })
    .join()
    .unwrap()
}

const TAP_NAME: &str = "peapod-t0";

/// An ARP request from the guest (02:00:00:00:00:01, 10.9.0.2) for 10.9.0.1, with an empty
/// virtio-net header.
fn arp_request() -> Vec<u8> {
    let guest = [2, 0, 0, 0, 0, 1];
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&guest);
    f.extend_from_slice(&[0x08, 0x06]); // ARP
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet/IPv4, request
    f.extend_from_slice(&guest);
    f.extend_from_slice(&[10, 9, 0, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[10, 9, 0, 1]);
    f
}

/// Gives interface `name` the IPv4 address `addr` (/8) and brings it up, with the old
/// ioctls (tests only; the pod network's setup is not the VMM's).
fn set_up_with_address(name: &str, addr: [u8; 4]) {
    let sock = nix::sys::socket::socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    // struct ifreq: the name, then a 24-byte union (here a sockaddr_in, or the flags).
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    ifr[16..18].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    ifr[20..24].copy_from_slice(&addr);
    // SAFETY: SIOCSIFADDR reads one 40-byte `struct ifreq` from the live buffer passed.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFADDR, ifr.as_mut_ptr()) };
    assert_eq!(r, 0, "SIOCSIFADDR: {}", io::Error::last_os_error());
    ifr[16..].fill(0);
    // SAFETY: SIOCGIFFLAGS writes the flags into the live 40-byte buffer passed.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, ifr.as_mut_ptr()) };
    assert_eq!(r, 0, "SIOCGIFFLAGS: {}", io::Error::last_os_error());
    let flags = i16::from_ne_bytes([ifr[16], ifr[17]]) | libc::IFF_UP as i16;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: SIOCSIFFLAGS reads one 40-byte `struct ifreq` from the live buffer passed.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, ifr.as_mut_ptr()) };
    assert_eq!(r, 0, "SIOCSIFFLAGS: {}", io::Error::last_os_error());
}

#[test]
fn a_real_tap_takes_the_header_size_and_offloads() {
    let ran = in_fresh_netns(|| {
        let fd = tap::create_tap(TAP_NAME).unwrap();
        tap::check_tap_fd(fd.as_raw_fd()).unwrap();
        let mut tap = Tap::from_inherited(fd.as_raw_fd()).unwrap();
        assert_eq!(tap.number(), fd.as_raw_fd());
        for flags in [
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6,
            libc::TUN_F_CSUM,
            0,
        ] {
            tap.set_offload(flags).unwrap();
        }
        // Non-blocking: no frame is waiting on a tap that is down.
        let mut buf = [0u8; 64];
        let err = tap.recv(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // Down, the tap refuses frames.
        let err = tap.send(&arp_request()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");

        // The whole device on it, started by a Linux driver, talking ARP with the kernel:
        // a request goes out through the transmit queue, the kernel's reply comes back
        // through the receive queue.
        set_up_with_address(TAP_NAME, [10, 9, 0, 1]);
        let config = NetConfig {
            tap_fd: fd.as_raw_fd(),
            mac: "02:00:00:00:00:01".into(),
            mtu: 1500,
        };
        config.validate().unwrap();
        let (dev, mut host) = Net::from_config(&config).unwrap();
        let mem = guest_memory();
        let mut t = MmioTransport::new(
            mem.clone(),
            Box::new(dev),
            Interrupt::new(CountingLine::new()),
        )
        .unwrap();
        let mut rx = DriverQueue::new(&mem, RXQ, 16);
        let mut tx = DriverQueue::new(&mem, TXQ, 16);
        linux_bring_up(&mut t, &[&rx, &tx]);
        assert!(t.is_active());
        for i in 0..8 {
            let head = rx.add_chain(&[(BUF + 0x1000 * i, 1526, true)]);
            rx.publish(head);
        }
        let request = arp_request();
        mem.write_slice(&request, GuestAddress(BUF + 0x10_000))
            .unwrap();
        let head = tx.add_chain(&[(BUF + 0x10_000, request.len() as u32, false)]);
        tx.publish(head);
        t.process_queue(TX);
        assert_eq!(tx.used_idx(), 1);
        let mut reply = None;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        'wait: while std::time::Instant::now() < deadline {
            use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
            let mut pfd = [PollFd::new(host.host_fds()[0], PollFlags::POLLIN)];
            if poll(&mut pfd, PollTimeout::from(100u16)).unwrap() == 0 {
                continue;
            }
            host.process_host_event(0).unwrap();
            // The kernel may also send IPv6 chatter; look for the ARP reply.
            for i in 0..rx.used_idx() {
                let (id, len) = rx.used_elem(i);
                let got = read_mem(&mem, BUF + 0x1000 * u64::from(id), len as usize);
                let eth = &got[VNET_HDR_LEN..];
                if eth.len() >= 42 && eth[12..14] == [0x08, 0x06] && eth[20..22] == [0, 2] {
                    reply = Some(got);
                    break 'wait;
                }
            }
        }
        let reply = reply.expect("the kernel's ARP reply reached the guest");
        assert_eq!(reply[10..12], 1u16.to_le_bytes(), "num_buffers");
        let eth = &reply[VNET_HDR_LEN..];
        assert_eq!(eth[..6], [2, 0, 0, 0, 0, 1], "to the guest's MAC");
        assert_eq!(eth[28..32], [10, 9, 0, 1], "sender: the tap's address");

        // A tun (not tap) device, and a tap without the virtio-net header, are refused.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap();
        let mut ifr = tap::IfReq::default();
        ifr.name[..9].copy_from_slice(b"peapod-t1");
        ifr.flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq` in the live buffer passed.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        assert_eq!(r, 0);
        let err = tap::check_tap_fd(file.as_raw_fd()).unwrap_err();
        assert!(matches!(err, TapError::WrongFlags { .. }), "{err}");
        assert!(err.to_string().contains("IFF_VNET_HDR"), "{err}");
        // An unattached /dev/net/tun descriptor.
        let bare = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap();
        let err = tap::check_tap_fd(bare.as_raw_fd()).unwrap_err();
        assert!(matches!(err, TapError::NotTap { .. }), "{err}");
    });
    if ran.is_none() {
        eprintln!("a_real_tap_takes_the_header_size_and_offloads: skipped");
    }
}

#[test]
fn the_device_thread_wakes_for_frames_only_while_there_are_buffers() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

    use crate::vmm::virtio::event::HostFdHandler;

    let Fixture {
        mem,
        dev,
        host,
        peer,
        mut rx,
        ..
    } = active();
    let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    manager.add_subscriber(Arc::new(Mutex::new(HostFdHandler::new(host).unwrap())));
    let inject = |len| {
        let f = frame(len, 0);
        assert_eq!(nix::unistd::write(&peer, &f).unwrap(), f.len());
    };
    inject(40);
    inject(41);
    // One wakeup: the first frame finds no buffer, and the tap is set aside.
    assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
    assert_eq!(manager.run_with_timeout(0).unwrap(), 0, "no spinning");
    let head = rx.add_chain(&[(BUF, 128, true)]);
    rx.publish(head);
    let head = rx.add_chain(&[(BUF + 0x1000, 128, true)]);
    rx.publish(head);
    // The driver's notify (served by the queue handler on the same thread) takes both.
    let mut dev = dev;
    dev.process_queue(RX).unwrap();
    assert_eq!(rx.used_idx(), 2);
    assert_eq!(rx.used_elem(1).1, 53);
    assert_eq!(read_mem(&mem, BUF + 0x1000 + 12, 41), frame(41, 0)[12..]);
    assert_eq!(manager.run_with_timeout(0).unwrap(), 0, "drained");
    // Watched again: a new frame wakes the thread and goes into a new buffer.
    let head = rx.add_chain(&[(BUF + 0x2000, 128, true)]);
    rx.publish(head);
    inject(42);
    assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
    assert_eq!(rx.used_elem(2), (u32::from(head), 54));
    assert_eq!(manager.run_with_timeout(0).unwrap(), 0, "drained");
}
