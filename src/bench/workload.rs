//! `peapod-probe bench ...`: the small workloads `peapod bench models` runs inside a container
//! of each isolation model, so that the same static program measures the same thing in a pod
//! VM, a host container and crun. Std and nix only (the probe is built static).
//!
//! ```text
//! peapod-probe bench syscalls [--iterations N]
//! peapod-probe bench fileio --dir DIR [--mib M]
//! ```
//!
//! Each prints one JSON line: [`SyscallCost`] or [`FileIo`], which the host reads back with
//! [`parse_line`].
//!
//! - **syscalls**: `N` calls of `getpid` (always a real system call: glibc stopped caching
//!   the pid in 2.25) and `N` of `clock_gettime(CLOCK_MONOTONIC)` (the vDSO where the kernel
//!   offers one, so mostly a clock read, not a kernel entry), in ns per call.
//! - **fileio**: a file of `M` MiB under `DIR` written and read in 4 KiB blocks, first in
//!   order, then at pseudo-random block offsets (as many blocks as the file has), in MB/s
//!   (10^6 bytes per second). Writes are timed through their `fdatasync`; before each read
//!   pass the file's cached pages are dropped (`fdatasync`, then `POSIX_FADV_DONTNEED`), so
//!   reads come from the device where the file system has one (tmpfs keeps its pages: there
//!   a read is a memory copy). The file is removed at the end, on error too.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// The block of every file I/O, in bytes.
pub const BLOCK: usize = 4096;
pub const DEFAULT_ITERATIONS: u64 = 1_000_000;
pub const DEFAULT_FILE_MIB: u64 = 32;
/// The largest file a run may ask for (the pods' roots are small).
const MAX_FILE_MIB: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error(
        "{0}\nusage: peapod-probe bench syscalls [--iterations N] | peapod-probe bench fileio \
         --dir DIR [--mib M]"
    )]
    Usage(String),
    #[error("{what} {path}: {source} (give --dir a writable directory with room for the file)")]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the result to stdout: {0}")]
    Output(io::Error),
    #[error(
        "the workload printed no result line ({0}): is the probe the same build as this peapod? \
         rebuild it with scripts/build-guest-bins peapod-probe"
    )]
    Parse(String),
}

/// What `bench syscalls` measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyscallCost {
    pub iterations: u64,
    pub getpid_ns: f64,
    pub clock_gettime_ns: f64,
}

/// What `bench fileio` measured, in MB/s.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIo {
    pub mib: u64,
    pub seq_write_mb_s: f64,
    pub seq_read_mb_s: f64,
    pub rand_write_mb_s: f64,
    pub rand_read_mb_s: f64,
}

/// A parsed `peapod-probe bench ...` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    Syscalls { iterations: u64 },
    FileIo { dir: PathBuf, mib: u64 },
}

impl Workload {
    /// The arguments after `bench`.
    pub fn parse(args: &[String]) -> Result<Self, WorkloadError> {
        let usage = |m: String| WorkloadError::Usage(m);
        let (kind, rest) = args
            .split_first()
            .ok_or_else(|| usage("bench needs a workload: syscalls or fileio".into()))?;
        let mut iterations = DEFAULT_ITERATIONS;
        let mut mib = DEFAULT_FILE_MIB;
        let mut dir = None;
        let mut rest = rest.iter();
        while let Some(arg) = rest.next() {
            let mut value = |name: &str| {
                rest.next()
                    .ok_or_else(|| usage(format!("{name} needs a value")))
            };
            let number = |name: &str, text: &str, max: u64| match text.parse::<u64>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(usage(format!(
                    "{name} {text}: give a number from 1 to {max}"
                ))),
            };
            match (kind.as_str(), arg.as_str()) {
                ("syscalls", "--iterations") => {
                    iterations = number("--iterations", value("--iterations")?, u64::MAX)?
                }
                ("fileio", "--mib") => mib = number("--mib", value("--mib")?, MAX_FILE_MIB)?,
                ("fileio", "--dir") => dir = Some(PathBuf::from(value("--dir")?)),
                (_, other) => return Err(usage(format!("unknown argument {other:?}"))),
            }
        }
        match kind.as_str() {
            "syscalls" => Ok(Workload::Syscalls { iterations }),
            "fileio" => Ok(Workload::FileIo {
                dir: dir.ok_or_else(|| usage("fileio needs --dir DIR".into()))?,
                mib,
            }),
            other => Err(usage(format!(
                "unknown workload {other:?}: syscalls or fileio"
            ))),
        }
    }

    /// Runs the workload and prints its result line.
    pub fn run(&self) -> Result<(), WorkloadError> {
        let line = match self {
            Workload::Syscalls { iterations } => serde_json::to_string(&syscalls(*iterations)),
            Workload::FileIo { dir, mib } => serde_json::to_string(&fileio(dir, *mib)?),
        }
        .map_err(|e| WorkloadError::Output(e.into()))?;
        let mut out = io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(WorkloadError::Output)
    }
}

