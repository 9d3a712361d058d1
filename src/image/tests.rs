//! Tests across the image modules: unpacking (whiteouts, links, escapes, bombs), imports
//! (OCI layouts and archives, docker-save, rootfs tarballs, manifest lists, bad input),
//! the store (concurrency, prune) and block images (cache hits). Layers and archives are
//! built here with the `tar` crate; entry names are written into headers byte for byte so
//! that hostile names (`../x`) can be made. No root needed.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, MediaType};

use super::compress::Compression;
use super::digest::Digest;
use super::disk::{self, DiskError, DiskFormat};
use super::import::{self, ImportError, ImportOptions, SourceKind};
use super::manifest;
use super::reference::ImageName;
use super::rootfs;
use super::store::Store;
use super::unpack::{UnpackError, UnpackLimits, UnpackOptions, UnpackReport, Unpacker};

// ---- building layers -------------------------------------------------------------------

enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Char(&'a str),
}

/// A layer tar; names go into the header verbatim (no checks, so `../x` is possible).
fn layer(entries: &[E]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let (kind, name, link, data, mode): (tar::EntryType, &str, &str, &[u8], u32) = match entry {
            E::Dir(n) => (tar::EntryType::Directory, n, "", b"", 0o755),
            E::File(n, d) => (tar::EntryType::Regular, n, "", d, 0o644),
            E::Symlink(n, l) => (tar::EntryType::Symlink, n, l, b"", 0o777),
            E::Hard(n, l) => (tar::EntryType::Link, n, l, b"", 0o644),
            E::Char(n) => (tar::EntryType::Char, n, "", b"", 0o666),
        };
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        builder.append(&h, data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn opts() -> UnpackOptions {
    UnpackOptions {
        limits: UnpackLimits::default(),
        chown: false,
        devices: false,
    }
}

/// Applies layers to `root`, bottom first.
fn apply(
    root: &Path,
    layers: &[Vec<u8>],
    opts: UnpackOptions,
) -> Result<UnpackReport, UnpackError> {
    let mut unpacker = Unpacker::new(root, opts);
    for (i, l) in layers.iter().enumerate() {
        unpacker.apply_layer(&mut &l[..], &format!("layer {i}"))?;
    }
    unpacker.finish()
}

/// A scratch area with `root/` to unpack into and `outside/` that must stay empty.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("root")).unwrap();
        fs::create_dir(dir.path().join("outside")).unwrap();
        Self { dir }
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }
    fn assert_outside_untouched(&self) {
        let left: Vec<_> = fs::read_dir(self.outside()).unwrap().collect();
        assert!(
            left.is_empty(),
            "something was written outside the root: {left:?}"
        );
        let top: Vec<String> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            top.len(),
            2,
            "something was written next to the root: {top:?}"
        );
    }
}

fn read(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path).unwrap()
}

// ---- unpacking ------------------------------------------------------------------------

#[test]
fn whiteouts_delete_lower_files_only() {
    let s = Scratch::new();
    let lower = layer(&[
        E::Dir("etc/"),
        E::File("etc/a", b"a"),
        E::File("etc/b", b"b"),
        E::Dir("gone/"),
        E::File("gone/x", b"x"),
    ]);
    let upper = layer(&[
        E::File("etc/.wh.a", b""),
        E::File(".wh.gone", b""),
        // Same-layer whiteouts do not hide the layer's own files.
        E::File("etc/new", b"n"),
        E::File("etc/.wh.new", b""),
        E::File("etc/.wh..wh.plnk", b""),
    ]);
    apply(&s.root(), &[lower, upper], opts()).unwrap();
    let root = s.root();
    assert!(!root.join("etc/a").exists());
    assert_eq!(read(root.join("etc/b")), "b");
    assert!(!root.join("gone").exists());
    assert_eq!(read(root.join("etc/new")), "n");
    assert!(!root.join("etc/.wh.new").exists() && !root.join("etc/.wh..wh.plnk").exists());
}

#[test]
fn opaque_directories_hide_lower_content() {
    let s = Scratch::new();
    let lower = layer(&[
        E::Dir("d/"),
        E::File("d/old", b"old"),
        E::Dir("d/sub/"),
        E::File("d/sub/old", b"old"),
        E::File("keep", b"k"),
    ]);
    // The opaque marker comes after some of the layer's own entries in d/.
    let upper = layer(&[
        E::Dir("d/"),
        E::File("d/sub/mine", b"mine"),
        E::File("d/.wh..wh..opq", b""),
        E::File("d/new", b"new"),
    ]);
    apply(&s.root(), &[lower, upper], opts()).unwrap();
    let root = s.root();
    assert!(!root.join("d/old").exists());
    assert!(!root.join("d/sub/old").exists());
    assert_eq!(read(root.join("d/sub/mine")), "mine");
    assert_eq!(read(root.join("d/new")), "new");
    assert_eq!(read(root.join("keep")), "k");
}

