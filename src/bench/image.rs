//! `peapod bench image`: turning a 3-layer OCI image into a guest block image. peapod
//! (`image import` of the layout, then `build-disk --format erofs`, in process) against the
//! same work by hand (`umoci unpack` of the layout into a bundle, then `mkfs.erofs` of its
//! rootfs), runs interleaved, medians. Then the second conversion of the image, which in
//! peapod is a cache hit on the layer chain.
//!
//! The image is made here, deterministic: a base layer (busybox and a tree of small text
//! files), a middle layer that changes, deletes (whiteouts) and hides (an opaque directory)
//! part of it, and a top layer of larger, barely compressible files. `--layout DIR:REF` benches
//! an OCI layout of your own instead.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use super::{median, ratio};
use crate::image::disk::{self, DiskFormat};
use crate::image::import::{self, ImportOptions};
use crate::image::reference::ImageName;
use crate::image::store::Store;
use crate::image::unpack::UnpackOptions;

/// The benchmark image's reference inside its layout.
const TAG: &str = "bench";

pub struct ImageBench {
    pub runs: usize,
    /// `DIR[:REF]` of an OCI layout to convert instead of the generated one.
    pub layout: Option<String>,
    /// Where the stores, bundles and images go (default: the system temp dir).
    pub work_dir: Option<PathBuf>,
}

pub fn run(bench: &ImageBench) -> anyhow::Result<()> {
    let umoci = find("umoci").context("umoci not found: apt-get install umoci")?;
    let mkfs = find("mkfs.erofs").context("mkfs.erofs not found: apt-get install erofs-utils")?;
    let base = match &bench.work_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir(),
    };
    let dir = tempfile::Builder::new()
        .prefix("peapod-bench-image-")
        .tempdir_in(&base)
        .with_context(|| format!("cannot make a work directory in {}", base.display()))?;
    let (layout, reference) = match &bench.layout {
        Some(spec) => match spec.rsplit_once(':') {
            Some((dir, reference)) if !reference.contains('/') => {
                (PathBuf::from(dir), reference.to_string())
            }
            _ => (PathBuf::from(spec), "latest".to_string()),
        },
        None => {
            let layout = dir.path().join("layout");
            let summary = write_bench_layout(&layout, Shape::BENCH)?;
            eprintln!("bench image: {summary}");
            (layout, TAG.to_string())
        }
    };
    ensure!(
        layout.join("index.json").is_file(),
        "{} is not an OCI image layout (no index.json)",
        layout.display()
    );
    let uncompressed = layout_size(&layout)?;

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut hits = Vec::new();
    let mut our_size = 0;
    let mut their_size = 0;
    for i in 0..bench.runs {
        let run_dir = dir.path().join(format!("run-{i}"));
        fs::create_dir(&run_dir)?;
        let (took, size, hit) = peapod_once(&layout, &reference, &run_dir.join("store"))?;
        ours.push(took);
        hits.push(hit);
        our_size = size;
        let (took, size) = by_hand_once(&umoci, &mkfs, &layout, &reference, &run_dir)?;
        theirs.push(took);
        their_size = size;
        eprintln!(
            "run {}: peapod {:.0} ms (second conversion {:.2} ms), umoci+mkfs.erofs {:.0} ms",
            i + 1,
            ms(ours[i]),
            ms(hits[i]),
            ms(theirs[i])
        );
        fs::remove_dir_all(&run_dir)?;
    }
    let (o, t, h) = (median(ours), median(theirs), median(hits));
    println!(
        "peapod bench image: {} runs, medians; {} layers, {} of layer blobs",
        bench.runs,
        uncompressed.layers,
        mib(uncompressed.blob_bytes)
    );
    println!("| measure | peapod | umoci unpack + mkfs.erofs | peapod / by hand |");
    println!("|---|---|---|---|");
    println!(
        "| import + convert to erofs | {:.0} ms | {:.0} ms | {} |",
        ms(o),
        ms(t),
        ratio(o, t)
    );
    println!(
        "| block image size | {} | {} | {} |",
        mib(our_size),
        mib(their_size),
        size_ratio(our_size, their_size)
    );
    println!(
        "| second conversion of the same image | {:.2} ms (cache hit) | {:.0} ms (all again) | {} |",
        ms(h),
        ms(t),
        small_ratio(h, t)
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Like [`ratio`], with the digits a near-zero ratio needs.
fn small_ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        "-".into()
    } else {
        format!("{:.5}x", a.as_secs_f64() / b.as_secs_f64())
    }
}

fn size_ratio(a: u64, b: u64) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.2}x", a as f64 / b as f64)
    }
}

