//! The L1's initramfs: a base archive (busybox, the KVM and networking modules, peapod with
//! its shared libraries, the CNI plugins and iptables where the host has them, `/init`), cached by the hash of its contents, followed by a small per-run archive
//! (the command to run and the copied host paths). The kernel unpacks both, in order.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::assets::{self, AssetError, L1Assets};
use crate::cpio::{CpioError, CpioWriter};

/// Where peapod itself lives inside the L1.
pub const GUEST_PEAPOD: &str = "/usr/bin/peapod";
/// Where the standalone VMM (`peapod-vmm`) lives inside the L1, beside peapod.
pub const GUEST_PEAPOD_VMM: &str = "/usr/bin/peapod-vmm";
/// Where the host's mkfs.erofs (erofs-utils), if any, lives inside the L1.
pub const GUEST_MKFS_EROFS: &str = "/usr/bin/mkfs.erofs";
/// What the base archive tells init: which modules give /dev/kvm.
pub const BASE_SPEC: &str = "/etc/peapod/machine.json";
/// What the per-run archive tells init: the command.
pub const RUN_SPEC: &str = "/etc/peapod/run.json";
/// Bumped whenever the base layout changes, so old cache entries are not reused.
const LAYOUT_VERSION: &str = "peapod-l1-base-v2";

const INIT_SCRIPT: &str = "#!/bin/busybox sh\nexec /usr/bin/peapod machine init\n";
const BASE_DIRS: &[&str] = &[
    "/bin",
    "/sbin",
    "/usr/bin",
    "/usr/sbin",
    "/dev",
    "/proc",
    "/sys",
    "/tmp",
    "/run",
    "/root",
    "/etc",
    "/mnt",
    "/var/tmp",
];

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error(transparent)]
    Asset(#[from] AssetError),
    #[error(transparent)]
    Cpio(#[from] CpioError),
    #[error("--copy {0:?}: expected HOSTPATH or HOSTPATH:/ABSOLUTE/GUESTPATH")]
    BadCopy(String),
    #[error("--copy {path}: {source}")]
    CopySource {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What init loads: the KVM modules by virtualization extension (`svm`, `vmx`) and the
/// networking modules, as guest paths in load order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseSpec {
    pub kvm_modules: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub net_modules: Vec<String>,
}

/// The command init runs in the L1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub argv: Vec<String>,
    /// `KEY=VALUE` pairs added to init's small default environment.
    pub env: Vec<String>,
    pub workdir: String,
}

/// A host path to put into the L1 (`--copy HOSTPATH[:GUESTPATH]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySpec {
    pub host: PathBuf,
    pub guest: String,
}

impl std::str::FromStr for CopySpec {
    type Err = InitramfsError;

    /// `HOST` (the same absolute path inside) or `HOST:/GUEST`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || InitramfsError::BadCopy(text.to_string());
        let (host, guest) = match text.split_once(':') {
            Some((host, guest)) if guest.starts_with('/') && !host.is_empty() => {
                (PathBuf::from(host), Some(guest.to_string()))
            }
            Some(_) => return Err(bad()),
            None if !text.is_empty() => (PathBuf::from(text), None),
            None => return Err(bad()),
        };
        let absolute = std::path::absolute(&host).map_err(|_| bad())?;
        let guest = match guest {
            Some(guest) => guest,
            None => absolute.to_str().ok_or_else(bad)?.to_string(),
        };
        Ok(CopySpec {
            host: absolute,
            guest,
        })
    }
}

enum Content {
    HostFile(PathBuf),
    Bytes(Vec<u8>),
    Symlink(String),
}

/// The base archive's entries before writing, so the cache key can be computed first.
struct BasePlan {
    files: BTreeMap<String, (u32, Content)>,
}