/// Reads a workload's result from its stdout: the last non-empty line.
pub fn parse_line<T: serde::de::DeserializeOwned>(stdout: &str) -> Result<T, WorkloadError> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| WorkloadError::Parse("empty output".into()))?;
    serde_json::from_str(line).map_err(|e| WorkloadError::Parse(format!("{e}: {line:?}")))
}

/// ns per `getpid` and per `clock_gettime`, `iterations` of each.
pub fn syscalls(iterations: u64) -> SyscallCost {
    let iterations = iterations.max(1);
    let per_call = |started: Instant| started.elapsed().as_nanos() as f64 / iterations as f64;
    let started = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(nix::unistd::getpid());
    }
    let getpid_ns = per_call(started);
    let started = Instant::now();
    for _ in 0..iterations {
        let _ = std::hint::black_box(nix::time::clock_gettime(
            nix::time::ClockId::CLOCK_MONOTONIC,
        ));
    }
    SyscallCost {
        iterations,
        getpid_ns,
        clock_gettime_ns: per_call(started),
    }
}

/// The four passes over a file of `mib` MiB under `dir` (removed afterwards).
pub fn fileio(dir: &Path, mib: u64) -> Result<FileIo, WorkloadError> {
    let path = dir.join(format!("peapod-fileio-{}", std::process::id()));
    let result = fileio_at(&path, mib);
    let _ = std::fs::remove_file(&path);
    result
}

fn fileio_at(path: &Path, mib: u64) -> Result<FileIo, WorkloadError> {
    let err = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| WorkloadError::File { what, path, source }
    };
    let blocks = mib * 1024 * 1024 / BLOCK as u64;
    let bytes = (blocks * BLOCK as u64) as f64;
    let rate = |started: Instant| bytes / 1e6 / started.elapsed().as_secs_f64().max(1e-9);
    let mut block = vec![0u8; BLOCK];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }

    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(err("creating"))?;
    let started = Instant::now();
    for _ in 0..blocks {
        file.write_all(&block).map_err(err("writing"))?;
    }
    file.sync_data().map_err(err("syncing"))?;
    let seq_write_mb_s = rate(started);

    drop_cache(&file).map_err(err("dropping the cache of"))?;
    let mut reader = File::open(path).map_err(err("opening"))?;
    let started = Instant::now();
    let mut read = 0u64;
    loop {
        match reader.read(&mut block).map_err(err("reading"))? {
            0 => break,
            n => read += n as u64,
        }
    }
    let seq_read_mb_s = rate(started);
    if read != blocks * BLOCK as u64 {
        return Err(err("reading")(io::Error::other(format!(
            "read {read} bytes back of {}",
            blocks * BLOCK as u64
        ))));
    }

    let mut offsets = Offsets::new(blocks);
    let started = Instant::now();
    for _ in 0..blocks {
        file.write_all_at(&block, offsets.next_offset())
            .map_err(err("writing"))?;
    }
    file.sync_data().map_err(err("syncing"))?;
    let rand_write_mb_s = rate(started);

    drop_cache(&file).map_err(err("dropping the cache of"))?;
    let started = Instant::now();
    for _ in 0..blocks {
        file.read_exact_at(&mut block, offsets.next_offset())
            .map_err(err("reading"))?;
    }
    let rand_read_mb_s = rate(started);
    Ok(FileIo {
        mib,
        seq_write_mb_s,
        seq_read_mb_s,
        rand_write_mb_s,
        rand_read_mb_s,
    })
}