#[test]
fn hard_links_and_symlinks() {
    let s = Scratch::new();
    let l1 = layer(&[
        E::Dir("bin/"),
        E::File("bin/busybox", b"bb"),
        E::Hard("bin/sh", "bin/busybox"),
        E::Symlink("bin/ls", "busybox"),
        E::Symlink("abs", "/bin/busybox"),
    ]);
    // Replacing a hard link must not write through it into the other name.
    let l2 = layer(&[E::File("bin/sh", b"new sh")]);
    apply(&s.root(), std::slice::from_ref(&l1), opts()).unwrap();
    let root = s.root();
    let a = fs::metadata(root.join("bin/busybox")).unwrap();
    let b = fs::metadata(root.join("bin/sh")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(
        fs::read_link(root.join("bin/ls")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::read_link(root.join("abs")).unwrap(),
        Path::new("/bin/busybox")
    );

    let s2 = Scratch::new();
    apply(&s2.root(), &[l1, l2], opts()).unwrap();
    assert_eq!(read(s2.root().join("bin/busybox")), "bb");
    assert_eq!(read(s2.root().join("bin/sh")), "new sh");
}

#[test]
fn dot_dot_entries_are_rejected() {
    for name in ["../evil", "a/../../evil", "./../evil"] {
        let s = Scratch::new();
        let err = apply(&s.root(), &[layer(&[E::File(name, b"x")])], opts()).unwrap_err();
        assert!(matches!(err, UnpackError::Confine { .. }), "{name}: {err}");
        assert!(err.to_string().contains("climbs out"), "{err}");
        s.assert_outside_untouched();
    }
}

#[test]
fn absolute_paths_stay_inside() {
    let s = Scratch::new();
    let outside = s.outside().join("abs");
    let name = outside.to_str().unwrap().to_string();
    apply(
        &s.root(),
        &[layer(&[E::File(&name, b"x"), E::File("/etc/hosts", b"h")])],
        opts(),
    )
    .unwrap();
    s.assert_outside_untouched();
    assert_eq!(read(s.root().join(name.trim_start_matches('/'))), "x");
    assert_eq!(read(s.root().join("etc/hosts")), "h");
}

#[test]
fn symlink_escapes_stay_inside() {
    let s = Scratch::new();
    let outside = s.outside();
    let outside_abs = outside.to_str().unwrap();
    let l1 = layer(&[
        E::Symlink("link", "/etc"),
        E::Symlink("loop", "/loop"),
        E::Symlink("up", "../../.."),
        E::Symlink("out", outside_abs),
        E::Symlink("rel", "../outside"),
        E::Symlink("file", "../outside/file"),
    ]);
    let l2 = layer(&[
        E::File("link/passwd", b"mine"),
        E::File("up/escaped", b"up"),
        E::File("out/pwned", b"out"),
        E::File("rel/pwned", b"rel"),
        // A file over a symlink replaces the link; it never writes through it.
        E::File("file", b"replaced"),
    ]);
    apply(&s.root(), &[l1.clone(), l2], opts()).unwrap();
    s.assert_outside_untouched();
    let root = s.root();
    // Resolved as the container would see them: inside the root.
    assert_eq!(read(root.join("etc/passwd")), "mine");
    assert_eq!(read(root.join("escaped")), "up");
    assert_eq!(
        read(root.join(outside_abs.trim_start_matches('/')).join("pwned")),
        "out"
    );
    assert_eq!(read(root.join("outside/pwned")), "rel");
    assert_eq!(read(root.join("file")), "replaced");
    assert!(fs::symlink_metadata(root.join("file")).unwrap().is_file());
    assert_ne!(read("/etc/passwd"), "mine");

    // A symlink loop is an error, not a hang.
    let s = Scratch::new();
    let err = apply(&s.root(), &[l1, layer(&[E::File("loop/x", b"x")])], opts()).unwrap_err();
    assert!(
        err.to_string()
            .contains("too many levels of symbolic links"),
        "{err}"
    );
}

#[test]
fn hard_link_escapes_are_rejected() {
    let s = Scratch::new();
    fs::write(s.outside().join("secret"), "secret").unwrap();
    let secret = s.outside().join("secret");
    let cases: Vec<Vec<Vec<u8>>> = vec![
        vec![layer(&[E::Hard("x", "../outside/secret")])],
        vec![layer(&[E::Hard("x", secret.to_str().unwrap())])],
        vec![layer(&[
            E::Symlink("link", "/"),
            E::Hard("x", "link/../outside/secret"),
        ])],
        vec![
            layer(&[E::Symlink("link", s.outside().to_str().unwrap())]),
            layer(&[E::Hard("x", "link/secret")]),
        ],
    ];
    for layers in cases {
        let root = s.dir.path().join("root");
        let _ = fs::remove_dir_all(&root);
        fs::create_dir(&root).unwrap();
        let err = apply(&root, &layers, opts()).unwrap_err();
        assert!(matches!(err, UnpackError::HardLink { .. }), "{err}");
        assert_eq!(
            fs::metadata(&secret).unwrap().nlink(),
            1,
            "a link to the outside file was made"
        );
    }
}

#[test]
fn archive_bombs_hit_the_limits() {
    let s = Scratch::new();
    let big = vec![0u8; 64 * 1024];
    let err = apply(
        &s.root(),
        &[layer(&[E::File("big", &big)])],
        UnpackOptions {
            limits: UnpackLimits {
                max_bytes: 32 * 1024,
                max_entries: 100,
            },
            ..opts()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, UnpackError::TooLarge { limit: 32768 }),
        "{err}"
    );
    assert!(err.to_string().contains("--max-bytes"));

    let s = Scratch::new();
    let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    let entries: Vec<E> = names.iter().map(|n| E::File(n, b"")).collect();
    let err = apply(
        &s.root(),
        &[layer(&entries)],
        UnpackOptions {
            limits: UnpackLimits {
                max_bytes: 1 << 30,
                max_entries: 10,
            },
            ..opts()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, UnpackError::TooManyEntries { limit: 10 }),
        "{err}"
    );
}

#[test]
fn hostile_numeric_header_fields_never_panic() {
    // Base-256 fields hold any u64: times past what a SystemTime can hold are clamped.
    for mtime in [1u64 << 63, u64::MAX, i64::MAX as u64] {
        let mut builder = tar::Builder::new(Vec::new());
        for (kind, name, link) in [
            (tar::EntryType::Directory, "d/", ""),
            (tar::EntryType::Regular, "d/f", ""),
            (tar::EntryType::Symlink, "d/l", "f"),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(0o755);
            h.set_size(0);
            h.set_mtime(mtime);
            h.set_path(name).unwrap();
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            h.set_cksum();
            builder.append(&h, &b""[..]).unwrap();
        }
        let s = Scratch::new();
        apply(&s.root(), &[builder.into_inner().unwrap()], opts())
            .unwrap_or_else(|e| panic!("mtime {mtime}: {e}"));
        let meta = fs::metadata(s.root().join("d/f")).unwrap();
        assert!(
            meta.mtime() > 1_600_000_000,
            "mtime {mtime}: {}",
            meta.mtime()
        );
    }

    // An owner no chown can take (u32::MAX means "leave it"; more does not fit) is an error.
    for (uid, gid) in [(1u64 << 32, 0u64), (0, u64::MAX), (u64::from(u32::MAX), 0)] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_path("f").unwrap();
        h.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&h, &b""[..]).unwrap();
        let s = Scratch::new();
        let err = apply(&s.root(), &[builder.into_inner().unwrap()], opts()).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("out of range"), "{uid}/{gid}: {shown}");
    }
}

