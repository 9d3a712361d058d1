//! The messages: [`Request`] (host → agent), [`Response`] (agent → host), the stdio
//! [`StreamHello`], and the specs they carry. All serde types refuse unknown fields; enums
//! are externally tagged in `snake_case` (`{"start_container":{"container_id":"web"}}`).
//! [`ContainerSpec::validate`] and friends check what the agent must not take on trust
//! (ids become path components, paths must be absolute and free of `..`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Longest container or exec id.
pub const MAX_ID_LEN: usize = 64;

/// Longest entropy seed the host may send with [`SandboxSpec`].
pub const MAX_ENTROPY_SEED: usize = 512;

/// Longest file name in a [`SandboxVolumeKind::Secret`] (a Linux file name's limit).
pub const MAX_FILE_NAME_LEN: usize = 255;

/// A request from the host. Every request gets exactly one [`Response`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The handshake, first on every control connection. Its shape never changes.
    Hello { version: u32 },
    /// Pod-wide settings, once before the first container. → `Ok`.
    CreateSandbox(SandboxSpec),
    /// Mounts the rootfs, creates namespaces and the cgroup, and stops right before
    /// executing the process (like `runc create`). → `Ok`.
    CreateContainer(ContainerSpec),
    /// Executes the container's process. → `Started`.
    StartContainer { container_id: String },
    /// Starts one more process inside a running container's namespaces and cgroup.
    /// → `Started`.
    Exec {
        container_id: String,
        exec_id: String,
        process: ProcessSpec,
    },
    /// Blocks until the process has exited. → `Exited`.
    Wait { process: ProcessRef },
    /// Sends a signal (a Linux signal number) to the process. → `Ok`.
    Signal { process: ProcessRef, signal: i32 },
    /// Reads the container's cgroup counters. → `Stats`.
    Stats { container_id: String },
    /// Kills what is left of the container, unmounts it, removes its cgroup. → `Ok`.
    RemoveContainer { container_id: String },
    /// Answers `Ok`, then syncs and reboots the guest, which ends the VM.
    Shutdown,
}

/// The agent's answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// Handshake answer: the agent's protocol version and build.
    Hello {
        version: u32,
        agent: String,
    },
    Ok,
    /// The process runs; `pid` is its pid in the guest's (the agent's) pid namespace.
    Started {
        pid: u32,
    },
    Exited(ExitStatus),
    Stats(ContainerStats),
    Error(WireError),
}

/// A typed error sent to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(deny_unknown_fields)]
#[error("{message}")]
pub struct WireError {
    pub kind: ErrorKind,
    /// Human-readable, names the thing and the fix where there is one.
    pub message: String,
}

impl WireError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        WireError {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ErrorKind {
    /// Host and agent speak different protocol versions.
    VersionMismatch { agent: u32, host: u32 },
    /// A request came before `Hello`.
    HandshakeRequired,
    /// A malformed or invalid request (bad id, relative path, zero limit, ...).
    InvalidArgument,
    /// No such container, exec or process.
    NotFound,
    /// The id is taken (container, exec, or an attached stream).
    AlreadyExists,
    /// Not possible in the current state (start twice, exec into a stopped container, a
    /// container before the sandbox, ...).
    InvalidState,
    /// Setting up the container failed in the guest (mount, namespace, cgroup, exec).
    Setup,
    /// Anything else that failed inside the agent.
    Internal,
}

/// Pod-wide settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// The pod's hostname, also each container's unless it sets its own.
    pub hostname: String,
    /// Written to the pod's `/etc/resolv.conf` (`nameserver` lines).
    #[serde(default)]
    pub dns_servers: Vec<IpAddr>,
    /// `search` domains of `/etc/resolv.conf`.
    #[serde(default)]
    pub dns_search: Vec<String>,
    /// Extra `/etc/hosts` lines (`ip` and names); localhost lines are always there.
    #[serde(default)]
    pub hosts: Vec<HostEntry>,
    /// Random bytes from the host, credited to the guest's entropy pool.
    #[serde(default)]
    pub entropy_seed: Vec<u8>,
    /// Namespaced sysctls (`net.*`, `kernel.shm*`, ...), written under `/proc/sys`.
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// The pod's volumes, made when the sandbox is created and kept until the VM ends
    /// (removing or restarting a container leaves them alone); containers mount them with
    /// [`MountSource::PodVolume`]. Names are unique ids ([`validate_id`]).
    #[serde(default)]
    pub volumes: Vec<SandboxVolume>,
    /// The pod's network interfaces and routes (from the host's CNI result); none: the pod
    /// has only loopback.
    #[serde(default)]
    pub network: Option<SandboxNetwork>,
}

/// The pod's network as the guest must set it up in the pod's network namespace. Each
/// interface is a NIC the VMM gave the guest, found by its MAC: the host gives it the MAC
/// of the pod's veth (whose traffic it redirects to the NIC's tap), so the guest takes the
/// veth's place in the pod network with the same MAC, MTU, addresses and routes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxNetwork {
    #[serde(default)]
    pub interfaces: Vec<NetInterface>,
    /// Added after every interface is up, in this order (on-link routes before the ones
    /// through a gateway).
    #[serde(default)]
    pub routes: Vec<NetRoute>,
}

/// One of the pod's network interfaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetInterface {
    /// Its name in the pod, e.g. `eth0`.
    pub name: String,
    /// The guest NIC's MAC, `aa:bb:cc:dd:ee:ff`: how the agent finds it.
    pub mac: String,
    pub mtu: u32,
    #[serde(default)]
    pub addresses: Vec<IpCidr>,
}

/// An address with its prefix length (`10.88.0.5/16` is `{"ip":"10.88.0.5",
/// "prefix_len":16}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpCidr {
    pub ip: IpAddr,
    pub prefix_len: u8,
}

/// A route of the pod's main table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetRoute {
    /// `None`: the default route (of the gateway's address family).
    #[serde(default)]
    pub destination: Option<IpCidr>,
    /// `None`: the destination is on the interface's link.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// One of [`SandboxNetwork::interfaces`] by name; needed when there is no gateway.
    #[serde(default)]
    pub interface: Option<String>,
}

/// The smallest MTU of an IPv4 link (RFC 791) and the largest the kernel's interfaces
/// take.
pub const MIN_MTU: u32 = 68;
pub const MAX_MTU: u32 = 65535;

