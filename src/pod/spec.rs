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
    /// The image's erofs block image on the host.
    pub disk: PathBuf,
    pub process: ProcessSpec,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub volumes: Vec<VolumeSnapshot>,
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
        ];
        for (what, edit, want) in cases {
            let mut s = spec("web");
            edit(&mut s);
            let err = s.validate().expect_err(what).to_string();
            assert!(err.contains(want), "{what}: {err}");
        }
    }

    #[test]
    fn cpus_1000_does_not_parse_as_u8() {
        let mut v = serde_json::to_value(spec("web")).unwrap();
        v["vm"]["cpus"] = 1000.into();
        assert!(serde_json::from_value::<PodSpec>(v).is_err());
    }
}
