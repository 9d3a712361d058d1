//! `peapod bench isolation`: what a process in a pod can see of and do to the kernel under
//! it, per isolation model, as a matrix (probe × model).
//!
//! The same static `peapod-probe` ([`super::probe`]) runs in every column:
//! - **host** (the reference): the probe run directly on this host, as root;
//! - **container**: a plain container on the host's kernel, default and `--privileged`:
//!   `peapod run --runtime container` (the probe bound read-only at /bench), and as a peer
//!   Debian's `crun` with its default spec on the unpacked `peapod/busybox` image (its
//!   privileged config: every capability, no masked or read-only paths, rw /sys, all devices
//!   allowed and the host's block devices created; the marker at /marker);
//! - **VM pod**: `peapod run --rm --network none -v DIR:/bench:ro peapod/busybox:latest
//!   /bench/peapod-probe`, default and `--privileged`, in a private `PEAPOD_ROOT`
//!   ([`BenchPods`]). A pod VM's `--privileged` container holds every capability of the
//!   guest kernel, never of the host's.
//!
//! Each column gets a marker directory of its own (for the VM pod, one inside the
//! container), the only place a probe writes; the bench checks that nothing is left mounted
//! under a host marker and removes it entry by entry, never recursively. The matrix puts the
//! outcome (bold where it differs from the host's) and the evidence in each cell, and lists
//! which kernel each column ran on. Like the other VM benches, it runs itself inside the
//! test bed where the host has no hardware KVM (the host column is then the L1).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use serde::Serialize;

use super::pod::BenchPods;
use super::probe::{Outcome, ProbeLine, ProbeName};

/// Names the static `peapod-probe` to use.
pub const PROBE_ENV: &str = "PEAPOD_PROBE";
/// The file name of the probe, also inside the containers' `/bench`.
pub const PROBE_BINARY_NAME: &str = "peapod-probe";
const IMAGE: &str = "peapod/busybox:latest";
/// Where the static probe lies inside the test bed.
const MACHINE_PROBE: &str = "/opt/peapod-bench/peapod-probe";
/// The VM pod's marker: in the container's own writable root (the pod's volumes are
/// read-only snapshots, so a host directory cannot be shared for writing).
const VM_MARKER: &str = "/tmp/peapod-probe-marker";
/// How long a table cell's reason for a column that did not run may be.
const REASON_CELL_CHARS: usize = 120;

/// What the privileged probes try, printed before they run on a real host.
pub const PRIVILEGED_PLAN: &str = "\
bench isolation: the probes run as root on this host and in privileged containers; each is \
harmless:
  - reads: /proc, /sys, one /dev/kmsg record, the kernel log, 4 bytes of /proc/kcore
  - calls that stop at their permission check: init_module of an empty image, reboot with \
a bad magic number, settimeofday(NULL, NULL)
  - opens for write, writing nothing: /proc/sysrq-trigger, /proc/sys/kernel/core_pattern
  - under a fresh marker directory only: mounts a new named cgroup v1 hierarchy and writes a \
marker path into its release_agent (no cgroup is created, so it never runs); mounts the \
block device behind / again with its own ro/rw state, lists it, unmounts it";

/// An isolation model: a column (or two) of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// The probe on the host itself: the reference.
    Host,
    /// A plain container on the host's kernel: peapod's container runtime.
    Container,
    /// The same model from Debian's crun with its default spec: a peer.
    Crun,
    /// A pod VM: the container on the guest kernel.
    Vm,
}

impl Model {
    pub const ALL: [Model; 4] = [Model::Host, Model::Container, Model::Crun, Model::Vm];

