//! Tap devices, and the tap↔veth wiring of a pod's network namespace.
//!
//! CNI plugins give the pod's network namespace a veth (`eth0`) with an address; the VM
//! cannot use a veth, so [`redirect_tap_and_veth`] puts a tap next to it and redirects
//! every frame from one to the other with tc (see [`super::tc`]). The guest's NIC takes
//! the veth's MAC, address and routes, so from the pod network's side the guest *is* the
//! veth's endpoint, and the namespace's own IP stack never sees its traffic.
//!
//! The tap is not persistent: it disappears with the last fd of it, so a VMM that dies
//! leaves nothing behind. The fd works from any thread and namespace once opened.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::link::{MAX_IFNAME_LEN, valid_ifname};
use super::netns::{self, NetnsError};
use super::{MacAddr, Netlink, NetlinkError};

/// Size of the virtio-net header in front of every frame read from or written to the tap
/// (`struct virtio_net_hdr_v1`, which has `num_buffers`; what a VIRTIO_F_VERSION_1 device
/// uses).
pub const VNET_HDR_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("opening /dev/net/tun: {0} (is the tun module loaded? modprobe tun)")]
    OpenTun(#[source] io::Error),
    #[error("creating the tap {name:?}: {source}")]
    Create {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{0:?} is not a tap name: use 1 to {MAX_IFNAME_LEN} bytes without '/', ':' or spaces")]
    BadName(String),
    /// A netlink step; `what` names the tap or veth and the step.
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: NetlinkError,
    },
    #[error("the pod's veth {0:?} has no Ethernet address")]
    VethWithoutMac(String),
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// An open tap device: frames with a [`VNET_HDR_LEN`]-byte virtio-net header in front,
/// no packet-information prefix; the fd is non-blocking.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
    index: u32,
}

/// `_IOW('T', 202, int)` and `_IOW('T', 216, int)` of `linux/if_tun.h`.
const TUNSETIFF: libc::c_ulong =
    nix::request_code_write!(b'T', 202, std::mem::size_of::<libc::c_int>()) as libc::c_ulong;
const TUNSETVNETHDRSZ: libc::c_ulong =
    nix::request_code_write!(b'T', 216, std::mem::size_of::<libc::c_int>()) as libc::c_ulong;

/// Opens `/dev/net/tun` and attaches it to a new tap named `name` in the calling thread's
/// network namespace; returns the fd and the name the kernel gave.
fn open_tap(name: &str) -> Result<(OwnedFd, String), TapError> {
    if !valid_ifname(name) {
        return Err(TapError::BadName(name.into()));
    }
    let file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)?;
    let create = |source| TapError::Create {
        name: name.into(),
        source,
    };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads the name and flags from `req` and writes the device's name
    // back into it; `req` lives across the call, the fd is /dev/net/tun, opened above.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
    if rc < 0 {
        return Err(create(io::Error::last_os_error()));
    }
    let hdr_len = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which lives across the
    // call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ as _, &hdr_len) };
    if rc < 0 {
        return Err(create(io::Error::last_os_error()));
    }
    let given: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    Ok((file.into(), String::from_utf8_lossy(&given).into_owned()))
}