fn find(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// peapod: import the layout into a new store and build its erofs image; then build it
/// again (the cache hit). Returns the first's time, the image size and the second's time.
fn peapod_once(
    layout: &Path,
    reference: &str,
    store_dir: &Path,
) -> anyhow::Result<(Duration, u64, Duration)> {
    let started = Instant::now();
    let store = Store::open(store_dir)?;
    let name = ImageName::parse("bench/image:1")?;
    let opts = ImportOptions {
        name: Some(name.clone()),
        reference: Some(reference.to_string()),
    };
    import::import(&store, layout, &opts).context("peapod image import")?;
    let (_, image) = crate::image::open(&store, &name.to_string())?;
    let built = disk::build(
        &store,
        &image,
        DiskFormat::Erofs,
        UnpackOptions::for_current_user(),
    )?;
    let took = started.elapsed();
    ensure!(!built.cache_hit, "the first conversion was a cache hit");

    let again = Instant::now();
    let (_, image) = crate::image::open(&store, &name.to_string())?;
    let second = disk::build(
        &store,
        &image,
        DiskFormat::Erofs,
        UnpackOptions::for_current_user(),
    )?;
    let hit = again.elapsed();
    ensure!(
        second.cache_hit,
        "the second conversion was not a cache hit"
    );
    Ok((took, built.size, hit))
}

/// By hand: `umoci unpack --image LAYOUT:REF BUNDLE`, then `mkfs.erofs OUT BUNDLE/rootfs`.
fn by_hand_once(
    umoci: &Path,
    mkfs: &Path,
    layout: &Path,
    reference: &str,
    dir: &Path,
) -> anyhow::Result<(Duration, u64)> {
    let bundle = dir.join("bundle");
    let out = dir.join("by-hand.erofs");
    let started = Instant::now();
    let mut unpack = Command::new(umoci);
    unpack
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{reference}", layout.display()))
        .arg(&bundle);
    if !nix::unistd::geteuid().is_root() {
        unpack.arg("--rootless");
    }
    run_quiet(unpack, "umoci unpack")?;
    let mut format = Command::new(mkfs);
    format.arg("--quiet").arg(&out).arg(bundle.join("rootfs"));
    run_quiet(format, "mkfs.erofs")?;
    let took = started.elapsed();
    Ok((took, fs::metadata(&out)?.len()))
}

fn run_quiet(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

struct LayoutSize {
    layers: usize,
    blob_bytes: u64,
}

/// Layers and their total blob bytes, from the layout's first manifest.
fn layout_size(layout: &Path) -> anyhow::Result<LayoutSize> {
    let index: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json"))?)?;
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .context("index.json names no manifest")?;
    let hex = digest
        .strip_prefix("sha256:")
        .context("not a sha256 digest")?;
    ensure!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "bad digest {digest}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(hex))?)?;
    let layers = manifest["layers"].as_array().map_or(&[][..], Vec::as_slice);
    Ok(LayoutSize {
        layers: layers.len(),
        blob_bytes: layers.iter().filter_map(|l| l["size"].as_u64()).sum(),
    })
}

/// A small deterministic generator (xorshift64*), so every run benches the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const WORDS: [&str; 16] = [
    "pod", "pea", "guest", "kernel", "layer", "image", "vcpu", "virtio", "block", "erofs", "store",
    "digest", "agent", "queue", "memory", "page",
];

/// Text that compresses like source code or config files.
fn text(rng: &mut Rng, bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 16);
    while out.len() < bytes {
        out.extend_from_slice(WORDS[rng.below(16) as usize].as_bytes());
        out.push(if rng.below(10) == 0 { b'\n' } else { b' ' });
    }
    out.truncate(bytes);
    out
}

/// Bytes that barely compress (like shared libraries and media).
fn noise(rng: &mut Rng, bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 8);
    while out.len() < bytes {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(bytes);
    out
}

struct LayerWriter {
    tar: tar::Builder<Vec<u8>>,
}

impl LayerWriter {
    fn new() -> Self {
        Self {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h
    }

    fn dir(&mut self, path: &str) -> io::Result<()> {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.tar.append_data(&mut h, path, io::empty())
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.tar.append_data(&mut h, path, data)
    }

    fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.tar.append_link(&mut h, path, target)
    }

    fn finish(self) -> io::Result<Vec<u8>> {
        self.tar.into_inner()
    }
}

/// How big the generated image is.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Directories of small text files in the base layer (the middle layer touches half).
    pub dirs: usize,
    pub files_per_dir: usize,
    /// Barely compressible 1 MiB files in the top layer.
    pub app_files: usize,
    /// Put the host's busybox (about 2 MiB) in the base layer, where there is one.
    pub busybox: bool,
}

