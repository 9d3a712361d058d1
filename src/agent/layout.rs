//! Where a pod's containers live and which steps of making a pod are the machine's to take:
//! a [`PodLayout`]. The agent's container code ([`super::container`], [`super::volume`],
//! [`super::init`], [`super::server`]) takes every path and guest-only switch from it, so
//! that the same code runs a pod's containers in two places:
//!
//! * [`PodLayout::guest`]: inside a pod VM, as PID 1. The VM *is* the pod, so the agent may
//!   name it (`sethostname`), feed its entropy pool, make its network namespace and move the
//!   VM's NICs into it, and keep everything under one `/run/peapod` and one cgroup
//!   `/sys/fs/cgroup/peapod`. The image is a block device (`/dev/vdb`).
//! * [`PodLayout::host`]: on the host, one pod among others and beside the host's own
//!   processes. Each pod gets its own directories under its run directory and its own
//!   cgroup, so two pods never share either; the host's hostname, entropy pool and sysctls
//!   are never touched (each container gets the pod's hostname in its own UTS namespace);
//!   the network namespace is the one the CNI plugins configured, given, not made; the image
//!   is a directory (an unpacked image) bound read-only as the overlay's lower layer; and
//!   containers get docker's seccomp profile, since they share the host's kernel.
//!
//! # How the host runtime uses it
//!
//! The container runtime ([`crate::runtime::container`]) runs the agent's
//! [`super::server::Agent`] in `peapod host-agent`, one process per pod, built with
//! `PodLayout::host(&id, &dirs.run)`, and sends it the same [`crate::protocol::Request`]s the
//! VM runtime sends over vsock, on Unix sockets, with [`crate::protocol::RootfsSpec`]'s
//! `device` naming the unpacked image directory. Before that:
//!
//! * the supervisor attaches the pod's CNI network ([`crate::network`]), so that
//!   [`PodNetns::Given`] exists; a pod without a network gets [`PodNetns::Make`] in its own
//!   directory instead;
//! * the host agent calls [`super::init::prepare_pod`] (cgroup parents with their
//!   controllers, the pod's directories), never [`super::init::mount_system`], which is the
//!   guest's;
//! * it runs in a mount namespace of its own (`unshare(CLONE_NEWNS)` and a recursive
//!   `MS_PRIVATE` on `/`, before any thread starts), so that the pod's volumes (tmpfs mounts)
//!   never show in the host's mount table and vanish with the pod;
//! * `/proc/self/exe` (the peapod binary) dispatches the `container-init` and `exec-init`
//!   helper verbs, as `peapod-agent` does ([`super::helper_main`]);
//! * when the pod ends its cgroup ([`PodLayout::cgroup_parent`]) is killed and removed with
//!   its directories ([`crate::runtime::container::leftovers`]).
//!
//! The hardening of a container's process (docker's capabilities, `no_new_privs`, masked
//! `/proc` and `/sys` paths; [`super::hardening`]) is container setup's, the same in both
//! layouts; a layout only says *whether* the seccomp filter goes on top
//! ([`PodLayout::seccomp`]), never *how*.

use std::path::{Path, PathBuf};

use crate::pod::PodId;
use crate::protocol::{ContainerSpec, FsType, MountSource, MountSpec, RootfsSpec, WireError};

/// The controllers enabled for containers, as written to `cgroup.subtree_control`.
const CONTROLLERS: &str = "+cpu +memory +pids";
/// The cgroup v2 mount, in the guest and on the host.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The cgroup of all host pods, one `pod-<id>` each beneath it (a systemd-style slice name,
/// so that `systemd-cgls` shows it as peapod's).
const HOST_CGROUP_SLICE: &str = "peapod.slice";

