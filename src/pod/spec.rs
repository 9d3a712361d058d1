//! What a pod runs: its VM's size and its containers, as the CLI resolved them (images
//! pulled and turned into disks, volumes snapshotted). Validated once, by
//! [`PodSpec::validate`], before anything is created.

use std::collections::HashSet;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::PodError;
use super::id::validate_name;
use crate::protocol::{ProcessSpec, Resources, validate_abs_path, validate_hostname, validate_id};

/// vCPUs a pod VM may have.
pub const CPUS: RangeInclusive<u8> = 1..=32;
/// Guest RAM a pod VM may have, in MiB.
pub const MEMORY_MIB: RangeInclusive<u64> = 64..=65536;
/// Containers a pod may have.
pub const CONTAINERS: RangeInclusive<usize> = 1..=16;

/// A pod to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    /// The pod's name ([`validate_name`]). [`Registry::create`](super::Registry::create)
    /// gives an empty one a generated name.
    pub name: String,
    /// The VM's hostname.
    pub hostname: String,
    pub vm: VmSize,
    pub containers: Vec<ContainerConfig>,
    /// Remove the pod once it has exited (`run --rm`).
    #[serde(default)]
    pub auto_remove: bool,
    /// Run in order, each to completion, before `containers` start (Kubernetes
    /// `initContainers`).
    #[serde(default)]
    pub init_containers: Vec<ContainerConfig>,
    /// When a container that exited is started again, inside the running VM.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Seconds between SIGTERM and SIGKILL when the pod is stopped (`stop -t` overrides).
    #[serde(default)]
    pub termination_grace_period_s: Option<u64>,
    /// Pod-level volumes the containers mount by name (`volumeMounts`).
    #[serde(default)]
    pub volumes: Vec<PodVolume>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
    /// The network the pod joins (records from before networking have none).
    #[serde(default)]
    pub network: NetworkMode,
    /// The isolation model: a pod VM (records from before the container runtime) or plain
    /// containers on the host's kernel.
    #[serde(default)]
    pub runtime: crate::runtime::RuntimeKind,
}

/// Published ports need a network, and each host port once.
pub fn check_ports(
    network: &NetworkMode,
    ports: &[crate::network::ports::PublishedPort],
) -> Result<(), PodError> {
    crate::network::ports::check_unique(ports).map_err(|e| PodError::spec(e.to_string()))?;
    if !ports.is_empty() && *network == NetworkMode::None {
        return Err(PodError::spec(
            "published ports need a network: drop --network none (or the hostPort)",
        ));
    }
    Ok(())
}

/// `--network none|peapod|NAME`: no network (loopback only), or a CNI network by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum NetworkMode {
    /// Loopback only.
    #[default]
    None,
    /// The CNI network of this name (a conflist under `/etc/peapod/cni/`).
    Cni { name: String },
}

impl NetworkMode {
    /// The network `peapod run` and `pod apply` give a pod unless told otherwise.
    pub const DEFAULT_NETWORK: &str = "peapod";

    /// Parses `--network`: `none`, or a CNI network's name.
    pub fn parse(s: &str) -> Result<Self, PodError> {
        match s {
            "none" => Ok(NetworkMode::None),
            "host" | "bridge" => Err(PodError::spec(format!(
                "--network {s}: a pod VM cannot share the host's network; give none, peapod \
                 (the default) or the name of a CNI network under /etc/peapod/cni/"
            ))),
            name if !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && !name.starts_with('.') =>
            {
                Ok(NetworkMode::Cni { name: name.into() })
            }
            _ => Err(PodError::spec(format!(
                "--network {s:?}: give none, peapod or a CNI network name (letters, digits, \
                 -, _ and .)"
            ))),
        }
    }

    /// The name `ps` and `inspect` show.
    pub fn name(&self) -> &str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Cni { name } => name,
        }
    }
}