/// A GNU sparse entry: 512 bytes of data stored at the end of a file of `real_size` bytes
/// that is otherwise a hole (zeros the tar holds as a length only).
fn append_sparse(builder: &mut tar::Builder<Vec<u8>>, name: &str, real_size: u64) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_size(512);
    h.set_path(name).unwrap();
    let gnu = h.as_gnu_mut().unwrap();
    gnu.set_real_size(real_size);
    gnu.sparse[0].set_offset(real_size - 512);
    gnu.sparse[0].set_length(512);
    h.set_cksum();
    builder.append(&h, &[7u8; 512][..]).unwrap();
}

#[test]
fn sparse_holes_count_against_the_byte_budget() {
    let limits = UnpackLimits {
        max_bytes: 1 << 20,
        max_entries: 100,
    };
    let budget = UnpackOptions { limits, ..opts() };

    // A sparse file within the budget unpacks whole, holes as zeros.
    let mut builder = tar::Builder::new(Vec::new());
    append_sparse(&mut builder, "small", 4096);
    let s = Scratch::new();
    apply(&s.root(), &[builder.into_inner().unwrap()], budget).unwrap();
    let small = fs::read(s.root().join("small")).unwrap();
    assert_eq!(small.len(), 4096);
    assert!(small[..3584].iter().all(|&b| b == 0));
    assert!(small[3584..].iter().all(|&b| b == 7));

    // Each hole fits the budget, together they do not: a 3 KiB layer may not write 1.5 MiB.
    let mut builder = tar::Builder::new(Vec::new());
    append_sparse(&mut builder, "a", 768 << 10);
    append_sparse(&mut builder, "b", 768 << 10);
    let tar = builder.into_inner().unwrap();
    assert!(tar.len() < 8192);
    let s = Scratch::new();
    let err = apply(&s.root(), &[tar], budget).unwrap_err();
    assert!(
        matches!(err, UnpackError::TooLarge { limit: 1048576 }),
        "{err}"
    );

    // One hole of 1 TiB stops at the budget, not after writing it.
    let mut builder = tar::Builder::new(Vec::new());
    append_sparse(&mut builder, "huge", 1 << 40);
    let s = Scratch::new();
    let err = apply(&s.root(), &[builder.into_inner().unwrap()], budget).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
    let written = fs::metadata(s.root().join("huge")).map_or(0, |m| m.len());
    assert!(written <= (1 << 20) + 1, "{written} bytes written");

    // Holes count across layers too.
    let layers: Vec<Vec<u8>> = (0..2)
        .map(|i| {
            let mut builder = tar::Builder::new(Vec::new());
            append_sparse(&mut builder, &format!("l{i}"), 768 << 10);
            builder.into_inner().unwrap()
        })
        .collect();
    let s = Scratch::new();
    let err = apply(&s.root(), &layers, budget).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
}

/// A tar member of type `kind` whose header declares 4 GiB, followed by `data` bytes of it.
fn huge_extension(kind: u8, data: usize) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_size(4 << 30);
    h.set_path("././@LongLink").unwrap();
    h.set_cksum();
    let mut bytes = h.as_bytes().to_vec();
    bytes.resize(512 + data, b'a');
    bytes
}

#[test]
fn oversized_header_extensions_are_refused_before_they_are_read() {
    // The tar crate reads long names, long links and PAX records whole into memory: the
    // declared size is refused before a byte of the member is read.
    for kind in [b'L', b'K', b'x', b'g'] {
        let bytes = huge_extension(kind, 16 << 20);
        let s = Scratch::new();
        let mut unpacker = Unpacker::new(&s.root(), opts());
        let mut reader = &bytes[..];
        let err = unpacker.apply_layer(&mut reader, "layer").unwrap_err();
        let consumed = bytes.len() - reader.len();
        let shown = err.to_string();
        assert!(
            shown.contains("declares 4294967296 bytes, more than the 1048576 allowed"),
            "{}: {shown}",
            kind as char
        );
        assert!(
            consumed <= 1 << 20,
            "{}: {consumed} bytes read",
            kind as char
        );
    }

    // An import reads the archive through the same check (here a gzip rootfs tarball whose
    // long name is 16 MiB of one byte).
    let (tmp, store) = new_store();
    let path = tmp.path().join("bomb.tar.gz");
    fs::write(&path, gzip(&huge_extension(b'L', 16 << 20))).unwrap();
    let opts = ImportOptions {
        name: Some(ImageName::parse("bomb").unwrap()),
        reference: None,
    };
    let err = import::import(&store, &path, &opts).unwrap_err();
    assert!(matches!(err, ImportError::Archive { .. }), "{err}");
    assert!(
        err.to_string().contains("more than the 1048576 allowed"),
        "{err}"
    );
}

