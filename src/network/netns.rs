//! Named, persistent network namespaces: one per pod on the host (`/run/netns/peapod-<id>`,
//! where `ip netns` finds them), and the pod's namespace inside the guest agent.
//!
//! A namespace is made on a throwaway thread: the thread `unshare`s its network namespace,
//! brings `lo` up and bind-mounts `/proc/thread-self/ns/net` on a file, which keeps the
//! namespace alive after the thread ends. The caller's own namespace never changes, so this
//! is safe in a multi-threaded process. [`in_netns`] runs a closure on a thread that entered
//! a namespace, for the few things that must happen inside (reading eth0's MTU, a ping).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// Where iproute2 keeps named network namespaces; `ip netns list` reads it.
pub const DEFAULT_NETNS_DIR: &str = "/run/netns";
/// The prefix of a pod's namespace name: `peapod-<pod id>`.
pub const POD_NETNS_PREFIX: &str = "peapod-";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("network namespace {path}: {what}: {source}")]
    Sys {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error(
        "network namespace {0} exists already: a pod with this id was not cleaned up; remove it \
         with `peapod rm -f` or `ip netns delete`"
    )]
    Exists(PathBuf),
    #[error("network namespace name {0:?} is not a plain file name")]
    BadName(String),
    #[error("network namespace {path}: {reason}")]
    Enter { path: PathBuf, reason: String },
    #[error("the network namespace thread for {0} panicked")]
    Panicked(PathBuf),
}

impl NetnsError {
    fn io(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> NetnsError {
        let path = path.to_path_buf();
        move |source| NetnsError::Io { path, what, source }
    }

    fn sys(path: &Path, what: &'static str) -> impl FnOnce(nix::Error) -> NetnsError {
        let path = path.to_path_buf();
        move |source| NetnsError::Sys { path, what, source }
    }
}

/// Creates the namespace `dir/name` (loopback up) and returns its path. `dir` is made a
/// shared mount point first, as `ip netns add` does, so that the namespace's bind mount
/// also shows in mount namespaces made later from this one. Fails with
/// [`NetnsError::Exists`] when the name is taken.
pub fn create(dir: &Path, name: &str) -> Result<PathBuf, NetnsError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(NetnsError::BadName(name.to_string()));
    }
    std::fs::create_dir_all(dir).map_err(NetnsError::io(dir, "create the directory"))?;
    make_shared_mount(dir)?;
    let path = dir.join(name);
    // O_EXCL: two pods never share a file, and a leftover is reported, not reused.
    match File::options().write(true).create_new(true).open(&path) {
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
            return Err(NetnsError::Exists(path));
        }
        Err(err) => return Err(NetnsError::io(&path, "create the mount point")(err)),
    }
    let thread_path = path.clone();
    let made = std::thread::spawn(move || unshare_and_bind(&thread_path))
        .join()
        .unwrap_or_else(|_| Err(NetnsError::Panicked(path.clone())));
    if let Err(err) = made {
        let _ = std::fs::remove_file(&path);
        return Err(err);
    }
    Ok(path)
}

/// The body of a namespace-making thread: moves the *calling thread* into a new network
/// namespace, brings `lo` up there and bind-mounts the namespace on `path` (an existing
/// file). Call it only on a thread that ends afterwards (it never leaves the namespace):
/// [`create`] and the guest agent's pod namespace do.
pub fn unshare_and_bind(path: &Path) -> Result<(), NetnsError> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNET)
        .map_err(NetnsError::sys(path, "unshare the network namespace"))?;
    loopback_up().map_err(|e| NetnsError::Enter {
        path: path.to_path_buf(),
        reason: format!("bring lo up: {e}"),
    })?;
    nix::mount::mount(
        Some("/proc/thread-self/ns/net"),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(NetnsError::sys(path, "bind-mount the namespace"))
}

/// Makes `dir` a shared mount point, bind-mounting it on itself first when it is not a
/// mount point yet (iproute2's `ip netns add` does the same for /run/netns).
fn make_shared_mount(dir: &Path) -> Result<(), NetnsError> {
    let share = || {
        nix::mount::mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match share() {
        Ok(()) => Ok(()),
        // EINVAL: not a mount point yet
        Err(nix::Error::EINVAL) => {
            nix::mount::mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(NetnsError::sys(dir, "bind-mount the directory on itself"))?;
            share().map_err(NetnsError::sys(dir, "make the directory a shared mount"))
        }
        Err(err) => Err(NetnsError::sys(dir, "make the directory a shared mount")(
            err,
        )),
    }
}

/// Removes a namespace made by [`create`]: detaches its bind mount and deletes the file.
/// The namespace itself ends when nothing else holds it. A missing one is not an error.
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not mounted (a half-made one); ENOENT: gone already
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(err) => return Err(NetnsError::sys(path, "unmount")(err)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(NetnsError::io(path, "delete the mount point")(err)),
    }
}

