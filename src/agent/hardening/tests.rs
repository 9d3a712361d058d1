use std::process::Command;

use super::*;

/// The marker that makes a test run its child side.
const CHILD: &str = "PEAPOD_HARDENING_TEST_CHILD";

/// Re-runs this test binary for test `name` with `CHILD=role`, so that the hardening is
/// applied in a fresh single-threaded process and not in the test harness; returns its
/// status and output.
fn run_child(name: &str, role: &str) -> (std::process::ExitStatus, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, role)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status, text)
}

/// Writes `msg` straight to stdout (no std machinery in between).
fn say(msg: &str) {
    // SAFETY: writes `msg.len()` bytes from a live buffer to fd 1.
    unsafe { libc::write(1, msg.as_ptr().cast(), msg.len()) };
}

/// Why the root tests cannot run here, if they cannot.
fn skip_reason() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (drops capabilities and sets uids)");
    }
    if std::env::consts::ARCH != "x86_64" {
        return Some("the seccomp profile is x86_64's");
    }
    None
}

/// `key`'s value in `text`, a `/proc/PID/status`.
fn status_field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

fn hex(v: &str) -> u64 {
    u64::from_str_radix(v, 16).unwrap_or(u64::MAX)
}

/// The errno of a raw syscall's result (0 when it succeeded).
fn errno_of(rc: libc::c_long) -> i32 {
    if rc < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    }
}

/// The child side: applies `h` as `exec_process` does (as `uid` when given), then prints
/// its `/proc/thread-self/status` and the result of each probe as `name=errno` lines.
fn child(h: Hardening, uid: Option<u32>) {
    // A directory of its own to try a mount on (a privileged child's mount succeeds).
    let dir = tempfile::tempdir().unwrap();
    let target = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
    // The harness's "test NAME ... " has no newline yet.
    say("\n");
    let mut p = h.prepare().unwrap();
    p.limit_bounding_set().unwrap();
    if let Some(uid) = uid {
        // Its own, so that it can remove it at the end.
        let (u, g) = (
            nix::unistd::Uid::from_raw(uid),
            nix::unistd::Gid::from_raw(uid),
        );
        nix::unistd::chown(dir.path(), Some(u), Some(g)).unwrap();
        nix::unistd::setgid(nix::unistd::Gid::from_raw(uid)).unwrap();
        nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)).unwrap();
    }
    p.set_capabilities().unwrap();
    p.lock().unwrap();
    // The thread's: the harness runs the test on a thread of its own, and capabilities,
    // no_new_privs and seccomp are per thread (the helpers are single-threaded).
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    for key in [
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
        "Seccomp",
    ] {
        say(&format!("{key}={}\n", status_field(&status, key)));
    }
    // SAFETY: getpid takes no argument.
    let pid = unsafe { libc::syscall(libc::SYS_getpid) };
    say(&format!("getpid={}\n", errno_of(pid)));
    // SAFETY: unshare on a flag word; on success only this test child is affected.
    let rc = unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER) };
    say(&format!("unshare={}\n", errno_of(rc)));
    // SAFETY: mount with valid NUL-terminated strings on this child's own empty directory,
    // unmounted again right below.
    let rc = unsafe {
        libc::mount(
            c"none".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_RDONLY,
            std::ptr::null(),
        )
    };
    say(&format!("mount={}\n", errno_of(rc as libc::c_long)));
    if rc == 0 {
        // SAFETY: undoes the mount just made.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
    // SAFETY: clone without a stack acts as fork; a child made here exits at once.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUTS | libc::SIGCHLD) as libc::c_ulong,
            0,
            0,
            0,
            0,
        )
    };
    if rc == 0 {
        // SAFETY: the clone's child leaves at once, without running the harness.
        unsafe { libc::_exit(0) };
    }
    say(&format!("clone_newuts={}\n", errno_of(rc)));
    // SAFETY: clone3 with a null argument of size 0 fails before it makes anything
    // (EINVAL) unless the filter answers first.
    let rc = unsafe { libc::syscall(libc::SYS_clone3, 0, 0) };
    say(&format!("clone3={}\n", errno_of(rc)));
    // SAFETY: personality with a value docker refuses (PER_BSD); it only reads back the
    // persona if allowed, then the old one is restored below.
    let old = unsafe { libc::syscall(libc::SYS_personality, 0x6) };
    say(&format!("personality_bsd={}\n", errno_of(old)));
    if old >= 0 {
        // SAFETY: restores the persona read above.
        unsafe { libc::syscall(libc::SYS_personality, old) };
    }
    for (name, family) in [
        ("socket_vsock", libc::AF_VSOCK),
        ("socket_unix", libc::AF_UNIX),
    ] {
        // SAFETY: socket on plain values; a descriptor made is closed right away.
        let fd = unsafe { libc::syscall(libc::SYS_socket, family, libc::SOCK_STREAM, 0) };
        say(&format!("{name}={}\n", errno_of(fd)));
        if fd >= 0 {
            // SAFETY: closes the descriptor just made.
            unsafe { libc::close(fd as i32) };
        }
    }
    say("done\n");
}

