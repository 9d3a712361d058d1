//! The result a CNI plugin prints for ADD (spec 1.0.0; 0.3.x and 0.4.0 results have the
//! same shape), as typed structs. Results carry fields we do not use (and newer plugins
//! add more), so these structs accept unknown fields rather than deny them.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An ADD result: the interfaces the chain made, their addresses, routes and DNS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

/// An interface the chain made or used; `sandbox` is set (to the netns path) for the ones
/// inside the pod's namespace, absent for host-side ones (the bridge, the veth's peer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Only in CNI 1.1.0 results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// One address; `interface` indexes [`CniResult::interfaces`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    pub address: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

/// An address with its prefix length, `10.88.0.2/16`: the host bits are kept (it is an
/// interface's address, not only a network).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address with a prefix length (like 10.88.0.2/16)")]
pub struct BadCidr(String);

impl Cidr {
    /// The network's first address (host bits cleared).
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

impl FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(text: &str) -> Result<Self, BadCidr> {
        let bad = || BadCidr(text.to_string());
        let (addr, len) = text.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix_len: u8 = len.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(bad());
        }
        Ok(Cidr { addr, prefix_len })
    }
}

impl TryFrom<String> for Cidr {
    type Error = BadCidr;
    fn try_from(text: String) -> Result<Self, BadCidr> {
        text.parse()
    }
}

impl From<Cidr> for String {
    fn from(cidr: Cidr) -> String {
        cidr.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// `0a:58:0a:58:00:02` → bytes; `None` for anything else.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Bytes → `0a:58:0a:58:00:02`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl CniResult {
    /// The index of the interface named `ifname` inside the pod's namespace.
    pub fn sandbox_interface(&self, ifname: &str) -> Option<usize> {
        self.interfaces
            .iter()
            .position(|i| i.name == ifname && i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
    }

    /// The addresses of the pod's interface `ifname` (addresses without an interface index
    /// count as the pod's, as the spec allows).
    pub fn addresses_of(&self, ifname: &str) -> Vec<&IpConfig> {
        let index = self.sandbox_interface(ifname);
        self.ips
            .iter()
            .filter(|ip| ip.interface.is_none() || ip.interface == index)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Debian's bridge 1.1.1 + host-local print for ADD with cniVersion 1.0.0.
    pub(crate) const BRIDGE_RESULT: &str = r#"{
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "peapod0", "mac": "6e:1c:2b:44:a1:01"},
            {"name": "veth5b3c2f1a", "mac": "12:34:56:78:9a:bc"},
            {"name": "eth0", "mac": "0a:58:0a:58:00:02", "sandbox": "/run/netns/peapod-abc"}
        ],
        "ips": [
            {"interface": 2, "address": "10.88.0.2/16", "gateway": "10.88.0.1"}
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    }"#;

    #[test]
    fn a_bridge_result_parses() {
        let result: CniResult = serde_json::from_str(BRIDGE_RESULT).unwrap();
        assert_eq!(result.sandbox_interface("eth0"), Some(2));
        let addrs = result.addresses_of("eth0");
        assert_eq!(addrs.len(), 1);
        assert_eq!(addrs[0].address.to_string(), "10.88.0.2/16");
        assert_eq!(addrs[0].address.network().to_string(), "10.88.0.0");
        assert_eq!(addrs[0].gateway, Some("10.88.0.1".parse().unwrap()));
        assert_eq!(result.routes[0].dst.prefix_len, 0);
        assert_eq!(result.routes[0].gw, None);
        assert_eq!(
            parse_mac(result.interfaces[2].mac.as_deref().unwrap()),
            Some([0x0a, 0x58, 0x0a, 0x58, 0, 2])
        );
        assert!(result.dns.nameservers.is_empty());
    }

    #[test]
    fn results_with_extra_fields_parse() {
        let text = r#"{"cniVersion":"1.1.0","future":1,
            "interfaces":[{"name":"eth0","sandbox":"/x","mtu":9000,"socketPath":"/s"}],
            "ips":[{"address":"fd00::2/64","version":"6"}],
            "routes":[{"dst":"::/0","gw":"fd00::1","mtu":1400,"priority":5}],
            "dns":{"nameservers":["10.0.0.53"],"search":["svc"],"x":true}}"#;
        let result: CniResult = serde_json::from_str(text).unwrap();
        assert_eq!(result.interfaces[0].mtu, Some(9000));
        assert_eq!(result.addresses_of("eth0").len(), 1);
        assert_eq!(result.routes[0].gw, Some("fd00::1".parse().unwrap()));
        assert_eq!(result.dns.search, ["svc"]);
    }

    #[test]
    fn cidrs_and_macs_reject_garbage() {
        for bad in [
            "10.0.0.1",
            "10.0.0.1/33",
            "::1/129",
            "x/8",
            "10.0.0.1/-1",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
        let bad: Result<CniResult, _> =
            serde_json::from_str(r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.300/8"}]}"#);
        assert!(bad.is_err());
        for bad in [
            "",
            "0a:58:0a:58:00",
            "0a:58:0a:58:00:02:03",
            "0a:58:0a:58:00:zz",
            "a:b:c:d:e:f",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
        assert_eq!(
            format_mac(&[0x0a, 0x58, 0, 0xff, 1, 2]),
            "0a:58:00:ff:01:02"
        );
        let v6: Cidr = "fd00::2/64".parse().unwrap();
        assert_eq!(v6.network().to_string(), "fd00::");
        assert_eq!(v6.to_string(), "fd00::2/64");
    }
}
