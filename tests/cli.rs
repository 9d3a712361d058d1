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
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("HOSTPATH"), "{}", stderr(&out));
    let out = peapod(&["machine", "run", "--env", "NOEQUALS", "--", "true"], &[]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("KEY=VALUE"), "{}", stderr(&out));
    let out = peapod(&["machine", "run"], &[]);
    assert_eq!(out.status.code(), Some(125), "a command is required");
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

#[test]
fn the_vmm_names_a_bad_config_file_and_reports_it_as_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vmm.json");
    std::fs::write(&config, br#"{"kernel": "/k", "memroy_mib": 64}"#).unwrap();
    let config = config.to_str().unwrap();
    // --events-fd 1: the events come out on stdout, one JSON object per line.
    let out = Command::new(env!("CARGO_BIN_EXE_peapod-vmm"))
        .args(["--config", config, "--events-fd", "1"])
        .output()
        .expect("peapod-vmm runs");
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains(config), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut events = Vec::new();
    peapod::vmm::events::read_events(out.stdout.as_slice(), |e| events.push(e)).unwrap();
    assert!(
        matches!(&events[..], [peapod::vmm::events::VmmEvent::Failed { message }]
            if message.contains("unknown field `memroy_mib`")),
        "{stdout}"
    );

    let both = peapod(&["vm", "boot", "--config", config, "--cpus", "2"], &[]);
    assert_eq!(both.status.code(), Some(125), "{}", stderr(&both));
    assert!(stderr(&both).contains("--config"), "{}", stderr(&both));
}
