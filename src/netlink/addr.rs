//! Addresses and routes: `ip addr add` and `ip route add`, and reading them back.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Netlink, NetlinkError, Op};

/// A route of the main table, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `None`: a default route.
    pub destination: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
}

fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn check_prefix(ip: IpAddr, prefix_len: u8) -> Result<(), NetlinkError> {
    if prefix_len > max_prefix(ip) {
        return Err(NetlinkError::InvalidArgument(format!(
            "{ip}/{prefix_len}: the prefix length is at most {}",
            max_prefix(ip)
        )));
    }
    Ok(())
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The `RTM_NEWADDR` of `ip addr add IP/PREFIX dev INDEX`.
pub(crate) fn address_message(index: u32, ip: IpAddr, prefix_len: u8) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family(ip);
    m.header.prefix_len = prefix_len;
    m.header.index = index;
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS the peer's on a point-to-point
    // link and the same elsewhere (what iproute2 sends).
    if ip.is_ipv4() {
        m.attributes.push(AddressAttribute::Local(ip));
    }
    m.attributes.push(AddressAttribute::Address(ip));
    if ip.is_ipv6() {
        // The address was handed out by the pod network's IPAM, nobody else has it:
        // skip duplicate address detection, which would leave it unusable ("tentative")
        // for a second or more after the pod starts.
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    m
}

/// The `RTM_NEWROUTE` of `ip route add [DST|default] [via GW] [dev OIF]` in the main
/// table.
pub(crate) fn route_message(
    dst: Option<(IpAddr, u8)>,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
) -> Result<RouteMessage, NetlinkError> {
    let ip = dst.map(|(ip, _)| ip).or(gateway).ok_or_else(|| {
        NetlinkError::InvalidArgument(
            "a route needs a destination or a gateway (which says its address family)".into(),
        )
    })?;
    if let (Some((d, _)), Some(g)) = (dst, gateway)
        && d.is_ipv4() != g.is_ipv4()
    {
        return Err(NetlinkError::InvalidArgument(format!(
            "route to {d} via {g}: the gateway is of another address family"
        )));
    }
    if gateway.is_none() && oif.is_none() {
        return Err(NetlinkError::InvalidArgument(format!(
            "route to {ip}: give a gateway or an interface"
        )));
    }
    let mut m = RouteMessage::default();
    m.header.address_family = family(ip);
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.kind = RouteType::Unicast;
    // Without a gateway the destination is on the link itself.
    m.header.scope = if gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    if let Some((d, prefix_len)) = dst {
        check_prefix(d, prefix_len)?;
        m.header.destination_prefix_length = prefix_len;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(d)));
    }
    if let Some(g) = gateway {
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(g)));
    }
    if let Some(oif) = oif {
        m.attributes.push(RouteAttribute::Oif(oif));
    }
    Ok(m)
}

impl Netlink {
    /// `ip addr add IP/PREFIX dev INDEX`.
    pub fn add_address(
        &mut self,
        index: u32,
        ip: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        check_prefix(ip, prefix_len)?;
        self.request(
            RouteNetlinkMessage::NewAddress(address_message(index, ip, prefix_len)),
            NLM_F_CREATE | NLM_F_EXCL,
            Op::new(
                format!("add the address {ip}/{prefix_len}"),
                format!("link {index}"),
            ),
        )
    }