/// The namespaces in `dir` whose names start with `prefix` (for `peapod doctor`: the caller
/// compares them with the pods it knows). A missing directory holds none.
pub fn list_leftovers(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>, NetnsError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(NetnsError::io(dir, "list the directory")(err)),
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    Ok(found)
}

/// Runs `f` on a thread that entered the network namespace at `path` (the netlink
/// module's [`run_in`](crate::netlink::netns::run_in)); the caller's namespace never changes.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    crate::netlink::netns::run_in(path, f).map_err(|e| NetnsError::Enter {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// `ip link set lo up` in the calling thread's network namespace.
pub fn loopback_up() -> Result<(), crate::netlink::NetlinkError> {
    let mut nl = crate::netlink::Netlink::open()?;
    let lo = nl.link_by_name("lo")?;
    nl.set_up(lo.index)
}

/// The MAC and MTU of interface `ifname` in the calling thread's network namespace.
pub fn interface_mac_mtu(ifname: &str) -> Result<([u8; 6], u32), crate::netlink::NetlinkError> {
    let link = crate::netlink::Netlink::open()?.link_by_name(ifname)?;
    let mac = link
        .mac
        .ok_or_else(|| crate::netlink::NetlinkError::NoSuchLink(format!("{ifname} (no MAC)")))?;
    Ok((mac.0, link.mtu))
}

/// Whether this process may make network namespaces and mounts (root with CAP_SYS_ADMIN);
/// tests that need it skip otherwise.
pub fn can_create() -> bool {
    nix::unistd::geteuid().is_root()
        && std::thread::spawn(|| nix::sched::unshare(CloneFlags::CLONE_NEWNET).is_ok())
            .join()
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unique(prefix: &str) -> String {
        format!("{prefix}{}-{}", std::process::id(), rand_suffix())
    }

    pub(crate) fn rand_suffix() -> String {
        let mut bytes = [0u8; 4];
        let _ = File::open("/dev/urandom").and_then(|mut f| {
            use std::io::Read;
            f.read_exact(&mut bytes)
        });
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["", "a/b", "..", "."] {
            assert!(
                matches!(create(dir.path(), name), Err(NetnsError::BadName(_))),
                "{name:?}"
            );
        }
    }

    #[test]
    fn remove_and_leftovers_tolerate_missing_things() {
        let dir = tempfile::tempdir().unwrap();
        remove(&dir.path().join("nope")).unwrap();
        // a plain file (a half-made namespace) is removed too
        let half = dir.path().join("peapod-half");
        File::create(&half).unwrap();
        File::create(dir.path().join("other")).unwrap();
        assert_eq!(
            list_leftovers(dir.path(), "peapod-").unwrap(),
            [half.as_path()]
        );
        remove(&half).unwrap();
        assert!(!half.exists());
        assert!(
            list_leftovers(&dir.path().join("missing"), "peapod-")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn create_enter_and_remove_a_namespace() {
        if !can_create() {
            eprintln!("skipped: needs root to make network namespaces");
            return;
        }
        let dir = Path::new(DEFAULT_NETNS_DIR);
        let name = unique("peapod-test-");
        let path = create(dir, &name).unwrap();
        assert!(list_leftovers(dir, &name).unwrap().contains(&path));
        assert!(matches!(create(dir, &name), Err(NetnsError::Exists(_))));
        // inside: a fresh namespace with only lo, and lo is up
        let (ino_inside, lo_flags_ok, eth0) = in_netns(&path, || {
            let ino = std::fs::metadata("/proc/thread-self/ns/net").map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.ino()
            });
            (
                ino.unwrap(),
                interface_mac_mtu("lo").is_ok(),
                interface_mac_mtu("eth0").is_err(),
            )
        })
        .unwrap();
        let ino_here = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
        };
        let ino_file = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&path).unwrap().ino()
        };
        assert_eq!(ino_inside, ino_file);
        assert_ne!(
            ino_inside, ino_here,
            "the caller's namespace must not change"
        );
        assert!(lo_flags_ok);
        assert!(eth0, "a fresh namespace has no eth0");
        let up = in_netns(&path, || {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.send_to(b"x", s.local_addr()?))
                .is_ok()
        })
        .unwrap();
        assert!(up, "lo is down in the new namespace");
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
    }
}
