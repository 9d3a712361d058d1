use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;

use nix::unistd::ForkResult;

use super::*;

#[test]
fn the_default_identity_is_not_root_and_follows_the_pid() {
    let config = JailConfig::default();
    assert_eq!(config.identity(7), (JAIL_ID_BASE + 7, JAIL_ID_BASE + 7));
    assert_eq!(
        config.identity(65_536 + 3),
        (JAIL_ID_BASE + 3, JAIL_ID_BASE + 3)
    );
    let named = JailConfig {
        uid: Some(1234),
        gid: Some(99),
    };
    assert_eq!(named.identity(1), (1234, 99));
}

#[test]
fn root_relative_paths_and_threads_are_refused_before_anything_changes() {
    let root = JailConfig {
        uid: Some(0),
        gid: None,
    };
    assert!(matches!(
        enter(&root, &JailPaths::default()),
        Err(JailError::RootIdentity)
    ));
    let relative = JailPaths {
        keep: vec!["run/x".into()],
        guest_ram: 0,
    };
    assert!(matches!(
        enter(&JailConfig::default(), &relative),
        Err(JailError::Relative(_))
    ));
    // The test harness runs this test on a thread of its own: more than one thread.
    let e = enter(&JailConfig::default(), &JailPaths::default()).unwrap_err();
    assert!(matches!(e, JailError::Threads(n) if n > 1), "{e}");
    assert_eq!(
        nix::unistd::getuid().as_raw(),
        nix::unistd::geteuid().as_raw()
    );
}

/// What the jailed child saw, one `key=value` per line.
fn jailed_child(keep: &Path) -> String {
    let (mut read, write) = std::os::unix::net::UnixStream::pair().unwrap();
    // SAFETY: the child only runs the jail and the checks below, then `_exit`s; glibc
    // resets malloc's locks in a fork child, and the harness's other thread holds no lock
    // this code takes.
    match unsafe { nix::unistd::fork() }.unwrap() {
        ForkResult::Child => {
            let mut out = write;
            let report = match enter(
                &JailConfig::default(),
                &JailPaths {
                    keep: vec![keep.to_path_buf()],
                    guest_ram: 64 << 20,
                },
            ) {
                Ok(jailed) => checks(jailed, keep),
                Err(e) => format!("error={e}\n"),
            };
            let _ = out.write_all(report.as_bytes());
            drop(out);
            // SAFETY: ends the child without running the harness's exit path.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(write);
            let mut text = String::new();
            read.read_to_string(&mut text).unwrap();
            nix::sys::wait::waitpid(child, None).unwrap();
            text
        }
    }
}

fn checks(jailed: Jailed, keep: &Path) -> String {
    let mut out = String::new();
    let mut say = |k: &str, v: String| out.push_str(&format!("{k}={v}\n"));
    say("uid", nix::unistd::getuid().as_raw().to_string());
    say("euid", nix::unistd::geteuid().as_raw().to_string());
    say("gid", nix::unistd::getgid().as_raw().to_string());
    say("jailed_uid", jailed.uid.to_string());
    let permitted = caps::read(None, caps::CapSet::Permitted).map(|s| s.len());
    say("permitted", format!("{permitted:?}"));
    let bounding = caps::read(None, caps::CapSet::Bounding).map(|s| s.len());
    say("bounding", format!("{bounding:?}"));
    say("proc", Path::new("/proc/self").exists().to_string());
    say("etc", Path::new("/etc/passwd").exists().to_string());
    say(
        "kept_file",
        std::fs::read_to_string(keep.join("marker")).unwrap_or_else(|e| format!("error {e}")),
    );
    say(
        "write_root",
        std::fs::write("/planted", b"x").is_ok().to_string(),
    );
    say(
        "hostname",
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    let nofile = nix::sys::resource::getrlimit(Resource::RLIMIT_NOFILE).map(|l| l.0);
    say("nofile", format!("{nofile:?}"));
    let core = nix::sys::resource::getrlimit(Resource::RLIMIT_CORE).map(|l| l.0);
    say("core", format!("{core:?}"));
    let nnp = nix::sys::prctl::get_no_new_privs();
    say("no_new_privs", format!("{nnp:?}"));
    say("interfaces", interfaces().join(","));
    out
}

/// The names of this process's network interfaces.
fn interfaces() -> Vec<String> {
    let mut names = Vec::new();
    // SAFETY: if_nameindex returns a list ending in a zero entry, or null; it is read
    // before if_freenameindex frees it.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return names;
        }
        let mut entry = list;
        while (*entry).if_index != 0 {
            names.push(
                std::ffi::CStr::from_ptr((*entry).if_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    names
}

#[test]
fn a_jailed_process_has_an_empty_root_no_root_identity_and_its_limits() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the jail needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("marker"), "kept").unwrap();
    let keep = std::fs::canonicalize(dir.path()).unwrap();
    let report = jailed_child(&keep);
    if report.contains("error=cannot create namespaces") {
        eprintln!("skipped: no namespaces here: {report}");
        return;
    }
    let get = |k: &str| {
        report
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {report}"))
            .to_owned()
    };
    let uid: u32 = get("uid").parse().unwrap();
    assert!(uid >= JAIL_ID_BASE, "{report}");
    assert_eq!(get("euid"), get("uid"), "{report}");
    assert_eq!(get("gid"), get("uid"), "{report}");
    assert_eq!(get("jailed_uid"), get("uid"), "{report}");
    assert_eq!(get("permitted"), "Ok(0)", "{report}");
    assert_eq!(get("bounding"), "Ok(0)", "{report}");
    assert_eq!(get("proc"), "false", "no /proc: {report}");
    assert_eq!(get("etc"), "false", "no host files: {report}");
    assert_eq!(get("kept_file"), "kept", "{report}");
    assert_eq!(get("write_root"), "false", "{report}");
    assert_eq!(get("hostname"), "peapod-vmm", "{report}");
    assert_eq!(get("nofile"), format!("Ok({MAX_OPEN_FILES})"), "{report}");
    assert_eq!(get("core"), "Ok(0)", "{report}");
    assert_eq!(get("no_new_privs"), "Ok(true)", "{report}");
    assert_eq!(
        get("interfaces"),
        "lo",
        "a network namespace of its own: {report}"
    );
    // Nothing of it shows on the host: its root and namespaces were its own.
    assert!(Path::new("/etc/passwd").exists());
    assert!(!Path::new("/planted").exists());
}
