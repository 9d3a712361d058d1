//! The pod's volumes ([`SandboxSpec::volumes`](crate::protocol::SandboxSpec)): made once,
//! when the sandbox is created, under the layout's [`PodLayout::volumes_dir`] in the agent's
//! own mount namespace.
//! Every `container-init` starts with a copy of that namespace, so it can bind a volume into
//! its container ([`MountSource::PodVolume`]); all containers of the pod see the same
//! tmpfs, and it outlives them: removing or restarting a container leaves its files alone.
//!
//! A secret's bytes are written to its files and never logged; the agent keeps only their
//! names (to check a `sub_path`) after the sandbox is made.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use super::container::{InitMount, VolumeBind};
use super::layout::PodLayout;
use super::os::Os;
use crate::protocol::{MountSource, MountSpec, SandboxVolume, SandboxVolumeKind};

/// Mode of an `emptyDir`'s root and of the `sub_path` directories made in it (Kubernetes'
/// 0777: containers of one pod may run as different users).
pub const EMPTY_DIR_MODE: u32 = 0o777;
/// Mode of a secret's files: read-only, for root (their owner) only.
pub const SECRET_FILE_MODE: u32 = 0o400;
/// Mode of a secret volume's directory once its files are written.
pub const SECRET_DIR_MODE: u32 = 0o555;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("pod volume {name}: {source}")]
    Io {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "the container mounts pod volume {0:?}, which the sandbox does not have: list it in \
         the sandbox's volumes"
    )]
    Unknown(String),
    #[error(
        "secret volume {volume} has no file {file:?}: a secret's sub_path names one of its files"
    )]
    NoSuchFile { volume: String, file: String },
}

/// Makes every volume, in order; on a failure, undoes the ones made so far (best effort),
/// so that the sandbox can be created again.
pub fn create_volumes(
    os: &dyn Os,
    layout: &PodLayout,
    volumes: &[SandboxVolume],
) -> Result<(), VolumeError> {
    for (i, volume) in volumes.iter().enumerate() {
        if let Err(source) = create_volume(os, &layout.volume_dir(&volume.name), volume) {
            for made in &volumes[..=i] {
                let dir = layout.volume_dir(&made.name);
                let _ = os.umount_detach(&dir);
                let _ = os.remove_dir(&dir);
            }
            return Err(VolumeError::Io {
                name: volume.name.clone(),
                source,
            });
        }
    }
    Ok(())
}

fn create_volume(os: &dyn Os, dir: &Path, volume: &SandboxVolume) -> io::Result<()> {
    let flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    let tmpfs = Some(Path::new("tmpfs"));
    os.mkdir_all(dir, 0o700)?;
    match &volume.kind {
        SandboxVolumeKind::EmptyDir { size_bytes } => {
            let mut data = format!("mode={EMPTY_DIR_MODE:o}");
            if let Some(n) = size_bytes {
                data.push_str(&format!(",size={n}"));
            }
            os.mount(tmpfs, dir, Some("tmpfs"), flags, Some(&data))
        }
        SandboxVolumeKind::Secret { files } => {
            // Closed (0700) while it is written, then read-only for good.
            os.mount(tmpfs, dir, Some("tmpfs"), flags, Some("mode=700"))?;
            for (name, bytes) in files {
                let file = dir.join(name);
                os.write_file(&file, bytes)?;
                os.chmod(&file, SECRET_FILE_MODE)?;
            }
            os.chmod(dir, SECRET_DIR_MODE)?;
            os.mount(
                None,
                dir,
                None,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags,
                None,
            )
        }
    }
}

/// The volumes as the agent keeps them once made: a secret's file names without their
/// bytes.
pub fn forget_secret_bytes(volumes: &mut [SandboxVolume]) {
    for volume in volumes {
        if let SandboxVolumeKind::Secret { files } = &mut volume.kind {
            for bytes in files.values_mut() {
                *bytes = Vec::new();
            }
        }
    }
}