/// Kubernetes' `restartPolicy` (and `peapod run --restart`): containers restart inside the
/// running VM with the kubelet's backoff.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RestartPolicy {
    /// `Never`, `--restart no` (docker's default).
    #[default]
    Never,
    /// `OnFailure`, `--restart on-failure[:N]`: after a non-zero exit, at most `max_retries`
    /// times when set.
    OnFailure {
        #[serde(default)]
        max_retries: Option<u32>,
    },
    /// `Always`, `--restart always`.
    Always,
}

/// A volume of the pod, shared by the containers that mount it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodVolume {
    /// A DNS-1123 label, unique in the pod.
    pub name: String,
    pub source: PodVolumeSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PodVolumeSource {
    /// An empty directory made at pod start, living as long as the pod (a tmpfs in the
    /// guest; `medium: Memory` or not, both are guest RAM).
    EmptyDir {
        #[serde(default)]
        memory: bool,
        #[serde(default)]
        size_limit_bytes: Option<u64>,
    },
    /// The keys of a stored secret as files (mode 0400) on a tmpfs in the guest.
    Secret {
        secret_name: String,
        #[serde(default)]
        optional: bool,
    },
    /// A read-only snapshot of a host directory, taken at pod start (`hostPath` with
    /// `readOnly`, `-v SRC:DST:ro`): an erofs image named relative to the pod's store
    /// directory.
    HostSnapshot { source: PathBuf, disk: PathBuf },
}

/// Where a container mounts a pod volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    /// The [`PodVolume`]'s name.
    pub name: String,
    /// Absolute path in the container.
    pub mount_path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// A relative path inside the volume to mount instead of its root.
    #[serde(default)]
    pub sub_path: Option<String>,
}

/// Environment variables whose values come from a stored secret, resolved by the supervisor
/// when the container starts and sent to the guest only (never written on the host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretEnv {
    /// `env[].valueFrom.secretKeyRef`: one variable from one key.
    Key {
        env_name: String,
        secret: String,
        key: String,
        #[serde(default)]
        optional: bool,
    },
    /// `envFrom[].secretRef`: every key as a variable.
    All {
        secret: String,
        #[serde(default)]
        optional: bool,
    },
}

/// A port the container listens on, and where the host publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub container_port: u16,
    #[serde(default)]
    pub host_port: Option<u16>,
    #[serde(default)]
    pub host_ip: Option<String>,
    #[serde(default)]
    pub protocol: PortProtocol,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PortProtocol {
    #[default]
    Tcp,
    Udp,
}

/// The pod VM's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSize {
    pub cpus: u8,
    pub memory_mib: u64,
}

/// One container of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    /// Unique in the pod; a protocol id ([`validate_id`]).
    pub name: String,
    /// The image reference the user gave (`alpine`, `ghcr.io/x/y:1`).
    pub image: String,
    /// The digest it resolved to (`sha256:...`).
    pub image_digest: String,
    /// The image on the host: its erofs block image (VM runtime) or its unpacked root
    /// directory (container runtime).
    pub disk: PathBuf,
    pub process: ProcessSpec,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub volumes: Vec<VolumeSnapshot>,
    /// Pod volumes this container mounts.
    #[serde(default)]
    pub volume_mounts: Vec<VolumeMount>,
    /// Variables from secrets, added to `process.env` at start.
    #[serde(default)]
    pub secret_env: Vec<SecretEnv>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// The root filesystem is read-only (no writable overlay).
    #[serde(default)]
    pub read_only_root: bool,
    /// `--privileged`, `securityContext.privileged`: every capability, no seccomp filter,
    /// nothing masked ([`crate::protocol::ContainerSpec::privileged`]).
    #[serde(default)]
    pub privileged: bool,
}

/// A host directory given to a container as a snapshot on a block image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSnapshot {
    /// The host directory.
    pub source: PathBuf,
    /// Where it appears in the container (absolute).
    pub destination: PathBuf,
    /// The block image holding the snapshot.
    pub disk: PathBuf,
}