/// The `key=value` lines a child printed.
fn reported(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs the child of test `name` for `role` and returns what it reported.
fn probe(name: &str, role: &str) -> BTreeMap<String, String> {
    let (status, out) = run_child(name, role);
    assert!(status.success(), "{role}: {status:?}\n{out}");
    assert!(out.contains("done\n"), "{role}: {out}");
    reported(&out)
}

#[test]
fn the_default_capabilities_are_dockers_mask() {
    // `docker run --rm alpine grep Cap /proc/self/status`: CapBnd 00000000a80425fb.
    assert_eq!(default_mask(), 0xa804_25fb);
    assert_eq!(default_set().len(), DEFAULT_CAPABILITIES.len());
    assert!(!default_set().contains(&Capability::CAP_SYS_ADMIN));
}

#[test]
fn the_profile_compiles_and_allows_neither_mount_nor_namespaces() {
    let filters = default_filters().unwrap();
    assert_eq!(filters.len(), 2);
    assert!(filters.iter().all(|f| !f.is_empty()));
    let names: Vec<_> = allowed_names().collect();
    for must in [
        "read",
        "write",
        "execve",
        "exit_group",
        "seccomp",
        "prctl",
        "capset",
    ] {
        assert!(names.contains(&must), "{must} is allowed");
    }
    for never in [
        "mount",
        "umount2",
        "unshare",
        "setns",
        "pivot_root",
        "bpf",
        "kexec_load",
        "reboot",
        "init_module",
        "clone",
        "clone3",
        "socket",
        "personality",
    ] {
        assert!(
            !names.contains(&never),
            "{never} is not allowed unconditionally"
        );
    }
    // Every syscall is numbered once, and the hand-numbered ones are not libc's.
    let rules = allow_rules().unwrap();
    assert_eq!(rules.len(), ALLOWED.len() + ALLOWED_BY_NUMBER.len() + 4);
    assert_eq!(rules[&libc::SYS_personality].len(), PERSONALITIES.len());
    assert_eq!(CLONE_NAMESPACE_FLAGS, 0x7e02_0000);
}

#[test]
fn privileged_or_guest_hardening_compiles_no_filter() {
    let p = |privileged, seccomp| Hardening {
        privileged,
        seccomp,
    };
    assert!(p(false, true).prepare().unwrap().has_filter());
    assert!(!p(false, false).prepare().unwrap().has_filter());
    assert!(!p(true, true).prepare().unwrap().has_filter());
    // The helpers get it as JSON; an unknown field is an error, not ignored.
    let json = serde_json::to_string(&p(true, false)).unwrap();
    assert_eq!(json, r#"{"privileged":true,"seccomp":false}"#);
    assert!(
        serde_json::from_str::<Hardening>(r#"{"privileged":true,"seccomp":true,"x":1}"#).is_err()
    );
}

#[test]
fn a_hardened_process_has_dockers_caps_and_filter() {
    const NAME: &str = "agent::hardening::tests::a_hardened_process_has_dockers_caps_and_filter";
    let host = Hardening {
        privileged: false,
        seccomp: true,
    };
    match std::env::var(CHILD).as_deref() {
        Ok("root") => return child(host, None),
        Ok("nobody") => return child(host, Some(65534)),
        Ok("guest") => {
            return child(
                Hardening {
                    seccomp: false,
                    ..host
                },
                None,
            );
        }
        Ok(_) => return,
        Err(_) => {}
    }
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let mask = default_mask();
    let r = probe(NAME, "root");
    assert_eq!(hex(&r["CapBnd"]), mask, "{r:?}");
    assert_eq!(hex(&r["CapEff"]) & !mask, 0, "{r:?}");
    assert_eq!(hex(&r["CapEff"]), hex(&r["CapPrm"]), "{r:?}");
    // The harness may itself lack a default capability; it has CAP_CHOWN at least.
    assert_ne!(
        hex(&r["CapEff"]) & Capability::CAP_CHOWN.bitmask(),
        0,
        "{r:?}"
    );
    assert_eq!(hex(&r["CapInh"]), 0, "{r:?}");
    assert_eq!(hex(&r["CapAmb"]), 0, "{r:?}");
    assert_eq!(r["NoNewPrivs"], "1");
    assert_eq!(r["Seccomp"], "2");
    assert_eq!(r["getpid"], "0");
    assert_eq!(r["unshare"], libc::EPERM.to_string());
    assert_eq!(r["mount"], libc::EPERM.to_string());
    assert_eq!(r["clone_newuts"], libc::EPERM.to_string());
    assert_eq!(r["clone3"], libc::ENOSYS.to_string());
    assert_eq!(r["personality_bsd"], libc::EPERM.to_string());
    assert_eq!(r["socket_vsock"], libc::EPERM.to_string());
    assert_eq!(r["socket_unix"], "0");

    // A non-root process: the same bounding set, nothing effective.
    let r = probe(NAME, "nobody");
    assert_eq!(hex(&r["CapBnd"]), mask, "{r:?}");
    assert_eq!(hex(&r["CapEff"]), 0, "{r:?}");
    assert_eq!(hex(&r["CapPrm"]), 0, "{r:?}");
    assert_eq!(r["Seccomp"], "2");
    assert_eq!(r["unshare"], libc::EPERM.to_string());

    // In a pod VM: capabilities dropped, no filter; the kernel refuses by capability.
    let r = probe(NAME, "guest");
    assert_eq!(hex(&r["CapBnd"]), mask, "{r:?}");
    assert_eq!(r["NoNewPrivs"], "1");
    assert_eq!(r["Seccomp"], "0");
    assert_eq!(r["mount"], libc::EPERM.to_string());
    assert_eq!(
        r["clone3"],
        libc::EINVAL.to_string(),
        "the kernel's own answer"
    );
}

#[test]
fn a_privileged_process_keeps_every_capability_and_no_filter() {
    const NAME: &str =
        "agent::hardening::tests::a_privileged_process_keeps_every_capability_and_no_filter";
    if std::env::var(CHILD).as_deref() == Ok("privileged") {
        return child(
            Hardening {
                privileged: true,
                seccomp: true,
            },
            None,
        );
    }
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let r = probe(NAME, "privileged");
    for key in ["CapBnd", "CapEff", "CapPrm"] {
        assert_eq!(r[key], status_field(&ours, key), "{key}: {r:?}");
    }
    assert_ne!(hex(&r["CapEff"]) & Capability::CAP_SYS_ADMIN.bitmask(), 0);
    assert_eq!(r["NoNewPrivs"], "0");
    assert_eq!(r["Seccomp"], "0");
    assert_eq!(r["clone3"], libc::EINVAL.to_string());
}
