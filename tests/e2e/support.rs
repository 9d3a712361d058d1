//! Shared pieces of the e2e tests: test cases, the peapod binary, running commands.

use std::path::PathBuf;
use std::process::{Command, Output};

use libtest_mimic::{Failed, Trial};

/// Where a test can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// On the host: it drives `peapod machine run`.
    Host,
    /// Wherever hardware-assisted KVM is: the host, or inside the L1.
    Kvm,
}

pub struct Case {
    pub name: &'static str,
    pub place: Place,
    pub run: fn() -> Result<(), Failed>,
    /// A reason this case cannot run on this host, checked when the trials are made.
    pub skip_if: Option<fn() -> Option<String>>,
}

impl Case {
    /// The test's full name: `host::NAME` or `kvm::NAME`.
    pub fn trial_name(&self) -> String {
        let prefix = match self.place {
            Place::Host => "host",
            Place::Kvm => "kvm",
        };
        format!("{prefix}::{}", self.name)
    }

    pub fn trial(&self, skip: Option<&str>) -> Trial {
        let name = self.trial_name();
        let run = self.run;
        if skip.is_some() {
            // the caller printed the reason once for all
            return Trial::test(name, run).with_ignored_flag(true);
        }
        match self.skip_if.and_then(|check| check()) {
            Some(reason) => {
                println!("e2e: {name}: skipped: {reason}");
                Trial::test(name, run).with_ignored_flag(true)
            }
            None => Trial::test(name, run),
        }
    }
}

/// The peapod binary: `/usr/bin/peapod` inside the L1 (init sets PEAPOD_BIN), else the one
/// cargo built with these tests.
pub fn peapod() -> PathBuf {
    std::env::var_os("PEAPOD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_peapod")))
}

/// Runs peapod with `args`, capturing its output. A `peapod machine run` whose L1 itself
/// failed (it stalled, or died before the command's status came back: the TCG L1's known
/// instability, not the test's subject) runs again in a fresh L1, up to twice, and the log
/// says so.
pub fn run_peapod(args: &[&str]) -> Result<Output, Failed> {
    let once = || -> Result<Output, Failed> {
        Command::new(peapod())
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", peapod().display()).into())
    };
    let mut out = once()?;
    if args.starts_with(&["machine", "run"]) {
        for _ in 0..2 {
            if !test_bed_failed(&out) {
                break;
            }
            println!(
                "e2e: FLAKY test bed: `peapod {}` lost its L1 ({}); running it in a fresh one",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .next()
                    .unwrap_or_default()
            );
            out = once()?;
        }
    }
    Ok(out)
}

/// Whether a `peapod machine run` failed because its L1 did (exit 125 with the test bed's
/// own error), not because of the command it ran.
pub fn test_bed_failed(out: &Output) -> bool {
    let stderr = String::from_utf8_lossy(&out.stderr);
    out.status.code() == Some(i32::from(peapod::cli::EXIT_PEAPOD_ERROR))
        && (stderr.contains("the L1 stalled")
            || stderr.contains("the L1 ended without the command's exit status"))
}

/// Runs peapod with `args` and extra environment variables, capturing its output.
pub fn run_peapod_env(args: &[&str], env: &[(&str, &str)]) -> Result<Output, Failed> {
    Command::new(peapod())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", peapod().display()).into())
}

