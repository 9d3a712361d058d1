//! The pod model on disk: what a pod runs ([`spec`]), what it is doing ([`state`]), where
//! its files live ([`layout`]), the set of pods on this host ([`registry`]), its ids and
//! names ([`id`]), its containers' logs ([`logs`]) and the Kubernetes Pod and Secret YAML
//! that `pod apply` reads ([`kube`]).
//!
//! Nothing here starts a process or a VM: the per-pod supervisor and the CLI verbs build on
//! these types, and everything is unit-tested against temporary directories.
//!
//! ```text
//! RUN/<id>/                       tmpfs (`$PEAPOD_RUN_DIR`, else /run/peapod): gone on reboot
//!     state.json                  the live PodState, written by the supervisor
//!     supervisor.sock             the supervisor's API socket
//!     supervisor.lock             flock(2)ed by the supervisor for as long as it lives
//!     console.log, vmm.log        the VM's serial console and the VMM's own log
//! ROOT/pods/<id>/                 persistent (`$PEAPOD_ROOT`, else /var/lib/peapod)
//!     pod.json                    the PodRecord: id, name, creation time, spec
//!     state.json                  a copy of the last state, so `ps -a` survives a reboot
//!     logs/<container>.log(.1)    container output in the CRI log format
//! ROOT/pods/.lock                 flock(2)ed while a pod is created or removed
//! ```

use std::path::PathBuf;

use crate::protocol::WireError;

pub mod id;
pub mod kube;
pub mod layout;
pub mod logs;
pub mod registry;
pub mod spec;
pub mod state;

pub use id::{PodId, generate_name, validate_name};
pub use layout::PodDirs;
pub use logs::{LogOptions, LogStream, LogWriter, follow_logs, read_logs};
pub use registry::{PodRecord, PodView, Registry, SupervisorLock};
pub use spec::{ContainerConfig, PodSpec, VmSize, VolumeSnapshot};
pub use state::{
    ContainerState, ContainerStatus, PodState, PodStatus, read_json, write_json_atomic,
};

/// Everything that can go wrong with pods on disk.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(
        "pod name {name:?} is not valid: use 1 to {max} letters, digits, '_', '.' or '-', \
         starting with a letter or digit",
        max = id::MAX_NAME_LEN
    )]
    InvalidName { name: String },

    #[error("pod id {id:?} is not valid: a pod id is 64 lowercase hex digits (see peapod ps -a)")]
    InvalidId { id: String },

    #[error("invalid pod spec: {message}")]
    InvalidSpec { message: String },

    #[error("cannot release the pod's network: {0}; fix the cause and run rm again")]
    Network(String),

    #[error("cannot remove what the pod left on the host: {0}; fix the cause and run rm again")]
    Leftovers(String),

    #[error("invalid pod spec: container {container:?}: {source}")]
    InvalidContainer {
        container: String,
        #[source]
        source: WireError,
    },

    #[error(
        "name {name} is in use by pod {short_id}: remove it (peapod rm {name}) or choose \
         another --name"
    )]
    NameInUse { name: String, short_id: String },

    #[error("no pod named or with id prefix {query}: see peapod ps -a")]
    NotFound { query: String },

    #[error(
        "{query} matches more than one pod ({}): give more of the id, or the full name",
        candidates.join(", ")
    )]
    Ambiguous {
        query: String,
        candidates: Vec<String>,
    },

    #[error(
        "the supervisor lock {} is held by another process: the pod already has a supervisor",
        path.display()
    )]
    LockHeld { path: PathBuf },

    #[error(
        "cannot {what} {}: {source} (are $PEAPOD_RUN_DIR and $PEAPOD_ROOT writable? \
         peapod keeps pods there)",
        path.display()
    )]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write the logs out: {source}")]
    Output {
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{} is not a valid pod file: {source} (remove the pod with peapod rm, or restore the \
         file)",
        path.display()
    )]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl PodError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PodError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn spec(message: impl Into<String>) -> Self {
        PodError::InvalidSpec {
            message: message.into(),
        }
    }
}
