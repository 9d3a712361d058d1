//! The OS calls the agent's setup logic makes, behind [`Os`], so that the order and arguments
//! of mounts, namespace changes, cgroup writes and network setup are unit-tested without
//! root: [`RealOs`] makes the calls (on nix, and on [`crate::netlink`] for the network),
//! [`RecordingOs`] records them as [`Call`]s and can be told to fail one.
//!
//! Why nix and not youki's `libcontainer`: the agent is PID 1 of a small static initramfs;
//! libcontainer pulls in OCI bundle handling, seccomp/libbpf, systemd and D-Bus cgroup
//! managers, and a runc-like process model (a double fork and an init socket per container)
//! that we would configure around rather than use. What a pod VM needs is a short, fixed
//! sequence (overlay rootfs, pivot_root, namespaces, cgroup v2 files) that is easier to read,
//! audit and control in ~500 lines of our own than through that API, and it keeps the static
//! binary small.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::netlink::{self, MacAddr, Netlink};
use crate::protocol::{NetInterface, NetRoute};

/// The OS calls of container and pod setup. Paths are absolute.
pub trait Os: Send + Sync {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// `umount2(target, MNT_DETACH)`.
    fn umount_detach(&self, target: &Path) -> io::Result<()>;
    /// `mkdir -p` with exactly `mode` (no umask) for the directories it creates.
    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// Creates or truncates a file and writes `data` (cgroup files, /etc files, /proc/sys,
    /// secret files: implementations never log `data`).
    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// Bind-mounts `sub` (relative, plain components) of the directory `base` onto
    /// `target` without following a symlink anywhere in `sub`: a container sharing the
    /// volume may have planted one to point the mount outside it. With `create`, missing
    /// directories along `sub` are made with that mode.
    fn bind_beneath(
        &self,
        base: &Path,
        sub: &Path,
        target: &Path,
        create: Option<u32>,
    ) -> io::Result<()>;
    fn read_to_string(&self, path: &Path) -> io::Result<String>;
    /// What is at `path`, not following a final symlink; `None` when nothing is (a path
    /// of another kernel's `/proc` or `/sys` that this one lacks).
    fn path_kind(&self, path: &Path) -> io::Result<Option<PathKind>>;
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    fn chdir(&self, path: &Path) -> io::Result<()>;
    /// `pivot_root(".", ".")` in `new_root`, then detaches the old root stacked on it.
    fn pivot_root(&self, new_root: &Path) -> io::Result<()>;
    fn sethostname(&self, name: &str) -> io::Result<()>;
    /// Adds `seed` to the machine's entropy pool and credits it (nothing for an empty seed;
    /// implementations never log the bytes).
    fn seed_entropy(&self, seed: &[u8]) -> io::Result<()>;
    fn unshare(&self, flags: CloneFlags) -> io::Result<()>;
    /// Joins the namespace the file `ns` refers to (`/proc/PID/ns/net`, a bind mount of one).
    fn setns(&self, ns: &Path, kind: CloneFlags) -> io::Result<()>;
    /// Joins the mount namespace at `ns` and makes the directory `root` (opened first, in
    /// the caller's namespace: `/proc/PID/root`) this process's root and working directory.
    /// Joining a mount namespace alone puts a process at the namespace's first mount, which
    /// is not where the container's `pivot_root` left its root when the agent's own `/` was
    /// not the top mount (a host whose root is its initramfs).
    fn join_mount_namespace(&self, ns: &Path, root: &Path) -> io::Result<()>;
    /// The index of the network interface with hardware address `mac` in the agent's own
    /// network namespace, if there is one.
    fn link_by_mac(&self, mac: MacAddr) -> io::Result<Option<u32>>;
    /// Moves link `index` of the agent's network namespace into the one at `netns`.
    fn move_link(&self, index: u32, netns: &Path) -> io::Result<()>;
    /// In the network namespace at `netns`: names the link whose MAC is `iface.mac`
    /// `iface.name`, sets its MTU, adds its addresses and brings it up.
    fn configure_interface(&self, netns: &Path, iface: &NetInterface) -> io::Result<()>;
    /// In the network namespace at `netns`: adds `route` to the main table.
    fn add_route(&self, netns: &Path, route: &NetRoute) -> io::Result<()>;
}

/// What [`Os::path_kind`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Directory,
    /// Anything else: a file, a device node, a symlink.
    File,
}

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// The real calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealOs;

