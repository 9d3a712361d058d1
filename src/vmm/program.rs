//! The program that runs a VM: one VM per process, started by the pod runtime and the
//! benchmarks.
//!
//! That is `peapod-vmm` (src/bin/peapod-vmm.rs: `peapod vm boot`'s options and code, and
//! nothing else) when it sits next to the running peapod binary, as cargo builds it. The
//! multi-call `peapod` binary also carries image pulls, TLS and the whole CLI; a VMM process
//! started from it keeps about 2 MiB more of it resident (measured in the test bed: 4.6 MiB
//! RSS without guest RAM through `peapod vm boot`, 2.7 MiB through `peapod-vmm`). Without
//! `peapod-vmm`, `peapod vm boot` does the same work. `PEAPOD_VMM` names another program.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The file name of the standalone VMM, next to `peapod`.
pub const VMM_BINARY_NAME: &str = "peapod-vmm";

/// How to start a VMM process; [`VmmProgram::command`] gives a command that takes
/// `peapod vm boot`'s options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmProgram {
    pub path: PathBuf,
    /// Arguments before the VMM's options: `vm boot` for the multi-call binary.
    prefix: Vec<OsString>,
}

impl VmmProgram {
    /// `PEAPOD_VMM` if set, else `peapod-vmm` next to the running binary, else the running
    /// binary's `vm boot`.
    pub fn find() -> std::io::Result<Self> {
        if let Some(path) = std::env::var_os("PEAPOD_VMM") {
            return Ok(Self::standalone(path.into()));
        }
        Ok(Self::next_to(&std::env::current_exe()?))
    }

    /// `peapod-vmm` beside `peapod` if it is there, else `peapod vm boot`.
    pub fn next_to(peapod: &Path) -> Self {
        match standalone_beside(peapod) {
            Some(vmm) => Self::standalone(vmm),
            None => Self {
                path: peapod.to_path_buf(),
                prefix: vec!["vm".into(), "boot".into()],
            },
        }
    }

    /// A program that takes the VMM's options directly.
    pub fn standalone(path: PathBuf) -> Self {
        Self {
            path,
            prefix: Vec::new(),
        }
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.path);
        command.args(&self.prefix);
        command
    }
}

/// The standalone VMM in the same directory as `peapod`, if there is one.
pub fn standalone_beside(peapod: &Path) -> Option<PathBuf> {
    let vmm = peapod.with_file_name(VMM_BINARY_NAME);
    vmm.is_file().then_some(vmm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standalone_vmm_beside_peapod_is_preferred() {
        let dir = tempfile::tempdir().unwrap();
        let peapod = dir.path().join("peapod");
        std::fs::write(&peapod, b"").unwrap();
        let fallback = VmmProgram::next_to(&peapod);
        let args: Vec<_> = fallback
            .command()
            .get_args()
            .map(|a| a.to_owned())
            .collect();
        assert_eq!(fallback.path, peapod);
        assert_eq!(args, ["vm", "boot"]);

        std::fs::write(dir.path().join(VMM_BINARY_NAME), b"").unwrap();
        let slim = VmmProgram::next_to(&peapod);
        assert_eq!(slim.path, dir.path().join(VMM_BINARY_NAME));
        assert_eq!(slim.command().get_args().count(), 0);
    }
}