/// Writes back and drops the file's pages from the page cache.
fn drop_cache(file: &File) -> io::Result<()> {
    file.sync_data()?;
    nix::fcntl::posix_fadvise(
        file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .map_err(io::Error::from)
}

/// Block-aligned offsets in `0..blocks` blocks from a fixed xorshift sequence: the same
/// pattern in every model, no two runs of a pass in step with the file's layout.
struct Offsets {
    state: u64,
    blocks: u64,
}

impl Offsets {
    fn new(blocks: u64) -> Self {
        Offsets {
            state: 0x9E37_79B9_7F4A_7C15,
            blocks: blocks.max(1),
        }
    }

    fn next_offset(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        (x % self.blocks) * BLOCK as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn command_lines_parse() {
        assert_eq!(
            Workload::parse(&args("syscalls")).unwrap(),
            Workload::Syscalls {
                iterations: DEFAULT_ITERATIONS
            }
        );
        assert_eq!(
            Workload::parse(&args("syscalls --iterations 10")).unwrap(),
            Workload::Syscalls { iterations: 10 }
        );
        assert_eq!(
            Workload::parse(&args("fileio --dir /tmp --mib 8")).unwrap(),
            Workload::FileIo {
                dir: "/tmp".into(),
                mib: 8
            }
        );
        for bad in [
            "",
            "fork",
            "syscalls --iterations 0",
            "syscalls --iterations x",
            "syscalls --iterations",
            "syscalls --dir /tmp",
            "fileio",
            "fileio --dir /tmp --mib 5000",
        ] {
            let e = Workload::parse(&args(bad)).unwrap_err();
            assert!(matches!(e, WorkloadError::Usage(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn results_read_back_from_the_last_line() {
        let cost: SyscallCost = parse_line(
            "noise\n{\"iterations\":5,\"getpid_ns\":51.5,\"clock_gettime_ns\":20.0}\n\n",
        )
        .unwrap();
        assert_eq!(cost.getpid_ns, 51.5);
        assert!(parse_line::<SyscallCost>("").is_err());
        assert!(parse_line::<SyscallCost>("{\"iterations\":5}").is_err());
        let extra = "{\"iterations\":5,\"getpid_ns\":1,\"clock_gettime_ns\":2,\"x\":1}";
        assert!(parse_line::<SyscallCost>(extra).is_err());
    }

    #[test]
    fn syscalls_take_time() {
        let cost = syscalls(1000);
        assert_eq!(cost.iterations, 1000);
        assert!(cost.getpid_ns > 0.0 && cost.getpid_ns < 1e6, "{cost:?}");
        assert!(cost.clock_gettime_ns > 0.0, "{cost:?}");
    }

    #[test]
    fn fileio_measures_and_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let io = fileio(dir.path(), 1).unwrap();
        assert_eq!(io.mib, 1);
        for rate in [
            io.seq_write_mb_s,
            io.seq_read_mb_s,
            io.rand_write_mb_s,
            io.rand_read_mb_s,
        ] {
            assert!(rate.is_finite() && rate > 0.0, "{io:?}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let e = fileio(&dir.path().join("missing"), 1).unwrap_err();
        assert!(e.to_string().contains("creating"), "{e}");
    }

    #[test]
    fn offsets_stay_in_the_file_and_on_blocks() {
        let mut o = Offsets::new(10);
        let seen: Vec<u64> = (0..1000).map(|_| o.next_offset()).collect();
        assert!(
            seen.iter()
                .all(|&x| x % BLOCK as u64 == 0 && x < 10 * BLOCK as u64)
        );
        let distinct: std::collections::BTreeSet<_> = seen.iter().collect();
        assert!(distinct.len() > 5, "{distinct:?}");
        assert_eq!(Offsets::new(0).next_offset(), 0);
    }
}
