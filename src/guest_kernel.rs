//! Where the guest kernel is: `PEAPOD_GUEST_KERNEL`, else the one `kernel/build.sh` built for
//! this checkout's config fragment, found by the same cache key the script uses
//! (see kernel/README.md): sha256 of the fragment's bytes followed by the installed
//! linux-source-6.1 version, first 16 hex digits.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The fragment `kernel/build.sh` merges; built into peapod so the key matches this build.
const CONFIG_FRAGMENT: &[u8] = include_bytes!("../kernel/peapod.config");

#[derive(Debug, thiserror::Error)]
pub enum GuestKernelError {
    #[error("guest kernel {0} (from PEAPOD_GUEST_KERNEL) does not exist")]
    EnvMissing(PathBuf),
    #[error(
        "cannot tell which guest kernel matches this peapod: linux-source-6.1 is not installed \
         (`apt-get install linux-source-6.1`, then kernel/build.sh), or pass --kernel"
    )]
    NoSource,
    #[error("guest kernel not built at {0}: build it with kernel/build.sh, or pass --kernel")]
    NotBuilt(PathBuf),
}

/// The variable that names the guest kernel, overriding the built one.
pub const GUEST_KERNEL_ENV: &str = "PEAPOD_GUEST_KERNEL";

/// The default guest kernel, or why there is none.
pub fn default_kernel() -> Result<PathBuf, GuestKernelError> {
    if let Some(path) = std::env::var_os(GUEST_KERNEL_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(GuestKernelError::EnvMissing(path))
        };
    }
    let version = source_version().ok_or(GuestKernelError::NoSource)?;
    let path = built_kernel_path(&crate::dirs::cache_dir(), CONFIG_FRAGMENT, &version);
    if path.is_file() {
        Ok(path)
    } else {
        Err(GuestKernelError::NotBuilt(path))
    }
}

/// `<cache>/kernel/<key>/vmlinux` for a fragment and a linux-source version.
pub fn built_kernel_path(cache: &Path, fragment: &[u8], version: &str) -> PathBuf {
    let mut hash = Sha256::new();
    hash.update(fragment);
    hash.update(version.as_bytes());
    let key: String = hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    cache.join("kernel").join(key).join("vmlinux")
}

fn source_version() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "linux-source-6.1"])
        .output()
        .ok()?;
    let version = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !version.is_empty()).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_matches_the_shell_formula() {
        // { printf 'CONFIG_X=y\n'; printf '%s' 6.1.1-1; } | sha256sum | cut -c1-16
        let path = built_kernel_path(Path::new("/c"), b"CONFIG_X=y\n", "6.1.1-1");
        let out = Command::new("sh")
            .args([
                "-c",
                "{ printf 'CONFIG_X=y\\n'; printf '%s' 6.1.1-1; } | sha256sum | cut -c1-16",
            ])
            .output()
            .unwrap();
        let key = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            path,
            Path::new("/c/kernel").join(key.trim()).join("vmlinux")
        );
    }
}
