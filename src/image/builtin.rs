//! The built-in default image `peapod/busybox:latest`: the host's static busybox (Debian's
//! busybox-static), its applets as symlinks, `/etc/passwd` and `/etc/group`, `Cmd ["sh"]`.
//! Built locally, so peapod runs a container without any registry. The layer is
//! deterministic (fixed times and owners), so the same busybox gives the same digest.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use oci_spec::image::Descriptor;

use super::compress::Compression;
use super::import::{ImportReport, SourceKind, minimal_config};
use super::manifest::{self, ManifestError};
use super::reference::ImageName;
use super::store::{Store, StoreError};

pub const DEFAULT_IMAGE: &str = "peapod/busybox:latest";

/// Where busybox is looked for, unless `PEAPOD_BUSYBOX` names one.
const BUSYBOX_PATHS: [&str; 2] = ["/bin/busybox", "/usr/bin/busybox"];

/// Layer file times: 2023-11-14, any fixed value keeps the digest stable.
const MTIME: u64 = 1_700_000_000;

#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(
        "busybox not found at {0}: install busybox-static (apt-get install busybox-static) or \
         point PEAPOD_BUSYBOX at a static busybox"
    )]
    NoBusybox(String),
    #[error(
        "{} is dynamically linked, so it would not run alone in a guest: install \
         busybox-static (apt-get install busybox-static) or point PEAPOD_BUSYBOX at a static busybox",
        .0.display()
    )]
    NotStatic(PathBuf),
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{} --list-full` printed no applets: is it a busybox?", .0.display())]
    NoApplets(PathBuf),
}

/// The busybox this host would put in the default image.
pub fn find_busybox() -> Result<PathBuf, BuiltinError> {
    if let Some(path) = std::env::var_os("PEAPOD_BUSYBOX") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(BuiltinError::NoBusybox(path.display().to_string()))
        };
    }
    BUSYBOX_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| BuiltinError::NoBusybox(BUSYBOX_PATHS.join(" or ")))
}

/// Builds the default image from `busybox` and stores it as [`DEFAULT_IMAGE`].
pub fn import_default(store: &Store, busybox: &Path) -> Result<ImportReport, BuiltinError> {
    let io_err = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| BuiltinError::Io { what, path, source }
    };
    if !is_static_elf(busybox).map_err(io_err("read", busybox))? {
        return Err(BuiltinError::NotStatic(busybox.to_path_buf()));
    }
    let applets = applets(busybox)?;
    let mut staging = store.stage()?;
    let mut writer = staging.blob_writer()?;
    {
        let mut tar = tar::Builder::new(&mut writer);
        let layer_err = io_err(
            "write the default image layer in",
            store.tmp_dir().as_path(),
        );
        let result: io::Result<()> = (|| {
            for (dir, mode) in [
                ("bin", 0o755),
                ("dev", 0o755),
                ("etc", 0o755),
                ("home", 0o755),
                ("proc", 0o555),
                ("root", 0o700),
                ("run", 0o755),
                ("sbin", 0o755),
                ("sys", 0o555),
                ("tmp", 0o1777),
                ("usr", 0o755),
                ("usr/bin", 0o755),
                ("usr/sbin", 0o755),
                ("var", 0o755),
                ("var/tmp", 0o1777),
            ] {
                let mut h = header(tar::EntryType::Directory, mode, 0);
                tar.append_data(&mut h, dir, io::empty())?;
            }
            let bin = File::open(busybox)?;
            let size = bin.metadata()?.len();
            let mut h = header(tar::EntryType::Regular, 0o755, size);
            tar.append_data(&mut h, "bin/busybox", BufReader::new(bin))?;
            for applet in &applets {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                tar.append_link(&mut h, applet, "/bin/busybox")?;
            }
            let passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
            let group = "root:x:0:\nnogroup:x:65534:\n";
            for (path, text) in [("etc/passwd", passwd), ("etc/group", group)] {
                let mut h = header(tar::EntryType::Regular, 0o644, text.len() as u64);
                tar.append_data(&mut h, path, text.as_bytes())?;
            }
            tar.finish()
        })();
        result.map_err(layer_err)?;
    }
    let (digest, size) = writer.finish(None)?;
    let layer = Descriptor::new(Compression::None.layer_media_type(), size, digest.to_oci());
    // An uncompressed layer's diff_id is its digest.
    let config = minimal_config(vec![digest], vec!["sh".to_string()])?;
    let manifest = manifest::stage_image(&mut staging, &config, vec![layer])?;
    let name = ImageName::parse(DEFAULT_IMAGE)
        .unwrap_or_else(|_| unreachable!("the default name is valid"));
    let report = staging.commit(&name, &manifest)?;
    Ok(ImportReport {
        name: name.to_string(),
        digest: manifest.digest().to_string(),
        kind: SourceKind::RootfsTarball,
        layers: 1,
        added: report.added,
        reused: report.reused,
    })
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h
}

/// The applet paths busybox knows (`usr/bin/awk`, ...), minus busybox itself; only plain
/// relative paths are kept.
fn applets(busybox: &Path) -> Result<Vec<String>, BuiltinError> {
    let output = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|source| BuiltinError::Io {
            what: "run",
            path: busybox.to_path_buf(),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut applets: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && *l != "bin/busybox"
                && !l.starts_with('/')
                && l.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        })
        .map(str::to_string)
        .collect();
    applets.sort();
    applets.dedup();
    if applets.is_empty() {
        return Err(BuiltinError::NoApplets(busybox.to_path_buf()));
    }
    Ok(applets)
}

/// An ELF file without a PT_INTERP program header (no dynamic loader needed).
fn is_static_elf(path: &Path) -> io::Result<bool> {
    let mut head = Vec::new();
    File::open(path)?.take(64 * 1024).read_to_end(&mut head)?;
    let u16_at = |o: usize| {
        head.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        head.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        head.get(o..o + 8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as usize)
    };
    // 64-bit little-endian ELF only (x86-64 is what peapod runs).
    if !head.starts_with(b"\x7fELF\x02\x01") {
        return Ok(false);
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Ok(false);
    };
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        match u32_at(phoff.saturating_add(i.saturating_mul(phentsize))) {
            Some(PT_INTERP) => return Ok(false),
            Some(_) => {}
            None => return Ok(false),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn recognizes_static_and_dynamic_binaries() {
        if let Ok(busybox) = find_busybox() {
            assert!(
                is_static_elf(&busybox).unwrap(),
                "{} should be static",
                busybox.display()
            );
        }
        let dynamic = Path::new("/bin/sh");
        if fs::canonicalize(dynamic).is_ok_and(|p| !p.ends_with("busybox")) {
            assert!(!is_static_elf(dynamic).unwrap());
        }
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("x");
        fs::write(&text, "#!/bin/sh\n").unwrap();
        assert!(!is_static_elf(&text).unwrap());
    }
}
