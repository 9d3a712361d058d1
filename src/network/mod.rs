//! Pod networking on the host: each pod gets a network namespace of its own
//! ([`netns`]), and a CNI network ([`conflist`], run by [`cni`]) puts a veth `eth0` into
//! it. The VMM's tap joins that veth later; the guest takes over the veth's MAC, addresses
//! and routes ([`PodAttachment`]).
//!
//! [`attach`] and [`detach`] are the whole life of a pod's network. `attach` writes a
//! state file (in the pod's run directory) before it changes anything, holding the
//! namespace's path and the exact conflist, and the ADD result once there is one; so
//! `detach` (CNI DEL, then the namespace) works from any process later, after a supervisor
//! crash too, and a half-finished attach is undone by the same code.
//!
//! DNS: a pod's resolvers are the CNI result's `dns.nameservers`, else the host's upstream
//! ones ([`resolv::host_dns_servers`]). We do not fall back to the bridge's gateway: no
//! resolver listens there. A pod with an empty list has no DNS, which the caller reports.
//!
//! Published ports are a proxy in the supervisor ([`ports`]; why not the portmap plugin:
//! see there).

pub mod cni;
pub mod conflist;
pub mod netns;
pub mod ports;
pub mod resolv;
pub mod result;

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use cni::{CniError, DEFAULT_PLUGIN_DIR, PLUGIN_PATH_ENV, POD_IFNAME};
pub use conflist::{ConflistError, DEFAULT_CONF_DIR, DEFAULT_NETWORK, NetworkConfigList};
pub use netns::{DEFAULT_NETNS_DIR, NetnsError, POD_NETNS_PREFIX};
pub use resolv::host_dns_servers;
pub use result::{Cidr, CniResult, Interface, IpConfig, Route};

/// Version of the state file's layout.
const STATE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Conflist(#[from] ConflistError),
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("pod id {0:?} cannot name a CNI container: use letters, digits, '_', '.' and '-' only")]
    BadPodId(String),
    #[error(
        "{0} exists: this pod's network is attached already (or was not cleaned up); detach it \
         first (`peapod rm -f` does)"
    )]
    AlreadyAttached(PathBuf),
    #[error("network state file {path}: {what}: {source}")]
    State {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "network state file {path} is damaged ({reason}); the pod's network must be cleaned \
         up by hand (`ip netns delete`, the IPAM lease) and the file removed"
    )]
    BadState { path: PathBuf, reason: String },
    #[error(
        "CNI network {network}: the result has no interface {ifname} inside the pod's namespace: {result}"
    )]
    NoPodInterface {
        network: String,
        ifname: String,
        result: String,
    },
    #[error("CNI network {network}: the result cannot be read: {reason}")]
    BadResult { network: String, reason: String },
    #[error("cannot read the MAC and MTU of {ifname} in {netns}: {source}")]
    Inspect {
        ifname: String,
        netns: PathBuf,
        #[source]
        source: Box<crate::netlink::NetlinkError>,
    },
}

/// Everything [`attach`] needs for one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkSetup {
    /// The CNI network's name (the conflist's `name`).
    pub name: String,
    /// Where the `*.conflist` files are.
    pub conf_dir: PathBuf,
    /// Where the plugins are (CNI_PATH; searched in order).
    pub plugin_dirs: Vec<PathBuf>,
    /// Where the pod's namespace is made (`ip netns` looks in /run/netns).
    pub netns_dir: PathBuf,
    /// The pod's network state file (in its run directory); must not exist yet.
    pub state_file: PathBuf,
    /// The pod's id: the namespace is `peapod-<id>`, the CNI container id is the id.
    pub pod_id: String,
    /// Values for the plugins' capabilities (`runtimeConfig`); usually empty.
    pub runtime_config: Map<String, Value>,
}

impl NetworkSetup {
    /// The default network with the default directories (plugins from `PEAPOD_CNI_PATH`
    /// when set).
    pub fn new(pod_id: &str, state_file: &Path) -> Self {
        NetworkSetup {
            name: DEFAULT_NETWORK.to_string(),
            conf_dir: PathBuf::from(DEFAULT_CONF_DIR),
            plugin_dirs: cni::default_plugin_dirs(),
            netns_dir: PathBuf::from(DEFAULT_NETNS_DIR),
            state_file: state_file.to_path_buf(),
            pod_id: pod_id.to_string(),
            runtime_config: Map::new(),
        }
    }
}