/// A volume of the pod, shared by the containers that mount it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxVolume {
    pub name: String,
    pub kind: SandboxVolumeKind,
}

/// What a pod volume is. Its `Debug` never shows a secret's bytes (only file names and
/// sizes), so a logged spec or request leaks nothing.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SandboxVolumeKind {
    /// Kubernetes' `emptyDir`: an empty tmpfs (mode 1777), at most `size_bytes` big when
    /// given (the guest's RAM otherwise).
    EmptyDir {
        #[serde(default)]
        size_bytes: Option<u64>,
    },
    /// A secret's keys as files: a tmpfs holding one file per entry, mode 0400 and owned
    /// by root, in a directory of mode 0555; the tmpfs is read-only once written and every
    /// mount of it is read-only. The bytes travel as standard base64 strings; the whole
    /// request must fit in one frame ([`crate::protocol::MAX_FRAME_LEN`], 1 MiB, about
    /// 750 KiB of secret bytes).
    Secret {
        #[serde(with = "base64_files")]
        files: BTreeMap<String, Vec<u8>>,
    },
}

impl std::fmt::Debug for SandboxVolumeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SandboxVolumeKind::EmptyDir { size_bytes } => f
                .debug_struct("EmptyDir")
                .field("size_bytes", size_bytes)
                .finish(),
            SandboxVolumeKind::Secret { files } => {
                struct Redacted(usize);
                impl std::fmt::Debug for Redacted {
                    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        write!(f, "<{} bytes redacted>", self.0)
                    }
                }
                let sizes: BTreeMap<&str, Redacted> = files
                    .iter()
                    .map(|(name, bytes)| (name.as_str(), Redacted(bytes.len())))
                    .collect();
                f.debug_struct("Secret").field("files", &sizes).finish()
            }
        }
    }
}

/// Secret files as `{"name": "<standard base64>"}`. A bad string is refused without
/// quoting it (it is secret material).
mod base64_files {
    use std::collections::BTreeMap;

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        files: &BTreeMap<String, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(
            files
                .iter()
                .map(|(name, bytes)| (name, STANDARD.encode(bytes))),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(name, text)| match STANDARD.decode(text.as_bytes()) {
                Ok(bytes) => Ok((name, bytes)),
                Err(_) => Err(D::Error::custom(format!(
                    "secret file {name:?} is not standard base64"
                ))),
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub ip: IpAddr,
    pub names: Vec<String>,
}

/// An OCI-runtime-like container spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    pub id: String,
    /// Defaults to the sandbox's hostname.
    #[serde(default)]
    pub hostname: Option<String>,
    pub rootfs: RootfsSpec,
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    pub process: ProcessSpec,
    #[serde(default)]
    pub resources: Resources,
    /// `docker run --privileged` (Kubernetes' `securityContext.privileged`): the process
    /// keeps every capability and gets no seccomp filter and no `no_new_privs`; the
    /// container's `/sys` is writable and nothing in `/proc` is masked (see
    /// [`crate::agent::hardening`]). Since version 4; default false.
    #[serde(default)]
    pub privileged: bool,
}

/// The container image, a read-only filesystem on a guest block device; writes go to a
/// tmpfs overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsSpec {
    /// Guest block device, e.g. `/dev/vdb` (for the host runtime, which never sends it over
    /// the wire: the unpacked image's directory; see [`ContainerSpec::validate_with_image_dir`]).
    pub device: PathBuf,
    pub fs_type: FsType,
    /// Kubernetes' `readOnlyRootFilesystem`: the container's `/` is read-only (writes fail
    /// with `EROFS`); only its mounts (volumes, `/dev`, `/dev/shm`) are writable. No tmpfs
    /// at `/tmp` is implied: mount one if the process needs it.
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsType {
    Erofs,
    Ext4,
}

impl FsType {
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Erofs => "erofs",
            FsType::Ext4 => "ext4",
        }
    }
}

/// An extra mount inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// Absolute path inside the container; created if missing.
    pub destination: PathBuf,
    pub source: MountSource,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MountSource {
    /// A fresh tmpfs (`emptyDir` with medium Memory).
    Tmpfs { size_bytes: Option<u64> },
    /// A filesystem on a guest block device (a volume disk).
    Block { device: PathBuf, fs_type: FsType },
    /// A bind mount of a pod volume ([`SandboxSpec::volumes`]), or of `sub_path` inside it
    /// (relative, no `.` or `..`; made if missing in an `emptyDir`; a file's name in a
    /// secret, mounted as that one file). Every container mounting one `emptyDir` sees the
    /// same files. Secrets are always mounted read-only.
    PodVolume {
        name: String,
        #[serde(default)]
        sub_path: Option<String>,
    },
}

/// A process to run: the container's own or an exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// `args[0]` is the program: a path, or a name looked up in the `PATH` of `env`.
    pub args: Vec<String>,
    /// `NAME=value` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// Absolute working directory inside the container.
    #[serde(default = "root_dir")]
    pub cwd: PathBuf,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// A pseudo-terminal instead of pipes: one `pty` stream, no stdin/stdout/stderr ones.
    #[serde(default)]
    pub tty: bool,
    /// Keep stdin open for a `stdin` stream; otherwise it is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
}

fn root_dir() -> PathBuf {
    PathBuf::from("/")
}

/// cgroup v2 limits of a container (all its processes, execs included).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// `memory.max` in bytes.
    #[serde(default)]
    pub memory_max: Option<u64>,
    /// `cpu.max`: `quota_us` of CPU time per `period_us`.
    #[serde(default)]
    pub cpu: Option<CpuMax>,
    /// `pids.max`.
    #[serde(default)]
    pub pids_max: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuMax {
    pub quota_us: u64,
    pub period_us: u64,
}

/// Names a process: a container's own (`exec_id` none) or one of its execs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessRef {
    pub container_id: String,
    #[serde(default)]
    pub exec_id: Option<String>,
}

impl ProcessRef {
    pub fn container(id: impl Into<String>) -> Self {
        ProcessRef {
            container_id: id.into(),
            exec_id: None,
        }
    }

    pub fn exec(container_id: impl Into<String>, exec_id: impl Into<String>) -> Self {
        ProcessRef {
            container_id: container_id.into(),
            exec_id: Some(exec_id.into()),
        }
    }
}

