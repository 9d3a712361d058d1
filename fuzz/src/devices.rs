//! peapod's virtio devices on host ends a fuzz target controls, and the host's side of the
//! devices that have one (fuzzed frames from the tap, fuzzed streams from host processes).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use arbitrary::Arbitrary;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use peapod::vmm::virtio::VirtioDevice;
use peapod::vmm::virtio::block::Block;
use peapod::vmm::virtio::device::HostFdSource;
use peapod::vmm::virtio::net::{Backend, Net};
use peapod::vmm::virtio::rng::Rng;
use peapod::vmm::virtio::vsock::{Vsock, host_listener_path};

/// Size of the block device's image.
pub const DISK_SIZE: u64 = 64 * 1024;
/// The guest port a host listener waits on for guest-initiated vsock connections.
pub const GUEST_TO_HOST_PORT: u32 = 1024;
/// Most host streams one input opens (each waits in the listener's backlog until the device
/// accepts it; a full backlog would block the target).
const MAX_HOST_STREAMS: usize = 16;

/// A virtio-blk device on an in-memory image of [`DISK_SIZE`] bytes.
pub fn block(read_only: bool) -> Block {
    let file = tempfile::tempfile_in("/dev/shm")
        .or_else(|_| tempfile::tempfile())
        .expect("an image file");
    file.set_len(DISK_SIZE).expect("image size");
    Block::from_file(file, Path::new("fuzz.img"), read_only, "fuzz-serial").expect("a block device")
}

/// A virtio-rng device reading `source` (then end of file), or /dev/zero when it is `None`.
pub fn rng(source: Option<&[u8]>) -> Rng {
    let file = match source {
        None => File::open("/dev/zero").expect("/dev/zero"),
        Some(bytes) => {
            let mut f = tempfile::tempfile_in("/dev/shm")
                .or_else(|_| tempfile::tempfile())
                .expect("a source file");
            f.write_all(bytes).expect("source bytes");
            f.seek(SeekFrom::Start(0)).expect("rewind the source");
            f
        }
    };
    Rng::with_source(file)
}

/// The tap's stand-in: one end of a `SOCK_SEQPACKET` pair (one frame per message, as a tap).
struct PairBackend(OwnedFd);

impl Backend for PairBackend {
    fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        nix::unistd::read(&self.0, buf).map_err(io::Error::from)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        nix::unistd::write(&self.0, frame).map_err(io::Error::from)
    }

    fn set_offload(&mut self, _tun_flags: u32) -> io::Result<()> {
        Ok(())
    }
}

/// The host network's side of a virtio-net device.
pub struct NetPeer {
    pub host: peapod::vmm::virtio::net::NetHost,
    /// The other end of the tap's stand-in (non-blocking).
    pub peer: OwnedFd,
}

/// What the host network does to a virtio-net device.
#[derive(Arbitrary, Debug)]
pub enum NetHostOp {
    /// A frame from the tap toward the guest (virtio-net header included).
    Frame(Vec<u8>),
    /// The tap is readable: the device thread serves it.
    Event,
    /// The host network reads what the guest sent.
    Drain,
}

pub fn net(mac: [u8; 6], mtu: u16) -> (Net, NetPeer) {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )
    .expect("a socket pair");
    let (dev, host) = Net::new(Box::new(PairBackend(a)), mac, mtu).expect("a net device");
    (dev, NetPeer { host, peer: b })
}

impl NetPeer {
    pub fn apply(&mut self, op: &NetHostOp) {
        match op {
            NetHostOp::Frame(bytes) => {
                let _ = nix::unistd::write(&self.peer, bytes);
            }
            NetHostOp::Event => {
                let _ = self.host.process_host_event(0);
            }
            NetHostOp::Drain => {
                let mut buf = vec![0u8; 70_000];
                while matches!(nix::unistd::read(&self.peer, &mut buf), Ok(n) if n > 0) {}
            }
        }
    }
}

/// The host's side of a vsock device: its Unix socket, host processes' streams, and a
/// listener for the connections the guest opens to [`GUEST_TO_HOST_PORT`].
pub struct VsockPeer {
    pub host: peapod::vmm::virtio::vsock::VsockHost,
    pub uds: PathBuf,
    listener: UnixListener,
    streams: Vec<UnixStream>,
    _dir: tempfile::TempDir,
}

