//! Host tests: `peapod machine run` as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::{Case, Place, check, peapod, run_peapod};

pub fn cases() -> Vec<Case> {
    let case = |name, run| Case {
        name,
        place: Place::Host,
        run,
        skip_if: None,
    };
    vec![
        case(
            "machine_has_kvm_with_svm_or_vmx",
            machine_has_kvm_with_svm_or_vmx,
        ),
        case(
            "machine_exit_status_of_false_is_1",
            machine_exit_status_of_false_is_1,
        ),
        case(
            "machine_copy_puts_a_directory_inside",
            machine_copy_puts_a_directory_inside,
        ),
        case(
            "machine_keeps_stdout_stderr_apart_and_passes_status",
            machine_keeps_stdout_stderr_apart_and_passes_status,
        ),
        case(
            "machine_missing_command_is_127",
            machine_missing_command_is_127,
        ),
        case(
            "machine_timeout_kills_and_names_the_log",
            machine_timeout_kills_and_names_the_log,
        ),
        case(
            "machine_sigterm_stops_qemu_and_removes_the_run_dir",
            machine_sigterm_stops_qemu_and_removes_the_run_dir,
        ),
        case(
            "machine_sigkill_takes_qemu_along",
            machine_sigkill_takes_qemu_along,
        ),
        case(
            "machine_stalled_l1_fails_fast_with_125",
            machine_stalled_l1_fails_fast_with_125,
        ),
        case("machine_names_a_missing_qemu", machine_names_a_missing_qemu),
        Case {
            name: "bench_machine_compares_two_qemu_setups",
            place: Place::Host,
            run: bench_machine_compares_two_qemu_setups,
            skip_if: Some(default_guest_artifacts_missing),
        },
        Case {
            name: "machine_runs_a_pod_on_the_default_image",
            place: Place::Host,
            run: machine_runs_a_pod_on_the_default_image,
            skip_if: Some(default_guest_artifacts_missing),
        },
        Case {
            name: "vm_refuses_pvm_kvm_with_pointer_to_machine",
            place: Place::Host,
            run: vm_refuses_pvm_kvm_with_pointer_to_machine,
            skip_if: Some(|| {
                (!peapod::host::HostVirt::probe().pvm).then(|| "this host's KVM is not PVM".into())
            }),
        },
    ]
}

fn machine_has_kvm_with_svm_or_vmx() -> Result<(), Failed> {
    let out = run_peapod(&[
        "machine",
        "run",
        "--",
        "sh",
        "-c",
        r#"ls -l /dev/kvm && grep -c -E "svm|vmx" /proc/cpuinfo"#,
    ])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    check(out.status.code() == Some(0), "exit status 0", &out)?;
    check(stdout.contains("/dev/kvm"), "ls shows /dev/kvm", &out)?;
    check(
        stdout.starts_with('c'),
        "/dev/kvm is a character device",
        &out,
    )?;
    let count: u32 = stdout
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    check(count >= 1, "at least one CPU with svm or vmx", &out)
}

fn machine_exit_status_of_false_is_1() -> Result<(), Failed> {
    let out = run_peapod(&["machine", "run", "--", "false"])?;
    check(out.status.code() == Some(1), "exit status 1", &out)
}

fn machine_copy_puts_a_directory_inside() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("some/dir/nested"))?;
    std::fs::write(dir.path().join("some/dir/file"), "copied into the L1\n")?;
    std::fs::write(dir.path().join("some/dir/nested/deep"), "deep\n")?;
    let copy = format!("{}:/data", dir.path().join("some/dir").display());
    let out = run_peapod(&[
        "machine",
        "run",
        "--copy",
        &copy,
        "--",
        "cat",
        "/data/file",
        "/data/nested/deep",
    ])?;
    check(out.status.code() == Some(0), "exit status 0", &out)?;
    check(
        out.stdout == b"copied into the L1\ndeep\n",
        "the copied files' contents",
        &out,
    )
}