impl std::fmt::Display for ProcessRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.exec_id {
            None => write!(f, "container {}", self.container_id),
            Some(e) => write!(f, "exec {e} of container {}", self.container_id),
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitStatus {
    /// Shell convention: the exit code, or 128 + the signal number.
    pub code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// The container's cgroup recorded an OOM kill while this process ran and the process
    /// died of SIGKILL.
    pub oom_killed: bool,
}

impl ExitStatus {
    pub fn exited(code: i32) -> Self {
        ExitStatus {
            code,
            signal: None,
            oom_killed: false,
        }
    }

    pub fn signaled(signal: i32) -> Self {
        ExitStatus {
            code: 128 + signal,
            signal: Some(signal),
            oom_killed: false,
        }
    }
}

/// cgroup v2 counters of one container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerStats {
    /// `memory.current`, bytes.
    pub memory_current: u64,
    /// `memory.peak`, bytes (Linux 5.19+).
    pub memory_peak: Option<u64>,
    /// `cpu.stat` `usage_usec`, `user_usec`, `system_usec`.
    pub cpu_usage_usec: u64,
    pub cpu_user_usec: u64,
    pub cpu_system_usec: u64,
    /// `pids.current`.
    pub pids_current: u64,
    /// `memory.events` `oom_kill`.
    pub oom_kills: u64,
}

/// The one frame a host sends first on a stdio connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamHello {
    pub version: u32,
    pub process: ProcessRef,
    pub stream: StreamKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
    Pty,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Stdin => "stdin",
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
            StreamKind::Pty => "pty",
        }
    }
}

/// Checks an id that becomes a path component and a cgroup name: 1 to 64 of
/// `[A-Za-z0-9_.-]`, starting with a letter or digit.
pub fn validate_id(what: &str, id: &str) -> Result<(), WireError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} {id:?} is not a valid id: use 1 to {MAX_ID_LEN} letters, digits, '_', '.' \
             or '-', starting with a letter or digit"
        )))
    }
}

/// Checks an absolute, normalized path without `.` or `..` components.
pub fn validate_abs_path(what: &str, path: &Path) -> Result<(), WireError> {
    let ok = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !path.as_os_str().as_encoded_bytes().contains(&0);
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} {} must be an absolute path without '.' or '..'",
            path.display()
        )))
    }
}

fn invalid(message: String) -> WireError {
    WireError::new(ErrorKind::InvalidArgument, message)
}

fn validate_device(what: &str, device: &Path) -> Result<(), WireError> {
    validate_abs_path(what, device)?;
    if !device.starts_with("/dev") {
        return Err(invalid(format!(
            "{what} {} must be a block device under /dev (e.g. /dev/vdb)",
            device.display()
        )));
    }
    Ok(())
}

fn no_nul(what: &str, s: &str) -> Result<(), WireError> {
    if s.contains('\0') {
        return Err(invalid(format!("{what} {s:?} contains a NUL byte")));
    }
    Ok(())
}

impl SandboxSpec {
    pub fn validate(&self) -> Result<(), WireError> {
        validate_hostname(&self.hostname)?;
        if self.entropy_seed.len() > MAX_ENTROPY_SEED {
            return Err(invalid(format!(
                "entropy_seed has {} bytes, at most {MAX_ENTROPY_SEED} are accepted",
                self.entropy_seed.len()
            )));
        }
        for name in &self.dns_search {
            validate_hostname(name)?;
        }
        for entry in &self.hosts {
            for name in &entry.names {
                validate_hostname(name)?;
            }
        }
        for (key, value) in &self.sysctls {
            let ok = !key.is_empty()
                && key.split('.').all(|part| {
                    !part.is_empty()
                        && part
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                });
            if !ok {
                return Err(invalid(format!(
                    "sysctl {key:?} is not a dotted name like net.ipv4.ip_forward"
                )));
            }
            no_nul("sysctl value", value)?;
        }
        let mut names = std::collections::BTreeSet::new();
        for volume in &self.volumes {
            volume.validate()?;
            if !names.insert(volume.name.as_str()) {
                return Err(invalid(format!(
                    "pod volume {:?} is named twice: volume names are unique in a pod",
                    volume.name
                )));
            }
        }
        if let Some(network) = &self.network {
            network.validate()?;
        }
        Ok(())
    }
}

impl IpCidr {
    fn max_prefix(&self) -> u8 {
        if self.ip.is_ipv4() { 32 } else { 128 }
    }

    /// The address with its host bits cleared.
    pub fn network(&self) -> IpAddr {
        let len = u32::from(self.prefix_len.min(self.max_prefix()));
        match self.ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }

    /// Whether `ip` lies in this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.ip.is_ipv4()
            && IpCidr {
                ip,
                prefix_len: self.prefix_len,
            }
            .network()
                == self.network()
    }

    fn validate(&self, what: &str) -> Result<(), WireError> {
        if self.prefix_len > self.max_prefix() {
            return Err(invalid(format!(
                "{what} {self}: the prefix length is at most {}",
                self.max_prefix()
            )));
        }
        Ok(())
    }
}

impl std::fmt::Display for IpCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix_len)
    }
}

/// An address an interface or a gateway can have: not unspecified, loopback, multicast or
/// broadcast.
fn validate_unicast(what: &str, ip: IpAddr) -> Result<(), WireError> {
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || broadcast {
        return Err(invalid(format!(
            "{what} {ip} must be a unicast address (not unspecified, loopback, multicast or \
             broadcast)"
        )));
    }
    Ok(())
}

impl SandboxNetwork {
    pub fn validate(&self) -> Result<(), WireError> {
        let mut names = std::collections::BTreeSet::new();
        let mut macs = std::collections::BTreeSet::new();
        for iface in &self.interfaces {
            let mac = iface.validate()?;
            if !names.insert(iface.name.as_str()) {
                return Err(invalid(format!(
                    "interface {:?} is named twice: interface names are unique in a pod",
                    iface.name
                )));
            }
            if !macs.insert(mac) {
                return Err(invalid(format!(
                    "MAC {mac} is given to two interfaces: each NIC has its own"
                )));
            }
        }
        for route in &self.routes {
            route.validate(&names)?;
        }
        Ok(())
    }
}