/// A pod's attached network: its namespace and what the guest needs to take the veth's
/// place (MAC, MTU, addresses, gateway, routes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodAttachment {
    /// The CNI network's name.
    pub network: String,
    /// The pod's network namespace (a bind mount, e.g. /run/netns/peapod-<id>).
    pub netns: PathBuf,
    /// The veth's name inside the namespace (`eth0`).
    pub ifname: String,
    /// The veth's MAC, read in the namespace (the guest's NIC uses it).
    pub mac: [u8; 6],
    /// The veth's MTU, read in the namespace.
    pub mtu: u32,
    /// The CNI ADD result.
    pub result: CniResult,
}

impl PodAttachment {
    /// The pod interface's addresses with their prefix lengths.
    pub fn addresses(&self) -> Vec<Cidr> {
        self.result
            .addresses_of(&self.ifname)
            .into_iter()
            .map(|ip| ip.address)
            .collect()
    }

    /// The first IPv4 gateway of the pod's addresses, else the first gateway of any family.
    pub fn gateway(&self) -> Option<IpAddr> {
        let gateways: Vec<IpAddr> = self
            .result
            .addresses_of(&self.ifname)
            .into_iter()
            .filter_map(|ip| ip.gateway)
            .collect();
        gateways
            .iter()
            .find(|g| g.is_ipv4())
            .or(gateways.first())
            .copied()
    }

    /// The routes the guest should add (a route without `gw` goes through
    /// [`PodAttachment::gateway`], as the bridge plugin means its default route).
    pub fn routes(&self) -> &[Route] {
        &self.result.routes
    }

    /// `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        result::format_mac(&self.mac)
    }

    /// The pod's resolvers: the result's, else the host's upstream ones (see the module's
    /// doc); may be empty.
    pub fn nameservers(&self) -> Vec<IpAddr> {
        let from_result: Vec<IpAddr> = self
            .result
            .dns
            .nameservers
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        if from_result.is_empty() {
            host_dns_servers()
        } else {
            from_result
        }
    }
}

/// What the state file holds: enough to run DEL and remove the namespace later.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachState {
    version: u32,
    pod_id: String,
    netns: PathBuf,
    ifname: String,
    plugin_dirs: Vec<PathBuf>,
    runtime_config: Map<String, Value>,
    /// The conflist exactly as ADD used it.
    conflist: Value,
    /// The ADD result as the last plugin printed it (`None` until ADD succeeded).
    result: Option<Value>,
}

/// Creates the pod's namespace and runs CNI ADD in it. On failure everything done so far
/// is undone (DEL, namespace removed, state file removed): no half-attached pod remains.
pub fn attach(setup: &NetworkSetup) -> Result<PodAttachment, NetworkError> {
    if !conflist::valid_name(&setup.pod_id) {
        return Err(NetworkError::BadPodId(setup.pod_id.clone()));
    }
    if setup.state_file.exists() {
        return Err(NetworkError::AlreadyAttached(setup.state_file.clone()));
    }
    let list = conflist::load(&setup.conf_dir, &setup.name)?;
    let netns_name = format!("{POD_NETNS_PREFIX}{}", setup.pod_id);
    let mut state = AttachState {
        version: STATE_VERSION,
        pod_id: setup.pod_id.clone(),
        netns: setup.netns_dir.join(&netns_name),
        ifname: POD_IFNAME.to_string(),
        plugin_dirs: setup.plugin_dirs.clone(),
        runtime_config: setup.runtime_config.clone(),
        conflist: list.raw.clone(),
        result: None,
    };
    // First the record, then the changes: whatever happens next, detach can find them.
    write_state(&setup.state_file, &state)?;
    let netns = match netns::create(&setup.netns_dir, &netns_name) {
        Ok(path) => path,
        Err(err) => {
            let _ = std::fs::remove_file(&setup.state_file);
            return Err(err.into());
        }
    };
    match add_and_inspect(&list, &mut state, &setup.state_file) {
        Ok((result, mac, mtu)) => Ok(PodAttachment {
            network: list.name,
            netns,
            ifname: state.ifname,
            mac,
            mtu,
            result,
        }),
        Err(err) => {
            undo_attach(&list, &state, &setup.state_file);
            Err(err)
        }
    }
}

