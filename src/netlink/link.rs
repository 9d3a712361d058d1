//! Links (network interfaces): list and find them, rename, set the MTU, bring up, move to
//! another network namespace, delete, and make veth pairs.

use std::os::fd::{AsFd, AsRawFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};

use super::{MacAddr, Netlink, NetlinkError, Op};

/// Longest interface name (`IFNAMSIZ` less its NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// A network interface as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
    /// Its hardware address, when it is an Ethernet-like one.
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Self {
        let mut link = Link {
            name: String::new(),
            index: m.header.index,
            mac: None,
            mtu: 0,
            up: m.header.flags.contains(LinkFlags::Up),
        };
        for attr in &m.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) => link.mac = MacAddr::from_slice(a),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                _ => {}
            }
        }
        link
    }
}

/// Whether `name` is a name the kernel accepts for an interface (`dev_valid_name`): 1 to 15
/// bytes, not `.` or `..`, without `/`, `:`, whitespace or NUL.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

fn check_ifname(name: &str) -> Result<(), NetlinkError> {
    if valid_ifname(name) {
        Ok(())
    } else {
        Err(NetlinkError::InvalidArgument(format!(
            "{name:?} is not an interface name: use 1 to {MAX_IFNAME_LEN} bytes without '/', \
             ':' or spaces"
        )))
    }
}

fn link_message(index: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m
}

fn target(index: u32) -> String {
    format!("link {index}")
}

impl Netlink {
    /// Every interface of this namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let answers = self.dump(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            Op::new("list the links", "all"),
        )?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// The interface named `name`.
    pub fn link_by_name(&mut self, name: &str) -> Result<Link, NetlinkError> {
        check_ifname(name)?;
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        let answers = match self.exchange(
            RouteNetlinkMessage::GetLink(m),
            netlink_packet_core::NLM_F_REQUEST | netlink_packet_core::NLM_F_ACK,
            &Op::new("look up the link", name),
        ) {
            Err(e) if e.errno() == Some(libc::ENODEV) => {
                return Err(NetlinkError::NoSuchLink(name.into()));
            }
            other => other?,
        };
        answers
            .iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .ok_or_else(|| NetlinkError::NoSuchLink(name.into()))
    }

    /// The index of the interface named `name`.
    pub fn link_index(&mut self, name: &str) -> Result<u32, NetlinkError> {
        Ok(self.link_by_name(name)?.index)
    }

    /// The interface whose hardware address is `mac`, if there is one.
    pub fn link_by_mac(&mut self, mac: MacAddr) -> Result<Option<Link>, NetlinkError> {
        Ok(self.links()?.into_iter().find(|l| l.mac == Some(mac)))
    }

    fn set_link(
        &mut self,
        m: LinkMessage,
        what: impl Into<String>,
        index: u32,
    ) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::SetLink(m),
            0,
            Op::new(what, target(index)),
        )
    }

    /// `ip link set up`.
    pub fn set_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut m = link_message(index);
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.set_link(m, "bring the link up", index)
    }

    /// `ip link set mtu`.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let mut m = link_message(index);
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.set_link(m, format!("set the MTU to {mtu}"), index)
    }

    /// `ip link set name` (the link must be down).
    pub fn set_name(&mut self, index: u32, name: &str) -> Result<(), NetlinkError> {
        check_ifname(name)?;
        let mut m = link_message(index);
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.set_link(m, format!("rename the link to {name:?}"), index)
    }

    /// Moves the link into the network namespace `netns` refers to (an open
    /// `/proc/PID/ns/net` or a bind mount of one). It arrives there down, and keeps its
    /// index only if that index is free there: look it up again by name or MAC.
    pub fn set_netns_fd(&mut self, index: u32, netns: impl AsFd) -> Result<(), NetlinkError> {
        let mut m = link_message(index);
        m.attributes
            .push(LinkAttribute::NetNsFd(netns.as_fd().as_raw_fd()));
        self.set_link(m, "move the link to another network namespace", index)
    }

    /// `ip link delete`; a veth's peer goes with it.
    pub fn delete_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::DelLink(link_message(index)),
            0,
            Op::new("delete the link", target(index)),
        )
    }

    /// `ip link add NAME type veth peer name PEER [netns FD]`: the peer is made directly in
    /// `peer_netns` when given.
    pub fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<(), NetlinkError> {
        check_ifname(name)?;
        check_ifname(peer)?;
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        if let Some(ns) = peer_netns {
            peer_msg
                .attributes
                .push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
            Op::new(format!("create a veth pair with peer {peer:?}"), name),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::netns;
    use crate::netlink::testing::{fresh_netns, require_root_netns};

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        for good in ["eth0", "tap0", "a", "veth-1.x_y", "abcdefghijklmno"] {
            assert!(valid_ifname(good), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:1",
            "a b",
            "a\0",
            "abcdefghijklmnop",
        ] {
            assert!(!valid_ifname(bad), "{bad:?}");
        }
    }

    #[test]
    fn links_are_renamed_resized_raised_moved_and_deleted() {
        require_root_netns!();
        let ns = fresh_netns().unwrap();
        let other = fresh_netns().unwrap();
        netns::run_in_fd(ns.as_fd(), || {
            let mut nl = Netlink::open().unwrap();
            nl.add_veth("pp-a", "pp-b", None).unwrap();
            let a = nl.link_by_name("pp-a").unwrap();
            assert_eq!(nl.link_index("pp-a").unwrap(), a.index);
            assert!(!a.up);
            let mac = a.mac.expect("a veth has a MAC");
            assert_eq!(nl.link_by_mac(mac).unwrap().unwrap().index, a.index);

            nl.set_mtu(a.index, 1400).unwrap();
            nl.set_name(a.index, "pp-renamed").unwrap();
            nl.set_up(a.index).unwrap();
            let back = nl.link_by_name("pp-renamed").unwrap();
            assert_eq!((back.index, back.mtu, back.up), (a.index, 1400, true));
            assert!(matches!(
                nl.link_by_name("pp-a"),
                Err(NetlinkError::NoSuchLink(_))
            ));

            // The kernel's refusals are typed, with the operation and the link named.
            let err = nl.set_mtu(a.index, 10).unwrap_err();
            assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");
            assert!(err.to_string().contains("set the MTU to 10"), "{err}");
            assert!(
                err.to_string().contains(&format!("link {}", a.index)),
                "{err}"
            );
            let err = nl.add_veth("pp-renamed", "pp-c", None).unwrap_err();
            assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");

            let b = nl.link_by_name("pp-b").unwrap();
            nl.set_netns_fd(b.index, other.as_fd()).unwrap();
            assert!(matches!(
                nl.link_by_name("pp-b"),
                Err(NetlinkError::NoSuchLink(_))
            ));
            nl.delete_link(a.index).unwrap();
            assert!(nl.links().unwrap().iter().all(|l| l.name == "lo"));
        })
        .unwrap();
        let names: Vec<String> =
            netns::run_in_fd(other.as_fd(), || Netlink::open().unwrap().links().unwrap())
                .unwrap()
                .into_iter()
                .map(|l| l.name)
                .collect();
        // Deleting one end of a veth deleted the moved peer too.
        assert_eq!(names, ["lo"]);
    }
}