#[test]
fn device_nodes_are_skipped_unless_allowed() {
    let s = Scratch::new();
    let report = apply(
        &s.root(),
        &[layer(&[E::Dir("dev/"), E::Char("dev/null")])],
        opts(),
    )
    .unwrap();
    assert_eq!(report.skipped_devices, 1);
    assert!(!s.root().join("dev/null").exists());
}

#[test]
fn modes_are_kept_and_read_only_dirs_still_fill() {
    let s = Scratch::new();
    let mut builder = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o555);
    h.set_size(0);
    builder.append_data(&mut h, "ro", std::io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o4755);
    h.set_size(2);
    builder.append_data(&mut h, "ro/suid", &b"#!"[..]).unwrap();
    let l1 = builder.into_inner().unwrap();
    let l2 = layer(&[E::File("ro/later", b"l")]);
    apply(&s.root(), &[l1, l2], opts()).unwrap();
    let root = s.root();
    assert_eq!(
        fs::metadata(root.join("ro")).unwrap().mode() & 0o7777,
        0o555
    );
    assert_eq!(
        fs::metadata(root.join("ro/suid")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(read(root.join("ro/later")), "l");
    assert_eq!(fs::metadata(&root).unwrap().mode() & 0o777, 0o755);
}

// ---- images on disk -------------------------------------------------------------------

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn compress(bytes: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => bytes.to_vec(),
        Compression::Gzip => gzip(bytes),
        Compression::Zstd => zstd::encode_all(bytes, 3).unwrap(),
    }
}

fn write_blob(layout: &Path, bytes: &[u8]) -> Digest {
    let digest = Digest::of_bytes(bytes);
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(digest.hex()), bytes).unwrap();
    digest
}

fn config_json(diff_ids: &[Digest], entrypoint: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": entrypoint,
            "Cmd": ["--help"],
            "Env": ["PATH=/bin", "A=1"],
            "WorkingDir": "/srv",
            "User": "1000:1000",
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(ToString::to_string).collect::<Vec<_>>()},
    }))
    .unwrap()
}

/// Writes an image (its config and manifest, layers compressed as asked) into a layout
/// dir; returns the manifest's descriptor (not yet in index.json).
fn write_image(layout: &Path, layers: &[(Vec<u8>, Compression)]) -> Descriptor {
    let diff_ids: Vec<Digest> = layers
        .iter()
        .map(|(tar, _)| Digest::of_bytes(tar))
        .collect();
    let layer_descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|(tar, c)| {
            let blob = compress(tar, *c);
            let digest = write_blob(layout, &blob);
            serde_json::json!({"mediaType": c.layer_media_type().to_string(), "digest": digest.to_string(), "size": blob.len()})
        })
        .collect();
    let config = config_json(&diff_ids, &["/app"]);
    let config_digest = write_blob(layout, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
        "layers": layer_descs,
    }))
    .unwrap();
    let digest = write_blob(layout, &manifest);
    Descriptor::new(
        MediaType::ImageManifest,
        manifest.len() as u64,
        digest.to_oci(),
    )
}

fn write_index(layout: &Path, manifests: Vec<serde_json::Value>) {
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

fn descriptor_json(d: &Descriptor, extra: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::to_value(d).unwrap();
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    v
}

/// A two-layer OCI layout named `example.com/app:1` (gzip and zstd layers).
fn app_layout(dir: &Path) -> Descriptor {
    let l1 = layer(&[
        E::Dir("etc/"),
        E::File("etc/os-release", b"test"),
        E::File("etc/old", b"o"),
    ]);
    let l2 = layer(&[
        E::Dir("app/"),
        E::File("app/run", b"run"),
        E::File("etc/.wh.old", b""),
    ]);
    let m = write_image(dir, &[(l1, Compression::Gzip), (l2, Compression::Zstd)]);
    write_index(
        dir,
        vec![descriptor_json(
            &m,
            serde_json::json!({"annotations": {"org.opencontainers.image.ref.name": "example.com/app:1"}}),
        )],
    );
    m
}

/// A tar of a directory's contents.
fn tar_dir(dir: &Path, out: &Path) {
    let mut builder = tar::Builder::new(fs::File::create(out).unwrap());
    builder.append_dir_all(".", dir).unwrap();
    builder.finish().unwrap();
}

fn new_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    (dir, store)
}

fn blob_count(store: &Store) -> usize {
    fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .count()
}

fn unpacked(store: &Store, name: &str) -> tempfile::TempDir {
    let image = store.lookup(&ImageName::parse(name).unwrap()).unwrap();
    let image = manifest::load(store, &image.manifest).unwrap();
    let dir = tempfile::tempdir().unwrap();
    rootfs::unpack_into(store, &image, dir.path(), opts()).unwrap();
    dir
}

