//! The pod's network inside the guest: each NIC the VMM gave the VM (found by the MAC the
//! host chose, the pod veth's) moves from the agent's network namespace into the pod's and
//! is set up there like the veth it stands for (name, MTU, addresses, up), then the routes
//! are added. Containers join the pod's namespace, so they see only these interfaces and
//! loopback; the agent keeps its own namespace (vsock needs none).
//!
//! The steps go through [`Os`], so their order is unit-tested with the recording double;
//! [`super::os::RealOs`] makes them with [`crate::netlink`].

use std::io;
use std::path::Path;

use super::os::Os;
use crate::netlink::MacAddr;
use crate::protocol::{IpCidr, NetRoute, SandboxNetwork};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "no network device with MAC {mac} in the guest for interface {name}: the VM was \
         started without that NIC (the host must attach one with this MAC per pod interface)"
    )]
    NoSuchNic { mac: MacAddr, name: String },
    #[error("interface {name}: {what}: {source}")]
    Interface {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("route {route}: {source}")]
    Route {
        route: String,
        #[source]
        source: io::Error,
    },
    #[error("interface {name}: {message}")]
    Invalid { name: String, message: String },
}

/// Sets up `network` in the pod's network namespace at `netns`. Every NIC is looked up
/// before any is moved, so a missing one fails the pod without half-moving the others.
pub fn configure_pod_network(
    os: &dyn Os,
    netns: &Path,
    network: &SandboxNetwork,
) -> Result<(), NetworkError> {
    let mut found = Vec::with_capacity(network.interfaces.len());
    for iface in &network.interfaces {
        let mac: MacAddr = iface.mac.parse().map_err(|e| NetworkError::Invalid {
            name: iface.name.clone(),
            message: format!("{e}"),
        })?;
        let index = os
            .link_by_mac(mac)
            .map_err(|source| NetworkError::Interface {
                name: iface.name.clone(),
                what: "looking up the NIC",
                source,
            })?
            .ok_or_else(|| NetworkError::NoSuchNic {
                mac,
                name: iface.name.clone(),
            })?;
        found.push((iface, index));
    }
    for (iface, index) in found {
        let at = |what| {
            let name = iface.name.clone();
            move |source| NetworkError::Interface { name, what, source }
        };
        os.move_link(index, netns)
            .map_err(at("moving it into the pod's network namespace"))?;
        os.configure_interface(netns, iface)
            .map_err(at("configuring it in the pod's network namespace"))?;
    }
    for route in planned_routes(network) {
        os.add_route(netns, &route)
            .map_err(|source| NetworkError::Route {
                route: route.to_string(),
                source,
            })?;
    }
    Ok(())
}

/// The routes to add, in order: the on-link ones first, then a host route to each
/// gateway that no interface address or on-link route reaches (a point-to-point setup such
/// as CNI's `ptp` plugin gives the pod a /32 and a gateway outside it; the plugin adds
/// that host route itself, but a CNI result does not list it), then the ones through a
/// gateway. The kernel refuses a gateway it cannot reach on a link.
pub fn planned_routes(network: &SandboxNetwork) -> Vec<NetRoute> {
    let (mut onlink, via): (Vec<NetRoute>, Vec<NetRoute>) = network
        .routes
        .iter()
        .cloned()
        .partition(|r| r.gateway.is_none());
    let mut to_gateways: Vec<NetRoute> = Vec::new();
    for route in &via {
        let Some(gateway) = route.gateway else {
            continue;
        };
        let candidates: Vec<_> = network
            .interfaces
            .iter()
            .filter(|i| route.interface.as_ref().is_none_or(|n| *n == i.name))
            .collect();
        let reached = candidates
            .iter()
            .any(|i| i.addresses.iter().any(|a| a.contains(gateway)))
            || onlink
                .iter()
                .chain(&to_gateways)
                .any(|r| r.destination.is_some_and(|d| d.contains(gateway)));
        // Which link the gateway is on: the route's, or the pod's only one.
        let device = match (&route.interface, &candidates[..]) {
            (Some(name), _) => Some(name.clone()),
            (None, [only]) => Some(only.name.clone()),
            _ => None,
        };
        if let (false, Some(device)) = (reached, device) {
            to_gateways.push(NetRoute {
                destination: Some(IpCidr {
                    ip: gateway,
                    prefix_len: if gateway.is_ipv4() { 32 } else { 128 },
                }),
                gateway: None,
                interface: Some(device),
            });
        }
    }
    onlink.extend(to_gateways);
    onlink.extend(via);
    onlink
}