impl Os for RealOs {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data).map_err(|e| {
            io::Error::new(
                nix_io(e).kind(),
                format!(
                    "mount {} on {} (type {}, {flags:?}, {}): {e}",
                    source.map_or("none".into(), |s| s.display().to_string()),
                    target.display(),
                    fstype.unwrap_or("none"),
                    data.unwrap_or("")
                ),
            )
        })
    }

    fn umount_detach(&self, target: &Path) -> io::Result<()> {
        nix::mount::umount2(target, MntFlags::MNT_DETACH)
            .map_err(|e| with_path(nix_io(e), "umount", target))
    }

    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        // The missing directories, outermost first; each gets `mode` itself (mkdir(2)
        // would apply the umask).
        let missing: Vec<&Path> = path
            .ancestors()
            .take_while(|p| !p.as_os_str().is_empty() && fs::metadata(p).is_err())
            .collect();
        for dir in missing.into_iter().rev() {
            match fs::DirBuilder::new().mode(mode).create(dir) {
                Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                    .map_err(|e| with_path(e, "chmod", dir))?,
                // Made meanwhile by someone else: theirs.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(with_path(e, "mkdir", dir)),
            }
        }
        Ok(())
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        fs::write(path, data).map_err(|e| with_path(e, "write", path))
    }

    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()> {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| with_path(e, "chmod", path))
    }

    fn bind_beneath(
        &self,
        base: &Path,
        sub: &Path,
        target: &Path,
        create: Option<u32>,
    ) -> io::Result<()> {
        use nix::fcntl::{OFlag, openat};
        use nix::sys::stat::{Mode, fchmod, mkdirat};
        let at = |e: nix::Error, what: &str| with_path(nix_io(e), what, &base.join(sub));
        let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut fd = nix::fcntl::open(base, dir_flags, Mode::empty())
            .map_err(|e| with_path(nix_io(e), "open", base))?;
        let parts: Vec<_> = sub.components().collect();
        if parts.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty sub path",
            ));
        }
        for (i, part) in parts.iter().enumerate() {
            let std::path::Component::Normal(name) = part else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not a plain relative path", sub.display()),
                ));
            };
            if let Some(mode) = create {
                match mkdirat(&fd, *name, Mode::from_bits_truncate(mode)) {
                    Ok(()) => {
                        let made = openat(&fd, *name, dir_flags, Mode::empty())
                            .map_err(|e| at(e, "open"))?;
                        fchmod(&made, Mode::from_bits_truncate(mode))
                            .map_err(|e| at(e, "chmod"))?;
                    }
                    Err(nix::Error::EEXIST) => {}
                    Err(e) => return Err(at(e, "mkdir")),
                }
            }
            // O_NOFOLLOW: a symlink fails (ELOOP, or ENOTDIR with O_PATH) instead of
            // being followed; the last part may be a file, opened as a path only.
            let last = i + 1 == parts.len();
            let flags = if last {
                OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
            } else {
                dir_flags
            };
            fd = openat(&fd, *name, flags, Mode::empty()).map_err(|e| at(e, "open"))?;
        }
        // O_PATH | O_NOFOLLOW opens a final symlink itself rather than failing: refuse it.
        let stat = nix::sys::stat::fstat(&fd).map_err(|e| at(e, "stat"))?;
        if stat.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(with_path(
                io::Error::from_raw_os_error(libc::ELOOP),
                "refusing the symlink",
                &base.join(sub),
            ));
        }
        // The magic link names exactly the file or directory opened above.
        let source = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        self.mount(Some(&source), target, None, MsFlags::MS_BIND, None)
    }

    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        fs::read_to_string(path).map_err(|e| with_path(e, "read", path))
    }

    fn path_kind(&self, path: &Path) -> io::Result<Option<PathKind>> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Ok(Some(PathKind::Directory)),
            Ok(_) => Ok(Some(PathKind::File)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(with_path(e, "stat", path)),
        }
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link).map_err(|e| with_path(e, "symlink", link))
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path).map_err(|e| with_path(e, "rmdir", path))
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        nix::unistd::chdir(path).map_err(|e| with_path(nix_io(e), "chdir", path))
    }

    fn pivot_root(&self, new_root: &Path) -> io::Result<()> {
        self.chdir(new_root)?;
        // The pivot_root(2) trick: the old root ends up stacked on the new one, at ".",
        // and is detached right away; no directory for it is needed in the image.
        nix::unistd::pivot_root(".", ".")
            .map_err(|e| with_path(nix_io(e), "pivot_root", new_root))?;
        nix::mount::umount2(".", MntFlags::MNT_DETACH)
            .map_err(|e| with_path(nix_io(e), "detaching the old root from", new_root))?;
        self.chdir(Path::new("/"))
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name).map_err(nix_io)
    }

    fn seed_entropy(&self, seed: &[u8]) -> io::Result<()> {
        super::init::seed_entropy(seed).map_err(io::Error::other)
    }

    fn unshare(&self, flags: CloneFlags) -> io::Result<()> {
        nix::sched::unshare(flags)
            .map_err(|e| io::Error::new(nix_io(e).kind(), format!("unshare {flags:?}: {e}")))
    }

    fn setns(&self, ns: &Path, kind: CloneFlags) -> io::Result<()> {
        let file = fs::File::open(ns).map_err(|e| with_path(e, "open namespace", ns))?;
        nix::sched::setns(file.as_fd(), kind).map_err(|e| with_path(nix_io(e), "setns", ns))
    }

    fn join_mount_namespace(&self, ns: &Path, root: &Path) -> io::Result<()> {
        let root_dir = fs::File::open(root).map_err(|e| with_path(e, "open the root", root))?;
        self.setns(ns, CloneFlags::CLONE_NEWNS)?;
        nix::unistd::fchdir(&root_dir).map_err(|e| with_path(nix_io(e), "fchdir", root))?;
        nix::unistd::chroot(".").map_err(|e| with_path(nix_io(e), "chroot", root))
    }

    fn link_by_mac(&self, mac: MacAddr) -> io::Result<Option<u32>> {
        Ok(Netlink::open()?.link_by_mac(mac)?.map(|l| l.index))
    }

    fn move_link(&self, index: u32, netns: &Path) -> io::Result<()> {
        let ns = fs::File::open(netns).map_err(|e| with_path(e, "open namespace", netns))?;
        Ok(Netlink::open()?.set_netns_fd(index, ns.as_fd())?)
    }

    fn configure_interface(&self, netns: &Path, iface: &NetInterface) -> io::Result<()> {
        let mac: MacAddr = iface
            .mac
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        in_netns(netns, || -> io::Result<()> {
            let mut nl = Netlink::open()?;
            let link = nl.link_by_mac(mac)?.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no link with MAC {mac} arrived in {}", netns.display()),
                )
            })?;
            // Renaming needs the link down, which it is: moving it between namespaces
            // brought it down.
            if link.name != iface.name {
                nl.set_name(link.index, &iface.name)?;
            }
            nl.set_mtu(link.index, iface.mtu)?;
            for addr in &iface.addresses {
                nl.add_address(link.index, addr.ip, addr.prefix_len)?;
            }
            nl.set_up(link.index)?;
            Ok(())
        })
    }

    fn add_route(&self, netns: &Path, route: &NetRoute) -> io::Result<()> {
        in_netns(netns, || -> io::Result<()> {
            let mut nl = Netlink::open()?;
            let oif = match &route.interface {
                Some(name) => Some(nl.link_index(name)?),
                None => None,
            };
            let dst = route.destination.map(|d| (d.ip, d.prefix_len));
            Ok(nl.add_route(dst, route.gateway, oif)?)
        })
    }
}

