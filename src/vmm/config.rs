//! A VMM's configuration as data: [`VmmConfig`], everything one VM needs, as a serde struct.
//!
//! The pod runtime writes it as JSON to a file and starts the VMM with `--config FILE`;
//! `peapod vm boot`'s flags build the same struct (`cli::vm::BootArgs::vmm_config`), so a
//! VM booted by hand and a VM booted by the runtime go through one path:
//! flags or file → [`VmmConfig`] → [`VmmConfig::validate`] → [`LinuxVmConfig`] →
//! [`boot_linux`](crate::vmm::builder::boot_linux).
//!
//! A file looks like this (fields with defaults may be left out; unknown fields are refused,
//! so a typo is an error and not a silently ignored setting):
//!
//! ```json
//! {
//!   "kernel": "/var/lib/peapod/vmlinux",
//!   "initrd": "/var/lib/peapod/agent.cpio.gz",
//!   "cmdline": "console=ttyS0 reboot=k panic=1 quiet",
//!   "cpus": 1,
//!   "memory_mib": 256,
//!   "console": { "file": { "path": "/run/peapod/pod1/console.log" } },
//!   "disks": [ { "path": "/images/busybox.erofs", "read_only": true } ],
//!   "rng": true,
//!   "vsock": { "uds_path": "/run/peapod/pod1/vsock.sock", "guest_cid": 3 },
//!   "net": { "tap_fd": 3, "mac": "02:00:00:00:00:01", "mtu": 1500 },
//!   "seccomp": true,
//!   "jail": { "uid": 2000000123, "gid": 2000000123 }
//! }
//! ```
//!
//! `net.tap_fd` is a descriptor number in the VMM process (a tap the VMM inherited, see
//! [`crate::vmm::virtio::net::tap`]): [`VmmConfig::validate`] checks that it is an open tap,
//! which means something only in the VMM itself; another process (the one writing the
//! config) checks the rest of a `net` with [`NetConfig::check_fields`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::vmm::boot::mptable;
use crate::vmm::builder::{Console, DEFAULT_MEMORY_MIB, DiskConfig, LinuxVmConfig, VsockConfig};
use crate::vmm::jail::JailConfig;
use crate::vmm::layout::{IRQ_LAST, VIRTIO_IRQ_FIRST};
use crate::vmm::virtio::net::{NetConfig, NetConfigError};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the VMM config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VMM config {path} is not a valid VmmConfig: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write the VMM config {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cpus = {cpus} is out of range (--cpus, \"cpus\"): give 1 to {max}")]
    Cpus { cpus: u8, max: u8 },
    #[error("memory_mib = 0 (--memory, \"memory_mib\"): give the guest some RAM")]
    NoMemory,
    #[error("memory_mib = {0} (--memory, \"memory_mib\") is too large")]
    MemoryTooLarge(u64),
    #[error(
        "too many virtio devices: {count}; IRQs {VIRTIO_IRQ_FIRST}..={IRQ_LAST} allow at most {max}"
    )]
    TooManyDevices { count: usize, max: u32 },
    #[error("the vsock guest CID {0} is reserved (--cid, \"guest_cid\"): give 3 or more")]
    GuestCid(u64),
    #[error(transparent)]
    Net(#[from] NetConfigError),
}

/// Where the guest's serial console goes. In JSON: `"stdout"`, `"off"` or
/// `{"file": {"path": "..."}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ConsoleConfig {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// Nowhere (the guest still has a serial port; its output is dropped).
    Off,
    /// A file, created or truncated.
    File { path: PathBuf },
}

impl From<ConsoleConfig> for Console {
    fn from(c: ConsoleConfig) -> Self {
        match c {
            ConsoleConfig::Stdout => Console::Stdout,
            ConsoleConfig::Off => Console::Off,
            ConsoleConfig::File { path } => Console::File(path),
        }
    }
}