    /// Who runs the probe for this model.
    pub fn runner(self) -> Box<dyn Runner> {
        match self {
            Model::Host => Box::new(HostRunner),
            Model::Container => Box::new(PeapodRunner {
                runtime: Some("container"),
            }),
            Model::Crun => Box::new(CrunRunner),
            Model::Vm => Box::new(PeapodRunner { runtime: None }),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Model::Host => "host",
            Model::Container => "container",
            Model::Crun => "container",
            Model::Vm => "VM pod",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Privilege {
    Default,
    Privileged,
}

/// One column: a model at a privilege, and the probe's lines or why it did not run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Column {
    pub model: Model,
    pub privilege: Privilege,
    /// What ran the probe (`probe on the host`, `crun`, `peapod run`).
    pub runner: String,
    #[serde(flatten)]
    pub result: ColumnResult,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnResult {
    Probes(Vec<ProbeLine>),
    NotRun(String),
}

impl Column {
    fn header(&self) -> String {
        let privileged = match self.privilege {
            Privilege::Default => "",
            Privilege::Privileged => ", privileged",
        };
        match self.model {
            Model::Host => "host (reference)".to_string(),
            model => format!("{} ({}{privileged})", model.label(), self.runner),
        }
    }

    fn line(&self, probe: ProbeName) -> Option<&ProbeLine> {
        match &self.result {
            ColumnResult::Probes(lines) => lines.iter().find(|l| l.probe == probe),
            ColumnResult::NotRun(_) => None,
        }
    }

    /// The kernel release the column ran on (the kernel probe's evidence up to `;`).
    fn kernel(&self) -> Option<&str> {
        let line = self.line(ProbeName::Kernel)?;
        (line.outcome == Outcome::Visible)
            .then(|| line.evidence.split(';').next().unwrap_or_default().trim())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error(
        "probe output line {line} is not a probe line ({source}): {text:?} (is the probe the \
         same build as this peapod? rebuild it with scripts/build-guest-bins peapod-probe)"
    )]
    BadLine {
        line: usize,
        text: String,
        source: serde_json::Error,
    },
    #[error("probe output line {line} repeats the probe {probe}: {text:?}")]
    Repeated {
        line: usize,
        probe: &'static str,
        text: String,
    },
    #[error("the probe printed no lines")]
    Empty,
}

/// The probe's stdout: one [`ProbeLine`] per non-empty line, each probe at most once.
pub fn parse_probe_output(stdout: &str) -> Result<Vec<ProbeLine>, IsolationError> {
    let mut lines: Vec<ProbeLine> = Vec::new();
    for (i, text) in stdout.lines().enumerate() {
        if text.trim().is_empty() {
            continue;
        }
        let line: ProbeLine =
            serde_json::from_str(text).map_err(|source| IsolationError::BadLine {
                line: i + 1,
                text: text.to_string(),
                source,
            })?;
        if lines.iter().any(|l| l.probe == line.probe) {
            return Err(IsolationError::Repeated {
                line: i + 1,
                probe: line.probe.as_str(),
                text: text.to_string(),
            });
        }
        lines.push(line);
    }
    match lines.is_empty() {
        true => Err(IsolationError::Empty),
        false => Ok(lines),
    }
}

/// Text for a markdown cell: no `|`, no newline.
fn cell_text(text: &str) -> String {
    text.replace('|', "/").replace('\n', " ")
}

/// A reason for a cell: its first line, at most [`REASON_CELL_CHARS`] characters.
fn reason_cell(why: &str) -> String {
    let first = why
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("unknown");
    let mut cell = cell_text(first.trim());
    if cell.chars().count() > REASON_CELL_CHARS {
        cell = cell.chars().take(REASON_CELL_CHARS - 1).collect();
        cell.push('…');
    }
    cell
}

/// The markdown matrix: a row per probe, a column per model and privilege; each cell the
/// outcome (bold where it differs from the first column's, the reference) and the evidence.
/// Then a line per column on the kernel it ran on.
pub fn render_markdown(columns: &[Column]) -> Vec<String> {
    let mut out = Vec::new();
    let headers: Vec<String> = columns.iter().map(Column::header).collect();
    out.push(format!("| probe | {} |", headers.join(" | ")));
    out.push(format!("|---|{}", "---|".repeat(columns.len())));
    let reference = columns.first();
    for probe in ProbeName::ALL {
        let cells: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, column)| match (&column.result, column.line(probe)) {
                (ColumnResult::NotRun(why), _) => format!("not run: {}", reason_cell(why)),
                (ColumnResult::Probes(_), None) => "missing".to_string(),
                (ColumnResult::Probes(_), Some(line)) => {
                    let differs = i > 0
                        && reference
                            .and_then(|r| r.line(probe))
                            .is_some_and(|r| differs(probe, r, line));
                    let outcome = match differs {
                        true => format!("**{}**", line.outcome.as_str()),
                        false => line.outcome.as_str().to_string(),
                    };
                    format!("{outcome}: {}", cell_text(&line.evidence))
                }
            })
            .collect();
        out.push(format!("| {} | {} |", probe.question(), cells.join(" | ")));
    }
    out.push(String::new());
    out.push("Bold: differs from the host's answer. Kernels:".to_string());
    let host_kernel = reference.and_then(Column::kernel);
    for column in columns {
        let text = match (column.kernel(), host_kernel) {
            (None, _) => "unknown (not run)".to_string(),
            (Some(k), _) if column.model == Model::Host => k.to_string(),
            (Some(k), Some(h)) if k == h => format!("{k}: the host's kernel"),
            (Some(k), Some(_)) => format!("{k}: its own kernel, not the host's"),
            (Some(k), None) => k.to_string(),
        };
        out.push(format!("- {}: {text}", column.header()));
    }
    out
}

/// Whether `line` answers differently from the reference `r`: another outcome, or for the
/// kernel, another kernel.
fn differs(probe: ProbeName, r: &ProbeLine, line: &ProbeLine) -> bool {
    let release = |l: &ProbeLine| l.evidence.split(';').next().map(str::to_string);
    r.outcome != line.outcome || (probe == ProbeName::Kernel && release(r) != release(line))
}

/// The matrix as JSON: `{"columns": [{"model", "privilege", "runner", "probes": [...] |
/// "not_run": "why"}]}`.
pub fn render_json(columns: &[Column]) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&serde_json::json!({ "columns": columns }))
}

