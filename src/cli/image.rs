//! `peapod image ...`: the local image store.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::image::builtin;
use crate::image::disk::{self, DiskFormat};
use crate::image::import::{self, ImportOptions};
use crate::image::reference::ImageName;
use crate::image::rootfs;
use crate::image::store::Store;
use crate::image::unpack::{UnpackLimits, UnpackOptions};

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The image store (created if missing).
    #[arg(long, env = "PEAPOD_ROOT", default_value = crate::image::store::DEFAULT_ROOT)]
    root: PathBuf,
}

impl StoreArgs {
    fn open(&self) -> anyhow::Result<Store> {
        Store::open(&self.root)
            .with_context(|| format!("cannot open the image store at {}", self.root.display()))
    }
}

#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Refuse images whose layers unpack to more than this many bytes (uncompressed).
    #[arg(long, default_value_t = UnpackLimits::default().max_bytes)]
    max_bytes: u64,
    /// Refuse images with more than this many files in all layers.
    #[arg(long, default_value_t = UnpackLimits::default().max_entries)]
    max_entries: u64,
}

impl LimitArgs {
    fn options(&self) -> UnpackOptions {
        UnpackOptions {
            limits: UnpackLimits {
                max_bytes: self.max_bytes,
                max_entries: self.max_entries,
            },
            ..UnpackOptions::for_current_user()
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an OCI layout directory, an OCI or docker-save archive, or a rootfs tarball.
    Import {
        /// The directory or archive (tar, .tar.gz, .tar.zst).
        path: PathBuf,
        /// Store it under this NAME[:TAG] (default: the name it carries).
        #[arg(long)]
        name: Option<ImageName>,
        /// Which image of an input that holds several (its ref name or repo tag).
        #[arg(long = "ref")]
        reference: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Build the default image peapod/busybox:latest from the host's static busybox.
    ImportDefault {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List images.
    Ls {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print an image's digest, layers and run config as JSON.
    Inspect {
        name: ImageName,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove an image's name (its content goes at the next prune).
    Rm {
        name: ImageName,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove blobs and block images that no image refers to.
    Prune {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Flatten an image into a guest block image (cached) and print its path.
    BuildDisk {
        name: ImageName,
        #[arg(long, value_enum, default_value_t = DiskFormat::Erofs)]
        format: DiskFormat,
        /// Print timing and cache details to stderr.
        #[arg(long, short)]
        verbose: bool,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Flatten an image into a new directory.
    Unpack {
        name: ImageName,
        /// The directory to create.
        dest: PathBuf,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub fn run(cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cmd {
        ImageCommand::Import {
            path,
            name,
            reference,
            store,
        } => {
            let store = store.open()?;
            let report = import::import(&store, &path, &ImportOptions { name, reference })
                .with_context(|| format!("cannot import {}", path.display()))?;
            writeln!(out, "{} {}", report.name, report.digest)?;
            eprintln!(
                "imported {:?} with {} layer(s): {} new blob(s), {} already stored",
                report.kind, report.layers, report.added, report.reused
            );
        }
        ImageCommand::ImportDefault { store } => {
            let store = store.open()?;
            let busybox = builtin::find_busybox()?;
            let report = builtin::import_default(&store, &busybox)?;
            writeln!(out, "{} {}", report.name, report.digest)?;
        }
        ImageCommand::Ls { store } => {
            let store = store.open()?;
            writeln!(out, "{:<48} {:<20} {:>10}", "NAME", "DIGEST", "SIZE")?;
            for image in store.list()? {
                let size = crate::image::manifest::load(&store, &image.manifest)
                    .map(|i| i.layers.iter().map(|l| l.size).sum::<u64>())
                    .map_or_else(|_| "?".to_string(), human);
                let short = format!("sha256:{}", &image.manifest.hex()[..12]);
                writeln!(
                    out,
                    "{:<48} {:<20} {:>10}",
                    image.name.to_string(),
                    short,
                    size
                )?;
            }
        }
        ImageCommand::Inspect { name, store } => {
            let store = store.open()?;
            let (name, image) = crate::image::open(&store, &name.to_string())?;
            let info = crate::image::info(&store, &name, &image);
            serde_json::to_writer_pretty(&mut out, &info)?;
            writeln!(out)?;
        }
        ImageCommand::Rm { name, store } => {
            let store = store.open()?;
            let removed = store.remove(&name)?;
            writeln!(out, "untagged {} ({})", removed.name, removed.manifest)?;
        }
        ImageCommand::Prune { store } => {
            let store = store.open()?;
            let report = store.prune()?;
            writeln!(
                out,
                "removed {} blob(s) ({}), {} block image(s) ({}), {} stale staging dir(s)",
                report.blobs,
                human(report.blob_bytes),
                report.disks,
                human(report.disk_bytes),
                report.tmp
            )?;
        }
        ImageCommand::BuildDisk {
            name,
            format,
            verbose,
            limits,
            store,
        } => {
            let store = store.open()?;
            let start = Instant::now();
            let (_, image) = crate::image::open(&store, &name.to_string())?;
            let built = disk::build(&store, &image, format, limits.options())
                .with_context(|| format!("cannot build a {format} block image of {name}"))?;
            writeln!(out, "{}", built.path.display())?;
            if verbose {
                eprintln!(
                    "{} {} ({}, chain {}) in {:.2?}",
                    if built.cache_hit { "cached" } else { "built" },
                    built.path.display(),
                    human(built.size),
                    built.chain_id,
                    start.elapsed()
                );
            }
            if let Some(report) = built.unpack {
                note_skipped(report.skipped_devices, report.skipped_xattrs);
            }
        }
        ImageCommand::Unpack {
            name,
            dest,
            limits,
            store,
        } => {
            let store = store.open()?;
            let (_, image) = crate::image::open(&store, &name.to_string())?;
            let report = rootfs::unpack_to(&store, &image, &dest, limits.options())
                .with_context(|| format!("cannot unpack {name} into {}", dest.display()))?;
            writeln!(out, "{}", dest.display())?;
            note_skipped(report.skipped_devices, report.skipped_xattrs);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn note_skipped(devices: u64, xattrs: u64) {
    if devices > 0 {
        eprintln!("note: skipped {devices} device node(s): only root can make them");
    }
    if xattrs > 0 {
        eprintln!("note: could not set {xattrs} extended attribute(s) (security.* needs root)");
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