/// Everything one VM needs; see the module docs for its JSON form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmmConfig {
    /// An ELF vmlinux (PVH or not) or a bzImage.
    pub kernel: PathBuf,
    /// An initramfs (its `/init` runs first).
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// The command line before the device fragments; the default command line if `None`.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// vCPUs, 1..=[`mptable::MAX_CPUS`].
    #[serde(default = "one_cpu")]
    pub cpus: u8,
    /// Guest RAM in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Raw disk images as virtio-blk devices, in guest order (`/dev/vda`, `/dev/vdb`, ...).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Attach a virtio-rng.
    #[serde(default)]
    pub rng: bool,
    /// Attach a virtio-vsock with this host side.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Attach a virtio-net on this inherited tap.
    #[serde(default)]
    pub net: Option<NetConfig>,
    /// Confine each VMM thread to its syscall allow-list (see [`crate::vmm::seccomp`]);
    /// `false` only for debugging (`--no-seccomp`).
    #[serde(default = "yes")]
    pub seccomp: bool,
    /// Confine the VMM process once its VM is built (see [`crate::vmm::jail`]): on unless
    /// `null` (`--no-jail`, for debugging only).
    #[serde(default = "jailed")]
    pub jail: Option<JailConfig>,
}

fn yes() -> bool {
    true
}

fn jailed() -> Option<JailConfig> {
    Some(JailConfig::default())
}

fn one_cpu() -> u8 {
    1
}

fn default_memory_mib() -> u64 {
    DEFAULT_MEMORY_MIB
}

impl VmmConfig {
    /// A config with defaults: one vCPU, [`DEFAULT_MEMORY_MIB`], console on stdout, no
    /// devices.
    pub fn new(kernel: PathBuf) -> Self {
        VmmConfig {
            kernel,
            initrd: None,
            cmdline: None,
            cpus: 1,
            memory_mib: DEFAULT_MEMORY_MIB,
            console: ConsoleConfig::Stdout,
            disks: Vec::new(),
            rng: false,
            vsock: None,
            net: None,
            seccomp: true,
            jail: jailed(),
        }
    }

    /// Parses a JSON config (no validation: see [`VmmConfig::validate`]). `path` only names
    /// the source in errors.
    pub fn from_json(json: &[u8], path: &Path) -> Result<Self, ConfigError> {
        serde_json::from_slice(json).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads and validates the JSON config in `path`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let json = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::from_json(&json, path)?;
        config.validate()?;
        Ok(config)
    }

    /// Writes the config as JSON to `path` (created or truncated).
    pub fn write_file(&self, path: &Path) -> Result<(), ConfigError> {
        let write = |source| ConfigError::Write {
            path: path.to_owned(),
            source,
        };
        let json = serde_json::to_vec_pretty(self).map_err(|e| write(e.into()))?;
        std::fs::write(path, json).map_err(write)
    }

    /// Checks what can be checked before touching KVM, including that `net.tap_fd` is an
    /// open tap in this process; returns the memory size in bytes.
    pub fn validate(&self) -> Result<u64, ConfigError> {
        check(
            self.cpus,
            device_count(
                self.disks.len(),
                self.rng,
                self.vsock.as_ref(),
                self.net.as_ref(),
            ),
            self.memory_mib,
        )?;
        check_vsock(self.vsock.as_ref())?;
        check_net(self.net.as_ref())?;
        guest_bytes(self.memory_mib)
    }
}

impl From<VmmConfig> for LinuxVmConfig {
    fn from(c: VmmConfig) -> Self {
        LinuxVmConfig {
            kernel: c.kernel,
            initrd: c.initrd,
            cmdline: c.cmdline,
            cpus: c.cpus,
            memory_mib: c.memory_mib,
            console: c.console.into(),
            disks: c.disks,
            rng: c.rng,
            vsock: c.vsock,
            net: c.net,
            seccomp: c.seccomp,
            jail: c.jail,
        }
    }
}

/// The number of virtio devices a VM gets.
pub(crate) fn device_count(
    disks: usize,
    rng: bool,
    vsock: Option<&VsockConfig>,
    net: Option<&NetConfig>,
) -> usize {
    disks + usize::from(rng) + usize::from(vsock.is_some()) + usize::from(net.is_some())
}

/// The checks on a VM's shape, shared by [`VmmConfig::validate`] and
/// [`LinuxVmConfig::validate`]: vCPUs in range, devices within the IRQs, memory that fits.
pub(crate) fn check(cpus: u8, devices: usize, memory_mib: u64) -> Result<u64, ConfigError> {
    if cpus == 0 || cpus > mptable::MAX_CPUS {
        return Err(ConfigError::Cpus {
            cpus,
            max: mptable::MAX_CPUS,
        });
    }
    let max = IRQ_LAST - VIRTIO_IRQ_FIRST + 1;
    if devices > max as usize {
        return Err(ConfigError::TooManyDevices {
            count: devices,
            max,
        });
    }
    guest_bytes(memory_mib)
}

