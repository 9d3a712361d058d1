//! The command line's answers to bad input: fast, no VM is booted.

use std::process::{Command, Output};

fn peapod(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peapod"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("peapod runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn machine_without_qemu_names_the_package() {
    let out = peapod(
        &["machine", "run", "--", "true"],
        &[("PEAPOD_QEMU", "/nonexistent/qemu-system-x86_64")],
    );
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("apt-get install qemu-system-x86"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn machine_without_l1_kernel_modules_says_how_to_fix() {
    let out = peapod(
        &["machine", "run", "--", "true"],
        &[("PEAPOD_L1_KERNEL", "/nonexistent/vmlinuz-0.0-test")],
    );
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("linux-image"), "{}", stderr(&out));
}

#[test]
fn machine_copy_of_a_missing_path_fails_before_booting() {
    let out = peapod(
        &[
            "machine",
            "run",
            "--copy",
            "/nonexistent/dir:/data",
            "--",
            "true",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/nonexistent/dir"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn machine_rejects_malformed_copy_and_env() {
    let out = peapod(
        &["machine", "run", "--copy", "/a:relative", "--", "true"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("HOSTPATH"), "{}", stderr(&out));
    let out = peapod(&["machine", "run", "--env", "NOEQUALS", "--", "true"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("KEY=VALUE"), "{}", stderr(&out));
    let out = peapod(&["machine", "run"], &[]);
    assert_eq!(out.status.code(), Some(2), "a command is required");
}

#[test]
fn doctor_reports_each_part() {
    let out = peapod(&["doctor"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    for part in [
        "/dev/kvm",
        "PVM",
        "hardware virtualization",
        "qemu",
        "L1 kernel",
        "busybox",
        "=>",
    ] {
        assert!(text.contains(part), "doctor output lacks {part:?}:\n{text}");
    }
}