/// Where a pod's containers live and which machine-wide steps are the pod's to take.
///
/// Plain data, built by [`PodLayout::guest`] or [`PodLayout::host`]; fields are public so
/// that tests and the host runtime can adjust one (a test agent that is not root takes
/// [`PodNetns::Given`] instead of making one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLayout {
    /// The pod's runtime directory (a tmpfs in the guest; the pod's run directory on the
    /// host).
    pub run_dir: PathBuf,
    /// Per-container directories: `<id>/lower` (the image), `<id>/rw` (tmpfs with the
    /// overlay's upper and work dirs), `<id>/root` (the overlay).
    pub containers_dir: PathBuf,
    /// The pod's `/etc` files (`hosts`, `resolv.conf`, `hostname`), bound into each
    /// container.
    pub pod_etc: PathBuf,
    /// The pod's volumes, one tmpfs per volume at `<name>` (see [`super::volume`]); they
    /// live as long as the pod, whatever happens to its containers.
    pub volumes_dir: PathBuf,
    /// The cgroup v2 mount.
    pub cgroup_root: PathBuf,
    /// The parent of the pod's containers' cgroups, beneath [`PodLayout::cgroup_root`];
    /// every level between them gets [`PodLayout::controllers`] enabled.
    pub cgroup_parent: PathBuf,
    /// The controllers enabled for containers, a `cgroup.subtree_control` line.
    pub controllers: String,
    /// The pod's network namespace, which every container joins.
    pub pod_netns: PodNetns,
    /// Where a container's image (the overlay's lower layer) comes from.
    pub rootfs: RootfsSource,
    /// `CreateSandbox` sets the machine's hostname (the VM's); otherwise only each
    /// container's own UTS namespace gets the pod's hostname.
    pub set_hostname_of_machine: bool,
    /// `CreateSandbox` credits the host's random bytes to the machine's entropy pool (a
    /// fresh VM has little; the host's pool is the host's business).
    pub seed_entropy: bool,
    /// `CreateSandbox` finds the pod's NICs in the agent's network namespace by their MAC
    /// and moves and configures them in [`PodLayout::pod_netns`] (the VM's virtio NICs); on
    /// the host the CNI plugins did that already.
    pub configure_network: bool,
    /// `CreateSandbox` writes the pod's sysctls to the agent's `/proc/sys`: the VM's own.
    /// Where this is off a sandbox with sysctls is refused: they would change the host's.
    pub write_sysctls: bool,
    /// Containers' processes get docker's default seccomp profile
    /// ([`super::hardening::Hardening::seccomp`]). Off in a pod VM, as Kata's default
    /// `disable_guest_seccomp = true`: the VM is the boundary, and its capabilities are
    /// dropped all the same; on for a host pod, whose containers share the host's kernel.
    pub seccomp: bool,
}

/// The pod's network namespace file and who makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodNetns {
    /// The agent makes it (loopback up) and bind-mounts it here, starting at boot.
    Make(PathBuf),
    /// It exists already (the host's CNI-configured `/run/netns/peapod-<id>`).
    Given(PathBuf),
}

impl PodNetns {
    /// The namespace file.
    pub fn path(&self) -> &Path {
        match self {
            PodNetns::Make(p) | PodNetns::Given(p) => p,
        }
    }
}

/// Where a container's image comes from: how [`RootfsSpec`] is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsSource {
    /// [`RootfsSpec::device`] is a block device with a [`RootfsSpec::fs_type`] filesystem,
    /// mounted read-only (the guest's `/dev/vdb`...).
    BlockDevice,
    /// [`RootfsSpec::device`] is a directory (an unpacked image on the host), bound
    /// read-only; `fs_type` is not used. Only a layout says so, never the wire: a guest
    /// agent keeps reading `device` as a device. The machine's block devices are not the
    /// pod's here, so a container's [`crate::protocol::MountSource::Block`] mount names a
    /// host directory instead (`-v`, `hostPath`), bound read-only; one under `/dev` is
    /// refused.
    HostDirectory,
}

/// The image of one container, resolved against the layout: what `container-init` mounts
/// as the overlay's lower layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RootfsLower {
    /// A block device's filesystem, mounted read-only.
    Device { device: PathBuf, fs_type: FsType },
    /// A directory, bound and made read-only.
    Directory(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "the container's image directory {0} is not an absolute path: the host runtime gives \
         the unpacked image's directory as the rootfs device"
    )]
    RelativeImageDir(PathBuf),
    #[error(
        "the container mounts {device} on {destination}: a host pod's block devices would be \
         the host's, so its host mounts name a directory by its absolute path, bound \
         read-only; use a host directory or a pod volume, or run the pod in a VM"
    )]
    HostBlockMount {
        device: PathBuf,
        destination: PathBuf,
    },
}

impl PodLayout {
    /// The pod VM's layout: the paths and steps the guest agent has always used.
    pub fn guest() -> Self {
        let run = PathBuf::from("/run/peapod");
        PodLayout {
            containers_dir: run.join("containers"),
            pod_etc: run.join("etc"),
            volumes_dir: run.join("volumes"),
            pod_netns: PodNetns::Make(run.join("netns")),
            run_dir: run,
            cgroup_root: CGROUP_ROOT.into(),
            cgroup_parent: Path::new(CGROUP_ROOT).join("peapod"),
            controllers: CONTROLLERS.into(),
            rootfs: RootfsSource::BlockDevice,
            set_hostname_of_machine: true,
            seed_entropy: true,
            configure_network: true,
            write_sysctls: true,
            seccomp: false,
        }
    }