/// CIDs 0-2 are the hypervisor, the local loopback and the host.
pub(crate) fn check_vsock(vsock: Option<&VsockConfig>) -> Result<(), ConfigError> {
    match vsock {
        Some(v) if v.guest_cid < 3 => Err(ConfigError::GuestCid(v.guest_cid)),
        _ => Ok(()),
    }
}

/// The network device's fields, and its tap descriptor in this process.
pub(crate) fn check_net(net: Option<&NetConfig>) -> Result<(), ConfigError> {
    match net {
        Some(n) => Ok(n.validate()?),
        None => Ok(()),
    }
}

fn guest_bytes(memory_mib: u64) -> Result<u64, ConfigError> {
    if memory_mib == 0 {
        return Err(ConfigError::NoMemory);
    }
    memory_mib
        .checked_mul(1 << 20)
        .ok_or(ConfigError::MemoryTooLarge(memory_mib))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> VmmConfig {
        VmmConfig {
            kernel: "/k/vmlinux".into(),
            initrd: Some("/k/initrd".into()),
            cmdline: Some("console=ttyS0 quiet".into()),
            cpus: 2,
            memory_mib: 512,
            console: ConsoleConfig::File {
                path: "/run/pod/console.log".into(),
            },
            disks: vec![
                DiskConfig {
                    path: "/img/a.erofs".into(),
                    read_only: true,
                },
                DiskConfig {
                    path: "/img/b.ext4".into(),
                    read_only: false,
                },
            ],
            rng: true,
            vsock: Some(VsockConfig {
                uds_path: "/run/pod/vsock.sock".into(),
                guest_cid: 3,
            }),
            net: None,
            seccomp: true,
            jail: Some(JailConfig {
                uid: Some(2_000_000_001),
                gid: None,
            }),
        }
    }

    #[test]
    fn a_config_survives_a_json_round_trip() {
        let config = full();
        let json = serde_json::to_string(&config).unwrap();
        assert!(
            json.contains(r#""console":{"file":{"path":"/run/pod/console.log"}}"#),
            "{json}"
        );
        assert_eq!(
            VmmConfig::from_json(json.as_bytes(), Path::new("x")).unwrap(),
            config
        );
        for console in [ConsoleConfig::Stdout, ConsoleConfig::Off] {
            let c = VmmConfig { console, ..full() };
            let back = serde_json::from_str::<VmmConfig>(&serde_json::to_string(&c).unwrap());
            assert_eq!(back.unwrap(), c);
        }
    }

    #[test]
    fn left_out_fields_take_their_defaults() {
        let c = VmmConfig::from_json(br#"{"kernel": "/vmlinux"}"#, Path::new("x")).unwrap();
        assert_eq!(c, VmmConfig::new("/vmlinux".into()));
        assert!(c.seccomp, "seccomp is on unless turned off");
        assert_eq!(
            c.jail,
            Some(JailConfig::default()),
            "the jail is on unless turned off"
        );
        let unjailed = br#"{"kernel": "/vmlinux", "jail": null}"#;
        assert_eq!(
            VmmConfig::from_json(unjailed, Path::new("x")).unwrap().jail,
            None
        );
        let off = br#"{"kernel": "/vmlinux", "seccomp": false}"#;
        assert!(!VmmConfig::from_json(off, Path::new("x")).unwrap().seccomp);
        assert_eq!(c.validate().unwrap(), DEFAULT_MEMORY_MIB << 20);
    }

    #[test]
    fn an_unknown_field_is_refused_with_the_file_and_field_named() {
        let err = VmmConfig::from_json(
            br#"{"kernel": "/vmlinux", "memory": 512}"#,
            Path::new("/run/pod/vmm.json"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/run/pod/vmm.json"), "{msg}");
        assert!(msg.contains("unknown field `memory`"), "{msg}");
        // Nested structs too.
        let err = VmmConfig::from_json(
            br#"{"kernel": "/k", "disks": [{"path": "/d", "ro": true}]}"#,
            Path::new("c.json"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `ro`"), "{err}");
        let err = VmmConfig::from_json(
            br#"{"kernel": "/k", "console": {"file": {"path": "/c", "append": true}}}"#,
            Path::new("c.json"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `append`"), "{err}");
    }

    #[test]
    fn files_that_are_missing_or_invalid_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.json");
        let err = VmmConfig::from_file(&missing).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        assert!(err.to_string().contains("none.json"), "{err}");

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, b"{not json").unwrap();
        let err = VmmConfig::from_file(&bad).unwrap_err();
        assert!(err.to_string().contains("bad.json"), "{err}");

        let zero = dir.path().join("zero.json");
        std::fs::write(&zero, br#"{"kernel": "/k", "cpus": 0}"#).unwrap();
        let err = VmmConfig::from_file(&zero).unwrap_err();
        assert!(matches!(err, ConfigError::Cpus { cpus: 0, .. }), "{err}");

        let good = dir.path().join("vmm.json");
        full().write_file(&good).unwrap();
        assert_eq!(VmmConfig::from_file(&good).unwrap(), full());
    }

    #[test]
    fn configs_are_checked_before_kvm() {
        let mut c = full();
        assert_eq!(c.validate().unwrap(), 512 << 20);
        c.cpus = 0;
        assert!(c.validate().unwrap_err().to_string().contains("--cpus"));
        c.cpus = 1;
        c.memory_mib = 0;
        assert!(matches!(c.validate(), Err(ConfigError::NoMemory)));
        c.memory_mib = u64::MAX;
        assert!(matches!(c.validate(), Err(ConfigError::MemoryTooLarge(_))));
        c.memory_mib = 64;
        c.disks = vec![c.disks[0].clone(); 18];
        assert!(matches!(
            c.validate(),
            Err(ConfigError::TooManyDevices { count: 20, max: 19 })
        ));
        c.disks.clear();
        c.vsock = Some(VsockConfig {
            uds_path: "/v".into(),
            guest_cid: 2,
        });
        assert!(matches!(c.validate(), Err(ConfigError::GuestCid(2))));
    }

    #[test]
    fn a_net_device_is_data_and_its_tap_is_checked() {
        let net = NetConfig {
            tap_fd: 7,
            mac: "02:00:00:00:00:09".into(),
            mtu: 9000,
        };
        let c = VmmConfig {
            net: Some(net.clone()),
            ..full()
        };
        let json = serde_json::to_string(&c).unwrap();
        assert!(
            json.contains(r#""net":{"tap_fd":7,"mac":"02:00:00:00:00:09","mtu":9000}"#),
            "{json}"
        );
        assert_eq!(
            VmmConfig::from_json(json.as_bytes(), Path::new("x")).unwrap(),
            c
        );
        let err = VmmConfig::from_json(
            br#"{"kernel": "/k", "net": {"tap_fd": 3, "mac": "02:00:00:00:00:01", "tap": "t"}}"#,
            Path::new("c.json"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `tap`"), "{err}");

        // A bad field, then a descriptor that is not a tap, each named.
        let bad_mac = VmmConfig {
            net: Some(NetConfig {
                mac: "02:00".into(),
                ..net.clone()
            }),
            ..full()
        };
        let err = bad_mac.validate().unwrap_err();
        assert!(err.to_string().contains("--net-mac"), "{err}");
        let (r, _w) = std::io::pipe().unwrap();
        let not_tap = VmmConfig {
            net: Some(NetConfig {
                tap_fd: std::os::fd::AsRawFd::as_raw_fd(&r),
                ..net.clone()
            }),
            ..full()
        };
        let err = not_tap.validate().unwrap_err();
        assert!(err.to_string().contains("not a tap"), "{err}");

        // It counts as a device.
        let mut c = VmmConfig {
            net: Some(net),
            ..full()
        };
        c.disks = vec![c.disks[0].clone(); 17];
        assert!(matches!(
            c.validate(),
            Err(ConfigError::TooManyDevices { count: 20, max: 19 })
        ));
        assert!(LinuxVmConfig::from(c).net.is_some());
    }

    #[test]
    fn a_config_becomes_the_builders_config() {
        let linux = LinuxVmConfig::from(full());
        assert_eq!(linux.cpus, 2);
        assert_eq!(linux.disks.len(), 2);
        assert!(
            matches!(linux.console, Console::File(p) if p == Path::new("/run/pod/console.log"))
        );
        assert_eq!(linux.vsock.map(|v| v.guest_cid), Some(3));
    }
}
