//! What a host pod leaves on the host when it ends, and removing it: its cgroup (with any
//! process still in it) and the layout's directories in its run directory. Called by the host
//! agent as it ends, by its supervisor once the agent has exited (whatever way it did), and by
//! `peapod rm` for a pod whose supervisor died; each call is safe to repeat.
//!
//! The containers' mounts are never on this list: they live in the host agent's mount
//! namespace and end with it. The removal refuses to cross a mount point all the same, so
//! that a bug elsewhere can cost a leftover directory but never the files of a filesystem
//! mounted under the pod's directory (an image, a volume).

use std::fs;
use std::io::{self, Read, Seek};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::agent::layout::{PodLayout, PodNetns};

/// How long the processes of a killed cgroup may take to go.
const KILL_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum LeftoverError {
    #[error(
        "cannot remove the pod's cgroup {path}: {source} (processes still in it: see \
         {path}/cgroup.procs)"
    )]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{0} is a mount point inside the pod's directory; it was left in place (unmount it, \
         then remove the pod again)"
    )]
    MountPoint(PathBuf),
}

/// Kills whatever runs in the pod's cgroup and removes the cgroup, then the pod's
/// directories (the run directory itself stays: the supervisor's files are there).
pub fn remove(layout: &PodLayout) -> Result<(), LeftoverError> {
    let cgroup = remove_cgroup(&layout.cgroup_parent);
    let mut dirs = Ok(());
    for dir in [&layout.containers_dir, &layout.pod_etc, &layout.volumes_dir] {
        if let Err(e) = remove_tree(dir) {
            dirs = dirs.and(Err(e));
        }
    }
    if let PodNetns::Make(file) = &layout.pod_netns {
        match fs::remove_file(file) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                dirs = dirs.and(Err(LeftoverError::Dir {
                    path: file.clone(),
                    source,
                }))
            }
        }
    }
    cgroup.and(dirs)
}

/// Kills every process in the cgroup tree at `path` (`cgroup.kill`), waits for them to go,
/// and removes the tree, innermost first. Nothing there: nothing to do.
pub fn remove_cgroup(path: &Path) -> Result<(), LeftoverError> {
    if !path.is_dir() {
        return Ok(());
    }
    let err = |source| LeftoverError::Cgroup {
        path: path.to_path_buf(),
        source,
    };
    // Linux 5.14+: SIGKILL to the whole subtree at once, no race with forks.
    let _ = fs::write(path.join("cgroup.kill"), "1");
    wait_unpopulated(path, KILL_WAIT);
    remove_cgroup_dirs(path).map_err(err)
}