/// Undoes a failed attach whatever fails on the way: DEL (which releases what the plugins
/// made), then the namespace and the state file, so that no half-attached pod remains.
fn undo_attach(list: &NetworkConfigList, state: &AttachState, state_file: &Path) {
    let pod = &state.pod_id;
    if let Err(err) = cni::del(
        list,
        &invocation(state, cni::CniCommand::Del),
        state.result.as_ref(),
    ) {
        tracing::warn!("undoing the network attach of pod {pod}: {err}");
    }
    if let Err(err) = netns::remove(&state.netns) {
        tracing::warn!("undoing the network attach of pod {pod}: {err}");
    }
    let _ = std::fs::remove_file(state_file);
}

fn add_and_inspect(
    list: &NetworkConfigList,
    state: &mut AttachState,
    state_file: &Path,
) -> Result<(CniResult, [u8; 6], u32), NetworkError> {
    let raw = cni::add(list, &invocation(state, cni::CniCommand::Add))?;
    state.result = Some(raw.clone());
    write_state(state_file, state)?;
    let result: CniResult =
        serde_json::from_value(raw.clone()).map_err(|e| NetworkError::BadResult {
            network: list.name.clone(),
            reason: e.to_string(),
        })?;
    if result.sandbox_interface(&state.ifname).is_none() {
        return Err(NetworkError::NoPodInterface {
            network: list.name.clone(),
            ifname: state.ifname.clone(),
            result: raw.to_string(),
        });
    }
    let ifname = state.ifname.clone();
    let (mac, mtu) =
        netns::in_netns(&state.netns, || netns::interface_mac_mtu(&ifname))?.map_err(|source| {
            NetworkError::Inspect {
                ifname: ifname.clone(),
                netns: state.netns.clone(),
                source: Box::new(source),
            }
        })?;
    Ok((result, mac, mtu))
}

/// Runs CNI DEL for the pod whose state file this is and removes its namespace and the
/// file. A missing state file means there is nothing to do; a namespace that is gone
/// already still gets DEL (it releases the IPAM lease). When DEL fails, the namespace and
/// the file stay, so that a retry can finish the job.
pub fn detach(state_file: &Path) -> Result<(), NetworkError> {
    let text = match std::fs::read(state_file) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(NetworkError::State {
                path: state_file.to_path_buf(),
                what: "read",
                source,
            });
        }
    };
    let bad = |reason: String| NetworkError::BadState {
        path: state_file.to_path_buf(),
        reason,
    };
    let state: AttachState = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    if state.version != STATE_VERSION {
        return Err(bad(format!("layout version {}", state.version)));
    }
    let list = NetworkConfigList::from_value(state.conflist.clone(), state_file)?;
    teardown(&list, &state, state_file)
}

/// DEL, then the namespace, then the state file; stops at the first failure.
fn teardown(
    list: &NetworkConfigList,
    state: &AttachState,
    state_file: &Path,
) -> Result<(), NetworkError> {
    cni::del(
        list,
        &invocation(state, cni::CniCommand::Del),
        state.result.as_ref(),
    )?;
    netns::remove(&state.netns)?;
    match std::fs::remove_file(state_file) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetworkError::State {
            path: state_file.to_path_buf(),
            what: "remove",
            source,
        }),
    }
}

fn invocation(state: &AttachState, command: cni::CniCommand) -> cni::Invocation<'_> {
    cni::Invocation {
        command,
        container_id: &state.pod_id,
        netns: &state.netns,
        ifname: &state.ifname,
        plugin_dirs: &state.plugin_dirs,
        runtime_config: &state.runtime_config,
        timeout: cni::PLUGIN_TIMEOUT,
    }
}

/// Writes the state file whole (temp file + rename), so a crash leaves the old one or the
/// new one.
fn write_state(path: &Path, state: &AttachState) -> Result<(), NetworkError> {
    let err = |what| {
        move |source| NetworkError::State {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(err("create its directory"))?;
    let temp = tempfile::NamedTempFile::new_in(dir).map_err(err("create"))?;
    let json = serde_json::to_vec_pretty(state).expect("the state serializes");
    std::fs::write(temp.path(), json).map_err(err("write"))?;
    temp.persist(path).map_err(|e| err("rename")(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests;