impl PodSpec {
    /// Checks everything a pod needs before it is created; the error names the field, the
    /// allowed values and the container.
    pub fn validate(&self) -> Result<(), PodError> {
        validate_name(&self.name)?;
        validate_hostname(&self.hostname).map_err(|e| PodError::spec(format!("hostname: {e}")))?;
        if !CPUS.contains(&self.vm.cpus) {
            return Err(PodError::spec(format!(
                "{} vCPUs: a pod VM has {} to {} (--cpus)",
                self.vm.cpus,
                CPUS.start(),
                CPUS.end()
            )));
        }
        if !MEMORY_MIB.contains(&self.vm.memory_mib) {
            return Err(PodError::spec(format!(
                "{} MiB of memory: a pod VM has {} to {} MiB (--memory)",
                self.vm.memory_mib,
                MEMORY_MIB.start(),
                MEMORY_MIB.end()
            )));
        }
        if !CONTAINERS.contains(&self.containers.len()) {
            return Err(PodError::spec(format!(
                "{} containers: a pod has {} to {}",
                self.containers.len(),
                CONTAINERS.start(),
                CONTAINERS.end()
            )));
        }
        let mut names = HashSet::new();
        for c in &self.containers {
            let wrap = |source| PodError::InvalidContainer {
                container: c.name.clone(),
                source,
            };
            validate_id("container name", &c.name).map_err(wrap)?;
            if !names.insert(c.name.as_str()) {
                return Err(PodError::spec(format!(
                    "two containers are named {:?}: give each container its own name",
                    c.name
                )));
            }
            c.process.validate().map_err(wrap)?;
            c.resources.validate().map_err(wrap)?;
            for v in &c.volumes {
                validate_abs_path("volume destination", &v.destination).map_err(wrap)?;
            }
        }
        let published = crate::network::ports::published_ports(self)
            .map_err(|e| PodError::spec(e.to_string()))?;
        check_ports(&self.network, &published)?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid one-container spec.
    pub(crate) fn spec(name: &str) -> PodSpec {
        PodSpec {
            name: name.into(),
            hostname: "pod".into(),
            vm: VmSize {
                cpus: 1,
                memory_mib: 256,
            },
            containers: vec![container("app")],
            auto_remove: false,
            init_containers: vec![],
            restart_policy: RestartPolicy::Never,
            termination_grace_period_s: None,
            volumes: vec![],
            labels: Default::default(),
            annotations: Default::default(),
            network: NetworkMode::None,
            runtime: Default::default(),
        }
    }

    pub(crate) fn container(name: &str) -> ContainerConfig {
        ContainerConfig {
            name: name.into(),
            image: "alpine".into(),
            image_digest: format!("sha256:{}", "0".repeat(64)),
            disk: "/var/lib/peapod/disks/x.erofs".into(),
            process: ProcessSpec {
                args: vec!["sh".into()],
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                tty: false,
                stdin: false,
            },
            resources: Resources::default(),
            volumes: vec![VolumeSnapshot {
                source: "/home/me/data".into(),
                destination: "/data".into(),
                disk: "/var/lib/peapod/volumes/v.ext4".into(),
            }],
            volume_mounts: vec![],
            secret_env: vec![],
            ports: vec![],
            read_only_root: false,
            privileged: false,
        }
    }

    #[test]
    fn a_good_spec_passes_and_round_trips() {
        let s = spec("web");
        s.validate().unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<PodSpec>(&json).unwrap(), s);
    }

