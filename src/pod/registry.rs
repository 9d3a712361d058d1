//! The pods on this host: creating one (name check, id, directories, first state), finding
//! one by name or id prefix, listing them with their state, and removing one.
//!
//! Concurrency: creating and removing pods happen under an exclusive `flock(2)` on
//! `store/.lock`, so of two CLIs creating pods with the same name exactly one wins. A pod's
//! supervisor holds an exclusive `flock(2)` on its `supervisor.lock` for as long as it lives
//! ([`SupervisorLock`]); nothing else is needed to know whether a pod is looked after
//! ([`Registry::is_supervised`]): the kernel drops the lock when the process dies.
//! A pod's store directory appears whole (made under a temporary name, then renamed) and
//! disappears whole (renamed away, then deleted), so a reader never sees half of one.

use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use serde::{Deserialize, Serialize};

use super::PodError;
use super::id::{PodId, generate_name};
use super::layout::PodDirs;
use super::spec::PodSpec;
use super::state::{ContainerState, PodState, PodStatus, read_json, rfc3339, write_json_atomic};

/// The reason [`Registry::list`] gives a Created or Running pod nobody supervises.
pub const SUPERVISOR_GONE: &str = "its supervisor is gone (killed, or the host rebooted)";

/// How many fresh ids [`Registry::create`] tries when a generated name is taken.
const NAME_TRIES: usize = 8;

/// A pod as created: `store/<id>/pod.json`, written once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodRecord {
    pub id: PodId,
    pub name: String,
    #[serde(with = "rfc3339")]
    pub created_at: SystemTime,
    pub spec: PodSpec,
}

/// The state a pod has from its creation until its supervisor first saves one: Created,
/// each container Created. Its supervisor, when forked from the CLI that created the pod,
/// starts from this rather than reading it back.
pub fn created_state(record: &PodRecord) -> PodState {
    PodState {
        id: record.id.clone(),
        name: record.name.clone(),
        status: PodStatus::Created,
        created_at: record.created_at,
        started_at: None,
        finished_at: None,
        supervisor_pid: None,
        vmm_pid: None,
        containers: record
            .spec
            .containers
            .iter()
            .map(|c| ContainerState::created(&c.name))
            .collect(),
        error: None,
        network: None,
    }
}

/// A pod as `ps` and `inspect` see it: its record and its latest state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub record: PodRecord,
    /// The run directory's state, else the store's copy; a Created or Running pod whose
    /// supervisor is gone shows as Failed ([`SUPERVISOR_GONE`]).
    pub state: PodState,
}

impl PodView {
    pub fn id(&self) -> &PodId {
        &self.record.id
    }

    pub fn name(&self) -> &str {
        &self.record.name
    }

    pub fn status(&self) -> &PodStatus {
        &self.state.status
    }
}

/// An exclusive `flock(2)` on a pod's `supervisor.lock`: while some process holds it, the
/// pod is supervised. The lock belongs to the open file description, so it passes to a
/// child that inherits the descriptor: the creator calls [`clear_cloexec`](Self::clear_cloexec),
/// spawns the supervisor with the descriptor's number, and drops its own copy; the
/// supervisor calls [`adopt`](Self::adopt). The lock is released when the last descriptor
/// of it closes (the supervisor exits or is killed).
#[derive(Debug)]
pub struct SupervisorLock {
    file: File,
}

impl SupervisorLock {
    /// Creates `path` if needed and takes the lock without waiting.
    pub fn acquire(path: &Path) -> Result<Self, PodError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| PodError::io("open", path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(SupervisorLock { file }),
            Err(TryLockError::WouldBlock) => Err(PodError::LockHeld {
                path: path.to_owned(),
            }),
            Err(TryLockError::Error(e)) => Err(PodError::io("lock", path, e)),
        }
    }

    /// Takes over an inherited descriptor of the lock (in the supervisor, after exec). Checks
    /// that it holds the lock (re-locking one's own open file description succeeds at once;
    /// a descriptor of someone else's lock fails) and marks it close-on-exec again so the
    /// supervisor's own children (the VMM) do not keep the pod "supervised".
    pub fn adopt(fd: OwnedFd) -> Result<Self, PodError> {
        let file = File::from(fd);
        let path = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .unwrap_or_else(|_| PathBuf::from(format!("descriptor {}", file.as_raw_fd())));
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(PodError::LockHeld { path }),
            Err(TryLockError::Error(e)) => return Err(PodError::io("lock", path, e)),
        }
        fcntl(&file, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
            .map_err(|e| PodError::io("set close-on-exec on", path, e.into()))?;
        Ok(SupervisorLock { file })
    }

    /// Lets the descriptor survive `exec`, for handing the lock to a child process.
    pub fn clear_cloexec(&self) -> Result<(), PodError> {
        fcntl(&self.file, FcntlArg::F_SETFD(FdFlag::empty()))
            .map_err(|e| PodError::io("clear close-on-exec on", "the supervisor lock", e.into()))?;
        Ok(())
    }
}