/// What host processes do to a vsock device.
#[derive(Arbitrary, Debug)]
pub enum VsockHostOp {
    /// Connects to the device's socket and sends `CONNECT <port>\n`.
    Connect { port: u32 },
    /// Connects and sends any bytes as the handshake line.
    ConnectRaw(Vec<u8>),
    /// Bytes on host stream `stream`, toward the guest.
    Write { stream: u8, bytes: Vec<u8> },
    /// Reads what the guest sent on a stream.
    Read { stream: u8 },
    /// Half or full close of a stream.
    Shutdown { stream: u8, write_only: bool },
    /// Drops (closes) a stream.
    Drop { stream: u8 },
    /// Accepts the connections the guest opened to the host listener.
    Accept,
    /// The device's host descriptors are readable: the device thread serves them.
    Event,
}

pub fn vsock() -> (Vsock, VsockPeer) {
    let dir = crate::scratch_dir();
    let uds = dir.path().join("v.sock");
    let (dev, host) = Vsock::new(&uds, 3).expect("a vsock device");
    let listener =
        UnixListener::bind(host_listener_path(&uds, GUEST_TO_HOST_PORT)).expect("host listener");
    listener.set_nonblocking(true).expect("non-blocking");
    (
        dev,
        VsockPeer {
            host,
            uds,
            listener,
            streams: Vec::new(),
            _dir: dir,
        },
    )
}

impl VsockPeer {
    fn connect(&mut self, line: &[u8]) {
        if self.streams.len() >= MAX_HOST_STREAMS {
            return;
        }
        if let Ok(mut s) = UnixStream::connect(&self.uds) {
            let _ = s.set_nonblocking(true);
            let _ = s.write(line);
            self.streams.push(s);
        }
    }

    fn stream(&mut self, i: u8) -> Option<&mut UnixStream> {
        let n = self.streams.len();
        (n > 0).then(|| &mut self.streams[usize::from(i) % n])
    }

    pub fn apply(&mut self, op: &VsockHostOp) {
        match op {
            VsockHostOp::Connect { port } => self.connect(format!("CONNECT {port}\n").as_bytes()),
            VsockHostOp::ConnectRaw(line) => self.connect(line),
            VsockHostOp::Write { stream, bytes } => {
                if let Some(s) = self.stream(*stream) {
                    let _ = s.write(bytes);
                }
            }
            VsockHostOp::Read { stream } => {
                if let Some(s) = self.stream(*stream) {
                    let mut buf = [0u8; 4096];
                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                }
            }
            VsockHostOp::Shutdown { stream, write_only } => {
                if let Some(s) = self.stream(*stream) {
                    let how = if *write_only {
                        Shutdown::Write
                    } else {
                        Shutdown::Both
                    };
                    let _ = s.shutdown(how);
                }
            }
            VsockHostOp::Drop { stream } => {
                if !self.streams.is_empty() {
                    let i = usize::from(*stream) % self.streams.len();
                    self.streams.swap_remove(i);
                }
            }
            VsockHostOp::Accept => {
                while let Ok((s, _)) = self.listener.accept() {
                    let _ = s.set_nonblocking(true);
                    if self.streams.len() < MAX_HOST_STREAMS {
                        self.streams.push(s);
                    }
                }
            }
            VsockHostOp::Event => {
                let _ = self.host.process_host_event(0);
            }
        }
    }
}

/// Any of the devices, for the register-interface target.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum AnyDevice {
    Block { read_only: bool },
    Rng,
    Net,
    Vsock,
}

/// A device and what its host side needs kept alive or served.
pub enum HostSide {
    None,
    Net(NetPeer),
    Vsock(VsockPeer),
}

impl HostSide {
    /// The device thread serves the device's host descriptors.
    pub fn event(&mut self) {
        match self {
            HostSide::None => {}
            HostSide::Net(p) => p.apply(&NetHostOp::Event),
            HostSide::Vsock(p) => p.apply(&VsockHostOp::Event),
        }
    }
}

impl AnyDevice {
    pub fn build(self) -> (Box<dyn VirtioDevice>, HostSide) {
        match self {
            AnyDevice::Block { read_only } => (Box::new(block(read_only)), HostSide::None),
            AnyDevice::Rng => (Box::new(rng(None)), HostSide::None),
            AnyDevice::Net => {
                let (dev, peer) = net([2, 0, 0, 0, 0, 1], 1500);
                (Box::new(dev), HostSide::Net(peer))
            }
            AnyDevice::Vsock => {
                let (dev, peer) = vsock();
                (Box::new(dev), HostSide::Vsock(peer))
            }
        }
    }
}