/// Waits until the cgroup tree at `path` has no process left (`populated 0` in its
/// `cgroup.events`), or `timeout` passes. The kernel wakes a `poll` for `POLLPRI` on that
/// file when the value changes; each wait is capped all the same (the kernel defers a
/// change that follows another within 10 ms, and an older kernel may not wake at all).
fn wait_unpopulated(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let Ok(mut events) = fs::File::open(path.join("cgroup.events")) else {
        return;
    };
    let mut text = String::new();
    loop {
        text.clear();
        let read = events
            .seek(io::SeekFrom::Start(0))
            .and_then(|_| events.read_to_string(&mut text));
        if read.is_err() || !populated(&text) {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let wait = left.min(POPULATED_RECHECK);
        let mut fds = [PollFd::new(events.as_fd(), PollFlags::POLLPRI)];
        let ms = u16::try_from(wait.as_millis().max(1)).unwrap_or(u16::MAX);
        if let Err(e) = poll(&mut fds, PollTimeout::from(ms))
            && e != nix::errno::Errno::EINTR
        {
            std::thread::sleep(wait);
        }
    }
}

/// The longest [`wait_unpopulated`] waits for a wakeup before it reads the file again.
const POPULATED_RECHECK: Duration = Duration::from_millis(10);

/// Whether a `cgroup.events` text says the tree still has processes (`populated 1`).
fn populated(events: &str) -> bool {
    events.lines().any(|l| l.trim() == "populated 1")
}

fn remove_cgroup_dirs(path: &Path) -> io::Result<()> {
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_cgroup_dirs(&entry.path())?;
        }
    }
    match fs::remove_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Removes `dir` and what is under it, never crossing into another filesystem (a mount
/// point is left and reported).
pub fn remove_tree(dir: &Path) -> Result<(), LeftoverError> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(LeftoverError::Dir {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let parent_dev = dir
        .parent()
        .and_then(|p| fs::metadata(p).ok())
        .map_or(meta.dev(), |m| m.dev());
    remove_on_device(dir, &meta, parent_dev)
}

fn remove_on_device(path: &Path, meta: &fs::Metadata, dev: u64) -> Result<(), LeftoverError> {
    let err = |source| LeftoverError::Dir {
        path: path.to_path_buf(),
        source,
    };
    if meta.dev() != dev {
        return Err(LeftoverError::MountPoint(path.to_path_buf()));
    }
    if !meta.is_dir() {
        return match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(err(e)),
            _ => Ok(()),
        };
    }
    let mut first = Ok(());
    for entry in fs::read_dir(path).map_err(err)? {
        let entry = entry.map_err(err)?;
        let child = entry.path();
        let result = fs::symlink_metadata(&child)
            .map_err(|source| LeftoverError::Dir {
                path: child.clone(),
                source,
            })
            .and_then(|m| remove_on_device(&child, &m, dev));
        if let Err(e) = result {
            first = first.and(Err(e));
        }
    }
    first?;
    match fs::remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(err(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::id::PodId;

    #[test]
    fn the_pods_directories_go_and_its_run_directory_stays() {
        let run = tempfile::tempdir().unwrap();
        let id = PodId::parse(&"c".repeat(64)).unwrap();
        let mut layout = PodLayout::host(&id, run.path());
        // A cgroup that does not exist is nothing to do.
        layout.cgroup_parent = run.path().join("no-cgroup");
        layout.pod_netns = PodNetns::Make(layout.run_dir.join("netns"));
        for dir in layout.pod_dirs() {
            fs::create_dir_all(dir).unwrap();
        }
        let deep = layout.containers_dir.join("web/rw/upper/etc");
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("passwd"), "root").unwrap();
        std::os::unix::fs::symlink("/etc", layout.containers_dir.join("web/link")).unwrap();
        fs::write(layout.pod_etc.join("hosts"), "").unwrap();
        fs::write(layout.pod_netns.path(), "").unwrap();
        fs::write(layout.run_dir.join("state.json"), "{}").unwrap();
        remove(&layout).unwrap();
        assert!(!layout.containers_dir.exists());
        assert!(!layout.pod_etc.exists() && !layout.volumes_dir.exists());
        assert!(!layout.pod_netns.path().exists());
        assert!(layout.run_dir.join("state.json").exists());
        // The symlink went, not what it pointed to.
        assert!(Path::new("/etc/passwd").exists());
        // Again: nothing left, nothing to do.
        remove(&layout).unwrap();
    }

    #[test]
    fn the_wait_for_an_empty_cgroup_ends_when_it_empties_or_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("cgroup.events");
        fs::write(&events, "populated 0\nfrozen 0\n").unwrap();
        let started = Instant::now();
        wait_unpopulated(dir.path(), Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(1), "empty: no wait");

        fs::write(&events, "populated 1\nfrozen 0\n").unwrap();
        let started = Instant::now();
        wait_unpopulated(dir.path(), Duration::from_millis(60));
        assert!(
            started.elapsed() >= Duration::from_millis(60),
            "waited its time"
        );

        // A regular file never wakes a poll: the file is read again every little while.
        let emptied = {
            let events = events.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                fs::write(events, "populated 0\nfrozen 0\n").unwrap();
            })
        };
        let started = Instant::now();
        wait_unpopulated(dir.path(), Duration::from_secs(5));
        emptied.join().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_mount_point_under_the_pod_is_left_and_named() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("pod/containers/web/lower");
        fs::create_dir_all(&mnt).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        fs::write(mnt.join("precious"), "keep").unwrap();
        let result = remove_tree(&dir.path().join("pod"));
        let kept = mnt.join("precious").exists();
        nix::mount::umount(&mnt).unwrap();
        assert!(kept, "a file on the mounted filesystem was removed");
        match result {
            Err(LeftoverError::MountPoint(p)) => assert_eq!(p, mnt),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cgroup_tree_is_emptied_and_removed() {
        let root = Path::new("/sys/fs/cgroup");
        if !root.join("cgroup.controllers").exists() || !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root and cgroup v2 at /sys/fs/cgroup");
            return;
        }
        let pod = root.join(format!("peapod-test-leftovers-{}", std::process::id()));
        let container = pod.join("main");
        fs::create_dir_all(&container).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        fs::write(container.join("cgroup.procs"), child.id().to_string()).unwrap();
        remove_cgroup(&pod).unwrap();
        let status = child.wait().unwrap();
        assert!(!pod.exists());
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
    }
}
