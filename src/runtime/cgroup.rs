//! The cgroup a pod's VMM runs in: `peapod.slice/pod-<id>/vmm` in the host's cgroup v2
//! hierarchy, its `memory.max` the guest's RAM plus [`VMM_MEMORY_OVERHEAD`], so that a
//! guest that takes over its VMM cannot take more of the host's memory than the pod was
//! given (Firecracker's jailer puts each VMM in a cgroup of its own the same way). The
//! VMM joins it between fork and exec ([`VmmCgroup::procs`]), before it maps guest RAM.
//! The pod's cgroup tree goes when the pod is removed
//! ([`crate::runtime::container::leftovers::remove_cgroup`], the same as a host pod's).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Where cgroup v2 is mounted.
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup";

/// What a VMM may use beyond guest RAM: its own code and heap (a few MiB, see
/// `peapod bench models`), device buffers, and the page cache of its disk images.
pub const VMM_MEMORY_OVERHEAD: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the VMM's cgroup {path}: {action}: {source}")]
pub struct CgroupError {
    path: PathBuf,
    action: &'static str,
    #[source]
    source: io::Error,
}

/// Whether this host has a cgroup v2 hierarchy to put VMMs in.
pub fn available() -> bool {
    Path::new(CGROUP2_ROOT).join("cgroup.controllers").exists()
}

/// A VMM's cgroup, made and limited, with its `cgroup.procs` open for the VMM to join.
#[derive(Debug)]
pub struct VmmCgroup {
    pub path: PathBuf,
    pub procs: File,
}

impl VmmCgroup {
    /// Makes `path` (below [`CGROUP2_ROOT`]) with the memory controller enabled on the way
    /// down and `memory.max` = `guest_ram` + [`VMM_MEMORY_OVERHEAD`].
    pub fn create(path: &Path, guest_ram: u64) -> Result<Self, CgroupError> {
        let err = |action| {
            move |source| CgroupError {
                path: path.to_path_buf(),
                action,
                source,
            }
        };
        let below = path
            .strip_prefix(CGROUP2_ROOT)
            .map_err(|_| io::Error::other(format!("not below {CGROUP2_ROOT}")))
            .map_err(err("place it"))?;
        let mut level = PathBuf::from(CGROUP2_ROOT);
        for part in below.components() {
            enable_memory(&level).map_err(err("enable the memory controller"))?;
            level.push(part);
            match std::fs::create_dir(&level) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(err("create it")(e));
                }
                _ => {}
            }
        }
        let max = guest_ram.saturating_add(VMM_MEMORY_OVERHEAD);
        std::fs::write(path.join("memory.max"), max.to_string())
            .map_err(err("write memory.max"))?;
        let procs = OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))
            .map_err(err("open cgroup.procs"))?;
        Ok(VmmCgroup {
            path: path.to_path_buf(),
            procs,
        })
    }
}

/// Enables the memory controller for the children of cgroup `dir` (a no-op if it is on).
fn enable_memory(dir: &Path) -> io::Result<()> {
    let control = dir.join("cgroup.subtree_control");
    if std::fs::read_to_string(&control)?
        .split_whitespace()
        .any(|c| c == "memory")
    {
        return Ok(());
    }
    std::fs::write(control, "+memory")
}