impl AsFd for SupervisorLock {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for SupervisorLock {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// The descriptor, still open and still holding the lock.
impl IntoRawFd for SupervisorLock {
    fn into_raw_fd(self) -> RawFd {
        self.file.into_raw_fd()
    }
}

impl From<SupervisorLock> for OwnedFd {
    fn from(lock: SupervisorLock) -> OwnedFd {
        lock.file.into()
    }
}

/// The pods under one [`PodDirs`].
#[derive(Debug, Clone)]
pub struct Registry {
    dirs: PodDirs,
}

impl Registry {
    pub fn new(dirs: PodDirs) -> Self {
        Registry { dirs }
    }

    pub fn dirs(&self) -> &PodDirs {
        &self.dirs
    }

    /// Creates a pod: checks the spec and its name (an empty name gets a generated one),
    /// makes its directories (0700) with `pod.json` and a Created `state.json`, and returns
    /// its record with its supervisor lock held. On any error nothing of the pod remains.
    pub fn create(&self, spec: PodSpec) -> Result<(PodRecord, SupervisorLock), PodError> {
        let user_named = !spec.name.is_empty();
        let mut checked = spec.clone();
        if !user_named {
            checked.name = "pea-00000000".into();
        }
        checked.validate()?;

        let _guard = self.lock_store()?;
        self.remove_leftovers();
        let records = self.records()?;
        let mut spec = spec;
        let mut chosen = None;
        for _ in 0..NAME_TRIES {
            let id = PodId::generate()?;
            if records.iter().any(|r| r.id == id) {
                continue;
            }
            if !user_named {
                spec.name = generate_name(&id);
            }
            match records.iter().find(|r| r.name == spec.name) {
                Some(r) if user_named => {
                    return Err(PodError::NameInUse {
                        name: spec.name,
                        short_id: r.id.short().to_owned(),
                    });
                }
                Some(_) => continue,
                None => {
                    chosen = Some(id);
                    break;
                }
            }
        }
        let id = chosen.ok_or_else(|| {
            PodError::spec("no free generated pod name after several tries: give one with --name")
        })?;

        let created_at = SystemTime::now();
        let record = PodRecord {
            id: id.clone(),
            name: spec.name.clone(),
            created_at,
            spec,
        };
        let state = created_state(&record);
        match self.make_pod(&record, &state) {
            Ok(lock) => Ok((record, lock)),
            Err(e) => {
                for dir in [
                    self.dirs.run_dir(&id),
                    self.staging_dir(&id, "tmp"),
                    self.dirs.store_dir(&id),
                ] {
                    remove_dir_all_if_present(&dir).ok();
                }
                Err(e)
            }
        }
    }

    fn make_pod(&self, record: &PodRecord, state: &PodState) -> Result<SupervisorLock, PodError> {
        let id = &record.id;
        make_dir(&self.dirs.run, true)?;
        make_dir(&self.dirs.run_dir(id), false)?;
        let lock = SupervisorLock::acquire(&self.dirs.lock_path(id))?;
        write_json_atomic(&self.dirs.state_path(id), state)?;

        let staging = self.staging_dir(id, "tmp");
        make_dir(&staging, false)?;
        write_json_atomic(&staging.join("pod.json"), record)?;
        write_json_atomic(&staging.join("state.json"), state)?;
        make_dir(&staging.join("logs"), false)?;
        let store_dir = self.dirs.store_dir(id);
        fs::rename(&staging, &store_dir).map_err(|e| PodError::io("create", &store_dir, e))?;
        sync_dir(&self.dirs.store)?;
        Ok(lock)
    }