    /// The addresses of link `index`, with their prefix lengths.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        let answers = self.dump(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            Op::new("list the addresses", format!("link {index}")),
        )?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Address(ip) => Some((*ip, a.header.prefix_len)),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// `ip route add`: to `dst` (`None`: the default route) via `gateway` and/or out of
    /// link `oif`, in the main table. A route without a gateway is on-link.
    pub fn add_route(
        &mut self,
        dst: Option<(IpAddr, u8)>,
        gateway: Option<IpAddr>,
        oif: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let m = route_message(dst, gateway, oif)?;
        let what = format!(
            "add the route to {}{}",
            dst.map_or("default".to_string(), |(ip, len)| format!("{ip}/{len}")),
            gateway.map(|g| format!(" via {g}")).unwrap_or_default()
        );
        let target = oif.map_or("no interface".to_string(), |i| format!("link {i}"));
        self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_EXCL,
            Op::new(what, target),
        )
    }

    /// The routes of the main table, both families.
    pub fn routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
        let answers = self.dump(
            RouteNetlinkMessage::GetRoute(RouteMessage::default()),
            Op::new("list the routes", "main table"),
        )?;
        let mut routes = Vec::new();
        for m in &answers {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            let mut table = u32::from(r.header.table);
            let mut route = Route {
                destination: None,
                gateway: None,
                oif: None,
            };
            for attr in &r.attributes {
                match attr {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Destination(d) => {
                        route.destination =
                            route_ip(d).map(|ip| (ip, r.header.destination_prefix_length))
                    }
                    RouteAttribute::Gateway(g) => route.gateway = route_ip(g),
                    RouteAttribute::Oif(o) => route.oif = Some(*o),
                    _ => {}
                }
            }
            if table == u32::from(RouteHeader::RT_TABLE_MAIN) {
                routes.push(route);
            }
        }
        Ok(routes)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::netlink::netns;
    use crate::netlink::testing::{fresh_netns, require_root_netns};

    #[test]
    fn route_messages_carry_the_family_scope_and_table() {
        let gw: IpAddr = "10.0.0.1".parse().unwrap();
        let m = route_message(None, Some(gw), Some(2)).unwrap();
        assert_eq!(m.header.address_family, AddressFamily::Inet);
        assert_eq!(m.header.scope, RouteScope::Universe);
        assert_eq!(m.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(m.header.destination_prefix_length, 0);
        assert!(
            m.attributes
                .contains(&RouteAttribute::Gateway(RouteAddress::from(gw)))
        );
        assert!(m.attributes.contains(&RouteAttribute::Oif(2)));

        let net: IpAddr = "fd00::".parse().unwrap();
        let m = route_message(Some((net, 64)), None, Some(3)).unwrap();
        assert_eq!(m.header.address_family, AddressFamily::Inet6);
        assert_eq!(m.header.scope, RouteScope::Link);
        assert_eq!(m.header.destination_prefix_length, 64);

        type Case = (Option<(IpAddr, u8)>, Option<IpAddr>, Option<u32>);
        let cases: [Case; 4] = [
            (None, None, Some(1)),
            (Some((net, 64)), Some(gw), None),
            (Some((gw, 33)), None, Some(1)),
            (Some((gw, 32)), None, None),
        ];
        for (dst, gw, oif) in cases {
            assert!(route_message(dst, gw, oif).is_err(), "{dst:?} {gw:?}");
        }
    }

    #[test]
    fn address_messages_follow_iproute2() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let m = address_message(7, v4, 24);
        assert_eq!(
            (m.header.family, m.header.prefix_len, m.header.index),
            (AddressFamily::Inet, 24, 7)
        );
        assert_eq!(
            m.attributes,
            [AddressAttribute::Local(v4), AddressAttribute::Address(v4)]
        );
        let v6: IpAddr = "fd00::5".parse().unwrap();
        assert!(
            address_message(7, v6, 64)
                .attributes
                .contains(&AddressAttribute::Flags(AddressFlags::Nodad))
        );
    }

    #[test]
    fn addresses_and_routes_are_added_and_read_back() {
        require_root_netns!();
        let ns = fresh_netns().unwrap();
        netns::run_in_fd(ns.as_fd(), || {
            let mut nl = Netlink::open().unwrap();
            nl.add_veth("ar-a", "ar-b", None).unwrap();
            let a = nl.link_index("ar-a").unwrap();
            let v4: IpAddr = "10.88.0.5".parse().unwrap();
            let v6: IpAddr = "fd00:88::5".parse().unwrap();
            nl.add_address(a, v4, 24).unwrap();
            nl.add_address(a, v6, 64).unwrap();
            let err = nl.add_address(a, v4, 24).unwrap_err();
            assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
            assert!(nl.add_address(a, v4, 40).is_err());
            let addrs = nl.addresses(a).unwrap();
            assert!(addrs.contains(&(v4, 24)), "{addrs:?}");
            assert!(addrs.contains(&(v6, 64)), "{addrs:?}");

            // A gateway behind a link that is down is unreachable, and the error says so.
            let gw: IpAddr = "10.88.0.1".parse().unwrap();
            let err = nl.add_route(None, Some(gw), Some(a)).unwrap_err();
            assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{err}");
            assert!(err.to_string().contains("default via 10.88.0.1"), "{err}");
            assert!(err.to_string().contains("on-link route"), "{err}");

            nl.set_up(a).unwrap();
            nl.add_route(None, Some(gw), Some(a)).unwrap();
            let extra: IpAddr = "192.168.7.0".parse().unwrap();
            nl.add_route(Some((extra, 24)), None, Some(a)).unwrap();
            // Host bits in a destination: the kernel's own message comes along.
            let err = nl
                .add_route(Some(("192.168.8.1".parse().unwrap(), 24)), None, Some(a))
                .unwrap_err();
            assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");
            assert!(err.to_string().contains("Invalid prefix"), "{err}");
            let routes = nl.routes().unwrap();
            assert!(
                routes.contains(&Route {
                    destination: None,
                    gateway: Some(gw),
                    oif: Some(a)
                }),
                "{routes:?}"
            );
            assert!(
                routes.contains(&Route {
                    destination: Some((extra, 24)),
                    gateway: None,
                    oif: Some(a)
                }),
                "{routes:?}"
            );
        })
        .unwrap();
    }
}