/// How the matrix is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Markdown,
    Json,
}

pub struct IsolationBench {
    pub output: OutputFormat,
    /// Skip the privileged columns.
    pub no_privileged: bool,
    /// The VM pod's guest kernel and agent initramfs (default: where peapod finds them).
    pub kernel: Option<PathBuf>,
    pub agent_initrd: Option<PathBuf>,
}

/// What a runner gets for one column.
pub struct ProbeRun<'a> {
    /// A directory holding only the static probe (mounted read-only at `/bench`).
    pub bench_dir: &'a Path,
    /// A fresh, empty host directory the probe may write under (where the runner can share
    /// one).
    pub marker: &'a Path,
    pub privilege: Privilege,
    /// Scratch space for the run (bundles, image stores), removed after the bench.
    pub work: &'a Path,
    pub bench: &'a IsolationBench,
}

/// Runs the probe for one model.
pub trait Runner {
    /// What runs the probe, for the column's header.
    fn name(&self) -> &'static str;
    fn supports(&self, privilege: Privilege) -> bool;
    /// The probe's stdout.
    fn run(&self, run: &ProbeRun) -> anyhow::Result<String>;
}

struct HostRunner;

impl Runner for HostRunner {
    fn name(&self) -> &'static str {
        "probe on the host"
    }

    fn supports(&self, privilege: Privilege) -> bool {
        privilege == Privilege::Default
    }

    fn run(&self, run: &ProbeRun) -> anyhow::Result<String> {
        let mut probe = Command::new(run.bench_dir.join(PROBE_BINARY_NAME));
        probe.arg("--marker").arg(run.marker);
        output_of(probe, "the probe on the host")
    }
}

/// Plain containers until peapod has its own: crun with its default spec.
struct CrunRunner;

impl Runner for CrunRunner {
    fn name(&self) -> &'static str {
        "crun"
    }

    fn supports(&self, _: Privilege) -> bool {
        true
    }

    fn run(&self, run: &ProbeRun) -> anyhow::Result<String> {
        let crun = crate::machine::assets::find_in_path("crun")
            .context("no crun here (apt-get install crun)")?;
        let rootfs = run.work.join("rootfs");
        if !rootfs.is_dir() {
            unpack_image(&run.work.join("store"), &rootfs)?;
        }
        let bundle = run.work.join(match run.privilege {
            Privilege::Default => "bundle-default",
            Privilege::Privileged => "bundle-privileged",
        });
        fs::create_dir_all(&bundle)?;
        let out = Command::new(&crun)
            .arg("spec")
            .current_dir(&bundle)
            .stdin(Stdio::null())
            .output()
            .context("crun spec")?;
        anyhow::ensure!(
            out.status.success(),
            "crun spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = bundle.join("config.json");
        let default: serde_json::Value = serde_json::from_slice(&fs::read(&config)?)?;
        let mut spec = probe_spec(default, &rootfs, run.bench_dir, run.marker)?;
        if run.privilege == Privilege::Privileged {
            privileged_spec(&mut spec, &host_devices(), cap_last_cap())?;
        }
        fs::write(&config, serde_json::to_vec_pretty(&spec)?)?;
        let mut command = Command::new(&crun);
        command.arg("run");
        if std::env::var_os("PEAPOD_IN_MACHINE").is_some() {
            // the L1's root is its initramfs, where pivot_root is refused
            command.arg("--no-pivot");
        }
        let name = format!("peapod-probe-{}-{:?}", std::process::id(), run.privilege);
        command
            .arg("--bundle")
            .arg(&bundle)
            .arg(name.to_lowercase());
        output_of(command, "crun run")
    }
}