    /// A host pod's layout: its directories under `run_root/<id>` (`run_root` is
    /// [`crate::pod::PodDirs::run`], so they sit beside the supervisor's files), its cgroup
    /// `/sys/fs/cgroup/peapod.slice/pod-<id>`, its CNI network namespace
    /// `/run/netns/peapod-<id>` given, no machine-wide step, and the seccomp filter on. A
    /// pod id is 64 hex digits, so it is one plain path component and two pods never share
    /// a directory or cgroup.
    pub fn host(pod_id: &PodId, run_root: &Path) -> Self {
        use crate::network::netns::{DEFAULT_NETNS_DIR, POD_NETNS_PREFIX};
        let run = run_root.join(pod_id.as_str());
        PodLayout {
            containers_dir: run.join("containers"),
            pod_etc: run.join("etc"),
            volumes_dir: run.join("volumes"),
            run_dir: run,
            cgroup_root: CGROUP_ROOT.into(),
            cgroup_parent: Path::new(CGROUP_ROOT)
                .join(HOST_CGROUP_SLICE)
                .join(format!("pod-{pod_id}")),
            controllers: CONTROLLERS.into(),
            pod_netns: PodNetns::Given(
                Path::new(DEFAULT_NETNS_DIR).join(format!("{POD_NETNS_PREFIX}{pod_id}")),
            ),
            rootfs: RootfsSource::HostDirectory,
            set_hostname_of_machine: false,
            seed_entropy: false,
            configure_network: false,
            write_sysctls: false,
            seccomp: true,
        }
    }

    /// The container's cgroup directory. `id` is a validated container id (one plain
    /// component; see [`crate::protocol::validate_id`]).
    pub fn cgroup_dir(&self, id: &str) -> PathBuf {
        self.cgroup_parent.join(id)
    }

