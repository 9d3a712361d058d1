//! Where peapod keeps things on the host.

use std::path::PathBuf;

/// Built artifacts that can be made again (L1 initramfs, guest kernels):
/// `$PEAPOD_CACHE_DIR`, else `$XDG_CACHE_HOME/peapod`, else `~/.cache/peapod`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PEAPOD_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("peapod");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/peapod")
}