impl BasePlan {
    fn add_binary(&mut self, guest: &str, host: &Path) -> Result<(), InitramfsError> {
        self.files.insert(
            guest.to_string(),
            (0o755, Content::HostFile(host.to_path_buf())),
        );
        for lib in assets::shared_libraries(host)? {
            let guest = lib.to_string_lossy().into_owned();
            self.files.insert(guest, (0o755, Content::HostFile(lib)));
        }
        Ok(())
    }

    /// Pod networking's userland, each part where the host has it: the CNI plugins at the
    /// same path (where peapod looks by default), iptables with its links and dlopened
    /// extensions, and the /etc files it reads.
    fn add_network_tools(&mut self, tools: &assets::NetworkTools) -> Result<(), InitramfsError> {
        let mut binaries = tools.cni_plugins.clone();
        binaries.extend(tools.xtables.iter().cloned());
        binaries.extend(tools.xtables_libs.iter().cloned());
        for path in &binaries {
            let guest = path.to_string_lossy().into_owned();
            self.files
                .insert(guest, (0o755, Content::HostFile(path.clone())));
        }
        for lib in assets::shared_libraries_of_all(&binaries)? {
            let guest = lib.to_string_lossy().into_owned();
            self.files.insert(guest, (0o755, Content::HostFile(lib)));
        }
        if let Some(xtables) = &tools.xtables {
            let target = xtables
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let dir = xtables.parent().unwrap_or(Path::new("/usr/sbin"));
            for name in assets::XTABLES_NAMES {
                let guest = dir.join(name).to_string_lossy().into_owned();
                self.files
                    .insert(guest, (0o777, Content::Symlink(target.clone())));
            }
        }
        for path in &tools.etc_files {
            let guest = path.to_string_lossy().into_owned();
            self.files
                .insert(guest, (0o644, Content::HostFile(path.clone())));
        }
        Ok(())
    }

    fn key(&self) -> Result<String, InitramfsError> {
        let mut hash = Sha256::new();
        hash.update(LAYOUT_VERSION);
        for (guest, (mode, content)) in &self.files {
            hash.update(guest.as_bytes());
            hash.update(mode.to_le_bytes());
            match content {
                Content::Bytes(bytes) => hash.update(bytes),
                Content::HostFile(path) => hash_file(&mut hash, path)?,
                Content::Symlink(target) => hash.update(format!("-> {target}")),
            }
        }
        Ok(hex(&hash.finalize()[..8]))
    }

    fn write(&self, out: impl Write) -> Result<(), InitramfsError> {
        let mut cpio = CpioWriter::new(out);
        for dir in BASE_DIRS {
            cpio.dir(dir, 0o755)?;
        }
        cpio.dir("/tmp", 0o1777)?;
        cpio.char_device("/dev/console", 0o600, 5, 1)?;
        for (guest, (mode, content)) in &self.files {
            match content {
                Content::Bytes(bytes) => cpio.file(guest, *mode, bytes)?,
                Content::HostFile(path) => cpio.file_from(guest, *mode, path)?,
                Content::Symlink(target) => cpio.symlink(guest, target)?,
            }
        }
        cpio.finish()?;
        Ok(())
    }
}

