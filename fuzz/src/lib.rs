//! What peapod's fuzz targets share: a hostile virtio driver that builds descriptor tables,
//! rings and buffers in a small guest memory from the fuzzer's bytes and drives a device
//! through its virtio-mmio registers, and the devices themselves on host ends a target
//! controls (a socket pair for the tap, a temporary Unix socket for vsock).
//!
//! Every device is brought up the way Linux's virtio_mmio driver does it, so the device's real
//! activation path runs; from then on the fuzzer's operations write anything anywhere.

pub mod devices;
pub mod driver;

/// Process-wide setup every target needs once: a write to a closed socket must fail with
/// EPIPE, not kill the process (peapod's binaries ignore SIGPIPE as every Rust `main` does;
/// libFuzzer's `main` does not).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: setting a signal to SIG_IGN installs no handler code and touches no memory.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
    });
}

/// For targets that write files from fuzzed archives: if running as root, become `nobody`
/// first, so that an archive escaping its directory (the bug the unpacker's confinement
/// exists to prevent) can do no harm to the machine running the fuzzer. Unpacking then takes
/// the unprivileged path (no chown, no device nodes), as it does for a non-root user.
pub fn drop_root() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        init();
        if nix::unistd::geteuid().is_root() {
            let nobody = nix::unistd::Uid::from_raw(65534);
            let nogroup = nix::unistd::Gid::from_raw(65534);
            nix::unistd::setgroups(&[]).expect("drop supplementary groups");
            nix::unistd::setgid(nogroup).expect("become group nogroup");
            nix::unistd::setuid(nobody).expect("become user nobody");
        }
    });
}

/// A scratch directory in memory where possible (`/dev/shm`): targets make one per input.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("peapod-fuzz-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::Builder::new().prefix("peapod-fuzz-").tempdir())
        .expect("a scratch directory")
}

/// Gives the owner full access to every directory under `dir` (an archive may leave some at
/// mode 000), so that the tree can be walked and removed.
pub fn make_owner_writable(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            make_owner_writable(&entry.path());
        }
    }
}
