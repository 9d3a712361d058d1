//! Running code inside another network namespace without moving the caller.
//!
//! `setns(CLONE_NEWNET)` changes the namespace of the calling *thread* only, and for the
//! rest of its life; the thread's sockets stay where they were opened. So [`run_in`] runs
//! the closure on a thread of its own that joins the namespace first and ends with the
//! closure: the caller's thread (the agent's request handler, the supervisor) never
//! changes namespace, and anything opened inside (a [`super::Netlink`], a tap fd) keeps
//! working from any thread afterwards.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening the network namespace {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "joining the network namespace{}: {source} (this needs CAP_SYS_ADMIN)",
        path.as_ref().map(|p| format!(" {p}")).unwrap_or_default()
    )]
    Join {
        path: Option<String>,
        #[source]
        source: nix::Error,
    },
    #[error("the thread working in the network namespace panicked")]
    Panicked,
}

/// Runs `f` on a new thread inside the network namespace at `path` (`/proc/PID/ns/net`, a
/// bind mount of one such as `/run/netns/NAME`), and returns its result.
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let ns = File::open(path).map_err(|source| NetnsError::Open {
        path: path.display().to_string(),
        source,
    })?;
    run_in_fd(ns.as_fd(), f).map_err(|e| match e {
        NetnsError::Join { source, .. } => NetnsError::Join {
            path: Some(path.display().to_string()),
            source,
        },
        other => other,
    })
}

/// [`run_in`] for a namespace already open.
pub fn run_in_fd<T: Send>(
    ns: BorrowedFd<'_>,
    f: impl FnOnce() -> T + Send,
) -> Result<T, NetnsError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|source| NetnsError::Join { path: None, source })?;
                Ok(f())
            })
            .join()
            .map_err(|_| NetnsError::Panicked)?
    })
}

/// The network namespace of the calling thread, opened (to compare with another, or to
/// move a link back to it).
pub fn current() -> io::Result<File> {
    File::open("/proc/thread-self/ns/net")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::netlink::testing::{fresh_netns, require_root_netns};

    #[test]
    fn the_closure_runs_in_the_namespace_and_the_caller_stays_put() {
        require_root_netns!();
        let ns = fresh_netns().unwrap();
        let before = current().unwrap().metadata().unwrap().ino();
        let inside =
            run_in_fd(ns.as_fd(), || current().unwrap().metadata().unwrap().ino()).unwrap();
        assert_eq!(inside, ns.metadata().unwrap().ino());
        assert_ne!(inside, before);
        assert_eq!(current().unwrap().metadata().unwrap().ino(), before);
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&ns));
        assert_eq!(
            run_in(Path::new(&path), || current()
                .unwrap()
                .metadata()
                .unwrap()
                .ino())
            .unwrap(),
            inside
        );
    }

    #[test]
    fn a_missing_namespace_and_a_panic_are_errors() {
        let err = run_in(Path::new("/nonexistent/netns"), || ()).unwrap_err();
        assert!(matches!(err, NetnsError::Open { .. }));
        assert!(err.to_string().contains("/nonexistent/netns"), "{err}");
        // Not a namespace: setns refuses it (or, unprivileged, any namespace).
        let file = File::open("/dev/null").unwrap();
        assert!(matches!(
            run_in_fd(file.as_fd(), || ()),
            Err(NetnsError::Join { .. })
        ));
        require_root_netns!();
        let ns = fresh_netns().unwrap();
        assert!(matches!(
            run_in_fd(ns.as_fd(), || panic!("inside")),
            Err(NetnsError::Panicked)
        ));
    }
}
