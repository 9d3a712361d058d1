//! A pod's network as its supervisor builds and removes it, in this order:
//! 1. the published host ports are bound ([`BoundPorts`]): a taken port fails the pod
//!    before anything else of it exists;
//! 2. CNI ADD attaches a network namespace with a veth `eth0` ([`crate::network::attach`]);
//! 3. for a pod VM, a tap `tap0` joins the veth in that namespace with tc redirects both ways
//!    ([`redirect_tap_and_veth`]); the VMM gets the tap's fd and the veth's MAC, so the
//!    guest's NIC takes the veth's place on the network (a container-runtime pod's
//!    containers join the namespace and use the veth itself);
//! 4. once the agent has the pod's address, the ports forward to it.
//!
//! Undone in reverse by [`PodNetwork::tear_down`] when the pod ends, and by
//! [`crate::network::detach`] on the state file when a pod whose supervisor died is removed.
//! A failure at any step undoes the steps before it.

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::netlink::mac::MacAddr;
use crate::netlink::tap::{TapError, TapInfo, redirect_tap_and_veth};
use crate::network::ports::{BoundPorts, PortError, published_ports};
use crate::network::{NetworkError, NetworkSetup, PodAttachment, attach, detach};
use crate::pod::id::PodId;
use crate::pod::layout::PodDirs;
use crate::pod::spec::{NetworkMode, PodSpec};
use crate::pod::state::NetworkStatus;
use crate::protocol::{IpCidr, NetInterface, NetRoute, SandboxNetwork};
use crate::runtime::{PodVmNet, RuntimeKind};

/// The tap's name in the pod's namespace.
pub const TAP_NAME: &str = "tap0";
/// The guest NIC's name inside the pod.
pub const GUEST_IFNAME: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum PodNetworkError {
    #[error(transparent)]
    Ports(#[from] PortError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("cannot give the pod VM its NIC: {0}")]
    Tap(#[from] TapError),
    #[error(
        "the pod network's MTU {0} is more than a virtio-net device carries (65535): lower the \
         network's mtu in its conflist"
    )]
    Mtu(u32),
    #[error("the network gave the pod no address: check the IPAM section of its conflist")]
    NoAddress,
}

/// A pod's attached network.
pub struct PodNetwork {
    pub attachment: PodAttachment,
    /// The pod VM's tap; none for a container-runtime pod, whose containers use the veth.
    tap: Option<Arc<OwnedFd>>,
    /// The pod NIC's MAC and MTU: the veth's, which the VM's NIC takes over.
    mac: MacAddr,
    mtu: u32,
    state_file: PathBuf,
    ports: Mutex<Option<BoundPorts>>,
}

impl std::fmt::Debug for PodNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodNetwork")
            .field("attachment", &self.attachment)
            .field("mac", &self.mac)
            .field("mtu", &self.mtu)
            .finish_non_exhaustive()
    }
}

impl PodNetwork {
    /// Builds the network of pod `id` as its spec says (`None` for `--network none`).
    pub fn set_up(
        spec: &PodSpec,
        id: &PodId,
        dirs: &PodDirs,
    ) -> Result<Option<Self>, PodNetworkError> {
        let NetworkMode::Cni { name } = &spec.network else {
            return Ok(None);
        };
        let ports = BoundPorts::bind(&published_ports(spec)?)?;
        let mut setup = NetworkSetup::new(id.as_str(), &dirs.network_path(id));
        setup.name = name.clone();
        let attachment = attach(&setup)?;
        let undo = |e: PodNetworkError| {
            if let Err(undo) = detach(&setup.state_file) {
                tracing::warn!("cannot undo the pod's network attachment: {undo}");
            }
            e
        };
        let (tap, mac, mtu) = match spec.runtime {
            RuntimeKind::Vm => {
                let (tap, info): (OwnedFd, TapInfo) =
                    redirect_tap_and_veth(&attachment.netns, &attachment.ifname, TAP_NAME, None)
                        .map_err(|e| undo(e.into()))?;
                if u16::try_from(info.mtu).is_err() {
                    return Err(undo(PodNetworkError::Mtu(info.mtu)));
                }
                (Some(Arc::new(tap)), info.mac, info.mtu)
            }
            // The containers join the namespace and use its veth as it is.
            RuntimeKind::Container => (None, MacAddr(attachment.mac), attachment.mtu),
        };
        if attachment.addresses().is_empty() {
            return Err(undo(PodNetworkError::NoAddress));
        }
        Ok(Some(PodNetwork {
            attachment,
            tap,
            mac,
            mtu,
            state_file: setup.state_file,
            ports: Mutex::new(Some(ports)),
        }))
    }

    /// The VM's NIC: the tap, with the veth's MAC and MTU (none without a tap).
    pub fn vm_net(&self) -> Option<PodVmNet> {
        Some(PodVmNet {
            tap: self.tap.clone()?,
            mac: self.mac.to_string(),
            // Checked in `set_up`.
            mtu: u16::try_from(self.mtu).unwrap_or(u16::MAX),
        })
    }