/// The container's mounts for `container-init`: each pod volume resolved to its directory
/// (a secret's always read-only); other mounts as they are.
pub fn resolve_mounts(
    layout: &PodLayout,
    volumes: &[SandboxVolume],
    mounts: &[MountSpec],
) -> Result<Vec<InitMount>, VolumeError> {
    mounts
        .iter()
        .map(|m| {
            let (name, sub_path) = match &m.source {
                MountSource::PodVolume { name, sub_path } => (name, sub_path),
                // A host pod's host directory (`-v`, `hostPath`): bound, read-only.
                MountSource::Block { device, .. }
                    if layout.rootfs == super::layout::RootfsSource::HostDirectory =>
                {
                    let mut spec = m.clone();
                    spec.read_only = true;
                    return Ok(InitMount {
                        spec,
                        bind: Some(VolumeBind {
                            dir: device.clone(),
                            sub_path: None,
                            file: false,
                            create: false,
                        }),
                    });
                }
                _ => {
                    return Ok(InitMount {
                        spec: m.clone(),
                        bind: None,
                    });
                }
            };
            let volume = volumes
                .iter()
                .find(|v| &v.name == name)
                .ok_or_else(|| VolumeError::Unknown(name.clone()))?;
            let mut spec = m.clone();
            let bind = match &volume.kind {
                SandboxVolumeKind::EmptyDir { .. } => VolumeBind {
                    dir: layout.volume_dir(name),
                    sub_path: sub_path.as_ref().map(PathBuf::from),
                    file: false,
                    create: true,
                },
                SandboxVolumeKind::Secret { files } => {
                    spec.read_only = true;
                    if let Some(file) = sub_path
                        && !files.contains_key(file)
                    {
                        return Err(VolumeError::NoSuchFile {
                            volume: name.clone(),
                            file: file.clone(),
                        });
                    }
                    VolumeBind {
                        dir: layout.volume_dir(name),
                        sub_path: sub_path.as_ref().map(PathBuf::from),
                        file: sub_path.is_some(),
                        create: false,
                    }
                }
            };
            Ok(InitMount {
                spec,
                bind: Some(bind),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::os::{Call, RecordingOs};
    use crate::protocol::message::tests::{sample_container, sample_volumes};

    fn volume_dir(name: &str) -> PathBuf {
        PodLayout::guest().volume_dir(name)
    }

    #[test]
    fn volumes_are_tmpfs_and_secrets_are_written_closed_then_made_read_only() {
        let os = RecordingOs::new();
        create_volumes(&os, &PodLayout::guest(), &sample_volumes()).unwrap();
        let v = Path::new("/run/peapod/volumes");
        let nodev = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
        let tmpfs = |dir: &str, data: &str| Call::Mount {
            source: Some("tmpfs".into()),
            target: v.join(dir),
            fstype: Some("tmpfs".into()),
            flags: nodev,
            data: Some(data.into()),
        };
        let tls = v.join("tls");
        assert_eq!(
            os.calls(),
            [
                Call::MkdirAll(v.join("cache"), 0o700),
                tmpfs("cache", "mode=777,size=16777216"),
                Call::MkdirAll(v.join("scratch"), 0o700),
                tmpfs("scratch", "mode=777"),
                Call::MkdirAll(tls.clone(), 0o700),
                tmpfs("tls", "mode=700"),
                Call::WriteFile(tls.join("empty"), String::new()),
                Call::Chmod(tls.join("empty"), 0o400),
                Call::WriteFile(tls.join("key.pem"), "-----BEGIN hunter2".into()),
                Call::Chmod(tls.join("key.pem"), 0o400),
                Call::WriteFile(
                    tls.join("raw"),
                    String::from_utf8_lossy(&[0, 255, 10, 13, 0x80]).into()
                ),
                Call::Chmod(tls.join("raw"), 0o400),
                Call::Chmod(tls.clone(), 0o555),
                Call::Mount {
                    source: None,
                    target: tls,
                    fstype: None,
                    flags: MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nodev,
                    data: None,
                },
            ]
        );
    }

    #[test]
    fn a_failed_volume_undoes_the_ones_made_before_it() {
        let os = RecordingOs::new()
            .failing(|c| matches!(c, Call::Mount { data: Some(d), .. } if d == "mode=700"));
        let err = create_volumes(&os, &PodLayout::guest(), &sample_volumes()).unwrap_err();
        assert!(err.to_string().starts_with("pod volume tls:"), "{err}");
        let calls = os.calls();
        for name in ["cache", "scratch", "tls"] {
            let dir = volume_dir(name);
            assert!(calls.contains(&Call::UmountDetach(dir.clone())), "{name}");
            assert!(calls.contains(&Call::RemoveDir(dir)), "{name}");
        }
        assert!(!calls.iter().any(|c| matches!(c, Call::WriteFile(..))));
    }

    #[test]
    fn mounts_resolve_to_volume_dirs_and_secrets_are_always_read_only() {
        let volumes = sample_volumes();
        let spec = sample_container("web");
        let mounts = resolve_mounts(&PodLayout::guest(), &volumes, &spec.mounts).unwrap();
        assert_eq!(mounts.len(), spec.mounts.len());
        assert_eq!(mounts[0].bind, None, "a plain tmpfs stays as it is");
        assert_eq!(
            mounts[2].bind,
            Some(VolumeBind {
                dir: volume_dir("cache"),
                sub_path: Some("web/tmp".into()),
                file: false,
                create: true,
            })
        );
        assert_eq!(
            mounts[3].bind,
            Some(VolumeBind {
                dir: volume_dir("tls"),
                sub_path: Some("key.pem".into()),
                file: true,
                create: false,
            })
        );
        let mut rw_secret = spec.mounts[3].clone();
        rw_secret.read_only = false;
        rw_secret.source = MountSource::PodVolume {
            name: "tls".into(),
            sub_path: None,
        };
        let m = resolve_mounts(&PodLayout::guest(), &volumes, &[rw_secret]).unwrap();
        assert!(m[0].spec.read_only);
        assert!(!m[0].bind.as_ref().unwrap().file);

        let mut unknown = spec.mounts[2].clone();
        unknown.source = MountSource::PodVolume {
            name: "nope".into(),
            sub_path: None,
        };
        assert!(matches!(
            resolve_mounts(&PodLayout::guest(), &volumes, &[unknown]),
            Err(VolumeError::Unknown(n)) if n == "nope"
        ));
        let mut missing = spec.mounts[3].clone();
        missing.source = MountSource::PodVolume {
            name: "tls".into(),
            sub_path: Some("cert.pem".into()),
        };
        assert!(matches!(
            resolve_mounts(&PodLayout::guest(), &volumes, &[missing]),
            Err(VolumeError::NoSuchFile { .. })
        ));
    }

    #[test]
    fn a_host_pods_host_directory_is_bound_read_only_and_a_guests_block_mount_is_mounted() {
        let mount = MountSpec {
            destination: "/site".into(),
            source: MountSource::Block {
                device: "/srv/site".into(),
                fs_type: crate::protocol::FsType::Erofs,
            },
            read_only: false,
        };
        let id = crate::pod::PodId::parse(&"9".repeat(64)).unwrap();
        let host = PodLayout::host(&id, Path::new("/run/peapod"));
        let resolved = resolve_mounts(&host, &[], std::slice::from_ref(&mount)).unwrap();
        assert!(resolved[0].spec.read_only);
        assert_eq!(
            resolved[0].bind,
            Some(VolumeBind {
                dir: "/srv/site".into(),
                sub_path: None,
                file: false,
                create: false,
            })
        );
        let guest = resolve_mounts(&PodLayout::guest(), &[], &[mount]).unwrap();
        assert_eq!(guest[0].bind, None);
    }

    #[test]
    fn the_agent_keeps_secret_names_not_bytes() {
        let mut volumes = sample_volumes();
        forget_secret_bytes(&mut volumes);
        let SandboxVolumeKind::Secret { files } = &volumes[2].kind else {
            panic!("the third sample is the secret")
        };
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            ["empty", "key.pem", "raw"]
        );
        assert!(files.values().all(Vec::is_empty));
        assert_eq!(volumes[0], sample_volumes()[0]);
    }
}
