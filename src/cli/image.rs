//! `peapod image ...`: the local image store.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::image::builtin;
use crate::image::disk::{self, DiskFormat};
use crate::image::import::{self, ImportOptions};
use crate::image::pull::{self, LayerState, PullEvent, PullOptions};
use crate::image::reference::ImageName;
use crate::image::registry::ClientOptions;
use crate::image::registry::auth::Credentials;
use crate::image::registry::reference::qualified;
use crate::image::rootfs;
use crate::image::store::{Store, StoreError};
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
    /// Pull an image from an OCI distribution registry (linux/amd64).
    Pull {
        /// `[HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST]`; no host means Docker Hub.
        reference: String,
        /// Store it under this NAME[:TAG] (default: the registry-qualified reference).
        #[arg(long)]
        name: Option<ImageName>,
        /// USER:PASSWORD for the registry (default: an auth file's, else anonymous).
        #[arg(long, env = "PEAPOD_REGISTRY_CREDS", hide_env_values = true)]
        creds: Option<String>,
        /// Plain HTTP (registries on 127.0.0.1 / localhost get it without asking).
        #[arg(long)]
        insecure: bool,
        /// No progress on stderr.
        #[arg(long, short)]
        quiet: bool,
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
        ImageCommand::Pull {
            reference,
            name,
            creds,
            insecure,
            quiet,
            store,
        } => {
            let store = store.open()?;
            let credentials = match creds {
                Some(text) => Some(Credentials::parse(&text).context(
                    "--creds (or PEAPOD_REGISTRY_CREDS) must be USER:PASSWORD with a non-empty USER",
                )?),
                None => None,
            };
            let opts = PullOptions {
                client: ClientOptions {
                    insecure,
                    credentials,
                },
                name,
            };
            let mut display = PullProgress::new(quiet);
            let start = Instant::now();
            let report = pull::pull(&store, &reference, &opts, &mut |e| display.show(&e));
            display.end();
            let report = report.with_context(|| format!("cannot pull {reference}"))?;
            writeln!(out, "{} {}", report.name, report.digest)?;
            if !quiet {
                eprintln!(
                    "pulled {} layer(s), {} downloaded in {:.1?}: {} new blob(s), {} already stored",
                    report.layers,
                    human(report.downloaded),
                    start.elapsed(),
                    report.added,
                    report.reused
                );
            }
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
                    .ok()
                    .and_then(|i| {
                        crate::image::manifest::total_size(i.layers.iter().map(|l| l.size))
                    })
                    .map_or_else(|| "?".to_string(), human);
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
            // `busybox` also names a pulled docker.io/library/busybox:latest.
            let removed = match store.remove(&name) {
                Err(not_found @ StoreError::NotFound { .. }) => {
                    match qualified(&name).map(|q| store.remove(&q)) {
                        Some(Ok(removed)) => removed,
                        _ => return Err(not_found.into()),
                    }
                }
                other => other?,
            };
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

/// Pull progress on stderr: one line rewritten in place on a terminal, a line per layer
/// otherwise (logs, CI).
pub(super) struct PullProgress {
    quiet: bool,
    tty: bool,
    total: u64,
    /// Bytes of finished (or already stored) layers.
    finished: u64,
    last_draw: Option<Instant>,
    drawn: bool,
}

impl PullProgress {
    pub(super) fn new(quiet: bool) -> Self {
        Self {
            quiet,
            tty: std::io::stderr().is_terminal(),
            total: 0,
            finished: 0,
            last_draw: None,
            drawn: false,
        }
    }

    pub(super) fn show(&mut self, event: &PullEvent<'_>) {
        if self.quiet {
            return;
        }
        match *event {
            PullEvent::Resolved {
                digest,
                layers,
                bytes,
            } => {
                self.total = bytes;
                eprintln!("manifest {digest}: {layers} layer(s), {}", human(bytes));
            }
            PullEvent::Layer {
                index,
                count,
                digest,
                size,
                done,
                state,
            } => {
                let short = &digest.hex()[..12];
                let line = match state {
                    LayerState::Stored => format!("layer {index}/{count} {short}: already stored"),
                    LayerState::Downloading => format!(
                        "layer {index}/{count} {short}: {} / {}   total {} / {}",
                        human(done),
                        human(size),
                        human(self.finished + done),
                        human(self.total)
                    ),
                    LayerState::Done => {
                        format!("layer {index}/{count} {short}: {} verified", human(size))
                    }
                };
                if state != LayerState::Downloading {
                    self.finished += size;
                    if self.tty {
                        eprint!("\r\x1b[2K");
                    }
                    eprintln!("{line}");
                    self.drawn = false;
                } else if self.tty
                    && self
                        .last_draw
                        .is_none_or(|t| t.elapsed() >= Duration::from_millis(100))
                {
                    eprint!("\r\x1b[2K{line}");
                    self.last_draw = Some(Instant::now());
                    self.drawn = true;
                }
            }
        }
    }

    /// Ends a half-drawn line (a failed pull).
    pub(super) fn end(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
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