/// Builds the base archive, or finds it in `cache_dir`; returns its path and the guest paths
/// it holds (the per-run archive does not repeat those).
pub fn base_archive(
    l1: &L1Assets,
    peapod: &Path,
    cache_dir: &Path,
) -> Result<(PathBuf, BTreeSet<String>), InitramfsError> {
    let mut plan = BasePlan {
        files: BTreeMap::new(),
    };
    plan.add_binary("/bin/busybox", &l1.busybox)?;
    plan.add_binary(GUEST_PEAPOD, peapod)?;
    if let Some(vmm) = crate::vmm::program::standalone_beside(peapod) {
        plan.add_binary(GUEST_PEAPOD_VMM, &vmm)?;
    }
    // Guest block images (`peapod image build-disk`, `vm run-container --image`) are made
    // with mkfs.erofs inside the L1 too: carried, with its libraries, where the host has it.
    if let Some(mkfs) = assets::find_in_path("mkfs.erofs") {
        plan.add_binary(GUEST_MKFS_EROFS, &mkfs)?;
    }
    // The benchmarks' peer (crun, a plain container) and tracer (strace, the host kernel
    // surface), where the host has them, so that the benches and the e2e tests find them in
    // every L1.
    for (tool, guest) in [("crun", "/usr/bin/crun"), ("strace", "/usr/bin/strace")] {
        if let Some(path) = assets::find_in_path(tool) {
            plan.add_binary(guest, &path)?;
        }
    }
    plan.files.insert(
        "/init".into(),
        (0o755, Content::Bytes(INIT_SCRIPT.as_bytes().to_vec())),
    );
    plan.add_network_tools(&assets::NetworkTools::find())?;
    let mut spec = BaseSpec {
        kvm_modules: BTreeMap::new(),
        net_modules: Vec::new(),
    };
    let mut add_module = |file: PathBuf| {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
        let guest = format!("/lib/modules/peapod/{}", name.unwrap_or_default());
        plan.files
            .insert(guest.clone(), (0o644, Content::HostFile(file)));
        guest
    };
    for (extension, files) in l1.kvm_modules()? {
        let guest_paths = files.into_iter().map(&mut add_module).collect();
        spec.kvm_modules.insert(extension.to_string(), guest_paths);
    }
    spec.net_modules = l1.net_modules()?.into_iter().map(&mut add_module).collect();
    let spec_json = serde_json::to_vec_pretty(&spec).expect("BaseSpec serializes");
    plan.files
        .insert(BASE_SPEC.into(), (0o644, Content::Bytes(spec_json)));

    let held: BTreeSet<String> = plan.files.keys().cloned().collect();
    let dir = cache_dir.join("machine");
    let path = dir.join(format!("base-{}.cpio", plan.key()?));
    if path.is_file() {
        tracing::debug!(path = %path.display(), "L1 base initramfs cache hit");
        return Ok((path, held));
    }
    let write_err = |source| InitramfsError::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(write_err)?;
    // temp file + rename: a concurrent run sees either no file or a whole one
    let temp = tempfile::NamedTempFile::new_in(&dir).map_err(write_err)?;
    plan.write(BufWriter::new(temp.as_file()))?;
    temp.persist(&path).map_err(|e| write_err(e.error))?;
    tracing::debug!(path = %path.display(), "L1 base initramfs built");
    Ok((path, held))
}

/// Writes the per-run archive: the run spec and the copied paths (with the shared libraries
/// of copied ELF binaries that the base does not hold already).
pub fn run_archive(
    spec: &RunSpec,
    copies: &[CopySpec],
    base_paths: &BTreeSet<String>,
    out: impl Write,
) -> Result<(), InitramfsError> {
    let mut cpio = CpioWriter::new(out);
    let mut libs = BTreeSet::new();
    for copy in copies {
        let meta =
            std::fs::symlink_metadata(&copy.host).map_err(|source| InitramfsError::CopySource {
                path: copy.host.clone(),
                source,
            })?;
        if meta.is_file() && assets::is_elf(&copy.host) {
            for lib in assets::shared_libraries(&copy.host)? {
                let guest = lib.to_string_lossy().into_owned();
                if !base_paths.contains(&guest) {
                    libs.insert((guest, lib));
                }
            }
        }
        add_tree(&mut cpio, &copy.host, &copy.guest)?;
    }
    for (guest, host) in libs {
        cpio.file_from(&guest, 0o755, &host)?;
    }
    let json = serde_json::to_vec_pretty(spec).expect("RunSpec serializes");
    cpio.file(RUN_SPEC, 0o644, &json)?;
    cpio.finish()?;
    Ok(())
}