#[test]
fn imports_an_oci_layout_and_its_archive() {
    let (tmp, store) = new_store();
    let layout = tmp.path().join("layout");
    let m = app_layout(&layout);
    let report = import::import(&store, &layout, &ImportOptions::default()).unwrap();
    assert_eq!(report.kind, SourceKind::OciLayout);
    assert_eq!(report.name, "example.com/app:1");
    assert_eq!(report.digest, m.digest().to_string());
    assert_eq!((report.layers, report.added), (2, 4));
    let root = unpacked(&store, "example.com/app:1");
    assert_eq!(read(root.path().join("app/run")), "run");
    assert!(!root.path().join("etc/old").exists());

    // The same image as an OCI archive, under another name: every blob is reused.
    let archive = tmp.path().join("app.tar");
    tar_dir(&layout, &archive);
    let opts = ImportOptions {
        name: Some(ImageName::parse("copy").unwrap()),
        reference: None,
    };
    let report = import::import(&store, &archive, &opts).unwrap();
    assert_eq!(report.kind, SourceKind::OciArchive);
    assert_eq!((report.added, report.reused), (0, 4));
    let names: Vec<String> = store
        .list()
        .unwrap()
        .iter()
        .map(|i| i.name.to_string())
        .collect();
    assert_eq!(names, ["copy:latest", "example.com/app:1"]);
    // The run config comes through.
    let (_, image) = super::open(&store, "copy").unwrap();
    let config = super::ImageRunConfig::from_config(&image.config);
    assert_eq!(config.entrypoint, ["/app"]);
    assert_eq!(config.cmd, ["--help"]);
    assert_eq!(config.env, ["PATH=/bin", "A=1"]);
    assert_eq!(
        (config.working_dir.as_str(), config.user.as_str()),
        ("/srv", "1000:1000")
    );
    // The store is an OCI layout other tools can read.
    let index: ImageIndex =
        serde_json::from_slice(&fs::read(store.root().join("index.json")).unwrap()).unwrap();
    assert_eq!(index.manifests().len(), 2);
}

#[test]
fn picks_linux_amd64_from_an_image_index() {
    let (tmp, store) = new_store();
    let layout = tmp.path().join("layout");
    let arm = write_image(
        &layout,
        &[(layer(&[E::File("arch", b"arm64")]), Compression::Gzip)],
    );
    let amd = write_image(
        &layout,
        &[(layer(&[E::File("arch", b"amd64")]), Compression::Gzip)],
    );
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            descriptor_json(&arm, serde_json::json!({"platform": {"architecture": "arm64", "os": "linux"}})),
            descriptor_json(&amd, serde_json::json!({"platform": {"architecture": "amd64", "os": "linux"}})),
        ],
    }))
    .unwrap();
    let nested_digest = write_blob(&layout, &nested);
    write_index(
        &layout,
        vec![serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": nested_digest.to_string(),
            "size": nested.len(),
            "annotations": {"io.containerd.image.name": "docker.io/library/multi:latest"},
        })],
    );
    let report = import::import(&store, &layout, &ImportOptions::default()).unwrap();
    assert_eq!(report.name, "docker.io/library/multi:latest");
    assert_eq!(report.digest, amd.digest().to_string());
    assert_eq!(
        read(
            unpacked(&store, "docker.io/library/multi")
                .path()
                .join("arch")
        ),
        "amd64"
    );
    // Only the chosen platform's blobs were stored: manifest, config, one layer.
    assert_eq!(blob_count(&store), 3);
}

#[test]
fn imports_a_docker_save_archive() {
    let (tmp, store) = new_store();
    let src = tmp.path().join("save");
    fs::create_dir_all(src.join("aaa")).unwrap();
    fs::create_dir_all(src.join("bbb")).unwrap();
    let l1 = layer(&[E::Dir("bin/"), E::File("bin/tool", b"tool")]);
    let l2 = layer(&[E::File("bin/.wh.tool", b""), E::File("hello", b"hi")]);
    fs::write(src.join("aaa/layer.tar"), &l1).unwrap();
    fs::write(src.join("bbb/layer.tar"), &l2).unwrap();
    let config = config_json(
        &[Digest::of_bytes(&l1), Digest::of_bytes(&l2)],
        &["/bin/tool"],
    );
    let config_name = format!("{}.json", Digest::of_bytes(&config).hex());
    fs::write(src.join(&config_name), &config).unwrap();
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["busybox:saved"],
        "Layers": ["aaa/layer.tar", "bbb/layer.tar"],
    }]);
    fs::write(
        src.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    fs::write(src.join("repositories"), "{}").unwrap();
    let archive = tmp.path().join("save.tar.gz");
    tar_dir(&src, &tmp.path().join("save.tar"));
    fs::write(
        &archive,
        gzip(&fs::read(tmp.path().join("save.tar")).unwrap()),
    )
    .unwrap();

    let report = import::import(&store, &archive, &ImportOptions::default()).unwrap();
    assert_eq!(report.kind, SourceKind::DockerArchive);
    assert_eq!(report.name, "busybox:saved");
    let (_, image) = super::open(&store, "busybox:saved").unwrap();
    // Docker's config is kept byte for byte, under an OCI manifest.
    assert_eq!(image.config_digest, Digest::of_bytes(&config));
    assert_eq!(image.manifest.media_type(), &Some(MediaType::ImageManifest));
    assert_eq!(
        image.layers[0].media_type,
        MediaType::ImageLayer.to_string()
    );
    assert_eq!(
        super::ImageRunConfig::from_config(&image.config).entrypoint,
        ["/bin/tool"]
    );
    let root = unpacked(&store, "busybox:saved");
    assert_eq!(read(root.path().join("hello")), "hi");
    assert!(!root.path().join("bin/tool").exists());

    // A layer that does not match the config's diff_id is refused.
    fs::write(src.join("bbb/layer.tar"), layer(&[E::File("evil", b"x")])).unwrap();
    let err = import::import(&store, &src, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::DiffId { .. }), "{err}");
}