impl NetInterface {
    /// Checks the interface and returns its MAC.
    pub fn validate(&self) -> Result<crate::netlink::MacAddr, WireError> {
        if !crate::netlink::link::valid_ifname(&self.name) || self.name == "lo" {
            return Err(invalid(format!(
                "interface name {:?} must be 1 to 15 bytes without '/', ':' or spaces, and \
                 not lo",
                self.name
            )));
        }
        let mac: crate::netlink::MacAddr = self
            .mac
            .parse()
            .map_err(|e| invalid(format!("interface {}: {e}", self.name)))?;
        if mac.is_multicast() || mac.is_zero() {
            return Err(invalid(format!(
                "interface {}: MAC {mac} is not a unicast address (the first byte must be \
                 even, and not all zero)",
                self.name
            )));
        }
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(invalid(format!(
                "interface {}: MTU {} is outside {MIN_MTU}..={MAX_MTU}",
                self.name, self.mtu
            )));
        }
        for addr in &self.addresses {
            addr.validate(&format!("interface {} address", self.name))?;
            validate_unicast(&format!("interface {} address", self.name), addr.ip)?;
        }
        Ok(mac)
    }
}

impl NetRoute {
    fn validate(&self, interfaces: &std::collections::BTreeSet<&str>) -> Result<(), WireError> {
        let shown = self.to_string();
        if let Some(dst) = &self.destination {
            dst.validate("route destination")?;
            if dst.network() != dst.ip {
                return Err(invalid(format!(
                    "route {shown}: the destination has host bits set (did you mean {}/{}?)",
                    dst.network(),
                    dst.prefix_len
                )));
            }
        }
        if let Some(gw) = self.gateway {
            validate_unicast(&format!("route {shown}: gateway"), gw)?;
            if let Some(dst) = &self.destination
                && dst.ip.is_ipv4() != gw.is_ipv4()
            {
                return Err(invalid(format!(
                    "route {shown}: the gateway and the destination are of different \
                     address families"
                )));
            }
        }
        match &self.interface {
            Some(name) if !interfaces.contains(name.as_str()) => {
                return Err(invalid(format!(
                    "route {shown}: interface {name:?} is not one of the pod's interfaces"
                )));
            }
            None if self.gateway.is_none() => {
                return Err(invalid(format!(
                    "route {shown}: a route without a gateway needs an interface"
                )));
            }
            _ => {}
        }
        if self.destination.is_none() && self.gateway.is_none() {
            return Err(invalid(format!(
                "route {shown}: a default route needs a gateway (it says the address family)"
            )));
        }
        Ok(())
    }
}

impl std::fmt::Display for NetRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.destination {
            Some(d) => write!(f, "{d}")?,
            None => write!(f, "default")?,
        }
        if let Some(g) = &self.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(i) = &self.interface {
            write!(f, " dev {i}")?;
        }
        Ok(())
    }
}

impl SandboxVolume {
    pub fn validate(&self) -> Result<(), WireError> {
        validate_id("pod volume name", &self.name)?;
        match &self.kind {
            SandboxVolumeKind::EmptyDir {
                size_bytes: Some(0),
            } => Err(invalid(format!(
                "emptyDir volume {}: size_bytes must be above 0",
                self.name
            ))),
            SandboxVolumeKind::EmptyDir { .. } => Ok(()),
            SandboxVolumeKind::Secret { files } => {
                for name in files.keys() {
                    validate_file_name(&self.name, name)?;
                }
                Ok(())
            }
        }
    }
}

/// A secret's file name: one path component, 1 to 255 bytes, no `/` or NUL, not `.` or `..`.
pub fn validate_file_name(volume: &str, name: &str) -> Result<(), WireError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_FILE_NAME_LEN
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0']);
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "secret volume {volume}: file name {name:?} must be 1 to {MAX_FILE_NAME_LEN} bytes \
             without '/' or NUL, and not '.' or '..'"
        )))
    }
}

/// A path inside a pod volume: relative, only plain components (no `.`, `..`, empty or
/// NUL).
pub fn validate_sub_path(volume: &str, sub_path: &str) -> Result<(), WireError> {
    let path = Path::new(sub_path);
    let ok = !sub_path.is_empty()
        && !sub_path.contains('\0')
        && sub_path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "sub_path {sub_path:?} of pod volume {volume} must be a relative path without \
             '.', '..' or empty parts"
        )))
    }
}

/// A hostname or DNS name: 1 to 253 bytes of letters, digits, '-', '.'.
pub fn validate_hostname(name: &str) -> Result<(), WireError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "hostname {name:?} must be 1 to 253 letters, digits, '-' or '.'"
        )))
    }
}

impl ContainerSpec {
    /// Checks the spec as the wire requires: its rootfs `device` is a block device.
    pub fn validate(&self) -> Result<(), WireError> {
        self.validate_rootfs_as(false)
    }

    /// [`ContainerSpec::validate`], but the rootfs `device` names an unpacked image's
    /// directory (absolute, plain): how the host runtime's pod layout reads it
    /// ([`crate::agent::layout::RootfsSource::HostDirectory`]). Such a spec never goes
    /// over the wire, which reads `device` as a block device in every version.
    pub fn validate_with_image_dir(&self) -> Result<(), WireError> {
        self.validate_rootfs_as(true)
    }

    fn validate_rootfs_as(&self, image_dir: bool) -> Result<(), WireError> {
        validate_id("container id", &self.id)?;
        if let Some(h) = &self.hostname {
            validate_hostname(h)?;
        }
        if image_dir {
            validate_abs_path("rootfs image directory", &self.rootfs.device)?;
        } else {
            validate_device("rootfs device", &self.rootfs.device)?;
        }
        for m in &self.mounts {
            validate_abs_path("mount destination", &m.destination)?;
            if m.destination == Path::new("/") {
                return Err(invalid(
                    "a mount cannot replace the container's / (use rootfs)".into(),
                ));
            }
            match &m.source {
                MountSource::Tmpfs {
                    size_bytes: Some(0),
                } => {
                    return Err(invalid(format!(
                        "tmpfs at {}: size_bytes must be above 0",
                        m.destination.display()
                    )));
                }
                MountSource::Tmpfs { .. } => {}
                // Where the image is a host directory, so is a Block mount's device (the
                // layout binds it read-only and refuses /dev).
                MountSource::Block { device, .. } if image_dir => {
                    validate_abs_path("volume host directory", device)?
                }
                MountSource::Block { device, .. } => validate_device("volume device", device)?,
                MountSource::PodVolume { name, sub_path } => {
                    validate_id("pod volume name", name)?;
                    if let Some(sub) = sub_path {
                        validate_sub_path(name, sub)?;
                    }
                }
            }
        }
        self.process.validate()?;
        self.resources.validate()
    }
}