/// Fails with the command's output when `cond` is false.
pub fn check(cond: bool, what: &str, output: &Output) -> Result<(), Failed> {
    if cond {
        return Ok(());
    }
    Err(format!(
        "{what}\n  status: {}\n  stdout: {}\n  stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
    .into())
}

/// The guest artifacts the KVM tests boot, as (environment variable, host path), where
/// they are built. Tests that need one and do not find its variable skip, naming the reason.
pub fn guest_artifacts() -> Vec<(&'static str, Result<PathBuf, String>)> {
    let kernel = std::env::var_os(GUEST_KERNEL_ENV)
        .map(PathBuf::from)
        .map(Ok)
        .unwrap_or_else(|| peapod::guest_kernel::default_kernel().map_err(|e| e.to_string()));
    let initramfs = std::env::var_os(TEST_INITRAMFS_ENV)
        .map(PathBuf::from)
        .map(Ok)
        .unwrap_or_else(|| script_output("rootfs/build-test-initramfs.sh"));
    let agent = std::env::var_os(AGENT_INITRAMFS_ENV)
        .map(PathBuf::from)
        .map(Ok)
        .unwrap_or_else(|| script_output("rootfs/build-agent-initramfs.sh"));
    let test_image = std::env::var_os(TEST_IMAGE_ENV)
        .map(PathBuf::from)
        .map(Ok)
        .unwrap_or_else(|| script_output("rootfs/build-test-image.sh"));
    // A bzImage to boot: Debian's cloud kernel, the one the test bed's L1 runs.
    let bzimage = std::env::var_os(TEST_BZIMAGE_ENV)
        .map(PathBuf::from)
        .map(Ok)
        .unwrap_or_else(|| {
            peapod::machine::assets::L1Assets::find()
                .map(|l1| l1.kernel)
                .map_err(|e| e.to_string())
        });
    // The static probe of `peapod bench isolation` (scripts/setup builds it).
    let probe = std::env::var_os(peapod::bench::isolation::PROBE_ENV)
        .map(PathBuf::from)
        .map(Ok)
        .unwrap_or_else(|| peapod::bench::isolation::find_probe().map_err(|e| format!("{e:#}")));
    vec![
        (peapod::bench::isolation::PROBE_ENV, probe),
        (GUEST_KERNEL_ENV, kernel),
        (TEST_INITRAMFS_ENV, initramfs),
        (AGENT_INITRAMFS_ENV, agent),
        (TEST_IMAGE_ENV, test_image),
        (TEST_BZIMAGE_ENV, bzimage),
    ]
}

/// A bzImage kernel (Debian's cloud kernel).
pub const TEST_BZIMAGE_ENV: &str = "PEAPOD_TEST_BZIMAGE";

/// The guest kernel the KVM tests boot.
pub const GUEST_KERNEL_ENV: &str = "PEAPOD_GUEST_KERNEL";
/// The busybox test initramfs (rootfs/build-test-initramfs.sh).
pub const TEST_INITRAMFS_ENV: &str = "PEAPOD_TEST_INITRAMFS";
/// The pod VM's agent initramfs (rootfs/build-agent-initramfs.sh).
pub const AGENT_INITRAMFS_ENV: &str = "PEAPOD_AGENT_INITRAMFS";
/// A busybox container image, erofs (rootfs/build-test-image.sh).
pub const TEST_IMAGE_ENV: &str = "PEAPOD_TEST_IMAGE";

/// Runs one of the repository's build scripts; its last stdout line is the path it built.
fn script_output(script: &str) -> Result<PathBuf, String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let out = Command::new(&path)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().last() {
        Some(line) if out.status.success() => Ok(PathBuf::from(line.trim())),
        _ => Err(format!(
            "{script} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// The path of a guest artifact for a test, or the reason the test cannot run.
#[allow(dead_code)] // the Linux boot tests use it
pub fn artifact(env: &str) -> Result<PathBuf, String> {
    std::env::var_os(env).map(PathBuf::from).ok_or_else(|| {
        format!("{env} is not set: the guest kernel (kernel/build.sh) or test initramfs (rootfs/build-test-initramfs.sh) is not built")
    })
}

/// How many L1s the KVM tests may use: a fresh one after the test bed itself failed, or after
/// a test failed for the first time. Each fresh L1 runs only the tests that have not passed,
/// so the later ones are short; with every pod on a network the emulated L1's KVM panics more
/// often (three L1s of one suite run on 2026-12-02), hence eight.
const TEST_BED_ATTEMPTS: u32 = 8;

/// In how many L1s (each ending well) a test must fail to fail the suite. Three, not two:
/// pod VMs in the emulated L1 triple-fault at boot now and then (README, Tests), and a test
/// that boots many of them (`kube_restart_policies` boots five pods) met that twice in one run on
/// 2026-12-02 while passing in every other run. A bug of ours fails in every L1.
const TEST_FAILURES_TO_FAIL: usize = 3;

/// How long one L1 may run the KVM tests. They take 6 minutes in the emulated L1 on a quiet
/// 2-core host and about 15 beside other work (362 s and 852 s on 2026-12-02), so 900 s
/// cut a healthy L1 short once; an L1 that hangs (both vCPUs busy, nothing on its console)
/// is caught sooner by `machine run`'s stall detector, and a fresh one then does better than
/// waiting.
const TEST_BED_TIMEOUT_S: u32 = 1800;

/// Runs this test binary's KVM tests (`kvm_tests`, their full names) inside one L1, with the
/// guest artifacts copied in; returns the exit status.
///
/// The L1 is an emulated host (QEMU TCG with emulated AMD-V), and it is not fully reliable:
/// its kernel panics inside KVM now and then ("stack guard page was hit" in its page fault
/// handler with the L2's GS base loaded: the emulated #VMEXIT path), and once an L2 was seen to
/// triple-fault at its first instructions, and an L1 to hang. So:
/// - when the L1 dies or hangs (exit status 125, `peapod machine run`'s own failure, a stalled
///   L1 included, or 124, its timeout; with the L1's console tail printed), the tests that had
///   not passed run in a fresh L1;
/// - a test that fails runs again in a fresh L1; the suite passes only if it passes there,
///   and then it is named as flaky. A test failing in [`TEST_FAILURES_TO_FAIL`] L1s fails the
///   suite. A failure in an L1 that
///   then died does not count (it runs again): the L1's guests fail as it degrades.
pub fn run_self_in_machine(kvm_tests: &[String]) -> i32 {
    let forwarded: Vec<String> = std::env::args().skip(1).collect();
    let mut passed: Vec<String> = Vec::new();
    let mut failed_before: Vec<String> = Vec::new();
    let mut status = None;
    for attempt in 1..=TEST_BED_ATTEMPTS {
        let skips = skippable(kvm_tests, &passed);
        let mut command = machine_command(&forwarded, &skips);
        println!("e2e: {command:?}");
        let mut failed = Vec::new();
        let mut stalled = false;
        status = match run_echoing_results(&mut command, &mut passed, &mut failed, &mut stalled) {
            Ok(status) => status,
            Err(e) => {
                eprintln!("e2e: cannot start the test bed: {e}");
                return 1;
            }
        };
        if status == Some(0) {
            for flaky in failed_before.iter().filter(|t| passed.contains(t)) {
                println!(
                    "e2e: FLAKY: {flaky} failed in one L1 and passed in a fresh one (its failure \
                     is printed above)"
                );
            }
            return 0;
        }
        let bed_failed = status == Some(i32::from(peapod::cli::EXIT_PEAPOD_ERROR))
            || status == Some(i32::from(peapod::cli::EXIT_MACHINE_TIMEOUT));
        // A test that failed in an L1 which then died or stalled failed with its L1 (the
        // emulated L1 degrades before it dies: its guests fail first): it runs again in the
        // next L1 without counting as a failure of its own. Only failures in an L1 that
        // ended well count, and two of those fail the suite.
        let failed = if bed_failed {
            if !failed.is_empty() {
                println!(
                    "e2e: {failed:?} failed in L1 {attempt}, which then died: not counted, they \
                     run again in a fresh L1"
                );
            }
            Vec::new()
        } else {
            failed
        };
        let too_often: Vec<&String> = failed
            .iter()
            .filter(|t| {
                failed_before.iter().filter(|b| b == t).count() + 1 >= TEST_FAILURES_TO_FAIL
            })
            .collect();
        if !too_often.is_empty() {
            println!("e2e: failed in {TEST_FAILURES_TO_FAIL} L1s: {too_often:?}");
            break;
        }
        if !bed_failed && failed.is_empty() {
            break; // the test binary failed without a failed test to retry
        }
        if attempt < TEST_BED_ATTEMPTS {
            if bed_failed {
                println!(
                    "e2e: the test bed itself failed (L1 {attempt} of {TEST_BED_ATTEMPTS}, exit \
                     status {}{}: see the L1 console tail above); the tests that have not passed \
                     ({} have) run in a fresh L1",
                    status.unwrap_or(-1),
                    if stalled {
                        ", the L1 stalled: its link went silent"
                    } else {
                        ""
                    },
                    passed.len()
                );
            }
            if !failed.is_empty() {
                println!(
                    "e2e: {failed:?} failed in L1 {attempt} of {TEST_BED_ATTEMPTS}; they run again \
                     in a fresh L1, and a test failing in {TEST_FAILURES_TO_FAIL} L1s fails the \
                     suite"
                );
            }
        }
        failed_before.extend(failed);
    }
    status.unwrap_or(1)
}

/// The passed tests that a libtest `--skip` (a substring match) can leave out without also
/// leaving out a test that has not passed.
fn skippable(all: &[String], passed: &[String]) -> Vec<String> {
    passed
        .iter()
        .filter(|done| {
            all.iter()
                .all(|other| other == *done || passed.contains(other) || !other.contains(*done))
        })
        .cloned()
        .collect()
}

/// `peapod machine run` with this binary's KVM tests. It gets SIGTERM when this thread (the
/// test binary's main thread) ends, so that a killed test run stops its L1 and cleans up too.
fn machine_command(forwarded: &[String], skips: &[String]) -> Command {
    use std::os::unix::process::CommandExt;
    let me = std::env::current_exe().expect("the test binary knows its path");
    let mut command = Command::new(peapod());
    // SAFETY: the closure runs between fork and exec and makes only an async-signal-safe
    // call (prctl); it allocates nothing.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
            Ok(())
        });
    }
    command
        .args([
            "machine",
            "run",
            "--timeout",
            &TEST_BED_TIMEOUT_S.to_string(),
        ])
        .arg("--copy")
        .arg(format!("{}:/opt/peapod-tests/e2e", me.display()))
        .args(["--env", "PEAPOD_E2E=1"]);
    for (env, found) in guest_artifacts() {
        match found {
            Ok(path) => {
                let inside = format!("/opt/peapod-tests/{env}");
                command
                    .arg("--copy")
                    .arg(format!("{}:{inside}", path.display()))
                    .args(["--env", &format!("{env}={inside}")]);
            }
            Err(why) => println!("e2e: {env} not available inside the test bed: {why}"),
        }
    }
    if let Ok(filter) = std::env::var("RUST_LOG") {
        command.args(["--env", &format!("RUST_LOG={filter}")]);
    }
    command
        .arg("--")
        .arg("/opt/peapod-tests/e2e")
        .args(forwarded);
    // One test at a time in the L1 (unless asked otherwise): two guests booting at once in
    // the emulated L1 bring its known kernel panic within minutes, one at a time does not
    // (docs/testbed.md, `scripts/l1-boot-loop`).
    if !forwarded.iter().any(|a| a.starts_with("--test-threads")) {
        command.args(["--test-threads", "1"]);
    }
    for skip in skips {
        command.args(["--skip", skip]);
    }
    command
}

/// Runs `command`, copying its stdout to ours line by line, adding each test that libtest
/// reports as `test NAME ... ok` to `passed` and each `test NAME ... FAILED` to `failed`, and
/// its stderr to ours, setting `stalled` when peapod says the L1 stalled; returns its exit
/// status.
fn run_echoing_results(
    command: &mut Command,
    passed: &mut Vec<String>,
    failed: &mut Vec<String>,
    stalled: &mut bool,
) -> std::io::Result<Option<i32>> {
    use std::io::{BufRead, BufReader, Write};
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout was piped");
    let stderr = child.stderr.take().expect("stderr was piped");
    let stderr_echo = std::thread::spawn(move || {
        let mut stall_seen = false;
        for line in BufReader::new(stderr).split(b'\n') {
            let Ok(line) = line else { break };
            let mut ours = std::io::stderr().lock();
            let _ = ours.write_all(&line).and_then(|()| ours.write_all(b"\n"));
            stall_seen |= String::from_utf8_lossy(&line).contains(STALL_MESSAGE);
        }
        stall_seen
    });
    // by bytes: a guest's console in a failure message need not be UTF-8
    let mut results = ResultLines::default();
    for line in BufReader::new(stdout).split(b'\n') {
        let line = String::from_utf8_lossy(&line?).into_owned();
        println!("{line}");
        match results.read(&line) {
            Some((name, true)) => passed.push(name),
            Some((name, false)) => failed.push(name),
            None => {}
        }
    }
    let status = child.wait()?.code();
    *stalled = stderr_echo.join().unwrap_or(false);
    Ok(status)
}

/// How `peapod machine run` begins its error for a stalled L1 (`MachineError::Stalled`).
const STALL_MESSAGE: &str = "the L1 stalled";

/// Test results in libtest's output, as lines come. With several test threads each result is
/// one line, `test NAME ... ok`; with one, `test NAME ... ` comes when the test starts, then
/// whatever the test prints, then `ok` or `FAILED` on a line of its own.
#[derive(Default)]
struct ResultLines {
    running: Option<String>,
}

impl ResultLines {
    /// The test `line` ends, and whether it passed.
    fn read(&mut self, line: &str) -> Option<(String, bool)> {
        for (result, passed) in [("ok", true), ("FAILED", false)] {
            if let Some(name) = test_with_result(line, result) {
                self.running = None;
                return Some((name.to_string(), passed));
            }
        }
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.split_once(" ... "))
        {
            self.running = Some(name.0.trim_end().to_string());
            return None;
        }
        match line.trim_end() {
            "ok" => self.running.take().map(|name| (name, true)),
            "FAILED" => self.running.take().map(|name| (name, false)),
            _ => None,
        }
    }
}

/// The name in a libtest `test NAME ... RESULT` line.
fn test_with_result<'a>(line: &'a str, result: &str) -> Option<&'a str> {
    let name = line
        .strip_prefix("test ")?
        .strip_suffix(result)?
        .strip_suffix(" ... ")?;
    Some(name.trim_end())
}