    /// What the agent configures in the guest ([`guest_network`]).
    pub fn sandbox(&self) -> SandboxNetwork {
        guest_network(&self.attachment, &self.mac.to_string(), self.mtu)
    }

    /// The pod's resolvers (never a loopback stub of the host).
    pub fn dns_servers(&self) -> Vec<IpAddr> {
        self.attachment.nameservers()
    }

    /// The pod's first IPv4 address (else its first address).
    pub fn pod_ip(&self) -> Option<IpAddr> {
        let addrs = self.attachment.addresses();
        addrs
            .iter()
            .find(|c| c.addr.is_ipv4())
            .or(addrs.first())
            .map(|c| c.addr)
    }

    /// For `inspect` and `ps`.
    pub fn status(&self) -> NetworkStatus {
        NetworkStatus {
            name: self.attachment.network.clone(),
            addresses: self
                .attachment
                .addresses()
                .iter()
                .map(|c| format!("{}/{}", c.addr, c.prefix_len))
                .collect(),
            mac: self.mac.to_string(),
            mtu: self.mtu,
            netns: self.attachment.netns.clone(),
            host_interface: self
                .attachment
                .result
                .interfaces
                .iter()
                .find(|i| i.sandbox.is_none() && i.mac.is_some() && i.name.starts_with("veth"))
                .map(|i| i.name.clone()),
        }
    }

    /// Starts forwarding the published ports to the pod (once; later calls do nothing).
    pub fn forward_ports(&self) {
        let ports = self.ports.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let (Some(ports), Some(ip)) = (ports, self.pod_ip()) {
            ports.forward(ip);
        }
    }

    /// CNI DEL and the namespace removed (the tap goes with the namespace and the VMM).
    pub fn tear_down(&self) -> Result<(), NetworkError> {
        detach(&self.state_file)
    }
}

/// The guest's side of an attachment: `eth0` with the veth's MAC, the MTU and the
/// addresses, and the network's routes. A route without a gateway goes through the
/// network's gateway (as the bridge plugin means its `0.0.0.0/0`); a `/0` destination is the
/// default route.
pub fn guest_network(attachment: &PodAttachment, mac: &str, mtu: u32) -> SandboxNetwork {
    let gateway = attachment.gateway();
    let routes = attachment
        .routes()
        .iter()
        .map(|r| NetRoute {
            destination: (r.dst.prefix_len != 0).then_some(IpCidr {
                ip: r.dst.addr,
                prefix_len: r.dst.prefix_len,
            }),
            gateway: r.gw.or(gateway),
            interface: Some(GUEST_IFNAME.into()),
        })
        .collect();
    SandboxNetwork {
        interfaces: vec![NetInterface {
            name: GUEST_IFNAME.into(),
            mac: mac.into(),
            mtu,
            addresses: attachment
                .addresses()
                .into_iter()
                .map(|c| IpCidr {
                    ip: c.addr,
                    prefix_len: c.prefix_len,
                })
                .collect(),
        }],
        routes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(result: &str) -> PodAttachment {
        PodAttachment {
            network: "peapod".into(),
            netns: "/run/netns/peapod-x".into(),
            ifname: "eth0".into(),
            mac: [0x0a, 0x58, 0x0a, 0x58, 0, 2],
            mtu: 1500,
            result: serde_json::from_str(result).unwrap(),
        }
    }

    #[test]
    fn a_bridge_result_becomes_eth0_with_a_default_route_via_the_gateway() {
        let a = attachment(
            r#"{"cniVersion":"1.0.0",
                "interfaces":[{"name":"peapod0","mac":"6e:1c:2b:44:a1:01"},
                              {"name":"veth1","mac":"12:34:56:78:9a:bc"},
                              {"name":"eth0","mac":"0a:58:0a:58:00:02","sandbox":"/x"}],
                "ips":[{"interface":2,"address":"10.88.0.2/16","gateway":"10.88.0.1"}],
                "routes":[{"dst":"0.0.0.0/0"},{"dst":"192.168.7.0/24","gw":"10.88.0.254"}],
                "dns":{}}"#,
        );
        let net = guest_network(&a, "0a:58:0a:58:00:02", 1450);
        let want = SandboxNetwork {
            interfaces: vec![NetInterface {
                name: "eth0".into(),
                mac: "0a:58:0a:58:00:02".into(),
                mtu: 1450,
                addresses: vec![IpCidr {
                    ip: "10.88.0.2".parse().unwrap(),
                    prefix_len: 16,
                }],
            }],
            routes: vec![
                NetRoute {
                    destination: None,
                    gateway: Some("10.88.0.1".parse().unwrap()),
                    interface: Some("eth0".into()),
                },
                NetRoute {
                    destination: Some(IpCidr {
                        ip: "192.168.7.0".parse().unwrap(),
                        prefix_len: 24,
                    }),
                    gateway: Some("10.88.0.254".parse().unwrap()),
                    interface: Some("eth0".into()),
                },
            ],
        };
        assert_eq!(net, want);
        // What the agent will be given passes the agent's own checks.
        crate::protocol::SandboxSpec {
            hostname: "pod".into(),
            network: Some(net),
            ..Default::default()
        }
        .validate()
        .unwrap();
    }
}