    /// True while some process holds the pod's supervisor lock.
    pub fn is_supervised(&self, id: &PodId) -> bool {
        let Ok(file) = File::open(self.dirs.lock_path(id)) else {
            return false;
        };
        // Getting even a shared lock means nobody holds the exclusive one; dropping the
        // file releases it again.
        matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock))
    }

    /// Waits until no process holds the pod's supervisor lock, or `timeout` passes; true if
    /// it is free. Blocks in the kernel's lock wait (on a thread left behind on a timeout)
    /// rather than polling, so it returns as the supervisor exits.
    pub fn wait_unsupervised(&self, id: &PodId, timeout: std::time::Duration) -> bool {
        let Ok(file) = File::open(self.dirs.lock_path(id)) else {
            return true;
        };
        if !matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock)) {
            return true;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(file.lock_shared().is_ok());
        });
        rx.recv_timeout(timeout).unwrap_or(false)
    }

    /// Every pod in the store, newest first. A pod whose files cannot be read is skipped with
    /// a warning. Reads only: a pod whose supervisor is gone shows as Failed, but its files
    /// keep what they say.
    pub fn list(&self) -> Result<Vec<PodView>, PodError> {
        let mut views = Vec::new();
        for id in self.ids()? {
            match self.get(&id) {
                Ok(view) => views.push(view),
                Err(e) => tracing::warn!("skipping pod {}: {e}", id.short()),
            }
        }
        views.sort_by(|a, b| {
            b.record
                .created_at
                .cmp(&a.record.created_at)
                .then_with(|| a.record.id.cmp(&b.record.id))
        });
        Ok(views)
    }

    /// One pod by its full id.
    pub fn get(&self, id: &PodId) -> Result<PodView, PodError> {
        let record: PodRecord = match read_json(&self.dirs.record_path(id)) {
            Err(PodError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(PodError::NotFound {
                    query: id.to_string(),
                });
            }
            other => other?,
        };
        let mut state = read_json::<PodState>(&self.dirs.state_path(id))
            .or_else(|_| read_json::<PodState>(&self.dirs.stored_state_path(id)))
            .unwrap_or_else(|e| PodState {
                id: id.clone(),
                name: record.name.clone(),
                status: PodStatus::Failed {
                    reason: format!("its state is unreadable: {e}"),
                },
                created_at: record.created_at,
                started_at: None,
                finished_at: None,
                supervisor_pid: None,
                vmm_pid: None,
                containers: Vec::new(),
                error: Some(e.to_string()),
                network: None,
            });
        if state.status.is_active() && !self.is_supervised(id) {
            state.status = PodStatus::Failed {
                reason: SUPERVISOR_GONE.into(),
            };
        }
        Ok(PodView { record, state })
    }

    /// Finds a pod by its full id, else its exact name, else a unique id prefix.
    pub fn resolve(&self, query: &str) -> Result<PodView, PodError> {
        let not_found = || PodError::NotFound {
            query: query.to_owned(),
        };
        if query.is_empty() {
            return Err(not_found());
        }
        let mut views = self.list()?;
        if let Some(i) = views.iter().position(|v| v.id().as_str() == query) {
            return Ok(views.swap_remove(i));
        }
        if let Some(i) = views.iter().position(|v| v.name() == query) {
            return Ok(views.swap_remove(i));
        }
        let mut matches: Vec<PodView> = views
            .into_iter()
            .filter(|v| v.id().as_str().starts_with(query))
            .collect();
        match matches.len() {
            0 => Err(not_found()),
            1 => Ok(matches.remove(0)),
            _ => Err(PodError::Ambiguous {
                query: query.to_owned(),
                candidates: matches
                    .iter()
                    .map(|v| format!("{} ({})", v.id().short(), v.name()))
                    .collect(),
            }),
        }
    }

    /// Writes a pod's state to its run directory (if it still has one) and to the store's
    /// copy.
    pub fn save_state(&self, state: &PodState) -> Result<(), PodError> {
        if self.dirs.run_dir(&state.id).is_dir() {
            write_json_atomic(&self.dirs.state_path(&state.id), state)?;
        }
        write_json_atomic(&self.dirs.stored_state_path(&state.id), state)
    }

    /// Removes a pod's run and store directories (logs included); missing ones are fine.
    /// The caller stops the pod first: this does not look at its supervisor.
    pub fn remove(&self, id: &PodId) -> Result<(), PodError> {
        self.remove_later(id)?.delete()
    }

    /// [`Registry::remove`], but for deleting the pod's files: the pod is gone (its
    /// network and cgroup released, its directories moved out of the registry's sight, its
    /// name free) once this returns; the files go with [`Doomed::delete`], which the caller
    /// may leave until after it has told whoever waits (an auto-remove pod's supervisor
    /// does, with the CLI waiting for it). What a removal moved aside and did not get to
    /// delete (its supervisor died) goes with the next removal.
    pub fn remove_later(&self, id: &PodId) -> Result<Doomed, PodError> {
        let _guard = self.lock_store()?;
        // A pod whose supervisor died still holds its network (namespace, veth, IP lease):
        // release it first (nothing to do when the supervisor did, or there was none).
        if let Err(e) = crate::network::detach(&self.dirs.network_path(id)) {
            return Err(PodError::Network(e.to_string()));
        }
        // A container-runtime pod whose supervisor died may still have processes in its
        // cgroup (its host agent's containers): kill them and remove the cgroup.
        let layout = crate::agent::layout::PodLayout::host(id, &self.dirs.run);
        if let Err(e) = crate::runtime::container::leftovers::remove_cgroup(&layout.cgroup_parent) {
            return Err(PodError::Leftovers(e.to_string()));
        }
        // What earlier removals moved aside and did not get to delete (their supervisor
        // died in between).
        self.remove_leftovers();
        remove_hidden(&self.dirs.run, &[".removing"]);
        let mut doomed = Doomed { dirs: Vec::new() };
        for (dir, gone) in [
            (self.dirs.store_dir(id), self.staging_dir(id, "removing")),
            (
                self.dirs.run_dir(id),
                self.dirs.run.join(format!(".{id}.removing")),
            ),
        ] {
            match fs::rename(&dir, &gone) {
                Ok(()) => doomed.dirs.push(gone),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(PodError::io("remove", dir, e)),
            }
        }
        Ok(doomed)
    }

    /// The ids of the pods in the store (entries that are not ids are not pods).
    fn ids(&self) -> Result<Vec<PodId>, PodError> {
        let entries = match fs::read_dir(&self.dirs.store) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(PodError::io("list", &self.dirs.store, e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| PodError::io("list", &self.dirs.store, e))?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| PodId::parse(n).ok())
            {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Every readable record (for name checks).
    fn records(&self) -> Result<Vec<PodRecord>, PodError> {
        let mut records = Vec::new();
        for id in self.ids()? {
            match read_json::<PodRecord>(&self.dirs.record_path(&id)) {
                Ok(r) => records.push(r),
                Err(e) => tracing::warn!("skipping pod {}: {e}", id.short()),
            }
        }
        Ok(records)
    }

    /// `store/.<id>.<what>`: a store directory being made or removed.
    fn staging_dir(&self, id: &PodId, what: &str) -> PathBuf {
        self.dirs.store.join(format!(".{id}.{what}"))
    }

    /// Removes what a create or remove that died midway left in the store (only ever made
    /// under the store lock, which the caller holds).
    fn remove_leftovers(&self) {
        remove_hidden(&self.dirs.store, &[".tmp", ".removing"]);
    }

    /// Takes the store lock, waiting for it; released when the file is dropped.
    fn lock_store(&self) -> Result<File, PodError> {
        make_dir(&self.dirs.store, true)?;
        let path = self.dirs.store_lock_path();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| PodError::io("open", &path, e))?;
        file.lock().map_err(|e| PodError::io("lock", &path, e))?;
        Ok(file)
    }
}