/// A pod through `peapod run`; `runtime`: its `--runtime`, where not the default (VM).
struct PeapodRunner {
    runtime: Option<&'static str>,
}

impl Runner for PeapodRunner {
    fn name(&self) -> &'static str {
        match self.runtime {
            None => "peapod run",
            Some(_) => "peapod run --runtime container",
        }
    }

    fn supports(&self, _: Privilege) -> bool {
        true
    }

    fn run(&self, run: &ProbeRun) -> anyhow::Result<String> {
        let peapod = std::env::current_exe()?;
        let kernel = match &run.bench.kernel {
            Some(path) => path.clone(),
            None => crate::guest_kernel::default_kernel()?,
        };
        let initrd = match &run.bench.agent_initrd {
            Some(path) => path.clone(),
            None => crate::runtime::oneshot::default_agent_initramfs()?,
        };
        let pods = BenchPods::new(&peapod, &kernel, &initrd)?;
        let volume = format!("{}:/bench:ro", run.bench_dir.display());
        let probe = format!("/bench/{PROBE_BINARY_NAME}");
        let mut args = vec!["--rm", "--network", "none", "-v", &volume];
        // Named even for the default, so that a PEAPOD_RUNTIME of the caller's does not
        // swap the columns.
        args.extend(["--runtime", self.runtime.unwrap_or("vm")]);
        if run.privilege == Privilege::Privileged {
            args.push("--privileged");
        }
        args.extend([IMAGE, &probe, "--marker", VM_MARKER]);
        output_of(pods.run(&args), "peapod run of the probe")
    }
}

/// The stdout of `command`, which must succeed.
fn output_of(mut command: Command, what: &str) -> anyhow::Result<String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `peapod image unpack` of the bench's image into `rootfs` (the store holds the built-in
/// image).
fn unpack_image(store: &Path, rootfs: &Path) -> anyhow::Result<()> {
    let mut unpack = Command::new(std::env::current_exe()?);
    unpack
        .args(["image", "unpack", "--root"])
        .arg(store)
        .arg(IMAGE)
        .arg(rootfs);
    output_of(unpack, "peapod image unpack").map(drop)
}

/// crun's default spec with no terminal, `rootfs` as the root, the probe's directory at
/// `/bench` (read-only), the marker at `/marker`, and the probe as the process.
pub fn probe_spec(
    mut spec: serde_json::Value,
    rootfs: &Path,
    bench_dir: &Path,
    marker: &Path,
) -> anyhow::Result<serde_json::Value> {
    let process = spec
        .get_mut("process")
        .and_then(|p| p.as_object_mut())
        .context("crun's spec has no process")?;
    process.insert("terminal".into(), false.into());
    process.insert(
        "args".into(),
        serde_json::json!([format!("/bench/{PROBE_BINARY_NAME}"), "--marker", "/marker"]),
    );
    let root = spec
        .get_mut("root")
        .and_then(|r| r.as_object_mut())
        .context("crun's spec has no root")?;
    root.insert("path".into(), rootfs.to_string_lossy().into_owned().into());
    let mounts = spec
        .get_mut("mounts")
        .and_then(|m| m.as_array_mut())
        .context("crun's spec has no mounts")?;
    mounts.push(serde_json::json!({
        "destination": "/bench", "type": "bind", "source": bench_dir,
        "options": ["rbind", "ro", "nosuid", "nodev", "rprivate"],
    }));
    mounts.push(serde_json::json!({
        "destination": "/marker", "type": "bind", "source": marker,
        "options": ["rbind", "rw", "nosuid", "nodev", "rprivate"],
    }));
    Ok(spec)
}

/// A host device for a privileged container's `linux.devices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    pub path: String,
    /// `b` or `c`.
    pub kind: char,
    pub major: u64,
    pub minor: u64,
}