impl Tap {
    /// Creates the tap `name` in the calling thread's network namespace with `mtu`, up.
    pub fn create(name: &str, mtu: u32) -> Result<Tap, TapError> {
        let (fd, name) = open_tap(name)?;
        let netlink = |source| TapError::Netlink {
            what: format!("the tap {name:?}"),
            source,
        };
        let mut nl = Netlink::open().map_err(netlink)?;
        let index = nl.link_index(&name).map_err(netlink)?;
        nl.set_mtu(index, mtu).map_err(netlink)?;
        nl.set_up(index).map_err(netlink)?;
        Ok(Tap { fd, name, index })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its index in the namespace it was made in.
    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What the VMM and the guest need to know of a pod's wiring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapInfo {
    pub tap_name: String,
    /// The tap's index inside the pod's network namespace.
    pub tap_index: u32,
    /// The veth's MAC: the guest's NIC must use it (the pod network knows the pod by it).
    pub mac: MacAddr,
    /// The veth's MTU (or the one asked for), the tap's, and the guest NIC's.
    pub mtu: u32,
}

/// In the network namespace at `netns`: creates the tap `tap_name` with the veth's MTU
/// (or `mtu`), adds ingress qdiscs to both, and redirects every frame from each to the
/// other. Returns the tap's fd (usable from any namespace) and the veth's MAC and MTU.
/// The veth is brought up too (CNI plugins normally have).
pub fn redirect_tap_and_veth(
    netns: &Path,
    veth_name: &str,
    tap_name: &str,
    mtu: Option<u32>,
) -> Result<(OwnedFd, TapInfo), TapError> {
    netns::run_in(netns, || wire_tap_to_veth(veth_name, tap_name, mtu))?
}

/// [`redirect_tap_and_veth`] in the calling thread's namespace.
fn wire_tap_to_veth(
    veth_name: &str,
    tap_name: &str,
    mtu: Option<u32>,
) -> Result<(OwnedFd, TapInfo), TapError> {
    let veth_err = |source| TapError::Netlink {
        what: format!("the pod's veth {veth_name:?}"),
        source,
    };
    let mut nl = Netlink::open().map_err(veth_err)?;
    let veth = nl.link_by_name(veth_name).map_err(veth_err)?;
    let mac = veth
        .mac
        .ok_or_else(|| TapError::VethWithoutMac(veth_name.into()))?;
    let mtu = mtu.unwrap_or(veth.mtu);
    let tap = Tap::create(tap_name, mtu)?;
    let redirect = |source| TapError::Netlink {
        what: format!(
            "redirecting between the tap {:?} and the veth {veth_name:?}",
            tap.name()
        ),
        source,
    };
    if !veth.up {
        nl.set_up(veth.index).map_err(veth_err)?;
    }
    nl.add_ingress_qdisc(veth.index).map_err(redirect)?;
    nl.add_ingress_qdisc(tap.index()).map_err(redirect)?;
    nl.add_redirect_filter(veth.index, tap.index())
        .map_err(redirect)?;
    nl.add_redirect_filter(tap.index(), veth.index)
        .map_err(redirect)?;
    let info = TapInfo {
        tap_name: tap.name().into(),
        tap_index: tap.index(),
        mac,
        mtu,
    };
    Ok((tap.into_fd(), info))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::netlink::testing::{fresh_netns, require_root_netns};

    fn tun_unavailable() -> Option<String> {
        if let Err(e) = File::open("/dev/net/tun") {
            return Some(format!("no /dev/net/tun: {e}"));
        }
        None
    }

    #[test]
    fn a_tap_is_made_with_its_mtu_up_and_goes_with_its_fd() {
        require_root_netns!();
        if let Some(why) = tun_unavailable() {
            eprintln!("skipping: {why}");
            return;
        }
        let ns = fresh_netns().unwrap();
        netns::run_in_fd(ns.as_fd(), || {
            let tap = Tap::create("tap-t", 1280).unwrap();
            let mut nl = Netlink::open().unwrap();
            let link = nl.link_by_name("tap-t").unwrap();
            assert_eq!((link.index, link.mtu, link.up), (tap.index(), 1280, true));
            assert!(matches!(
                Tap::create("tap-t", 1500),
                Err(TapError::Create { .. })
            ));
            assert!(matches!(
                Tap::create("a/b", 1500),
                Err(TapError::BadName(_))
            ));
            drop(tap);
            assert!(matches!(
                nl.link_by_name("tap-t"),
                Err(NetlinkError::NoSuchLink(_))
            ));
        })
        .unwrap();
    }

    /// An Ethernet frame with a zero virtio-net header in front.
    fn frame(dst: [u8; 6], src: MacAddr, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn arp_request(mac: MacAddr, from: Ipv4Addr, to: Ipv4Addr) -> Vec<u8> {
        let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
        arp.extend_from_slice(&mac.0);
        arp.extend_from_slice(&from.octets());
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&to.octets());
        frame([0xff; 6], mac, 0x0806, &arp)
    }

    fn checksum(data: &[u8]) -> u16 {
        let mut sum: u32 = data
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn icmp_echo(dst: [u8; 6], mac: MacAddr, from: Ipv4Addr, to: Ipv4Addr) -> Vec<u8> {
        let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
        icmp.extend_from_slice(b"peapod");
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let total = (20 + icmp.len()) as u16;
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
        ip.extend_from_slice(&from.octets());
        ip.extend_from_slice(&to.octets());
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip.extend_from_slice(&icmp);
        frame(dst, mac, 0x0800, &ip)
    }

    /// Reads frames from the tap until `want` accepts one (returns what it returns), for up
    /// to five seconds.
    fn read_until<T>(tap: &OwnedFd, mut want: impl FnMut(&[u8]) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no matching frame came out of the tap");
            let mut fds = [nix::poll::PollFd::new(
                tap.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::try_from(left).unwrap());
            let n = match nix::unistd::read(tap, &mut buf) {
                Ok(n) => n,
                Err(nix::Error::EAGAIN) => continue,
                Err(e) => panic!("reading the tap: {e}"),
            };
            assert!(n >= VNET_HDR_LEN + 14, "a frame with its vnet header");
            if let Some(found) = want(&buf[VNET_HDR_LEN..n]) {
                return found;
            }
        }
    }

    #[test]
    fn frames_written_to_the_tap_leave_by_the_veth_and_replies_come_back() {
        require_root_netns!();
        if let Some(why) = tun_unavailable() {
            eprintln!("skipping: {why}");
            return;
        }
        // The pod's namespace holds eth0 (as CNI leaves it); its peer sits in a second
        // namespace standing in for the host side, with the gateway's address.
        let pod = fresh_netns().unwrap();
        let outside = fresh_netns().unwrap();
        let gateway = Ipv4Addr::new(10, 99, 0, 1);
        let guest = Ipv4Addr::new(10, 99, 0, 2);
        netns::run_in_fd(pod.as_fd(), || {
            let mut nl = Netlink::open().unwrap();
            nl.add_veth("eth0", "peer0", Some(outside.as_fd())).unwrap();
            let eth0 = nl.link_index("eth0").unwrap();
            nl.set_mtu(eth0, 1400).unwrap();
        })
        .unwrap();
        netns::run_in_fd(outside.as_fd(), || {
            let mut nl = Netlink::open().unwrap();
            let peer = nl.link_index("peer0").unwrap();
            nl.add_address(peer, gateway.into(), 24).unwrap();
            nl.set_up(peer).unwrap();
        })
        .unwrap();

        let path = format!("/proc/self/fd/{}", pod.as_raw_fd());
        let (tap, info) = redirect_tap_and_veth(Path::new(&path), "eth0", "tap0", None).unwrap();
        let eth0 = netns::run_in_fd(pod.as_fd(), || {
            Netlink::open().unwrap().link_by_name("eth0").unwrap()
        })
        .unwrap();
        assert_eq!(info.mac, eth0.mac.unwrap(), "the guest uses the veth's MAC");
        assert_eq!(info.mtu, 1400, "and its MTU");
        assert!(eth0.up);
        // A second wiring of the same veth is refused, naming what failed.
        let err = redirect_tap_and_veth(Path::new(&path), "eth0", "tap1", None).unwrap_err();
        assert!(matches!(err, TapError::Netlink { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("redirecting between the tap \"tap1\""),
            "{err}"
        );
        assert_eq!(
            {
                let TapError::Netlink { source, .. } = &err else {
                    unreachable!()
                };
                source.errno()
            },
            Some(libc::EEXIST),
            "the veth's ingress qdisc exists"
        );

        // From the test's own namespace, as the VMM would: an ARP request for the
        // gateway goes in the tap, and the gateway's answer comes out of it.
        let mac = info.mac;
        nix::unistd::write(&tap, &arp_request(mac, guest, gateway)).unwrap();
        let gateway_mac = read_until(&tap, |f| {
            let is_reply = f[12..14] == [0x08, 0x06] && f.get(20..22) == Some(&[0, 2]);
            (is_reply && f[0..6] == mac.0 && f[28..32] == gateway.octets()).then(|| {
                let mut m = [0u8; 6];
                m.copy_from_slice(&f[22..28]);
                m
            })
        });
        assert_eq!(gateway_mac, {
            let outside_peer = netns::run_in_fd(outside.as_fd(), || {
                Netlink::open().unwrap().link_by_name("peer0").unwrap()
            })
            .unwrap();
            outside_peer.mac.unwrap().0
        });

        // And an ICMP echo request is answered.
        nix::unistd::write(&tap, &icmp_echo(gateway_mac, mac, guest, gateway)).unwrap();
        read_until(&tap, |f| {
            let ipv4 = f[12..14] == [0x08, 0x00];
            (ipv4 && f[23] == 1 && f[26..30] == gateway.octets() && f[34] == 0).then_some(())
        });
    }
}