impl Shape {
    /// What `peapod bench image` converts: about 20 MiB of text in 2000 files, 16 MiB of
    /// noise.
    pub const BENCH: Shape = Shape {
        dirs: 40,
        files_per_dir: 50,
        app_files: 16,
        busybox: true,
    };
}

/// Writes the benchmark image as an OCI layout tagged [`TAG`]; returns a one-line summary.
pub fn write_bench_layout(dir: &Path, shape: Shape) -> anyhow::Result<String> {
    let mut rng = Rng(0x5EED_CAFE_F00D_D00D);
    // Layer 1: a base system: busybox with its applets when the host has one, and a tree
    // of small text files.
    let mut base = LayerWriter::new();
    for d in ["bin", "etc", "usr", "usr/share", "usr/lib", "var", "tmp"] {
        base.dir(d)?;
    }
    if let Some(busybox) = shape
        .busybox
        .then(crate::image::builtin::find_busybox)
        .and_then(Result::ok)
    {
        base.file("bin/busybox", 0o755, &fs::read(&busybox)?)?;
        for applet in ["sh", "ls", "cat", "echo", "mkdir", "rm", "cp", "mv"] {
            base.symlink(&format!("bin/{applet}"), "busybox")?;
        }
    }
    for d in 0..shape.dirs {
        base.dir(&format!("usr/share/pkg{d}"))?;
        for f in 0..shape.files_per_dir {
            let size = 512 + rng.below(16 << 10) as usize;
            base.file(
                &format!("usr/share/pkg{d}/file{f}.txt"),
                0o644,
                &text(&mut rng, size),
            )?;
        }
    }
    base.dir("usr/lib/cache")?;
    for f in 0..100 {
        base.file(&format!("usr/lib/cache/c{f}"), 0o644, &text(&mut rng, 4096))?;
    }
    // Layer 2: updates a fifth of half the directories' files, deletes a tenth of them
    // (whiteouts), hides usr/lib/cache (an opaque directory).
    let mut middle = LayerWriter::new();
    for d in 0..shape.dirs / 2 {
        middle.dir(&format!("usr/share/pkg{d}"))?;
        for f in 0..shape.files_per_dir / 5 {
            let size = 1024 + rng.below(8 << 10) as usize;
            middle.file(
                &format!("usr/share/pkg{d}/file{f}.txt"),
                0o644,
                &text(&mut rng, size),
            )?;
        }
        for f in shape.files_per_dir * 8 / 10..shape.files_per_dir * 9 / 10 {
            middle.file(&format!("usr/share/pkg{d}/.wh.file{f}.txt"), 0o644, b"")?;
        }
    }
    middle.dir("usr/lib/cache")?;
    middle.file("usr/lib/cache/.wh..wh..opq", 0o644, b"")?;
    middle.file("usr/lib/cache/fresh", 0o644, &text(&mut rng, 4096))?;
    middle.file(
        "etc/os-release",
        0o644,
        b"NAME=peapod-bench\nID=peapod-bench\n",
    )?;
    // Layer 3: an application: files of 1 MiB that barely compress, and a config.
    let mut app = LayerWriter::new();
    app.dir("opt")?;
    app.dir("opt/app")?;
    for f in 0..shape.app_files {
        app.file(
            &format!("opt/app/lib{f}.so"),
            0o755,
            &noise(&mut rng, 1 << 20),
        )?;
    }
    app.file("opt/app/config.toml", 0o644, &text(&mut rng, 2048))?;

    let layers = [base.finish()?, middle.finish()?, app.finish()?];
    let tar_bytes: usize = layers.iter().map(Vec::len).sum();
    let run_config =
        serde_json::json!({"Cmd": ["/bin/sh"], "Env": [crate::image::import::DEFAULT_PATH]});
    crate::image::layout::write_oci_layout(dir, &layers, run_config, TAG)?;
    Ok(format!(
        "generated 3 layers ({} of tar), {}",
        mib(tar_bytes as u64),
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_image_imports_and_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let tiny = Shape {
            dirs: 2,
            files_per_dir: 10,
            app_files: 0,
            busybox: false,
        };
        write_bench_layout(&a, tiny).unwrap();
        write_bench_layout(&b, tiny).unwrap();
        assert_eq!(
            fs::read(a.join("index.json")).unwrap(),
            fs::read(b.join("index.json")).unwrap()
        );
        assert_eq!(layout_size(&a).unwrap().layers, 3);
        let store = Store::open(&dir.path().join("store")).unwrap();
        let opts = ImportOptions {
            name: Some(ImageName::parse("bench/image:1").unwrap()),
            reference: Some(TAG.to_string()),
        };
        let report = import::import(&store, &a, &opts).unwrap();
        assert_eq!(report.layers, 3);
    }
}
