//! A small, synchronous rtnetlink client: links, addresses, routes, and the tc ingress
//! qdisc and mirred redirect filters that join a pod's tap to its veth.
//!
//! Why not the `rtnetlink` crate: it is async and brings tokio, and both its users here are
//! synchronous (the guest agent, a small static PID 1, and the supervisor setting up a
//! pod's network namespace once). So this builds the same messages with the packet crates
//! rtnetlink itself uses (`netlink-packet-route`, `netlink-packet-core`) and sends them on
//! a plain `netlink-sys` socket: one request at a time, each acknowledged (`NLM_F_ACK`),
//! and a kernel error becomes [`NetlinkError::Kernel`] naming the operation, the
//! interface, the errno and the kernel's own extended-ack message when it gives one.
//!
//! A [`Netlink`] talks to the network namespace of the thread that opened it, for its
//! whole life (a netlink socket is bound to its creator's namespace), so work in another
//! namespace opens its own inside [`netns::run_in`].
//!
//! Files: [`link`] (list, find, rename, MTU, up, move to a namespace, veth pairs),
//! [`addr`] (addresses and routes), [`tc`] (ingress qdisc and redirect filter),
//! [`mac`] ([`MacAddr`]), [`netns`] (running a closure in another namespace), [`tap`]
//! (tap devices and the tap↔veth redirect of a pod).

pub mod addr;
pub mod link;
pub mod mac;
pub mod netns;
pub mod tap;
pub mod tc;

use std::io;
use std::num::NonZeroI32;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer,
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

pub use addr::Route;
pub use link::Link;
pub use mac::MacAddr;

/// What went wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("netlink: {op} ({target}) failed: {source}{}", hint(*.source, extack.as_deref()))]
    Kernel {
        /// What was asked ("set the MTU to 9000").
        op: String,
        /// The interface or object it was asked of ("link 3", "eth0").
        target: String,
        source: Errno,
        /// The kernel's extended-ack message, when it sent one.
        extack: Option<String>,
    },
    #[error("netlink: {op} ({target}): {source}")]
    Io {
        op: String,
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("netlink: {op}: the kernel's reply could not be decoded: {message}")]
    Decode { op: String, message: String },
    #[error("no network interface named {0:?} in this network namespace")]
    NoSuchLink(String),
    #[error("{0}")]
    InvalidArgument(String),
}

/// A kernel errno, positive (`libc::EEXIST`), shown with the system's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.0))
    }
}

impl std::error::Error for Errno {}

fn hint(errno: Errno, extack: Option<&str>) -> String {
    let mut out = String::new();
    if let Some(message) = extack {
        out.push_str(&format!(" ({message})"));
    }
    match errno.0 {
        libc::EPERM => out.push_str(": this needs CAP_NET_ADMIN in the network namespace"),
        libc::EEXIST => out.push_str(": it exists already"),
        libc::ENODEV => out.push_str(": no such interface"),
        libc::ENETDOWN => out.push_str(": bring the interface up first"),
        libc::ENETUNREACH => out.push_str(
            ": the gateway is on no connected network: bring the interface up with an \
             address in the gateway's subnet, or add an on-link route to the gateway first",
        ),
        libc::EOPNOTSUPP | libc::ENOENT if extack.is_none() => {
            out.push_str(": the kernel may lack the feature (module or config option)")
        }
        _ => {}
    }
    out
}

impl NetlinkError {
    /// The kernel's errno, for a request the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => Some(source.0),
            NetlinkError::Io { source, .. } | NetlinkError::Socket(source) => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The agent's [`crate::agent::os::Os`] speaks `io::Error`: keep the errno and the text.
impl From<NetlinkError> for io::Error {
    fn from(e: NetlinkError) -> io::Error {
        let kind = match (&e, e.errno()) {
            (_, Some(errno)) => io::Error::from_raw_os_error(errno).kind(),
            (NetlinkError::NoSuchLink(_), None) => io::ErrorKind::NotFound,
            (NetlinkError::InvalidArgument(_), None) => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e.to_string())
    }
}

/// A kernel operation and the thing it is about, for error messages.
pub(crate) struct Op {
    pub(crate) op: String,
    pub(crate) target: String,
}

impl Op {
    pub(crate) fn new(op: impl Into<String>, target: impl Into<String>) -> Self {
        Op {
            op: op.into(),
            target: target.into(),
        }
    }

