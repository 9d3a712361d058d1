//! Where a pod's files live: a run directory on tmpfs for what only makes sense while the
//! host is up, and a store directory for what must survive a reboot (see [`super`]).

use std::path::{Path, PathBuf};

use super::id::PodId;

/// The run directory unless `$PEAPOD_RUN_DIR` says otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/peapod";

/// The two roots of all pods' files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDirs {
    /// `$PEAPOD_RUN_DIR`, else `/run/peapod`: one directory per pod, gone on reboot.
    pub run: PathBuf,
    /// `$PEAPOD_ROOT/pods` (root default `/var/lib/peapod`): one directory per pod.
    pub store: PathBuf,
}

impl PodDirs {
    pub fn new(run: impl Into<PathBuf>, store: impl Into<PathBuf>) -> Self {
        PodDirs {
            run: run.into(),
            store: store.into(),
        }
    }

    /// From `$PEAPOD_RUN_DIR` and `$PEAPOD_ROOT` (an empty variable counts as unset).
    pub fn from_env() -> Self {
        let run = std::env::var_os("PEAPOD_RUN_DIR")
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_RUN_DIR), PathBuf::from);
        Self::from_roots(run, &crate::image::store::Store::default_root())
    }

    /// For a run directory and a peapod root (`--root`): the store is `root/pods`.
    pub fn from_roots(run: impl Into<PathBuf>, root: &Path) -> Self {
        PodDirs::new(run, root.join("pods"))
    }

    /// `run/<id>`.
    pub fn run_dir(&self, id: &PodId) -> PathBuf {
        self.run.join(id.as_str())
    }

    /// `store/<id>`.
    pub fn store_dir(&self, id: &PodId) -> PathBuf {
        self.store.join(id.as_str())
    }

    /// `run/<id>/state.json`: the live state.
    pub fn state_path(&self, id: &PodId) -> PathBuf {
        self.run_dir(id).join("state.json")
    }

    /// `run/<id>/supervisor.sock`: the supervisor's API.
    pub fn socket_path(&self, id: &PodId) -> PathBuf {
        self.run_dir(id).join("supervisor.sock")
    }

    /// `run/<id>/supervisor.lock`: held by the supervisor while it lives.
    pub fn lock_path(&self, id: &PodId) -> PathBuf {
        self.run_dir(id).join("supervisor.lock")
    }

    /// `run/<id>/console.log`: the VM's serial console.
    pub fn console_path(&self, id: &PodId) -> PathBuf {
        self.run_dir(id).join("console.log")
    }

    /// `run/<id>/vmm.log`: the VMM's own log.
    pub fn vmm_log_path(&self, id: &PodId) -> PathBuf {
        self.run_dir(id).join("vmm.log")
    }

    /// `run/<id>/network.json`: what the pod's network attachment made (namespace, CNI
    /// result), so that it can be undone by whoever removes the pod.
    pub fn network_path(&self, id: &PodId) -> PathBuf {
        self.run_dir(id).join("network.json")
    }

    /// `store/<id>/pod.json`: the [`PodRecord`](super::PodRecord).
    pub fn record_path(&self, id: &PodId) -> PathBuf {
        self.store_dir(id).join("pod.json")
    }

    /// `store/<id>/state.json`: the last state, kept across reboots.
    pub fn stored_state_path(&self, id: &PodId) -> PathBuf {
        self.store_dir(id).join("state.json")
    }

    /// `store/<id>/logs`.
    pub fn logs_dir(&self, id: &PodId) -> PathBuf {
        self.store_dir(id).join("logs")
    }

    /// `store/<id>/logs/<container>.log` (rotated to `.log.1`). `container` is a validated
    /// container name (one path component).
    pub fn container_log_path(&self, id: &PodId, container: &str) -> PathBuf {
        self.logs_dir(id).join(format!("{container}.log"))
    }

    /// `store/.lock`: held while pods are created or removed.
    pub fn store_lock_path(&self) -> PathBuf {
        self.store.join(".lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let dirs = PodDirs::from_roots("/run/p", Path::new("/var/lib/p"));
        let id = PodId::parse(&"ab".repeat(32)).unwrap();
        let run = format!("/run/p/{id}");
        let store = format!("/var/lib/p/pods/{id}");
        let p = |p: PathBuf| p.display().to_string();
        assert_eq!(p(dirs.state_path(&id)), format!("{run}/state.json"));
        assert_eq!(p(dirs.socket_path(&id)), format!("{run}/supervisor.sock"));
        assert_eq!(p(dirs.lock_path(&id)), format!("{run}/supervisor.lock"));
        assert_eq!(p(dirs.console_path(&id)), format!("{run}/console.log"));
        assert_eq!(p(dirs.vmm_log_path(&id)), format!("{run}/vmm.log"));
        assert_eq!(p(dirs.record_path(&id)), format!("{store}/pod.json"));
        assert_eq!(
            p(dirs.stored_state_path(&id)),
            format!("{store}/state.json")
        );
        assert_eq!(
            p(dirs.container_log_path(&id, "app")),
            format!("{store}/logs/app.log")
        );
        assert_eq!(p(dirs.store_lock_path()), "/var/lib/p/pods/.lock");
    }
}