/// Runs `f` in the network namespace at `netns` (see [`netlink::netns::run_in`]).
fn in_netns(netns: &Path, f: impl FnOnce() -> io::Result<()> + Send) -> io::Result<()> {
    netlink::netns::run_in(netns, f).map_err(io::Error::other)?
}

/// One recorded OS call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    UmountDetach(PathBuf),
    MkdirAll(PathBuf, u32),
    WriteFile(PathBuf, String),
    Chmod(PathBuf, u32),
    BindBeneath {
        base: PathBuf,
        sub: PathBuf,
        target: PathBuf,
        create: Option<u32>,
    },
    ReadToString(PathBuf),
    PathKind(PathBuf),
    Symlink {
        target: PathBuf,
        link: PathBuf,
    },
    RemoveDir(PathBuf),
    Chdir(PathBuf),
    PivotRoot(PathBuf),
    Sethostname(String),
    /// How many bytes were credited (never the bytes).
    SeedEntropy(usize),
    Unshare(CloneFlags),
    Setns(PathBuf, CloneFlags),
    JoinMountNamespace {
        ns: PathBuf,
        root: PathBuf,
    },
    LinkByMac(MacAddr),
    MoveLink {
        index: u32,
        netns: PathBuf,
    },
    ConfigureInterface(PathBuf, NetInterface),
    AddRoute(PathBuf, NetRoute),
}

/// A fake [`Os`]: records every call; reads return the contents given with
/// [`RecordingOs::with_file`]; [`Os::path_kind`] finds those files and the directories given
/// with [`RecordingOs::with_dir`], nothing else; the call for which `fail_on` returns true
/// fails.
#[derive(Default)]
pub struct RecordingOs {
    calls: Mutex<Vec<Call>>,
    files: Mutex<Vec<(PathBuf, String)>>,
    /// The directories [`Os::path_kind`] finds.
    dirs: Vec<PathBuf>,
    /// The NICs [`Os::link_by_mac`] finds.
    nics: Vec<(MacAddr, u32)>,
    #[allow(clippy::type_complexity)]
    fail_on: Option<Box<dyn Fn(&Call) -> bool + Send + Sync>>,
}