    #[test]
    fn a_container_runtime_pod_passes_and_old_records_are_vm_pods() {
        let mut s = spec("web");
        s.runtime = crate::runtime::RuntimeKind::Container;
        s.validate().unwrap();
        // Records from before the container runtime are VM pods.
        let mut v = serde_json::to_value(spec("old")).unwrap();
        v.as_object_mut().unwrap().remove("runtime");
        let old: PodSpec = serde_json::from_value(v).unwrap();
        assert_eq!(old.runtime, crate::runtime::RuntimeKind::Vm);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut v = serde_json::to_value(spec("web")).unwrap();
        v["vm"]["gpus"] = 1.into();
        assert!(serde_json::from_value::<PodSpec>(v).is_err());
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        type Edit = fn(&mut PodSpec);
        let cases: &[(&str, Edit, &str)] = &[
            ("bad name", |s| s.name = "a/b".into(), "letters, digits"),
            ("empty name", |s| s.name.clear(), "letters, digits"),
            ("memory 0", |s| s.vm.memory_mib = 0, "64 to 65536 MiB"),
            (
                "memory huge",
                |s| s.vm.memory_mib = 1 << 20,
                "64 to 65536 MiB",
            ),
            ("cpus 0", |s| s.vm.cpus = 0, "1 to 32"),
            ("cpus 200", |s| s.vm.cpus = 200, "1 to 32"),
            ("no containers", |s| s.containers.clear(), "1 to 16"),
            (
                "17 containers",
                |s| {
                    s.containers = (0..17).map(|i| container(&format!("c{i}"))).collect();
                },
                "1 to 16",
            ),
            (
                "duplicate names",
                |s| s.containers.push(container("app")),
                "two containers are named \"app\"",
            ),
            (
                "bad container name",
                |s| s.containers[0].name = "../x".into(),
                "not a valid id",
            ),
            (
                "no program",
                |s| s.containers[0].process.args.clear(),
                "args[0]",
            ),
            (
                "bad env",
                |s| s.containers[0].process.env = vec!["NOEQUALS".into()],
                "NAME=value",
            ),
            (
                "relative volume",
                |s| s.containers[0].volumes[0].destination = "data".into(),
                "absolute path",
            ),
            ("bad hostname", |s| s.hostname = "a b".into(), "hostname"),
            (
                "published port without a network",
                |s| s.containers[0].ports = vec![published(8080, 80)],
                "published ports need a network",
            ),
            (
                "one host port twice",
                |s| {
                    s.network = NetworkMode::Cni {
                        name: "peapod".into(),
                    };
                    s.containers[0].ports = vec![published(8080, 80), published(8080, 81)];
                },
                "host port 0.0.0.0:8080->81/tcp is published twice",
            ),
            (
                "bad host IP",
                |s| {
                    s.network = NetworkMode::Cni {
                        name: "peapod".into(),
                    };
                    let mut p = published(8080, 80);
                    p.host_ip = Some("localhost".into());
                    s.containers[0].ports = vec![p];
                },
                "\"localhost\" is not an IP address",
            ),
        ];
        for (what, edit, want) in cases {
            let mut s = spec("web");
            edit(&mut s);
            let err = s.validate().expect_err(what).to_string();
            assert!(err.contains(want), "{what}: {err}");
        }
    }

    fn published(host: u16, container: u16) -> PortSpec {
        PortSpec {
            container_port: container,
            host_port: Some(host),
            host_ip: None,
            protocol: PortProtocol::Tcp,
        }
    }

    #[test]
    fn network_names_parse() {
        assert_eq!(NetworkMode::parse("none").unwrap(), NetworkMode::None);
        for good in ["peapod", "my-net", "net_2", "a.b"] {
            assert_eq!(
                NetworkMode::parse(good).unwrap(),
                NetworkMode::Cni { name: good.into() }
            );
        }
        for (bad, want) in [
            ("host", "cannot share the host's network"),
            ("", "give none, peapod"),
            ("../x", "give none, peapod"),
            ("a b", "give none, peapod"),
            (".hidden", "give none, peapod"),
        ] {
            let err = NetworkMode::parse(bad).unwrap_err().to_string();
            assert!(err.contains(want), "{bad:?}: {err}");
        }
        // A record from before networking has none.
        let mut v = serde_json::to_value(spec("web")).unwrap();
        v.as_object_mut().unwrap().remove("network");
        assert_eq!(
            serde_json::from_value::<PodSpec>(v).unwrap().network,
            NetworkMode::None
        );
    }

    #[test]
    fn cpus_1000_does_not_parse_as_u8() {
        let mut v = serde_json::to_value(spec("web")).unwrap();
        v["vm"]["cpus"] = 1000.into();
        assert!(serde_json::from_value::<PodSpec>(v).is_err());
    }
}