/// What `--privileged` means for a plain container (as Docker and Podman do it): every
/// capability up to the kernel's `last_cap`, no masked or read-only paths, /sys and the
/// cgroup tree writable, every device allowed and the host's block devices and /dev/kmsg
/// created.
pub fn privileged_spec(
    spec: &mut serde_json::Value,
    devices: &[HostDevice],
    last_cap: u32,
) -> anyhow::Result<()> {
    let caps: Vec<String> = super::probe::decode_caps(u64::MAX)
        .into_iter()
        .take(last_cap as usize + 1)
        .map(|c| format!("CAP_{}", c.to_uppercase()))
        .collect();
    let process = spec
        .get_mut("process")
        .and_then(|p| p.as_object_mut())
        .context("crun's spec has no process")?;
    process.insert(
        "capabilities".into(),
        serde_json::json!({
            "bounding": caps, "effective": caps, "permitted": caps, "ambient": caps,
            "inheritable": caps,
        }),
    );
    process.insert("noNewPrivileges".into(), false.into());
    if let Some(mounts) = spec.get_mut("mounts").and_then(|m| m.as_array_mut()) {
        for mount in mounts.iter_mut() {
            let dest = mount["destination"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if (dest == "/sys" || dest == "/sys/fs/cgroup")
                && let Some(options) = mount.get_mut("options").and_then(|o| o.as_array_mut())
            {
                options.retain(|o| o != "ro");
                options.push("rw".into());
            }
        }
    }
    let linux = spec
        .get_mut("linux")
        .and_then(|l| l.as_object_mut())
        .context("crun's spec has no linux section")?;
    linux.remove("maskedPaths");
    linux.remove("readonlyPaths");
    linux.remove("seccomp");
    linux.insert(
        "devices".into(),
        devices
            .iter()
            .map(|d| {
                serde_json::json!({
                    "path": d.path, "type": d.kind.to_string(), "major": d.major, "minor": d.minor,
                    "fileMode": 0o660, "uid": 0, "gid": 0,
                })
            })
            .collect(),
    );
    let resources = linux
        .entry("resources")
        .or_insert_with(|| serde_json::json!({}));
    resources["devices"] = serde_json::json!([{"allow": true, "access": "rwm"}]);
    Ok(())
}

/// The block device nodes directly in the host's /dev, and /dev/kmsg.
fn host_devices() -> Vec<HostDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(entries) = fs::read_dir("/dev") else {
        return Vec::new();
    };
    let mut devices: Vec<HostDevice> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let meta = e.path().symlink_metadata().ok()?;
            let kind = match meta.file_type() {
                t if t.is_block_device() => 'b',
                t if t.is_char_device() && e.file_name() == "kmsg" => 'c',
                _ => return None,
            };
            Some(HostDevice {
                path: e.path().to_string_lossy().into_owned(),
                kind,
                major: nix::sys::stat::major(meta.rdev()),
                minor: nix::sys::stat::minor(meta.rdev()),
            })
        })
        .collect();
    devices.sort_by(|a, b| a.path.cmp(&b.path));
    devices
}

fn cap_last_cap() -> u32 {
    fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(40)
}

/// Removes a host marker directory after its column: refused (and the directory kept) when
/// anything is still mounted under it; otherwise entry by entry, never recursively, so that
/// a mount the probe failed to undo cannot have the host's files removed through it.
pub fn remove_marker(dir: &Path) -> anyhow::Result<()> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = format!("{}/", dir.display());
    let under: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.starts_with(&prefix) || *p == dir.to_string_lossy())
        .collect();
    anyhow::ensure!(
        under.is_empty(),
        "still mounted under the marker {}: {} (unmount with `umount -l`, then remove it)",
        dir.display(),
        under.join(", ")
    );
    let mut left = Vec::new();
    for entry in fs::read_dir(dir)?.filter_map(Result::ok) {
        let path = entry.path();
        left.push(path.display().to_string());
        let _ = match entry.file_type().map(|t| t.is_dir()) {
            Ok(true) => fs::remove_dir(&path),
            _ => fs::remove_file(&path),
        };
    }
    fs::remove_dir(dir).with_context(|| format!("removing the marker {}", dir.display()))?;
    if !left.is_empty() {
        eprintln!(
            "bench isolation: the probe left {} under its marker (removed)",
            left.join(", ")
        );
    }
    Ok(())
}