/// `mkdir` with mode 0700; `parents` also makes missing parents and accepts an existing
/// directory.
fn make_dir(path: &Path, parents: bool) -> Result<(), PodError> {
    DirBuilder::new()
        .mode(0o700)
        .recursive(parents)
        .create(path)
        .map_err(|e| PodError::io("create directory", path, e))
}

/// Deletes the directories in `root` named `.<something><suffix>` for one of `suffixes`.
fn remove_hidden(root: &Path, suffixes: &[&str]) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let hidden = name.starts_with('.') && suffixes.iter().any(|s| name.ends_with(s));
        if hidden && let Err(e) = remove_dir_all_if_present(&entry.path()) {
            tracing::warn!("{e}");
        }
    }
}

/// A removed pod's directories, out of the registry's sight, still to delete.
#[must_use = "the pod's files stay until delete() (or the next removal)"]
pub struct Doomed {
    dirs: Vec<PathBuf>,
}

impl Doomed {
    /// Deletes them (all it can; the first error).
    pub fn delete(self) -> Result<(), PodError> {
        let mut result = Ok(());
        for dir in &self.dirs {
            if let Err(e) = remove_dir_all_if_present(dir) {
                result = result.and(Err(e));
            }
        }
        result
    }
}

fn remove_dir_all_if_present(path: &Path) -> Result<(), PodError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(PodError::io("remove", path, e)),
        _ => Ok(()),
    }
}