    fn io(&self, source: io::Error) -> NetlinkError {
        NetlinkError::Io {
            op: self.op.clone(),
            target: self.target.clone(),
            source,
        }
    }

    fn decode(&self, message: impl std::fmt::Display) -> NetlinkError {
        NetlinkError::Decode {
            op: self.op.clone(),
            message: message.to_string(),
        }
    }
}

/// `NETLINK_EXT_ACK`, `NETLINK_CAP_ACK` and the extended-ack attribute holding the kernel's
/// message (`linux/netlink.h`).
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NLMSGERR_ATTR_MSG: u16 = 1;
/// An `nlmsghdr`: what an error echoes of the request with `NETLINK_CAP_ACK`.
const NLMSG_HDR_LEN: usize = 16;

/// An rtnetlink socket in the network namespace of the thread that opened it.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").field("seq", &self.seq).finish()
    }
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        // The kernel's own words on a refusal ("Invalid prefix for given prefix length"),
        // and errors that echo only the request's header, not all of it. Both are
        // refinements: an old kernel without them still answers.
        for option in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            let _ = setsockopt_bool(&socket, option);
        }
        Ok(Netlink { socket, seq: 0 })
    }

    /// Sends `message` with `NLM_F_ACK` and `flags`, and waits for the kernel's answer.
    pub(crate) fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        op: Op,
    ) -> Result<(), NetlinkError> {
        self.exchange(message, NLM_F_REQUEST | NLM_F_ACK | flags, &op)
            .map(|_| ())
    }

    /// Sends a dump request and collects the answers.
    pub(crate) fn dump(
        &mut self,
        message: RouteNetlinkMessage,
        op: Op,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.exchange(message, NLM_F_REQUEST | NLM_F_DUMP, &op)
    }

    fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        op: &Op,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::from(message));
        request.finalize();
        let mut buf = vec![0; request.buffer_len()];
        request.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(|e| op.io(e))?;

        let mut answers = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full().map_err(|e| op.io(e))?;
            let mut offset = 0;
            while offset < datagram.len() {
                let rest = &datagram[offset..];
                let len = NetlinkBuffer::new_checked(rest)
                    .map_err(|e| op.decode(e))?
                    .length() as usize;
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len])
                    .map_err(|e| op.decode(e))?;
                // Netlink messages are 4-byte aligned within a datagram.
                offset += len.div_ceil(4) * 4;
                if reply.header.sequence_number != seq {
                    // An answer to an earlier request that gave up: not ours.
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(answers),
                        Some(code) => {
                            return Err(kernel_error(op, code, reply.header.flags, &e.header));
                        }
                    },
                    NetlinkPayload::Done(_) => return Ok(answers),
                    // A dump's parts; a plain request gets none (its ack follows).
                    NetlinkPayload::InnerMessage(m) => answers.push(m),
                    _ => {}
                }
            }
        }
    }
}

fn kernel_error(op: &Op, code: NonZeroI32, reply_flags: u16, echoed: &[u8]) -> NetlinkError {
    NetlinkError::Kernel {
        op: op.op.clone(),
        target: op.target.clone(),
        source: Errno(code.get().saturating_abs()),
        extack: extack_message(reply_flags, echoed),
    }
}