#[test]
fn imports_plain_rootfs_tarballs() {
    let (tmp, store) = new_store();
    let tar = layer(&[
        E::Dir("bin/"),
        E::File("bin/sh", b"sh"),
        E::Symlink("bin/ash", "sh"),
    ]);
    for (file, bytes) in [("rootfs.tar", tar.clone()), ("rootfs.tar.gz", gzip(&tar))] {
        let path = tmp.path().join(file);
        fs::write(&path, &bytes).unwrap();
        let err = import::import(&store, &path, &ImportOptions::default()).unwrap_err();
        assert!(matches!(err, ImportError::NeedName { .. }), "{err}");
        let name = format!("rootfs/{}", file.replace('.', "-"));
        let opts = ImportOptions {
            name: Some(ImageName::parse(&name).unwrap()),
            reference: None,
        };
        let report = import::import(&store, &path, &opts).unwrap();
        assert_eq!(report.kind, SourceKind::RootfsTarball);
        let (_, image) = super::open(&store, &name).unwrap();
        assert_eq!(image.diff_ids, [Digest::of_bytes(&tar)]);
        assert_eq!(
            super::ImageRunConfig::from_config(&image.config).cmd,
            ["/bin/sh"]
        );
        let root = unpacked(&store, &name);
        assert_eq!(read(root.path().join("bin/sh")), "sh");
        assert_eq!(
            fs::read_link(root.path().join("bin/ash")).unwrap(),
            Path::new("sh")
        );
    }
    // Two images with the same content share one chain ID.
    let a = super::open(&store, "rootfs/rootfs-tar").unwrap().1;
    let b = super::open(&store, "rootfs/rootfs-tar-gz").unwrap().1;
    assert_eq!(a.diff_ids, b.diff_ids);
    assert_ne!(a.layers[0].digest, b.layers[0].digest);
}