fn sync_dir(path: &Path) -> Result<(), PodError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| PodError::io("sync directory", path, e))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    use super::*;
    use crate::pod::spec::tests::spec;

    fn registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let dirs = PodDirs::new(dir.path().join("run"), dir.path().join("root/pods"));
        (dir, Registry::new(dirs))
    }

    fn tree(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(dir).unwrap().display().to_string());
        }
        out.sort();
        out
    }

    #[test]
    fn create_makes_both_directories_and_a_created_state() {
        let (_tmp, reg) = registry();
        let (record, lock) = reg.create(spec("web")).unwrap();
        let d = reg.dirs();
        let id = &record.id;
        assert_eq!(record.name, "web");
        assert_eq!(read_json::<PodRecord>(&d.record_path(id)).unwrap(), record);
        let live: PodState = read_json(&d.state_path(id)).unwrap();
        let stored: PodState = read_json(&d.stored_state_path(id)).unwrap();
        assert_eq!(live, stored);
        assert_eq!(live.status, PodStatus::Created);
        assert_eq!(live.created_at, record.created_at);
        assert_eq!(live.containers, [ContainerState::created("app")]);
        assert!(d.logs_dir(id).is_dir());
        assert_eq!(tree(&d.store), [".lock".to_string(), id.to_string()]);
        for dir in [d.run_dir(id), d.store_dir(id)] {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
        }
        assert!(reg.is_supervised(id));
        let view = reg.get(id).unwrap();
        assert_eq!(view.status(), &PodStatus::Created);
        // what a supervisor forked from the creating CLI starts from, instead of this read
        assert_eq!(view.state, created_state(&record));
        drop(lock);
    }

    #[test]
    fn an_unnamed_pod_gets_a_generated_name() {
        let (_tmp, reg) = registry();
        let (record, _lock) = reg.create(spec("")).unwrap();
        assert_eq!(record.name, generate_name(&record.id));
        assert_eq!(record.spec.name, record.name);
    }

    #[test]
    fn an_invalid_spec_creates_nothing() {
        let (_tmp, reg) = registry();
        let mut s = spec("web");
        s.vm.memory_mib = 0;
        assert!(matches!(reg.create(s), Err(PodError::InvalidSpec { .. })));
        assert!(reg.list().unwrap().is_empty());
    }

    #[test]
    fn a_failure_midway_leaves_no_half_pod() {
        let (_tmp, reg) = registry();
        // The run directory cannot be made: a file is in its way.
        fs::write(&reg.dirs().run, "").unwrap();
        assert!(matches!(reg.create(spec("web")), Err(PodError::Io { .. })));
        assert!(reg.list().unwrap().is_empty());
        assert_eq!(tree(&reg.dirs().store), [".lock"]);
        // And the name is free once the way is clear.
        fs::remove_file(&reg.dirs().run).unwrap();
        reg.create(spec("web")).unwrap();
    }

    #[test]
    fn list_and_resolve() {
        let (_tmp, reg) = registry();
        let mut ids = Vec::new();
        let mut locks = Vec::new();
        for name in ["a", "b", "c"] {
            let (record, lock) = reg.create(spec(name)).unwrap();
            ids.push(record.id);
            locks.push(lock);
            std::thread::sleep(Duration::from_millis(2));
        }
        let names: Vec<_> = reg
            .list()
            .unwrap()
            .iter()
            .map(|v| v.name().to_owned())
            .collect();
        assert_eq!(names, ["c", "b", "a"], "newest first");

        assert_eq!(reg.resolve("b").unwrap().id(), &ids[1]);
        assert_eq!(reg.resolve(ids[2].as_str()).unwrap().name(), "c");
        assert_eq!(reg.resolve(ids[0].short()).unwrap().name(), "a");
        let err = reg.resolve("nope").unwrap_err();
        assert!(matches!(err, PodError::NotFound { .. }));
        assert_eq!(
            err.to_string(),
            "no pod named or with id prefix nope: see peapod ps -a"
        );
        assert!(matches!(reg.resolve(""), Err(PodError::NotFound { .. })));
    }

    #[test]
    fn an_id_prefix_shared_by_two_pods_is_ambiguous() {
        let (_tmp, reg) = registry();
        // Make pods until two share a first hex digit (at most 17 by pigeonhole).
        let mut seen = std::collections::HashMap::new();
        let mut locks = Vec::new();
        let (first, second) = loop {
            let (record, lock) = reg.create(spec("")).unwrap();
            locks.push(lock);
            let c = record.id.as_str()[..1].to_owned();
            if let Some(other) = seen.insert(c, record.clone()) {
                break (other, record);
            }
        };
        let query = &first.id.as_str()[..1];
        match reg.resolve(query).unwrap_err() {
            PodError::Ambiguous { candidates, .. } => {
                assert_eq!(candidates.len(), 2);
                let all = candidates.join(" ");
                for r in [&first, &second] {
                    assert!(
                        all.contains(&format!("{} ({})", r.id.short(), r.name)),
                        "{all}"
                    );
                }
            }
            e => panic!("{e}"),
        }
        // A name wins over an id prefix.
        assert_eq!(reg.resolve(&first.name).unwrap().id(), &first.id);
    }

    #[test]
    fn a_name_in_use_is_refused_across_registries() {
        let (_tmp, reg) = registry();
        let other = Registry::new(reg.dirs().clone());
        let (record, _lock) = reg.create(spec("web")).unwrap();
        let err = other.create(spec("web")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "name web is in use by pod {}: remove it (peapod rm web) or choose another --name",
                record.id.short()
            )
        );
        // Also after the first pod's supervisor is gone: the name stays taken until rm.
        drop(_lock);
        assert!(matches!(
            other.create(spec("web")),
            Err(PodError::NameInUse { .. })
        ));
    }

    #[test]
    fn of_two_racing_creates_exactly_one_wins() {
        let (_tmp, reg) = registry();
        for round in 0..10 {
            let name = format!("race{round}");
            let barrier = Arc::new(Barrier::new(2));
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    // Each thread its own Registry, so its own open file of store/.lock:
                    // flock excludes open file descriptions, as between processes.
                    let reg = Registry::new(reg.dirs().clone());
                    let (barrier, name) = (barrier.clone(), name.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        reg.create(spec(&name)).map(|(record, _)| record)
                    })
                })
                .collect();
            let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let wins = results.iter().filter(|r| r.is_ok()).count();
            assert_eq!(wins, 1, "{results:?}");
            assert!(
                results
                    .iter()
                    .any(|r| matches!(r, Err(PodError::NameInUse { .. })))
            );
        }
        assert_eq!(reg.list().unwrap().len(), 10);
    }

    #[test]
    fn create_waits_for_the_store_lock() {
        let (_tmp, reg) = registry();
        fs::create_dir_all(&reg.dirs().store).unwrap();
        let held = File::create(reg.dirs().store_lock_path()).unwrap();
        held.lock().unwrap();
        let other = reg.clone();
        let handle = std::thread::spawn(move || other.create(spec("web")).map(|(r, _)| r));
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !handle.is_finished(),
            "create went ahead without the store lock"
        );
        drop(held);
        handle.join().unwrap().unwrap();
    }

    #[test]
    fn supervised_while_the_lock_is_held() {
        let (_tmp, reg) = registry();
        let (record, lock) = reg.create(spec("web")).unwrap();
        let id = &record.id;
        assert!(reg.is_supervised(id));
        assert!(matches!(
            SupervisorLock::acquire(&reg.dirs().lock_path(id)),
            Err(PodError::LockHeld { .. })
        ));
        drop(lock);
        assert!(!reg.is_supervised(id));
        let again = SupervisorLock::acquire(&reg.dirs().lock_path(id)).unwrap();
        assert!(reg.is_supervised(id));
        drop(again);
        let unknown = PodId::generate().unwrap();
        assert!(!reg.is_supervised(&unknown));
        assert!(reg.wait_unsupervised(&unknown, Duration::ZERO));
    }

    #[test]
    fn waiting_for_the_supervisor_ends_when_its_lock_is_dropped() {
        let (_tmp, reg) = registry();
        let (record, lock) = reg.create(spec("web")).unwrap();
        let id = record.id.clone();
        assert!(!reg.wait_unsupervised(&id, Duration::from_millis(50)));
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(lock);
        });
        let started = std::time::Instant::now();
        assert!(reg.wait_unsupervised(&id, Duration::from_secs(20)));
        assert!(started.elapsed() < Duration::from_secs(20));
        assert!(!reg.is_supervised(&id));
        holder.join().unwrap();
    }

    #[test]
    fn the_lock_can_be_handed_over_by_descriptor() {
        let (_tmp, reg) = registry();
        let (record, lock) = reg.create(spec("web")).unwrap();
        let id = &record.id;
        let flags = |fd: RawFd| {
            FdFlag::from_bits_truncate(
                fcntl(
                    // SAFETY: fd is open for the duration of the call (held by `lock`
                    // or `adopted` below).
                    unsafe { BorrowedFd::borrow_raw(fd) },
                    FcntlArg::F_GETFD,
                )
                .unwrap(),
            )
        };
        assert!(flags(lock.as_raw_fd()).contains(FdFlag::FD_CLOEXEC));
        lock.clear_cloexec().unwrap();
        assert!(!flags(lock.as_raw_fd()).contains(FdFlag::FD_CLOEXEC));
        // What a child gets across exec: another descriptor of the same open file.
        let inherited = lock.as_fd().try_clone_to_owned().unwrap();
        drop(lock);
        assert!(
            reg.is_supervised(id),
            "the inherited descriptor keeps the lock"
        );
        let adopted = SupervisorLock::adopt(inherited).unwrap();
        assert!(flags(adopted.as_raw_fd()).contains(FdFlag::FD_CLOEXEC));
        assert!(reg.is_supervised(id));
        let raw: OwnedFd = adopted.into();
        assert!(reg.is_supervised(id));
        drop(raw);
        assert!(!reg.is_supervised(id));

        // A descriptor of a lock someone else holds is refused.
        let _held = SupervisorLock::acquire(&reg.dirs().lock_path(id)).unwrap();
        let stranger = File::open(reg.dirs().lock_path(id)).unwrap();
        assert!(matches!(
            SupervisorLock::adopt(stranger.into()),
            Err(PodError::LockHeld { .. })
        ));
    }

    #[test]
    fn a_pod_whose_supervisor_is_gone_lists_as_failed() {
        let (_tmp, reg) = registry();
        let (record, lock) = reg.create(spec("web")).unwrap();
        let mut state = reg.get(&record.id).unwrap().state;
        state.status = PodStatus::Running;
        reg.save_state(&state).unwrap();
        assert_eq!(reg.list().unwrap()[0].status(), &PodStatus::Running);
        drop(lock);
        let views = reg.list().unwrap();
        assert_eq!(
            views[0].status(),
            &PodStatus::Failed {
                reason: SUPERVISOR_GONE.into()
            }
        );
        // The files still say Running.
        let on_disk: PodState = read_json(&reg.dirs().state_path(&record.id)).unwrap();
        assert_eq!(on_disk.status, PodStatus::Running);
        // An exited pod needs no supervisor.
        state.status = PodStatus::Exited { code: 0 };
        reg.save_state(&state).unwrap();
        assert_eq!(
            reg.list().unwrap()[0].status(),
            &PodStatus::Exited { code: 0 }
        );
    }

    #[test]
    fn after_a_reboot_the_store_copy_is_listed() {
        let (_tmp, reg) = registry();
        let (record, lock) = reg.create(spec("web")).unwrap();
        let mut state = reg.get(&record.id).unwrap().state;
        state.status = PodStatus::Exited { code: 7 };
        reg.save_state(&state).unwrap();
        drop(lock);
        fs::remove_dir_all(&reg.dirs().run).unwrap();
        let view = reg.resolve("web").unwrap();
        assert_eq!(view.state, state);
        // Saving with no run directory writes only the store copy.
        state.status = PodStatus::Exited { code: 8 };
        reg.save_state(&state).unwrap();
        assert!(!reg.dirs().run_dir(&record.id).exists());
        assert_eq!(reg.get(&record.id).unwrap().state, state);
    }

    #[test]
    fn unreadable_pods_are_skipped_or_shown_failed() {
        let (_tmp, reg) = registry();
        let (a, _la) = reg.create(spec("a")).unwrap();
        let (b, _lb) = reg.create(spec("b")).unwrap();
        fs::write(reg.dirs().record_path(&a.id), "garbage").unwrap();
        fs::write(reg.dirs().state_path(&b.id), "garbage").unwrap();
        fs::write(reg.dirs().stored_state_path(&b.id), "garbage").unwrap();
        fs::create_dir(reg.dirs().store.join("not-a-pod")).unwrap();
        let views = reg.list().unwrap();
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].id(), &b.id);
        assert!(matches!(views[0].status(), PodStatus::Failed { .. }));
        // And a pod with unreadable state can still be removed.
        reg.remove(&b.id).unwrap();
    }

    #[test]
    fn remove_leaves_nothing_and_frees_the_name() {
        let (_tmp, reg) = registry();
        let (record, lock) = reg.create(spec("web")).unwrap();
        drop(lock);
        reg.remove(&record.id).unwrap();
        assert_eq!(tree(&reg.dirs().store), [".lock"]);
        assert!(tree(&reg.dirs().run).is_empty());
        assert!(matches!(reg.resolve("web"), Err(PodError::NotFound { .. })));
        reg.remove(&record.id).unwrap();
        reg.create(spec("web")).unwrap();
    }

    #[test]
    fn a_pod_removed_for_later_is_gone_at_once_and_its_files_with_delete() {
        let (_tmp, reg) = registry();
        let (record, lock) = reg.create(spec("web")).unwrap();
        drop(lock);
        fs::write(reg.dirs().run_dir(&record.id).join("state.json"), "{}").unwrap();
        let doomed = reg.remove_later(&record.id).unwrap();
        assert!(matches!(reg.resolve("web"), Err(PodError::NotFound { .. })));
        assert!(reg.list().unwrap().is_empty());
        assert!(!reg.dirs().run_dir(&record.id).exists());
        assert!(!reg.dirs().store_dir(&record.id).exists());
        let (again, lock) = reg.create(spec("web")).unwrap();
        drop(lock);
        doomed.delete().unwrap();
        assert_eq!(tree(&reg.dirs().run), [again.id.to_string()]);
        assert_eq!(tree(&reg.dirs().store), [".lock", again.id.as_str()]);
    }

    #[test]
    fn files_a_removal_did_not_get_to_delete_go_with_the_next_removal() {
        let (_tmp, reg) = registry();
        let (a, lock) = reg.create(spec("a")).unwrap();
        drop(lock);
        let (b, lock) = reg.create(spec("b")).unwrap();
        drop(lock);
        // `a`'s supervisor died before deleting: only the next creation or removal sees it.
        std::mem::forget(reg.remove_later(&a.id).unwrap());
        assert_eq!(tree(&reg.dirs().run).len(), 2, "moved aside, not deleted");
        reg.remove(&b.id).unwrap();
        assert!(tree(&reg.dirs().run).is_empty());
        assert_eq!(tree(&reg.dirs().store), [".lock"]);
    }

    #[test]
    fn leftovers_of_a_dead_create_are_cleaned_up() {
        let (_tmp, reg) = registry();
        let id = PodId::generate().unwrap();
        let stale = reg.staging_dir(&id, "tmp");
        fs::create_dir_all(&stale).unwrap();
        fs::write(stale.join("pod.json"), "{").unwrap();
        reg.create(spec("web")).unwrap();
        assert!(!stale.exists());
    }
}