impl RecordingOs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes reads of `path` return `contents` (the latest write wins too).
    pub fn with_file(self, path: impl Into<PathBuf>, contents: &str) -> Self {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((path.into(), contents.into()));
        self
    }

    /// Makes [`Os::path_kind`] find a directory at `path`.
    pub fn with_dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.dirs.push(path.into());
        self
    }

    /// Makes [`Os::link_by_mac`] find a NIC with `mac` at `index`.
    pub fn with_nic(mut self, mac: MacAddr, index: u32) -> Self {
        self.nics.push((mac, index));
        self
    }

    /// Makes the calls matching `pred` fail with EPERM.
    pub fn failing(mut self, pred: impl Fn(&Call) -> bool + Send + Sync + 'static) -> Self {
        self.fail_on = Some(Box::new(pred));
        self
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(&self, call: Call) -> io::Result<()> {
        let fail = self.fail_on.as_ref().is_some_and(|f| f(&call));
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
        if fail {
            Err(io::Error::from_raw_os_error(libc::EPERM))
        } else {
            Ok(())
        }
    }
}

impl Os for RecordingOs {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.record(Call::Mount {
            source: source.map(Path::to_path_buf),
            target: target.into(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        })
    }

    fn umount_detach(&self, target: &Path) -> io::Result<()> {
        self.record(Call::UmountDetach(target.into()))
    }

    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        self.record(Call::MkdirAll(path.into(), mode))
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let text = String::from_utf8_lossy(data).into_owned();
        self.record(Call::WriteFile(path.into(), text.clone()))?;
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((path.into(), text));
        Ok(())
    }

    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()> {
        self.record(Call::Chmod(path.into(), mode))
    }

    fn bind_beneath(
        &self,
        base: &Path,
        sub: &Path,
        target: &Path,
        create: Option<u32>,
    ) -> io::Result<()> {
        self.record(Call::BindBeneath {
            base: base.into(),
            sub: sub.into(),
            target: target.into(),
            create,
        })
    }

    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        self.record(Call::ReadToString(path.into()))?;
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .rev()
            .find(|(p, _)| p == path)
            .map(|(_, c)| c.clone())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }

    fn path_kind(&self, path: &Path) -> io::Result<Option<PathKind>> {
        self.record(Call::PathKind(path.into()))?;
        if self.dirs.iter().any(|d| d == path) {
            return Ok(Some(PathKind::Directory));
        }
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        Ok(files
            .iter()
            .any(|(p, _)| p == path)
            .then_some(PathKind::File))
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        self.record(Call::Symlink {
            target: target.into(),
            link: link.into(),
        })
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.record(Call::RemoveDir(path.into()))
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        self.record(Call::Chdir(path.into()))
    }

    fn pivot_root(&self, new_root: &Path) -> io::Result<()> {
        self.record(Call::PivotRoot(new_root.into()))
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        self.record(Call::Sethostname(name.into()))
    }

    fn seed_entropy(&self, seed: &[u8]) -> io::Result<()> {
        self.record(Call::SeedEntropy(seed.len()))
    }

    fn unshare(&self, flags: CloneFlags) -> io::Result<()> {
        self.record(Call::Unshare(flags))
    }

    fn setns(&self, ns: &Path, kind: CloneFlags) -> io::Result<()> {
        self.record(Call::Setns(ns.into(), kind))
    }

    fn join_mount_namespace(&self, ns: &Path, root: &Path) -> io::Result<()> {
        self.record(Call::JoinMountNamespace {
            ns: ns.into(),
            root: root.into(),
        })
    }

    fn link_by_mac(&self, mac: MacAddr) -> io::Result<Option<u32>> {
        self.record(Call::LinkByMac(mac))?;
        Ok(self
            .nics
            .iter()
            .find(|(m, _)| *m == mac)
            .map(|(_, index)| *index))
    }

    fn move_link(&self, index: u32, netns: &Path) -> io::Result<()> {
        self.record(Call::MoveLink {
            index,
            netns: netns.into(),
        })
    }

    fn configure_interface(&self, netns: &Path, iface: &NetInterface) -> io::Result<()> {
        self.record(Call::ConfigureInterface(netns.into(), iface.clone()))
    }

    fn add_route(&self, netns: &Path, route: &NetRoute) -> io::Result<()> {
        self.record(Call::AddRoute(netns.into(), route.clone()))
    }
}