impl ProcessSpec {
    pub fn validate(&self) -> Result<(), WireError> {
        if self.args.is_empty() || self.args[0].is_empty() {
            return Err(invalid("process args must name a program (args[0])".into()));
        }
        // Arguments and environment values may hold secrets: errors name their position
        // or variable, never their value.
        for (i, a) in self.args.iter().enumerate() {
            if a.contains('\0') {
                return Err(invalid(format!("argument {i} contains a NUL byte")));
            }
        }
        for (i, e) in self.env.iter().enumerate() {
            match e.split_once('=') {
                Some((name, _)) if !name.is_empty() && !e.contains('\0') => {}
                Some((name, _)) if !name.is_empty() => {
                    return Err(invalid(format!(
                        "environment variable {name:?} contains a NUL byte"
                    )));
                }
                _ => {
                    return Err(invalid(format!(
                        "environment entry {i} must be NAME=value (its text is not shown: it \
                         may be secret)"
                    )));
                }
            }
        }
        validate_abs_path("working directory", &self.cwd)
    }
}

impl Resources {
    pub fn validate(&self) -> Result<(), WireError> {
        if self.memory_max == Some(0) {
            return Err(invalid("memory_max must be above 0 bytes".into()));
        }
        if self.pids_max == Some(0) {
            return Err(invalid("pids_max must be above 0".into()));
        }
        if let Some(cpu) = self.cpu {
            // The kernel's own bounds for cpu.max.
            if !(1_000..=1_000_000).contains(&cpu.period_us) || cpu.quota_us < 1_000 {
                return Err(invalid(format!(
                    "cpu quota {} us per period {} us: the period must be 1000..=1000000 us \
                     and the quota at least 1000 us",
                    cpu.quota_us, cpu.period_us
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::{decode_frame, encode_frame};

    pub(crate) fn sample_process() -> ProcessSpec {
        ProcessSpec {
            args: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["PATH=/usr/bin:/bin".into()],
            cwd: "/".into(),
            uid: 1000,
            gid: 1000,
            additional_gids: vec![10],
            tty: false,
            stdin: true,
        }
    }

    pub(crate) fn sample_container(id: &str) -> ContainerSpec {
        ContainerSpec {
            id: id.into(),
            hostname: None,
            rootfs: RootfsSpec {
                device: "/dev/vdb".into(),
                fs_type: FsType::Erofs,
                read_only: false,
            },
            mounts: vec![
                MountSpec {
                    destination: "/scratch".into(),
                    source: MountSource::Tmpfs {
                        size_bytes: Some(1 << 20),
                    },
                    read_only: false,
                },
                MountSpec {
                    destination: "/data".into(),
                    source: MountSource::Block {
                        device: "/dev/vdc".into(),
                        fs_type: FsType::Ext4,
                    },
                    read_only: true,
                },
                MountSpec {
                    destination: "/cache".into(),
                    source: MountSource::PodVolume {
                        name: "cache".into(),
                        sub_path: Some("web/tmp".into()),
                    },
                    read_only: false,
                },
                MountSpec {
                    destination: "/etc/tls/key.pem".into(),
                    source: MountSource::PodVolume {
                        name: "tls".into(),
                        sub_path: Some("key.pem".into()),
                    },
                    read_only: true,
                },
            ],
            process: sample_process(),
            resources: Resources {
                memory_max: Some(64 << 20),
                cpu: Some(CpuMax {
                    quota_us: 50_000,
                    period_us: 100_000,
                }),
                pids_max: Some(128),
            },
            privileged: false,
        }
    }

    /// One volume of each kind; the secret holds text, binary and empty files.
    pub(crate) fn sample_volumes() -> Vec<SandboxVolume> {
        vec![
            SandboxVolume {
                name: "cache".into(),
                kind: SandboxVolumeKind::EmptyDir {
                    size_bytes: Some(16 << 20),
                },
            },
            SandboxVolume {
                name: "scratch".into(),
                kind: SandboxVolumeKind::EmptyDir { size_bytes: None },
            },
            SandboxVolume {
                name: "tls".into(),
                kind: SandboxVolumeKind::Secret {
                    files: [
                        ("key.pem".to_string(), b"-----BEGIN hunter2".to_vec()),
                        ("raw".to_string(), vec![0, 255, 10, 13, 0x80]),
                        ("empty".to_string(), vec![]),
                    ]
                    .into(),
                },
            },
        ]
    }

    /// A dual-stack eth0 with a default route, as a bridge CNI plugin would give it.
    pub(crate) fn sample_network() -> SandboxNetwork {
        let cidr = |ip: &str, prefix_len| IpCidr {
            ip: ip.parse().unwrap(),
            prefix_len,
        };
        SandboxNetwork {
            interfaces: vec![NetInterface {
                name: "eth0".into(),
                mac: "02:42:0a:58:00:05".into(),
                mtu: 1450,
                addresses: vec![cidr("10.88.0.5", 16), cidr("fd00:88::5", 64)],
            }],
            routes: vec![
                NetRoute {
                    destination: None,
                    gateway: Some("10.88.0.1".parse().unwrap()),
                    interface: Some("eth0".into()),
                },
                NetRoute {
                    destination: Some(cidr("fd00:99::", 64)),
                    gateway: None,
                    interface: Some("eth0".into()),
                },
            ],
        }
    }

    pub(crate) fn all_requests() -> Vec<Request> {
        vec![
            Request::Hello { version: 1 },
            Request::CreateSandbox(SandboxSpec {
                hostname: "pod".into(),
                dns_servers: vec!["10.0.2.3".parse().unwrap(), "::1".parse().unwrap()],
                dns_search: vec!["svc.cluster.local".into()],
                hosts: vec![HostEntry {
                    ip: "10.0.0.5".parse().unwrap(),
                    names: vec!["db".into()],
                }],
                entropy_seed: vec![1, 2, 3],
                sysctls: [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
                volumes: sample_volumes(),
                network: Some(sample_network()),
            }),
            Request::CreateContainer(sample_container("web")),
            Request::CreateContainer(ContainerSpec {
                rootfs: RootfsSpec {
                    read_only: true,
                    ..sample_container("ro").rootfs
                },
                mounts: vec![MountSpec {
                    destination: "/shared".into(),
                    source: MountSource::PodVolume {
                        name: "cache".into(),
                        sub_path: None,
                    },
                    read_only: true,
                }],
                ..sample_container("ro")
            }),
            Request::StartContainer {
                container_id: "web".into(),
            },
            Request::Exec {
                container_id: "web".into(),
                exec_id: "e1".into(),
                process: ProcessSpec {
                    tty: true,
                    ..sample_process()
                },
            },
            Request::Wait {
                process: ProcessRef::container("web"),
            },
            Request::Signal {
                process: ProcessRef::exec("web", "e1"),
                signal: 15,
            },
            Request::Stats {
                container_id: "web".into(),
            },
            Request::RemoveContainer {
                container_id: "web".into(),
            },
            Request::Shutdown,
        ]
    }

    pub(crate) fn all_responses() -> Vec<Response> {
        let mut v = vec![
            Response::Hello {
                version: 1,
                agent: "peapod-agent 0.1.0".into(),
            },
            Response::Ok,
            Response::Started { pid: 42 },
            Response::Exited(ExitStatus::exited(3)),
            Response::Exited(ExitStatus {
                oom_killed: true,
                ..ExitStatus::signaled(9)
            }),
            Response::Stats(ContainerStats {
                memory_current: 1,
                memory_peak: Some(2),
                cpu_usage_usec: 3,
                cpu_user_usec: 4,
                cpu_system_usec: 5,
                pids_current: 6,
                oom_kills: 7,
            }),
        ];
        for kind in [
            ErrorKind::VersionMismatch { agent: 1, host: 2 },
            ErrorKind::HandshakeRequired,
            ErrorKind::InvalidArgument,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::InvalidState,
            ErrorKind::Setup,
            ErrorKind::Internal,
        ] {
            v.push(Response::Error(WireError::new(kind, "why")));
        }
        v
    }

    fn round_trip<T>(msg: &T)
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let buf = encode_frame(msg).unwrap();
        let (back, used) = decode_frame::<T>(&buf).unwrap().unwrap();
        assert_eq!(&back, msg);
        assert_eq!(used, buf.len());
    }

    #[test]
    fn every_request_round_trips() {
        for r in all_requests() {
            round_trip(&r);
        }
    }

    #[test]
    fn every_response_round_trips() {
        for r in all_responses() {
            round_trip(&r);
        }
    }

    #[test]
    fn stream_hellos_round_trip() {
        for stream in [
            StreamKind::Stdin,
            StreamKind::Stdout,
            StreamKind::Stderr,
            StreamKind::Pty,
        ] {
            round_trip(&StreamHello {
                version: 1,
                process: ProcessRef::exec("web", "e1"),
                stream,
            });
        }
    }

    #[test]
    fn wire_shape_is_stable_for_the_handshake() {
        let json = serde_json::to_string(&Request::Hello { version: 1 }).unwrap();
        assert_eq!(json, r#"{"hello":{"version":1}}"#);
        let json = serde_json::to_string(&Response::Error(WireError::new(
            ErrorKind::VersionMismatch { agent: 1, host: 2 },
            "m",
        )))
        .unwrap();
        assert_eq!(
            json,
            r#"{"error":{"kind":{"version_mismatch":{"agent":1,"host":2}},"message":"m"}}"#
        );
    }

    #[test]
    fn defaults_fill_optional_fields() {
        let spec: ContainerSpec = serde_json::from_str(
            r#"{"id":"a","rootfs":{"device":"/dev/vdb","fs_type":"ext4"},
                "process":{"args":["/bin/true"]}}"#,
        )
        .unwrap();
        assert_eq!(spec.process.cwd, Path::new("/"));
        assert!(spec.mounts.is_empty());
        assert_eq!(spec.resources, Resources::default());
        assert!(!spec.privileged, "a version 3 spec is not privileged");
        spec.validate().unwrap();
    }

    #[test]
    fn privileged_travels_as_a_plain_flag() {
        let spec = ContainerSpec {
            privileged: true,
            ..sample_container("a")
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.ends_with(r#","privileged":true}"#), "{json}");
        assert_eq!(serde_json::from_str::<ContainerSpec>(&json).unwrap(), spec);
        assert!(
            serde_json::from_str::<ContainerSpec>(&json.replace("true}", r#""yes"}"#)).is_err()
        );
    }

    #[test]
    fn unknown_fields_are_refused_everywhere() {
        for json in [
            r#"{"create_container":{"id":"a","rootfs":{"device":"/dev/vdb","fs_type":"ext4","x":1},"process":{"args":["a"]}}}"#,
            r#"{"create_container":{"id":"a","rootfs":{"device":"/dev/vdb","fs_type":"xfs"},"process":{"args":["a"]}}}"#,
            r#"{"wait":{"process":{"container_id":"a","pid":3}}}"#,
            r#"{"create_sandbox":{"hostname":"h","dns":[]}}"#,
            r#"{"create_sandbox":{"hostname":"h","network":{"interfaces":[],"dns":[]}}}"#,
            r#"{"create_sandbox":{"hostname":"h","network":{"interfaces":[{"name":"eth0",
                "mac":"02:00:00:00:00:01","mtu":1500,"vlan":3}]}}}"#,
            r#"{"create_sandbox":{"hostname":"h","network":{"routes":[{"gateway":"10.0.0.1",
                "metric":3}]}}}"#,
            r#"{"create_sandbox":{"hostname":"h","network":{"interfaces":[{"name":"eth0",
                "mac":"02:00:00:00:00:01","mtu":1500,"addresses":[{"ip":"10.0.0.2",
                "prefix_len":24,"scope":0}]}]}}}"#,
        ] {
            assert!(serde_json::from_str::<Request>(json).is_err(), "{json}");
        }
    }

    #[test]
    fn validation_catches_what_becomes_paths() {
        sample_container("web").validate().unwrap();
        for id in ["", "../x", "a/b", ".hidden", &"x".repeat(65)] {
            let err = validate_id("container id", id).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidArgument);
        }
        let mut c = sample_container("web");
        c.rootfs.device = "/tmp/../dev/vdb".into();
        assert!(c.validate().is_err());
        let mut c = sample_container("web");
        c.rootfs.device = "/etc/passwd".into();
        assert!(c.validate().unwrap_err().message.contains("under /dev"));
        let mut c = sample_container("web");
        c.mounts[0].destination = "relative".into();
        assert!(c.validate().is_err());
        let mut c = sample_container("web");
        c.process.args.clear();
        assert!(c.validate().unwrap_err().message.contains("args[0]"));
        let mut c = sample_container("web");
        c.process.env.push("NOEQUALS".into());
        assert!(c.validate().is_err());
        let mut c = sample_container("web");
        c.resources.cpu = Some(CpuMax {
            quota_us: 10,
            period_us: 100_000,
        });
        assert!(c.validate().is_err());
        let mut s = SandboxSpec {
            hostname: "pod".into(),
            ..Default::default()
        };
        s.validate().unwrap();
        s.sysctls.insert("../../etc".into(), "1".into());
        assert!(s.validate().is_err());
    }

    #[test]
    fn secret_bytes_travel_as_base64_and_never_show_in_debug() {
        let request = Request::CreateSandbox(SandboxSpec {
            hostname: "pod".into(),
            volumes: sample_volumes(),
            ..Default::default()
        });
        let json = serde_json::to_string(&request).unwrap();
        assert!(
            json.contains(r#""key.pem":"LS0tLS1CRUdJTiBodW50ZXIy""#),
            "{json}"
        );
        assert!(json.contains(r#""raw":"AP8KDYA=""#), "{json}");
        assert!(json.contains(r#""empty":"""#), "{json}");
        assert!(!json.contains("hunter2"));
        for shown in [format!("{request:?}"), format!("{request:#?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(!shown.contains("LS0tLS1CRUdJTiBodW50ZXIy"), "{shown}");
            assert!(!shown.contains("255"), "no byte values: {shown}");
            assert!(shown.contains("key.pem"), "{shown}");
            assert!(shown.contains("18 bytes redacted"), "{shown}");
            assert!(shown.contains("16777216"), "{shown}");
        }
        // Not base64: refused, without quoting the text.
        let bad = r#"{"create_sandbox":{"hostname":"p","volumes":[{"name":"s","kind":
            {"secret":{"files":{"k":"hunter2!!"}}}}]}}"#;
        let err = serde_json::from_str::<Request>(bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"k\" is not standard base64"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_secret_larger_than_a_frame_is_not_sent() {
        let request = Request::CreateSandbox(SandboxSpec {
            hostname: "pod".into(),
            volumes: vec![SandboxVolume {
                name: "big".into(),
                kind: SandboxVolumeKind::Secret {
                    files: [("blob".to_string(), vec![7; 800 << 10])].into(),
                },
            }],
            ..Default::default()
        });
        assert!(matches!(
            encode_frame(&request),
            Err(crate::protocol::FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn version_1_specs_still_decode_with_no_volumes_and_a_writable_root() {
        let sandbox: SandboxSpec = serde_json::from_str(r#"{"hostname":"p"}"#).unwrap();
        assert!(sandbox.volumes.is_empty());
        let spec: ContainerSpec = serde_json::from_str(
            r#"{"id":"a","rootfs":{"device":"/dev/vdb","fs_type":"ext4"},
                "mounts":[{"destination":"/v","source":{"pod_volume":{"name":"v"}}}],
                "process":{"args":["/bin/true"]}}"#,
        )
        .unwrap();
        assert!(!spec.rootfs.read_only);
        assert_eq!(
            spec.mounts[0].source,
            MountSource::PodVolume {
                name: "v".into(),
                sub_path: None
            }
        );
    }

    #[test]
    fn volume_names_file_names_and_sub_paths_are_checked() {
        let sandbox = |volumes| SandboxSpec {
            hostname: "pod".into(),
            volumes,
            ..Default::default()
        };
        sandbox(sample_volumes()).validate().unwrap();
        let mut twice = sample_volumes();
        twice.push(twice[0].clone());
        assert!(
            sandbox(twice)
                .validate()
                .unwrap_err()
                .message
                .contains("twice")
        );
        for name in ["", "../x", "a/b", ".v"] {
            let mut v = sample_volumes();
            v[0].name = name.into();
            assert!(sandbox(v).validate().is_err(), "{name:?}");
        }
        let mut v = sample_volumes();
        v[0].kind = SandboxVolumeKind::EmptyDir {
            size_bytes: Some(0),
        };
        assert!(sandbox(v).validate().is_err());
        let long = "x".repeat(256);
        for file in ["", ".", "..", "a/b", "/abs", "nul\0", long.as_str()] {
            let v = vec![SandboxVolume {
                name: "s".into(),
                kind: SandboxVolumeKind::Secret {
                    files: [(file.to_string(), vec![1])].into(),
                },
            }];
            let err = sandbox(v).validate().unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidArgument, "{file:?}");
        }
        validate_file_name("s", "..data").unwrap();
        validate_file_name("s", &"x".repeat(255)).unwrap();

        for sub in ["a", "a/b", "a.b/..c"] {
            validate_sub_path("v", sub).unwrap();
        }
        for sub in [
            "", "/abs", "..", "a/../b", "./a", "a/./b", "a//b", "a/", "nul\0",
        ] {
            assert!(validate_sub_path("v", sub).is_err(), "{sub:?}");
        }
        let mut c = sample_container("web");
        c.mounts[2].source = MountSource::PodVolume {
            name: "cache".into(),
            sub_path: Some("../../etc".into()),
        };
        assert!(c.validate().is_err());
        c.mounts[2].source = MountSource::PodVolume {
            name: "no/such".into(),
            sub_path: None,
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn process_errors_never_quote_environment_values_or_arguments() {
        let mut p = sample_process();
        p.env.push("TOKEN=hunter2\0".into());
        let err = p.validate().unwrap_err().message;
        assert!(err.contains("TOKEN") && !err.contains("hunter2"), "{err}");
        let mut p = sample_process();
        p.env.push("=hunter2".into());
        let err = p.validate().unwrap_err().message;
        assert!(err.contains("entry 1") && !err.contains("hunter2"), "{err}");
        let mut p = sample_process();
        p.args.push("hunter2\0".into());
        let err = p.validate().unwrap_err().message;
        assert!(
            err.contains("argument 3") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn the_network_travels_in_a_readable_shape_and_is_optional() {
        let json = serde_json::to_string(&sample_network()).unwrap();
        assert!(
            json.contains(r#"{"name":"eth0","mac":"02:42:0a:58:00:05","mtu":1450,"#),
            "{json}"
        );
        assert!(
            json.contains(r#"{"ip":"10.88.0.5","prefix_len":16}"#),
            "{json}"
        );
        assert!(
            json.contains(r#"{"destination":null,"gateway":"10.88.0.1","interface":"eth0"}"#),
            "{json}"
        );
        let sandbox: SandboxSpec = serde_json::from_str(r#"{"hostname":"p"}"#).unwrap();
        assert_eq!(sandbox.network, None);
        let minimal: SandboxNetwork = serde_json::from_str(
            r#"{"interfaces":[{"name":"eth0","mac":"02:00:00:00:00:01","mtu":1500}],
                "routes":[{"gateway":"10.0.0.1"}]}"#,
        )
        .unwrap();
        assert!(minimal.interfaces[0].addresses.is_empty());
        assert_eq!(minimal.routes[0].destination, None);
        minimal.validate().unwrap();
    }

    #[test]
    fn network_validation_accepts_good_specs_and_names_what_is_wrong() {
        sample_network().validate().unwrap();
        let with = |f: &dyn Fn(&mut SandboxNetwork)| {
            let mut n = sample_network();
            f(&mut n);
            n
        };
        let cidr = |ip: &str, prefix_len| IpCidr {
            ip: ip.parse().unwrap(),
            prefix_len,
        };
        // Good variations.
        for good in [
            with(&|n| n.interfaces[0].mtu = 68),
            with(&|n| n.interfaces[0].mtu = 65535),
            with(&|n| {
                n.interfaces[0].name = "net1".into();
                n.routes[1].interface = Some("net1".into());
                n.routes[0].interface = None;
            }),
            with(&|n| n.interfaces[0].mac = "02:42:0A:58:00:05".into()),
            with(&|n| n.interfaces[0].addresses = vec![cidr("10.1.2.3", 32)]),
            with(&|n| n.routes[0].interface = None),
            with(&|n| n.routes[1].destination = Some(cidr("0.0.0.0", 0))),
            with(&|n| n.routes.clear()),
            SandboxNetwork::default(),
        ] {
            good.validate().unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
        // Bad ones, and a word their message must contain.
        let bad: Vec<(SandboxNetwork, &str)> = vec![
            (
                with(&|n| n.interfaces[0].name = "".into()),
                "interface name",
            ),
            (with(&|n| n.interfaces[0].name = "lo".into()), "not lo"),
            (
                with(&|n| n.interfaces[0].name = "a/b".into()),
                "interface name",
            ),
            (
                with(&|n| n.interfaces[0].name = "sixteen-bytes-xx".into()),
                "1 to 15",
            ),
            (
                with(&|n| n.interfaces[0].mac = "02:42:0a:58:00".into()),
                "MAC",
            ),
            (
                with(&|n| n.interfaces[0].mac = "02-42-0a-58-00-05".into()),
                "MAC",
            ),
            (
                with(&|n| n.interfaces[0].mac = "01:00:5e:00:00:01".into()),
                "unicast",
            ),
            (
                with(&|n| n.interfaces[0].mac = "00:00:00:00:00:00".into()),
                "unicast",
            ),
            (with(&|n| n.interfaces[0].mtu = 67), "MTU 67"),
            (with(&|n| n.interfaces[0].mtu = 65536), "MTU 65536"),
            (
                with(&|n| n.interfaces[0].addresses.push(cidr("10.0.0.1", 33))),
                "at most 32",
            ),
            (
                with(&|n| n.interfaces[0].addresses.push(cidr("fd00::1", 129))),
                "at most 128",
            ),
            (
                with(&|n| n.interfaces[0].addresses.push(cidr("224.0.0.1", 24))),
                "unicast",
            ),
            (
                with(&|n| n.interfaces[0].addresses.push(cidr("0.0.0.0", 8))),
                "unicast",
            ),
            (
                with(&|n| {
                    let again = n.interfaces[0].clone();
                    n.interfaces.push(again)
                }),
                "twice",
            ),
            (
                with(&|n| {
                    let mut other = n.interfaces[0].clone();
                    other.name = "eth1".into();
                    n.interfaces.push(other)
                }),
                "two interfaces",
            ),
            (
                with(&|n| n.routes[0].interface = Some("eth9".into())),
                "not one of the pod's interfaces",
            ),
            (
                with(&|n| n.routes[1].interface = None),
                "needs an interface",
            ),
            (
                with(&|n| n.routes[1].gateway = Some("10.88.0.1".parse().unwrap())),
                "different address families",
            ),
            (
                with(&|n| n.routes[1].destination = Some(cidr("fd00:99::1", 64))),
                "host bits",
            ),
            (
                with(&|n| n.routes[1].destination = Some(cidr("10.0.0.0", 40))),
                "at most 32",
            ),
            (with(&|n| n.routes[0].gateway = None), "needs a gateway"),
            (
                with(&|n| n.routes[0].gateway = Some("255.255.255.255".parse().unwrap())),
                "unicast",
            ),
        ];
        for (n, needle) in bad {
            let err = n.validate().unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidArgument, "{n:?}");
            assert!(
                err.message.contains(needle),
                "{needle:?} in {:?}",
                err.message
            );
        }
        // The sandbox checks its network.
        let spec = SandboxSpec {
            hostname: "p".into(),
            network: Some(with(&|n| n.interfaces[0].mtu = 0)),
            ..Default::default()
        };
        assert!(spec.validate().is_err());
    }

    #[test]
    fn prefixes_know_their_network_and_members() {
        let c = IpCidr {
            ip: "10.88.3.5".parse().unwrap(),
            prefix_len: 16,
        };
        assert_eq!(c.network(), "10.88.0.0".parse::<IpAddr>().unwrap());
        assert!(c.contains("10.88.255.1".parse().unwrap()));
        assert!(!c.contains("10.89.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let all = IpCidr {
            ip: "fd00::5".parse().unwrap(),
            prefix_len: 0,
        };
        assert_eq!(all.network(), "::".parse::<IpAddr>().unwrap());
        let host = IpCidr {
            ip: "fd00::5".parse().unwrap(),
            prefix_len: 128,
        };
        assert!(host.contains("fd00::5".parse().unwrap()));
        assert!(!host.contains("fd00::6".parse().unwrap()));
        assert_eq!(c.to_string(), "10.88.3.5/16");
    }

    #[test]
    fn exit_status_follows_the_shell_convention() {
        assert_eq!(ExitStatus::signaled(9).code, 137);
        assert_eq!(ExitStatus::exited(3).signal, None);
    }
}