fn machine_keeps_stdout_stderr_apart_and_passes_status() -> Result<(), Failed> {
    let out = run_peapod(&[
        "machine",
        "run",
        "--env",
        "GREETING=hi there",
        "--",
        "sh",
        "-c",
        r#"echo "$GREETING"; echo to-stderr >&2; exit 7"#,
    ])?;
    check(out.status.code() == Some(7), "exit status 7", &out)?;
    check(
        out.stdout == b"hi there\n",
        "stdout holds only stdout",
        &out,
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(
        stderr.contains("to-stderr"),
        "stderr has the command's stderr",
        &out,
    )?;
    check(
        !stderr.contains("Linux version") && !String::from_utf8_lossy(&out.stdout).contains('['),
        "no L1 kernel messages on stdout/stderr",
        &out,
    )
}

/// Why the README's first command cannot run here: the host's default guest kernel or agent
/// initramfs (what `peapod machine run` carries into the L1) is missing.
fn default_guest_artifacts_missing() -> Option<String> {
    if let Err(e) = peapod::guest_kernel::default_kernel() {
        return Some(format!("{e} (scripts/setup builds it)"));
    }
    peapod::runtime::oneshot::default_agent_initramfs()
        .err()
        .map(|e| format!("{e} (scripts/setup builds it)"))
}

/// The README's first command: a pod on the built-in image, through the test bed, with the
/// guest kernel and agent initramfs carried in by default and an empty image store inside.
fn machine_runs_a_pod_on_the_default_image() -> Result<(), Failed> {
    let out = run_peapod(&[
        "machine",
        "run",
        "--",
        "peapod",
        "run",
        "--rm",
        "peapod/busybox:latest",
        "sh",
        "-c",
        "echo hi from a pea; exit 3",
    ])?;
    check(
        out.status.code() == Some(3),
        "the container's exit status",
        &out,
    )?;
    check(
        String::from_utf8_lossy(&out.stdout).contains("hi from a pea"),
        "the container's output",
        &out,
    )
}

fn machine_missing_command_is_127() -> Result<(), Failed> {
    let out = run_peapod(&["machine", "run", "--", "/no/such/command"])?;
    check(out.status.code() == Some(127), "exit status 127", &out)?;
    check(
        String::from_utf8_lossy(&out.stderr).contains("/no/such/command"),
        "the error names the command",
        &out,
    )
}

fn machine_timeout_kills_and_names_the_log() -> Result<(), Failed> {
    let out = run_peapod(&["machine", "run", "--timeout", "2", "--", "sleep", "600"])?;
    check(out.status.code() == Some(124), "exit status 124", &out)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = stderr
        .split("L1 console log: ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .map(str::trim);
    check(log.is_some(), "the message names the console log", &out)?;
    let log = std::path::Path::new(log.unwrap_or_default());
    check(log.is_file(), "the named console log exists", &out)?;
    if let Some(dir) = log.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

/// A `peapod machine run` in the background, SIGKILLed if a test leaves it running.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `peapod machine run [OPTIONS] -- sh -c 'echo up; exec sleep 600'` and waits until
/// its L1 is up (the command printed `up`); returns it (its stderr piped), QEMU's pid and
/// the run directory (where QEMU's initrd is).
fn sleeping_machine(options: &[&str]) -> Result<(Background, Pid, PathBuf), Failed> {
    let child = Command::new(peapod())
        .args(["machine", "run"])
        .args(options)
        .args(["--", "sh", "-c", "echo up; exec sleep 600"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", peapod().display()))?;
    let mut machine = Background(child);
    let stdout = machine.0.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    let until = Instant::now() + Duration::from_secs(120);
    let mut up = false;
    loop {
        up = up || rx.try_recv().is_ok_and(|line| line.trim() == "up");
        if up && let Some(found) = qemu_child_of(machine.0.id()) {
            return Ok((machine, found.0, found.1));
        }
        if let Some(status) = machine.0.try_wait()? {
            return Err(format!("peapod machine run ended before its QEMU ran: {status}").into());
        }
        if Instant::now() > until {
            return Err("no L1 up under peapod machine run after 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A qemu-system-x86_64 whose parent is `parent`, with the directory of its `-initrd`.
fn qemu_child_of(parent: u32) -> Option<(Pid, PathBuf)> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            if ppid != parent {
                return None;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !args.first()?.ends_with("qemu-system-x86_64") {
                return None;
            }
            let initrd = args.iter().skip_while(|a| *a != "-initrd").nth(1)?;
            Some((
                Pid::from_raw(pid),
                Path::new(initrd).parent()?.to_path_buf(),
            ))
        })
}

/// Whether `pid` is gone (or a zombie nobody waits for) within `limit`.
fn gone_within(pid: Pid, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if matches!(state, None | Some("Z")) {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `machine run --qemu` with a QEMU that is not there fails before anything starts, naming it.
fn machine_names_a_missing_qemu() -> Result<(), Failed> {
    let out = run_peapod(&["machine", "run", "--qemu", "/no/such/qemu", "--", "true"])?;
    check(!out.status.success(), "a failed run", &out)?;
    check(
        String::from_utf8_lossy(&out.stderr).contains("/no/such/qemu: no such QEMU binary"),
        "stderr names the missing QEMU",
        &out,
    )
}

/// `bench machine --versus-qemu`: the test bed's QEMU against another one (here the same
/// binary under another name: CI machines have one QEMU), each L1 running a pod; the table
/// names both setups and gives each row's ratio.
fn bench_machine_compares_two_qemu_setups() -> Result<(), Failed> {
    let qemu = peapod::machine::assets::find_qemu()?;
    let dir = tempfile::tempdir()?;
    let other = dir.path().join("qemu-other");
    std::os::unix::fs::symlink(&qemu, &other)?;
    let other = other.to_str().ok_or("a temporary path that is not UTF-8")?;
    let out = run_peapod(&["bench", "machine", "--runs", "1", "--versus-qemu", other])?;
    check(out.status.code() == Some(0), "exit status 0", &out)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    check(
        stdout.contains("Test-bed setups, 1 runs each interleaved")
            && stdout.contains("| measure | QEMU "),
        "a second table whose columns name each setup's QEMU",
        &out,
    )?;
    for row in [
        "| L1 boot: QEMU start to /dev/kvm ready |",
        "| the pod in the L1 (ready to the L1's exit) |",
        "| whole `machine run` |",
    ] {
        let line = stdout
            .lines()
            .rfind(|l| l.starts_with(row))
            .unwrap_or_default();
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "", measure, ours, versus, ratio, ""
        let seconds = |cell: &str| {
            cell.strip_suffix(" s")
                .and_then(|n| n.parse::<f64>().ok())
                .is_some_and(|n| n > 0.0)
        };
        check(
            cells.len() == 6 && seconds(cells[2]) && seconds(cells[3]) && cells[4].ends_with('x'),
            &format!("the row {row:?} has two times and a ratio"),
            &out,
        )?;
    }
    Ok(())
}

/// SIGTERM to `peapod machine run`: it stops its QEMU, removes its run directory and exits
/// with 143 (128 + SIGTERM).
fn machine_sigterm_stops_qemu_and_removes_the_run_dir() -> Result<(), Failed> {
    let (mut machine, qemu, run_dir) = sleeping_machine(&[])?;
    if !run_dir.is_dir() {
        return Err(format!("the run directory {} is not there", run_dir.display()).into());
    }
    kill(Pid::from_raw(machine.0.id() as i32), Signal::SIGTERM)?;
    let until = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = machine.0.try_wait()? {
            break status;
        }
        if Instant::now() > until {
            return Err("peapod machine run still runs 10 s after SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut problems = Vec::new();
    if status.code() != Some(143) {
        problems.push(format!("exit status 143, got {status}"));
    }
    if !gone_within(qemu, Duration::from_secs(5)) {
        let _ = kill(qemu, Signal::SIGKILL);
        problems.push(format!("QEMU (pid {qemu}) gone within 5 s"));
    }
    if run_dir.exists() {
        let _ = std::fs::remove_dir_all(&run_dir);
        problems.push(format!("the run directory {} removed", run_dir.display()));
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(format!("expected: {}", problems.join("; ")).into()),
    }
}

/// A SIGKILLed `peapod machine run` cannot clean up, but its QEMU dies with it (PDEATHSIG).
fn machine_sigkill_takes_qemu_along() -> Result<(), Failed> {
    let (mut machine, qemu, run_dir) = sleeping_machine(&[])?;
    machine.0.kill()?;
    machine.0.wait()?;
    let gone = gone_within(qemu, Duration::from_secs(5));
    if !gone {
        let _ = kill(qemu, Signal::SIGKILL);
    }
    let _ = std::fs::remove_dir_all(&run_dir);
    match gone {
        true => Ok(()),
        false => Err(format!("QEMU (pid {qemu}) still runs 5 s after peapod was SIGKILLed").into()),
    }
}

/// An L1 that stops sending anything (its QEMU stopped with SIGSTOP: no heartbeat) is killed
/// after --stall-timeout, well before --timeout, with status 125 and an error that says so and
/// names the console log.
fn machine_stalled_l1_fails_fast_with_125() -> Result<(), Failed> {
    let (mut machine, qemu, run_dir) =
        sleeping_machine(&["--stall-timeout", "10", "--timeout", "300"])?;
    kill(qemu, Signal::SIGSTOP)?;
    let stopped = Instant::now();
    let until = stopped + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = machine.0.try_wait()? {
            break status;
        }
        if Instant::now() > until {
            let _ = kill(qemu, Signal::SIGKILL);
            return Err("peapod machine run still runs 60 s after its QEMU stopped".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let waited = stopped.elapsed();
    let mut stderr = String::new();
    if let Some(mut pipe) = machine.0.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
    }
    let gone = gone_within(qemu, Duration::from_secs(5));
    if !gone {
        let _ = kill(qemu, Signal::SIGKILL);
    }
    let log_kept = run_dir.join("console.log").is_file();
    let _ = std::fs::remove_dir_all(&run_dir);
    let mut problems = Vec::new();
    if status.code() != Some(125) {
        problems.push(format!("exit status 125, got {status}"));
    }
    if waited > Duration::from_secs(20) {
        problems.push(format!("the stall seen within 20 s, took {waited:?}"));
    }
    if !stderr.contains("the L1 stalled") || !stderr.contains("nothing arrived on its link for") {
        problems.push("an error saying the L1 stalled, and for how long".into());
    }
    if !stderr.contains(&run_dir.join("console.log").display().to_string()) || !log_kept {
        problems.push("the error names the console log, which is kept".into());
    }
    if !gone {
        problems.push(format!("QEMU (pid {qemu}) gone within 5 s"));
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(format!("expected: {}\n  stderr: {stderr}", problems.join("; ")).into()),
    }
}

fn vm_refuses_pvm_kvm_with_pointer_to_machine() -> Result<(), Failed> {
    let out = run_peapod(&["vm", "hello"])?;
    check(
        out.status.code() == Some(125),
        "peapod's error status 125",
        &out,
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(
        stderr.contains("PVM") && stderr.contains("peapod machine run"),
        "the error says PVM and points at `peapod machine run`",
        &out,
    )
}