/// The store's files (names and sizes), to show a failed import changed nothing.
fn snapshot(store: &Store) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for sub in ["blobs/sha256", "disks", ""] {
        for e in fs::read_dir(store.root().join(sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                out.push((
                    format!("{sub}/{}", e.file_name().to_string_lossy()),
                    e.metadata().unwrap().len(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn bad_inputs_fail_clearly_and_leave_the_store_alone() {
    let (tmp, store) = new_store();
    // Something in the store first, so "as it was" is not just "empty".
    let rootfs = tmp.path().join("ok.tar");
    fs::write(&rootfs, layer(&[E::File("ok", b"ok")])).unwrap();
    let opts = ImportOptions {
        name: Some(ImageName::parse("ok").unwrap()),
        reference: None,
    };
    import::import(&store, &rootfs, &opts).unwrap();
    let before = snapshot(&store);
    let named = |n: &str| ImportOptions {
        name: Some(ImageName::parse(n).unwrap()),
        reference: None,
    };

    // A truncated gzip rootfs.
    let big: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let gz = gzip(&layer(&[E::File("big", &big)]));
    let truncated = tmp.path().join("truncated.tar.gz");
    fs::write(&truncated, &gz[..gz.len() / 2]).unwrap();
    let err = import::import(&store, &truncated, &named("t")).unwrap_err();
    assert!(matches!(err, ImportError::Archive { .. }), "{err}");
    assert!(err.to_string().contains("truncated or corrupt"), "{err}");

    // A rootfs with a `..` entry.
    let escape = tmp.path().join("escape.tar");
    fs::write(&escape, layer(&[E::File("../../etc/cron.d/x", b"x")])).unwrap();
    let err = import::import(&store, &escape, &named("e")).unwrap_err();
    assert!(matches!(err, ImportError::Escape { .. }), "{err}");

    // A layout whose layer blob does not match its digest.
    let layout = tmp.path().join("layout");
    app_layout(&layout);
    let blobs: Vec<PathBuf> = fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let victim = blobs
        .iter()
        .find(|p| fs::read(p).unwrap().starts_with(&[0x1f, 0x8b]))
        .unwrap();
    let mut bytes = fs::read(victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(victim, bytes).unwrap();
    let err = import::import(&store, &layout, &ImportOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("does not match its descriptor"),
        "{err}"
    );
    // The same as an archive.
    let archive = tmp.path().join("bad.tar");
    tar_dir(&layout, &archive);
    let err = import::import(&store, &archive, &ImportOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("does not match its descriptor"),
        "{err}"
    );

    // Not an image at all.
    let junk = tmp.path().join("junk");
    fs::write(&junk, vec![7u8; 4096]).unwrap();
    let err = import::import(&store, &junk, &named("j")).unwrap_err();
    assert!(matches!(err, ImportError::NotAnImage { .. }), "{err}");

    assert_eq!(snapshot(&store), before);
    assert_eq!(
        fs::read_dir(store.tmp_dir()).unwrap().count(),
        0,
        "staging left behind"
    );
}

/// Imports `path` on a thread of its own and gives up after a few seconds: the old code
/// read a symlink to /dev/zero until the disk filled and blocked forever opening a FIFO.
fn import_within_seconds(store: &Store, path: &Path) -> Result<import::ImportReport, ImportError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (store, path) = (store.clone(), path.to_path_buf());
    std::thread::spawn(move || {
        let _ = tx.send(import::import(&store, &path, &ImportOptions::default()));
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("the import did not end within 10 s (reading a device or blocked on a FIFO)")
}

/// The blob of an app layout whose content starts with `magic`.
fn blob_starting_with(layout: &Path, magic: &[u8]) -> PathBuf {
    fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| fs::read(p).unwrap().starts_with(magic))
        .unwrap()
}

/// Issue #12 (7): an image layout directory is someone else's. Its files are read only if
/// they are regular files, and never past what they may hold.
#[test]
fn layout_files_that_are_not_regular_or_too_long_are_refused_quickly() {
    let (tmp, store) = new_store();
    let before = snapshot(&store);
    let fresh = |name: &str| {
        let layout = tmp.path().join(name);
        let m = app_layout(&layout);
        let manifest = layout.join("blobs/sha256").join(m.digest().digest());
        (layout, manifest)
    };
    let refused_as = |err: ImportError, want: &str| match err {
        ImportError::NotRegular { kind, .. } => assert_eq!(kind, want),
        other => panic!("expected a refusal of a {want}, got: {other}"),
    };

    // index.json is a symlink to /dev/zero.
    let (layout, _) = fresh("index-zero");
    fs::remove_file(layout.join("index.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", layout.join("index.json")).unwrap();
    refused_as(
        import_within_seconds(&store, &layout).unwrap_err(),
        "symbolic link",
    );

    // The manifest blob is a symlink to /dev/zero.
    let (layout, manifest) = fresh("manifest-zero");
    fs::remove_file(&manifest).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &manifest).unwrap();
    refused_as(
        import_within_seconds(&store, &layout).unwrap_err(),
        "symbolic link",
    );

    // A layer blob is a FIFO nobody writes to.
    let (layout, _) = fresh("layer-fifo");
    let layer = blob_starting_with(&layout, &[0x1f, 0x8b]);
    fs::remove_file(&layer).unwrap();
    nix::unistd::mkfifo(&layer, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    refused_as(import_within_seconds(&store, &layout).unwrap_err(), "FIFO");

    // A layer blob longer than its descriptor says: refused for its length, not read
    // through to find out its digest is wrong.
    let (layout, _) = fresh("layer-long");
    let layer = blob_starting_with(&layout, &[0x1f, 0x8b]);
    let declared = fs::metadata(&layer).unwrap().len();
    let mut f = fs::OpenOptions::new().append(true).open(&layer).unwrap();
    f.write_all(&vec![0u8; 4 << 20]).unwrap();
    drop(f);
    match import_within_seconds(&store, &layout).unwrap_err() {
        ImportError::TooLong { limit, .. } => assert_eq!(limit, declared),
        other => panic!("expected a blob longer than declared, got: {other}"),
    }

    // An index.json far larger than any index (a sparse file): refused before it is read.
    let (layout, _) = fresh("index-huge");
    fs::File::options()
        .write(true)
        .open(layout.join("index.json"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    match import_within_seconds(&store, &layout).unwrap_err() {
        ImportError::TooLong { limit, .. } => assert_eq!(limit, super::store::MAX_JSON_BLOB),
        other => panic!("expected an index.json too large, got: {other}"),
    }

    // An archive path that is a FIFO is refused, not opened.
    let fifo = tmp.path().join("image.tar");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    refused_as(import_within_seconds(&store, &fifo).unwrap_err(), "FIFO");

    // None of it reached the store, and the staging areas are gone.
    assert_eq!(snapshot(&store), before);
    assert_eq!(blob_count(&store), 0);
    assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
}

#[test]
fn corrupt_blobs_in_the_store_are_caught_at_unpack() {
    let (tmp, store) = new_store();
    let layout = tmp.path().join("layout");
    app_layout(&layout);
    import::import(&store, &layout, &ImportOptions::default()).unwrap();
    let (_, image) = super::open(&store, "example.com/app:1").unwrap();
    // Truncate the gzip layer in the store.
    let blob = store.blob_path(&image.layers[0].digest);
    let bytes = fs::read(&blob).unwrap();
    fs::write(&blob, &bytes[..bytes.len() - 10]).unwrap();
    let dest = tmp.path().join("rootfs");
    let err = rootfs::unpack_to(&store, &image, &dest, opts()).unwrap_err();
    assert!(err.to_string().contains("layer"), "{err}");
    assert!(!dest.exists(), "a failed unpack left {}", dest.display());
    assert_eq!(
        fs::read_dir(tmp.path()).unwrap().count(),
        2,
        "only the store and the layout should be there"
    );
}

#[test]
fn concurrent_imports_of_one_image_are_safe() {
    let (tmp, store) = new_store();
    let layout = tmp.path().join("layout");
    app_layout(&layout);
    let archive = tmp.path().join("app.tar");
    tar_dir(&layout, &archive);
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let store = store.clone();
                let path = if i % 2 == 0 {
                    archive.clone()
                } else {
                    layout.clone()
                };
                scope.spawn(move || import::import(&store, &path, &ImportOptions::default()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let digests: Vec<String> = results.into_iter().map(|r| r.unwrap().digest).collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(blob_count(&store), 4);
    assert_eq!(
        read(unpacked(&store, "example.com/app:1").path().join("app/run")),
        "run"
    );
}

/// Builds a block image, or None when the formatter is not installed here.
fn try_build(store: &Store, name: &str, format: DiskFormat) -> Option<disk::DiskImage> {
    let (_, image) = super::open(store, name).unwrap();
    match disk::build(store, &image, format, opts()) {
        Err(DiskError::ToolMissing { tool, fix }) => {
            eprintln!("skipped: {tool} not installed ({fix})");
            None
        }
        other => Some(other.unwrap()),
    }
}

#[test]
fn block_images_are_cached_by_chain_id() {
    let (tmp, store) = new_store();
    let layout = tmp.path().join("layout");
    app_layout(&layout);
    import::import(&store, &layout, &ImportOptions::default()).unwrap();
    for format in [DiskFormat::Erofs, DiskFormat::Ext4] {
        let Some(first) = try_build(&store, "example.com/app:1", format) else {
            continue;
        };
        assert!(!first.cache_hit);
        assert!(first.size > 0 && first.path.is_file());
        let second = try_build(&store, "example.com/app:1", format).unwrap();
        assert!(
            second.cache_hit,
            "{format}: the second build should be a cache hit"
        );
        assert_eq!(second.path, first.path);
        assert_eq!(
            fs::metadata(&second.path).unwrap().modified().unwrap(),
            fs::metadata(&first.path).unwrap().modified().unwrap()
        );
    }
    assert_eq!(
        fs::read_dir(store.tmp_dir()).unwrap().count(),
        0,
        "work dirs left behind"
    );
}

#[test]
fn prune_removes_only_unreferenced_content() {
    let (tmp, store) = new_store();
    let base = layer(&[E::File("base", b"base")]);
    let mk = |name: &str, top: &[u8]| {
        let layout = tmp.path().join(name);
        let m = write_image(
            &layout,
            &[
                (base.clone(), Compression::Gzip),
                (layer(&[E::File("top", top)]), Compression::None),
            ],
        );
        write_index(&layout, vec![descriptor_json(&m, serde_json::json!({}))]);
        let opts = ImportOptions {
            name: Some(ImageName::parse(name).unwrap()),
            reference: None,
        };
        import::import(&store, &layout, &opts).unwrap();
    };
    mk("one", b"1");
    mk("two", b"2");
    // Shared base layer: 2 manifests + 2 configs + 1 base + 2 tops.
    assert_eq!(blob_count(&store), 7);
    let one_disk = try_build(&store, "one", DiskFormat::Erofs);
    let two_disk = try_build(&store, "two", DiskFormat::Erofs);
    let (_, two) = super::open(&store, "two").unwrap();

    store.remove(&ImageName::parse("one").unwrap()).unwrap();
    let report = store.prune().unwrap();
    assert_eq!(report.blobs, 3, "one's manifest, config and top layer");
    assert_eq!(blob_count(&store), 4);
    for blob in [
        &two.manifest_digest,
        &two.config_digest,
        &two.layers[0].digest,
        &two.layers[1].digest,
    ] {
        assert!(
            store.has_blob(blob),
            "prune removed {blob}, which two still uses"
        );
    }
    if let (Some(one_disk), Some(two_disk)) = (one_disk, two_disk) {
        assert_eq!(report.disks, 1);
        assert!(!one_disk.path.exists() && two_disk.path.exists());
    }
    assert_eq!(read(unpacked(&store, "two").path().join("top")), "2");
    assert!(store.prune().unwrap().blobs == 0);
    assert!(super::open(&store, "one").is_err());
}

#[test]
fn the_default_image_is_made_on_first_use() {
    if super::builtin::find_busybox().is_err() {
        eprintln!("skipped: no busybox here (apt-get install busybox-static)");
        return;
    }
    let (_tmp, store) = new_store();
    let (name, image) = super::open(&store, super::builtin::DEFAULT_IMAGE).unwrap();
    assert_eq!(name.to_string(), "peapod/busybox:latest");
    let config = super::ImageRunConfig::from_config(&image.config);
    assert_eq!(config.cmd, ["sh"]);
    assert!(config.env[0].starts_with("PATH="));
    let root = unpacked(&store, "peapod/busybox");
    assert!(fs::metadata(root.path().join("bin/busybox")).unwrap().len() > 100_000);
    assert_eq!(
        fs::read_link(root.path().join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert!(read(root.path().join("etc/passwd")).starts_with("root:x:0:0:"));
    // Deterministic: importing again gives the same digest and adds nothing.
    let again =
        super::builtin::import_default(&store, &super::builtin::find_busybox().unwrap()).unwrap();
    assert_eq!(again.digest, image.manifest_digest.to_string());
    assert_eq!(again.added, 0);
    if let Ok(resolved) = super::resolve(&store, "peapod/busybox", DiskFormat::Erofs) {
        assert!(resolved.block_image().is_file());
        assert_eq!(resolved.config.default_argv(), ["sh"]);
        assert!(
            super::resolve(&store, "peapod/busybox", DiskFormat::Erofs)
                .unwrap()
                .disk
                .cache_hit
        );
    }
}

#[test]
fn image_run_config_json_is_strict() {
    let json = r#"{"Entrypoint":[],"Cmd":["sh"],"Env":[],"WorkingDir":"","User":""}"#;
    let parsed: super::ImageRunConfig = serde_json::from_str(json).unwrap();
    assert_eq!(parsed.cmd, ["sh"]);
    assert!(serde_json::from_str::<super::ImageRunConfig>(r#"{"Cmd":[],"Bogus":1}"#).is_err());
    let _ = ImageConfiguration::default();
}
