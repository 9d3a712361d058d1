//! The host end of virtio-net: a tap descriptor the VMM inherited, already open.
//!
//! The pod's supervisor creates the tap (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`) in the pod's
//! network namespace and hands the VMM its descriptor, so the VMM creates no network device
//! and needs no network privilege. The VMM only asks the tap what it is (`TUNGETIFF`), sets
//! the size of the virtio-net header it puts in front of every frame (`TUNSETVNETHDRSZ`, 12
//! bytes: `virtio_net_hdr_v1`), makes it non-blocking, and later tells it which offloads the
//! guest accepted (`TUNSETOFFLOAD`). Frames then move with plain `read` and `write`, one
//! frame (header included) per call.
//!
//! The device itself talks to a [`Backend`], which a [`Tap`] is; device tests use a
//! `SOCK_SEQPACKET` socket pair instead, which keeps frame boundaries the same way.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// The size of the virtio-net header in front of every frame (`virtio_net_hdr_v1`, the
/// header of every modern device, with `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;

/// The interface flags the tap must have been created with.
pub const REQUIRED_TAP_FLAGS: i32 = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(
        "net tap_fd {0} is negative (--net-fd, \"tap_fd\"): give the number of the tap \
         descriptor the VMM inherited"
    )]
    Negative(RawFd),
    #[error(
        "net tap_fd {fd} is not an open descriptor of the VMM ({source}) (--net-fd, \
         \"tap_fd\"): the process that starts the VMM must pass the tap open and without \
         close-on-exec"
    )]
    NotOpen {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error(
        "net tap_fd {fd} is not a tap device (TUNGETIFF: {source}) (--net-fd, \"tap_fd\"): \
         pass a descriptor of /dev/net/tun attached with TUNSETIFF"
    )]
    NotTap {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error(
        "net tap_fd {fd} is a tun/tap interface with flags {flags:#x}, not one created with \
         IFF_TAP | IFF_NO_PI | IFF_VNET_HDR ({REQUIRED_TAP_FLAGS:#x}): create the tap with \
         those flags"
    )]
    WrongFlags { fd: RawFd, flags: i32 },
    #[error("net tap_fd {fd}: {what} failed: {source}")]
    Setup {
        fd: RawFd,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Where the device's frames go and come from. Every frame, in both directions, starts with
/// the [`VNET_HDR_LEN`]-byte virtio-net header.
pub trait Backend: Send {
    /// The descriptor to watch for readability (non-blocking).
    fn fd(&self) -> BorrowedFd<'_>;
    /// Reads one frame into `buf`; `WouldBlock` when there is none. A frame longer than
    /// `buf` comes back cut to its length (the rest is lost).
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame.
    fn send(&mut self, frame: &[u8]) -> io::Result<usize>;
    /// Which offloads the host may use in frames it gives us (`TUN_F_*`), following the
    /// features the guest accepted.
    fn set_offload(&mut self, tun_flags: u32) -> io::Result<()>;
}

/// An inherited tap descriptor, checked and set up for the device.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    /// The inherited number, for messages.
    number: RawFd,
}

/// Checks that `fd` is an open descriptor of this process and a tap created with
/// [`REQUIRED_TAP_FLAGS`]; changes nothing. What `VmmConfig::validate` calls.
pub fn check_tap_fd(fd: RawFd) -> Result<(), TapError> {
    let borrowed = borrow_inherited(fd)?;
    let flags = interface_flags(borrowed).map_err(|source| TapError::NotTap { fd, source })?;
    if flags & REQUIRED_TAP_FLAGS != REQUIRED_TAP_FLAGS {
        return Err(TapError::WrongFlags { fd, flags });
    }
    Ok(())
}

impl Tap {
    /// Takes the inherited tap `fd` for the device: checks it ([`check_tap_fd`]), keeps a
    /// close-on-exec duplicate (the inherited number stays open and is never closed here,
    /// since the VMM does not know who else refers to it), makes it non-blocking and sets
    /// the virtio-net header size.
    pub fn from_inherited(fd: RawFd) -> Result<Tap, TapError> {
        check_tap_fd(fd)?;
        let setup = |what| move |source| TapError::Setup { fd, what, source };
        let owned = borrow_inherited(fd)?
            .try_clone_to_owned()
            .map_err(setup("dup"))?;
        set_nonblocking(owned.as_fd()).map_err(setup("setting O_NONBLOCK"))?;
        set_vnet_hdr_len(owned.as_fd(), VNET_HDR_LEN).map_err(setup("TUNSETVNETHDRSZ"))?;
        Ok(Tap {
            fd: owned,
            number: fd,
        })
    }

    /// The descriptor number the VMM inherited.
    pub fn number(&self) -> RawFd {
        self.number
    }
}

impl Backend for Tap {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        nix::unistd::read(&self.fd, buf).map_err(io::Error::from)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        nix::unistd::write(&self.fd, frame).map_err(io::Error::from)
    }

    fn set_offload(&mut self, tun_flags: u32) -> io::Result<()> {
        set_offload(self.fd.as_fd(), tun_flags)
    }
}

/// Borrows `fd` after checking it is open.
fn borrow_inherited(fd: RawFd) -> Result<BorrowedFd<'static>, TapError> {
    if fd < 0 {
        return Err(TapError::Negative(fd));
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; any number is safe to ask about.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(TapError::NotOpen {
            fd,
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` is open (checked just above), and the VMM never closes an inherited
    // descriptor it was handed for the device, so it stays open for the process's life.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// `TUNGETIFF`: the tun/tap flags of the interface `fd` is attached to.
pub fn interface_flags(fd: BorrowedFd<'_>) -> io::Result<i32> {
    let mut ifr = IfReq::default();
    // SAFETY: TUNGETIFF writes one `struct ifreq` (40 bytes) into the live, writable,
    // correctly sized buffer passed; it reads nothing from it.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut ifr) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i32::from(ifr.flags))
}

/// `TUNSETVNETHDRSZ`: the header size in front of every frame read or written.
pub fn set_vnet_hdr_len(fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    let len = libc::c_int::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: TUNSETVNETHDRSZ reads one int from the live pointer passed.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `TUNSETOFFLOAD`: the `TUN_F_*` offloads frames read from the tap may carry.
pub fn set_offload(fd: BorrowedFd<'_>, tun_flags: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no memory of ours.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(tun_flags),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// `struct ifreq` as TUNSETIFF/TUNGETIFF use it: the name, then the flags (the rest of the
/// union is padding).
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct IfReq {
    pub name: [u8; libc::IFNAMSIZ],
    pub flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates a tap named `name` with [`REQUIRED_TAP_FLAGS`] in the calling thread's network
/// namespace (tests: needs `CAP_NET_ADMIN` there).
#[cfg(test)]
pub(crate) fn create_tap(name: &str) -> io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut ifr = IfReq::default();
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    ifr.name[..bytes.len()].copy_from_slice(bytes);
    ifr.flags = REQUIRED_TAP_FLAGS as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq` in the live buffer passed.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file.into())
}
