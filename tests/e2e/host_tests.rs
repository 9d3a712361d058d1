//! Host tests: `peapod machine run` as a user runs it.

use libtest_mimic::Failed;

use crate::support::{Case, Place, check, run_peapod};

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
    peapod::runtime::container::default_agent_initramfs()
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