pub fn run(bench: &IsolationBench) -> anyhow::Result<()> {
    let probe = find_probe()?;
    let no_kvm = match super::kvm_here("isolation") {
        Ok(true) => None,
        Ok(false) => return run_in_machine(bench, &probe),
        Err(why) => Some(format!("{why:#}")),
    };
    if std::env::var_os("PEAPOD_IN_MACHINE").is_none() {
        eprintln!("{PRIVILEGED_PLAN}");
    }
    let work = tempfile::Builder::new()
        .prefix("peapod-isolation-")
        .tempdir()
        .context("a work directory")?;
    let bench_dir = work.path().join("bench");
    fs::create_dir(&bench_dir)?;
    fs::copy(&probe, bench_dir.join(PROBE_BINARY_NAME))
        .with_context(|| format!("copying {}", probe.display()))?;
    // the markers live apart from the work dir, which is removed recursively
    let markers = tempfile::Builder::new()
        .prefix("peapod-probe-marker-")
        .tempdir()
        .context("a marker directory")?
        .keep();

    let mut columns = Vec::new();
    for model in Model::ALL {
        let runner = model.runner();
        for privilege in [Privilege::Default, Privilege::Privileged] {
            if !runner.supports(privilege)
                || (privilege == Privilege::Privileged && bench.no_privileged)
            {
                continue;
            }
            let marker = markers.join(format!("{model:?}-{privilege:?}").to_lowercase());
            fs::create_dir(&marker)?;
            let result = match (&no_kvm, model) {
                (Some(why), Model::Vm) => Err(anyhow::anyhow!("{why}")),
                _ => runner
                    .run(&ProbeRun {
                        bench_dir: &bench_dir,
                        marker: &marker,
                        privilege,
                        work: work.path(),
                        bench,
                    })
                    .and_then(|out| Ok(parse_probe_output(&out)?)),
            };
            remove_marker(&marker)?;
            let result = match result {
                Ok(lines) => ColumnResult::Probes(lines),
                Err(e) => {
                    eprintln!(
                        "bench isolation: {} ({privilege:?}) did not run: {e:#}",
                        model.label()
                    );
                    ColumnResult::NotRun(format!("{e:#}"))
                }
            };
            columns.push(Column {
                model,
                privilege,
                runner: runner.name().to_string(),
                result,
            });
        }
    }
    fs::remove_dir(&markers).with_context(|| format!("removing {}", markers.display()))?;
    match bench.output {
        OutputFormat::Json => println!("{}", render_json(&columns)?),
        OutputFormat::Markdown => {
            println!(
                "peapod bench isolation: `{PROBE_BINARY_NAME}` per isolation model; outcome: \
                 evidence"
            );
            for line in render_markdown(&columns) {
                println!("{line}");
            }
        }
    }
    anyhow::ensure!(
        columns
            .iter()
            .any(|c| matches!(c.result, ColumnResult::Probes(_))),
        "the probe ran in no column (the matrix says why)"
    );
    Ok(())
}

/// The static `peapod-probe`: `$PEAPOD_PROBE`, else the one scripts/setup puts into
/// peapod's cache (`$CACHE/probe/peapod-probe`).
pub fn find_probe() -> anyhow::Result<PathBuf> {
    super::find_static_program(
        PROBE_ENV,
        &crate::dirs::cache_dir()
            .join("probe")
            .join(PROBE_BINARY_NAME),
        PROBE_BINARY_NAME,
    )
}