    /// The container's directory under [`PodLayout::containers_dir`].
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.containers_dir.join(id)
    }

    /// Where the pod volume `name` (a validated name) lives.
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.volumes_dir.join(name)
    }

    /// The directories the pod's containers need, made before the first one.
    pub fn pod_dirs(&self) -> [&Path; 4] {
        [
            &self.run_dir,
            &self.containers_dir,
            &self.pod_etc,
            &self.volumes_dir,
        ]
    }

    /// The cgroups from the root's child down to [`PodLayout::cgroup_parent`], outermost
    /// first: each is made and gets the controllers for its children. Empty when the parent
    /// is not beneath the root (a layout bug: nothing is made rather than something
    /// elsewhere).
    pub fn cgroup_levels(&self) -> Vec<PathBuf> {
        let Ok(rel) = self.cgroup_parent.strip_prefix(&self.cgroup_root) else {
            return Vec::new();
        };
        let mut at = self.cgroup_root.clone();
        rel.components()
            .map(|c| {
                at.push(c);
                at.clone()
            })
            .collect()
    }

    /// Checks `spec` as this layout reads it: the wire's rules, with the rootfs `device` an
    /// image directory where [`RootfsSource::HostDirectory`] says so.
    pub fn validate_container(&self, spec: &ContainerSpec) -> Result<(), WireError> {
        match self.rootfs {
            RootfsSource::BlockDevice => spec.validate(),
            RootfsSource::HostDirectory => spec.validate_with_image_dir(),
        }
    }

    /// Refuses a mount the layout cannot give a container: a block device where the
    /// machine's devices are not the pod's ([`RootfsSource::HostDirectory`]). There a
    /// [`MountSource::Block`] names a host directory (`-v`, `hostPath`), bound read-only
    /// ([`super::volume::resolve_mounts`]): an absolute path outside `/dev`.
    pub fn check_mount(&self, mount: &MountSpec) -> Result<(), LayoutError> {
        match (&mount.source, self.rootfs) {
            (MountSource::Block { device, .. }, RootfsSource::HostDirectory)
                if !device.is_absolute() || device.starts_with("/dev") =>
            {
                Err(LayoutError::HostBlockMount {
                    device: device.clone(),
                    destination: mount.destination.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    /// What `container-init` mounts as the image for `spec`.
    pub fn rootfs_lower(&self, spec: &RootfsSpec) -> Result<RootfsLower, LayoutError> {
        match self.rootfs {
            RootfsSource::BlockDevice => Ok(RootfsLower::Device {
                device: spec.device.clone(),
                fs_type: spec.fs_type,
            }),
            RootfsSource::HostDirectory if spec.device.is_absolute() => {
                Ok(RootfsLower::Directory(spec.device.clone()))
            }
            RootfsSource::HostDirectory => Err(LayoutError::RelativeImageDir(spec.device.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(c: char) -> PodId {
        PodId::parse(&c.to_string().repeat(64)).unwrap()
    }

    #[test]
    fn the_guest_layout_is_the_agents_old_constants() {
        let g = PodLayout::guest();
        let p = |p: &Path| p.display().to_string();
        assert_eq!(p(&g.run_dir), "/run/peapod");
        assert_eq!(p(&g.containers_dir), "/run/peapod/containers");
        assert_eq!(p(g.pod_netns.path()), "/run/peapod/netns");
        assert!(matches!(g.pod_netns, PodNetns::Make(_)));
        assert_eq!(p(&g.pod_etc), "/run/peapod/etc");
        assert_eq!(p(&g.volumes_dir), "/run/peapod/volumes");
        assert_eq!(p(&g.cgroup_root), "/sys/fs/cgroup");
        assert_eq!(p(&g.cgroup_parent), "/sys/fs/cgroup/peapod");
        assert_eq!(g.controllers, "+cpu +memory +pids");
        assert_eq!(g.rootfs, RootfsSource::BlockDevice);
        assert!(g.set_hostname_of_machine && g.seed_entropy);
        assert!(g.configure_network && g.write_sysctls);
        assert!(
            !g.seccomp,
            "the VM is the boundary, as Kata's disable_guest_seccomp"
        );
        assert_eq!(g.cgroup_levels(), [PathBuf::from("/sys/fs/cgroup/peapod")]);
        assert_eq!(p(&g.cgroup_dir("web")), "/sys/fs/cgroup/peapod/web");
        assert_eq!(p(&g.container_dir("web")), "/run/peapod/containers/web");
        assert_eq!(p(&g.volume_dir("cache")), "/run/peapod/volumes/cache");
    }

    #[test]
    fn host_layouts_of_two_pods_share_no_directory_or_cgroup() {
        let run = Path::new("/run/peapod");
        let (a, b) = (
            PodLayout::host(&id('a'), run),
            PodLayout::host(&id('b'), run),
        );
        let owned = |l: &PodLayout| {
            let mut v: Vec<PathBuf> = l.pod_dirs().iter().map(|p| p.to_path_buf()).collect();
            v.push(l.cgroup_parent.clone());
            v.push(l.pod_netns.path().to_path_buf());
            v
        };
        for pa in owned(&a) {
            for pb in owned(&b) {
                assert!(
                    !pa.starts_with(&pb) && !pb.starts_with(&pa),
                    "{} and {} overlap",
                    pa.display(),
                    pb.display()
                );
            }
        }
        // The same container id in both pods: still apart.
        assert_ne!(a.cgroup_dir("web"), b.cgroup_dir("web"));
        assert_ne!(a.container_dir("web"), b.container_dir("web"));
        assert_ne!(a.volume_dir("cache"), b.volume_dir("cache"));
        // Never the guest's shared ones either.
        let g = PodLayout::guest();
        assert!(!a.cgroup_parent.starts_with(&g.cgroup_parent));
        assert!(!a.containers_dir.starts_with(&g.containers_dir));
    }

    #[test]
    fn a_host_layout_sits_in_the_pods_run_dir_and_takes_no_machine_wide_step() {
        let i = id('c');
        let dirs = crate::pod::PodDirs::new("/tmp/run", "/tmp/store");
        let h = PodLayout::host(&i, &dirs.run);
        assert_eq!(h.run_dir, dirs.run_dir(&i));
        let p = |p: &Path| p.display().to_string();
        assert_eq!(p(&h.containers_dir), format!("/tmp/run/{i}/containers"));
        assert_eq!(p(&h.pod_etc), format!("/tmp/run/{i}/etc"));
        assert_eq!(p(&h.volumes_dir), format!("/tmp/run/{i}/volumes"));
        // None of them is one of the supervisor's files in the same directory.
        for file in [
            dirs.state_path(&i),
            dirs.socket_path(&i),
            dirs.lock_path(&i),
            dirs.network_path(&i),
            dirs.console_path(&i),
        ] {
            assert!(h.pod_dirs()[1..].iter().all(|d| !file.starts_with(d)));
        }
        assert_eq!(
            h.pod_netns,
            PodNetns::Given(format!("/run/netns/peapod-{i}").into())
        );
        assert_eq!(
            h.cgroup_levels(),
            [
                PathBuf::from("/sys/fs/cgroup/peapod.slice"),
                format!("/sys/fs/cgroup/peapod.slice/pod-{i}").into(),
            ]
        );
        assert!(!h.set_hostname_of_machine && !h.seed_entropy);
        assert!(!h.configure_network && !h.write_sysctls);
        assert!(h.seccomp, "host containers share the host's kernel");
    }

    #[test]
    fn the_rootfs_is_a_device_in_the_guest_and_an_absolute_directory_on_the_host() {
        let spec = RootfsSpec {
            device: "/dev/vdb".into(),
            fs_type: FsType::Erofs,
            read_only: false,
        };
        assert_eq!(
            PodLayout::guest().rootfs_lower(&spec).unwrap(),
            RootfsLower::Device {
                device: "/dev/vdb".into(),
                fs_type: FsType::Erofs
            }
        );
        let host = PodLayout::host(&id('d'), Path::new("/run/peapod"));
        let dir = RootfsSpec {
            device: "/var/lib/peapod/images/x/rootfs".into(),
            ..spec.clone()
        };
        assert_eq!(
            host.rootfs_lower(&dir).unwrap(),
            RootfsLower::Directory("/var/lib/peapod/images/x/rootfs".into())
        );
        let relative = RootfsSpec {
            device: "images/x".into(),
            ..spec
        };
        assert!(matches!(
            host.rootfs_lower(&relative),
            Err(LayoutError::RelativeImageDir(_))
        ));
    }

    #[test]
    fn a_spec_is_checked_as_its_layout_reads_the_rootfs() {
        use crate::protocol::ErrorKind;
        use crate::protocol::message::tests::sample_container;
        let host = PodLayout::host(&id('f'), Path::new("/run/peapod"));
        let guest = PodLayout::guest();
        let mut spec = sample_container("web");
        assert!(guest.validate_container(&spec).is_ok());
        spec.rootfs.device = "/var/lib/peapod/images/x/rootfs".into();
        let refused = guest.validate_container(&spec).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::InvalidArgument);
        assert!(refused.message.contains("under /dev"), "{refused}");
        assert!(host.validate_container(&spec).is_ok());
        for bad in ["images/x", "/var/lib/../../etc"] {
            spec.rootfs.device = bad.into();
            assert!(host.validate_container(&spec).is_err(), "{bad}");
        }
        // The rest of the spec is checked as ever.
        spec.rootfs.device = "/var/lib/peapod/images/x/rootfs".into();
        spec.id = "../x".into();
        assert!(host.validate_container(&spec).is_err());
    }

    #[test]
    fn a_block_mount_is_the_guests_only() {
        let block = MountSpec {
            destination: "/data".into(),
            source: MountSource::Block {
                device: "/dev/sda1".into(),
                fs_type: FsType::Ext4,
            },
            read_only: true,
        };
        assert!(PodLayout::guest().check_mount(&block).is_ok());
        let host = PodLayout::host(&id('e'), Path::new("/run/peapod"));
        let e = host.check_mount(&block).unwrap_err();
        assert!(e.to_string().contains("/dev/sda1"), "{e}");
        let tmpfs = MountSpec {
            source: MountSource::Tmpfs { size_bytes: None },
            ..block
        };
        assert!(host.check_mount(&tmpfs).is_ok());
        // On the host a Block mount is a host directory, bound read-only.
        let dir = |device: &str| MountSpec {
            source: MountSource::Block {
                device: device.into(),
                fs_type: FsType::Erofs,
            },
            ..tmpfs.clone()
        };
        assert!(host.check_mount(&dir("/srv/site")).is_ok());
        assert!(host.check_mount(&dir("srv/site")).is_err());
        assert!(host.check_mount(&dir("/dev/vdb")).is_err());
    }

    #[test]
    fn a_cgroup_parent_outside_the_root_makes_nothing() {
        let l = PodLayout {
            cgroup_parent: "/elsewhere/peapod".into(),
            ..PodLayout::guest()
        };
        assert!(l.cgroup_levels().is_empty());
    }
}