/// The address `/etc/hosts` gives the pod's hostname: its first IPv4 address, else its
/// first IPv6 one.
pub fn pod_address(network: Option<&SandboxNetwork>) -> Option<std::net::IpAddr> {
    let addresses: Vec<_> = network?
        .interfaces
        .iter()
        .flat_map(|i| i.addresses.iter().map(|a| a.ip))
        .collect();
    addresses
        .iter()
        .find(|ip| ip.is_ipv4())
        .or(addresses.first())
        .copied()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::agent::os::{Call, RecordingOs};
    use crate::protocol::NetInterface;
    use crate::protocol::message::tests::sample_network;

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn cidr(ip: &str, prefix_len: u8) -> IpCidr {
        IpCidr {
            ip: ip.parse().unwrap(),
            prefix_len,
        }
    }

    const NETNS: &str = "/run/peapod/netns";

    #[test]
    fn each_nic_is_found_moved_and_configured_before_the_routes() {
        let os = RecordingOs::new().with_nic(mac("02:42:0a:58:00:05"), 2);
        let network = sample_network();
        configure_pod_network(&os, Path::new(NETNS), &network).unwrap();
        let netns = PathBuf::from(NETNS);
        let routes = planned_routes(&network);
        assert_eq!(
            os.calls(),
            [
                Call::LinkByMac(mac("02:42:0a:58:00:05")),
                Call::MoveLink {
                    index: 2,
                    netns: netns.clone()
                },
                Call::ConfigureInterface(netns.clone(), network.interfaces[0].clone()),
                Call::AddRoute(netns.clone(), routes[0].clone()),
                Call::AddRoute(netns.clone(), routes[1].clone()),
            ]
        );
        assert_eq!(
            routes[0], network.routes[1],
            "the on-link route before the default route"
        );
        assert_eq!(routes[1], network.routes[0]);
    }

    #[test]
    fn a_missing_nic_names_its_mac_and_nothing_is_moved() {
        let mut network = sample_network();
        let mut second = network.interfaces[0].clone();
        second.name = "net1".into();
        second.mac = "02:00:00:00:00:99".into();
        network.interfaces.push(second);
        let os = RecordingOs::new().with_nic(mac("02:42:0a:58:00:05"), 2);
        let err = configure_pod_network(&os, Path::new(NETNS), &network).unwrap_err();
        assert!(matches!(err, NetworkError::NoSuchNic { .. }));
        let text = err.to_string();
        assert!(text.contains("02:00:00:00:00:99"), "{text}");
        assert!(text.contains("net1"), "{text}");
        assert!(
            !os.calls()
                .iter()
                .any(|c| matches!(c, Call::MoveLink { .. })),
            "{:?}",
            os.calls()
        );
    }

    #[test]
    fn a_failing_step_stops_the_setup_and_names_the_interface() {
        let os = RecordingOs::new()
            .with_nic(mac("02:42:0a:58:00:05"), 2)
            .failing(|c| matches!(c, Call::ConfigureInterface(..)));
        let err = configure_pod_network(&os, Path::new(NETNS), &sample_network()).unwrap_err();
        assert!(
            err.to_string().contains("interface eth0: configuring"),
            "{err}"
        );
        assert!(!os.calls().iter().any(|c| matches!(c, Call::AddRoute(..))));

        let os = RecordingOs::new()
            .with_nic(mac("02:42:0a:58:00:05"), 2)
            .failing(|c| matches!(c, Call::AddRoute(_, r) if r.gateway.is_some()));
        let err = configure_pod_network(&os, Path::new(NETNS), &sample_network()).unwrap_err();
        assert!(
            err.to_string()
                .contains("route default via 10.88.0.1 dev eth0"),
            "{err}"
        );
    }

    #[test]
    fn a_gateway_outside_every_subnet_gets_a_host_route_first() {
        // What CNI's ptp plugin reports: a /32 and a gateway outside it.
        let network = SandboxNetwork {
            interfaces: vec![NetInterface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                mtu: 1500,
                addresses: vec![cidr("10.1.0.7", 32), cidr("fd00::7", 64)],
            }],
            routes: vec![
                NetRoute {
                    destination: None,
                    gateway: Some("10.1.0.1".parse().unwrap()),
                    interface: None,
                },
                NetRoute {
                    destination: None,
                    gateway: Some("fd00::1".parse().unwrap()),
                    interface: Some("eth0".into()),
                },
            ],
        };
        let routes = planned_routes(&network);
        assert_eq!(
            routes,
            [
                NetRoute {
                    destination: Some(cidr("10.1.0.1", 32)),
                    gateway: None,
                    interface: Some("eth0".into()),
                },
                network.routes[0].clone(),
                network.routes[1].clone(),
            ],
            "the IPv6 gateway is inside the /64: no extra route"
        );
        // An explicit on-link route to the gateway's subnet is enough.
        let mut covered = network.clone();
        covered.routes.push(NetRoute {
            destination: Some(cidr("10.1.0.0", 24)),
            gateway: None,
            interface: Some("eth0".into()),
        });
        assert_eq!(planned_routes(&covered).len(), 3);
    }

    /// The real thing: a "guest" namespace with a NIC (a veth end), a pod namespace, and
    /// [`RealOs`](crate::agent::os::RealOs) doing the setup from the guest's namespace.
    #[test]
    fn the_real_os_moves_and_configures_the_nic_in_the_pod_namespace() {
        use std::os::fd::{AsFd, AsRawFd};

        use crate::agent::os::RealOs;
        use crate::netlink::testing::{fresh_netns, require_root_netns};
        use crate::netlink::{Netlink, Route, netns};

        require_root_netns!();
        let guest = fresh_netns().unwrap();
        let pod = fresh_netns().unwrap();
        let pod_path = PathBuf::from(format!("/proc/self/fd/{}", pod.as_raw_fd()));
        let nic_mac = netns::run_in_fd(guest.as_fd(), || {
            let mut nl = Netlink::open().unwrap();
            nl.add_veth("nic0", "wire0", None).unwrap();
            let wire = nl.link_index("wire0").unwrap();
            nl.set_up(wire).unwrap();
            nl.link_by_name("nic0").unwrap().mac.unwrap()
        })
        .unwrap();
        let network = SandboxNetwork {
            interfaces: vec![NetInterface {
                name: "eth0".into(),
                mac: nic_mac.to_string(),
                mtu: 1400,
                addresses: vec![cidr("10.1.0.7", 32), cidr("fd00::7", 64)],
            }],
            routes: vec![
                NetRoute {
                    destination: None,
                    gateway: Some("10.1.0.1".parse().unwrap()),
                    interface: None,
                },
                NetRoute {
                    destination: None,
                    gateway: Some("fd00::1".parse().unwrap()),
                    interface: Some("eth0".into()),
                },
            ],
        };
        netns::run_in_fd(guest.as_fd(), || {
            configure_pod_network(&RealOs, &pod_path, &network)
        })
        .unwrap()
        .unwrap();

        netns::run_in_fd(pod.as_fd(), || {
            let mut nl = Netlink::open().unwrap();
            let eth0 = nl.link_by_name("eth0").unwrap();
            assert_eq!((eth0.mac, eth0.mtu, eth0.up), (Some(nic_mac), 1400, true));
            let addrs = nl.addresses(eth0.index).unwrap();
            assert!(
                addrs.contains(&("10.1.0.7".parse().unwrap(), 32)),
                "{addrs:?}"
            );
            assert!(
                addrs.contains(&("fd00::7".parse().unwrap(), 64)),
                "{addrs:?}"
            );
            let routes = nl.routes().unwrap();
            for want in [
                Route {
                    destination: Some(("10.1.0.1".parse().unwrap(), 32)),
                    gateway: None,
                    oif: Some(eth0.index),
                },
                Route {
                    destination: None,
                    gateway: Some("10.1.0.1".parse().unwrap()),
                    oif: Some(eth0.index),
                },
                Route {
                    destination: None,
                    gateway: Some("fd00::1".parse().unwrap()),
                    oif: Some(eth0.index),
                },
            ] {
                assert!(routes.contains(&want), "{want:?} in {routes:?}");
            }
        })
        .unwrap();
        // The NIC left the guest's namespace.
        let left = netns::run_in_fd(guest.as_fd(), || {
            Netlink::open().unwrap().link_by_mac(nic_mac).unwrap()
        })
        .unwrap();
        assert_eq!(left, None);
    }

    #[test]
    fn the_pod_address_prefers_ipv4() {
        let mut network = sample_network();
        assert_eq!(
            pod_address(Some(&network)),
            Some("10.88.0.5".parse().unwrap())
        );
        network.interfaces[0].addresses.remove(0);
        assert_eq!(
            pod_address(Some(&network)),
            Some("fd00:88::5".parse().unwrap())
        );
        network.interfaces[0].addresses.clear();
        assert_eq!(pod_address(Some(&network)), None);
        assert_eq!(pod_address(None), None);
    }
}