/// Adds a host file, symlink or directory tree at `guest`. Sockets, FIFOs and device nodes are
/// skipped (with a warning): they have no meaning in another kernel.
fn add_tree<W: Write>(
    cpio: &mut CpioWriter<W>,
    host: &Path,
    guest: &str,
) -> Result<(), InitramfsError> {
    let source_err = |source| InitramfsError::CopySource {
        path: host.to_path_buf(),
        source,
    };
    let meta = std::fs::symlink_metadata(host).map_err(source_err)?;
    let mode = meta.permissions().mode();
    if meta.is_symlink() {
        let target = std::fs::read_link(host).map_err(source_err)?;
        cpio.symlink(guest, &target.to_string_lossy())?;
    } else if meta.is_file() {
        cpio.file_from(guest, mode, host)?;
    } else if meta.is_dir() {
        cpio.dir(guest, mode)?;
        let mut entries: Vec<_> = std::fs::read_dir(host)
            .map_err(source_err)?
            .collect::<Result<_, _>>()
            .map_err(source_err)?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let child_guest = format!("{}/{}", guest.trim_end_matches('/'), name.to_string_lossy());
            add_tree(cpio, &entry.path(), &child_guest)?;
        }
    } else {
        tracing::warn!(path = %host.display(), "skipping a special file in --copy");
    }
    Ok(())
}

/// Writes `base` followed by `run` into `out`: the initrd QEMU loads.
pub fn assemble(base: &Path, run: &[u8], out: &Path) -> Result<(), InitramfsError> {
    let write_err = |source| InitramfsError::Write {
        path: out.to_path_buf(),
        source,
    };
    let mut file = File::create(out).map_err(write_err)?;
    let mut base_file = File::open(base).map_err(|source| InitramfsError::Write {
        path: base.to_path_buf(),
        source,
    })?;
    std::io::copy(&mut base_file, &mut file).map_err(write_err)?;
    file.write_all(run).map_err(write_err)?;
    Ok(())
}

fn hash_file(hash: &mut Sha256, path: &Path) -> Result<(), InitramfsError> {
    let read_err = |source| {
        InitramfsError::Asset(AssetError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let mut file = File::open(path).map_err(read_err)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            return Ok(());
        }
        hash.update(&buf[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_specs_parse() {
        let spec: CopySpec = "/a/b:/data".parse().unwrap();
        assert_eq!(spec.host, PathBuf::from("/a/b"));
        assert_eq!(spec.guest, "/data");
        let same: CopySpec = "/a/b".parse().unwrap();
        assert_eq!(same.guest, "/a/b");
        let relative: CopySpec = "x/y".parse().unwrap();
        assert!(relative.host.is_absolute());
        assert_eq!(relative.guest, relative.host.to_str().unwrap());
        for bad in ["", ":/x", "/a:relative"] {
            assert!(bad.parse::<CopySpec>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn run_archive_holds_spec_and_tree() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("data");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/file"), b"payload").unwrap();
        std::os::unix::fs::symlink("sub/file", src.join("link")).unwrap();
        let spec = RunSpec {
            argv: vec!["cat".into(), "/data/sub/file".into()],
            env: vec![],
            workdir: "/".into(),
        };
        let copies = [CopySpec {
            host: src.clone(),
            guest: "/data".into(),
        }];
        let mut out = Vec::new();
        run_archive(&spec, &copies, &BTreeSet::new(), &mut out).unwrap();
        let text = String::from_utf8_lossy(&out);
        for name in [
            "data\0",
            "data/link\0",
            "data/sub/file\0",
            "etc/peapod/run.json\0",
        ] {
            assert!(text.contains(name), "{name:?} missing");
        }
        assert!(text.contains("payload"));
        assert!(text.contains("\"/data/sub/file\""));
    }

    #[test]
    fn missing_copy_source_is_a_clear_error() {
        let copies = [CopySpec {
            host: "/nonexistent/peapod-test".into(),
            guest: "/x".into(),
        }];
        let spec = RunSpec {
            argv: vec!["true".into()],
            env: vec![],
            workdir: "/".into(),
        };
        let err = run_archive(&spec, &copies, &BTreeSet::new(), Vec::new()).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/peapod-test"),
            "{err}"
        );
    }
}