/// Re-runs this benchmark inside `peapod machine run`, with the static probe (and
/// the kernel and agent initramfs, where named) copied in.
fn run_in_machine(bench: &IsolationBench, probe: &Path) -> anyhow::Result<()> {
    // crun: every L1 carries it where this host has it.
    let mut copies: Vec<(&Path, &str)> = vec![(probe, MACHINE_PROBE)];
    let mut env = vec![format!("{PROBE_ENV}={MACHINE_PROBE}")];
    let output = match bench.output {
        OutputFormat::Markdown => "markdown",
        OutputFormat::Json => "json",
    };
    let mut args: Vec<String> = ["bench", "isolation", "--output", output]
        .map(String::from)
        .into();
    if bench.no_privileged {
        args.push("--no-privileged".into());
    }
    super::carry_guest_artifacts(
        bench.kernel.as_deref(),
        bench.agent_initrd.as_deref(),
        &mut copies,
        &mut env,
        &mut args,
    );
    super::run_inside_machine(&copies, &env, &args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(probe: ProbeName, outcome: Outcome, evidence: &str) -> ProbeLine {
        ProbeLine {
            probe,
            outcome,
            evidence: evidence.into(),
        }
    }

    #[test]
    fn probe_lines_parse() {
        let out = "{\"probe\":\"kernel\",\"outcome\":\"visible\",\"evidence\":\"6.1.0\"}\n\n\
                   {\"probe\":\"module_load\",\"outcome\":\"n/a\",\"evidence\":\"ENOSYS\"}\n";
        assert_eq!(
            parse_probe_output(out).unwrap(),
            [
                line(ProbeName::Kernel, Outcome::Visible, "6.1.0"),
                line(ProbeName::ModuleLoad, Outcome::NotApplicable, "ENOSYS"),
            ]
        );
    }

    #[test]
    fn bad_probe_lines_are_named() {
        let good = "{\"probe\":\"kernel\",\"outcome\":\"visible\",\"evidence\":\"x\"}";
        let bad = |text: &str| {
            parse_probe_output(&format!("{good}\n{text}\n"))
                .unwrap_err()
                .to_string()
        };
        let e = bad("{\"probe\":\"kernel2\",\"outcome\":\"visible\",\"evidence\":\"x\"}");
        assert!(e.contains("line 2") && e.contains("kernel2"), "{e}");
        let e = bad("{\"probe\":\"pids\",\"outcome\":\"maybe\",\"evidence\":\"x\"}");
        assert!(e.contains("line 2") && e.contains("maybe"), "{e}");
        let e = bad("{\"probe\":\"pids\",\"outcome\":\"hidden\",\"evidence\":\"x\",\"extra\":1}");
        assert!(e.contains("extra"), "{e}");
        assert!(bad("{\"probe\":\"pids\",\"outcome\":\"hidden\"}").contains("evidence"));
        assert!(bad("peapod-probe: oops").contains("line 2"));
        let e = bad(good);
        assert!(e.contains("repeats the probe kernel"), "{e}");
        assert!(matches!(
            parse_probe_output("\n"),
            Err(IsolationError::Empty)
        ));
    }

    fn column(model: Model, privilege: Privilege, runner: &str, lines: &[ProbeLine]) -> Column {
        Column {
            model,
            privilege,
            runner: runner.into(),
            result: ColumnResult::Probes(lines.to_vec()),
        }
    }

    #[test]
    fn the_matrix_renders() {
        use Outcome::*;
        use ProbeName::*;
        let host = column(
            Model::Host,
            Privilege::Default,
            "probe on the host",
            &[
                line(Kernel, Visible, "6.1.0-18-amd64; Linux version 6.1.0"),
                line(Seccomp, Allowed, "Seccomp: 0 (no filter)"),
                line(Sysrq, Allowed, "opened for write (nothing written)"),
            ],
        );
        let crun = column(
            Model::Container,
            Privilege::Default,
            "crun",
            &[
                line(Kernel, Visible, "6.1.0-18-amd64; Linux version 6.1.0"),
                line(Seccomp, Confined, "Seccomp: 2 (filter), 1 filters"),
                line(Sysrq, Refused, "open for write: EROFS"),
            ],
        );
        let vm = column(
            Model::Vm,
            Privilege::Default,
            "peapod run",
            &[
                line(Kernel, Visible, "6.12.1-peapod; Linux version 6.12.1 | x"),
                line(Seccomp, Allowed, "Seccomp: 0 (no filter)"),
            ],
        );
        let privileged = Column {
            model: Model::Container,
            privilege: Privilege::Privileged,
            runner: "crun".into(),
            result: ColumnResult::NotRun("no crun here (apt-get install crun)\ndetail".into()),
        };
        let rows = render_markdown(&[host, crun, privileged, vm]);
        let want_head = [
            "| probe | host (reference) | container (crun) | container (crun, privileged) | \
             VM pod (peapod run) |",
            "|---|---|---|---|---|",
            "| kernel seen (uname -r) | visible: 6.1.0-18-amd64; Linux version 6.1.0 | \
             visible: 6.1.0-18-amd64; Linux version 6.1.0 | not run: no crun here (apt-get \
             install crun) | **visible**: 6.12.1-peapod; Linux version 6.12.1 / x |",
        ];
        assert_eq!(rows[..3], want_head);
        let row = |q: &str| {
            rows.iter()
                .find(|r| r.starts_with(&format!("| {q} |")))
                .unwrap()
        };
        assert_eq!(
            row("seccomp filter"),
            "| seccomp filter | allowed: Seccomp: 0 (no filter) | **confined**: Seccomp: 2 \
             (filter), 1 filters | not run: no crun here (apt-get install crun) | allowed: \
             Seccomp: 0 (no filter) |"
        );
        assert_eq!(
            row("/proc/sysrq-trigger writable"),
            "| /proc/sysrq-trigger writable | allowed: opened for write (nothing written) | \
             **refused**: open for write: EROFS | not run: no crun here (apt-get install crun) \
             | missing |"
        );
        assert_eq!(rows.len(), 2 + ProbeName::ALL.len() + 2 + 4);
        assert_eq!(
            rows[rows.len() - 4..],
            [
                "- host (reference): 6.1.0-18-amd64",
                "- container (crun): 6.1.0-18-amd64: the host's kernel",
                "- container (crun, privileged): unknown (not run)",
                "- VM pod (peapod run): 6.12.1-peapod: its own kernel, not the host's",
            ]
        );
    }

    #[test]
    fn the_matrix_as_json() {
        let columns = [
            column(
                Model::Vm,
                Privilege::Default,
                "peapod run",
                &[line(ProbeName::Kcore, Outcome::Hidden, "ENOENT")],
            ),
            Column {
                model: Model::Container,
                privilege: Privilege::Privileged,
                runner: "crun".into(),
                result: ColumnResult::NotRun("no crun".into()),
            },
        ];
        let json: serde_json::Value =
            serde_json::from_str(&render_json(&columns).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"columns": [
                {"model": "vm", "privilege": "default", "runner": "peapod run",
                 "probes": [{"probe": "kcore", "outcome": "hidden", "evidence": "ENOENT"}]},
                {"model": "container", "privilege": "privileged", "runner": "crun",
                 "not_run": "no crun"},
            ]})
        );
    }

    #[test]
    fn crun_specs_for_the_probe() {
        let default = serde_json::json!({
            "process": {"terminal": true, "args": ["sh"], "capabilities": {"bounding": []}},
            "root": {"path": "rootfs", "readonly": true},
            "mounts": [
                {"destination": "/sys", "type": "sysfs", "options": ["nosuid", "ro"]},
                {"destination": "/proc", "type": "proc"},
            ],
            "linux": {"maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"],
                      "resources": {"devices": [{"allow": false, "access": "rwm"}]}},
        });
        let mut spec = probe_spec(
            default,
            Path::new("/w/rootfs"),
            Path::new("/w/bench"),
            Path::new("/m/x"),
        )
        .unwrap();
        assert_eq!(
            spec["process"]["args"],
            serde_json::json!(["/bench/peapod-probe", "--marker", "/marker"])
        );
        assert_eq!(spec["process"]["terminal"], false);
        assert_eq!(spec["root"]["path"], "/w/rootfs");
        let mounts = spec["mounts"].as_array().unwrap();
        assert_eq!(mounts[2]["source"], "/w/bench");
        assert!(
            mounts[2]["options"]
                .as_array()
                .unwrap()
                .contains(&"ro".into())
        );
        assert_eq!(mounts[3]["destination"], "/marker");
        assert_eq!(spec["linux"]["maskedPaths"][0], "/proc/kcore");

        let vda = HostDevice {
            path: "/dev/vda".into(),
            kind: 'b',
            major: 254,
            minor: 0,
        };
        privileged_spec(&mut spec, &[vda], 40).unwrap();
        let caps = spec["process"]["capabilities"]["effective"]
            .as_array()
            .unwrap();
        assert_eq!(caps.len(), 41);
        assert_eq!(caps[21], "CAP_SYS_ADMIN");
        assert_eq!(caps[40], "CAP_CHECKPOINT_RESTORE");
        assert!(spec["linux"].get("maskedPaths").is_none());
        assert!(spec["linux"].get("readonlyPaths").is_none());
        assert_eq!(
            spec["mounts"][0]["options"],
            serde_json::json!(["nosuid", "rw"])
        );
        assert_eq!(spec["linux"]["devices"][0]["major"], 254);
        assert_eq!(spec["linux"]["devices"][0]["type"], "b");
        assert_eq!(
            spec["linux"]["resources"]["devices"],
            serde_json::json!([{"allow": true, "access": "rwm"}])
        );
        assert!(privileged_spec(&mut serde_json::json!({}), &[], 40).is_err());
    }

    #[test]
    fn a_marker_with_a_mount_under_it_is_kept() {
        let parent = tempfile::tempdir().unwrap().keep();
        let marker = parent.join("m");
        fs::create_dir(&marker).unwrap();
        fs::create_dir(marker.join("left-dir")).unwrap();
        fs::write(marker.join("left-file"), b"x").unwrap();
        remove_marker(&marker).unwrap();
        assert!(!marker.exists());
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped the mounted half: mounting a tmpfs needs root");
            fs::remove_dir(&parent).unwrap();
            return;
        }
        fs::create_dir_all(marker.join("mnt")).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &marker.join("mnt"),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let e = remove_marker(&marker).unwrap_err().to_string();
        nix::mount::umount2(&marker.join("mnt"), nix::mount::MntFlags::MNT_DETACH).unwrap();
        assert!(e.contains("still mounted"), "{e}");
        assert!(marker.join("mnt").is_dir(), "kept");
        remove_marker(&marker).unwrap();
        fs::remove_dir(&parent).unwrap();
    }
}