/// The `NLMSGERR_ATTR_MSG` of an error's extended-ack attributes (`NLM_F_ACK_TLVS`), which
/// follow the echoed request: only its header when the kernel capped it (`NLM_F_CAPPED`),
/// all of it otherwise.
fn extack_message(reply_flags: u16, echoed: &[u8]) -> Option<String> {
    if reply_flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let skip = if reply_flags & NLM_F_CAPPED != 0 {
        NLMSG_HDR_LEN
    } else {
        let len = u32::from_ne_bytes(echoed.get(..4)?.try_into().ok()?) as usize;
        len.div_ceil(4) * 4
    };
    NlasIterator::new(echoed.get(skip..)?)
        .filter_map(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            String::from_utf8_lossy(nla.value())
                .trim_end_matches('\0')
                .to_string()
        })
        .filter(|m| !m.is_empty())
}

fn setsockopt_bool(socket: &Socket, option: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: passes a pointer to an int that lives across the call and its exact size;
    // the fd is the socket we own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_NETLINK,
            option,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Helpers of the root-only tests: a fresh network namespace per test, in threads, so the
/// test process's own namespace never changes.
#[cfg(test)]
pub(crate) mod testing {
    use std::fs::File;

    /// Why a root-only test cannot run here, if it cannot.
    pub(crate) fn unavailable() -> Option<String> {
        if !nix::unistd::geteuid().is_root() {
            return Some("not root".into());
        }
        match fresh_netns() {
            Ok(_) => None,
            Err(e) => Some(format!("cannot create a network namespace: {e}")),
        }
    }

    /// Skips the calling test (returns from it) with a printed reason when it cannot run.
    macro_rules! require_root_netns {
        () => {
            if let Some(why) = $crate::netlink::testing::unavailable() {
                eprintln!("skipping: {why}");
                return;
            }
        };
    }
    pub(crate) use require_root_netns;

    /// A new, empty network namespace, kept alive by the returned file.
    pub(crate) fn fresh_netns() -> std::io::Result<File> {
        std::thread::spawn(|| -> std::io::Result<File> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            File::open("/proc/thread-self/ns/net")
        })
        .join()
        .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extack_messages_are_read_from_the_error_payload() {
        // What Linux 6.18 sent for a route with host bits set: the echoed request header
        // (its length says 44 bytes, but only the header came: capped), then the message.
        let mut echoed = vec![0u8; NLMSG_HDR_LEN];
        echoed[..4].copy_from_slice(&44u32.to_ne_bytes());
        let text = b"Invalid prefix for given prefix length\0";
        let nla_len = 4 + text.len();
        echoed.extend_from_slice(&(nla_len as u16).to_ne_bytes());
        echoed.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        echoed.extend_from_slice(text);
        echoed.resize(echoed.len().div_ceil(4) * 4, 0);
        let flags = NLM_F_ACK_TLVS | NLM_F_CAPPED;
        assert_eq!(
            extack_message(flags, &echoed).as_deref(),
            Some("Invalid prefix for given prefix length")
        );
        assert_eq!(extack_message(0, &echoed), None, "no attributes flagged");
        assert_eq!(extack_message(flags, &echoed[..NLMSG_HDR_LEN]), None);
        assert_eq!(extack_message(flags, &[1, 2, 3]), None);
        // Not capped: the whole 44-byte request is echoed before the attributes.
        let mut whole = echoed[..NLMSG_HDR_LEN].to_vec();
        whole.resize(44, 0);
        whole.extend_from_slice(&echoed[NLMSG_HDR_LEN..]);
        assert_eq!(
            extack_message(NLM_F_ACK_TLVS, &whole).as_deref(),
            Some("Invalid prefix for given prefix length")
        );
        assert_eq!(extack_message(NLM_F_ACK_TLVS, &whole[..40]), None);
    }

    #[test]
    fn kernel_errors_name_the_operation_the_target_and_the_fix() {
        let e = kernel_error(
            &Op::new("set the MTU to 9000", "link 3"),
            NonZeroI32::new(-libc::EPERM).unwrap(),
            0,
            &[],
        );
        assert_eq!(e.errno(), Some(libc::EPERM));
        let text = e.to_string();
        assert!(text.contains("set the MTU to 9000 (link 3)"), "{text}");
        assert!(text.contains("CAP_NET_ADMIN"), "{text}");
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::PermissionDenied);
    }
}
